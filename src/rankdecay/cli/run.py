"""``rankdecay run EXPERIMENT``: one run of a named experiment, and its verdict table.

The config is built as defaults → ``--preset`` (default ``quick``) → ``--config FILE`` →
``--set KEY=VALUE`` → ``--seed``; ``--resume DIR`` takes the stored config of DIR instead and
applies the changes on top (the run directory refuses those that would change the checkpoint's
meaning). The run itself is the experiment's ``run`` (:mod:`rankdecay.experiments`); under
``torchrun … -m rankdecay run …`` only rank 0 prints.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import RankdecayError, RankdecayValueError
from . import stdout_console

__all__ = ["add_log_to_argument", "configure_parser", "run_cli"]


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
    from ..threads import add_threads_argument

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


def _print_verdict(summary: Mapping[str, Any], run_dir: Path) -> None:
    from rich.table import Table

    console = stdout_console(stderr=False)
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
    """A nested config file as dotted-key overrides (``weight_decay_by_role`` stays a mapping)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, Mapping) and k != "weight_decay_by_role":
            out.update(_flat_overrides(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _resumed(args: argparse.Namespace, overrides: Mapping[str, Any]) -> tuple[Any, Any, Any, Path]:
    """(experiment, config, preset, run directory) of ``--resume DIR`` with the changes applied."""
    from ..config import apply_overrides, from_dict
    from ..experiments import get_experiment
    from ..runfiles import RunWriter

    writer = RunWriter(args.resume)
    stored = writer.read_meta()
    for given, key in ((args.experiment, "experiment"), (args.preset, "preset")):
        if given is not None and given != stored.get(key):
            raise RankdecayValueError(
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
    cfg = apply_overrides(cfg, overrides)
    cfg = apply_overrides(cfg, args.overrides)
    if args.seed is not None:
        cfg = apply_overrides(cfg, {"seed": args.seed})
    return exp, cfg, stored.get("preset"), Path(args.resume)


def _new(args: argparse.Namespace, overrides: Mapping[str, Any]) -> tuple[Any, Any, Any, Path]:
    """(experiment, config, preset, run directory) of a new run."""
    from ..config import apply_overrides
    from ..experiments import get_experiment

    if not args.experiment:
        raise RankdecayValueError(
            "name an experiment, e.g. `rankdecay run recall` (see `rankdecay list`), or pass --resume DIR."
        )
    exp = get_experiment(args.experiment)
    preset = args.preset or "quick"
    cfg = exp.config(preset, (), None)
    cfg = apply_overrides(cfg, overrides)
    cfg = apply_overrides(cfg, args.overrides)
    if args.seed is not None:
        cfg = apply_overrides(cfg, {"seed": args.seed})
    if args.out:
        return exp, cfg, preset, Path(args.out)
    from ..distributed import launched_distributed

    if launched_distributed():
        raise RankdecayValueError(
            "under torchrun every process must write to the same run directory; pass --out DIR.",
            param="out",
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return exp, cfg, preset, Path("runs") / f"{exp.name}-{preset}-s{cfg.seed}-{stamp}"


def run_cli(args: argparse.Namespace) -> int:
    from ..config import load_config_file
    from ..experiments import with_loggers

    overrides: dict[str, Any] = {}
    if args.config:
        overrides.update(_flat_overrides(load_config_file(args.config)))
    resolve = _resumed if args.resume else _new
    exp, cfg, preset, run_dir = resolve(args, overrides)
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
