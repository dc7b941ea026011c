"""The command line is light: help, ``list`` and reports of runs import no torch.

Each check runs in a fresh interpreter (this test process has imported torch long ago) and reads
``sys.modules`` after the call. The CPU time of ``python -m rankdecay --help`` (and of ``list``
and ``sweep --help``) is measured in benchmarks/bench_cli.py, not asserted here.
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
    env["COLUMNS"] = "1000"  # wide enough that neither rich nor argparse wraps a table cell
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
        ["sweep", "--help"],
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


_OUTPUTS = """
import contextlib, io, json, sys
from rankdecay.cli import main
out = {}
for argv in ARGVS:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    out[" ".join(argv)] = [code, buf.getvalue()]
print(json.dumps({"torch": "torch" in sys.modules, "out": out}))
"""


def _outputs(argvs: list[list[str]]) -> dict[str, tuple[int, str]]:
    """(exit code, stdout) of each command line, all run in one fresh interpreter that must not
    have imported torch by the end."""
    proc = _fresh(f"ARGVS = {argvs!r}\n" + _OUTPUTS)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert not result["torch"], f"{argvs} imported torch"
    return {k: (code, text) for k, (code, text) in result["out"].items()}


def _rows(text: str) -> dict[str, list[str]]:
    """First cell → the cells of each body row of the rich tables in ``text``."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            rows[cells[0]] = cells
    return rows


def test_list_imports_no_torch_and_shows_every_experiment_and_key() -> None:
    """``rankdecay list`` and ``rankdecay list EXP [--preset P]``: every experiment with its
    presets, every config key with its value under the preset and, where different, its default
    (read here from the experiment records, which this process may import with torch)."""
    from rankdecay.config import flatten
    from rankdecay.experiments import get_experiment, list_experiments

    names = list_experiments()
    assert len(names) >= 5
    argvs = [["list"]] + [["list", n] for n in names]
    argvs += [
        ["list", n, "--preset", "paper"] for n in names if "paper" in get_experiment(n).presets
    ]
    outputs = _outputs(argvs)
    code, text = outputs["list"]
    rows = _rows(text)
    assert code == 0
    for name in names:
        exp = get_experiment(name)
        assert rows[name][1:3] == [exp.reproduces, ", ".join(exp.presets)], name
    for argv in argvs[1:]:
        exp = get_experiment(argv[1])
        preset = argv[3] if len(argv) > 2 else "quick"
        code, text = outputs[" ".join(argv)]
        assert code == 0, argv
        assert f"values under preset {preset}" in text, argv
        defaults, values = flatten(exp.config_cls()), flatten(exp.config(preset))
        rows = _rows(text)
        assert set(defaults) <= set(rows), (argv, sorted(set(defaults) - set(rows)))
        for key, default in defaults.items():
            shown = "" if values[key] == default else repr(default)
            assert rows[key][2:] == [repr(values[key]), shown], (argv, key, rows[key])
        assert all(p in text.split("presets:")[-1] for p in exp.presets), argv


def test_sweep_help_lists_every_executor_option_without_torch() -> None:
    """``rankdecay sweep --help`` shows the options each executor class declares (the ensemble's
    --members too) with the same help, but loads no executor module that imports torch."""
    import argparse

    from rankdecay.sweep import EXECUTORS, get_executor

    code, text = _outputs([["sweep", "--help"]])["sweep --help"]
    assert code == 0
    flat = " ".join(text.split())
    for name in EXECUTORS:
        declared = argparse.ArgumentParser(add_help=False)
        get_executor(name).add_arguments(declared)
        for action in declared._actions:  # noqa: SLF001
            for option in action.option_strings:
                assert option in flat, (name, option)
            assert " ".join((action.help or "").split()) in flat, (name, action.help)
    assert "--members" in flat and "--ray-address" in flat


def test_task_configs_load_without_torch_and_keep_their_old_names() -> None:
    """The task configs live in rankdecay.tasks.configs (no torch); each task module re-exports
    its own under the old name, and ``build`` gives that module's task."""
    proc = _fresh(
        "import sys\n"
        "from rankdecay.tasks import TASKS, task_config_class\n"
        "names = [task_config_class(t).__name__ for t in TASKS]\n"
        "assert 'torch' not in sys.modules, 'rankdecay.tasks imported torch'\n"
        "print(','.join(names))"
    )
    assert proc.returncode == 0, proc.stderr
    import importlib

    from rankdecay.tasks import TASKS, configs

    assert proc.stdout.strip() == ",".join(cls for _, cls in TASKS.values())
    for module_name, cls_name in TASKS.values():
        module = importlib.import_module(f"rankdecay.tasks.{module_name}")
        cls = getattr(module, cls_name)
        assert cls is getattr(configs, cls_name) and cls_name in module.__all__
        assert cls._builds[0] == module_name  # noqa: SLF001
        assert getattr(module, cls._builds[1]).__module__ == module.__name__  # noqa: SLF001
