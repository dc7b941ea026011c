"""The task interface and the seeded-stream helpers every built-in task uses (imports torch).

:class:`Task` is what the trainer relies on, :class:`TaskBase` the shared attributes of the
built-in tasks; the contract (pure ``train_batch(step, batch_size)``, fixed ``eval_sets()``, data
seeds) is described in :mod:`rankdecay.tasks`, which re-exports these names lazily so that the task
configs (:mod:`rankdecay.tasks.configs`) load without torch.
"""

from __future__ import annotations

import functools
import zlib
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from ..errors import RankdecayValueError

__all__ = [
    "Task",
    "TaskBase",
    "derive_seed",
    "epoch_batch_indices",
    "epoch_indices",
    "step_generator",
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
