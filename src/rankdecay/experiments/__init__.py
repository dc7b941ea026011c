"""Named experiments and their presets.

Each experiment lives in its own module here and defines ``EXPERIMENT = Experiment(...)``:

- ``config_cls``: a dataclass config (see :mod:`rankdecay.config`) with a top-level ``seed: int``;
- ``presets``: preset name → dotted-key overrides applied to the defaults (``quick`` and ``paper``
  at least);
- ``run(cfg, run_dir, *, resume=False, progress=True) -> dict``: performs one run, writing the run
  directory described in :mod:`rankdecay.runio`, and returns the summary dict (``summary.json``),
  whose ``verdict`` rows the CLI prints as a table;
- or, instead of ``run``, ``trainer="train"`` with a ``verdict(RunResult) -> rows`` function: the
  run is rankdecay's transformer loop (:func:`rankdecay.train.train`), which the ensemble executor
  (:mod:`rankdecay.ensemble`) may also run stacked with other members;
- ``grids``: preset → default sweep grid (dotted key → values), ``seeds``: preset → seeds per point;
- ``figures`` (optional): ``figures(sweep) -> list[ReportFigure]``, the figures of a sweep of this
  experiment that only it knows how to draw (the grokking phase diagram); ``rankdecay report``
  adds them to the generic ones (:mod:`rankdecay.report`).

Nothing here imports torch, nor does any experiment module at import time: ``rankdecay list``
reads the records and their configs (task sections from :mod:`rankdecay.tasks.configs`), and the
functions that run an experiment import torch and the task code (tests/test_cli_light.py).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..config import C, DataclassInstance, apply_overrides
from ..errors import RankdecayValueError

if TYPE_CHECKING:  # pragma: no cover
    from ..train import RunResult

__all__ = [
    "EXPERIMENT_MODULES",
    "Experiment",
    "ReportFigure",
    "SweepData",
    "Trainer",
    "get_experiment",
    "list_experiments",
    "with_loggers",
]

#: who runs an experiment's configs: "train" = rankdecay's transformer loop
#: (:func:`rankdecay.train.train`, also stackable by the ensemble executor); None = its own ``run``
Trainer = Literal["train"] | None

#: experiment name → module in this package
EXPERIMENT_MODULES: dict[str, str] = {
    "factorization": "factorization",
    "attention-svm": "attention_svm",
    "recall": "recall",
    "grokking": "grokking",
    "lm": "lm",
    "vit": "vit",
    "pretrained": "pretrained",
}


@dataclass(frozen=True)
class SweepData:
    """A sweep as an experiment's ``figures`` hook receives it (see :class:`ReportFigure`)."""

    #: :func:`rankdecay.results.load_sweep` of the sweep: one row per run
    df: Any
    #: run name (``df["run"]``) → its files (:class:`rankdecay.results.Run`), for the runs that
    #: have a run directory
    runs: Mapping[str, Any]
    #: the swept config keys
    grid: Sequence[str]


@dataclass(frozen=True)
class ReportFigure:
    """A figure that an experiment adds to the report of its sweeps (``Experiment.figures``);
    :func:`rankdecay.report.phase_diagram` makes the grokking phase diagram.

    ``figure`` is a matplotlib ``Figure`` (the class itself, not pyplot); ``name`` names its
    files (``figures/<name>.png`` / ``.svg``) and its anchor in the page.
    """

    figure: Any
    name: str
    title: str
    caption: str


@dataclass(frozen=True)
class Experiment:
    """A named experiment: its config class, presets, sweep grids and how a run is trained."""

    name: str
    description: str
    config_cls: type
    #: one run: ``run(cfg, run_dir, *, resume, progress, ...) -> summary``; built from ``trainer``
    #: and ``verdict`` when not given
    run: Callable[..., dict[str, Any]] = None  # type: ignore[assignment]
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    grids: Mapping[str, Mapping[str, Sequence[Any]]] = field(default_factory=dict)
    seeds: Mapping[str, int] = field(default_factory=dict)
    #: which REPRODUCTIONS.md row this reproduces, e.g. "R3"
    reproduces: str = ""
    #: the trainer of its runs (see :data:`Trainer`)
    trainer: Trainer = None
    #: ``trainer="train"``: the verdict rows of a finished run, ``RunResult -> [row, ...]``
    verdict: Callable[[RunResult], list[dict[str, Any]]] | None = None
    #: the figures of a sweep of this experiment beyond the generic ones (see rankdecay.report)
    figures: Callable[[SweepData], list[ReportFigure]] | None = None

    def __post_init__(self) -> None:
        if self.run is None:
            if self.trainer != "train":
                raise RankdecayValueError(
                    f"experiment '{self.name}' has neither a run function nor trainer='train'; "
                    "give it one of them."
                )
            from ._transformer import make_run

            object.__setattr__(self, "run", make_run(self.name, self.verdict))

    def config(self, preset: str = "quick", overrides: Any = (), seed: int | None = None) -> Any:
        """Defaults → preset → overrides → seed."""
        if preset not in self.presets:
            raise RankdecayValueError(
                f"experiment '{self.name}' has no preset '{preset}'; choose one of "
                f"{', '.join(self.presets)}."
            )
        cfg = apply_overrides(self.config_cls(), dict(self.presets[preset]))
        cfg = apply_overrides(cfg, overrides)
        if seed is not None:
            cfg = apply_overrides(cfg, {"seed": seed})
        return cfg

    def __call__(
        self, cfg: DataclassInstance, run_dir: str | Path, **kwargs: Any
    ) -> dict[str, Any]:
        return self.run(cfg, Path(run_dir), **kwargs)


def _available() -> dict[str, str]:
    return {
        name: mod
        for name, mod in EXPERIMENT_MODULES.items()
        if importlib.util.find_spec(f"{__name__}.{mod}") is not None
    }


def list_experiments() -> list[str]:
    return list(_available())


def get_experiment(name: str) -> Experiment:
    available = _available()
    if name not in available:
        raise RankdecayValueError(
            f"unknown experiment '{name}'; choose one of {', '.join(available)} "
            "(`rankdecay list` describes them)."
        )
    module = importlib.import_module(f"{__name__}.{available[name]}")
    return module.EXPERIMENT


def with_loggers(cfg: C, value: str | Sequence[str], experiment: str) -> C:
    """``cfg`` with ``train.loggers`` set from ``value`` (``--log-to``; validated, packages checked).

    Only configs of the transformer loop have ``train.loggers``; any other config is refused.
    """
    from ..integrations.loggers import check_loggers, parse_loggers

    names = parse_loggers(value)
    if not hasattr(getattr(cfg, "train", None), "loggers"):
        raise RankdecayValueError(
            f"experiment '{experiment}' does not train a transformer with the rankdecay loop, so "
            "it cannot log to TensorBoard/W&B; drop the loggers (its results are in the run "
            "directory).",
            param="log_to",
        )
    check_loggers(names)
    return apply_overrides(cfg, {"train.loggers": names})
