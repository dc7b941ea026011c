"""Data-parallel training under ``torchrun``: DistributedDataParallel with exact resume.

``rankdecay run <experiment>`` launched as ::

    torchrun --nproc_per_node N -m rankdecay.cli run lm --out runs/lm-ddp ...
    # (or: python -m torch.distributed.run --nproc_per_node N -m rankdecay.cli run lm ...)

sees ``WORLD_SIZE > 1`` and ``RANK`` in its environment; :func:`rankdecay.train.train` then hands
the run to :func:`train_distributed`:

- process group: ``nccl`` when the run's device is CUDA (rank r uses ``cuda:LOCAL_RANK``),
  ``gloo`` on CPU; rendezvous from the ``MASTER_ADDR``/``MASTER_PORT`` torchrun sets.
- data: ``train.batch_size`` is the **global** batch B; it must be divisible by the world size
  W. Every rank draws the step's global batch ``task.train_batch(step, B)`` (pure in
  (seed, step), so all ranks agree without communication) and keeps rows
  [r·B/W, (r+1)·B/W). DDP averages the gradients, so with equal shards the update equals the
  1-process update on the global batch: ∇(1/W Σ_r mean_{i∈shard r} ℓᵢ) = ∇ mean_{i∈B} ℓᵢ.
  (Sequence tasks with ignored targets (−100) can have unequal valid-token counts per shard;
  then the shards are weighted equally, not by tokens.)
- logged training loss/accuracy: each step the ranks all-reduce (loss, accuracy, stop flag),
  so every rank accumulates the global means and agrees on NaN detection and on stopping
  after SIGINT/SIGTERM.
- rank 0 alone writes the run directory (config, metrics, spectra via the monitor, summary,
  checkpoints) and evaluates; the other ranks wait at the next collective.
- resume (``--resume DIR``): every rank loads the same checkpoint (weights, optimizer state,
  running sums, RNG), so the continued run equals an uninterrupted one, as for a single process.
  The checkpoint format is that of a single-process run: a DDP run can be resumed on one
  process and vice versa (with the same global batch).

Low-Rank Decay runs after every optimizer step on every rank; the weights are identical on all
ranks after the all-reduced step, so the decay (deterministic) keeps them identical.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .config import to_dict
from .errors import NonFiniteLossError, RankdecayError

__all__ = ["DistInfo", "dist_info", "launched_distributed", "shard_rows", "train_distributed"]


class DistInfo:
    """Rank, world size and local rank read from the torchrun environment."""

    def __init__(self, rank: int, world_size: int, local_rank: int) -> None:
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"DistInfo(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank})"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise RankdecayError(
            f"environment variable {name}={value!r} is not an integer; launch with torchrun, which sets it."
        ) from None


def dist_info() -> DistInfo:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK); 0/1/0 outside torchrun."""
    return DistInfo(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))


def launched_distributed() -> bool:
    """True inside a multi-process torchrun launch (WORLD_SIZE > 1 and RANK set)."""
    return "RANK" in os.environ and _env_int("WORLD_SIZE", 1) > 1


def shard_rows(n: int, rank: int, world_size: int) -> slice:
    """Rows [rank·n/W, (rank+1)·n/W) of a global batch of n rows (n divisible by W)."""
    if n % world_size:
        raise RankdecayError(
            f"the global batch of {n} rows does not split evenly over {world_size} processes; "
            f"set train.batch_size to a multiple of {world_size}."
        )
    b = n // world_size
    return slice(rank * b, (rank + 1) * b)


def _broadcast_error(message: str | None, info: DistInfo) -> None:
    """Rank 0's error (or None) reaches every rank, which then raises it too."""
    box = [message]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise RankdecayError(str(box[0]))


def train_distributed(
    cfg: Any,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    experiment: str = "custom",
    preset: str | None = None,
    verdict: Any = None,
) -> dict[str, Any]:
    """:func:`rankdecay.train.train` for one rank of a torchrun launch (see the module docstring).

    Returns the run summary on every rank (rank 0 writes it).
    """
    from torch.nn.parallel import DistributedDataParallel

    from .device import autocast, maybe_compile, param_dtype, spectra_monitor
    from .integrations.loggers import close_sinks, open_run_sinks
    from .train import (
        RunResult,
        RunState,
        RunWriter,
        TrainConfig,
        _final_values,
        _optimizer_from_parts,
        _Progress,
        _seed_everything,
        _set_rng,
        _StopFlag,
        build_model,
        build_optimizer,
        evaluate,
        initial_summary,
        log_event,
        loss_and_accuracy,
        lr_at,
        optimizer_settings,
        resolve_device,
        resume_from_checkpoint,
        save_run_checkpoint,
    )
    from .validation import validate_run_config

    info = dist_info()
    tc: TrainConfig = cfg.train
    validate_run_config(cfg)
    shard = shard_rows(tc.batch_size, info.rank, info.world_size)
    device = resolve_device(tc.device)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    created = False
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=info.rank,
            world_size=info.world_size,
            timeout=datetime.timedelta(minutes=30),
        )
        created = True
    sinks: list[Any] = []
    try:
        writer = RunWriter(run_dir, getattr(tc, "keep_checkpoints", 1))
        meta = {
            "experiment": experiment,
            "preset": preset,
            "seed": cfg.seed,
            "config": to_dict(cfg),
        }
        error: str | None = None
        if info.is_main:
            try:
                writer.start(meta, resume)
            except RankdecayError as exc:
                error = str(exc)
        _broadcast_error(error, info)
        if resume:
            prev = writer.read_summary()
            if prev is not None and prev.get("status") == "finished":
                return prev

        _seed_everything(cfg.seed)
        task = cfg.task.build(cfg.seed)
        model = build_model(cfg.model, task).to(device=device, dtype=param_dtype(tc.dtype, tc.amp))
        model.train()
        optim_cfg, lrd_cfg = optimizer_settings(cfg)
        optimizer, _lrd = build_optimizer(model, optim_cfg, lrd_cfg)
        state = RunState(device=device)
        resumed_from: int | None = None
        if resume:
            # rank 0 verifies (and, if the newest is damaged, falls back to an older one and
            # checks the logs against it); then the other ranks load the checkpoint it chose
            error = None
            if info.is_main:
                try:
                    resumed_from = resume_from_checkpoint(writer, model, optimizer, state, tc)
                except RankdecayError as exc:
                    error = str(exc)
            _broadcast_error(error, info)
            box = [resumed_from]
            dist.broadcast_object_list(box, src=0)
            resumed_from = box[0]
            if not info.is_main and resumed_from is not None:

                def restore(tensors: dict[str, Any], ck: dict[str, Any]) -> None:
                    _optimizer_from_parts(optimizer, tensors, ck["optimizer"])
                    state.load(tensors, ck)
                    _set_rng(ck["rng"], tensors)

                writer.load_checkpoint(model, restore, max_step=tc.steps)
        dist.barrier()  # every rank has read the checkpoint before rank 0 writes the logs

        ddp = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        forward = maybe_compile(ddp, tc.compile)
        amp = autocast(device, tc.amp)
        monitor = (
            spectra_monitor(
                model,
                tc.spectra_device,
                every=tc.monitor_every,
                rtol=tc.monitor_rtol,
                keep_records=False,
            )
            if info.is_main
            else None
        )
        eval_sets = (
            {k: (x.to(device), y.to(device)) for k, (x, y) in task.eval_sets().items()}
            if info.is_main
            else {}
        )
        summary = initial_summary(cfg, experiment, preset, state.step, resumed_from, device)
        summary["world_size"] = info.world_size
        summary["backend"] = backend
        summary["local_batch_size"] = shard.stop - shard.start
        if info.is_main:
            writer.write_summary(summary)
            sinks = open_run_sinks(cfg, writer.dir, experiment)

        def evaluate_now() -> dict[str, float]:
            with amp:
                return evaluate(model, eval_sets, tc.eval_batch_size)

        def bookkeeping(step: int, force_eval: bool = False) -> dict[str, Any]:
            if info.is_main:
                return log_event(
                    step,
                    state=state,
                    writer=writer,
                    tc=tc,
                    lr=optimizer.param_groups[0]["lr"],
                    evaluate_fn=evaluate_now,
                    monitor=monitor,
                    force_eval=force_eval,
                    sinks=sinks,
                )
            if state.count and (step % tc.log_every == 0 or force_eval):
                if not state.pending_finite():  # same global sums as rank 0: same decision
                    raise NonFiniteLossError(
                        f"the training loss became NaN/Inf by step {step} (rank {info.rank})."
                    )
                state.pop()
            return {"step": step}

        bar = _Progress(
            progress and info.is_main, tc.steps, state.step, f"{experiment} (DDP×{info.world_size})"
        )
        t0 = time.perf_counter()
        start_step = state.step
        stop = _StopFlag()
        params = [p for p in model.parameters() if p.requires_grad]
        clip = optim_cfg.grad_clip
        sync = torch.zeros(3, dtype=torch.float32, device=device)
        stopped = False
        try:
            with stop.installed():
                if state.step == 0:
                    bar.update(0, bookkeeping(0))
                while state.step < tc.steps:
                    t = state.step
                    lr = lr_at(t, optim_cfg, tc.steps)
                    for g in optimizer.param_groups:
                        g["lr"] = lr
                    x, y = task.train_batch(t, tc.batch_size)
                    x, y = x[shard], y[shard]
                    if x.device != device:
                        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    with amp:
                        logits = forward(x)
                    loss, acc = loss_and_accuracy(logits, y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()  # DDP all-reduces (averages) the gradients here
                    if clip > 0:
                        torch.nn.utils.clip_grad_norm_(params, clip)
                    optimizer.step()
                    sync[0] = loss.detach() / info.world_size
                    sync[1] = acc / info.world_size
                    sync[2] = 1.0 if stop.signal is not None else 0.0
                    dist.all_reduce(sync)
                    state.accumulate(sync[0].clone(), sync[1].clone())
                    state.step = t + 1
                    s = state.step
                    last = s == tc.steps
                    due = monitor.due(s) if monitor is not None else False
                    if s % tc.log_every == 0 or s % tc.eval_every == 0 or due or last:
                        bar.update(s, bookkeeping(s, force_eval=last))
                    if (s % tc.checkpoint_every == 0 or last) and info.is_main:
                        save_run_checkpoint(writer, model, optimizer, state)
                    if float(sync[2]) > 0 and not last:
                        stopped = True
                        break
                if stopped:
                    if info.is_main:
                        save_run_checkpoint(writer, model, optimizer, state)
                    bar.close()
                    summary.update(
                        status="interrupted",
                        step=state.step,
                        error=f"interrupted by a signal at step {state.step}; resume {writer.dir} "
                        "with the same torchrun command to continue.",
                        final=_final_values(writer.metrics()) if info.is_main else {},
                        elapsed_s=time.perf_counter() - t0,
                    )
                    if info.is_main:
                        writer.write_summary(summary)
                    return summary
        except NonFiniteLossError as exc:
            bar.close()
            if info.is_main:
                summary.update(
                    status="failed",
                    error=str(exc),
                    step=state.step,
                    final=_final_values(writer.metrics()),
                )
                writer.write_summary(summary)
            raise
        except BaseException as exc:
            bar.close()
            if info.is_main:
                summary.update(
                    status="failed", error=f"{type(exc).__name__}: {exc}", step=state.step
                )
                writer.write_summary(summary)
            raise
        bar.close()
        elapsed = time.perf_counter() - t0
        summary.update(
            status="finished",
            step=state.step,
            elapsed_s=elapsed,
            steps_per_s=(state.step - start_step) / elapsed if elapsed > 0 else None,
        )
        if info.is_main:
            rows = writer.metrics()
            final = _final_values(rows)
            result = RunResult(writer.dir, cfg, rows, final)
            summary.update(final=final, verdict=verdict(result) if verdict is not None else [])
            writer.write_summary(summary)
        dist.barrier()
        return summary
    finally:
        close_sinks(sinks, quiet=sys.exc_info()[0] is not None)
        if "writer" in locals():
            writer.release()
        if created and dist.is_initialized():
            dist.destroy_process_group()
