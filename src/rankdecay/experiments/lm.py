"""R5 — small decoder language model: attention weight decay vs MLP weight decay
(Kobayashi et al. 2024, Table 1).

A character-level (or GPT-2 BPE) decoder LM on Python's ``pydoc_data.topics`` text (or any UTF-8
file, ``task.path``): pre-LayerNorm, learned positions, causal attention, GELU MLP, untied readout
at every position. AdamW with cosine schedule; the attention weights (W_Q, W_K, W_V, W_O) get
weight decay ``weight_decay_attn`` = λ_attn, the MLP weights ``weight_decay_mlp`` = λ_mlp, every
other parameter ``optim.weight_decay`` (0 by default). The grid λ_attn × λ_mlp asks whether QK/OV
rank falls with λ_attn and whether the best validation loss sits at λ_attn < λ_mlp (the paper's
claim). Our choices: widths, steps, the λ grid, 10 % of the text held out for validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..run_config import LRDConfig, ModelConfig, OptimConfig, TrainConfig
from ..tasks.configs import TextConfig
from . import Experiment
from ._transformer import verdict_row

if TYPE_CHECKING:  # pragma: no cover
    from ..train import RunResult

__all__ = ["EXPERIMENT", "LMConfig"]


def _model() -> ModelConfig:
    return ModelConfig(
        n_layers=4,
        d_model=128,
        n_heads=4,
        d_mlp=512,
        mlp="gelu",
        norm="layer",
        pos="learned",
        readout="all",
        causal=True,
        tie_embeddings=False,
    )


@dataclass
class LMConfig:
    """R5 config: ``weight_decay_attn`` × ``weight_decay_mlp`` is the swept grid."""

    seed: int = 0
    #: AdamW weight decay of W_Q, W_K, W_V, W_O (roles attn_qk, attn_ov)
    weight_decay_attn: float = 0.1
    #: AdamW weight decay of the MLP weights (role mlp)
    weight_decay_mlp: float = 0.1
    task: TextConfig = field(default_factory=lambda: TextConfig(tokenizer="char", seq_len=128))
    model: ModelConfig = field(default_factory=_model)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            name="adamw",
            lr=1e-3,
            betas=(0.9, 0.95),
            warmup_steps=100,
            schedule="cosine",
            min_lr=1e-4,
            grad_clip=1.0,
        )
    )
    lrd: LRDConfig = field(default_factory=LRDConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=3000,
            batch_size=32,
            eval_every=250,
            log_every=50,
            checkpoint_every=500,
            monitor_every=250,
            eval_batch_size=64,
        )
    )

    def optimizer_settings(self) -> tuple[OptimConfig, LRDConfig]:
        by_role = {
            "attn_qk": self.weight_decay_attn,
            "attn_ov": self.weight_decay_attn,
            "mlp": self.weight_decay_mlp,
            **self.optim.weight_decay_by_role,
        }
        return replace(self.optim, weight_decay_by_role=by_role), self.lrd


def _verdict(result: RunResult) -> list[dict[str, Any]]:
    cfg: LMConfig = result.config
    final = result.final
    cell = f"λ_attn={cfg.weight_decay_attn:g}, λ_mlp={cfg.weight_decay_mlp:g}"
    rows = [
        verdict_row(
            f"validation loss (nats/token), {cell}",
            "compare across the grid",
            final.get("val_loss"),
            None,
        ),
    ]
    for circuit in ("qk", "ov"):
        r, er = final.get(f"{circuit}_rank"), final.get(f"{circuit}_effective_rank")
        if r is not None:
            rows.append(
                verdict_row(
                    f"mean {circuit.upper()} rank / effective rank (rtol {cfg.train.monitor_rtol:g}), {cell}",
                    "falls as λ_attn grows (compare across the grid)",
                    f"{r:.2f} / {er:.2f}",
                    None,
                )
            )
    return rows


_LAMBDAS = [0.0, 0.1, 0.3, 1.0]
#: the quick preset's model and context (a CPU-sized LM)
_SMALL = {
    "task.seq_len": 64,
    "model.n_layers": 2,
    "model.d_model": 64,
    "model.d_mlp": 256,
}

EXPERIMENT = Experiment(
    name="lm",
    description="R5: character-level decoder LM on pydoc text; attention vs MLP weight decay "
    "(λ_attn × λ_mlp) against QK/OV rank and validation loss",
    config_cls=LMConfig,
    trainer="train",
    verdict=_verdict,
    presets={
        "quick": {
            **_SMALL,
            "optim.warmup_steps": 20,
            "train.steps": 300,
            "train.eval_every": 100,
            "train.monitor_every": 100,
            "train.log_every": 25,
            "train.checkpoint_every": 100,
        },
        # the small model trained 10× longer: the 3 × 3 × 3 grid finishes on a 2-core CPU
        "paper": {**_SMALL, "train.steps": 3000},
        # 4 layers, d_model 128, context 128, 4 × 4 × 3 grid: ~16× the compute per step, a GPU job
        "gpu": {},
    },
    grids={
        "quick": {"weight_decay_attn": [0.0, 1.0], "weight_decay_mlp": [0.0, 1.0]},
        "paper": {"weight_decay_attn": [0.0, 0.1, 1.0], "weight_decay_mlp": [0.0, 0.1, 1.0]},
        "gpu": {"weight_decay_attn": _LAMBDAS, "weight_decay_mlp": _LAMBDAS},
    },
    seeds={"quick": 1, "paper": 3, "gpu": 3},
    reproduces="R5",
)
