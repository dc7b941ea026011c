"""One training run: :func:`train` turns an experiment's config into a run directory.

Every transformer experiment (recall, grokking, lm, vit) is a config with the fields

    seed: int, task: <task config with build(seed)>, model: ModelConfig,
    optim: OptimConfig, lrd: LRDConfig, train: TrainConfig

(:class:`rankdecay.run_config.RunConfig`). The pieces live where their job is:

- :mod:`rankdecay.loop` — the run's lifecycle (run directory, resume, summaries, logging
  cadence, NaN/Inf and signal handling), :func:`lr_at`, :func:`optimizer_settings`;
- :mod:`rankdecay.engine` — one model: :func:`build_model`, :func:`build_optimizer`,
  :func:`loss_and_accuracy`, :func:`evaluate`, and the engine the loop calls;
- :mod:`rankdecay.runstate` — :class:`RunState` and the checkpoint's contents;
- :mod:`rankdecay.runfiles` — :class:`RunWriter`, the run directory on disk.

Under ``torchrun`` :func:`train` hands the run to :func:`rankdecay.distributed.train_distributed`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .device import resolve_device as resolve_device
from .distributed import launched_distributed, train_distributed
from .engine import ModelEngine, build_model, build_optimizer, evaluate, loss_and_accuracy
from .loop import RunSpec, Verdict, lr_at, train_runs
from .loop import _StopFlag as _StopFlag
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
    if launched_distributed():  # under torchrun: DistributedDataParallel (rankdecay.distributed)
        return train_distributed(
            cfg,
            run_dir,
            resume=resume,
            progress=progress,
            experiment=experiment,
            preset=preset,
            verdict=verdict,
        )
    spec = RunSpec(cfg, Path(run_dir), experiment, preset, verdict, resume)
    return train_runs(ModelEngine(experiment), [spec], progress=progress)[0]
