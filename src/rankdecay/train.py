"""One training run: :func:`train` turns an experiment's config
(:class:`rankdecay.run_config.RunConfig`) into a run directory; under ``torchrun`` it hands the
run to :func:`rankdecay.distributed.train_distributed`. Re-exports the pieces of
docs/training.md "Reusing the pieces" (they live in loop, engine, runstate, runfiles).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .distributed import launched_distributed, train_spec_distributed
from .engine import ModelEngine, build_model, build_optimizer, evaluate, loss_and_accuracy
from .loop import RunSpec, Verdict, lr_at, train_runs
from .loop import optimizer_settings as optimizer_settings
from .run_config import LRDConfig, OptimConfig, RunConfig, TrainConfig
from .runfiles import RunWriter
from .runstate import RunResult, RunState
from .runstate import _optimizer_from_parts as _optimizer_from_parts
from .runstate import _seed_everything as _seed_everything

__all__ = [
    "LRDConfig",
    "OptimConfig",
    "RunResult",
    "RunState",
    "RunWriter",
    "TrainConfig",
    "build_model",
    "build_optimizer",
    "evaluate",
    "loss_and_accuracy",
    "lr_at",
    "train",
]


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    experiment: str = "custom",
    preset: str | None = None,
    verdict: Verdict | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``; return the summary (also written to summary.json).

    ``resume=True`` continues from the directory's checkpoint (the config must be the same);
    rows logged after the checkpoint are dropped first, so the resumed run's metrics.jsonl
    equals that of an uninterrupted run. A NaN/Inf training loss raises
    :class:`~rankdecay.errors.NonFiniteLossError` after writing ``status: "failed"``; SIGINT /
    SIGTERM save a checkpoint and return with ``status: "interrupted"``.
    """
    spec = RunSpec(cfg, Path(run_dir), experiment, preset, verdict, resume)
    if launched_distributed():  # under torchrun: DistributedDataParallel (rankdecay.distributed)
        return train_spec_distributed(spec, progress)
    return train_runs(ModelEngine(experiment), [spec], progress=progress)[0]
