"""``analyze(path)`` without building the model: attention tensors streamed layer by layer.

For a Hugging Face model directory the attention modules are found from ``config.json`` and the
tensor *names* (``heads.plan_from_checkpoint``) and, where transformers knows the model type,
from the model class of ``config.json`` built on the meta device (:mod:`rankdecay.meta_plan`:
nothing allocated, no download, no remote code; its modules planned by the in-memory rules, each
plan used only if the checkpoint holds every tensor it reads in the module's shape). The meta
model's plan replaces the name-based one of a model type without a table row (generic keys are
a guess: head counts, scale) and of a row's module whose name-based plan does not split, and
covers modules no name-based plan reads; a row's plan that splits is kept. Modules are then
ordered and named as the model registers them. Every plan is dry-run on meta tensors of the
header shapes (so a config that does not fit its files fails before any data is read or memory
allocated), and then, for one attention module at a time:

    read its q/k/v/o tensors (memory-mapped, any of float32/bf16/fp16/fp64)
      → per-head factors (``heads.layer_heads_from_tensors``, the live-module rules; an MLA
        layer of DeepSeek-V2/V3 by ``mla.mla_heads_from_tensors``, its chains only)
      → singular values and metrics in float64 (``spectral_report._spectra_records``)

while a background thread already pages in the next module's tensors (one layer ahead). Peak
memory is therefore about two layers' attention tensors plus the float64 work of one layer,
independent of depth; the rest of the checkpoint (embeddings, MLPs) is never read.

Leaves the model to be built in memory (:func:`analyze_directory` returns None; ``analyze`` then
calls ``analyze.load_model``, with a warning here naming why) when no plan covers the
checkpoint's architecture, when no module of a model type without a table row splits as its
config.json was read and no meta model resolves it (a module that does not split is left out
and named in a warning, the rest streams; the model's own loading knows its layout — for a family
with a row the same misfit is a config/weights mismatch, an error), and for ``fold_norm`` (the
norm gains are part of the model, not of the plan). Modules that look like attention and that no
plan reads are named in an ``UnrecognizedAttentionWarning``, never left out in silence. Our own
run directories (``config.json`` with ``experiment``/``config`` +
``checkpoint/model.safetensors``) are read by building the run's TinyTransformer on the meta
device and assigning the checkpoint's tensors (no random initialisation, no task data).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .attention_spec import (
    FUSED_NAMES,
    GENERIC,
    LINEAR_WRAPPERS,
    Q_NAMES,
    _pos_int,
    _sub_config,
    cfg_get,
    is_unloaded_mtp_layer,
)
from .checkpoint import (
    FLOAT_DTYPES,
    CheckpointIndex,
    CorruptCheckpointError,
    exception_reason,
    fp8_block_size,
    quantized_weight_error,
    read_model_config,
)
from .errors import RankdecayError
from .heads import (
    LayerHeads,
    UnrecognizedAttentionWarning,
    UnsupportedModelError,
    layer_heads_from_tensors,
    plan_from_checkpoint,
)
from .meta_plan import Chosen, MetaPlans, build_meta_model, combine, meta_plans
from .progress import ProgressBar
from .spectral_report import SpectralReport, _model_info, _spectra_records

__all__ = ["StreamingFallbackWarning", "analyze_directory", "is_run_directory"]

#: config keys that give a model's number of layers (the first present one is checked)
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
#: config keys that give a model's hidden size (checked against W_Q's input width)
WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")


class StreamingFallbackWarning(UserWarning):
    """``analyze(path)`` could not stream the checkpoint and builds the whole model instead."""


# ---------------------------------------------------------------------------------------------
# Dry run on meta tensors: every plan checked against the headers before any data is read
# ---------------------------------------------------------------------------------------------


@dataclass
class _Planned:
    plan: Any
    names: tuple[str, ...]  # tensors the plan reads, in first-use order
    meta: LayerHeads  # the plan's factors as meta tensors (shapes, dtypes, flags, notes)
    label: str | None = None  # the module's name in the model (None: the plan's, renamed)
    from_meta: bool = False  # planned from the model built on the meta device (meta_plan)


def _dry_run(
    plans: Sequence[Any], index: CheckpointIndex, misfits: list[str] | None = None
) -> list[_Planned]:
    """Each plan applied to meta tensors of the header shapes: the names it reads, and its
    factors' shapes; any tensor missing, non-float or of a width the plan cannot split ends here
    in one sentence, before any tensor data is read — except that a module of a model type
    without a table row, whose config.json the generic keys may misread, is left out and its
    reason appended to ``misfits`` (when given)."""
    out: list[_Planned] = []
    for plan in plans:
        used: list[str] = []

        def get(name: str, used: list[str] = used) -> Tensor:
            spec = index.specs.get(name)
            if spec is None:
                raise CorruptCheckpointError(
                    f"the weights in {index.directory} lack {name!r}, which config.json and the "
                    "other tensor names call for; the checkpoint is incomplete — re-save it with save_pretrained."
                )
            if index.fp8_scale(name) is not None:  # FP8 with per-block scales: read as float32
                index.check_fp8_scale(name)
                used.append(name)
                return torch.empty(spec.shape, dtype=torch.float32, device="meta")
            if spec.dtype not in FLOAT_DTYPES:
                raise quantized_weight_error(name, spec.file, spec.dtype)
            used.append(name)
            return spec.meta()

        try:
            meta = layer_heads_from_tensors(plan, get)
        except CorruptCheckpointError:
            raise
        except (UnsupportedModelError, RuntimeError, ValueError, IndexError) as exc:
            reason = exception_reason(exc).split("; register an adapter")[0]
            if plan.family == GENERIC.family and misfits is not None:  # generic keys: a guess
                misfits.append(reason)
                continue
            raise CorruptCheckpointError(
                f"the attention tensors in {index.directory} do not fit the head counts and sizes "
                f"of its config.json ({reason}); the config and weights belong to different models "
                "— re-save them together with save_pretrained."
            ) from None
        out.append(_Planned(plan, tuple(dict.fromkeys(used)), meta))
    return out


#: sibling modules that Hugging Face models register in this order (encoder before decoder)
_TOWER_ORDER = {"encoder": 0, "decoder": 1}
#: stacks registered after their generic siblings (LXMERT: layer, then x_layers, then r_layers)
_LATE_STACKS = {"x_layers": 0, "r_layers": 1}
#: attention registered before the self-attention of its block (LXMERT's cross-modal layer)
_CROSS_FIRST = {"visual_attention"}
#: top-level towers in the order a ``model_type`` registers them (Gemma4Model / Gemma3nModel:
#: vision, text, then audio; LLaVA-style models: vision, projector, text — not the alphabetical
#: order of their names)
_VISION_FIRST = ("vision_tower", "multi_modal_projector", "language_model")
#: Qwen-VL / GLM-4V-style models: the vision encoder ``visual`` (its config: vision_config), then
#: the text model
_VISUAL_FIRST_TYPES = (
    "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "glm4v",
    "glm4v_moe", "glm46v", "glm_ocr", "glm_image", "exaone4_5", "cosmos3_omni",
)  # fmt: skip
TOWERS_BY_MODEL_TYPE = {
    "gemma4": ("vision_tower", "language_model", "audio_tower"),
    "gemma3n": ("vision_tower", "language_model", "audio_tower"),
    **dict.fromkeys(("llava", "llava_next", "mistral3", "paligemma", "gemma3"), _VISION_FIRST),
    **dict.fromkeys(_VISUAL_FIRST_TYPES, ("visual", "language_model")),
}


def _module_order(plans: Sequence[Any], towers: Sequence[str] = ()) -> list[Any]:
    """Plans in the order a model registers its modules, as far as names tell: path components
    compared with numbers as numbers, ``encoder`` before ``decoder``, and within one block the
    self-attention before the cross-attention (BART's ``self_attn`` before ``encoder_attn``);
    top-level ``towers`` (:data:`TOWERS_BY_MODEL_TYPE`) first, in their order; ``layer``
    renumbered to match, so a streamed report lists layers as the in-memory one does."""
    return _renumbered(sorted(plans, key=lambda plan: _order_key(str(plan.name), plan, towers)))


def _renumbered(ordered: list[Any]) -> list[Any]:
    """``layer`` of each plan set to its position."""
    if all(hasattr(p, "layer") and dataclasses.is_dataclass(p) for p in ordered):
        ordered = [dataclasses.replace(p, layer=i) for i, p in enumerate(ordered)]
    return ordered


def _order_key(name: str, plan: Any, towers: Sequence[str]) -> tuple[Any, ...]:
    """The sort key of :func:`_module_order` for the module ``name``."""

    def token(part: str) -> tuple[int, int, str]:
        if part.isdigit():
            return (1, int(part), "")
        if part in _TOWER_ORDER:
            return (0, _TOWER_ORDER[part], "")
        if part in _LATE_STACKS:
            return (3, _LATE_STACKS[part], "")
        return (2, 0, part)

    parts = name.split(".")
    cross = 1 if getattr(plan, "kind", "self") == "cross" else 0
    cross = -1 if parts[-1] in _CROSS_FIRST else cross
    at = 1 if parts[0] == "model" and len(parts) > 2 and parts[1] in towers else 0
    tower = [(-1, list(towers).index(parts[at]), "")] if parts[at] in towers else []
    rest = parts[at + 1 : -1] if tower else parts[:-1]  # (a *ForConditionalGeneration: model.)
    return (*tower, *[token(p) for p in rest], (cross, 0, parts[-1]))


def _chosen_plans(
    directory: Path, config: Mapping[str, Any], index: CheckpointIndex
) -> tuple[list[Chosen], MetaPlans | None]:
    """The plans to stream, in the model's order, and the meta model's plans (None when
    transformers cannot build the model): the name-based plans merged with those of the model
    built on the meta device (:func:`rankdecay.meta_plan.combine`); ordered by the meta model's
    registration order when every module is found there, else by :func:`_module_order`. A model
    whose config's layer counts exceed the numbered tensor names is used only if the checkpoint
    holds every tensor of its attention (ALBERT: one shared layer group), else names alone."""
    towers = TOWERS_BY_MODEL_TYPE.get(str(config.get("model_type", "")), ())
    named = plan_from_checkpoint(config, list(index.specs))
    built = build_meta_model(directory, config, index)
    shapes = {n: tuple(spec.shape) for n, spec in index.specs.items()}
    meta: MetaPlans | None = None
    if built is not None:
        meta = meta_plans(built[0], shapes)
        if not built[1] and (meta.absent or not meta.plans):  # layer counts beyond the names
            meta = None  # and tensors missing: the config does not belong to the weights
    if meta is None:
        return [Chosen(p, None, False) for p in _module_order(named, towers)], None
    chosen = combine(named, meta, shapes)
    if all(c.module in meta.order for c in chosen):  # (a module shared under two names: once)
        chosen.sort(key=lambda c: meta.order[str(c.module)])
    else:
        chosen.sort(key=lambda c: _order_key(str(c.plan.name), c.plan, towers))
    kept = [c for c in chosen if not c.dropped]  # (the dropped are named, not numbered)
    plans = _renumbered([c.plan for c in kept])
    kept = [dataclasses.replace(c, plan=p) for c, p in zip(kept, plans)]
    return [*kept, *(c for c in chosen if c.dropped)], meta


#: projections only latent/low-rank attention has (MLA of a model type the plan does not cover)
MLA_MARKERS = ("kv_a_proj_with_mqa", "q_a_proj")


def _unplanned_attention(
    index: CheckpointIndex, planned: Sequence[_Planned], config: Mapping[str, Any]
) -> list[str]:
    """Modules with a query-like, fused-qkv or MLA tensor (``P.<q_proj|query|qkv|c_attn|
    kv_a_proj_with_mqa|…>.weight``) that no plan reads: attention the name-based plan missed."""
    used = {n for p in planned for n in p.names}
    q_like = set(Q_NAMES) | set(FUSED_NAMES) | set(MLA_MARKERS)
    wrappers = {*LINEAR_WRAPPERS, "base_layer"}  # P.q_proj.linear.weight (Gemma-4), PEFT's
    modules = set()
    for name in index.specs:
        parts = name.split(".")
        if parts[-1] != "weight" or name in used:
            continue
        end = len(parts) - 1
        while end > 1 and parts[end - 1] in wrappers:
            end -= 1
        if end >= 1 and parts[end - 1] in q_like:
            modules.add(".".join(parts[: end - 1]))
    for name in index.specs:  # torch.nn.MultiheadAttention's fused P.in_proj_weight
        if name.endswith(".in_proj_weight") and name not in used:
            modules.add(name.rsplit(".", 1)[0])
    return sorted(m for m in modules if not is_unloaded_mtp_layer(config, m))


def _check_config_fits(
    config: Mapping[str, Any],
    planned: Sequence[_Planned],
    directory: Path,
    unplanned: int = 0,
    meta: MetaPlans | None = None,
) -> None:
    """A config declaring more layers than the files hold attention for, or a width no attention
    module has, is refused (the config and the weights do not belong together). ``unplanned``:
    attention modules in the files that no plan reads (already named in a warning; e.g. a tower
    whose config.json the generic keys misread), counted as held. With the model built on the
    meta device (``meta``) the layers are its attention modules, not ``num_hidden_layers`` (a
    hybrid such as Jamba or Zamba has attention in some layers only; the model's layer count was
    checked against the tensor names before it was built)."""
    declared = _pos_int(cfg_get(config, *LAYER_COUNT_KEYS))
    what = "layers"
    if meta is not None:
        declared, what = len(meta.plans) + len(meta.unplanned), "attention modules"
    if declared is not None and declared > len(planned) + unplanned:
        raise CorruptCheckpointError(
            f"{directory / 'config.json'} declares {declared} {what} but the weights hold attention "
            f"tensors for {len(planned)}; the config or the shards do not belong together — restore "
            "the missing shards or fix the config."
        )
    # each tower against its own config (a multi-tower config's top-level size may be a stale
    # default: PaliGemma's hidden_size 2048 whatever its text tower's width)
    by_width: dict[int | None, set[int]] = {}
    for p in planned:  # (a meta model's plan fits the config: its shapes were checked)
        if p.from_meta:
            continue
        width = _pos_int(cfg_get(_sub_config(config, str(p.plan.name)), *WIDTH_KEYS))
        by_width.setdefault(width, set()).add(int(p.meta.W_Q.shape[1]))
    for width, widths in by_width.items():
        if width is not None and width not in widths:
            raise CorruptCheckpointError(
                f"{directory / 'config.json'} declares a hidden size of {width} but the attention "
                f"tensors are {sorted(widths)[0]} wide; the config and weights belong to different "
                "models — fix the config or re-save the model with save_pretrained."
            )


# ---------------------------------------------------------------------------------------------
# Streaming with one-layer-ahead prefetch
# ---------------------------------------------------------------------------------------------


def _page_in(tensors: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """Touch one byte per 4 KiB page so the mapped tensors are read from disk now (in the
    prefetch thread) rather than at first use by the spectra."""
    for t in tensors.values():
        flat = t.reshape(-1).view(torch.uint8) if t.is_contiguous() else None
        if flat is not None and flat.numel():
            flat[::4096].sum()
    return tensors


def _stream_records(
    planned: Sequence[_Planned],
    index: CheckpointIndex,
    circuits: tuple[str, ...],
    rtol: float,
    progress: bool,
) -> list[dict[str, Any]]:
    def read(i: int) -> Mapping[str, Tensor]:
        return _page_in(index.read_dequantized(planned[i].names))

    bar = ProgressBar(progress, len(planned), "attention layers (streamed)", transient=True)
    records: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rankdecay-prefetch") as pool:
        ahead: Future[Mapping[str, Tensor]] | None = pool.submit(read, 0) if planned else None
        try:
            for i, item in enumerate(planned):
                assert ahead is not None
                tensors = ahead.result()
                ahead = pool.submit(read, i + 1) if i + 1 < len(planned) else None
                # the spectra of chains (MLA) need no materialized W_Q, W_K, W_V
                lh = layer_heads_from_tensors(item.plan, tensors.__getitem__, materialize=False)
                lh = dataclasses.replace(lh, name=item.meta.name)  # the report's module name
                with torch.no_grad():
                    records.extend(_spectra_records([lh], circuits, rtol, False))
                del lh, tensors
                bar.update(advance=1)
        finally:
            if ahead is not None:
                ahead.cancel()
            bar.close()
    return records


def analyze_directory(
    directory: Path,
    source: str,
    rtol: float,
    circuits: tuple[str, ...],
    fold_norm: bool,
    progress: bool | None,
    rename: Callable[[str], str] | None = None,
) -> SpectralReport | None:
    """Spectral report of a model directory (see the module docstring); ``analyze`` calls this.
    ``rename`` maps a module's checkpoint name to the loaded model's (``analyze._loaded_names``)
    where the model built on the meta device does not name it.

    Returns None when the model is to be analysed in memory instead: a rankdecay run directory
    (``analyze.load_model`` builds its TinyTransformer), or an architecture the plans do not
    cover (a :class:`StreamingFallbackWarning` says why) or ``fold_norm``.
    """
    if is_run_directory(directory):
        return None
    config = read_model_config(directory)
    index = CheckpointIndex.open(directory)
    index.fp8_block = fp8_block_size(config)
    how = "name-based attention plan (heads.plan_from_checkpoint)"
    reason = None
    chosen: list[Chosen] = []
    dropped: list[str] = []
    meta: MetaPlans | None = None
    if fold_norm:
        reason = "fold_norm needs the norm layers, which the name-based plan does not read"
    else:
        try:
            chosen, meta = _chosen_plans(directory, config, index)
        except UnsupportedModelError as exc:
            reason = str(exc)
        dropped = [c.module or str(c.plan.name) for c in chosen if c.dropped]
        chosen = [c for c in chosen if not c.dropped]
        if not chosen and reason is None:
            model_type = config.get("model_type", "?")
            reason = f"the attention of model_type {model_type!r} is not covered by the {how}"
    if meta is not None:  # its plans, names and order (or its module count) were used
        how += " and the model built on the meta device (meta_plan)"
    planned: list[_Planned] = []
    misfits: list[str] = []
    if reason is None:
        by_plan = {id(c.plan): c for c in chosen}
        planned = _dry_run([c.plan for c in chosen], index, misfits)
        for p in planned:
            c = by_plan[id(p.plan)]
            p.label, p.from_meta = c.module, c.from_meta
        if misfits and not planned:  # the model's own loading knows its layout
            reason = (
                f"its attention does not split as the name-based plan reads config.json "
                f"({misfits[0]}; its model_type is not in rankdecay's table)"
            )
    if reason is not None:  # fold_norm included: the user asked for it, not for the memory
        warnings.warn(
            f"{directory}: {reason}; building the whole model in memory instead "
            f"(about {index.total_numel * 4 / 2**30:.1f} GiB in float32).",
            StreamingFallbackWarning,
            stacklevel=3,
        )
        return None
    missed = _missed(index, planned, config, [*misfits, *dropped], meta)
    if missed:
        same = (
            f" ({len(dropped)} of them, e.g. {dropped[0]}, analyze(model) does not extract either: "
            "a rule refuses them, such as attention without a softmax q·kᵀ circuit)"
            if dropped
            else ""
        )
        warnings.warn(
            f"{directory}: {len(missed)} attention-like module(s) are not covered by the streaming "
            f"plan and are missing from the report (e.g. {missed[0]}){same}; to see them, analyse "
            "the model in memory with rankdecay.analyze(rankdecay.load_model(DIR)) or register an adapter.",
            UnrecognizedAttentionWarning,
            stacklevel=3,
        )
    # a meta module whose tensors the checkpoint lacks is named, but not counted as held
    absent = [m for m in (meta.absent if meta is not None else ()) if m in missed]
    _check_config_fits(config, planned, directory, len(missed) - len(absent), meta)
    for p in planned:  # the loaded model's module names (plans keep the tensor names)
        name = p.label or (rename(p.plan.name) if rename is not None else p.plan.name)
        p.meta = dataclasses.replace(p.meta, name=name)
    show = progress if progress is not None else (len(planned) >= 4 and sys.stderr.isatty())
    records = _stream_records(planned, index, circuits, rtol, bool(show))
    layers = [p.meta for p in planned]
    archs = config.get("architectures")
    model_class = (
        str(archs[0]) if isinstance(archs, list) and archs else str(config.get("model_type", "?"))
    )
    info = _model_info(model_class, layers, f"streamed: {how}", source, rtol, circuits, fold_norm)
    info["streamed"] = True
    return SpectralReport(records=records, model=info)


def _missed(
    index: CheckpointIndex,
    planned: Sequence[_Planned],
    config: Mapping[str, Any],
    misfits: Sequence[str],
    meta: MetaPlans | None,
) -> list[str]:
    """Attention-like modules no streamed plan reads: misfits (and modules ``analyze(model)``
    does not extract, which a name-based plan would have streamed), modules with unread query-like
    tensors (:func:`_unplanned_attention`), and modules of the meta model that a rule of the
    in-memory scan claims but no plan here covers (by module or checkpoint name)."""
    unplanned = _unplanned_attention(index, planned, config)  # the misfits' tensors are unread
    missed = {m.split(":")[0] for m in misfits} | set(unplanned)
    if meta is not None:  # covered: by module name, or the checkpoint's (a prefix apart)
        covered = {str(n) for p in planned for n in (p.label, p.plan.name) if n}

        def held(m: str) -> bool:
            return any(m == c or m.endswith("." + c) or c.endswith("." + m) for c in covered)

        missed |= {m for m in meta.unplanned if not held(m) and m not in missed}
    return sorted(missed)


# ---------------------------------------------------------------------------------------------
# Our own run directories
# ---------------------------------------------------------------------------------------------


def _run_meta(directory: Path) -> dict[str, Any] | None:
    from .checkpoint import read_json_file

    path = directory / "config.json"
    try:
        meta = read_json_file(path, "run config")
    except RankdecayError:
        return None
    if isinstance(meta, dict) and "experiment" in meta and isinstance(meta.get("config"), dict):
        return meta
    return None


def is_run_directory(directory: Path) -> bool:
    """A rankdecay run directory: config.json with ``experiment`` and ``config`` keys."""
    return _run_meta(directory) is not None


def load_run_model(directory: Path) -> nn.Module:
    """The TinyTransformer of a run directory with its checkpoint's weights.

    Built on the meta device from the run's model config (sizes the task fills — vocabulary,
    outputs, sequence length, image geometry — are taken from the checkpoint's tensor shapes, and
    the layer count is checked against the tensors before anything is built), then the
    checkpoint's tensors are assigned: nothing is randomly initialised and no task data is read.
    """
    from .checkpoint import read_safetensors_header
    from .models import ModelConfig, TinyTransformer

    meta = _run_meta(directory)
    assert meta is not None
    weights = directory / "checkpoint" / "model.safetensors"
    model_section = meta["config"].get("model")
    if not isinstance(model_section, dict):
        raise UnsupportedModelError(
            f"{directory} is a run of the {meta.get('experiment')!r} experiment, which trains no "
            "transformer; analyse a run of recall, grokking, lm or vit."
        )
    if not os.path.lexists(weights):
        raise CorruptCheckpointError(
            f"{directory} has no checkpoint/model.safetensors yet; wait for the run's first "
            "checkpoint (train.checkpoint_every) or resume the run.",
            param="resume",
        )
    specs = read_safetensors_header(weights)
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    try:
        cfg = ModelConfig(**{k: v for k, v in model_section.items() if k in names})
    except TypeError as exc:
        raise CorruptCheckpointError(
            f"{directory / 'config.json'} has a model section that does not fit this rankdecay "
            f"({exc}); analyse it with the rankdecay version that wrote it."
        ) from None
    blocks = {int(m[1]) for n in specs if (m := re.match(r"^blocks\.(\d+)\.", n))}
    if not isinstance(cfg.n_layers, int) or cfg.n_layers != len(blocks):
        raise CorruptCheckpointError(
            f"{directory / 'config.json'} declares {cfg.n_layers} layers but its checkpoint holds "
            f"{len(blocks)}; the run directory is damaged — restore config.json or the checkpoint."
        )

    def rows(name: str) -> int | None:
        spec = specs.get(name)
        return spec.shape[0] if spec is not None and spec.shape else None

    fill: dict[str, Any] = {}
    if cfg.patch_size > 0:
        pe = specs.get("patch_embed.weight")
        if pe is not None and len(pe.shape) == 2:
            fill["in_channels"] = max(1, pe.shape[1] // cfg.patch_size**2)
        n_pos = rows("pos_embed.weight")
        n_patches = (n_pos - (cfg.pool == "cls")) if n_pos else 1
        fill["image_size"] = cfg.patch_size * max(1, math.isqrt(max(1, n_patches)))
    else:
        fill["vocab_size"] = rows("embed.weight") or max(cfg.vocab_size, 1)
        if cfg.pos == "learned":
            fill["max_len"] = rows("pos_embed.weight") or cfg.max_len
    fill["n_out"] = rows("unembed.weight") or cfg.n_out or fill.get("vocab_size") or 1
    cfg = dataclasses.replace(cfg, **fill)
    try:
        with torch.device("meta"):
            model = TinyTransformer(cfg)
    except RankdecayError as exc:
        raise CorruptCheckpointError(
            f"{directory / 'config.json'} describes no valid model ({exc}); restore the run's config.json."
        ) from None
    index = CheckpointIndex(directory / "checkpoint", specs, "safetensors")
    state = index.read([n for n in specs if n in dict(model.named_parameters())])
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        reason = exception_reason(exc, last=True)
        raise CorruptCheckpointError(
            f"the checkpoint of {directory} does not fit its config.json ({reason}); the run "
            "directory is damaged — restore it or start a new run."
        ) from None
    return model.eval()
