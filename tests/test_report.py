"""Reports and the results reader on real runs; the HTML page rendered in headless Chromium.

Ground truth: the numbers in ``load_sweep`` / ``summary.csv`` / the phase diagram are recomputed
here directly from each run's JSONL files (rank = #{σ > rtol·σ₁} from the logged singular values,
best validation accuracy and first step ≥ 0.99 from metrics.jsonl).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import statistics
import tempfile
from pathlib import Path

import pytest

from rankdecay.cli import main
from rankdecay.report import analysis_html, build_report, phase_data, verdict_summary
from rankdecay.results import load_run, load_sweep
from rankdecay.runio import read_json, read_jsonl
from rankdecay.sweep import run_sweep

TOY = "sweep_toy:EXPERIMENT"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "sweep"
    result = run_sweep(
        TOY,
        grid=["fraction=0.6,1.0", "weight_decay=0.02,0.2"],
        seeds=2,
        out=out,
        workers=1,
    )
    assert result.exit_code == 0
    return out


@pytest.fixture(scope="module")
def sweep_report(sweep_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_report(sweep_dir, out=tmp_path_factory.mktemp("rep") / "report.html")


def _recomputed(run_dir: Path) -> dict[str, float]:
    """Final-step mean over heads of rank/stable rank per circuit, from the singular values."""
    recs = list(read_jsonl(run_dir / "spectra.jsonl"))
    last = max(r["step"] for r in recs)
    out: dict[str, list[float]] = {}
    for r in recs:
        if r["step"] != last:
            continue
        s = r["singular_values"]
        rank = sum(x > 1e-2 * s[0] for x in s)
        out.setdefault(f"spectra.{r['circuit']}.rank", []).append(rank)
        out.setdefault(f"spectra.{r['circuit']}.stable_rank", []).append(
            sum(x * x for x in s) / s[0] ** 2
        )
    return {k: statistics.fmean(v) for k, v in out.items()}


def test_load_sweep_matches_the_run_files(sweep_dir: Path) -> None:
    df = load_sweep(sweep_dir)
    index = read_json(sweep_dir / "sweep.json")
    assert len(df) == len(index["runs"]) == 8
    assert set(df.attrs["grid"]) == {"fraction", "weight_decay"} and df.attrs["seeds"] == [0, 1]
    for entry in index["runs"]:
        row = df[df["run"] == entry["name"]].iloc[0]
        run = load_run(sweep_dir / entry["run_dir"])
        assert row["status"] == "finished" and row["seed"] == entry["seed"]
        assert row["fraction"] == entry["point"]["fraction"] == run.config["fraction"]
        assert row["weight_decay"] == run.config["weight_decay"]
        for key, value in run.final.items():
            assert row[f"final.{key}"] == pytest.approx(value)
        for key, value in _recomputed(run.path).items():
            assert row[key] == pytest.approx(value, rel=1e-9), key
    # a single run directory reads as one row
    one = load_sweep(sweep_dir / index["runs"][0]["run_dir"])
    assert len(one) == 1 and one.iloc[0]["seed"] == index["runs"][0]["seed"]


def test_phase_diagram_numbers_match_metrics(sweep_dir: Path) -> None:
    df = load_sweep(sweep_dir)
    runs = {name: load_run(d) for name, d in zip(df["run"], df["run_dir"])}
    (panel,) = phase_data(df, runs, ["fraction", "weight_decay"])
    assert panel["fractions"] == [0.6, 1.0] and panel["strengths"] == [0.02, 0.2]
    for i, f in enumerate(panel["fractions"]):
        for j, lam in enumerate(panel["strengths"]):
            sub = df[(df["fraction"] == f) & (df["weight_decay"] == lam)]
            bests, groks = [], []
            for d in sub["run_dir"]:
                pts = [(r["step"], r["val_acc"]) for r in read_jsonl(Path(d) / "metrics.jsonl")]
                bests.append(max(v for _, v in pts))
                first = [s for s, v in pts if v >= 0.99]
                if first:
                    groks.append(first[0])
            assert panel["best"][i][j] == pytest.approx(statistics.fmean(bests))
            assert panel["n"][i][j] == len(sub) == 2 and panel["grokked"][i][j] == len(groks)
            assert panel["grok_step"][i][j] == (int(statistics.median(groks)) if groks else None)


def test_report_files_are_self_contained(sweep_dir: Path, sweep_report: Path) -> None:
    text = sweep_report.read_text()
    rep = sweep_report.parent
    assert not re.search(r"(src|href)=\"(https?:)?//", text)  # nothing fetched from the network
    assert "<script" not in text and "<link" not in text
    figures = re.findall(r'<figure id="fig-([^"]+)"', text)
    assert "phase_diagram" in figures and "final_vs_weight_decay" in figures
    for name in figures:
        png = (rep / "figures" / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG")
        assert "<svg" in (rep / "figures" / f"{name}.svg").read_text()[:2000]
    with open(rep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    df = load_sweep(sweep_dir)
    assert len(rows) == len(df)
    for row in rows:
        ref = df[df["run"] == row["run"]].iloc[0]
        assert float(row["spectra.qk.rank"]) == pytest.approx(ref["spectra.qk.rank"])
        assert row["status"] == "finished"


def test_report_cli_bad_input(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("rankdecay: error: ") for e in err)


def test_sweep_verdicts_carry_their_values(sweep_dir: Path, sweep_report: Path) -> None:
    """Each claim's measured values per grid point, recomputed from the runs' summary.json."""
    df = load_sweep(sweep_dir)
    runs = {name: load_run(d) for name, d in zip(df["run"], df["run_dir"])}
    rows = verdict_summary(df, runs, ["fraction", "weight_decay"])
    assert rows
    for row in rows:
        expected: dict[str, list[float]] = {}
        met = judged = 0
        for d in df["run_dir"]:
            summary = read_json(Path(d) / "summary.json")
            config = read_json(Path(d) / "config.json")["config"]
            point = f"fraction={config['fraction']:g}, weight_decay={config['weight_decay']:g}"
            for v in summary["verdict"]:
                if v["claim"] == row["claim"]:
                    expected.setdefault(point, []).append(float(v["measured"]))
                    if v.get("met") is not None:
                        judged += 1
                        met += bool(v["met"])
        assert (row["met"], row["judged"]) == (met, judged)
        assert [label for label, _ in row["measured"]] == sorted(expected)
        for label, text in row["measured"]:
            vals = expected[label]
            mean = statistics.fmean(vals)
            shown = float(text.split()[0])
            assert shown == pytest.approx(mean, rel=1e-3, abs=1e-9), (label, text, vals)
            if len(set(vals)) > 1:
                assert "±" in text and f"{len(vals)} runs" in text
    text = sweep_report.read_text()
    assert "reported" not in re.sub(r"reported \(\d+ runs\)", "", text.split("<h2>Figures")[0])


def test_axes_do_not_magnify_noise_and_ticks_are_plain() -> None:
    from matplotlib.figure import Figure

    from rankdecay.report import MIN_RELATIVE_SPAN, _tame_axis

    def axis(values: list[float], integer: bool = False, log: bool = False):
        ax = Figure().subplots()
        ax.plot(range(len(values)), values)
        if log:
            ax.set_yscale("log")
        _tame_axis(ax, values, integer=integer)
        ax.figure.canvas.draw()
        return ax

    ax = axis([16.0, 16.0, 16.0], integer=True)  # a constant rank
    lo, hi = ax.get_ylim()
    assert hi - lo >= MIN_RELATIVE_SPAN * 16 - 1e-9 and lo < 16 < hi
    ticks = [t for t in ax.get_yticks() if lo <= t <= hi]
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)
    ax = axis([13.405, 13.395, 13.385])  # noise must not look like a cliff
    lo, hi = ax.get_ylim()
    assert (13.405 - 13.385) / (hi - lo) < 0.01
    ax = axis([1.0, 5.0, 30.0])  # a real change keeps matplotlib's own limits
    lo, hi = ax.get_ylim()
    assert hi - lo < 1.2 * 29
    ax = axis([2.5675, 2.56, 2.55], log=True)  # log axes too, and plain labels
    lo, hi = ax.get_ylim()
    assert hi / lo >= 1 + MIN_RELATIVE_SPAN - 1e-9
    for ax in (axis([1e-3, 0.5, 2.0], log=True), axis([1.01, 1.02, 1.03], log=True)):
        labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True)]
        assert labels and not any("$" in s or "×" in s or "10^" in s for s in labels), labels
        assert any(s for s in labels)


def test_report_refuses_a_model_directory(tmp_path: Path, capsys) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32,
    )  # fmt: skip
    model_dir = tmp_path / "bert"
    transformers.BertModel(cfg).save_pretrained(model_dir)
    before = sorted(p.name for p in model_dir.iterdir())
    capsys.readouterr()
    assert main(["report", str(model_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rankdecay: error: ") and "\n" not in err
    assert "Hugging Face model directory" in err and "rankdecay analyze" in err
    assert sorted(p.name for p in model_dir.iterdir()) == before  # nothing written into it


def _browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("chromium / chromedriver are not installed (Debian: chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="rankdecay-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,2000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    return driver, profile


def _check_page(driver, page: Path, shot: Path) -> int:
    """Load ``page``; every image decodes, nothing logs an error, nothing scrolls sideways (the
    page, and each table inside its box), and a full-page screenshot is saved to ``shot``."""
    driver.set_window_size(1280, 1000)
    driver.get(page.resolve().as_uri())
    widths = driver.execute_script(
        "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)"
    )
    assert widths and all(w > 0 for w in widths), widths
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe
    page_w = driver.execute_script(
        "const s = document.scrollingElement; return [s.scrollWidth, s.clientWidth]"
    )
    assert page_w[0] <= page_w[1], f"{page.name} scrolls sideways: {page_w}"
    tables = driver.execute_script(
        "return Array.from(document.querySelectorAll('main table')).map(t => {"
        " const box = t.closest('.scroll') || t.parentElement;"
        " return [box.scrollWidth, box.clientWidth, t.getBoundingClientRect().width,"
        " box.getBoundingClientRect().width]; })"
    )
    assert tables
    for scroll_w, client_w, table_w, box_w in tables:
        assert scroll_w <= client_w + 1 and table_w <= box_w + 1, (page.name, tables)
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1280, min(height + 100, 16000))
    assert driver.save_screenshot(str(shot))
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000
    return len(widths)


def test_reports_render_in_headless_chromium(
    sweep_dir: Path, sweep_report: Path, tmp_path: Path
) -> None:
    from torch import nn

    from rankdecay.analyze import analyze

    sweep_html = sweep_report
    run_dir = next(p for p in sweep_dir.iterdir() if p.is_dir())
    run_html = build_report(run_dir, out=tmp_path / "run" / "report.html", steps=[0, 30, 60])
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=4, dim_feedforward=32, batch_first=True)
    report = analyze(nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False))
    model_html = analysis_html(report, tmp_path / "model" / "analysis.html")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["analysis.html"]
    figures = re.findall(r'<figure id="fig-([^"]+)"', model_html.read_text())
    assert figures[0] == "heads_spectra" and "heads_rank" in figures
    shots = Path(os.environ.get("RANKDECAY_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    driver, profile = _browser()
    try:
        assert _check_page(driver, sweep_html, shots / "sweep.png") >= 4
        assert _check_page(driver, run_html, shots / "run.png") >= 4
        assert _check_page(driver, model_html, shots / "model.png") >= 3
        spectrum = driver.execute_script(
            "const f = document.getElementById('fig-heads_spectra');"
            " return f ? f.querySelector('img').naturalWidth : 0"
        )
        assert spectrum > 300  # the per-head spectrum figure is on the model page
        # the run page puts the verdict first, with the run's own claim
        driver.get(run_html.resolve().as_uri())
        first = driver.execute_script(
            "return document.querySelector('main section h2').textContent"
        )
        assert first == "Verdict"
        claim = load_run(run_dir).verdict[0]["claim"]
        assert claim in driver.execute_script("return document.body.innerText")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_experiment_figures_come_from_the_experiment(sweep_dir: Path) -> None:
    """The phase diagram is drawn because the sweep's experiment supplies it (the toy's and
    grokking's ``figures`` hooks), never guessed from key names: grokking's hook finds its own keys
    and yields the numbers of :func:`phase_data`; a grid without them gets none; an experiment
    that cannot be loaded is named in a warning and its figures are left out."""
    from rankdecay.experiments import get_experiment
    from rankdecay.report import SweepData

    df = load_sweep(sweep_dir)
    runs = {name: load_run(d) for name, d in zip(df["run"], df["run_dir"])}
    names = {"fraction": "task.train_fraction", "weight_decay": "strength"}
    grokking = get_experiment("grokking")
    assert grokking.trainer == "train" and grokking.figures is not None
    renamed = df.rename(columns=names)
    (fig,) = grokking.figures(SweepData(renamed, runs, list(names.values())))
    assert fig.name == "phase_diagram" and "task.train_fraction × strength" in fig.caption
    # explicit keys win over the grid's order
    (panel,) = phase_data(renamed, runs, ["strength", "task.train_fraction"], *names.values())
    assert panel["best"] == phase_data(df, runs, list(names))[0]["best"]
    assert grokking.figures(SweepData(renamed, runs, ["task.train_fraction", "arm"])) == []
    assert get_experiment("factorization").figures is None

    from rankdecay.report import _experiment_figures

    (own,) = _experiment_figures(df, runs, list(names))  # the toy's hook, as the report asks
    assert own.name == "phase_diagram"
    df.attrs["experiment"] = "no_such_module_16c:EXPERIMENT"
    with pytest.warns(UserWarning, match="no_such_module_16c.*cannot be loaded"):
        assert _experiment_figures(df, runs, list(names)) == []
