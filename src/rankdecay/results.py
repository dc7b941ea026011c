"""Read runs and sweeps back: ``load_run(dir)`` and ``load_sweep(dir) -> pandas.DataFrame``.

The readers only rely on the run-directory format of :mod:`rankdecay.runio` and the sweep index of
:mod:`rankdecay.sweep`, so they work on runs of any experiment (and on runs still in progress:
torn JSONL lines are ignored).

Columns of :func:`load_sweep` (one row per run):

- ``run``, ``run_dir``, ``status``, ``error``, ``wall_s``, ``seed``;
- every config key, flattened with dots exactly as ``--set``/``--grid`` spell it
  (``optim.lr``, ``weight_decay_attn``, ...);
- ``final.<name>``: the scalar entries of ``summary.json["final"]`` (nested dicts flattened);
- ``spectra.<circuit>.<metric>``: the mean over layers and heads, at the last logged step, of
  each spectral metric in ``spectra.jsonl`` (circuit ``qk`` / ``ov``; per-matrix records appear
  as ``spectra.w_q.<metric>`` / ``spectra.w_k.<metric>``), e.g. ``spectra.qk.rank``,
  ``spectra.ov.effective_rank``, ``spectra.qk.stable_rank``; ``spectra.step`` is that step;
- ``verdict.met`` / ``verdict.total``: how many verdict rows with a target were met.

``df.attrs`` holds ``experiment``, ``preset``, ``grid`` (the swept keys) and ``seeds``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MissingExtraError, RankdecayFileNotFoundError, RankdecayValueError
from .runio import read_json, read_jsonl

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["Run", "final_spectra", "flatten_dict", "is_run_dir", "load_run", "load_sweep"]

#: spectral metrics summarized per circuit (anything numeric in a record is kept)
_ID_KEYS = {
    "step", "kind", "layer", "name", "head", "kv_head", "circuit", "matrix", "singular_values",
    "rtol",
}  # fmt: skip


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise MissingExtraError(
            "reading results as a DataFrame needs pandas; install it with "
            "`pip install 'rankdecay[plot]'`."
        ) from None
    return pandas


def flatten_dict(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(flatten_dict(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() or (path / "summary.json").is_file()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass
class Run:
    """One run directory, read back.

    ``metrics`` and ``spectra`` are lists of the JSONL rows (use :meth:`metrics_frame` /
    :meth:`spectra_frame` for DataFrames).
    """

    path: Path
    meta: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    spectra: list[dict[str, Any]]
    #: what is missing from the history (damaged lines, steps without rows); empty when whole
    gaps: list[str] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.meta.get("config") or {})

    @property
    def flat_config(self) -> dict[str, Any]:
        return flatten_dict(self.config)

    @property
    def experiment(self) -> str | None:
        return self.meta.get("experiment")

    @property
    def seed(self) -> int | None:
        seed = self.meta.get("seed", self.config.get("seed"))
        return int(seed) if seed is not None else None

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "missing")) if self.summary else "missing"

    @property
    def final(self) -> dict[str, Any]:
        return dict(self.summary.get("final") or {})

    @property
    def verdict(self) -> list[dict[str, Any]]:
        return list(self.summary.get("verdict") or [])

    def metrics_frame(self) -> pd.DataFrame:
        return _pandas().DataFrame(self.metrics)

    def spectra_frame(self) -> pd.DataFrame:
        return _pandas().DataFrame(self.spectra)

    def series(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of a metric over the run, skipping rows where it was not logged."""
        return [(int(r["step"]), float(r[key])) for r in self.metrics if _is_number(r.get(key))]

    def row(self) -> dict[str, Any]:
        """This run as one flat row (the columns documented in the module docstring)."""
        out: dict[str, Any] = {
            "run": self.name,
            "run_dir": str(self.path),
            "status": self.status,
            "error": self.summary.get("error"),
            "seed": self.seed,
        }
        out.update(self.flat_config)
        for key, value in flatten_dict(self.final).items():
            if _is_number(value) or value is None:
                out[f"final.{key}"] = value
        out.update(final_spectra(self.spectra))
        targets = [v for v in self.verdict if v.get("met") is not None]
        out["verdict.met"] = sum(bool(v.get("met")) for v in targets)
        out["verdict.total"] = len(targets)
        return out


def load_run(path: str | Path) -> Run:
    """Read a run directory (config.json, summary.json, metrics.jsonl, spectra.jsonl)."""
    path = Path(path)
    if not path.is_dir():
        raise RankdecayFileNotFoundError(f"run directory {path} does not exist; check the path.")
    if not is_run_dir(path):
        raise RankdecayValueError(
            f"{path} is not a run directory (no config.json or summary.json); point to a directory "
            "written by `rankdecay run` or `rankdecay sweep`."
        )
    fix = "restore it from a backup or remove the run from the report"
    meta = (
        read_json(path / "config.json", "run config", dict, fix)
        if (path / "config.json").exists()
        else {}
    )
    summary = (
        read_json(path / "summary.json", "run summary", dict, fix)
        if (path / "summary.json").exists()
        else {}
    )
    for name, data, keys in (
        ("config.json", meta, (("config", dict), ("experiment", str), ("preset", str))),
        ("summary.json", summary, _SUMMARY_TYPES),
    ):
        for key, kind in keys:
            if data.get(key) is not None and not isinstance(data[key], kind):
                raise RankdecayValueError(
                    f"{path / name} has a {key!r} of the wrong type ({type(data[key]).__name__}); "
                    f"it is damaged — {fix}."
                )
    if not all(isinstance(v, dict) for v in summary.get("verdict") or []):
        raise RankdecayValueError(f"{path / 'summary.json'} has a damaged verdict; {fix}.")
    from .runfiles import history_gaps

    return Run(
        path=path,
        meta=meta,
        summary=summary,
        metrics=list(read_jsonl(path / "metrics.jsonl", need_step=True)),
        spectra=list(read_jsonl(path / "spectra.jsonl", need_step=True)),
        gaps=history_gaps(path),
    )


_SUMMARY_TYPES = (
    ("status", str),
    ("final", dict),
    ("verdict", list),
    ("step", int),
    ("error", str),
)


def _record_group(rec: Mapping[str, Any]) -> str | None:
    if rec.get("kind", "circuit") == "matrix" or ("matrix" in rec and "circuit" not in rec):
        return str(rec.get("matrix", "matrix")).lower()
    circuit = rec.get("circuit")
    return str(circuit).lower() if circuit is not None else None


def final_spectra(records: list[dict[str, Any]], step: int | None = None) -> dict[str, Any]:
    """``spectra.<circuit>.<metric>``: mean over layers and heads at ``step`` (default: the last).

    Means ignore non-finite values; ``spectra.step`` is the step used.
    """
    steps = [int(r["step"]) for r in records if "step" in r]
    if not steps:
        return {}
    step = max(steps) if step is None else step
    sums: dict[str, list[float]] = {}
    for rec in records:
        if rec.get("step") != step:
            continue
        group = _record_group(rec)
        if group is None:
            continue
        for key, value in rec.items():
            if key in _ID_KEYS or not _is_number(value) or not math.isfinite(value):
                continue
            sums.setdefault(f"spectra.{group}.{key}", []).append(float(value))
    out: dict[str, Any] = {"spectra.step": step}
    out.update({k: sum(v) / len(v) for k, v in sums.items()})
    return out


def _index_rows(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    index = read_json(path / "sweep.json", "sweep index")
    if not isinstance(index, dict) or not sweep_rows_valid(index.get("runs")):
        raise RankdecayValueError(
            f"{path / 'sweep.json'} is not a rankdecay sweep index (or it is damaged); check the "
            "path or restore the file from a backup."
        )
    return index["runs"], index


def sweep_rows_valid(runs: Any) -> bool:
    """``sweep.json["runs"]`` is a list of objects, each with a string ``name`` and ``run_dir``."""
    return isinstance(runs, list) and all(
        isinstance(r, dict) and isinstance(r.get("name"), str) and isinstance(r.get("run_dir"), str)
        for r in runs
    )


def load_sweep(path: str | Path) -> pd.DataFrame:
    """One row per run of the sweep in ``path`` (columns: see the module docstring).

    ``path`` may also be a single run directory (one row) or a directory whose subdirectories
    are runs (e.g. several ``rankdecay run --out DIR/...``).
    """
    pd = _pandas()
    path = Path(path)
    if not path.is_dir():
        raise RankdecayFileNotFoundError(
            f"{path} does not exist; check the path to the sweep directory."
        )
    attrs: dict[str, Any] = {"experiment": None, "preset": None, "grid": [], "seeds": []}
    rows: list[dict[str, Any]] = []
    if (path / "sweep.json").exists():
        entries, index = _index_rows(path)
        attrs.update(
            experiment=index.get("experiment"),
            preset=index.get("preset"),
            grid=list(index.get("grid") or {}),
            seeds=list(index.get("seeds") or []),
        )
        for entry in entries:
            run_dir = path / str(entry.get("run_dir", entry.get("name", "")))
            row: dict[str, Any] = {}
            if is_run_dir(run_dir):
                row = load_run(run_dir).row()
            row.update(
                run=entry.get("name", run_dir.name),
                run_dir=str(run_dir),
                status=entry.get("status", row.get("status")),
                error=entry.get("error") or row.get("error"),
                wall_s=entry.get("wall_s"),
                seed=entry.get("seed", row.get("seed")),
            )
            for key, value in (entry.get("point") or {}).items():
                row[key] = value
            rows.append(row)
    elif is_run_dir(path):
        run = load_run(path)
        rows.append(run.row())
        attrs.update(experiment=run.experiment, preset=run.meta.get("preset"))
    else:
        runs = sorted(p for p in path.iterdir() if p.is_dir() and is_run_dir(p))
        if not runs:
            raise RankdecayValueError(
                f"{path} holds no sweep.json and no run directories; point to a sweep or a run."
            )
        loaded = [load_run(p) for p in runs]
        rows = [r.row() for r in loaded]
        attrs.update(experiment=loaded[0].experiment, preset=loaded[0].meta.get("preset"))
        attrs["grid"] = _varying_keys(rows)
    df = pd.DataFrame(rows)
    first = ["run", "status", "seed", *attrs["grid"]]
    df = df[[c for c in first if c in df.columns] + [c for c in df.columns if c not in first]]
    df.attrs.update(attrs)
    return df


def _varying_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Config keys (not seed) whose value differs between runs: the implicit grid."""
    skip = {"run", "run_dir", "status", "error", "seed", "wall_s"}
    keys: list[str] = []
    for key in rows[0] if rows else []:
        if key in skip or key.startswith(("final.", "spectra.", "verdict.")):
            continue
        values = {repr(r.get(key)) for r in rows}
        if len(values) > 1:
            keys.append(key)
    return keys
