"""The Ray executor on a real local Ray instance (loopback, no dashboard) gives the same sweep.json
rows as the local process pool for the same grid and seeds."""

from __future__ import annotations

import math
import socket
import time
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


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("address", ["closed-port", "auto"])
def test_unreachable_cluster_is_one_sentence_and_writes_nothing(
    tmp_path: Path, address: str, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """No cluster at the address: exit 2 at once (Ray itself would retry a dead host:port for
    minutes), one sentence naming the address, and no sweep directory left behind."""
    if ray.is_initialized():  # pragma: no cover - another test left one running
        ray.shutdown()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if address == "auto":
        # `ray start` writes the address of a running cluster here; a fresh temp dir has none
        monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray_tmp"))
    else:
        address = f"127.0.0.1:{_closed_port()}"
    out = tmp_path / "sweep"
    argv = ["sweep", "factorization", "--seeds", "1", "--grid", "weight_decay=0.1"]
    argv += ["--executor", "ray", "--ray-address", address, "--no-progress", "--out", str(out)]
    start = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - start < 60
    err = capsys.readouterr().err
    assert f"Ray at {address}" in err and "Traceback" not in err
    assert not out.exists()
    assert not ray.is_initialized()
