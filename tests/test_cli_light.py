"""The command line is light: help, list of commands and reports of runs import no torch.

Each check runs in a fresh interpreter (this test process has imported torch long ago) and reads
``sys.modules`` after the call. The CPU time of ``python -m rankdecay --help`` is measured in
benchmarks/bench_cli.py, not asserted here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _fresh(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120
    )


_NO_TORCH_AFTER = """
import sys
from rankdecay.cli import main
try:
    code = main({argv!r})
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "numpy", "transformers") if m in sys.modules)
print("RESULT", code, ",".join(heavy) or "-")
"""


def _result(argv: list[str]) -> tuple[str, str]:
    proc = _fresh(_NO_TORCH_AFTER.format(argv=argv))
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    _, code, heavy = line.split(" ")
    return code, heavy


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["analyze", "--help"],
        ["run", "--help"],
        ["list", "--help"],
        ["report", "--help"],
    ],
)
def test_help_imports_no_torch(argv: list[str]) -> None:
    code, heavy = _result(argv)
    assert code == "0"
    assert "torch" not in heavy.split(","), f"rankdecay {' '.join(argv)} imported {heavy}"


def test_import_rankdecay_is_lazy_but_complete() -> None:
    # that the names resolve (and analyze/polar to the functions): tests/test_public_api.py
    proc = _fresh(
        "import sys, rankdecay as rd\n"
        "assert 'torch' not in sys.modules, 'import rankdecay imported torch'\n"
        "assert dir(rd) == sorted(rd.__all__) and 'analyze' in rd.__all__\n"
        "print('ok')"
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def _tiny_run(run: Path) -> None:
    """A finished run directory in the format of rankdecay.runio, written by hand."""
    run.mkdir()
    (run / "config.json").write_text(
        json.dumps({"experiment": "toy", "preset": "quick", "config": {"seed": 0, "lr": 0.1}})
    )
    rows = [{"step": s, "loss": 1.0 / (s + 1), "val_acc": min(1.0, s / 4)} for s in range(5)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"status": "finished", "step": 4, "final": {"loss": 0.2}, "verdict": []}
    (run / "summary.json").write_text(json.dumps(summary))


def test_report_of_a_run_and_bad_input_import_no_torch(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("pandas")
    _tiny_run(tmp_path / "run")
    code, heavy = _result(["report", str(tmp_path / "run")])
    assert code == "0" and "torch" not in heavy.split(",")
    assert (tmp_path / "run" / "report" / "report.html").is_file()
    code, heavy = _result(["report", str(tmp_path / "missing")])  # one sentence, exit 2
    assert code == "2" and "torch" not in heavy.split(",")


def test_python_dash_m_rankdecay_and_the_console_script() -> None:
    commands = [[sys.executable, "-m", "rankdecay"], [sys.executable, "-m", "rankdecay.cli"]]
    script = shutil.which("rankdecay")
    if script:
        commands.append([script])
    for cmd in commands:
        proc = subprocess.run(
            [*cmd, "--help"], env=_env(), capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, (cmd, proc.stderr)
        for command in ("analyze", "run", "list", "sweep", "report"):
            assert command in proc.stdout, (cmd, command)
    # a bad command line is one argparse error, exit 2, through -m as through the script
    proc = subprocess.run(
        [sys.executable, "-m", "rankdecay", "no-such-command"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
