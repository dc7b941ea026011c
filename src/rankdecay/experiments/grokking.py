"""R4 — Low-Rank Decay and grokking in a scale-invariant transformer (arXiv 2606.04405).

Task: (a + b) mod 113 with input [a, b, =], all ordered pairs, training fraction f (ordered
split). Model: 2 layers, d_model 128, 4 heads, pre-RMSNorm, QK-norm (RMS over the full q, k),
MLP 512 (GELU), learned positions, untied readout at the last position. AdamW, lr 1e-3,
batch 512. Two arms (``arm``):

- ``l2``: AdamW weight decay λ on **every** parameter (λ = ``strength``, default 0.1). With
  QK-norm the logits do not change when W_Q or W_K is rescaled, the gradient is orthogonal to
  them, and decay only shrinks them radially — their spectrum's shape is untouched.
- ``lrd``: AdamW weight decay ``weight_decay`` (0.1) on every parameter except W_Q, W_K (0), plus
  Low-Rank Decay on W_Q and W_K: W ← W − c·polar(W) after each step, c = ``strength`` (default
  5e-3) — per step, not multiplied by the lr (``lrd.scale_by_lr=False``, as in the public code;
  set it true for the library's lr-scaled form c = strength·lr).

Grokking step = first evaluation with validation accuracy ≥ 0.99. The memorization baseline is
the validation accuracy of a model that memorizes the training pairs and uses commutativity
(≈ f).

Presets. ``paper`` (and ``phase``, its 6 × 6 × 2 grid over 2500 steps) is the public code
``Chunjiang-Intelligence/low-rank-decay`` (``experiment.py``, whose figures are the published
numbers), row by row (:data:`PUBLIC`): split by Python's ``random.Random(42).shuffle`` (the same
for every run), train = first int(f·N); 114 output classes ("=" included); PyTorch default init
(token embedding N(0, 1), Linear Kaiming-uniform) with positions N(0, 0.02²); no attention mask;
SiLU MLP without bias; RMSNorm eps 1e-12 (also the QK-norm); AdamW betas (0.9, 0.999);
shuffled epochs of 512 with a partial last batch; evaluation every 200 steps and an early stop
after two consecutive validation accuracies > 0.99; LRD polar = 5 cubic Newton–Schulz steps from
W/‖W‖_F. In ``phase`` the L2 arm's weight decay is ``l2_scale`` = 10 × the strength column, as
in the public phase diagram. Ours there (see docs/reproductions.md): the torch seed is set from
the run seed (the public code never sets it); batches are drawn by our seeded epoch permutations;
evaluation at steps 0, 200, … after that many updates (public: after 1, 201, … updates);
RMSNorm x/√(mean x² + ε)·g instead of x/max(‖x‖, ε)·√d·g (equal unless ‖x‖ < 1e-6).
``paper-v1`` keeps our earlier setting (the config defaults): our ordered split (round(f·N),
seeded by the run), 113 classes, GPT-2-like N(0, 0.02²) init everywhere, causal mask, GELU,
eps 1e-5 (QK-norm 1e-8), betas (0.9, 0.98), equal batches across epochs, evaluation every 100
steps, no early stop, LRD by the exact SVD polar.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from ..run_config import LRDConfig, ModelConfig, OptimConfig, TrainConfig
from ..tasks.configs import ModularConfig
from . import Experiment, ReportFigure, SweepData
from ._transformer import first_step, verdict_row

if TYPE_CHECKING:  # pragma: no cover
    from ..train import RunResult

__all__ = ["EXPERIMENT", "PUBLIC", "GrokkingConfig", "arm_defaults"]

#: published strength of each arm: l2 → AdamW weight decay of all parameters; lrd → LRD step
ARM_DEFAULT_STRENGTH = {"l2": 0.1, "lrd": 5e-3}


def _model() -> ModelConfig:
    return ModelConfig(
        n_layers=2,
        d_model=128,
        n_heads=4,
        d_mlp=512,
        mlp="gelu",
        norm="rms",
        final_norm=True,
        qk_norm="rms",
        pos="learned",
        readout="last",
        tie_embeddings=False,
    )


@dataclass
class GrokkingConfig:
    """R4 config: ``arm`` and ``strength`` select the regularizer (see the module docstring)."""

    seed: int = 0
    arm: Literal["l2", "lrd"] = "lrd"
    #: l2: AdamW weight decay of all parameters; lrd: LRD step on W_Q, W_K. None → 0.1 (l2) / 5e-3 (lrd)
    strength: float | None = None
    #: lrd arm: AdamW weight decay of every parameter except W_Q, W_K
    weight_decay: float = 0.1
    #: l2 arm with an explicit strength: AdamW weight decay = l2_scale·strength (the public phase
    #: diagram uses 10: its L2 column value c means weight decay 10·c)
    l2_scale: float = 1.0
    task: ModularConfig = field(
        default_factory=lambda: ModularConfig(p=113, op="+", train_fraction=0.5)
    )
    model: ModelConfig = field(default_factory=_model)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(name="adamw", lr=1e-3, betas=(0.9, 0.98))
    )
    lrd: LRDConfig = field(
        default_factory=lambda: LRDConfig(
            target="qk", granularity="matrix", polar="svd", scale_by_lr=False
        )
    )
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=4000,
            batch_size=512,
            eval_every=100,
            log_every=50,
            checkpoint_every=1000,
            monitor_every=100,
            eval_batch_size=1024,  # CPU: 2× faster than 8192 (cache); GPU: still few launches
        )
    )

    def arm_strength(self) -> float:
        """l2: the AdamW weight decay of every parameter; lrd: the LRD step c."""
        if self.strength is None:
            return ARM_DEFAULT_STRENGTH[self.arm]
        return self.strength * self.l2_scale if self.arm == "l2" else self.strength

    def optimizer_settings(self) -> tuple[OptimConfig, LRDConfig]:
        s = self.arm_strength()
        if self.arm == "l2":
            optim = replace(self.optim, weight_decay=s)
            return optim, replace(self.lrd, strength=0.0)
        by_role = {"attn_qk": 0.0, **self.optim.weight_decay_by_role}
        optim = replace(self.optim, weight_decay=self.weight_decay, weight_decay_by_role=by_role)
        return optim, replace(self.lrd, strength=s)


def arm_defaults(arm: str) -> dict[str, Any]:
    """The overrides that select an arm at its published strength."""
    return {"arm": arm, "strength": None}


def _at_or_before(result: RunResult, key: str, step: int) -> tuple[int, float] | None:
    series = [(s, v) for s, v in result.series(key) if s <= step]
    return series[-1] if series else None


def _verdict(result: RunResult) -> list[dict[str, Any]]:
    cfg: GrokkingConfig = result.config
    f = cfg.task.train_fraction
    final = result.final
    task = cfg.task.build(cfg.seed)
    baseline = task.memorization_baseline()
    published = (
        cfg.task.p == 113
        and cfg.task.op == "+"
        and abs(f - 0.5) < 1e-9
        and cfg.strength is None
        and cfg.train.steps >= 4000
    )
    rows = []
    train_acc = final.get("train_acc")
    rows.append(
        verdict_row(
            "memorizes the training set (train accuracy)",
            "≈ 1.0 (≥ 0.99)",
            train_acc,
            None if train_acc is None else train_acc >= 0.99,
        )
    )
    rows.append(
        verdict_row(
            "memorization baseline (memorize + commutativity), val accuracy",
            f"≈ f = {f:g}",
            baseline,
            None,
        )
    )
    grok = first_step(result, "val_acc", 0.99)
    val = final.get("val_acc")
    label = f"{cfg.arm} arm, strength {cfg.arm_strength():g}" + (
        f", lr-scaled={cfg.lrd.scale_by_lr}" if cfg.arm == "lrd" else ""
    )
    if cfg.arm == "lrd":
        rows.append(
            verdict_row(
                f"grokking step (first eval val acc ≥ 0.99), {label}",
                "≤ ~3000 steps at f = 0.5",
                "never" if grok is None else grok,
                (grok is not None and grok <= 3000) if published else None,
            )
        )
        sr = _at_or_before(result, "wqk_stable_rank", 1500)
        rows.append(
            verdict_row(
                "mean stable rank of W_Q/W_K by ~1500 steps",
                "≤ 2",
                "not logged" if sr is None else f"{sr[1]:.3g} (step {sr[0]})",
                (sr is not None and sr[1] <= 2.0) if published else None,
            )
        )
    else:
        rows.append(
            verdict_row(
                f"validation accuracy through {cfg.train.steps} steps, {label}",
                f"stays near the baseline {baseline:.3g}, no grokking",
                f"final {val:.3g}, grokked at {grok}" if val is not None else "not logged",
                (grok is None) if published else None,
            )
        )
        sr = final.get("wqk_stable_rank")
        rows.append(
            verdict_row(
                "mean stable rank of W_Q/W_K at the end",
                "≈ 25 (stays high)",
                sr,
                (sr is not None and 12.5 <= sr <= 50) if published else None,
            )
        )
    return rows


#: the public code's setup (Chunjiang-Intelligence/low-rank-decay, experiment.py) as overrides of
#: the defaults (which are our earlier setting, preset ``paper-v1``)
PUBLIC: dict[str, Any] = {
    "task.split": "python",
    "task.split_seed": 42,
    "task.last_batch": "partial",
    "task.out_classes": "vocab",
    "model.init_std": None,
    "model.init_pos": 0.02,
    "model.causal": False,
    "model.mlp": "silu",
    "model.bias": False,
    "model.norm_eps": 1e-12,
    "model.qk_norm_eps": 1e-12,
    "optim.betas": (0.9, 0.999),
    "optim.eps": 1e-8,
    "lrd.polar": "newton_schulz_fixed",
    "lrd.polar_steps": 5,
    "train.steps": 4000,
    "train.batch_size": 512,
    "train.eval_every": 200,
    "train.monitor_every": 200,
    "train.early_stop_above": 0.99,
    "train.early_stop_key": "val_acc",
    "train.early_stop_patience": 2,
}

_FRACTIONS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
_STRENGTHS = [1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2]

#: the keys a phase-diagram sweep varies: the training fraction × one of the strength keys
FRACTION_KEY = "task.train_fraction"
STRENGTH_KEYS = ("strength", "lrd.strength", "optim.weight_decay")


def _figures(sweep: SweepData) -> list[ReportFigure]:
    """The phase diagram of a sweep over ``task.train_fraction`` × a strength key (the ``phase``
    preset's grid), one panel per point of the other keys (the arm): colour = best validation
    accuracy, text = median grokking step (:func:`rankdecay.report.phase_diagram`)."""
    strength = next((k for k in STRENGTH_KEYS if k in sweep.grid), None)
    if FRACTION_KEY not in sweep.grid or strength is None:
        return []
    from ..report import phase_diagram

    return phase_diagram(sweep, FRACTION_KEY, strength)


EXPERIMENT = Experiment(
    name="grokking",
    description="R4: (a+b) mod 113 on a scale-invariant (RMSNorm + QK-norm) transformer; "
    "L2 vs Low-Rank Decay on W_Q/W_K — grokking step, stable rank, phase diagram",
    config_cls=GrokkingConfig,
    trainer="train",
    verdict=_verdict,
    figures=_figures,
    presets={
        "quick": {"train.steps": 2000, "train.checkpoint_every": 500},
        # the public code's setup (PUBLIC); its grid (f = 0.5, both arms, 3 seeds) fits a CPU
        "paper": PUBLIC,
        # our earlier setting (the config defaults; see the module docstring)
        "paper-v1": {},
        # the public phase diagram: 6 f × 6 strengths × 2 arms, 2500 steps, L2 decay 10× the column
        "phase": {**PUBLIC, "train.steps": 2500, "train.checkpoint_every": 500, "l2_scale": 10.0},
    },
    grids={
        "quick": {"task.train_fraction": [0.3, 0.5], "arm": ["l2", "lrd"]},
        "paper": {"task.train_fraction": [0.5], "arm": ["l2", "lrd"]},
        "paper-v1": {"task.train_fraction": [0.5], "arm": ["l2", "lrd"]},
        "phase": {"task.train_fraction": _FRACTIONS, "strength": _STRENGTHS, "arm": ["l2", "lrd"]},
    },
    seeds={"quick": 1, "paper": 3, "paper-v1": 3, "phase": 1},
    reproduces="R4",
)
