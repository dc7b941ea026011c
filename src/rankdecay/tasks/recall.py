"""Associative recall: key–value pairs, then a query key; the answer is the query's value.

Sequence (T = 2·n_pairs + 1, optionally left-padded to ``seq_len``)::

    [pad …]  k₁ v₁  k₂ v₂  …  k_n v_n  q        with q = k_i for a uniform i; y = index of v_i

Token ids: keys 0 … n_keys−1, values n_keys … n_keys+n_values−1, pad n_keys+n_values (present only
when padding is requested). Keys within a sequence are distinct (drawn without replacement), so the
answer is unique and correct by construction; values are drawn with replacement. The target y is
the value's index in [0, n_values), so ``n_out = n_values`` and the readout is at the last position.

Online mode (default, R3) draws a fresh batch for every step from a generator seeded by
(seed, step); ``online=False`` trains on a fixed set of ``n_train`` sequences (epoch sampling).
The evaluation set ``"val"`` (``n_eval`` sequences) comes from a separate stream.
Our choice for R3 (documented in docs/training.md): 16 keys, 16 values, 8 pairs.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..errors import RankdecayValueError
from .base import TaskBase, epoch_indices, step_generator
from .configs import RecallConfig

__all__ = ["RecallConfig", "RecallTask", "generate_recall"]


def generate_recall(
    n: int, n_keys: int, n_values: int, n_pairs: int, seq_len: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """n sequences (n, seq_len) int64 and their answers (n,) in [0, n_values)."""
    keys = torch.rand(n, n_keys, generator=generator).argsort(dim=1)[:, :n_pairs]  # distinct keys
    values = torch.randint(n_values, (n, n_pairs), generator=generator)
    which = torch.randint(n_pairs, (n,), generator=generator)
    rows = torch.arange(n)
    query, answer = keys[rows, which], values[rows, which]
    body = torch.stack([keys, values + n_keys], dim=2).reshape(n, 2 * n_pairs)
    x = torch.cat([body, query[:, None]], dim=1)
    pad = seq_len - x.shape[1]
    if pad > 0:
        x = torch.cat([torch.full((n, pad), n_keys + n_values, dtype=x.dtype), x], dim=1)
    return x, answer


class RecallTask(TaskBase):
    kind: Literal["tokens", "images"] = "tokens"
    readout: Literal["last", "all"] = "last"

    def __init__(self, cfg: RecallConfig, seed: int) -> None:
        if min(cfg.n_keys, cfg.n_values, cfg.n_pairs) <= 0:
            raise RankdecayValueError(
                "recall needs n_keys, n_values and n_pairs > 0; fix the task config."
            )
        if cfg.n_pairs > cfg.n_keys:
            raise RankdecayValueError(
                f"recall needs n_pairs ≤ n_keys (keys are distinct), got {cfg.n_pairs} > {cfg.n_keys}; "
                "raise task.n_keys or lower task.n_pairs."
            )
        base_len = 2 * cfg.n_pairs + 1
        if cfg.seq_len is not None and cfg.seq_len < base_len:
            raise RankdecayValueError(
                f"recall seq_len={cfg.seq_len} is shorter than 2·n_pairs+1={base_len}; raise task.seq_len or leave it unset."
            )
        if cfg.n_eval <= 0 or (not cfg.online and cfg.n_train <= 0):
            raise RankdecayValueError(
                "recall needs n_eval > 0 and, for a fixed set, n_train > 0; fix the task config."
            )
        self.cfg = cfg
        self.seed = seed
        self.seq_len = cfg.seq_len or base_len
        self.padded = self.seq_len > base_len
        self.vocab_size = cfg.n_keys + cfg.n_values + (1 if self.padded else 0)
        self.n_out = cfg.n_values
        self.n_train = None if cfg.online else cfg.n_train
        self.val_x, self.val_y = self._generate(cfg.n_eval, step_generator(seed, "recall-eval"))
        if not cfg.online:
            self.train_x, self.train_y = self._generate(
                cfg.n_train, step_generator(seed, "recall-train-set")
            )

    def _generate(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        c = self.cfg
        x, y = generate_recall(n, c.n_keys, c.n_values, c.n_pairs, self.seq_len, generator)
        return x.to(self.device), y.to(self.device)

    def train_batch(self, step: int, batch_size: int) -> tuple[Tensor, Tensor]:
        self._check_step(step, batch_size)
        if self.cfg.online:
            if batch_size <= 0:
                raise RankdecayValueError(
                    "online recall needs a positive batch size; set the trainer's batch_size."
                )
            return self._generate(batch_size, step_generator(self.seed, "recall-train", step))
        idx = epoch_indices(self.cfg.n_train, batch_size, step, self.seed).to(self.device)
        return self.train_x[idx], self.train_y[idx]

    def eval_sets(self) -> dict[str, tuple[Tensor, Tensor]]:
        sets = {"val": (self.val_x, self.val_y)}
        if not self.cfg.online:
            m = min(self.cfg.n_train, self.cfg.n_eval)
            sets = {"train": (self.train_x[:m], self.train_y[:m]), **sets}
        return sets

    def answer(self, x: Tensor) -> Tensor:
        """Ground truth recomputed from the sequences themselves: value index after the query key."""
        c = self.cfg
        body = x[:, -(2 * c.n_pairs + 1) : -1].reshape(x.shape[0], c.n_pairs, 2)
        match = body[:, :, 0] == x[:, -1:]
        return (body[:, :, 1] * match).sum(dim=1) - c.n_keys
