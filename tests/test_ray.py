"""The Ray executor on a real local Ray instance (loopback, no dashboard) gives the same sweep.json
rows as the local process pool for the same grid and seeds."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from rankdecay.cli import main
from rankdecay.runio import read_json
from rankdecay.sweep import run_sweep

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'rankdecay[ray]')")

GRID = ["weight_decay=0.1,0.4", "optimizer=gd,adamw"]
FIXED = ["steps=400", "flow_steps=400"]


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def test_ray_executor_matches_local(tmp_path: Path) -> None:
    local = run_sweep(
        "factorization", grid=GRID, fixed=FIXED, seeds=1, out=tmp_path / "local", workers=1
    )
    assert local.exit_code == 0
    if ray.is_initialized():  # pragma: no cover - another test left one running
        ray.shutdown()
    # the CLI path: the executor starts a local Ray instance itself and shuts it down after
    argv = ["sweep", "factorization", "--seeds", "1", "--executor", "ray", "--no-progress"]
    for item in GRID:
        argv += ["--grid", item]
    for item in FIXED:
        argv += ["--set", item]
    assert main([*argv, "--out", str(tmp_path / "ray")]) == 0
    assert not ray.is_initialized()
    ours = read_json(tmp_path / "ray" / "sweep.json")
    theirs = read_json(tmp_path / "local" / "sweep.json")
    assert ours["executor"].startswith("ray") and theirs["executor"].startswith("local")
    assert len(ours["runs"]) == len(theirs["runs"]) == 4
    for a, b in zip(ours["runs"], theirs["runs"]):
        assert (a["name"], a["point"], a["seed"], a["status"]) == (
            b["name"],
            b["point"],
            b["seed"],
            b["status"],
        )
        assert a["status"] == "finished" and a["final"] and _close(a["final"], b["final"])
        assert (tmp_path / "ray" / a["run_dir"] / "summary.json").exists()
    # re-running the finished sweep runs nothing (and needs no Ray instance)
    before = (tmp_path / "ray" / ours["runs"][0]["run_dir"] / "summary.json").stat().st_mtime_ns
    assert main([*argv, "--out", str(tmp_path / "ray")]) == 0
    assert not ray.is_initialized()
    after = (tmp_path / "ray" / ours["runs"][0]["run_dir"] / "summary.json").stat().st_mtime_ns
    assert before == after
