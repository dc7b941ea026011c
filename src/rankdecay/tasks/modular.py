"""Modular arithmetic (a ∘ b) mod p with input [a, b, =] — the grokking task of R4.

Operations: ``+`` (a+b), ``-`` (a−b), ``*`` (a·b), ``/`` (a·b⁻¹, b ≠ 0, b⁻¹ the modular inverse;
p must be prime). Token ids: 0 … p−1 are the numbers, p is "=", so ``vocab_size = p + 1`` and
``n_out = p`` (the answer is read at the last position).

Split (seeded by the data seed):

- ``"ordered"`` (default): the N ordered pairs (N = p², or p(p−1) for ÷) are shuffled and the
  first round(f·N) go to training, the rest to validation.
- ``"python"``: the public LRD code's convention — the row-major list of ordered pairs
  [(0,0), (0,1), …] is shuffled by ``random.Random(split_seed).shuffle`` (split_seed 42, the
  same for every run whatever the run seed) and the first int(f·N) (floor) go to training.
- ``"unordered"``: pairs are grouped by {a, b}; the G groups are shuffled and the first
  round(f·G) go to training with **both** orders, so (a, b) and (b, a) are always on the same side.

Train and validation never overlap and together cover every valid pair. ``train_batch`` samples
minibatches by seeded epochs, or returns the whole training set when ``full_batch`` is set or
``batch_size <= 0`` or ``>= n_train``. ``last_batch="wrap"`` (default) cuts the concatenated
epochs into equal batches (:func:`~rankdecay.tasks.epoch_indices`); ``"partial"`` gives each epoch
⌈n/B⌉ batches, the last one smaller (:func:`~rankdecay.tasks.epoch_batch_indices`, as a PyTorch
``DataLoader(shuffle=True)``). ``out_classes``: ``"answers"`` → p logits; ``"vocab"`` → p + 1
logits, "=" included as a (never correct) class, as in the public LRD code. :func:`memorization_baseline` gives the validation
accuracy of a model that memorizes the training pairs and, for a commutative operation, answers
(a, b) by the memorized (b, a): R4's reference line (≈ f for the ordered split).
"""

from __future__ import annotations

import random
from typing import Literal

import torch
from torch import Tensor

from ..errors import RankdecayValueError
from .base import TaskBase, epoch_batch_indices, epoch_indices, step_generator
from .configs import ModularConfig

__all__ = [
    "ModularConfig",
    "ModularTask",
    "all_pairs",
    "memorization_baseline",
    "modular_op",
    "python_split",
]

OPS = ("+", "-", "*", "/")
COMMUTATIVE = ("+", "*")


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


def modular_op(a: Tensor, b: Tensor, op: str, p: int) -> Tensor:
    """(a ∘ b) mod p elementwise for int64 tensors; ÷ uses b^(p−2) (Fermat) as the inverse."""
    if op == "+":
        return (a + b) % p
    if op == "-":
        return (a - b) % p
    if op == "*":
        return (a * b) % p
    if op == "/":
        inverse = torch.tensor(
            [pow(int(v), p - 2, p) if v % p else 0 for v in range(p)], dtype=torch.int64
        )
        return (a * inverse[b]) % p
    raise RankdecayValueError(f"unknown modular operation {op!r}; choose one of {', '.join(OPS)}.")


def all_pairs(p: int, op: str) -> tuple[Tensor, Tensor]:
    """Every valid ordered pair (a, b) in row-major order: b ranges over 1…p−1 for ÷."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    if op == "/":
        keep = b != 0
        a, b = a[keep], b[keep]
    return a, b


class ModularTask(TaskBase):
    kind: Literal["tokens", "images"] = "tokens"
    readout: Literal["last", "all"] = "last"

    def __init__(self, cfg: ModularConfig, seed: int) -> None:
        p, op = cfg.p, cfg.op
        if op not in OPS:
            raise RankdecayValueError(
                f"unknown modular operation {op!r}; set task.op to one of {', '.join(OPS)}."
            )
        if p < 2:
            raise RankdecayValueError(f"modulus p={p} is too small; set task.p ≥ 2.")
        if op == "/" and not _is_prime(p):
            raise RankdecayValueError(
                f"division needs a prime modulus, got p={p}; set task.p to a prime such as 113."
            )
        if not 0.0 < cfg.train_fraction < 1.0:
            raise RankdecayValueError(
                f"train_fraction must lie strictly between 0 and 1, got {cfg.train_fraction}; fix task.train_fraction."
            )
        self.cfg = cfg
        self.seed = seed
        self.p = p
        self.vocab_size = p + 1
        if cfg.out_classes not in ("answers", "vocab"):
            raise RankdecayValueError(
                f"unknown out_classes {cfg.out_classes!r}; set task.out_classes to 'answers' or 'vocab'."
            )
        if cfg.last_batch not in ("wrap", "partial"):
            raise RankdecayValueError(
                f"unknown last_batch {cfg.last_batch!r}; set task.last_batch to 'wrap' or 'partial'."
            )
        self.n_out = p if cfg.out_classes == "answers" else p + 1
        self.seq_len = 3

        a, b = all_pairs(p, op)
        gen = step_generator(seed, "modular-split")
        if cfg.split == "ordered":
            order = torch.randperm(a.numel(), generator=gen)
            n_train = round(cfg.train_fraction * a.numel())
            train_idx, val_idx = order[:n_train], order[n_train:]
        elif cfg.split == "python":
            train_idx, val_idx = python_split(a.numel(), cfg.train_fraction, cfg.split_seed)
        elif cfg.split == "unordered":
            group = torch.minimum(a, b) * p + torch.maximum(a, b)
            groups = torch.unique(group)
            shuffled = groups[torch.randperm(groups.numel(), generator=gen)]
            n_groups = round(cfg.train_fraction * groups.numel())
            in_train = torch.isin(group, shuffled[:n_groups])
            # random order of the training pairs (the order full-batch training sees is irrelevant)
            train_idx = in_train.nonzero().squeeze(1)
            train_idx = train_idx[torch.randperm(train_idx.numel(), generator=gen)]
            val_idx = (~in_train).nonzero().squeeze(1)
        else:
            raise RankdecayValueError(
                f"unknown split {cfg.split!r}; set task.split to 'ordered', 'unordered' or 'python'."
            )
        if train_idx.numel() == 0 or val_idx.numel() == 0:
            raise RankdecayValueError(
                f"train_fraction={cfg.train_fraction} leaves an empty train or validation set for p={p}; "
                "move it away from 0 and 1."
            )
        y = modular_op(a, b, op, p)
        eq = torch.full_like(a, p)
        x = torch.stack([a, b, eq], dim=1)
        self.train_x, self.train_y = x[train_idx], y[train_idx]
        self.val_x, self.val_y = x[val_idx], y[val_idx]
        self.n_train = int(train_idx.numel())
        self.n_val = int(val_idx.numel())

    def train_batch(self, step: int, batch_size: int) -> tuple[Tensor, Tensor]:
        self._check_step(step, batch_size)
        assert self.n_train is not None
        if self.cfg.full_batch or batch_size <= 0 or batch_size >= self.n_train:
            return self.train_x, self.train_y
        batches = epoch_batch_indices if self.cfg.last_batch == "partial" else epoch_indices
        idx = batches(self.n_train, batch_size, step, self.seed)
        idx = idx.to(self.device)
        return self.train_x[idx], self.train_y[idx]

    def eval_sets(self) -> dict[str, tuple[Tensor, Tensor]]:
        return {"train": (self.train_x, self.train_y), "val": (self.val_x, self.val_y)}

    def memorization_baseline(self) -> float:
        return memorization_baseline(self)


def python_split(n: int, fraction: float, seed: int = 42) -> tuple[Tensor, Tensor]:
    """(train, val) indices into the row-major pair list: ``random.Random(seed).shuffle`` of
    range(n), train = the first int(fraction·n) (the public LRD code's split)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    cut = int(n * fraction)
    t = torch.tensor(order, dtype=torch.int64)
    return t[:cut], t[cut:]


def memorization_baseline(task: ModularTask) -> float:
    """Validation accuracy of a lookup table of the training pairs that also uses commutativity.

    For a commutative op (+, ×) it answers a validation pair (a, b) correctly iff (b, a) is a
    training pair; for − and ÷ (not commutative) it has no information: 0. Chance (1/p) is not added.
    """
    if task.cfg.op not in COMMUTATIVE:
        return 0.0
    p = task.p
    train_codes = task.train_x[:, 0].cpu() * p + task.train_x[:, 1].cpu()
    swapped = task.val_x[:, 1].cpu() * p + task.val_x[:, 0].cpu()
    return float(torch.isin(swapped, train_codes).double().mean())
