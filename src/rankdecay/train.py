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

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import flatten, from_dict
from .device import resolve_device as resolve_device
from .distributed import launched_distributed, train_distributed
from .engine import ModelEngine, build_model, build_optimizer, evaluate, loss_and_accuracy
from .errors import RankdecayError
from .integrations.loggers import check_loggers
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
    "configure_parser",
    "evaluate",
    "loss_and_accuracy",
    "lr_at",
    "run_cli",
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


# ----------------------------------------------------------------------------- CLI


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", nargs="?", help="experiment name (see `rankdecay list`)")
    p.add_argument("--preset", default=None, help="preset name (default: quick)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=3e-4 (repeatable)",
    )
    p.add_argument("--config", default=None, help="JSON/TOML file of config overrides")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument(
        "--out", default=None, help="run directory (default runs/<exp>-<preset>-s<seed>-<time>)"
    )
    p.add_argument(
        "--resume", default=None, metavar="DIR", help="continue the run in DIR from its checkpoint"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_log_to_argument(p)
    from .threads import add_threads_argument

    add_threads_argument(p)


def add_log_to_argument(p: argparse.ArgumentParser) -> None:
    """``--log-to tensorboard,wandb`` (``rankdecay run`` and ``rankdecay sweep``)."""
    p.add_argument(
        "--log-to",
        default=None,
        metavar="LOGGERS",
        help="also log metrics and spectra to these trackers: tensorboard, wandb (comma-separated; "
        "sets train.loggers; TensorBoard events in <run>/tensorboard, W&B files in <run>/wandb)",
    )


def with_loggers(cfg: Any, value: str | Sequence[str], experiment: str) -> Any:
    """``cfg`` with ``train.loggers`` set from ``--log-to`` (validated; packages checked)."""
    from .config import apply_overrides
    from .integrations.loggers import parse_loggers

    names = parse_loggers(value)
    if not hasattr(getattr(cfg, "train", None), "loggers"):
        raise RankdecayError(
            f"experiment '{experiment}' does not train a transformer with the rankdecay loop, so "
            "it cannot log to TensorBoard/W&B; drop the loggers (its results are in the run "
            "directory).",
            param="log_to",
        )
    check_loggers(names)
    return apply_overrides(cfg, {"train.loggers": names})


def _print_verdict(summary: Mapping[str, Any], run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False)
    rows = summary.get("verdict") or []
    if rows:
        table = Table(title=f"{summary.get('experiment')} — verdict")
        for col in ("claim", "target", "measured", "met"):
            table.add_column(col)
        for r in rows:
            met = r.get("met")
            table.add_row(
                str(r.get("claim", "")),
                str(r.get("target", "")),
                str(r.get("measured", "")),
                {True: "yes", False: "no", None: "n/a"}.get(met, str(met)),
            )
        console.print(table)
    console.print(f"status: {summary.get('status')} — run directory: {run_dir}")


def _flat_overrides(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, Mapping) and k != "weight_decay_by_role":
            out.update(_flat_overrides(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run_cli(args: argparse.Namespace) -> int:
    from .config import load_config_file
    from .experiments import get_experiment

    overrides: dict[str, Any] = {}
    if args.config:
        overrides.update(_flat_overrides(load_config_file(args.config)))
    if args.resume:
        writer = RunWriter(args.resume)
        stored = writer.read_meta()
        for given, key in ((args.experiment, "experiment"), (args.preset, "preset")):
            if given is not None and given != stored.get(key):
                raise RankdecayError(
                    f"cannot resume {args.resume}: it is a run of {key} {stored.get(key)!r}, not "
                    f"{given!r}; drop the {key} from the command or start a new run with --out."
                )
        exp = get_experiment(stored["experiment"])
        try:
            cfg = from_dict(exp.config_cls, stored["config"])
        except (TypeError, ValueError, KeyError) as exc:
            raise RankdecayError(
                f"the config in {writer.dir / writer.CONFIG} does not fit experiment "
                f"{stored['experiment']!r} ({str(exc)[:80]}); it is damaged — restore it from a "
                "backup or start a new run with --out."
            ) from None
        # changes on top of the stored config; RunWriter.start accepts those that leave the
        # checkpoint's meaning intact (RESUMABLE_KEYS) and refuses the others
        from .config import apply_overrides

        cfg = apply_overrides(cfg, overrides)
        cfg = apply_overrides(cfg, args.overrides)
        if args.seed is not None:
            cfg = apply_overrides(cfg, {"seed": args.seed})
        preset = stored.get("preset")
        run_dir = Path(args.resume)
    else:
        if not args.experiment:
            raise RankdecayError(
                "name an experiment, e.g. `rankdecay run recall` (see `rankdecay list`), or pass --resume DIR."
            )
        exp = get_experiment(args.experiment)
        preset = args.preset or "quick"
        cfg = exp.config(preset, (), None)
        from .config import apply_overrides

        cfg = apply_overrides(cfg, overrides)
        cfg = apply_overrides(cfg, args.overrides)
        if args.seed is not None:
            cfg = apply_overrides(cfg, {"seed": args.seed})
        if args.out:
            run_dir = Path(args.out)
        else:
            from .distributed import launched_distributed

            if launched_distributed():
                raise RankdecayError(
                    "under torchrun every process must write to the same run directory; pass --out DIR."
                )
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = Path("runs") / f"{exp.name}-{preset}-s{cfg.seed}-{stamp}"
    if args.log_to is not None:
        cfg = with_loggers(cfg, args.log_to, exp.name)
    summary = exp.run(
        cfg,
        run_dir,
        resume=bool(args.resume),
        progress=not args.no_progress and sys.stderr.isatty(),
        preset=preset,
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        _print_verdict(summary, run_dir)
    if summary.get("status") == "interrupted":
        print(f"rankdecay: {summary.get('error')}", file=sys.stderr)
        return 130
    return 0


def config_keys(cfg: Any) -> dict[str, Any]:
    """Dotted key → default value of a config instance (used by `rankdecay list`)."""
    return flatten(cfg)
