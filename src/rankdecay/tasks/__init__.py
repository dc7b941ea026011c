"""Offline, seeded data for the experiments: one interface the trainer uses for every task.

The task interface (:class:`Task`)
----------------------------------
Every task is built from a config dataclass (``RecallConfig``, ``ModularConfig``, ``TextConfig``,
``ImagesConfig``; experiments nest these as their ``task`` section) by ``cfg.build(seed)``, or by
``make_task(name, seed=..., **config_fields)``. A built task has:

``train_batch(step, batch_size) -> (x, y)``
    The training batch of optimisation step ``step``, a **pure function of (data seed, step,
    batch_size)**: resuming at step k reproduces the exact data stream without saving iterator
    state. Online tasks draw fresh samples from a generator seeded by (seed, step); finite datasets
    walk seeded per-epoch permutations, the batch of step k being positions
    [k·batch_size, (k+1)·batch_size) of the concatenated epochs (epoch e = permutation seeded by
    (seed, e)). ``batch_size <= 0`` or ``>= n_train`` (or ``full_batch=True`` where offered) gives
    the full training set. Tensors are on CPU unless :meth:`TaskBase.to` moved the task.
``eval_sets() -> dict[str, (x, y)]``
    Fixed evaluation sets of bounded size, the same on every call. The key ``"val"`` is always
    present; ``"train"`` is present for finite training sets (a fixed subset or all of it).
Attributes
    ``kind`` ("tokens" | "images"), ``vocab_size`` (0 for images), ``n_out`` (number of logits),
    ``seq_len`` (input length T; 0 for images, whose length the model's patching defines),
    ``readout`` ("last": y is (B,) class ids; "all": y is (B, T) next-token ids), ``n_train``
    (training-set size, None for online tasks), ``seed`` (the data seed in use).
``model_fields() -> dict``
    The :class:`~rankdecay.models.ModelConfig` fields the data fixes (vocab_size, n_out,
    max_len, readout; image_size, in_channels for images; causal for language modelling): the
    trainer applies them with ``dataclasses.replace(model_cfg, **task.model_fields())``.

x is int64 tokens (B, T) for ``kind="tokens"`` and float32 images (B, C, H, W) for
``kind="images"``; y is always int64 and the loss is cross-entropy of the logits against y.

Seeds: a config's ``data_seed`` (None → the seed passed to ``build``) fixes splits, fixed sets
and the stream; sub-streams are derived with :func:`derive_seed` so they never overlap.

Modules: the config dataclasses live in :mod:`rankdecay.tasks.configs` (no torch; each task module
re-exports its own), the interface and the seeding helpers in :mod:`rankdecay.tasks.base` (torch),
whose names this package loads on first use, so ``rankdecay list`` reads configs without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import RankdecayValueError
from . import configs

if TYPE_CHECKING:  # pragma: no cover
    from .base import (
        Task,
        TaskBase,
        derive_seed,
        epoch_batch_indices,
        epoch_indices,
        step_generator,
    )

__all__ = [
    "TASKS",
    "Task",
    "TaskBase",
    "derive_seed",
    "epoch_batch_indices",
    "epoch_indices",
    "make_task",
    "step_generator",
    "task_config_class",
]


def __getattr__(name: str) -> Any:
    """The names of :mod:`rankdecay.tasks.base` (it imports torch), loaded on first use: those of
    ``__all__`` not defined here (a name defined here never reaches ``__getattr__``)."""
    if name in __all__:
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# ------------------------------------------------------------------------------------ registry

#: task name → (module, config class name)
TASKS: dict[str, tuple[str, str]] = {
    "recall": ("recall", "RecallConfig"),
    "modular": ("modular", "ModularConfig"),
    "text": ("text", "TextConfig"),
    "images": ("images", "ImagesConfig"),
}


def task_config_class(name: str) -> type:
    """The config dataclass of task ``name`` (:mod:`rankdecay.tasks.configs`; no torch)."""
    if name not in TASKS:
        raise RankdecayValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}.")
    return getattr(configs, TASKS[name][1])  # type: ignore[no-any-return]


def make_task(name: str, seed: int = 0, **fields: Any) -> Task:
    """Build task ``name`` from config fields, e.g. ``make_task("modular", seed=1, p=97, op="/")``."""
    from ..config import from_dict

    cfg = from_dict(task_config_class(name), fields)
    return cfg.build(seed)  # type: ignore[no-any-return]
