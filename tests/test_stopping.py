"""Early stopping (rankdecay.stopping + the train loop): stops where the rule says, resumes exactly."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from rankdecay.errors import RankdecayError
from rankdecay.experiments import get_experiment
from rankdecay.stopping import EarlyStop
from rankdecay.train import RunWriter, build_model

TINY = [
    "task.n_keys=4",
    "task.n_values=4",
    "task.n_pairs=2",
    "task.n_eval=64",
    "model.d_model=16",
    "model.n_heads=2",
    "train.batch_size=16",
    "train.log_every=5",
    "train.eval_every=5",
    "train.monitor_every=10",
    "train.checkpoint_every=20",
    "train.steps=40",
]


def _cfg(*extra: str):
    exp = get_experiment("recall")
    return exp, exp.config("quick", [*TINY, *extra])


def _rule(values: list[float], above: float, patience: int) -> int | None:
    """Index of the evaluation at which the rule stops (independent of EarlyStop)."""
    streak = 0
    for i, v in enumerate(values):
        streak = streak + 1 if v > above else 0
        if streak >= patience:
            return i
    return None


def test_early_stop_counts_consecutive_strict_exceedances() -> None:
    e = EarlyStop("val_acc", 0.99, 2)
    seq = [0.5, 0.995, 0.99, 0.999, None, 0.9991]  # 0.99 is not > 0.99; None = a log-only row
    due = [e.update({} if v is None else {"val_acc": v}) for v in seq]
    assert due == [False, False, False, False, False, True]
    assert not EarlyStop(above=None).update({"val_acc": 1.0})
    with pytest.raises(RankdecayError, match="early_stop_patience"):
        EarlyStop(above=0.5, patience=0)


def test_run_stops_where_the_rule_says(tmp_path: Path) -> None:
    exp, cfg = _cfg()
    ref = exp.run(cfg, tmp_path / "ref", progress=False)
    rows = [json.loads(s) for s in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["val_acc"]) for r in rows if "val_acc" in r]
    vals = sorted(v for _, v in evals[1:])
    for above, patience in ((-1.0, 3), (vals[len(vals) // 2], 2)):
        i = _rule([v for _, v in evals], above, patience)
        want = ref["step"] if i is None or evals[i][0] == cfg.train.steps else evals[i][0]
        _, c = _cfg(f"train.early_stop_above={above}", f"train.early_stop_patience={patience}")
        out = tmp_path / f"stop{patience}"
        s = exp.run(c, out, progress=False)
        assert s["status"] == "finished" and s["step"] == want
        assert ("stopped_early" in s) == (want < cfg.train.steps)
        got = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert got == [r for r in rows if r["step"] <= want]  # the same run, cut at the stop
        again = exp.run(c, out, resume=True, progress=False)  # a finished run stays finished
        assert again["step"] == want


def test_kill_and_resume_mid_streak_equals_uninterrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted at step 12 (streak 3 of 4: evaluations 0, 5, 10), the resumed run replays the
    streak from metrics.jsonl and stops at 15 like the uninterrupted run (not at 30)."""
    import rankdecay.loop as T

    extra = ("train.early_stop_above=-1", "train.early_stop_patience=4")
    exp, cfg = _cfg(*extra)
    ref = exp.run(cfg, tmp_path / "ref", progress=False)
    assert ref["step"] == 15 and ref["stopped_early"]["step"] == 15

    real = T.lr_at

    def interrupt_at_12(t, optim, total):
        if t == 12:
            os.kill(os.getpid(), signal.SIGINT)
        return real(t, optim, total)

    run = tmp_path / "run"
    monkeypatch.setattr(T, "lr_at", interrupt_at_12)
    first = exp.run(cfg, run, progress=False)
    monkeypatch.setattr(T, "lr_at", real)
    assert first["status"] == "interrupted" and 12 <= first["step"] < 15
    resumed = exp.run(cfg, run, resume=True, progress=False)
    assert resumed["status"] == "finished" and resumed["step"] == 15
    assert resumed["resumed_from"] == first["step"]
    assert (run / "metrics.jsonl").read_text() == (tmp_path / "ref" / "metrics.jsonl").read_text()
    task = cfg.task.build(cfg.seed)
    a, b = build_model(cfg.model, task), build_model(cfg.model, task)
    RunWriter(tmp_path / "ref").load_checkpoint(a)
    RunWriter(run).load_checkpoint(b)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_ensemble_runs_early_stop_and_partial_batches_solo() -> None:
    from rankdecay.ensemble import unsupported_reason

    _, cfg = _cfg("train.early_stop_above=0.9")
    assert "early stopping" in unsupported_reason(cfg)
    g = get_experiment("grokking")
    assert "partial" in unsupported_reason(g.config("paper", {"train.early_stop_above": None}))
    assert unsupported_reason(g.config("paper-v1")) is None
