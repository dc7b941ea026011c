"""Batched-ensemble training: runs of one model shape trained together in one process.

Every parameter of the M members becomes one (M, *shape) tensor, every step trains all members
with batched kernels, and each member's run directory is written by the same loop as a solo run
(:func:`rankdecay.loop.train_runs` with the :class:`StackEngine`). Usage, limits and sizing:
docs/scaling.md §1.

Exactness. Member i's computation is that of a solo run of its config, batched:

- init: each member's model is built exactly as in :func:`rankdecay.train.train` (global RNG
  seeded with the member's seed, then its task, then its model), then stacked.
- data: x = stack_i task_i.train_batch(step, B) → (M, B, …) (tasks are pure in (seed, step)).
- forward (:func:`batched_forward`): :func:`rankdecay.models.functional_forward` with
  ``members=True`` — the model's own forward, every linear map a batched matmul over members;
  for ``readout="last"`` the final block works at the last position only.
- loss: L = Σ_i mean-CE_i, so ∂L/∂θ_i = ∂(mean-CE_i)/∂θ_i — member i's solo gradient.
- gradient clipping: :func:`rankdecay.update.clip_grad_norm_` per member, by its own norm.
- optimizer: member i's own ``torch.optim`` optimizer (built by its solo run's code, holding its
  solo state) over its views of the stack — weights and gradients — with torch's fused kernel
  (one call per member and step; docs/benchmarks.md); member i's learning rate lr_i(t) is set
  in its param groups before its step, so its weight decay per parameter group, betas, eps and
  momentum are its own. A member's checkpoint is therefore its solo optimizer's state as it is.
- Low-Rank Decay (:class:`BatchedLowRankDecay`): the LRD step of
  :class:`rankdecay.decay.LowRankDecay` (:func:`rankdecay.update.low_rank_decay_delta`) with
  c_i = strength_i·lr_i (or strength_i) as an (M, 1, …) column, batched over the members with
  c_i ≠ 0. The polar factor of a stored weight is the transpose of that of the adapter's view
  (polar(Wᵀ) = polar(W)ᵀ).

Members therefore match solo runs to float rounding (tested; with ``polar="newton_schulz"`` to
the Newton–Schulz tolerance, since the batch's iteration count is that of its slowest member).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import DataclassInstance
from .decay import LowRankDecay, check_lrd_options
from .device import autocast, maybe_compile, param_dtype, resolve_device
from .engine import build_model, build_run, evaluate_members, loss_and_accuracy
from .errors import RankdecayValueError
from .loop import Engine, RunSpec, optimizer_settings, train_runs
from .models import functional_forward
from .run_config import ModelConfig, RunConfig
from .runfiles import checkpoint_step
from .runstate import _rng_state, _rng_tensors, _seed_everything, _set_rng
from .sweep import (
    LocalExecutor,
    RunEvent,
    RunTask,
    _execute_one,
    add_ensemble_arguments,
    failed_result,
    resume_or_clear,
    run_result,
    set_threads,
)
from .update import clip_grad_norm_, low_rank_decay_delta
from .validation import filled_model_config, training_bytes

__all__ = [
    "BatchedLowRankDecay",
    "EnsembleExecutor",
    "EnsembleMember",
    "auto_members",
    "batched_forward",
    "cpu_members",
    "ensemble_key",
    "member_bytes",
    "stack_models",
    "train_ensemble",
    "unsupported_reason",
]


# ============================================================================ batched model


def stack_models(models: Sequence[nn.Module]) -> dict[str, Tensor]:
    """Stack the members' parameters into leaves of shape (M, *shape) and make every member's
    parameters views of them (member i's ``p.data`` is ``stacked[name][i]``; the parameter
    objects stay, so their optimizers keep them), so in-place updates of the stacked tensors are
    seen by each member model (monitor, evaluation, checkpoints)."""
    params = [dict(m.named_parameters()) for m in models]
    stacked = {n: torch.stack([p[n].detach() for p in params]) for n in params[0]}
    for i, named in enumerate(params):
        for n, p in named.items():
            p.data = stacked[n][i]
    return {n: s.requires_grad_(True) for n, s in stacked.items()}


#: TinyTransformer forward of M members at once, (M, B, …) → logits (M, B, [T,] n_out), member
#: i's equal to ``model_i(x[i])``: :func:`rankdecay.models.functional_forward` with
#: ``members=True``; call as ``batched_forward(cfg, P, x, rope=None, last_trick=True)``.
batched_forward = functools.partial(functional_forward, members=True, last_trick=True)


def vmap_forward(base: nn.Module, P: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """Generic alternative to :func:`batched_forward`: ``vmap(functional_call(base, …))`` over members."""
    from torch.func import functional_call, vmap

    buffers = dict(base.named_buffers())

    def one(params: dict[str, Tensor], xi: Tensor) -> Tensor:
        return functional_call(base, (params, buffers), (xi,))

    return vmap(one)(dict(P), x)


def _use_fused(optimizers: Sequence[torch.optim.Optimizer], device: torch.device) -> None:
    """Let each member's torch optimizer step with torch's fused kernel (``fused=True``: one
    kernel call per member and step, where the default for-loop makes one per tensor; measured
    in docs/benchmarks.md), on the devices that have it; its step counts move to the device."""
    if device.type not in ("cpu", "cuda"):
        return
    for o in optimizers:
        for group in o.param_groups:
            group["fused"], group["foreach"] = True, None
        for st in o.state.values():
            if "step" in st:
                st["step"] = st["step"].to(device=device, dtype=torch.float32)


def _rope_tables(model: nn.Module) -> tuple[Tensor, Tensor] | None:
    """The rotary (cos, sin) tables of a TinyTransformer, or None."""
    rope = getattr(model, "rope", None)
    return rope() if callable(rope) else None


# ============================================================================ update rules


class BatchedLowRankDecay:
    """:class:`rankdecay.decay.LowRankDecay` over stacked members: the matrices member 0's decay
    acts on (:meth:`~rankdecay.decay.LowRankDecay.strided_views` of its weights, which are views
    of the stack), lifted to (M, …) by the member stride. ``options`` (target, granularity
    "matrix" or "head", polar, mode, polar_steps) are shared; member i's step is
    c_i = strength_i·lr_i (``scale_by_lr[i]``) or strength_i."""

    def __init__(
        self,
        model: nn.Module,
        stacked: Mapping[str, Tensor],
        strengths: Sequence[float],
        scale_by_lr: Sequence[bool],
        **options: Any,
    ) -> None:
        if options.get("granularity", "matrix") not in ("matrix", "head"):
            raise RankdecayValueError(
                f"the ensemble supports LRD granularity matrix or head, got "
                f"{options['granularity']!r}; run it with the local executor.",
                param="executor",
            )
        solo = LowRankDecay(model, 1.0, **options)  # checks the options, finds the matrices
        for s in strengths:
            check_lrd_options(s, solo.target, solo.granularity, solo.mode, solo.polar)
        self.mode, self.polar = solo.mode, solo.polar
        self.polar_steps = solo.polar_steps  # polar="newton_schulz_fixed" only
        self.strengths = list(map(float, strengths))
        self.scale_by_lr = list(map(bool, scale_by_lr))
        self.views: list[Tensor] = []  # (M, *size) in-place views of the stacked weights
        for name, size, stride, offset in solo.strided_views():
            S = stacked[name].detach()
            at = S.storage_offset() + offset
            self.views.append(S.as_strided((len(S), *size), (S.stride(0), *stride), at))

    @torch.no_grad()
    def step(self, lrs: Sequence[float]) -> None:
        """W ← W − Δ with Δ = c_i·polar(W) (subtract) or W − U max(Σ − c_i, 0)Vᵀ (svt), per member i."""
        cs = [s * lr if sb else s for s, lr, sb in zip(self.strengths, lrs, self.scale_by_lr)]
        # only members with c ≠ 0 pay for the decomposition (an L2-arm member has c = 0)
        on = [i for i, c in enumerate(cs) if c != 0.0]
        if not on:
            return
        rows = None if len(on) == len(cs) else torch.tensor(on, device=self.views[0].device)
        buckets: dict[tuple[Any, ...], list[Tensor]] = {}  # matrices of one shape: one call
        for W in self.views:
            buckets.setdefault((W.shape[1:], W.dtype), []).append(W)
        for views in buckets.values():
            X = torch.stack([W if rows is None else W.index_select(0, rows) for W in views], 1)
            X = torch.nan_to_num(X)  # a failed (NaN) member must not break the batched SVD
            c = X.new_tensor([cs[i] for i in on]).view(-1, *([1] * (X.dim() - 1)))
            mode, polar, steps = self.mode, self.polar, self.polar_steps
            delta, _ = low_rank_decay_delta(X, c, mode=mode, polar=polar, polar_steps=steps)
            for j, W in enumerate(views):  # (M_on, n_views, …)
                if rows is None:
                    W.sub_(delta[:, j])
                else:
                    W.index_add_(0, rows, delta[:, j], alpha=-1.0)


# ============================================================================ members


#: One run of an ensemble: its config, run directory and how to report it.
EnsembleMember = RunSpec


def unsupported_reason(cfg: DataclassInstance) -> str | None:
    """Why ``cfg`` (any experiment's config) cannot be trained in an ensemble (None when it can:
    a :class:`~rankdecay.run_config.RunConfig` of a TinyTransformer with a batched update)."""
    for f in ("seed", "task", "model", "optim", "lrd", "train"):
        if not hasattr(cfg, f):
            return f"its config has no '{f}' section"
    if not isinstance(cfg.model, ModelConfig):
        return "its model is not a TinyTransformer"
    optim, lrd = optimizer_settings(cfg)
    if optim.name not in ("adamw", "adam", "sgd"):
        return f"optimizer {optim.name!r}"
    if lrd.strength > 0 and lrd.granularity not in ("matrix", "head"):
        return f"LRD granularity {lrd.granularity!r}"
    if getattr(cfg.train, "early_stop_above", None) is not None:
        return "early stopping (train.early_stop_above): a stopped member would idle in the stack"
    if getattr(cfg.task, "last_batch", "wrap") == "partial":
        return "partial last batches (task.last_batch='partial') differ in size between members"
    return None


def ensemble_key(cfg: RunConfig) -> str:
    """Members with equal keys can share an ensemble: same model shape (after the task fills its
    sizes), task kind, loop (steps, batch, cadences, device, amp), optimizer type and LRD form."""

    optim, lrd = optimizer_settings(cfg)
    tc = dataclasses.asdict(cfg.train)
    lrd_form = (lrd.target, lrd.granularity, lrd.polar, lrd.mode, getattr(lrd, "polar_steps", 5))
    task_shape = {
        k: v
        for k, v in dataclasses.asdict(cfg.task).items()
        if k not in ("train_fraction", "data_seed", "seed", "n_train", "fraction")
    }
    return repr(
        (
            type(cfg.task).__name__,
            sorted(task_shape.items()),
            sorted(dataclasses.asdict(cfg.model).items()),
            sorted(tc.items()),
            optim.name,
            lrd_form,
        )
    )


def member_bytes(cfg: RunConfig, task: Any) -> int:
    """Estimated bytes one member needs (:func:`rankdecay.validation.training_bytes` of its exact
    parameter count, counted on a model built on the meta device)."""
    with torch.device("meta"):
        model = build_model(cfg.model, task)
    n_params = sum(p.numel() for p in model.parameters())
    tc = cfg.train
    width = param_dtype(tc.dtype, tc.amp).itemsize  # bytes per float of weights and activations
    return training_bytes(model.cfg, n_params, tc.batch_size, tc.eval_batch_size, width)


#: CPU ensembles: the members' widest training activation together stays under this many bytes
CPU_ACTIVATION_BUDGET = 12 * 2**20


def cpu_members(cfg: RunConfig, task: Any) -> int:
    """Largest CPU ensemble whose widest activation, batch·T·max(d_model, d_mlp, 3·H·d_head)
    floats per member, fits in :data:`CPU_ACTIVATION_BUDGET` (≥ 1): on a CPU wider batched
    tensors fall out of the caches (measurements: docs/benchmarks.md, benchmarks/ensemble_step.py).
    """
    mcfg = filled_model_config(cfg.model, task)
    T = mcfg.seq_len
    width = max(mcfg.d_model, mcfg.d_mlp, 3 * mcfg.n_heads * mcfg.head_dim)
    itemsize = param_dtype(cfg.train.dtype, cfg.train.amp).itemsize
    return max(1, CPU_ACTIVATION_BUDGET // max(1, cfg.train.batch_size * T * width * itemsize))


def auto_members(cfg: RunConfig, task: Any, device: torch.device, fraction: float = 0.5) -> int:
    """How many members fit in ``fraction`` of the free memory of ``device`` (≥ 1); on a CPU also
    at most :func:`cpu_members` (larger CPU ensembles are slower per member)."""
    from .device import available_memory

    fit = max(1, int(fraction * available_memory(device) // max(1, member_bytes(cfg, task))))
    return min(fit, cpu_members(cfg, task)) if device.type == "cpu" else fit


# ============================================================================ the loop


def _stack_batches(batches: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    return torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])


def _batch_shape(cfg: RunConfig) -> tuple[int, ...]:
    _seed_everything(cfg.seed)
    return tuple(cfg.task.build(cfg.seed).train_batch(0, cfg.train.batch_size)[0].shape)


def train_ensemble(
    members: Sequence[EnsembleMember],
    *,
    progress: bool = False,
    forward: str = "batched",
) -> list[dict[str, Any]]:
    """Train ``members`` (same :func:`ensemble_key`) together; return their summaries in order.

    ``forward``: "batched" (:func:`batched_forward`) or "vmap" (:func:`vmap_forward`). Members
    whose training batches differ in shape train in separate stacks.
    """
    for m in members:
        reason = unsupported_reason(m.cfg)
        if reason is not None:
            raise RankdecayValueError(
                f"{m.run_dir} cannot join an ensemble ({reason}); run it with the local executor.",
                param="executor",
            )
    if len({ensemble_key(m.cfg) for m in members}) > 1:
        raise RankdecayValueError(
            "ensemble members must share the model shape, loop settings, optimizer type and LRD "
            "form; group them with rankdecay.ensemble.ensemble_key.",
            param="executor",
        )
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, m in enumerate(members):
        groups.setdefault(_batch_shape(m.cfg) if len(members) > 1 else (), []).append(i)
    summaries: list[dict[str, Any]] = [{} for _ in members]
    for index in groups.values():
        stack = [members[i] for i in index]
        got = train_runs(StackEngine(forward), stack, progress=progress, raise_failures=False)
        for i, summary in zip(index, got):
            summaries[i] = summary
    return summaries


class StackEngine(Engine):
    """The loop's engine (:class:`rankdecay.loop.Engine`) for M members trained as one stack
    (see the module docstring): every member is built and checkpointed as a solo run; from
    :meth:`start` on, its parameters and their gradients are views of the stacked tensors, which
    its own optimizer steps in place, so its checkpoints need no translation."""

    def __init__(self, forward: str = "batched") -> None:
        self.forward_kind = forward

    def build(self, cfgs: Sequence[RunConfig]) -> None:
        tc = self.tc = cfgs[0].train
        self.M = len(cfgs)
        self.label = f"ensemble of {self.M}"
        self.device = resolve_device(tc.device)
        self.settings = [optimizer_settings(cfg) for cfg in cfgs]
        built, self.rngs = [], []
        for cfg in cfgs:  # each member as its solo run (LRD: the batched one)
            built.append(build_run(cfg, self.device, lrd=False))
            # the RNG state its solo run has from here on (training draws none: tasks are pure
            # in (seed, step)); member i's checkpoints store it, as the solo run's do
            self.rngs.append((_rng_state(), _rng_tensors()))
        self.tasks, self.models, self.opts = map(list, zip(*built))

    def solo(self, i: int) -> tuple[nn.Module, torch.optim.Optimizer]:
        return self.models[i], self.opts[i]

    def start(self, step: int) -> None:
        models, tc = self.models, self.tc
        self.stacked = stack_models(models)
        self.names = list(self.stacked)
        for n, s in self.stacked.items():  # backward accumulates into these; the members'
            s.grad = torch.zeros_like(s)  # gradients are views of them, as their weights are
            for i, model in enumerate(models):
                model.get_parameter(n).grad = s.grad[i]
        _use_fused(self.opts, self.device)
        optims, lrds = zip(*self.settings)
        self.lrd = None
        on = [lrd for lrd in lrds if lrd.strength > 0]
        if on:
            form = dataclasses.asdict(on[0])  # the members share it (ensemble_key)
            del form["strength"], form["scale_by_lr"]
            strengths, scale = [lrd.strength for lrd in lrds], [lrd.scale_by_lr for lrd in lrds]
            self.lrd = BatchedLowRankDecay(models[0], self.stacked, strengths, scale, **form)
        self.clips = [o.grad_clip for o in optims]
        self.rope = _rope_tables(models[0])
        # train.compile: the training step's batched forward goes through torch.compile (its
        # shapes are fixed); evaluation, whose chunk shapes vary, stays eager
        self.train_forward = maybe_compile(self.fwd, tc.compile)
        self.amp = autocast(self.device, tc.amp)
        d = self.device
        self.eval_sets = [
            {k: (x.to(d), y.to(d)) for k, (x, y) in t.eval_sets().items()} for t in self.tasks
        ]
        self.eval_cache: dict[int, list[dict[str, float]]] = {}

    def fwd(self, x: Tensor) -> Tensor:
        """Every member's logits for its rows of x (M, B, …)."""
        if self.forward_kind == "vmap":  # functional_call swaps in the stacked weights
            return vmap_forward(self.models[0], self.stacked, x)
        return batched_forward(self.models[0].cfg, self.stacked, x, self.rope)

    def step(
        self, t: int, lrs: Sequence[float], live: Sequence[bool]
    ) -> tuple[Sequence[Tensor], Sequence[Tensor]]:
        """L = Σ_i mean-CE_i, so ∂L/∂θ_i is member i's solo gradient; members that ended get
        zero gradients and learning rate 0."""
        x, y = _stack_batches([task.train_batch(t, self.tc.batch_size) for task in self.tasks])
        if x.device != self.device:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with self.amp:
            logits = self.train_forward(x)
        losses, accs = loss_and_accuracy(logits, y, members=True)
        grads = [self.stacked[n].grad for n in self.names]
        for g in grads:
            g.zero_()
        losses.sum().backward()
        with torch.no_grad():
            ended = [i for i in range(self.M) if not live[i]]
            for g in grads if ended else ():
                g[ended] = 0
            if any(c > 0 for c in self.clips):  # per member, by its own global norm
                limit = grads[0].new_tensor([c if c > 0 else math.inf for c in self.clips])
                clip_grad_norm_(grads, limit, members=True)
        for i, o in enumerate(self.opts):  # each member's own optimizer: torch's fused kernel
            if live[i]:
                for group in o.param_groups:
                    group["lr"] = lrs[i]
                o.step()
        if self.lrd is not None:
            self.lrd.step(lrs)
        return list(losses), list(accs)

    def evaluate(self, step: int) -> list[dict[str, float]]:
        if step not in self.eval_cache:
            self.eval_cache = {}
            chunk = max(1, self.tc.eval_batch_size // self.M)  # as many examples as a solo run
            with self.amp:
                self.eval_cache[step] = evaluate_members(self.fwd, self.eval_sets, chunk)
        return self.eval_cache[step]

    @contextlib.contextmanager
    def checkpoint_view(self, i: int) -> Iterator[tuple[nn.Module, torch.optim.Optimizer]]:
        """Member i as its solo model and optimizer and the global RNG in its solo run's state;
        its weights are private copies while
        the checkpoint is written (safetensors refuses a view of a larger storage) and views of
        the stack again afterwards, and the process's RNG state comes back."""
        params = dict(self.models[i].named_parameters())
        process_rng = (_rng_state(), _rng_tensors())
        _set_rng(*self.rngs[i])
        for n, p in params.items():
            p.data = self.stacked[n].data[i].clone()
        try:
            yield self.models[i], self.opts[i]
        finally:
            for n, p in params.items():
                p.data = self.stacked[n].data[i]
            _set_rng(*process_rng)

    def end(self, i: int) -> None:
        """Zero member i's weights (a NaN must not reach the batched kernels); its gradients are
        zero and its optimizer does not step from now on."""
        with torch.no_grad():
            for n in self.names:
                self.stacked[n].data[i].zero_()

    def summary_fields(self) -> dict[str, Any]:
        return {"ensemble_size": self.M}

    def resume_hint(self, run_dir: Path) -> str:
        return "repeat the sweep (or resume this run directory)"


# ============================================================================ executor


def _member(task: RunTask) -> EnsembleMember | str:
    """The ensemble member of ``task`` (not yet marked for resume), or why it cannot join one."""
    exp, cfg = task.build()
    if exp.trainer != "train":
        return f"experiment {exp.name!r} is not trained by rankdecay.train"
    reason = unsupported_reason(cfg)
    if reason is not None:
        return reason
    return EnsembleMember(cfg, Path(task.run_dir), exp.name, task.preset, exp.verdict)


def _run_group(tasks: Sequence[RunTask], threads: int | None) -> list[dict[str, Any]]:
    """Worker entry point: train ``tasks`` as one ensemble; results in task order."""
    if threads:
        set_threads(threads)
    t0 = time.perf_counter()
    try:
        members = []
        for task in tasks:  # the plan found each joinable; a str here would be a bug
            m = _member(task)
            if isinstance(m, str):
                raise RankdecayValueError(f"run {task.name} cannot join an ensemble: {m}")
            m.resume = resume_or_clear(m.run_dir)
            (m.run_dir / "error.txt").unlink(missing_ok=True)
            members.append(m)
        sums = train_ensemble(members)
    except Exception as exc:  # noqa: BLE001 - report as failed runs, as the local executor does
        dirs = [Path(t.run_dir) for t in tasks]
        return [failed_result(exc, dirs, time.perf_counter() - t0)] * len(tasks)
    wall = time.perf_counter() - t0
    return [run_result(s, wall) for s in sums]


class EnsembleExecutor(LocalExecutor):
    """``--executor ensemble``: stack compatible runs and train each stack in one process.

    Options: ``members`` (max ensemble size; default: from free memory, :func:`auto_members`),
    ``workers`` (processes training ensembles in parallel, default 1, each with
    ``threads_per_worker`` = CPUs // workers threads, checked as by the local executor). Runs
    that cannot be batched (:func:`unsupported_reason`) run one by one as with the local executor.
    With workers > 1 each ensemble (or solo run) is one job of the local executor's pool
    (:meth:`~rankdecay.sweep.LocalExecutor.run_jobs`): a worker that dies fails only the runs of
    the job it held and is replaced.
    """

    name = "ensemble"

    def __init__(
        self,
        members: int | None = None,
        workers: int | None = None,
        threads_per_worker: int | None = None,
        **options: Any,
    ) -> None:
        if members is not None and members < 1:
            raise RankdecayValueError(
                f"members must be at least 1, got {members}; use 1 or more.", param="members"
            )
        super().__init__(int(workers or 1), threads_per_worker, **options)
        self.members = members

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_ensemble_arguments(parser)  # declared in rankdecay.sweep: the CLI reads it lightly

    def describe(self) -> str:
        size = self.members if self.members is not None else "auto"
        return f"ensemble ({size} member(s) per ensemble, {self.workers} worker(s) × {self.threads} thread(s))"

    def plan(self, tasks: Sequence[RunTask]) -> tuple[list[list[RunTask]], list[RunTask]]:
        """(ensembles, solo tasks): compatible tasks grouped by key and checkpoint step, chunked."""
        groups: dict[tuple[str, int | None], list[RunTask]] = {}
        cfgs: dict[int, Any] = {}
        solo: list[RunTask] = []
        reasons: dict[str, int] = {}
        for t in tasks:
            member = _member(t)
            if isinstance(member, str):  # why it cannot join an ensemble
                solo.append(t)
                reasons[member] = reasons.get(member, 0) + 1
                continue
            cfgs[t.index] = member.cfg
            key = (ensemble_key(member.cfg), checkpoint_step(member.run_dir))
            groups.setdefault(key, []).append(t)
        ensembles: list[list[RunTask]] = []
        for group in groups.values():
            cfg = cfgs[group[0].index]
            size = self.members
            if size is None:
                device = resolve_device(cfg.train.device)
                task = cfg.task.build(cfg.seed)
                size = auto_members(cfg, task, device, fraction=0.5 / self.workers)
            # spread a group over the workers when it is smaller than workers × size
            n_chunks = max(math.ceil(len(group) / size), min(self.workers, len(group)))
            per = math.ceil(len(group) / n_chunks)
            ensembles += [group[i : i + per] for i in range(0, len(group), per)]
        if solo:  # nothing silent: say which runs the executor cannot batch, and why
            why = "; ".join(f"{n} × {r}" for r, n in reasons.items())
            print(
                f"rankdecay: note: {len(solo)} of {len(tasks)} run(s) train one at a time, "
                f"not in an ensemble: {why}.",
                file=sys.stderr,
            )
        return ensembles, solo

    def run_all(self, tasks: Sequence[RunTask], on_event: Callable[[RunEvent], None]) -> None:
        ensembles, solo = self.plan(tasks)
        jobs = [(_run_group, group) for group in ensembles] + [(_execute_one, [t]) for t in solo]
        if self.workers == 1:
            set_threads(self.threads)
            for run, group in jobs:
                for t in group:
                    on_event(RunEvent("start", t.index))
                for t, res in zip(group, run(group, None)):
                    on_event(RunEvent("done", t.index, res))
            return
        self.run_jobs(jobs, on_event)
