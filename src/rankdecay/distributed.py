"""Data-parallel training under ``torchrun`` (docs/scaling.md §3): :func:`train_distributed`
sets up the process group (``nccl`` on CUDA with rank r on ``cuda:LOCAL_RANK``, else ``gloo``)
and runs the one loop (:func:`rankdecay.loop.train_runs`) with a DDP
:class:`rankdecay.engine.ModelEngine` (sharding and its exactness: :mod:`rankdecay.engine`).
Checkpoints are in the single-process format, so a DDP run resumes on one process and vice
versa (with the same global batch).
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
    spec = RunSpec(cfg, Path(run_dir), experiment, preset, verdict, resume)
    return train_spec_distributed(spec, progress)


def train_spec_distributed(spec: RunSpec, progress: bool = True) -> dict[str, Any]:
    cfg = spec.cfg
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
        label = f"{spec.experiment} (DDP×{info.world_size})"
        engine = ModelEngine(label, device, info.rank, info.world_size)
        summary = train_runs(engine, [spec], progress=progress)[0]
        dist.barrier()
        return summary
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()
