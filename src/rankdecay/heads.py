"""Per-head attention factors of a model, extracted per attention module.

Conventions (see docs/metrics.md): for head h, W_Q^h, W_K^h, W_V^h ∈ ℝ^{d_model×d_head} map the
residual stream into the head (x ↦ xᵀW) and W_O^h ∈ ℝ^{d_head×d_model} maps it back.

- QK circuit W_QK^h = W_Q^h (W_K^h)ᵀ, factor pair (A, B) = (W_Q^h, W_K^h).
- OV circuit W_OV^h = W_V^h W_O^h,    factor pair (A, B) = (W_V^h, (W_O^h)ᵀ).

Biases are not part of the circuits. Weights are raw by default; every transform (e.g. folding a
norm's gain) is opt-in and named.

Extractors must build the per-head tensors from the parameters with differentiable reshapes,
slices, gathers and transposes only (no ``.detach()``/``.data``), so that autograd can map a
per-head quantity back onto the parameters (``LowRankDecay(granularity="product")`` relies on
this). Callers that only read spectra wrap the call in ``torch.no_grad()``.

:func:`attention_heads` walks the model (wrappers and several towers included; all names fully
qualified relative to the model passed in) and takes each module by the first rule that knows it
(:func:`scan_attention`): a ``rankdecay_attention_heads(**options)`` method (the protocol),
``torch.nn.MultiheadAttention``, multi-head latent attention (:mod:`rankdecay.mla`), or an
:class:`~rankdecay.attention_spec.AttentionPlan` built from the module by the name table and
split specs of :mod:`rankdecay.attention_spec` — the same plans :func:`plan_from_checkpoint`
builds from a checkpoint's tensor names, cut by the one :func:`layer_heads_from_tensors`.
PEFT LoRA layers resolve to their effective weights W + s·B·A. A registered adapter
(:func:`register_adapter`) that accepts the model replaces the scan. Modules that look like
attention and are not extracted are named in an :class:`UnrecognizedAttentionWarning`
(``strict=True``: :class:`UnsupportedModelError`).

``fold_norm=True`` (off by default): if the attention input is x̃ = γ ⊙ x̂ + β (the output of a
LayerNorm/RMSNorm with gain γ), then x̃ᵀW = x̂ᵀ diag(γ) W + βᵀW, so the adapter replaces
W_Q, W_K, W_V by diag(γ)·W (the bias term is dropped, as biases always are). The norm used is
the one that feeds the attention: the block's own pre-norm (``ln_1``, ``input_layernorm``,
``layernorm_before``, ``norm1`` with ``norm_first``) or, for post-norm BERT, the previous block's
``output.LayerNorm`` (the embeddings' LayerNorm for the first block). What was folded — or why
nothing was — is recorded in ``LayerHeads.notes``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .attention_spec import (
    ARCHITECTURES,
    CROSS_NAMES,
    FUSED_NAMES,
    K_NAMES,
    Q_NAMES,
    V_NAMES,
    AttentionPlan,
    PlanError,
    finish_notes,
    gqa_note,
    is_lora_layer,
    plan_from_checkpoint,
    plan_from_module,
    split_heads_v,
    tower_config,
)
from .errors import RankdecayTypeError
from .layer_heads import LayerHeads, UnrecognizedAttentionWarning, UnsupportedModelError
from .mla import MLAPlan, mla_heads_from_tensors

__all__ = [
    "AttentionAdapter",
    "AttentionPlan",
    "LayerHeads",
    "Scan",
    "UnrecognizedAttentionWarning",
    "UnsupportedModelError",
    "attention_heads",
    "check_coverage",
    "collect_attention",
    "find_adapter",
    "layer_heads_from_tensors",
    "lora_effective_weight",
    "plan_from_checkpoint",
    "register_adapter",
    "scan_attention",
    "unrecognized_attention",
]


Extractor = Callable[..., list[LayerHeads]]
Predicate = Callable[[nn.Module], bool]


@dataclass
class AttentionAdapter:
    name: str  # family name shown to users, e.g. "Hugging Face GPT-2"
    predicate: Predicate
    extractor: Extractor


_ADAPTERS: list[AttentionAdapter] = []


def register_adapter(predicate: Predicate, extractor: Extractor, name: str | None = None) -> None:
    """Teach rankdecay a new architecture.

    ``predicate(model) -> bool`` says whether the adapter applies; ``extractor(model, **options)``
    returns one :class:`LayerHeads` per attention layer. Adapters registered later take priority
    over earlier ones (so users can override a built-in).
    """
    for what, fn in (("predicate", predicate), ("extractor", extractor)):
        if not callable(fn):
            raise RankdecayTypeError(
                f"register_adapter: the {what} must be a function, got {type(fn).__name__}; "
                "pass predicate(model) -> bool and extractor(model, **options) -> list[LayerHeads]."
            )
    _ADAPTERS.insert(
        0, AttentionAdapter(name or getattr(extractor, "__name__", "custom"), predicate, extractor)
    )


# ---------------------------------------------------------------------------------------------
# Helpers shared by the built-in adapters
# ---------------------------------------------------------------------------------------------


def _join(prefix: str, name: str) -> str:
    if not prefix or not name:
        return prefix or name
    return f"{prefix}.{name}"


def _parent_name(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _norm_gain(norm: nn.Module | None) -> Tensor | None:
    """The elementwise gain γ of a LayerNorm/RMSNorm (x̃ = γ ⊙ x̂ + β), or None if it has none."""
    if norm is None:
        return None
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 1:
        return None
    if type(norm).__name__.startswith("Gemma"):  # Gemma's RMSNorm multiplies by (1 + weight)
        return 1.0 + weight
    return weight


def _fold(W: Tensor, gain: Tensor) -> Tensor:
    """diag(γ)·W for per-head W (H, d, r): x̃ᵀW = x̂ᵀ diag(γ) W when x̃ = γ ⊙ x̂ (+ β)."""
    return W * gain.to(W.dtype)[None, :, None]


@dataclass
class _NormPlan:
    """Which norms precede the query side and the key/value side of one attention layer."""

    query: tuple[str, nn.Module] | None = None
    key_value: tuple[str, nn.Module] | None = None
    why_not: str = ""


def _apply_fold(
    plan: _NormPlan, W_Q: Tensor, W_K: Tensor, W_V: Tensor
) -> tuple[Tensor, Tensor, Tensor, tuple[str, ...]]:
    notes: list[str] = []
    if plan.query is not None and (g := _norm_gain(plan.query[1])) is not None:
        W_Q = _fold(W_Q, g)
        notes.append(f"gain of {plan.query[0]} folded into W_Q")
    if plan.key_value is not None and (g := _norm_gain(plan.key_value[1])) is not None:
        W_K, W_V = _fold(W_K, g), _fold(W_V, g)
        notes.append(f"gain of {plan.key_value[0]} folded into W_K, W_V")
    if (
        len(notes) == 2
        and plan.query is not None
        and plan.key_value is not None
        and plan.query[0] == plan.key_value[0]
    ):
        notes = [f"gain of {plan.query[0]} folded into W_Q, W_K, W_V"]
    if not notes:
        notes.append(
            f"fold_norm: {plan.why_not or 'no preceding norm with a gain found'}; weights left raw"
        )
    return W_Q, W_K, W_V, tuple(notes)


def _pre_norm(
    model: nn.Module, attn_name: str, candidates: tuple[str, ...]
) -> tuple[str, nn.Module] | None:
    """The first of ``candidates`` found as a sibling of the attention module (pre-norm blocks)."""
    parent_name = _parent_name(attn_name)
    parent = _submodule(model, parent_name)
    if parent is None:
        return None
    for candidate in candidates:
        norm = getattr(parent, candidate, None)
        if isinstance(norm, nn.Module) and _norm_gain(norm) is not None:
            return _join(parent_name, candidate), norm
    return None


# ---------------------------------------------------------------------------------------------
# Protocol: models that describe their own heads (e.g. rankdecay's TinyTransformer)
# ---------------------------------------------------------------------------------------------


def _has_protocol(module: nn.Module) -> bool:
    return callable(getattr(module, "rankdecay_attention_heads", None))


def _prefixed(layer: LayerHeads, prefix: str, offset: int) -> LayerHeads:
    return dataclasses.replace(
        layer,
        layer=offset + layer.layer,
        name=_join(prefix, layer.name),
        qk_params=tuple(_join(prefix, n) for n in layer.qk_params),
        ov_params=tuple(_join(prefix, n) for n in layer.ov_params),
        score_params=tuple(_join(prefix, n) for n in layer.score_params),
    )


# ---------------------------------------------------------------------------------------------
# torch.nn.MultiheadAttention (nn.TransformerEncoder / Decoder, and any model containing it)
# ---------------------------------------------------------------------------------------------


def _mha_norm_plan(model: nn.Module, name: str) -> _NormPlan:
    parent = _submodule(model, _parent_name(name))
    attr = name.rsplit(".", 1)[-1]
    pname = _parent_name(name)
    if isinstance(parent, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        if not parent.norm_first:
            return _NormPlan(
                why_not=f"{pname} is post-norm (norm_first=False), its input norm belongs to the previous block"
            )
        if attr == "self_attn":
            entry = (_join(pname, "norm1"), parent.norm1)
            return _NormPlan(query=entry, key_value=entry)
        if attr == "multihead_attn" and isinstance(parent, nn.TransformerDecoderLayer):
            return _NormPlan(
                query=(_join(pname, "norm2"), parent.norm2),
                why_not="keys/values read the encoder memory",
            )
    return _NormPlan(why_not=f"no known norm precedes {name or type(model).__name__}")


def _mha_plan(name: str, mha: nn.MultiheadAttention, layer: int) -> AttentionPlan:
    """``nn.MultiheadAttention``: q = x W_qᵀ with W_q = in_proj_weight[0:E] (fused [3, H, r];
    rows [E:2E] keys, [2E:3E] values) or ``q_proj_weight`` / ``k_proj_weight`` (E, kdim) /
    ``v_proj_weight`` (E, vdim) when kdim/vdim differ from E; out = concat_h(o_h) W_outᵀ."""
    H, r = mha.num_heads, mha.head_dim
    kind = "cross" if name.rsplit(".", 1)[-1] in CROSS_NAMES else "self"
    plan = AttentionPlan(
        name=name,
        layer=layer,
        family="torch.nn.MultiheadAttention",
        o=_join(name, "out_proj.weight"),
        n_heads=H,
        head_dim=r,
        scale=1.0 / math.sqrt(r),
        n_kv_heads=H,
        kind=kind,
        flags={"cross_attention": True} if kind == "cross" else {},
    )
    if mha._qkv_same_embed_dim:
        plan.fused, plan.layout = _join(name, "in_proj_weight"), "qkv"
    else:
        plan.q, plan.k, plan.v = (_join(name, f"{p}_proj_weight") for p in "qkv")
    if mha.kdim != mha.embed_dim or mha.vdim != mha.embed_dim:
        plan.notes += (f"keys/values have width kdim={mha.kdim}, vdim={mha.vdim}",)
    return finish_notes(plan)


# ---------------------------------------------------------------------------------------------
# From a plan to per-head factors: one code path for live modules and checkpoints on disk
# ---------------------------------------------------------------------------------------------


def layer_heads_from_tensors(
    plan: AttentionPlan | MLAPlan, get: Callable[[str], Tensor], *, materialize: bool = True
) -> LayerHeads:
    """The :class:`LayerHeads` of one attention module from its plan and a tensor lookup.

    ``get(name)`` returns the tensor a plan names: a model's parameter (the live path, where
    LoRA layers resolve to their effective weight) or a tensor read from a checkpoint. The split
    rules are :func:`rankdecay.attention_spec.split_heads`, and for an MLA plan (a checkpoint's
    DeepSeek-V2/V3 layer) :func:`rankdecay.mla.mla_heads_from_tensors`, the rule of the live
    MLA modules; widths that do not fit the plan raise :class:`UnsupportedModelError`.
    ``materialize=False`` (MLA plans only; see :func:`rankdecay.mla.mla_heads_from_tensors`):
    the effective W_Q, W_K, W_V stay meta tensors, for callers that use the chains alone.
    """
    if isinstance(plan, MLAPlan):
        return mla_heads_from_tensors(plan, get, materialize=materialize)
    try:
        W_Q, W_K, W_V, W_O, kv_index, v_index = split_heads_v(plan, get)
    except PlanError as err:
        raise UnsupportedModelError(
            f"{err}; register an adapter for it with rankdecay.register_adapter."
        ) from None
    flags = dict(plan.flags)
    if plan.rotary:
        flags["rotary"] = True
    notes = plan.notes
    if kv_index is not None and plan.n_kv_heads is None and v_index is None:
        notes = (gqa_note(plan.n_heads, len(set(kv_index))), *notes)  # K/V heads from widths
    if v_index is not None:  # key and value projections of different head counts
        H, Hk, Hv = plan.n_heads, len(set(kv_index or range(plan.n_heads))), len(set(v_index))
        flags["value_heads"] = Hv
        notes = tuple(n for n in notes if not n.startswith("grouped-query attention")) + (
            f"key and value heads differ in number: {H} query heads read {Hk} key heads "
            f"(head h: key head h // {H // Hk}) and {Hv} value heads (value head h // {H // Hv})",
        )
    return LayerHeads(
        layer=plan.layer,
        name=plan.name,
        W_Q=W_Q,
        W_K=W_K,
        W_V=W_V,
        W_O=W_O,
        kv_head_index=kv_index,
        v_head_index=v_index,
        rotary=plan.rotary,
        scale=plan.scale,
        qk_params=plan.qk_params,
        ov_params=plan.ov_params,
        notes=notes,
        flags=flags,
        kind=plan.kind,
        family=plan.family,
        score_params=plan.score_params,
    )


def lora_effective_weight(layer: nn.Module) -> tuple[Tensor, tuple[str, ...]]:
    """(W_eff, notes) of a PEFT LoRA layer: W + Σ_a s_a · B_a A_a over its active adapters.

    ``base_layer.weight`` W is (d_out, d_in) (or (d_in, d_out) with ``fan_in_fan_out``, e.g.
    around GPT-2's Conv1D, where the update is (B A)ᵀ); ``lora_A[a].weight`` A_a (r_a, d_in),
    ``lora_B[a].weight`` B_a (d_out, r_a), ``scaling[a]`` s_a. A merged layer already holds the
    sum in W; disabled adapters add nothing. Differentiable in every factor.
    """
    W = layer.base_layer.weight
    if getattr(layer, "merged", False):
        return W, ("LoRA adapters already merged into the base weight",)
    if getattr(layer, "disable_adapters", False):
        return W, ("LoRA adapters disabled: base weight only",)
    notes: list[str] = []
    for name in getattr(layer, "active_adapters", ()):
        if name not in layer.lora_A:
            continue
        if getattr(layer, "use_dora", {}).get(name, False):
            raise UnsupportedModelError(
                f"LoRA adapter {name!r} uses DoRA, whose magnitude vector rankdecay does not fold in; "
                "merge it first with model.merge_and_unload()."
            )
        A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
        delta = float(layer.scaling[name]) * (B @ A)
        W = W + (delta.mT if getattr(layer, "fan_in_fan_out", False) else delta)
        notes.append(
            f"LoRA adapter {name!r} (rank {A.shape[0]}, scale {float(layer.scaling[name]):g}) added: W + s·B·A"
        )
    return W, tuple(notes)


def _live_get(model: nn.Module, notes: list[str]) -> Callable[[str], Tensor]:
    """Tensor lookup on a live model: parameters by name; a LoRA layer's base weight resolves
    to the layer's effective weight (notes collect what was added)."""

    def get(name: str) -> Tensor:
        owner, _, attr = name.rpartition(".")
        if owner.endswith("base_layer") and attr == "weight":
            layer = _submodule(model, owner[: -len("base_layer")].rstrip("."))
            if layer is not None and is_lora_layer(layer):
                W, lora_notes = lora_effective_weight(layer)
                notes.extend(n for n in lora_notes if n not in notes)
                return W
        return model.get_parameter(name)

    return get


# ---------------------------------------------------------------------------------------------
# fold_norm: which norm feeds each attention module
# ---------------------------------------------------------------------------------------------

#: pre-norm siblings of an attention module ("layernorm_before_attention": CPM-Ant's RMS norm)
_PRE_NORMS = (
    "input_layernorm",
    "layernorm_before",
    "ln_1",
    "layer_norm1",
    "attention_norm",
    "layernorm_before_attention",
)

_BERT_LAYER = re.compile(
    r"^(?P<pre>.*?)(?P<stack>(?:encoder|decoder)\.layers?)\.(?P<i>\d+)\.(?P<attr>\w+)$"
)


def _bert_norm_plan(
    model: nn.Module, name: str, cross: bool, output_norm: str = "output.LayerNorm"
) -> _NormPlan:
    """Pre-norm siblings, else post-norm: the previous block's ``output_norm`` (BERT's
    ``output.LayerNorm``, SqueezeBERT's ``output.layernorm``) or the embeddings' LayerNorm."""
    if cross:
        return _NormPlan(why_not="cross-attention reads the encoder's states")
    norms = ("layernorm_before", "layer_norm1", "ln_1")
    if name.endswith(".temporal_attention"):  # TimeSformer: its own norm before time attention
        norms = ("temporal_layernorm",)
    pre = _pre_norm(model, name, norms)
    if pre is not None:  # pre-norm (e.g. v4-style ViT)
        return _NormPlan(query=pre, key_value=pre)
    # post-norm (BERT): the input is the output of the previous block's last LayerNorm,
    # or of the embeddings' LayerNorm for the first block.
    m = _BERT_LAYER.match(name)
    if m is None:
        return _NormPlan(why_not=f"cannot locate the norm preceding {name}")
    i = int(m["i"])
    if i > 0:
        target = f"{m['pre']}{m['stack']}.{i - 1}.{output_norm}"
    else:
        target = f"{m['pre']}embeddings.LayerNorm"
    norm = _submodule(model, target)
    if norm is None or _norm_gain(norm) is None:
        return _NormPlan(why_not=f"no {target} found")
    return _NormPlan(query=(target, norm), key_value=(target, norm))


def _xlnet_norm_plan(model: nn.Module, name: str) -> _NormPlan:
    """XLNet is post-norm: layer i > 0 reads the output of layer i − 1's ``ff.layer_norm``;
    layer 0 reads the word embeddings, which no norm precedes."""
    block = _parent_name(name)
    stack, _, i = block.rpartition(".")
    if not i.isdigit():
        return _NormPlan(why_not=f"cannot locate the norm preceding {name}")
    if int(i) == 0:
        return _NormPlan(why_not=f"{name} reads the word embeddings, which no norm precedes")
    target = _join(stack, f"{int(i) - 1}.ff.layer_norm")
    norm = _submodule(model, target)
    if norm is None or _norm_gain(norm) is None:
        return _NormPlan(why_not=f"no {target} found")
    return _NormPlan(query=(target, norm), key_value=(target, norm))


def _norm_plan(model: nn.Module, lh: LayerHeads, module: nn.Module) -> _NormPlan:
    cross = lh.kind == "cross"
    if isinstance(module, nn.MultiheadAttention):
        return _mha_norm_plan(model, lh.name)
    if lh.family.startswith("SqueezeBERT"):  # post-norm over channels, BERT's block layout
        return _bert_norm_plan(model, lh.name, cross, "output.layernorm")
    if lh.family.startswith("XLNet"):
        return _xlnet_norm_plan(model, lh.name)
    if lh.family.startswith("Funnel"):  # not folded: say why instead of "no norm found"
        return _NormPlan(
            why_not="Funnel is post-norm and some layers read pooled queries (means of the "
            "previous layer's normed outputs) or the decoder's upsampled sum; not folded"
        )
    if lh.family == "GPT-2":
        if cross:
            return _NormPlan(
                query=_pre_norm(model, lh.name, ("ln_cross_attn",)),
                why_not="keys/values read the encoder's states",
            )
        entry = _pre_norm(model, lh.name, ("ln_1",))
        return _NormPlan(query=entry, key_value=entry)
    if any(n.endswith("output.dense.weight") for n in lh.ov_params):  # BERT layout
        return _bert_norm_plan(model, lh.name, cross)
    if cross:
        return _NormPlan(why_not="cross-attention reads the encoder's states")
    entry = _pre_norm(model, lh.name, _PRE_NORMS)
    return _NormPlan(query=entry, key_value=entry)


def _fold_rows(X: Tensor, gain: Tensor) -> Tensor:
    """diag(γ)·X for a chain's first factor: 2-D (d, k) or batched over heads (H, d, k)."""
    g = gain.to(X.dtype)
    return X * (g[:, None] if X.dim() == 2 else g[None, :, None])


def _fold_layer(model: nn.Module, lh: LayerHeads, module: nn.Module) -> LayerHeads:
    """``fold_norm``: the preceding norm's gain into W_Q (query side) and W_K, W_V (key/value
    side), and into the first factor of each chain side that reads the residual stream
    (qk: A₁ ← diag(γ_q)A₁, B₁ ← diag(γ_kv)B₁; ov: A₁ ← diag(γ_kv)A₁, B = W_Oᵀ untouched)."""
    plan = _norm_plan(model, lh, module)
    W_Q, W_K, W_V, notes = _apply_fold(plan, lh.W_Q, lh.W_K, lh.W_V)
    chains = lh.chains
    if chains:
        g_q = _norm_gain(plan.query[1]) if plan.query is not None else None
        g_kv = _norm_gain(plan.key_value[1]) if plan.key_value is not None else None
        chains = dict(chains)
        for circuit, (a_side, b_side) in chains.items():
            g_a, g_b = (g_q, g_kv) if circuit == "qk" else (g_kv, None)
            if g_a is not None:
                a_side = (_fold_rows(a_side[0], g_a), *a_side[1:])
            if g_b is not None:
                b_side = (_fold_rows(b_side[0], g_b), *b_side[1:])
            chains[circuit] = (a_side, b_side)
    return dataclasses.replace(lh, W_Q=W_Q, W_K=W_K, W_V=W_V, chains=chains, notes=lh.notes + notes)


# ---------------------------------------------------------------------------------------------
# Finding every attention module of a model
# ---------------------------------------------------------------------------------------------


def _mla() -> list[tuple[Callable[[nn.Module], bool], Callable[..., LayerHeads]]]:
    """The latent/low-rank attention rules of :mod:`rankdecay.mla`: DeepSeek-V2/V3 MLA, V4."""
    try:
        from .mla import dsv4_layer_heads, is_dsv4_attention, is_mla_attention, mla_layer_heads
    except ImportError:  # pragma: no cover - mla.py is part of the same release
        return []
    return [(is_mla_attention, mla_layer_heads), (is_dsv4_attention, dsv4_layer_heads)]


@dataclass
class Scan:
    """What :func:`scan_attention` found: the layers, the families, and the modules that look
    like attention but were not extracted (name → why)."""

    layers: list[LayerHeads]
    families: list[str]
    unrecognized: dict[str, str]


#: class-name endings of modules that are named after attention or hold key/value-like children
#: but are not attention (EdgeTAM's ``…MemoryAttentionMLP``, RWKV's ``RwkvFeedForward`` with
#: ``key``/``value``, Inkling-2's ``…BlockAttentionResidual``, Phi-4's ``…RelativeAttentionBias``)
NOT_ATTENTION_SUFFIXES = ("MLP", "FeedForward", "Residual", "Bias")


#: class-name fragments of attention-like modules that compute no softmax(scale·q·kᵀ) over all
#: pairs, so there is no W_QK to extract; the warning names the reason instead of asking for an
#: adapter (their weights still get no attention role)
NO_SOFTMAX_CIRCUIT: dict[str, str] = {
    "DeltaNet": "linear attention (gated delta rule)",
    "LightningAttention": "linear (lightning) attention",
    "LinearSelfAttention": "linear attention",
    "AdditiveAttention": "additive attention",
    "DeformableAttention": "deformable attention (sampled offsets, no q·kᵀ)",
    "RwkvSelfAttention": "RWKV time mixing (a recurrence)",
    "xLSTMLayer": "mLSTM matrix memory (a recurrence)",
    "GatedAttention": "a feature gate (softmax over features, no q·kᵀ)",
}


def no_softmax_reason(module: nn.Module) -> str | None:
    """Why ``module`` has no softmax q·kᵀ circuit (:data:`NO_SOFTMAX_CIRCUIT`), or None."""
    cls = type(module).__name__
    for fragment, reason in NO_SOFTMAX_CIRCUIT.items():
        if fragment in cls:
            return f"{reason}: no softmax q·kᵀ circuit to extract"
    return None


def _looks_like_attention(module: nn.Module) -> bool:
    """Class name with "Attention"/"Attn" (or "DeltaNet": the linear attention of hybrids such
    as Qwen3-Next, which has no softmax QK circuit to extract, so it is named in the warning),
    or q/k/v-like children, and parameters of its own; not a class whose name ends in one of
    :data:`NOT_ATTENTION_SUFFIXES`."""
    cls = type(module).__name__
    if cls.endswith(NOT_ATTENTION_SUFFIXES):
        return False
    named = "Attention" in cls or "Attn" in cls or "DeltaNet" in cls
    children = {n for n, _ in module.named_children()}
    qkv_like = sum(1 for t in (Q_NAMES, K_NAMES, V_NAMES) if children & set(t)) >= 2 or bool(
        children & set(FUSED_NAMES)
    )
    if not (named or qkv_like):
        return False
    return next(module.parameters(), None) is not None


def _covers(covered: Iterable[str], name: str) -> bool:
    """``name`` is an extracted module, inside one, or a container of one."""
    for c in covered:
        if c == name or not name or not c:
            return True
        if c.startswith(name + ".") or name.startswith(c + "."):
            return True
    return False


def unrecognized_attention(model: nn.Module, layers: Iterable[LayerHeads]) -> list[str]:
    """Names of modules that look like attention (class name with "Attention"/"Attn", or
    q/k/v-like children) and are neither extracted, inside an extracted module, nor a
    container of one."""
    covered = [lh.name for lh in layers]
    return [
        name
        for name, module in model.named_modules()
        if _looks_like_attention(module) and not _covers(covered, name)
    ]


def attention_modules(
    model: nn.Module, errors: tuple[type[Exception], ...] = (UnsupportedModelError,)
) -> Iterator[tuple[str, nn.Module, str, Any]]:
    """Every module of ``model`` that a rule claims, outermost first in registration order, as
    ``(name, module, rule, payload)``: ``("protocol", None)`` (``rankdecay_attention_heads``),
    ``("mha", plan)`` (``nn.MultiheadAttention``), ``("rule", (is_rule, extract))`` (MLA,
    :mod:`rankdecay.mla`), ``("plan", plan)`` (:func:`~rankdecay.attention_spec.plan_from_module`)
    or ``("failed", error)`` (a rule raised one of ``errors``); a claimed module's children are not
    visited. Plans carry ``layer=0`` (the caller numbers them). The one walk that both
    :func:`scan_attention` and the streaming plans from the model built on the meta device
    (:mod:`rankdecay.meta_plan`) use, so both find the same modules by the same rules."""
    mla = _mla()

    def visit(module: nn.Module, name: str) -> Iterator[tuple[str, nn.Module, str, Any]]:
        if _has_protocol(module):
            yield name, module, "protocol", None
            return
        claim: tuple[str, Any] | None = None
        try:
            if isinstance(module, nn.MultiheadAttention):
                claim = ("mha", _mha_plan(name, module, 0))
            for is_rule, extract in mla if claim is None else ():
                if is_rule(module):
                    claim = ("rule", (is_rule, extract))
                    break
            if claim is None:
                plan = plan_from_module(model, name, module, 0)
                claim = ("plan", plan) if plan is not None else None
        except errors as err:
            claim = ("failed", err)
        if claim is not None:
            yield name, module, claim[0], claim[1]
            return
        for child_name, child in module.named_children():
            yield from visit(child, _join(name, child_name))

    yield from visit(model, "")


def scan_attention(model: nn.Module, *, fold_norm: bool = False, **options: object) -> Scan:
    """Every attention module of ``model``, outermost first in registration order, each by the
    first rule that knows it (:func:`attention_modules`): a ``rankdecay_attention_heads``
    protocol, ``nn.MultiheadAttention``, MLA (:mod:`rankdecay.mla`), or a plan
    (:func:`rankdecay.attention_spec.plan_from_module`).
    Nothing raises: modules that fail are reported in ``Scan.unrecognized``."""
    layers: list[LayerHeads] = []
    families: list[str] = []
    failed: dict[str, str] = {}

    def add(lh: LayerHeads, module: nn.Module, family: str) -> None:
        if fold_norm:
            lh = _fold_layer(model, lh, module)
        layers.append(lh)
        if family not in families:
            families.append(family)

    for name, module, rule, payload in attention_modules(model):
        if rule == "protocol":
            offset = len(layers)
            protocol_options = {"fold_norm": True, **options} if fold_norm else options
            found = module.rankdecay_attention_heads(**protocol_options)  # type: ignore[operator]
            layers.extend(_prefixed(lh, name, offset) for lh in found)
            label = "models defining rankdecay_attention_heads()"
            if label not in families:
                families.append(label)
            continue
        if rule == "failed":
            failed[name] = str(payload)
            continue
        try:
            if rule == "rule":
                lh = payload[1](
                    name, module, tower_config(model, name), len(layers), fold_norm=fold_norm
                )
                add(lh, module, lh.family)
                continue
            plan = dataclasses.replace(payload, layer=len(layers))
            notes: list[str] = []
            get = model.get_parameter if rule == "mha" else _live_get(model, notes)
            lh = layer_heads_from_tensors(plan, get)
            if notes:
                lh = dataclasses.replace(lh, notes=lh.notes + tuple(notes))
                lh.flags["lora"] = True
            add(lh, module, plan.family)
        except UnsupportedModelError as err:
            failed[name] = str(err)
    unrecognized = dict(failed)
    for n in unrecognized_attention(model, layers):
        unrecognized.setdefault(n, "no rule recognises it")
    for n in unrecognized:
        unrecognized[n] = no_softmax_reason(_submodule(model, n) or model) or unrecognized[n]
    return Scan(layers, families, unrecognized)


def _unrecognized_message(model: nn.Module, unrecognized: Mapping[str, str]) -> str:
    items = list(unrecognized.items())
    shown = "; ".join(
        f"{n or type(model).__name__} ({type(_submodule(model, n) or model).__name__}: {why})"
        for n, why in items[:3]
    )
    more = f" and {len(items) - 3} more" if len(items) > 3 else ""
    fix = "teach rankdecay the module with rankdecay.register_adapter (see docs/metrics.md)"
    if all("no softmax q·kᵀ circuit" in why for _, why in items):
        fix = "nothing to extract there, by their kind"
    return (
        f"{len(items)} module(s) of {type(model).__name__} look like attention but were not "
        f"extracted: {shown}{more} — their heads are missing and their weights get no attention "
        f"role; {fix}."
    )


def check_coverage(
    model: nn.Module, unrecognized: Mapping[str, str], *, strict: bool = False, stacklevel: int = 3
) -> None:
    """Warn (:class:`UnrecognizedAttentionWarning`) naming the attention-like modules that were
    not extracted; with ``strict=True`` raise :class:`UnsupportedModelError` instead."""
    if not unrecognized:
        return
    message = _unrecognized_message(model, unrecognized)
    if strict:
        raise UnsupportedModelError(message.replace(" — ", "; strict=True: ", 1))
    warnings.warn(message, UnrecognizedAttentionWarning, stacklevel=stacklevel)


def _builtin_adapter_names() -> list[str]:
    return [
        "models defining rankdecay_attention_heads()",
        *(a.family for a in ARCHITECTURES),
    ]


def _scan_adapter(families: list[str]) -> AttentionAdapter:
    def extractor(model: nn.Module, **options: object) -> list[LayerHeads]:
        return scan_attention(model, **options).layers

    return AttentionAdapter(", ".join(families), lambda model: True, extractor)


def find_adapter(model: nn.Module) -> AttentionAdapter:
    """The adapter for ``model``: the latest registered one whose predicate accepts the model,
    else the built-in per-module scan (named after the families it finds)."""
    for adapter in _ADAPTERS:
        if adapter.predicate(model):
            return adapter
    with torch.no_grad():
        found = scan_attention(model)
    if found.layers:
        return _scan_adapter(found.families)
    families = ", ".join([*(a.name for a in _ADAPTERS), *_builtin_adapter_names()])
    raise UnsupportedModelError(
        f"rankdecay has no adapter for {type(model).__name__}; supported families: {families} — "
        "teach it yours with rankdecay.register_adapter(predicate, extractor)."
    )


def collect_attention(model: nn.Module, **options: object) -> Scan:
    """The layers of ``model`` and the attention-like modules they miss, without warning or
    raising: by the latest registered adapter that accepts the model, else the per-module scan."""
    for adapter in _ADAPTERS:
        if adapter.predicate(model):
            layers = adapter.extractor(model, **options)
            missed = {
                n: "not returned by the registered adapter"
                for n in unrecognized_attention(model, layers)
            }
            return Scan(layers, [adapter.name], missed)
    return scan_attention(model, **options)


def attention_heads(
    model: nn.Module, *, strict: bool = False, **options: object
) -> list[LayerHeads]:
    """Per-layer attention factors of ``model`` (see :class:`LayerHeads`), raw weights by default.

    Every attention module is extracted (several towers included); a module that looks like
    attention but is not extracted gives an :class:`UnrecognizedAttentionWarning` naming it,
    or with ``strict=True`` an :class:`UnsupportedModelError`. Options go to the extractor
    (e.g. ``fold_norm=True``). A registered adapter (:func:`register_adapter`) that accepts the
    model replaces the built-in scan.
    """
    if not isinstance(model, nn.Module):
        raise RankdecayTypeError(
            f"attention_heads needs an nn.Module, got {type(model).__name__}; pass the model "
            "itself (load a model directory with rankdecay.load_model)."
        )
    found = collect_attention(model, **options)
    if not found.layers:
        if found.unrecognized:
            raise UnsupportedModelError(_unrecognized_message(model, found.unrecognized))
        find_adapter(model)  # raises the one-sentence "no adapter" error
    check_coverage(model, found.unrecognized, strict=strict)
    return found.layers
