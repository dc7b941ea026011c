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
"""

from __future__ import annotations

import functools
import importlib
import zlib
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from ..errors import RankdecayValueError

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


@runtime_checkable
class Task(Protocol):
    """What the trainer relies on (see the module docstring)."""

    kind: Literal["tokens", "images"]
    vocab_size: int
    n_out: int
    seq_len: int
    readout: Literal["last", "all"]
    n_train: int | None
    seed: int

    def train_batch(self, step: int, batch_size: int) -> tuple[Tensor, Tensor]: ...

    def eval_sets(self) -> dict[str, tuple[Tensor, Tensor]]: ...

    def model_fields(self) -> dict[str, Any]: ...


# ------------------------------------------------------------------------------------ seeding


def derive_seed(seed: int, stream: str, *index: int) -> int:
    """A 63-bit seed for sub-stream ``stream`` (e.g. "train", "split") at ``index`` (e.g. the step).

    Mixes (seed, crc32(stream), *index) with numpy's SeedSequence, so nearby seeds and steps give
    statistically independent streams.
    """
    entropy = [
        int(seed) & 0xFFFFFFFFFFFFFFFF,
        zlib.crc32(stream.encode()),
        *(int(i) for i in index),
    ]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def step_generator(seed: int, stream: str, *index: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, stream, *index))


@functools.lru_cache(maxsize=64)  # ensembles interleave many (n, seed) streams
def _epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=step_generator(seed, "epoch", epoch))


def epoch_indices(n: int, batch_size: int, step: int, seed: int) -> Tensor:
    """Indices (batch_size,) into a dataset of n items for step ``step``: positions
    [step·batch_size, (step+1)·batch_size) of the concatenation of seeded per-epoch permutations.

    ``batch_size <= 0`` or ``>= n`` returns ``arange(n)`` (full batch).
    """
    if n <= 0:
        raise RankdecayValueError(
            "the training set is empty; raise the task's training fraction or size."
        )
    if batch_size <= 0 or batch_size >= n:
        return torch.arange(n)
    pos, end = step * batch_size, (step + 1) * batch_size
    parts = []
    while pos < end:
        epoch, off = divmod(pos, n)
        take = min(end - pos, n - off)
        parts.append(_epoch_permutation(n, seed, epoch)[off : off + take])
        pos += take
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def epoch_batch_indices(n: int, batch_size: int, step: int, seed: int) -> Tensor:
    """Indices of step ``step`` when every epoch is its own sequence of batches, the last one
    partial (PyTorch's ``DataLoader(shuffle=True, drop_last=False)``).

    With k = ⌈n / batch_size⌉ batches per epoch, step t is batch j = t mod k of epoch
    e = ⌊t / k⌋: positions [j·batch_size, min((j+1)·batch_size, n)) of the epoch's permutation
    (seeded by (seed, e), as :func:`epoch_indices`). Sizes: batch_size, except n − (k−1)·batch_size
    for the last batch of each epoch. ``batch_size <= 0`` or ``>= n`` returns ``arange(n)``.
    """
    if n <= 0:
        raise RankdecayValueError(
            "the training set is empty; raise the task's training fraction or size."
        )
    if batch_size <= 0 or batch_size >= n:
        return torch.arange(n)
    per_epoch = -(-n // batch_size)
    epoch, j = divmod(step, per_epoch)
    return _epoch_permutation(n, seed, epoch)[j * batch_size : (j + 1) * batch_size]


# ------------------------------------------------------------------------------------ base


class TaskBase:
    """Shared attributes and helpers of the built-in tasks."""

    kind: Literal["tokens", "images"] = "tokens"
    vocab_size: int = 0
    n_out: int = 0
    seq_len: int = 0
    readout: Literal["last", "all"] = "last"
    n_train: int | None = None
    seed: int = 0
    device: torch.device = torch.device("cpu")

    def train_batch(self, step: int, batch_size: int) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def eval_sets(self) -> dict[str, tuple[Tensor, Tensor]]:  # pragma: no cover
        raise NotImplementedError

    def model_fields(self) -> dict[str, Any]:
        if self.kind == "images":
            raise NotImplementedError  # pragma: no cover - images override
        return {
            "vocab_size": self.vocab_size,
            "n_out": self.n_out,
            "max_len": self.seq_len,
            "readout": self.readout,
        }

    def to(self, device: str | torch.device) -> TaskBase:
        """Move every stored tensor to ``device`` (batches then come out there); returns self."""
        self.device = torch.device(device)
        for name, value in list(vars(self).items()):
            if isinstance(value, Tensor):
                setattr(self, name, value.to(self.device))
        return self

    def _check_step(self, step: int, batch_size: int) -> None:
        if step < 0:
            raise RankdecayValueError(f"train_batch got step={step}; steps count from 0.")

    def describe(self) -> str:
        n = "online" if self.n_train is None else f"{self.n_train} training examples"
        return f"{type(self).__name__}({self.kind}, vocab={self.vocab_size}, n_out={self.n_out}, T={self.seq_len}, {n})"


# ------------------------------------------------------------------------------------ registry

#: task name → (module, config class name)
TASKS: dict[str, tuple[str, str]] = {
    "recall": ("recall", "RecallConfig"),
    "modular": ("modular", "ModularConfig"),
    "text": ("text", "TextConfig"),
    "images": ("images", "ImagesConfig"),
}


def task_config_class(name: str) -> type:
    """The config dataclass of task ``name`` (imported lazily)."""
    if name not in TASKS:
        raise RankdecayValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}.")
    module, cls = TASKS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def make_task(name: str, seed: int = 0, **fields: Any) -> Task:
    """Build task ``name`` from config fields, e.g. ``make_task("modular", seed=1, p=97, op="/")``."""
    from ..config import from_dict

    cfg = from_dict(task_config_class(name), fields)
    return cfg.build(seed)
