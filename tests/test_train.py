"""train.py: exact resume after SIGKILL, atomic checkpoints, NaN stop, schedule, optimizer groups."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rankdecay.config import apply_overrides
from rankdecay.errors import NonFiniteLossError, RankdecayError
from rankdecay.experiments import get_experiment
from rankdecay.runio import read_jsonl
from rankdecay.train import (
    OptimConfig,
    RunWriter,
    build_model,
    build_optimizer,
    evaluate,
    loss_and_accuracy,
    lr_at,
)

TINY = [
    "task.n_keys=4",
    "task.n_values=4",
    "task.n_pairs=2",
    "task.n_eval=64",
    "model.d_model=16",
    "model.n_heads=2",
    "train.batch_size=16",
    "train.log_every=5",
    "train.eval_every=10",
    "train.monitor_every=10",
    "train.checkpoint_every=20",
]


def _tiny_cfg(*extra: str):
    exp = get_experiment("recall")
    return exp, exp.config("quick", [*TINY, *extra])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rankdecay.cli", *args]


_ARGS = [
    *TINY,
    "train.log_every=10",
    "train.eval_every=25",
    "train.monitor_every=25",
    "train.checkpoint_every=25",
]


def _run_args(out: Path, steps: int) -> list[str]:
    args = ["run", "recall", "--out", str(out), "--no-progress", "--set", f"train.steps={steps}"]
    for s in _ARGS:
        args += ["--set", s]
    return args


def _ckpt_step(run: Path) -> int:
    try:
        return json.loads((run / "checkpoint" / "state.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


def test_resume_after_sigkill_is_exact(tmp_path: Path) -> None:
    """SIGKILL a CLI run (in a subprocess) just after its first checkpoint — often in the middle
    of writing the next rows or checkpoint files — then resume: metrics.jsonl, spectra.jsonl and
    the final weights equal those of an uninterrupted run of the same seed."""
    steps = 120
    exp = get_experiment("recall")
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(*_run_args(run, steps)), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and _ckpt_step(run) < 25:
            time.sleep(0.002)
        time.sleep(0.013)  # an arbitrary instant after the first checkpoint
        killed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert killed, "the run finished before it could be killed; raise the step count"
    # whatever the kill left behind, the readers still work and a checkpoint is there
    list(read_jsonl(run / "metrics.jsonl"))
    assert RunWriter(run).has_checkpoint()
    killed_at = _ckpt_step(run)
    assert 25 <= killed_at < steps

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the subprocess (OMP_NUM_THREADS=1)
    try:
        ref = tmp_path / "ref"
        cfg = exp.config("quick", _ARGS + [f"train.steps={steps}"])
        exp.run(cfg, ref, progress=False, preset="quick")
        summary = exp.run(cfg, run, resume=True, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert summary["status"] == "finished" and summary["resumed_from"] == killed_at
    for name in ("metrics.jsonl", "spectra.jsonl"):
        assert (run / name).read_text() == (ref / name).read_text(), name
    from safetensors.torch import load_file

    a = load_file(str(ref / "checkpoint" / "model.safetensors"))
    b = load_file(str(run / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_in_process_resume_recovers_torn_state(tmp_path: Path) -> None:
    """A torn last JSONL line and a kill between the two checkpoint renames are both recovered."""
    exp, cfg = _tiny_cfg("train.steps=40")
    ref = tmp_path / "ref"
    exp.run(cfg, ref, progress=False)

    cfg_short = apply_overrides(cfg, {"train.checkpoint_every": 20})
    run = tmp_path / "run"
    # a run interrupted after step 20: emulate by running 40 steps, then rewinding the files
    exp.run(cfg_short, run, progress=False)
    w = RunWriter(run)
    # keep the final checkpoint but pretend the crash happened between the renames
    os.replace(w.ckpt, w.dir / ".checkpoint.old")
    summary = json.loads(w.summary_path.read_text())
    w.write_summary({**summary, "status": "running"})  # killed before the final summary
    with open(w.metrics_path, "a") as f:
        f.write('{"step": 41, "loss": 0.')  # torn line
    assert list(read_jsonl(w.metrics_path))[-1]["step"] == 40
    assert w.has_checkpoint() and w.ckpt.exists()
    summary = exp.run(cfg_short, run, resume=True, progress=False)
    assert summary["status"] == "finished"
    assert w.metrics_path.read_text() == (ref / "metrics.jsonl").read_text()


def test_nonfinite_loss_stops_with_clear_error(tmp_path: Path) -> None:
    exp, cfg = _tiny_cfg(
        "train.steps=60", "optim.lr=1e30", "train.checkpoint_every=1", "train.log_every=1"
    )
    run = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match="NaN/Inf .*lower optim.lr"):
        exp.run(cfg, run, progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "NaN/Inf" in summary["error"]
    w = RunWriter(run)
    state = json.loads((w.ckpt / "state.json").read_text())
    assert state["step"] < summary["step"]
    model = build_model(cfg.model, cfg.task.build(cfg.seed))
    w.load_checkpoint(model)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _poison_step_13(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the training loss of the 13th step infinite (through the objective)."""
    import rankdecay.engine as T

    real = T.loss_and_accuracy
    calls = {"n": 0}

    def poisoned(logits, y):
        calls["n"] += 1
        loss, acc = real(logits, y)
        return (loss * float("inf") if calls["n"] == 13 else loss), acc

    monkeypatch.setattr(T, "loss_and_accuracy", poisoned)


def test_nonfinite_injected_inf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An inf in one batch's loss (injected through the objective) is caught at the next log."""
    _poison_step_13(monkeypatch)
    exp, cfg = _tiny_cfg("train.steps=40")
    with pytest.raises(NonFiniteLossError, match="between steps 11 and 15"):
        exp.run(cfg, tmp_path / "inf", progress=False)


def test_resume_after_nan_with_a_lower_learning_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The way out the NaN message names: resume from the checkpoint it names with a lower
    optim.lr; the change is applied and recorded."""
    _poison_step_13(monkeypatch)
    exp, cfg = _tiny_cfg("train.steps=20", "train.checkpoint_every=10")
    run = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match="resume .*intact checkpoint at step 10") as info:
        exp.run(cfg, run, progress=False)
    assert "--" not in str(info.value) and "resume" in info.value.param
    monkeypatch.undo()
    lower = apply_overrides(cfg, {"optim.lr": cfg.optim.lr / 2})
    summary = exp.run(lower, run, resume=True, progress=False)
    assert summary["status"] == "finished" and summary["resumed_from"] == 10
    meta = json.loads((run / "config.json").read_text())
    assert meta["resume_overrides"][0]["changed"]["optim.lr"] == [cfg.optim.lr, cfg.optim.lr / 2]
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [0, 5, 10, 15, 20]


def test_resume_refusals(tmp_path: Path) -> None:
    exp, cfg = _tiny_cfg("train.steps=10")
    run = tmp_path / "r"
    exp.run(cfg, run, progress=False)
    with pytest.raises(RankdecayError, match="already holds a run"):
        exp.run(cfg, run, progress=False)
    other = apply_overrides(cfg, {"model.d_model": 32, "optim.lr": 1e-2})
    with pytest.raises(RankdecayError, match="config differs in model.d_model, which would"):
        exp.run(other, run, resume=True, progress=False)
    with pytest.raises(RankdecayError, match="not a rankdecay run"):
        exp.run(cfg, tmp_path / "empty", resume=True, progress=False)
    # a finished run resumes to its summary without training again
    mtime = (run / "metrics.jsonl").stat().st_mtime_ns
    assert exp.run(cfg, run, resume=True, progress=False)["status"] == "finished"
    assert (run / "metrics.jsonl").stat().st_mtime_ns == mtime


def test_run_directory_contents(tmp_path: Path) -> None:
    exp, cfg = _tiny_cfg("train.steps=20")
    run = tmp_path / "r"
    summary = exp.run(cfg, run, progress=False, preset="quick")
    meta = json.loads((run / "config.json").read_text())
    assert (
        meta["experiment"] == "recall"
        and meta["preset"] == "quick"
        and meta["config"]["train"]["steps"] == 20
    )
    assert "[config.train]" in (run / "config.toml").read_text()
    rows = list(read_jsonl(run / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [0, 5, 10, 15, 20]
    assert {"val_loss", "val_acc", "qk_rank", "wqk_stable_rank"} <= set(rows[0])
    assert {"loss", "acc", "lr"} <= set(rows[1])
    spectra = list(read_jsonl(run / "spectra.jsonl"))
    assert {r["step"] for r in spectra} == {0, 10, 20}
    assert summary["status"] == "finished" and summary["final"]["step"] == 20
    assert summary["verdict"] and {"claim", "target", "measured", "met"} <= set(
        summary["verdict"][0]
    )
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == [
        "model.safetensors",
        "optim.safetensors",
        "state.json",
    ]
    assert not any(p.name.startswith(".checkpoint") for p in run.iterdir())


def test_logged_train_metrics_are_means_of_the_steps(tmp_path: Path) -> None:
    """The loss logged at step s is the mean of the per-step losses since the last log,
    recomputed here from the checkpointed weights and the task's pure batches."""
    exp, cfg = _tiny_cfg("train.steps=10", "train.checkpoint_every=5", "optim.warmup_steps=0")
    run = tmp_path / "r"
    exp.run(cfg, run, progress=False)
    # rebuild the state after step 5 from a second run that stops there
    cfg5 = apply_overrides(cfg, {"train.steps": 5})
    exp.run(cfg5, tmp_path / "r5", progress=False)
    task = cfg.task.build(cfg.seed)
    model = build_model(cfg.model, task)
    w5 = RunWriter(tmp_path / "r5")
    w5.load_checkpoint(model)
    opt, _ = build_optimizer(model, cfg.optimizer_settings()[0])
    from rankdecay.train import _optimizer_from_parts

    tensors, state = w5.load_checkpoint(model)
    _optimizer_from_parts(opt, tensors, state["optimizer"])
    losses = []
    for t in range(5, 10):
        x, y = task.train_batch(t, cfg.train.batch_size)
        loss, _ = loss_and_accuracy(model(x), y)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    row10 = [r for r in read_jsonl(run / "metrics.jsonl") if r["step"] == 10][0]
    assert row10["loss"] == pytest.approx(sum(losses) / 5, rel=1e-5)


def test_evaluate_matches_direct_computation() -> None:
    exp, cfg = _tiny_cfg()
    task = cfg.task.build(0)
    model = build_model(cfg.model, task)
    x, y = task.eval_sets()["val"]
    out = evaluate(model, {"val": (x, y)}, batch_size=7)
    with torch.no_grad():
        logits = model(x)
    ref = torch.nn.functional.cross_entropy(logits.double(), y)
    assert out["val_loss"] == pytest.approx(float(ref), rel=1e-5)
    assert out["val_acc"] == pytest.approx(float((logits.argmax(-1) == y).double().mean()))


def test_loss_and_accuracy_sequence_targets_ignore_index() -> None:
    logits = torch.randn(3, 4, 5)
    y = torch.randint(5, (3, 4))
    y[0, 0] = -100
    loss, acc = loss_and_accuracy(logits, y)
    mask = y != -100
    ref = torch.nn.functional.cross_entropy(logits[mask], y[mask])
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)
    assert float(acc) == pytest.approx(float((logits.argmax(-1)[mask] == y[mask]).float().mean()))


def test_lr_schedule_closed_form() -> None:
    o = OptimConfig(lr=1.0, warmup_steps=4, schedule="cosine", min_lr=0.1)
    assert [lr_at(t, o, 14) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, o, 14) == pytest.approx(1.0)
    assert lr_at(9, o, 14) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(14, o, 14) == pytest.approx(0.1)
    assert lr_at(100, OptimConfig(lr=0.3), 10) == 0.3


def test_optimizer_groups_and_lrd() -> None:
    exp, cfg = _tiny_cfg()
    model = build_model(cfg.model, cfg.task.build(0))
    o = OptimConfig(name="adamw", weight_decay=0.1, weight_decay_by_role={"attn_qk": 0.0})
    opt, lrd = build_optimizer(model, o)
    wd = {g["role"]: g["weight_decay"] for g in opt.param_groups}
    assert wd["attn_qk"] == 0.0 and wd["attn_ov"] == 0.1 and lrd is None
    assert isinstance(opt, torch.optim.AdamW)
    from rankdecay.train import LRDConfig

    c = 0.05
    opt, lrd = build_optimizer(
        model, OptimConfig(name="sgd"), LRDConfig(strength=c, scale_by_lr=False)
    )
    assert isinstance(opt, torch.optim.SGD) and lrd is not None
    W = model.blocks[0].attn.q.weight
    s_before = torch.linalg.svdvals(W.detach().double())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradient: only LRD moves W_Q: W − c·UVᵀ = U(Σ − c)Vᵀ, σᵢ → |σᵢ − c|
    s_after = torch.linalg.svdvals(W.detach().double())
    expected = (s_before - c).abs().sort(descending=True).values
    torch.testing.assert_close(s_after, expected, rtol=0, atol=1e-5)
    with pytest.raises(RankdecayError, match="unknown weight-decay key"):
        build_optimizer(model, OptimConfig(weight_decay_by_role={"attn": 0.0}))
    with pytest.raises(RankdecayError, match="optim.lr"):
        build_optimizer(model, OptimConfig(lr=0.0))
