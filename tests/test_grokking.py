"""R4 mechanism at reduced size: Low-Rank Decay collapses the spectrum of W_Q/W_K, L2 does not."""

from __future__ import annotations

from pathlib import Path

from rankdecay.experiments import get_experiment
from rankdecay.runio import read_jsonl

SMALL = [
    "task.p=31",
    "model.d_model=32",
    "model.d_mlp=64",
    "train.batch_size=256",
    "train.steps=100",
    "train.eval_every=100",
    "train.monitor_every=50",
    "train.log_every=50",
    "train.checkpoint_every=100",
    "train.device=cpu",
]


def _stable_rank(run: Path) -> dict[int, float]:
    return {
        r["step"]: r["wqk_stable_rank"]
        for r in read_jsonl(run / "metrics.jsonl")
        if "wqk_stable_rank" in r
    }


def test_lrd_collapses_qk_stable_rank_well_below_the_l2_arm(tmp_path: Path) -> None:
    """Both arms at their published strengths (L2: AdamW weight decay 0.1 on everything; LRD:
    W ← W − 5e-3·polar(W) per step on W_Q, W_K), same seed and data. With QK-norm the loss is
    invariant to the scale of W_Q/W_K, so L2 only shrinks them radially and their stable rank
    ‖W‖_F²/‖W‖₂² stays near its initial value; LRD lowers every singular value by the same amount
    each step, so the small ones reach 0 and the stable rank collapses within ~50 steps."""
    exp = get_experiment("grokking")
    sr = {}
    for arm in ("l2", "lrd"):
        cfg = exp.config("quick", [*SMALL, f"arm={arm}"], seed=0)
        exp(cfg, tmp_path / arm, progress=False)
        sr[arm] = _stable_rank(tmp_path / arm)
    assert sr["l2"][0] == sr["lrd"][0] > 5  # same initialisation, spread-out spectrum
    for step in (50, 100):
        assert sr["lrd"][step] < 0.5 * sr["l2"][step], (step, sr)
    assert sr["l2"][100] > 0.6 * sr["l2"][0]  # L2 leaves the spectrum's shape mostly alone
