"""R3 — associative recall with attention weight decay (Kobayashi et al. 2024, Fig. 2).

A 2-layer attention-only transformer (pre-LayerNorm, learned positions, causal, readout at the
last position) is trained online — a fresh batch every step — on associative recall
(``k₁ v₁ … k_n v_n q → value of q``). AdamW; the attention weights W_Q, W_K, W_V, W_O get weight
decay ``weight_decay_attn`` = λ (swept over {0, 1e-3, 1e-2, 1e-1}), every other parameter
``optim.weight_decay`` (0 by default). The monitor records the rank, effective rank, balance
‖AᵀA − BᵀB‖_F and norm gap of every head's QK and OV circuit.

Our choices (REPRODUCTIONS.md marks them so): 16 keys, 16 values, 8 pairs (paper preset);
d_model 128, 4 heads, PyTorch default init (N(0,1) embeddings — the GPT-2-like 0.02 init
stalls at the frequency baseline); lr 1e-3 with 200 warm-up steps; batch 128.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..run_config import LRDConfig, ModelConfig, OptimConfig, TrainConfig
from ..tasks.configs import RecallConfig
from . import Experiment
from ._transformer import verdict_row

if TYPE_CHECKING:  # pragma: no cover
    from ..train import RunResult

__all__ = ["EXPERIMENT", "RecallExperimentConfig"]


def _model() -> ModelConfig:
    return ModelConfig(
        n_layers=2,
        d_model=128,
        n_heads=4,
        d_mlp=0,
        norm="layer",
        pos="learned",
        causal=True,
        init_std=None,
    )


@dataclass
class RecallExperimentConfig:
    """R3 config; ``weight_decay_attn`` is the swept attention weight decay λ."""

    seed: int = 0
    #: AdamW weight decay of W_Q, W_K, W_V, W_O (roles attn_qk, attn_ov); optim.weight_decay_by_role wins
    weight_decay_attn: float = 0.0
    task: RecallConfig = field(default_factory=RecallConfig)
    model: ModelConfig = field(default_factory=_model)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(name="adamw", lr=1e-3, warmup_steps=200)
    )
    lrd: LRDConfig = field(default_factory=LRDConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=10000,
            batch_size=128,
            eval_every=250,
            log_every=50,
            checkpoint_every=1000,
            monitor_every=250,
        )
    )

    def optimizer_settings(self) -> tuple[OptimConfig, LRDConfig]:
        by_role = {"attn_qk": self.weight_decay_attn, "attn_ov": self.weight_decay_attn}
        by_role.update(self.optim.weight_decay_by_role)
        return replace(self.optim, weight_decay_by_role=by_role), self.lrd


def _verdict(result: RunResult) -> list[dict[str, Any]]:
    cfg: RecallExperimentConfig = result.config
    lam = cfg.weight_decay_attn
    final = result.final
    rows = []
    acc = final.get("val_acc")
    rows.append(
        verdict_row(
            "the model learns recall (val accuracy)",
            "≥ 0.95",
            acc,
            None if acc is None else acc >= 0.95,
        )
    )
    for circuit in ("qk", "ov"):
        r, er = final.get(f"{circuit}_rank"), final.get(f"{circuit}_effective_rank")
        if r is not None:
            rows.append(
                verdict_row(
                    f"mean {circuit.upper()} rank (rtol {cfg.train.monitor_rtol:g}) / effective rank at λ={lam:g}",
                    "falls with λ (compare across the sweep)",
                    f"{r:.2f} / {er:.2f}",
                    None,
                )
            )
    for circuit in ("qk", "ov"):
        series = result.series(f"{circuit}_balance")
        if len(series) >= 2 and series[0][1] > 0:
            ratio = series[-1][1] / series[0][1]
            rows.append(
                verdict_row(
                    f"{circuit.upper()} balance ‖AᵀA − BᵀB‖ end/start",
                    "< 1, faster for larger λ"
                    if lam > 0
                    else "reported (λ = 0: no decay expected)",
                    ratio,
                    (ratio < 1.0) if lam > 0 else None,
                )
            )
        gap = result.series(f"{circuit}_norm_gap")
        if len(gap) >= 2 and gap[0][1] > 0:
            ratio = gap[-1][1] / gap[0][1]
            rows.append(
                verdict_row(
                    f"{circuit.upper()} norm gap end/start",
                    "→ 0 (≤ 0.1) for λ > 0" if lam > 0 else "reported (λ = 0)",
                    ratio,
                    (ratio <= 0.1) if lam > 0 else None,
                )
            )
    return rows


_QUICK = {
    "task.n_keys": 8,
    "task.n_values": 8,
    "task.n_pairs": 4,
    "task.n_eval": 512,
    "model.d_model": 64,
    "model.n_heads": 4,
    "optim.lr": 3e-3,
    "optim.warmup_steps": 50,
    "train.steps": 500,
    "train.batch_size": 64,
    "train.eval_every": 100,
    "train.log_every": 25,
    "train.checkpoint_every": 200,
    "train.monitor_every": 100,
}

EXPERIMENT = Experiment(
    name="recall",
    description="R3: 2-layer attention-only transformer on online associative recall, "
    "attention weight decay λ vs QK/OV rank, balance and norm gap",
    config_cls=RecallExperimentConfig,
    trainer="train",
    verdict=_verdict,
    presets={"quick": _QUICK, "paper": {}},
    grids={
        "quick": {"weight_decay_attn": [0.0, 1e-3, 1e-2, 1e-1]},
        "paper": {"weight_decay_attn": [0.0, 1e-3, 1e-2, 1e-1]},
    },
    seeds={"quick": 3, "paper": 3},
    reproduces="R3",
)
