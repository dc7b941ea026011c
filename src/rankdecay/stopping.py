"""Early stopping: end a run after N consecutive evaluations above a threshold.

The rule (the public LRD code's, there with key ``val_acc``, threshold 0.99, N = 2): after every
evaluation row r of a run, streak ← streak + 1 if r[key] > threshold else 0; the run stops once
streak ≥ N. Rows without ``key`` (log-only rows) leave the streak as it is.

The streak is a pure function of the run's metrics rows, so it is not saved in a checkpoint: a
resumed run replays the rows kept up to its checkpoint (:meth:`EarlyStop.from_config`) and stops
exactly where an uninterrupted run would have.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import RankdecayValueError

__all__ = ["EarlyStop"]


@dataclass
class EarlyStop:
    """Streak counter of evaluations with ``key`` > ``above`` (``above=None``: never stops)."""

    key: str = "val_acc"
    above: float | None = None
    patience: int = 2
    streak: int = 0

    def __post_init__(self) -> None:
        if self.above is not None and not math.isfinite(self.above):
            raise RankdecayValueError(
                f"train.early_stop_above must be a finite number or none, got {self.above}; "
                "set train.early_stop_above to e.g. 0.99.",
                param="train.early_stop_above",
            )
        if self.patience <= 0:
            raise RankdecayValueError(
                f"train.early_stop_patience must be positive, got {self.patience}; "
                "set train.early_stop_patience to e.g. 2.",
                param="train.early_stop_patience",
            )

    @classmethod
    def from_config(cls, tc: Any, rows: Iterable[Mapping[str, Any]] = ()) -> EarlyStop:
        """From a TrainConfig's ``early_stop_*`` fields, replaying the rows already logged."""
        stop = cls(
            key=getattr(tc, "early_stop_key", "val_acc"),
            above=getattr(tc, "early_stop_above", None),
            patience=getattr(tc, "early_stop_patience", 2),
        )
        for row in rows:
            stop.update(row)
        return stop

    @property
    def due(self) -> bool:
        """True once ``patience`` consecutive evaluations were above the threshold."""
        return self.above is not None and self.streak >= self.patience

    def update(self, row: Mapping[str, Any]) -> bool:
        """Account one metrics row; return :attr:`due`."""
        if self.above is None:
            return False
        value = row.get(self.key)
        if value is not None:
            self.streak = self.streak + 1 if float(value) > self.above else 0
        return self.due

    def describe(self, step: int) -> dict[str, Any]:
        """What ``summary.json`` records under ``stopped_early``."""
        return {"step": step, "key": self.key, "above": self.above, "patience": self.patience}
