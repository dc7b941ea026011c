"""The experiment trackers of a ``rankdecay run``: its tags and the sinks its config asks for.

The sinks themselves (TensorBoard, Weights & Biases, any object with ``log(step, scalars)`` and
``close()``) and the tag names they share live in :mod:`rankdecay.sinks`, below the spectral
monitor that logs through them; this module adds what belongs to a run (its metrics row, its
run directory and config) and re-exports the sink API under its historical name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import flatten
from ..run_config import RunConfig
from ..sinks import *  # noqa: F403 - the sink API, re-exported under its historical name
from ..sinks import LoggerSink, metric_scalars, open_sinks, parse_loggers, spectral_scalars
from ..sinks import __all__ as _SINK_API

__all__ = [*_SINK_API, "open_run_sinks", "run_scalars"]


def run_scalars(
    row: Mapping[str, Any], records: Sequence[Mapping[str, Any]], *, per_head: bool = False
) -> dict[str, float]:
    """The tags of one log event of ``rankdecay run``: the metrics row (without the monitor's
    means, which the spectral tags carry) and the spectral records of that step."""
    from ..monitor import summarize_records  # torch: only when a run logs

    tags = metric_scalars(row, skip=summarize_records(records))
    if records:
        tags.update(spectral_scalars(records, per_head=per_head))
    return tags


def open_run_sinks(cfg: RunConfig, run_dir: str | Path, experiment: str) -> list[LoggerSink]:
    """The sinks ``cfg.train.loggers`` asks for, for the run in ``run_dir``: the W&B run is named
    after the directory, grouped by its sweep (when ``run_dir`` is inside one) and gets the
    flattened config."""
    names = parse_loggers(getattr(cfg.train, "loggers", ()))
    if not names:
        return []
    run_dir = Path(run_dir).resolve()
    in_sweep = (run_dir.parent / "sweep.json").exists()
    return open_sinks(
        names,
        run_dir,
        name=run_dir.name,
        config={"experiment": experiment, **flatten(cfg)},
        group=run_dir.parent.name if in_sweep else experiment,
    )
