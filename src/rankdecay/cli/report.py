"""``rankdecay report DIR``: the HTML report and figures of a run or a sweep directory.

The report is :func:`rankdecay.report.build_report` (matplotlib, pandas; no torch unless the
sweep's experiment, asked for its own figures, imports it); this module declares the arguments
and says on stderr which runs have gaps in their history.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from . import show_warning

__all__ = ["USES_TORCH", "configure_parser", "run_cli"]

#: a report computes nothing with torch: ``--threads`` applies only if torch is already imported
USES_TORCH = False


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="a run directory or a sweep directory")
    parser.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="report.html path (default DIR/report/report.html); figures/ and summary.csv go beside it",
    )
    parser.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=None,
        metavar="STEP",
        help="steps at which to plot singular-value spectra (nearest logged; default first/middle/last)",
    )
    from ..threads import add_threads_argument

    add_threads_argument(parser)


def _warn_gaps(directory: Path) -> None:
    """One warning line per run whose history has gaps (the report marks them too)."""
    from ..results import is_run_dir
    from ..runfiles import history_gaps

    dirs = (
        [directory]
        if not (directory / "sweep.json").exists()
        else sorted(p for p in directory.iterdir() if p.is_dir() and is_run_dir(p))
    )
    for d in dirs:
        gaps = history_gaps(d)
        if gaps:
            print(
                f"rankdecay: warning: the history of {d} has gaps ({'; '.join(gaps)}); the report "
                "marks it and draws what is left.",
                file=sys.stderr,
            )


def run_cli(args: argparse.Namespace) -> int:
    from ..report import build_report

    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        path = build_report(args.directory, args.out, args.steps)
    _warn_gaps(Path(args.directory))
    print(
        f"wrote {path} (figures in {path.parent / 'figures'}, table {path.parent / 'summary.csv'})"
    )
    return 0
