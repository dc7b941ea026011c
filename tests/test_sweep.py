"""Sweeps: idempotence, resume after a kill, failure isolation, bad input (exit 2, one sentence).

The runs are real (tests/sweep_toy.py: gradient descent on an L2-regularized matrix
factorization, with exact checkpoint/resume), executed in spawned worker processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sweep_toy

from rankdecay.cli import main
from rankdecay.runio import read_json, read_jsonl
from rankdecay.sweep import plan_sweep, run_name, run_sweep

TOY = "sweep_toy:EXPERIMENT"
TESTS = Path(__file__).resolve().parent


def _mtimes(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/summary.json")}


def _solo(tmp: Path, preset: str, overrides: dict, seed: int) -> dict:
    """The same run done directly in this process, as independent ground truth."""
    cfg = sweep_toy.EXPERIMENT.config(preset, overrides, seed=seed)
    run_dir = tmp / f"solo-{seed}-{sorted(overrides.items())}"
    return sweep_toy.run(cfg, run_dir), run_dir


def test_sweep_runs_every_point_and_rerun_runs_nothing(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    first = run_sweep(TOY, preset="quick", out=out, workers=2, threads_per_worker=1)
    assert first.exit_code == 0
    index = read_json(out / "sweep.json")
    assert index["grid"] == {"weight_decay": [0.1, 0.2]} and index["seeds"] == [0, 1]
    assert len(index["runs"]) == 4 and len(set(first.executed)) == 4
    _, _, spec = plan_sweep(TOY, "quick")
    for row in index["runs"]:
        assert row["status"] == "finished" and row["error"] is None and row["wall_s"] > 0
        assert row["name"] == run_name(spec, row["point"], row["seed"])
        run_dir = out / row["run_dir"]
        cfg = json.loads((run_dir / "config.json").read_text())["config"]
        assert cfg["weight_decay"] == row["point"]["weight_decay"] and cfg["seed"] == row["seed"]
        solo, _ = _solo(tmp_path, "quick", row["point"], row["seed"])
        assert row["final"] == pytest.approx(solo["final"], rel=1e-12)
    before = _mtimes(out)
    again = run_sweep(TOY, preset="quick", out=out, workers=1)
    assert again.executed == [] and again.exit_code == 0
    assert _mtimes(out) == before
    # the CLI says the same: nothing to do, exit 0
    assert main(["sweep", TOY, "--out", str(out), "--no-progress"]) == 0
    assert _mtimes(out) == before


def test_killed_sweep_resumes_only_missing_runs(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "rankdecay.cli",
        "sweep",
        TOY,
        "--preset",
        "slow",
        "--out",
        str(out),
        "--workers",
        "1",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    killed_in: str | None = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            try:
                rows = json.loads((out / "sweep.json").read_text())["runs"]
            except (OSError, ValueError):
                continue
            running = [r for r in rows if r["status"] == "running"]
            if sum(r["status"] == "finished" for r in rows) >= 1 and running:
                state = out / running[0]["run_dir"] / "checkpoint" / "state.json"
                if state.exists() and json.loads(state.read_text())["step"] >= 5:
                    killed_in = running[0]["name"]
                    os.killpg(proc.pid, signal.SIGKILL)  # parent and worker die together
                    break
    finally:
        if proc.poll() is None and killed_in is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed_in is not None, proc.stderr.read().decode() if proc.stderr else ""
    rows = read_json(out / "sweep.json")["runs"]
    finished_before = {r["name"] for r in rows if r["status"] == "finished"}
    assert finished_before and killed_in not in finished_before
    before = _mtimes(out)

    resume = ["sweep", TOY, "--preset", "slow", "--out", str(out), "--workers", "2"]
    assert main([*resume, "--threads-per-worker", "1", "--no-progress"]) == 0
    rows = read_json(out / "sweep.json")["runs"]
    assert all(r["status"] == "finished" for r in rows)
    after = _mtimes(out)
    for name in finished_before:  # finished runs were not touched
        assert after[name] == before[name]
    killed_dir = out / killed_in
    assert int((killed_dir / "resumed_from.txt").read_text()) >= 5  # resumed, not restarted
    row = next(r for r in rows if r["name"] == killed_in)
    solo, solo_dir = _solo(tmp_path, "slow", row["point"], row["seed"])
    assert list(read_jsonl(killed_dir / "metrics.jsonl")) == list(
        read_jsonl(solo_dir / "metrics.jsonl")
    )
    assert row["final"] == pytest.approx(solo["final"], rel=1e-12)


def test_failing_runs_are_recorded_and_do_not_stop_others(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sw"
    argv = [
        "sweep",
        TOY,
        "--grid",
        "mode=ok,raise,crash",
        "--grid",
        "weight_decay=0.1",
        "--seeds",
        "1",
        "--out",
        str(out),
        "--workers",
        "1",
        "--no-progress",
    ]
    assert main(argv) == 2  # two runs did not finish
    err = capsys.readouterr().err
    rows = {r["point"]["mode"]: r for r in read_json(out / "sweep.json")["runs"]}
    assert rows["ok"]["status"] == "finished" and rows["ok"]["final"]["sv_error"] < 0.05
    assert rows["raise"]["status"] == "failed"
    assert "RuntimeError: toy failure requested by mode=raise" in rows["raise"]["error"]
    assert "Traceback" in (out / rows["raise"]["run_dir"] / "error.txt").read_text()
    assert rows["crash"]["status"] == "failed" and "worker process died" in rows["crash"]["error"]
    assert "toy failure" in err
    ok_mtime = _mtimes(out)[rows["ok"]["name"]]
    # re-running retries only the failed ones
    result = run_sweep(
        TOY, grid=["mode=ok,raise,crash", "weight_decay=0.1"], seeds=1, out=out, workers=1
    )
    assert sorted(result.executed) == sorted([rows["raise"]["name"], rows["crash"]["name"]])
    assert result.exit_code == 2 and _mtimes(out)[rows["ok"]["name"]] == ok_mtime


def _one_sentence_error(capsys, argv: list[str], *needles: str) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("rankdecay: error: ") and "\n" not in err and "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def test_bad_input_exits_2_with_one_sentence(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sw"
    _one_sentence_error(
        capsys,
        ["sweep", TOY, "--grid", "weight_dekay=0.1,0.2", "--out", str(out)],
        "weight_dekay",
        "weight_decay",
    )
    _one_sentence_error(
        capsys, ["sweep", TOY, "--grid", "weight_decay=", "--out", str(out)], "no values"
    )
    _one_sentence_error(
        capsys, ["sweep", TOY, "--preset", "nogrid", "--out", str(out)], "grid is empty"
    )
    _one_sentence_error(
        capsys, ["sweep", TOY, "--grid", "n=five", "--out", str(out)], "'n' expects int"
    )
    _one_sentence_error(
        capsys, ["sweep", TOY, "--workers", str(os.cpu_count() + 1), "--out", str(out)], "--workers"
    )
    _one_sentence_error(
        capsys, ["sweep", TOY, "--executor", "nope", "--out", str(out)], "unknown executor"
    )
    _one_sentence_error(
        capsys, ["sweep", "no-such-experiment", "--out", str(out)], "unknown experiment"
    )
    assert not (out / "sweep.json").exists()
    # a directory holding a different sweep
    assert (
        main(
            [
                "sweep",
                TOY,
                "--grid",
                "weight_decay=0.3",
                "--seeds",
                "1",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    _one_sentence_error(
        capsys,
        ["sweep", TOY, "--grid", "weight_decay=0.4", "--seeds", "1", "--out", str(out)],
        "different sweep",
        "grid",
    )
    _one_sentence_error(
        capsys,
        [
            "sweep",
            TOY,
            "--preset",
            "slow",
            "--grid",
            "weight_decay=0.3",
            "--seeds",
            "1",
            "--out",
            str(out),
        ],
        "preset",
    )
    # a directory that is something else
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    _one_sentence_error(capsys, ["sweep", TOY, "--out", str(other)], "not empty")


def test_plan_sweep_grid_semantics() -> None:
    exp, spec_str, spec = plan_sweep(
        TOY, "quick", grid=["n=4,5", "weight_decay=1e-1,0.3"], seeds="3,7"
    )
    assert spec_str == TOY and exp is sweep_toy.EXPERIMENT
    assert spec.grid == {"weight_decay": [0.1, 0.3], "n": [4, 5]}  # preset key replaced, typed
    assert all(isinstance(v, int) for v in spec.grid["n"]) and spec.seeds == [3, 7]
    assert len(spec.points()) == 4
    # --set on a key of the preset's default grid fixes it; the preset's grid is otherwise kept
    _, _, spec = plan_sweep(TOY, "quick", grid=["n=4,5"], fixed=["weight_decay=0.3"], seeds=2)
    assert (
        spec.grid == {"n": [4, 5]} and spec.fixed == {"weight_decay": 0.3} and spec.seeds == [0, 1]
    )
    names = {run_name(spec, p, s) for p in spec.points() for s in spec.seeds}
    assert len(names) == 4 and all(n.startswith("n=") for n in names)
