"""distributed.py: `rankdecay run lm` on 2 CPU processes (gloo, loopback) reproduces a 1-process run
on the same global batch, resuming from a checkpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rankdecay.distributed import dist_info, launched_distributed, shard_rows
from rankdecay.errors import RankdecayError
from rankdecay.experiments import get_experiment
from rankdecay.runfiles import checkpoint_step
from rankdecay.runio import read_jsonl
from rankdecay.train import train

TINY = [  # a tiny character LM (readout at every position, grad clipping) + LRD
    "task.seq_len=16",
    "task.n_eval_windows=8",
    "model.n_layers=1",
    "model.d_model=16",
    "model.n_heads=2",
    "model.d_mlp=32",
    "optim.warmup_steps=2",
    "optim.schedule=constant",  # so that a 6-step run is a prefix of the 12-step one
    "train.batch_size=16",
    "train.eval_batch_size=8",
    "train.steps=12",
    "train.log_every=2",
    "train.eval_every=6",
    "train.monitor_every=6",
    "train.checkpoint_every=6",
    "train.device=cpu",
    "lrd.strength=1e-2",
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    env["GLOO_SOCKET_IFNAME"] = "lo"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _torchrun(out: Path, *extra: str, sets: list[str] = TINY) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "rankdecay",  # the documented form: torchrun … -m rankdecay run …
        "run",
        "lm",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]
    for s in sets:  # applied in order: a later value of a key wins
        args += ["--set", s]
    return subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=120)


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r}


def test_two_gloo_processes_resume_and_match_one_process(tmp_path: Path) -> None:
    """One 1-process run of 12 steps is the reference. A second 1-process run stops at its step-6
    checkpoint; 2 gloo processes resume it (every rank loads the checkpoint) and train steps
    7–12 on shards of the same global batch: the logged losses, evaluation and spectra equal the
    reference, and rank 0 alone wrote the files, in the single-process format."""
    exp = get_experiment("lm")
    cfg = exp.config("quick", TINY)
    solo = train(cfg, tmp_path / "solo", progress=False, experiment="lm", preset="quick")
    assert solo["status"] == "finished"

    part = tmp_path / "part"
    half = exp.config("quick", [*TINY, "train.steps=6"])
    train(half, part, progress=False, experiment="lm", preset="quick")
    meta = json.loads((part / "config.json").read_text())
    meta["config"]["train"]["steps"] = 12  # continue the same run to 12 steps
    (part / "config.json").write_text(json.dumps(meta))
    (part / "summary.json").write_text(json.dumps({"status": "interrupted"}))

    proc = _torchrun(part, "--resume", str(part))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((part / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2
    assert summary["backend"] == "gloo" and summary["resumed_from"] == 6
    assert summary["local_batch_size"] == 8  # each rank trained on half of the global 16
    a, b = _losses(tmp_path / "solo"), _losses(part)
    assert sorted(a) == sorted(b) == [2, 4, 6, 8, 10, 12]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=2e-5, abs=2e-6), step
    fa, fb = solo["final"], summary["final"]
    assert fb["val_loss"] == pytest.approx(fa["val_loss"], rel=1e-4)
    assert fb["val_acc"] == pytest.approx(fa["val_acc"])
    assert fb["qk_stable_rank"] == pytest.approx(fa["qk_stable_rank"], rel=1e-4)
    solo_rows = list(read_jsonl(tmp_path / "solo" / "metrics.jsonl"))
    rows = list(read_jsonl(part / "metrics.jsonl"))
    assert [sorted(r) for r in rows] == [sorted(r) for r in solo_rows]  # each row once, same keys
    n_spec = sum(1 for _ in read_jsonl(part / "spectra.jsonl"))
    assert n_spec == sum(1 for _ in read_jsonl(tmp_path / "solo" / "spectra.jsonl"))


def test_shards_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [shard_rows(12, r, 3) for r in range(3)] == [slice(0, 4), slice(4, 8), slice(8, 12)]
    with pytest.raises(RankdecayError, match="multiple of 4"):
        shard_rows(10, 0, 4)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert not launched_distributed()
    assert (dist_info().rank, dist_info().world_size) == (0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launched_distributed()
    assert (dist_info().rank, dist_info().world_size, dist_info().local_rank) == (1, 2, 1)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(RankdecayError, match="WORLD_SIZE"):
        dist_info()


def test_two_gloo_processes_stop_early_where_one_process_does(tmp_path: Path) -> None:
    """Early stopping under torchrun: the streak counts rank 0's evaluation rows (val_loss is
    evaluated on rank 0 alone), which every rank receives, so both ranks end at the same step.
    With val_loss > 0 at steps 0, 2, 4 (patience 3) the run stops at step 4 of 12, exactly as the
    1-process run with the same config: same losses, same rows, a checkpoint at the stop."""
    stop = [
        "train.eval_every=2",
        "train.early_stop_key=val_loss",
        "train.early_stop_above=0",
        "train.early_stop_patience=3",
    ]
    cfg = get_experiment("lm").config("quick", [*TINY, *stop])
    solo = train(cfg, tmp_path / "solo", progress=False, experiment="lm", preset="quick")
    assert solo["status"] == "finished" and solo["step"] == 4
    assert solo["stopped_early"] == {"step": 4, "key": "val_loss", "above": 0.0, "patience": 3}

    proc = _torchrun(tmp_path / "ddp", sets=[*TINY, *stop])
    assert proc.returncode == 0, proc.stderr[-3000:]  # a rank that missed the stop would hang
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2
    assert summary["step"] == 4 and summary["stopped_early"] == solo["stopped_early"]
    a, b = _losses(tmp_path / "solo"), _losses(tmp_path / "ddp")
    assert sorted(a) == sorted(b) == [2, 4]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=2e-5, abs=2e-6), step
    solo_rows = list(read_jsonl(tmp_path / "solo" / "metrics.jsonl"))
    rows = list(read_jsonl(tmp_path / "ddp" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [r["step"] for r in solo_rows] == [0, 2, 4]
    for r, s in zip(rows, solo_rows):
        assert r["val_loss"] == pytest.approx(s["val_loss"], rel=1e-4)
    assert checkpoint_step(tmp_path / "ddp") == checkpoint_step(tmp_path / "solo") == 4
