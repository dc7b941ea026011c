"""Value checks of a run's config, made before the run directory exists or anything is allocated.

Every field whose value can be wrong has a :class:`Rule`: a predicate, the phrase saying what
it must be ("a finite number ≥ 0") and an example. Rules are looked up by the config class
that owns the field (``OptimConfig.eps``, ``ModularConfig.p``, ``GrokkingConfig.strength``), so
they apply wherever that section is nested and every experiment sharing ``optim``, ``lrd``,
``train``, ``model`` or a task gets them. A violation raises :class:`ConfigValueError` with one
sentence: the dotted key, the value, what it must be and a value that fixes it; the CLI
turns it into exit code 2.

Checks across fields (β count, min_lr ≤ lr, recall's n_pairs ≤ n_keys) follow the per-field
rules. :func:`check_memory` estimates a transformer run's memory from its model and batch —
4× the parameters (weights, gradients, two optimizer states) plus the activations kept for
backward (:func:`training_bytes`, also the ensemble's per-member estimate) — and refuses a run
that needs more than the device has free, saying how much, before the model is built.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import DataclassInstance
from .decay import _ALIASES, GRANULARITIES, MODES, POLARS, ROLES, TARGETS
from .errors import RankdecayError
from .run_config import ModelConfig, OptimConfig, RunConfig, TrainConfig

if TYPE_CHECKING:  # pragma: no cover - torch-free at run time
    import torch

    from .tasks import Task

__all__ = [
    "MAX_STEPS",
    "RULES",
    "ConfigValueError",
    "Rule",
    "check_memory",
    "filled_model_config",
    "format_bytes",
    "training_bytes",
    "validate_run_config",
    "validate_train_config",
    "validate_values",
    "weight_count",
]

#: the longest run accepted (a run of 10⁹ steps takes years at the sizes rankdecay trains)
MAX_STEPS = 10**9
#: seeds are integers in [0, 2⁶³): torch.manual_seed and numpy accept them, JSON keeps them exact
MAX_SEED = 2**63 - 1


_BIG = {MAX_STEPS: "10⁹", MAX_SEED: "2⁶³ − 1"}


class ConfigValueError(RankdecayError, ValueError):
    """A config value outside the values its key accepts (one sentence: key, value, fix)."""


@dataclass(frozen=True)
class Rule:
    """What one config field accepts: ``ok(value)``, described by ``must``, e.g. ``example``."""

    ok: Callable[[Any], bool]
    must: str
    example: str


def _real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def number(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
    optional: bool = False,
    example: str,
    note: str = "",
) -> Rule:
    """A (finite, or integer) number in a range; ``optional`` also accepts None."""

    def ok(x: Any) -> bool:
        if x is None:
            return optional
        if not (_int(x) if integer else _real(x)):
            return False
        if lo is not None and (x <= lo if lo_open else x < lo):
            return False
        return not (hi is not None and (x >= hi if hi_open else x > hi))

    kind = "an integer" if integer else "a finite number"

    def fmt(v: float) -> str:
        return _BIG.get(v, f"{v:g}")

    if lo is not None and hi is not None:
        span = f" in {'(' if lo_open else '['}{fmt(lo)}, {fmt(hi)}{')' if hi_open else ']'}"
    elif lo is not None:
        span = f" {'>' if lo_open else '≥'} {fmt(lo)}"
    elif hi is not None:
        span = f" {'<' if hi_open else '≤'} {fmt(hi)}"
    else:
        span = ""
    return Rule(ok, f"{kind}{span}{' or none' if optional else ''}{note}", example)


def choice(*values: str) -> Rule:
    return Rule(lambda x: x in values, f"one of {', '.join(map(repr, values))}", values[0])


def _prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % k for k in range(3, math.isqrt(n) + 1, 2))


def _betas(x: Any) -> bool:
    return isinstance(x, (tuple, list)) and len(x) == 2 and all(_real(b) and 0 <= b < 1 for b in x)


def _role_decays(x: Any) -> bool:
    known = (*ROLES, *_ALIASES, "default")
    return isinstance(x, Mapping) and all(k in known and _real(v) and v >= 0 for k, v in x.items())


SEED = number(0, MAX_SEED, integer=True, example="0")
DATA_SEED = number(0, MAX_SEED, integer=True, optional=True, example="none")
NONNEG = number(0, example="0.1")
POSITIVE_INT = number(1, integer=True, example="100")
STEPS = number(1, MAX_STEPS, integer=True, example="1000")
FRACTION = number(0, 1, lo_open=True, hi_open=True, example="0.5")


#: a per-role init (models.ModelConfig.init_embed / init_pos / init_linear)
INIT_STD = Rule(
    lambda x: x is None or x == "torch" or (_real(x) and x >= 0),
    "a standard deviation ≥ 0, 'torch' (PyTorch's default init) or none (init_std)",
    "torch",
)

#: config class name → field → rule (what each field accepts)
RULES: dict[str, dict[str, Rule]] = {
    "OptimConfig": {
        "lr": number(0, lo_open=True, example="1e-3"),
        "betas": Rule(_betas, "two numbers in [0, 1)", "0.9,0.98"),
        "eps": number(0, example="1e-8"),
        "momentum": number(0, 1, hi_open=True, example="0.9"),
        "warmup_steps": number(0, MAX_STEPS, integer=True, example="0"),
        "min_lr": number(0, example="0"),
        "grad_clip": number(0, example="1.0", note=" (0 turns clipping off)"),
        "weight_decay": NONNEG,
        "weight_decay_by_role": Rule(
            _role_decays,
            "a mapping from roles (attn_qk, attn_ov, attention, mlp, embedding, norm, bias, "
            "other, default) to finite numbers ≥ 0",
            "'{\"attn_qk\": 0.0}'",
        ),
    },
    "LRDConfig": {
        "strength": number(0, example="5e-3", note=" (0 turns Low-Rank Decay off)"),
        "target": choice(*TARGETS),
        "granularity": choice(*GRANULARITIES),
        "polar": choice(*POLARS),
        "mode": choice(*MODES),
        "polar_steps": number(0, integer=True, example="5", note=' (polar="newton_schulz_fixed")'),
    },
    "TrainConfig": {
        "steps": STEPS,
        "batch_size": POSITIVE_INT,
        "eval_every": POSITIVE_INT,
        "log_every": POSITIVE_INT,
        "checkpoint_every": POSITIVE_INT,
        "monitor_every": number(0, integer=True, example="100", note=" (0 turns it off)"),
        "eval_batch_size": POSITIVE_INT,
        "monitor_rtol": number(0, 1, hi_open=True, example="1e-2"),
        "keep_checkpoints": number(1, integer=True, example="1"),
        "early_stop_patience": POSITIVE_INT,
        "early_stop_above": number(optional=True, example="0.99"),
    },
    "ModelConfig": {
        "n_layers": number(0, integer=True, example="2"),
        "d_model": POSITIVE_INT,
        "n_heads": number(1, integer=True, example="4"),
        "d_head": number(1, integer=True, optional=True, example="none"),
        "d_mlp": number(0, integer=True, example="512", note=" (0: attention only)"),
        "norm_eps": number(0, example="1e-5"),
        "qk_norm_eps": number(0, example="1e-8"),
        "qk_temperature": number(0, lo_open=True, optional=True, example="none"),
        "rope_base": number(0, lo_open=True, example="10000"),
        "max_len": POSITIVE_INT,
        "vocab_size": number(0, integer=True, example="0", note=" (0: the task fills it)"),
        "n_out": number(1, integer=True, optional=True, example="none"),
        "patch_size": number(0, integer=True, example="0"),
        "image_size": number(0, integer=True, example="28"),
        "in_channels": number(1, integer=True, example="1"),
        "init_std": number(0, optional=True, example="0.02"),
        "init_embed": INIT_STD,
        "init_pos": INIT_STD,
        "init_linear": INIT_STD,
    },
    "ModularConfig": {
        "p": Rule(
            lambda p: _int(p) and 2 <= p < 2**31 and _prime(p),
            "a prime below 2³¹ (the task is arithmetic in the field ℤ/pℤ, as in the grokking papers)",
            "97",
        ),
        "train_fraction": FRACTION,
        "data_seed": DATA_SEED,
        "split_seed": number(0, integer=True, example="42"),
    },
    "RecallConfig": {
        "n_keys": POSITIVE_INT,
        "n_values": POSITIVE_INT,
        "n_pairs": number(1, integer=True, example="4"),
        "seq_len": number(1, integer=True, optional=True, example="none"),
        "n_train": POSITIVE_INT,
        "n_eval": POSITIVE_INT,
        "data_seed": DATA_SEED,
    },
    "TextConfig": {
        "seq_len": number(1, integer=True, example="64"),
        "val_fraction": number(0, 1, lo_open=True, hi_open=True, example="0.1"),
        "n_eval_windows": POSITIVE_INT,
        "data_seed": DATA_SEED,
    },
    "ImagesConfig": {
        "val_fraction": number(0, 1, lo_open=True, hi_open=True, example="0.2"),
        "n_eval_train": number(0, integer=True, example="1000", note=" (0: the whole set)"),
        "data_seed": DATA_SEED,
    },
    # experiments' own knobs
    "GrokkingConfig": {
        "seed": SEED,
        "strength": number(0, optional=True, example="none", note=" (none: the arm's default)"),
        "weight_decay": NONNEG,
        "l2_scale": NONNEG,
    },
    "RecallExperimentConfig": {"seed": SEED, "weight_decay_attn": NONNEG},
    "LMConfig": {"seed": SEED, "weight_decay_attn": NONNEG, "weight_decay_mlp": NONNEG},
    "ViTConfig": {"seed": SEED, "weight_decay_attn": NONNEG},
    "PretrainedConfig": {"seed": SEED},
    "FactorizationConfig": {
        "seed": SEED,
        "diagonal": Rule(
            lambda x: isinstance(x, (tuple, list)) and len(x) > 0 and all(_real(v) for v in x),
            "one or more finite numbers",
            "0.2,0.4,1",
        ),
        "weight_decay": number(
            0, lo_open=True, example="0.1", note=" (λ = 0 has nothing to check)"
        ),
        "lr": number(0, lo_open=True, optional=True, example="none"),
        "steps": STEPS,
        "init_scale": number(0, lo_open=True, example="0.5"),
        "inner_dim": number(1, integer=True, optional=True, example="none"),
        "log_every": POSITIVE_INT,
        "flow_lr": number(0, example="0.01", note=" (0 turns the flow check off)"),
        "flow_steps": number(0, MAX_STEPS, integer=True, example="3000"),
        "threshold_band": NONNEG,
        "sv_tol": NONNEG,
        "contraction_tol": NONNEG,
        "gap_tol": NONNEG,
    },
    "SensingConfig": {
        "d1": POSITIVE_INT,
        "d2": POSITIVE_INT,
        "rank": POSITIVE_INT,
        "n_measurements": POSITIVE_INT,
    },
    "AttentionSVMConfig": {
        "seed": SEED,
        "n_seeds": POSITIVE_INT,
        "n": POSITIVE_INT,
        "T": number(2, integer=True, example="8"),
        "d": POSITIVE_INT,
        "steps": STEPS,
        "lr": number(0, lo_open=True, example="0.1"),
        "init_scale": number(0, lo_open=True, example="0.01"),
        "kq_width": number(1, integer=True, optional=True, example="none"),
        "log_every": POSITIVE_INT,
        "check_step": number(0, MAX_STEPS, integer=True, example="1000"),
        "fro_target": number(-1, 1, example="0.98"),
        "nuc_target": number(-1, 1, example="0.95"),
        "l1_target": number(-1, 1, example="0.95"),
        "clear_gap": NONNEG,
        "conservation_steps": STEPS,
        "conservation_lr": number(0, lo_open=True, example="0.01"),
        "conservation_init_scale": number(0, lo_open=True, example="0.5"),
        "conservation_tol": NONNEG,
    },
}


def _refuse(key: str, value: Any, must: str, example: str) -> ConfigValueError:
    if isinstance(value, (tuple, list)):
        shown = ",".join(map(str, value))
    elif _int(value) and abs(value) >= 10**12:
        shown = f"{float(value):.3g}"
    else:
        shown = repr(value)
    return ConfigValueError(
        f"config key '{key}' must be {must}, got {shown}; set {key} to e.g. {example}.",
        param=key,
    )


def validate_values(cfg: DataclassInstance, prefix: str = "") -> None:
    """Check every field of ``cfg`` (and of its nested sections) that has a rule in :data:`RULES`,
    then the checks across fields; raise :class:`ConfigValueError` for the first bad value."""
    rules = RULES.get(type(cfg).__name__, {})
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate_values(value, f"{prefix}{f.name}.")
        elif f.name in rules and not rules[f.name].ok(value):
            r = rules[f.name]
            raise _refuse(prefix + f.name, value, r.must, r.example)
    _across(cfg, prefix)


def _across(cfg: DataclassInstance, prefix: str) -> None:
    """Checks that involve two fields of one section."""
    if isinstance(cfg, OptimConfig) and cfg.schedule == "cosine" and cfg.min_lr > cfg.lr:
        raise ConfigValueError(
            f"config key '{prefix}min_lr' ({cfg.min_lr:g}) is above {prefix}lr ({cfg.lr:g}), but "
            f"the cosine schedule decays from lr down to min_lr; set {prefix}min_lr to 0.",
            param=f"{prefix}min_lr",
        )
    task: Any = cfg  # a task section is told apart by class name (importing it imports torch)
    if _section(cfg) == "RecallConfig" and task.n_pairs > task.n_keys:
        raise ConfigValueError(
            f"config key '{prefix}n_pairs' ({task.n_pairs}) exceeds {prefix}n_keys ({task.n_keys}), "
            f"but each sequence has distinct keys; lower {prefix}n_pairs to {task.n_keys}.",
            param=f"{prefix}n_pairs",
        )

    data = _data_bytes(cfg, prefix)
    if data is not None and data[0] > _HOST_FRACTION * _host_free():
        need, keys = data
        raise ConfigValueError(
            f"the data of this config need about {format_bytes(need)} ({keys}) but this machine "
            f"has {format_bytes(_host_free())} free; lower {keys.split('=')[0]}.",
            param=keys.split("=")[0],
        )


#: a config whose data or model needs more than this fraction of the free memory is refused
_HOST_FRACTION = 0.9


def _host_free() -> int:
    import torch

    from .device import available_memory

    return available_memory(torch.device("cpu"))


def _section(cfg: DataclassInstance) -> str:
    return type(cfg).__name__


def _data_bytes(cfg: DataclassInstance, prefix: str) -> tuple[int, str] | None:
    """Bytes a task section's data (or an attention-SVM run's history) will take, and the key
    that sets it; None for sections whose size is fixed or small. ``cfg``: any config section
    (a dataclass); the task sections are told apart by class name (importing them would import
    torch), so their fields are read untyped."""
    name = _section(cfg)
    if name == "ModularConfig":  # p² examples: 3 int64 tokens + target + split permutations
        return 64 * cfg.p**2, f"{prefix}p={cfg.p}"
    if name == "RecallConfig":  # sequences + the key permutation drawn per example
        T = cfg.seq_len or 2 * cfg.n_pairs + 1
        n = cfg.n_eval + (0 if cfg.online else cfg.n_train)
        key = f"{prefix}n_eval={cfg.n_eval}" if cfg.online else f"{prefix}n_train={cfg.n_train}"
        return n * (8 * T + 16 * cfg.n_keys), key
    if name == "AttentionSVMConfig":  # W, balance and one correlation per logged iteration
        logged = cfg.steps // cfg.log_every + 2
        m = cfg.kq_width or cfg.d
        per = 8 * cfg.n_seeds * (cfg.d**2 + m**2 + 4)
        return 3 * logged * per, f"{prefix}steps={cfg.steps}"
    return None


def validate_train_config(tc: TrainConfig) -> None:
    """Raise :class:`ConfigValueError` for a bad ``train`` section (lengths, batches and cadences
    out of range), or a dtype that cannot be combined with the amp mode — before anything is
    written to the run directory."""
    from .device import param_dtype
    from .sinks import check_loggers

    validate_values(tc, "train.")
    param_dtype(tc.dtype, tc.amp)
    check_loggers(getattr(tc, "loggers", ()))  # unknown name or missing package


def validate_run_config(cfg: DataclassInstance) -> None:
    """Every value check of a transformer experiment's config (see the module docstring), made
    before its run directory exists: the fields' rules, then the ``train`` section's dtype/amp."""
    validate_values(cfg)
    train = getattr(cfg, "train", None)  # the non-transformer experiments have no train section
    if isinstance(train, TrainConfig):
        validate_train_config(train)


def format_bytes(n: float) -> str:
    """1536 → '1.5 KiB' (binary prefixes)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def filled_model_config(model_cfg: ModelConfig, task: Task) -> ModelConfig:
    """The model config with the fields the task's data fixes (as :func:`rankdecay.train.build_model`)."""
    names = {f.name for f in dataclasses.fields(model_cfg)}
    fill = {k: v for k, v in task.model_fields().items() if k in names}
    return dataclasses.replace(model_cfg, **fill)


def weight_count(m: ModelConfig) -> int:
    """Entries of a TinyTransformer's weight matrices and embeddings for ModelConfig ``m``:
    per layer 4·d·H·d_head (q, k, v, o) + (2 or 3 for SwiGLU)·d·d_mlp, plus token or patch
    embedding, learned positions and the untied readout. Norm gains, biases and the class token
    (O(d) each) are left out, so this is within a few percent of the parameter count for any
    model whose size matters, and needs no model to be built."""
    d, inner = m.d_model, m.n_heads * m.head_dim
    per_layer = 4 * d * inner + (3 if m.mlp == "swiglu" else 2) * d * m.d_mlp
    embed = m.in_channels * m.patch_size**2 * d if m.images else m.vocab_size * d
    pos = m.seq_len * d if m.pos == "learned" else 0
    readout = 0 if m.tie_embeddings else d * m.out_dim
    return m.n_layers * per_layer + embed + pos + readout


def training_bytes(m: ModelConfig, n_params: int, batch: int, eval_batch: int, width: int) -> int:
    """Estimated bytes of one training run: 4× its parameters (weights, gradients, two optimizer
    states) + training activations (kept for backward) + one evaluation chunk's activations, at
    ``width`` bytes per float; ``m`` is the (task-filled) ModelConfig.

    Activations per token and layer ≈ 10·d_model + 6·H·d_head + 3·d_mlp floats (norms, q/k/v and
    their norms, attention output, residuals, MLP hidden + activation) + H·T attention scores;
    logits B·(T or 1)·n_out × 3. A 1.5× safety factor covers temporaries.
    """
    T = m.seq_len
    per_tok = 10 * m.d_model + 6 * m.n_heads * m.head_dim + 3 * m.d_mlp + m.n_heads * T
    out_pos = T if m.readout == "all" else 1

    def acts(b: int) -> int:
        return width * b * (T * per_tok * max(1, m.n_layers) + 3 * out_pos * m.out_dim)

    return int(1.5 * (4 * n_params * width + acts(batch) + acts(eval_batch) // 3))


def check_memory(
    cfg: RunConfig, task: Task, device: torch.device, fraction: float = _HOST_FRACTION
) -> int:
    """Refuse (``ConfigValueError``) a transformer run whose estimated memory exceeds ``fraction``
    of what ``device`` has free; return the estimate in bytes.

    The estimate is :func:`training_bytes` of :func:`weight_count` parameters with the batches
    the run really uses: a finite training set caps the training batch at its size (larger
    batches mean the full set), evaluation chunks at the largest evaluation set. Nothing is
    allocated and no model is built; the model config is checked on the way.
    """
    from .device import available_memory, param_dtype

    tc = cfg.train
    m = filled_model_config(cfg.model, task)
    m.validate()
    batch = tc.batch_size
    if getattr(task, "n_train", None):
        batch = min(batch, int(task.n_train))
    largest_eval = max((len(y) for _x, y in task.eval_sets().values()), default=1)
    width = param_dtype(tc.dtype, tc.amp).itemsize
    eval_batch = min(tc.eval_batch_size, largest_eval)
    need = training_bytes(m, weight_count(m), batch, eval_batch, width)
    free = available_memory(device)
    if need > fraction * free:
        raise ConfigValueError(
            f"this run needs about {format_bytes(need)} (model.d_model={m.d_model}, "
            f"model.n_layers={m.n_layers}, model.d_mlp={m.d_mlp}, train.batch_size={tc.batch_size}) "
            f"but {device} has {format_bytes(free)} free; lower the model size or train.batch_size.",
            param=("model.d_model", "train.batch_size"),
        )
    return need
