"""Data-parallel training under ``torchrun``: DistributedDataParallel with exact resume.

``rankdecay run <experiment>`` launched as ::

    torchrun --nproc_per_node N -m rankdecay.cli run lm --out runs/lm-ddp ...
    # (or: python -m torch.distributed.run --nproc_per_node N -m rankdecay.cli run lm ...)

sees ``WORLD_SIZE > 1`` and ``RANK`` in its environment; :func:`rankdecay.train.train` then hands
the run to :func:`train_distributed`, which sets up the process group and runs the one loop
(:func:`rankdecay.loop.train_runs`) with a DDP :class:`rankdecay.engine.ModelEngine`:

- process group: ``nccl`` when the run's device is CUDA (rank r uses ``cuda:LOCAL_RANK``),
  ``gloo`` on CPU; rendezvous from the ``MASTER_ADDR``/``MASTER_PORT`` torchrun sets.
- data: ``train.batch_size`` is the **global** batch, sharded over the ranks so that the update
  equals the 1-process update (:mod:`rankdecay.engine`).
- logged training loss/accuracy are all-reduced each step, so every rank accumulates the global
  means and agrees on NaN detection; a SIGINT/SIGTERM on any rank stops every rank.
- rank 0 alone writes the run directory (config, metrics, spectra, summary, checkpoints) and
  evaluates; its metrics rows reach the other ranks, so early stopping ends every rank alike.
- resume (``--resume DIR``): rank 0 verifies the checkpoint and the logs, then every rank loads
  that checkpoint (weights, optimizer state, running sums, RNG), so the continued run equals an
  uninterrupted one. The checkpoint format is that of a single-process run: a DDP run can be
  resumed on one process and vice versa (with the same global batch).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from .device import resolve_device
from .engine import ModelEngine, shard_rows
from .errors import RankdecayValueError
from .loop import RunSpec, Verdict, check_run_config, train_runs
from .run_config import RunConfig

__all__ = ["DistInfo", "dist_info", "launched_distributed", "shard_rows", "train_distributed"]


class DistInfo(NamedTuple):
    """Rank, world size and local rank read from the torchrun environment."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise RankdecayValueError(
            f"environment variable {name}={value!r} is not an integer; launch with torchrun, which sets it.",
            param=name,
        ) from None


def dist_info() -> DistInfo:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK); 0/1/0 outside torchrun."""
    return DistInfo(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))


def launched_distributed() -> bool:
    """True inside a multi-process torchrun launch (WORLD_SIZE > 1 and RANK set)."""
    return "RANK" in os.environ and _env_int("WORLD_SIZE", 1) > 1


def train_distributed(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    experiment: str = "custom",
    preset: str | None = None,
    verdict: Verdict | None = None,
) -> dict[str, Any]:
    """:func:`rankdecay.train.train` for one rank of a torchrun launch (see the module docstring).

    Returns the run summary on every rank (rank 0 writes it).
    """
    check_run_config(cfg)
    info = dist_info()
    shard_rows(cfg.train.batch_size, info.rank, info.world_size)  # refuse an uneven split first
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            rank=info.rank,
            world_size=info.world_size,
            timeout=datetime.timedelta(minutes=30),
        )
        created = True
    try:
        label = f"{experiment} (DDP×{info.world_size})"
        engine = ModelEngine(label, device, info.rank, info.world_size)
        spec = RunSpec(cfg, Path(run_dir), experiment, preset, verdict, resume)
        summary = train_runs(engine, [spec], progress=progress)[0]
        dist.barrier()
        return summary
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()
