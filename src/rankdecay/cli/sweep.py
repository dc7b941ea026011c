"""``rankdecay sweep EXPERIMENT``: a grid of runs (grid points × seeds) on an executor.

The sweep itself is :func:`rankdecay.sweep.run_sweep`; this module declares its arguments (those of
every importable executor too, :func:`rankdecay.sweep.executor_arguments`: the ensemble's without
importing torch) and prints the outcome. Exit status: 0 when every run finished, else the number of
runs that did not (capped at :data:`rankdecay.sweep.MAX_EXIT`); 2 for bad input; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys

from ..sweep import EXECUTORS, MAX_EXIT, executor_arguments
from .run import add_log_to_argument

__all__ = ["configure_parser", "run_cli"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run a grid of runs (grid points × seeds), one run directory each plus a sweep.json index. "
        "Re-running the same command skips finished runs and resumes the others. Exit status: 0 "
        f"when every run finished, else the number of runs that did not (capped at {MAX_EXIT}); "
        "2 for bad input; 130 on Ctrl-C."
    )
    parser.add_argument(
        "experiment", help="a registered experiment (`rankdecay list`) or package.module:ATTR"
    )
    parser.add_argument(
        "--preset",
        default="quick",
        help="preset whose config and default grid to use (default quick)",
    )
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,…",
        help="sweep KEY over these values (replaces the preset's values for KEY; repeatable)",
    )
    parser.add_argument(
        "--set",
        dest="fixed",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fixed override for every run (repeatable)",
    )
    parser.add_argument(
        "--seeds",
        default=None,
        metavar="N|S1,S2,…",
        help="seeds per point: a count (0..N-1) or a list; default: the preset's",
    )
    parser.add_argument(
        "--executor",
        default="local",
        help=f"where runs execute: {', '.join(EXECUTORS)} (default local)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="parallel runs (local: processes, default 1; ray: at most this many in flight)",
    )
    parser.add_argument(
        "--threads",
        "--threads-per-worker",
        dest="threads_per_worker",
        type=int,
        default=None,
        metavar="N",
        help="torch threads per run; workers × threads may not exceed the CPUs "
        "(local default: physical cores // workers; ray default 1)",
    )
    parser.add_argument(
        "--out", default=None, help="sweep directory (default sweeps/<experiment>-<preset>-<hash>)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list the runs and their status, run nothing"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_log_to_argument(parser)
    declared: set[object] = set()
    for name in list(EXECUTORS):
        try:
            add_arguments = executor_arguments(name)
        except ImportError:
            continue
        function = getattr(add_arguments, "__func__", add_arguments)  # one class, two names
        if function not in declared:
            declared.add(function)
            add_arguments(parser)


def run_cli(args: argparse.Namespace) -> int:
    options = {
        k: v
        for k, v in vars(args).items()
        if k
        not in {
            "experiment",
            "preset",
            "grid",
            "fixed",
            "seeds",
            "executor",
            "out",
            "dry_run",
            "no_progress",
            "command",
            "debug",
            "log_to",
        }
    }
    if options.get("workers") is None:
        options.pop("workers", None)
        if args.executor == "local":
            options["workers"] = 1
    from ..sweep import run_sweep

    result = run_sweep(
        args.experiment,
        preset=args.preset,
        grid=args.grid,
        fixed=args.fixed,
        seeds=args.seeds,
        out=args.out,
        executor=args.executor,
        progress=not args.no_progress and not args.dry_run,
        dry_run=args.dry_run,
        loggers=args.log_to or (),
        **options,
    )
    rows = result.rows
    if args.dry_run:
        for row in rows:
            print(f"{row['status']:<12} {row['name']}")
        print(f"{len(rows)} run(s) → {result.out}")
        return 0
    counts = result.counts
    for row in rows:
        if row["status"] == "failed":
            print(f"failed: {row['name']}: {row['error']}", file=sys.stderr)
    if result.interrupted:
        print(
            f"interrupted: {counts.get('finished', 0)}/{len(rows)} finished; repeat the command to resume.",
            file=sys.stderr,
        )
        return 130
    ran = len(result.executed)
    print(
        f"{counts.get('finished', 0)}/{len(rows)} runs finished ({ran} started now), "
        f"{result.n_failed} not finished → {result.out}\n"
        f"report: rankdecay report {result.out}"
    )
    return result.exit_code
