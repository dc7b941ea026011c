"""Shared plumbing of the transformer experiments (recall, grokking, lm, vit).

Each experiment module defines its config dataclass (fields ``seed, task, model, optim, lrd,
train`` plus its own top-level knobs and an ``optimizer_settings()`` hook) and a verdict function
``RunResult -> rows``, and declares ``Experiment(..., trainer="train", verdict=...)``;
:func:`make_run` turns these into the ``Experiment.run`` callable (torch is imported when a run
starts, not when the experiment is listed).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..run_config import RunConfig
    from ..train import RunResult

__all__ = ["first_step", "make_run", "mean_over", "verdict_row"]


def make_run(
    name: str, verdict: Callable[[RunResult], list[dict[str, Any]]] | None
) -> Callable[..., dict[str, Any]]:
    """``Experiment.run`` of a ``trainer="train"`` experiment: :func:`rankdecay.train.train`."""

    def run(
        cfg: RunConfig,
        run_dir: str | Path,
        *,
        resume: bool = False,
        progress: bool = True,
        preset: str | None = None,
    ) -> dict[str, Any]:
        from ..train import train

        return train(
            cfg,
            run_dir,
            resume=resume,
            progress=progress,
            experiment=name,
            preset=preset,
            verdict=verdict,
        )

    run.__name__ = f"run_{name.replace('-', '_')}"
    run.__doc__ = f"One run of the '{name}' experiment (see rankdecay.train.train)."
    return run


def verdict_row(claim: str, target: str, measured: Any, met: bool | None) -> dict[str, Any]:
    """One row of a run's verdict table; ``met=None`` means "reported, no pass/fail target"."""
    if isinstance(measured, float):
        measured = f"{measured:.4g}"
    return {"claim": claim, "target": target, "measured": measured, "met": met}


def first_step(result: RunResult, key: str, threshold: float, above: bool = True) -> int | None:
    """First logged step where ``key`` ≥ threshold (``above``) or ≤ threshold; None if never."""
    for step, value in result.series(key):
        if (value >= threshold) if above else (value <= threshold):
            return step
    return None


def mean_over(result: RunResult, key: str, start: int, stop: int) -> float | None:
    """Mean of ``key`` over logged steps in [start, stop]; None when nothing was logged there."""
    values = [v for s, v in result.series(key) if start <= s <= stop]
    return sum(values) / len(values) if values else None
