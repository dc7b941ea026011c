"""The typed configs every training run shares, importable without torch.

A run's config is a dataclass with these sections (see :class:`RunConfig`): ``task`` (the task's
own config), ``model`` (:class:`ModelConfig`), ``optim`` (:class:`OptimConfig`), ``lrd``
(:class:`LRDConfig`) and ``train`` (:class:`TrainConfig`), plus a ``seed``. The classes are plain
dataclasses (no torch), so the command line can list and check config keys without importing
torch; :mod:`rankdecay.train` and :mod:`rankdecay.models` re-export them under their old names.
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from .errors import RankdecayValueError

__all__ = ["LRDConfig", "ModelConfig", "OptimConfig", "RunConfig", "TrainConfig"]


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9  # sgd only
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr: float = 0.0  # floor of the cosine schedule
    grad_clip: float = 0.0  # max global gradient norm; 0 = off
    #: weight decay of every parameter (decoupled for adamw, L2 in the gradient for adam/sgd)
    weight_decay: float = 0.0
    #: per-role overrides (roles of rankdecay.param_roles: attn_qk, attn_ov, mlp, embedding,
    #: norm, bias, other), e.g. {"attn_qk": 0.0}
    weight_decay_by_role: dict[str, float] = field(default_factory=dict)


@dataclass
class LRDConfig:
    """Low-Rank Decay (rankdecay.LowRankDecay); strength 0 turns it off."""

    strength: float = 0.0
    target: str = "qk"
    granularity: str = "matrix"
    polar: str = "svd"
    mode: str = "subtract"
    scale_by_lr: bool = True
    #: polar="newton_schulz_fixed" only: the number of cubic Newton–Schulz steps (public code: 5)
    polar_steps: int = 5


@dataclass
class TrainConfig:
    """The loop: length, batch, and how often to log, evaluate, checkpoint and monitor."""

    steps: int = 1000
    batch_size: int = 64
    eval_every: int = 100
    log_every: int = 10
    checkpoint_every: int = 500
    monitor_every: int = 100
    eval_batch_size: int = 2048
    monitor_rtol: float = 1e-2
    #: "auto" (cuda when available), "cpu" or "cuda" (rankdecay.device.resolve_device)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: forward-pass precision: "none" (float32) or "bf16" autocast (rankdecay.device.autocast)
    amp: Literal["none", "bf16"] = "none"
    #: weights, optimizer states and activations: "float32" or "float64" (exactness checks;
    #: rankdecay.device.param_dtype)
    dtype: Literal["float32", "float64"] = "float32"
    #: run the forward pass through torch.compile
    compile: bool = False
    #: where the monitor's float64 spectra are computed: "model" (the weights' device) or "cpu"
    spectra_device: Literal["model", "cpu"] = "model"
    #: how many checkpoints to keep (the newest in checkpoint/, older ones in checkpoint-<step>/);
    #: resume falls back to the previous one when the newest is damaged
    keep_checkpoints: int = 1
    #: early stop (rankdecay.stopping): end the run once ``early_stop_patience`` consecutive
    #: evaluations have ``early_stop_key`` > ``early_stop_above``; None = off
    early_stop_above: float | None = None
    early_stop_key: str = "val_acc"
    early_stop_patience: int = 2
    #: experiment trackers that also get the metrics and spectra: "tensorboard" (events in
    #: <run>/tensorboard), "wandb" (<run>/wandb); tag names in rankdecay.integrations.loggers
    loggers: tuple[str, ...] = ()
    #: with loggers: one tag per head as well as the per-layer means
    log_per_head: bool = False


@dataclass
class ModelConfig:
    """Shape and options of a :class:`TinyTransformer` (usable as a nested config section)."""

    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    #: per-head width; None → d_model // n_heads
    d_head: int | None = None
    #: MLP hidden width; 0 = attention-only model
    d_mlp: int = 512
    mlp: Literal["gelu", "relu", "silu", "swiglu"] = "gelu"
    #: pre-norm placement: h + f(N(h))
    norm: Literal["none", "layer", "rms"] = "layer"
    #: norm of the same kind before the readout (no effect when norm = "none")
    final_norm: bool = True
    norm_eps: float = 1e-5
    qk_norm: Literal["none", "rms", "l2"] = "none"
    qk_norm_eps: float = 1e-8
    #: "l2" QK-norm only: None → learnable per-head temperature (init √d_head); a number → fixed
    qk_temperature: float | None = None
    pos: Literal["learned", "none", "rotary"] = "learned"
    rope_base: float = 10000.0
    #: longest token sequence (learned positions / rotary tables); ignored for images
    max_len: int = 128
    #: token vocabulary (token input); unused for images
    vocab_size: int = 0
    #: number of output logits; None → vocab_size
    n_out: int | None = None
    #: readout = embedding matrixᵀ (token input with n_out = vocab_size only)
    tie_embeddings: bool = False
    readout: Literal["last", "all"] = "last"
    causal: bool = True
    #: > 0: image input (B, C, H, W) cut into patch_size² patches (ViT)
    patch_size: int = 0
    image_size: int = 0
    in_channels: int = 1
    #: images, readout "last": "cls" = class token appended after the patches, "mean" = mean pool
    pool: Literal["cls", "mean"] = "cls"
    #: biases in every Linear (q, k, v, o, MLP, patch embedding, readout) and in LayerNorm
    bias: bool = False
    #: N(0, init_std²) weights (GPT-2-like); None → PyTorch default init
    init_std: float | None = 0.02
    #: per-role init (see the module docstring): a std, "torch" (PyTorch default) or None (init_std)
    init_embed: float | Literal["torch"] | None = None
    init_pos: float | Literal["torch"] | None = None
    init_linear: float | Literal["torch"] | None = None

    # ------------------------------------------------------------------ derived
    @property
    def head_dim(self) -> int:
        return self.d_head if self.d_head is not None else self.d_model // self.n_heads

    @property
    def out_dim(self) -> int:
        return self.n_out if self.n_out is not None else self.vocab_size

    @property
    def images(self) -> bool:
        return self.patch_size > 0

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2 if self.images else 0

    @property
    def seq_len(self) -> int:
        """Longest sequence the blocks see (tokens: max_len; images: patches + class token)."""
        if self.images:
            return self.n_patches + (1 if self.pool == "cls" else 0)
        return self.max_len

    def validate(self) -> None:
        """Raise :class:`RankdecayError` naming the first inconsistent option."""

        def bad(msg: str) -> None:
            raise RankdecayValueError(f"invalid model config: {msg}.")

        if self.n_layers < 0 or self.d_model <= 0 or self.n_heads <= 0:
            bad("n_layers must be ≥ 0 and d_model, n_heads > 0; fix model.n_layers/d_model/n_heads")
        if self.d_head is None and self.d_model % self.n_heads:
            bad(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; set model.d_head explicitly"
            )
        if self.head_dim <= 0:
            bad("d_head must be positive; fix model.d_head")
        if self.d_mlp < 0:
            bad("d_mlp must be ≥ 0 (0 = attention-only); fix model.d_mlp")
        if self.pos == "rotary" and self.head_dim % 2:
            bad(f"rotary positions need an even d_head, got {self.head_dim}; change model.d_head")
        if self.images:
            if self.image_size <= 0 or self.image_size % self.patch_size:
                bad(
                    f"image_size={self.image_size} must be a positive multiple of patch_size={self.patch_size}; "
                    "fix model.image_size or model.patch_size"
                )
            if self.in_channels <= 0:
                bad("in_channels must be positive; fix model.in_channels")
            if self.n_out is None:
                bad("image models need n_out (the number of classes); set model.n_out")
            if self.tie_embeddings:
                bad("tie_embeddings needs token input; set model.tie_embeddings=false for images")
        else:
            if self.vocab_size <= 0:
                bad(
                    "token models need vocab_size > 0; set model.vocab_size (the task usually fills it)"
                )
            if self.max_len <= 0:
                bad("max_len must be positive; fix model.max_len")
        if self.out_dim <= 0:
            bad("n_out must be positive; fix model.n_out")
        if self.tie_embeddings and self.out_dim != self.vocab_size:
            bad(
                f"tied embeddings need n_out == vocab_size ({self.out_dim} != {self.vocab_size}); untie or fix n_out"
            )
        if self.qk_temperature is not None and self.qk_temperature <= 0:
            bad("qk_temperature must be positive or None (learnable); fix model.qk_temperature")
        if self.init_std is not None and self.init_std < 0:
            bad("init_std must be ≥ 0 or None (PyTorch default); fix model.init_std")
        for role in ("init_embed", "init_pos", "init_linear"):
            v = getattr(self, role)
            if v is not None and v != "torch" and not (isinstance(v, (int, float)) and v >= 0):
                bad(f"{role} must be a std ≥ 0, 'torch' or None (init_std); fix model.{role}")

    def init_stds(self) -> dict[str, float | None]:
        """Std of the normal init per role (embed, pos, linear); None = PyTorch's default."""

        def std(v: float | str | None) -> float | None:
            if v is None:
                return self.init_std
            return None if v == "torch" else float(v)

        return {
            "embed": std(self.init_embed),
            "pos": std(self.init_pos),
            "linear": std(self.init_linear),
        }


class RunConfig(Protocol):
    """What the training loop reads from an experiment's config (any dataclass with these fields).

    ``task`` is the task's own config section (e.g. :class:`rankdecay.tasks.modular.ModularConfig`);
    the loop hands it to the task builder and never reads it itself.
    """

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # a dataclass instance
    seed: int
    task: Any
    model: ModelConfig
    optim: OptimConfig
    lrd: LRDConfig
    train: TrainConfig
