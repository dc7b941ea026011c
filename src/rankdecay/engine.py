"""One model: build it and its optimizer from config, the objective, evaluation, and the engine
that trains it — alone, or as one rank of a DistributedDataParallel run.

Loss and accuracy. With logits z ∈ ℝ^{N×C} (N = batch, or batch·positions for a language model)
and targets y ∈ {0…C−1}^N (−100 = ignored): loss = −(1/N) Σ log softmax(z)_{n,yₙ},
accuracy = (1/N) Σ [argmax zₙ = yₙ].

Data parallelism (nanoGPT's few branches, see :mod:`rankdecay.distributed` for the launch):
``train.batch_size`` is the global batch B, divisible by the world size W. Every rank draws the
step's global batch ``task.train_batch(step, B)`` (pure in (seed, step)) and keeps rows
[r·B/W, (r+1)·B/W); DDP averages the gradients, so with equal shards the update equals the
1-process update on the global batch: ∇(1/W Σ_r mean_{i∈shard r} ℓᵢ) = ∇ mean_{i∈B} ℓᵢ.
(Sequence tasks with ignored targets (−100) can have unequal valid-token counts per shard; then
the shards are weighted equally, not by tokens.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .device import autocast, loss_precision, maybe_compile, param_dtype, resolve_device
from .errors import RankdecayTypeError, RankdecayValueError
from .loop import Engine, optimizer_settings
from .run_config import LRDConfig, ModelConfig, OptimConfig, RunConfig
from .runstate import _seed_everything
from .validation import check_memory, filled_model_config

__all__ = [
    "ModelEngine",
    "build_model",
    "build_optimizer",
    "build_run",
    "evaluate",
    "evaluate_members",
    "loss_and_accuracy",
    "shard_rows",
]

T = TypeVar("T")


def build_model(model_cfg: ModelConfig, task: Any) -> nn.Module:
    """The experiment's TinyTransformer with the task's sizes filled in
    (:func:`rankdecay.validation.filled_model_config`)."""
    from .models import TinyTransformer

    return TinyTransformer(filled_model_config(model_cfg, task))


def build_optimizer(
    model: nn.Module, optim: OptimConfig, lrd: LRDConfig | None = None
) -> tuple[torch.optim.Optimizer, Any]:
    """Optimizer over ``param_groups(model, weight decay per role)``, with LRD attached if on.

    Returns (optimizer, low_rank_decay or None).
    """
    from .decay import LowRankDecay, param_groups

    if optim.lr <= 0 or not math.isfinite(optim.lr):
        raise RankdecayValueError(
            f"optim.lr must be a positive number, got {optim.lr}; set optim.lr to e.g. 1e-3.",
            param="optim.lr",
        )
    groups: Any = param_groups(model, {"default": optim.weight_decay, **optim.weight_decay_by_role})
    opt: torch.optim.Optimizer
    if optim.name == "adamw":
        opt = torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)
    elif optim.name == "adam":
        opt = torch.optim.Adam(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)
    else:
        opt = torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum)
    for g in opt.param_groups:
        g["initial_lr"] = optim.lr
    decay = None
    if lrd is not None and lrd.strength > 0:
        decay = LowRankDecay(model, **dataclasses.asdict(lrd)).attach(opt)
    return opt, decay


def build_run(
    cfg: RunConfig, device: torch.device, *, lrd: bool = True, check: bool = False
) -> tuple[Any, nn.Module, torch.optim.Optimizer]:
    """(task, model, optimizer) of ``cfg`` as every trainer builds a run: seed, task, model (on
    ``device`` in the run's dtype; ``check``: its memory checked first), optimizer (+ LRD when
    ``lrd``); off the CPU the task makes its batches on ``device``."""
    _seed_everything(cfg.seed)
    task = cfg.task.build(cfg.seed)
    if check:
        check_memory(cfg, task, device)
    dtype = param_dtype(cfg.train.dtype, cfg.train.amp)
    model = build_model(cfg.model, task).to(device=device, dtype=dtype).train()
    optim, lrd_cfg = optimizer_settings(cfg)
    optimizer = build_optimizer(model, optim, lrd_cfg if lrd else None)[0]
    if device.type != "cpu" and callable(getattr(task, "to", None)):
        task.to(device)
    return task, model, optimizer


def loss_and_accuracy(logits: Tensor, y: Tensor, *, members: bool = False) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy and accuracy of logits (..., C) against integer targets (...).

    Targets equal to −100 are ignored: with V the other targets, loss = Σ_V CE / |V| and
    acc = |{argmax = target} ∩ V| / |V|. Both are 0-dim tensors (no host sync); with
    ``members=True`` logits (M, ..., C) and targets (M, ...) give (M,) tensors, member i's over
    its own targets. Half-precision logits (autocast) are upcast to float32 first;
    float32/float64 logits are used as they are.
    """
    if y.dtype.is_floating_point:
        raise RankdecayTypeError(
            f"targets must be integer class indices, got {y.dtype}; pass y as a long tensor.",
            param="y",
        )
    z = loss_precision(logits).reshape(-1, logits.shape[-1])
    t = y.reshape(-1)
    shape = (y.shape[0] if members else 1, -1)
    ce = F.cross_entropy(z, t, ignore_index=-100, reduction="none").view(shape)
    with torch.no_grad():
        valid = (t != -100).view(shape)
        count = valid.sum(1).clamp_min(1)
        acc = ((z.argmax(-1) == t).view(shape) & valid).sum(1) / count
    loss = ce.sum(1) / count
    return (loss, acc) if members else (loss[0], acc[0])


@torch.no_grad()
def evaluate(
    model: nn.Module,
    eval_sets: Mapping[str, tuple[Tensor, Tensor]],
    batch_size: int = 2048,
) -> dict[str, float]:
    """``{name}_loss`` and ``{name}_acc`` over each evaluation set (token-weighted means):
    :func:`evaluate_members` of one member, one set at a time, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        out: dict[str, float] = {}
        for name, xy in eval_sets.items():
            out.update(evaluate_members(lambda x: model(x[0])[None], [{name: xy}], batch_size)[0])
        return out
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_members(
    forward: Callable[[Tensor], Tensor],
    sets: Sequence[Mapping[str, tuple[Tensor, Tensor]]],
    batch_size: int,
) -> list[dict[str, float]]:
    """``{set}_loss`` / ``{set}_acc`` of M members' evaluation sets, evaluated together.

    Member m's sets are concatenated into one stream of rows (so members whose sets split the
    same data differently, e.g. train fractions, pad nothing); the streams are padded to one
    length N (padding rows have targets −100) and stacked to x (M, N, …), y (M, N, …), and
    ``forward`` maps x[:, rows] → logits (M, rows, …, C). With CE the per-target cross-entropy
    and V the targets ≠ −100 of a set: loss = Σ_V CE / |V|, acc = |{argmax = target} ∩ V| / |V|
    (sums in float64).
    """
    names = list(sets[0])
    shapes = {(tuple(s[n][0].shape[1:]), tuple(s[n][1].shape[1:])) for s in sets for n in names}
    if len(shapes) > 1:
        raise RankdecayValueError(
            f"the ensemble evaluates all evaluation sets ({', '.join(names)}) as one stream, but "
            f"their example shapes differ ({sorted(shapes)}); run these with the local executor.",
            param="executor",
        )
    xs = [torch.cat([s[n][0] for n in names]) for s in sets]
    ys = [torch.cat([s[n][1] for n in names]) for s in sets]
    N = max(len(x) for x in xs)
    x = torch.stack([torch.cat([x, x[:1].expand(N - len(x), *x.shape[1:])]) for x in xs])
    y = torch.stack([torch.cat([y, y.new_full((N - len(y), *y.shape[1:]), -100)]) for y in ys])
    rows = []  # per chunk (3, M, rows): Σ CE, hits and valid targets of every row
    for i in range(0, N, batch_size):
        z, t = loss_precision(forward(x[:, i : i + batch_size])), y[:, i : i + batch_size]
        ce = F.cross_entropy(z.flatten(0, -2), t.flatten(), ignore_index=-100, reduction="none")
        valid = t != -100
        per_target = torch.stack([ce.view(t.shape), (z.argmax(-1) == t) & valid, valid]).double()
        rows.append(per_target.reshape(3, *t.shape[:2], -1).sum(-1))
    per_row = torch.cat(rows, 2)
    sums = []  # (M, S, 3)
    for m, s in enumerate(sets):
        sizes = [len(s[n][0]) for n in names]
        parts = per_row[:, m].split([*sizes, N - sum(sizes)], dim=1)[:-1]  # the last: padding
        sums.append(torch.stack([part.sum(1) for part in parts]))
    return [
        {
            f"{n}_{k}": v / max(count, 1)
            for n, (loss, hit, count) in zip(names, member)
            for k, v in (("loss", loss), ("acc", hit))
        }
        for member in torch.stack(sums).tolist()
    ]


def shard_rows(n: int, rank: int, world_size: int) -> slice:
    """Rows [rank·n/W, (rank+1)·n/W) of a global batch of n rows (n divisible by W)."""
    if n % world_size:
        raise RankdecayValueError(
            f"the global batch of {n} rows does not split evenly over {world_size} processes; "
            f"set train.batch_size to a multiple of {world_size}.",
            param="train.batch_size",
        )
    b = n // world_size
    return slice(rank * b, (rank + 1) * b)


class ModelEngine(Engine):
    """The loop's engine for one model (:class:`rankdecay.loop.Engine`, R = 1): on one device,
    or (``world_size > 1``) as rank ``rank`` of a DDP run whose process group is initialized."""

    def __init__(
        self, label: str, device: torch.device | None = None, rank: int = 0, world_size: int = 1
    ) -> None:
        self.label = label
        self.device = device  # type: ignore[assignment]
        self.rank = rank
        self.world_size = world_size
        self.ddp = world_size > 1
        self.main = rank == 0

    def build(self, cfgs: Sequence[RunConfig]) -> None:
        (cfg,) = cfgs
        tc = self.tc = cfg.train
        self.device = self.device or resolve_device(tc.device)
        self.shard = shard_rows(tc.batch_size, self.rank, self.world_size)
        self.task, self.model, self.optimizer = build_run(cfg, self.device, check=not self.ddp)
        self.clip = optimizer_settings(cfg)[0].grad_clip
        self.amp = autocast(self.device, tc.amp)
        sets = self.task.eval_sets().items() if self.main else ()  # rank 0 evaluates
        self.eval_sets = {k: (x.to(self.device), y.to(self.device)) for k, (x, y) in sets}

    def solo(self, i: int) -> tuple[nn.Module, torch.optim.Optimizer]:
        return self.model, self.optimizer

    def start(self, step: int) -> None:
        net: nn.Module = self.model
        if self.ddp:
            cuda = self.device.type == "cuda"
            net = DistributedDataParallel(net, device_ids=[self.device.index] if cuda else None)
        self.forward = maybe_compile(net, self.tc.compile)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.sync = torch.zeros(2, dtype=torch.float32, device=self.device)

    def step(
        self, t: int, lrs: Sequence[float], live: Sequence[bool]
    ) -> tuple[Sequence[Tensor], Sequence[Tensor]]:
        for g in self.optimizer.param_groups:
            g["lr"] = lrs[0]
        x, y = self.task.train_batch(t, self.tc.batch_size)
        if self.ddp:
            x, y = x[self.shard], y[self.shard]  # this rank's rows of the global batch
        if x.device != self.device:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with self.amp:
            logits = self.forward(x)
        loss, acc = loss_and_accuracy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces (averages) the gradients here
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        if self.ddp:  # the logged loss and accuracy are the global batch's on every rank
            self.sync[0] = loss.detach() / self.world_size
            self.sync[1] = acc / self.world_size
            dist.all_reduce(self.sync)
            loss, acc = self.sync[0].clone(), self.sync[1].clone()
        return [loss], [acc]

    def evaluate(self, step: int) -> list[dict[str, float]]:
        net = self.model if self.ddp else self.forward  # DDP: rank 0 alone, on its own module
        with self.amp:
            return [evaluate(net, self.eval_sets, self.tc.eval_batch_size)]

    def summary_fields(self) -> dict[str, Any]:
        if not self.ddp:
            return {}
        local = self.shard.stop - self.shard.start
        return {
            "world_size": self.world_size,
            "backend": dist.get_backend(),
            "local_batch_size": local,
        }

    def resume_hint(self, run_dir: Path) -> str:
        hint = super().resume_hint(run_dir)
        return f"{hint} with the same torchrun command" if self.ddp else hint

    def share(self, obj: T) -> T:
        if not self.ddp:
            return super().share(obj)
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any_rank(self, flag: bool) -> bool:
        if not self.ddp:
            return super().any_rank(flag)
        box = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(box)
        return bool(box.item() > 0)
