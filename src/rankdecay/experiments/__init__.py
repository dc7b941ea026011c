"""Named experiments and their presets.

Each experiment lives in its own module here and defines ``EXPERIMENT = Experiment(...)``:

- ``config_cls``: a dataclass config (see :mod:`rankdecay.config`) with a top-level ``seed: int``;
- ``presets``: preset name → dotted-key overrides applied to the defaults (``quick`` and ``paper``
  at least);
- ``run(cfg, run_dir, *, resume=False, progress=True) -> dict``: performs one run, writing the run
  directory described in :mod:`rankdecay.runio`, and returns the summary dict (``summary.json``),
  whose ``verdict`` rows the CLI prints as a table;
- ``grids``: preset → default sweep grid (dotted key → values), ``seeds``: preset → seeds per point.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import apply_overrides
from ..errors import RankdecayError

__all__ = ["Experiment", "get_experiment", "list_experiments", "EXPERIMENT_MODULES"]

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
class Experiment:
    name: str
    description: str
    config_cls: type
    run: Callable[..., dict[str, Any]]
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    grids: Mapping[str, Mapping[str, Sequence[Any]]] = field(default_factory=dict)
    seeds: Mapping[str, int] = field(default_factory=dict)
    #: which REPRODUCTIONS.md row this reproduces, e.g. "R3"
    reproduces: str = ""

    def config(self, preset: str = "quick", overrides: Any = (), seed: int | None = None) -> Any:
        """Defaults → preset → overrides → seed."""
        if preset not in self.presets:
            raise RankdecayError(
                f"experiment '{self.name}' has no preset '{preset}'; choose one of "
                f"{', '.join(self.presets)}."
            )
        cfg = apply_overrides(self.config_cls(), dict(self.presets[preset]))
        cfg = apply_overrides(cfg, overrides)
        if seed is not None:
            cfg = apply_overrides(cfg, {"seed": seed})
        return cfg

    def __call__(self, cfg: Any, run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
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
        raise RankdecayError(
            f"unknown experiment '{name}'; choose one of {', '.join(available)} "
            "(`rankdecay list` describes them)."
        )
    module = importlib.import_module(f"{__name__}.{available[name]}")
    return module.EXPERIMENT
