"""Per-head attention factors of a model, one adapter per architecture family.

Conventions (see docs/metrics.md): for head h, W_Q^h, W_K^h, W_V^h ∈ ℝ^{d_model×d_head} map the
residual stream into the head (x ↦ xᵀW) and W_O^h ∈ ℝ^{d_head×d_model} maps it back.

- QK circuit W_QK^h = W_Q^h (W_K^h)ᵀ, factor pair (A, B) = (W_Q^h, W_K^h).
- OV circuit W_OV^h = W_V^h W_O^h,    factor pair (A, B) = (W_V^h, (W_O^h)ᵀ).

Biases are not part of the circuits. Weights are raw by default; every transform (e.g. folding a
norm's gain) is opt-in and named.

Extractors must build the per-head tensors from the parameters with differentiable reshapes,
slices and transposes only (no ``.detach()``/``.data``), so that autograd can map a per-head
quantity back onto the parameters (``LowRankDecay(granularity="product")`` relies on this).
Callers that only read spectra wrap the call in ``torch.no_grad()``.

Built-in adapters (each finds its attention modules anywhere inside the model, so wrapped models
such as a classifier around a ``BertModel`` or a sentence-embedding ``nn.Sequential`` work; all
names are fully qualified relative to the model passed in):

- models defining ``rankdecay_attention_heads(**options)`` (the protocol; highest priority),
- Hugging Face GPT-2 (fused ``c_attn`` Conv1D stored in×out),
- Hugging Face BERT family (``query``/``key``/``value`` + ``output.dense``: BERT, RoBERTa, MiniLM),
- Hugging Face Llama family (``q_proj``/``k_proj``/``v_proj``/``o_proj``: Llama, Mistral, Qwen2,
  ViT in transformers ≥ 5) with grouped-query attention (``kv_head_index``) and the rotary flag,
- ``torch.nn.MultiheadAttention`` (fused ``in_proj_weight`` or separate q/k/v weights).

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .errors import RankdecayError

__all__ = [
    "AttentionAdapter",
    "LayerHeads",
    "UnrecognizedAttentionWarning",
    "UnsupportedModelError",
    "attention_heads",
    "find_adapter",
    "register_adapter",
]


@dataclass
class LayerHeads:
    """The attention factors of one layer, per **query** head.

    Shapes: ``W_Q`` (H, d_model, d_head), ``W_K`` (H, d_kv, d_head), ``W_V`` (H, d_kv, d_head),
    ``W_O`` (H, d_head, d_model); H is the number of query heads. d_kv = d_model unless the
    layer attends to a memory of another width (``nn.MultiheadAttention`` with ``kdim``/``vdim``).
    """

    layer: int
    name: str  # module path of the attention block, e.g. "transformer.h.3.attn"
    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    W_O: Tensor
    #: GQA/MQA: index of the key/value head each query head uses (None = one K/V head per query head).
    kv_head_index: tuple[int, ...] | None = None
    #: the model applies rotary embeddings to q, k; the QK circuit is then the one at offset 0.
    rotary: bool = False
    #: factor multiplying q·k in the model (e.g. 1/√d_head); scores = scale · xᵀ W_QK y.
    scale: float | None = None
    #: fully qualified parameter names (relative to the model passed in) holding W_Q / W_K ...
    qk_params: tuple[str, ...] = ()
    #: ... and W_V / W_O. A fused q,k,v tensor is listed in both.
    ov_params: tuple[str, ...] = ()
    #: free-form notes the report shows (e.g. "gain of ln_1 folded into W_Q, W_K, W_V").
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: what changes how the spectra read, e.g. {"rotary": True, "partial_rotary": 0.5,
    #: "qk_norm": "per_head" | "full", "softcap": 50.0, "relative_position_bias": True,
    #: "sliding_window": 4096, "cross_attention": True} (``rotary`` above is kept as well).
    flags: dict[str, object] = field(default_factory=dict)
    #: "self" or "cross" (keys/values read another sequence: an encoder's states, an image ...).
    kind: str = "self"
    #: products of more than two factors (MLA, LoRA's W + s·BA): when a circuit ("qk"/"ov") has an
    #: entry ((A₁, A₂, ...), (B₁, B₂, ...)), that circuit is (A₁A₂⋯)(B₁B₂⋯)ᵀ, every factor batched
    #: over heads (leading dim H) or shared (no leading dim); analyze then uses the chain SVD.
    chains: dict[str, tuple[tuple[Tensor, ...], tuple[Tensor, ...]]] | None = None

    @property
    def n_heads(self) -> int:
        return int(self.W_Q.shape[0])

    @property
    def n_kv_heads(self) -> int:
        return self.n_heads if self.kv_head_index is None else len(set(self.kv_head_index))

    def factors(self, circuit: str) -> tuple[Tensor, Tensor]:
        """(A, B) with the circuit = A·Bᵀ, each (H, d, d_head): "qk" → (W_Q, W_K), "ov" → (W_V, W_Oᵀ)."""
        if circuit == "qk":
            return self.W_Q, self.W_K
        if circuit == "ov":
            return self.W_V, self.W_O.mT
        raise ValueError(f"unknown circuit {circuit!r}; choose 'qk' or 'ov'.")


Extractor = Callable[..., list[LayerHeads]]
Predicate = Callable[[nn.Module], bool]


@dataclass
class AttentionAdapter:
    name: str  # family name shown to users, e.g. "Hugging Face GPT-2"
    predicate: Predicate
    extractor: Extractor


_ADAPTERS: list[AttentionAdapter] = []


class UnsupportedModelError(RankdecayError, ValueError):
    """No adapter recognises the model (or, with ``strict=True``, one of its attention modules)."""


class UnrecognizedAttentionWarning(UserWarning):
    """A module that looks like attention (by its class name or its q/k/v-like children) was not
    extracted: its heads are missing from spectra and its weights get no attention role."""


def register_adapter(predicate: Predicate, extractor: Extractor, name: str | None = None) -> None:
    """Teach rankdecay a new architecture.

    ``predicate(model) -> bool`` says whether the adapter applies; ``extractor(model, **options)``
    returns one :class:`LayerHeads` per attention layer. Adapters registered later take priority
    over earlier ones (so users can override a built-in).
    """
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


def _outermost(
    module: nn.Module, match: Callable[[nn.Module], bool], prefix: str = ""
) -> Iterator[tuple[str, nn.Module]]:
    """Submodules of ``module`` (pre-order, registration order) that ``match``; a match's
    descendants are not searched. Names are fully qualified relative to ``module``."""
    if match(module):
        yield prefix, module
        return
    for child_name, child in module.named_children():
        yield from _outermost(child, match, _join(prefix, child_name))


def _any(module: nn.Module, match: Callable[[nn.Module], bool]) -> bool:
    return next(iter(_outermost(module, match)), None) is not None


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _heads_from_linear(weight: Tensor, n_heads: int, head_dim: int) -> Tensor:
    """An ``nn.Linear`` weight (H·r, d_in) (out×in, y = x Wᵀ) → per-head W (H, d_in, r).

    Row block h·r:(h+1)·r of the weight is head h, so W^h = weight[h·r:(h+1)·r]ᵀ.
    """
    return weight.reshape(n_heads, head_dim, weight.shape[-1]).mT


def _heads_from_in_out(weight: Tensor, n_heads: int, head_dim: int) -> Tensor:
    """An in×out weight (d_in, H·r) (y = x W, e.g. GPT-2's Conv1D) → per-head W (H, d_in, r)."""
    return weight.reshape(weight.shape[0], n_heads, head_dim).permute(1, 0, 2)


def _out_heads_from_linear(weight: Tensor, n_heads: int, head_dim: int) -> Tensor:
    """An ``nn.Linear`` output weight (d_out, H·r) → per-head W_O (H, r, d_out)."""
    return weight.reshape(weight.shape[0], n_heads, head_dim).permute(1, 2, 0)


def _out_heads_from_in_out(weight: Tensor, n_heads: int, head_dim: int) -> Tensor:
    """An in×out output weight (H·r, d_out) → per-head W_O (H, r, d_out)."""
    return weight.reshape(n_heads, head_dim, weight.shape[-1])


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


def _first_attr(objs: tuple[object, ...], names: tuple[str, ...]) -> int | None:
    for obj in objs:
        if obj is None:
            continue
        for attr in names:
            value = getattr(obj, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
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
    )


def _protocol_predicate(model: nn.Module) -> bool:
    return _any(model, _has_protocol)


def _protocol_extractor(model: nn.Module, **options: object) -> list[LayerHeads]:
    """Call ``rankdecay_attention_heads`` on the model, or on the outermost submodules defining
    it (a wrapped model), prefixing names so they stay relative to ``model``."""
    if _has_protocol(model):
        return model.rankdecay_attention_heads(**options)  # type: ignore[operator]
    layers: list[LayerHeads] = []
    for prefix, module in _outermost(model, _has_protocol):
        offset = len(layers)
        layers.extend(
            _prefixed(lh, prefix, offset) for lh in module.rankdecay_attention_heads(**options)
        )  # type: ignore[operator]
    return layers


# ---------------------------------------------------------------------------------------------
# torch.nn.MultiheadAttention (nn.TransformerEncoder / Decoder, and any model containing it)
# ---------------------------------------------------------------------------------------------


def _is_mha(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention)


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


def _mha_extractor(model: nn.Module, *, fold_norm: bool = False) -> list[LayerHeads]:
    """``nn.MultiheadAttention``: q = x W_qᵀ with W_q = in_proj_weight[0:E] (fused; rows
    [E:2E] keys, [2E:3E] values) or ``q_proj_weight`` / ``k_proj_weight`` (E, kdim) /
    ``v_proj_weight`` (E, vdim) when kdim/vdim differ from E; out = concat_h(o_h) W_outᵀ."""
    layers: list[LayerHeads] = []
    for name, mha in _outermost(model, _is_mha):
        assert isinstance(mha, nn.MultiheadAttention)
        H, r = mha.num_heads, mha.head_dim
        if mha._qkv_same_embed_dim:
            Wq, Wk, Wv = mha.in_proj_weight.chunk(3, dim=0)
            fused = _join(name, "in_proj_weight")
            qk, ov = (fused,), (fused, _join(name, "out_proj.weight"))
        else:
            Wq, Wk, Wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
            qk = (_join(name, "q_proj_weight"), _join(name, "k_proj_weight"))
            ov = (_join(name, "v_proj_weight"), _join(name, "out_proj.weight"))
        W_Q, W_K, W_V = (_heads_from_linear(W, H, r) for W in (Wq, Wk, Wv))
        W_O = _out_heads_from_linear(mha.out_proj.weight, H, r)
        notes: tuple[str, ...] = ()
        if mha.kdim != mha.embed_dim or mha.vdim != mha.embed_dim:
            notes += (f"keys/values have width kdim={mha.kdim}, vdim={mha.vdim}",)
        if fold_norm:
            W_Q, W_K, W_V, fold_notes = _apply_fold(_mha_norm_plan(model, name), W_Q, W_K, W_V)
            notes += fold_notes
        layers.append(
            LayerHeads(
                layer=len(layers),
                name=name,
                W_Q=W_Q,
                W_K=W_K,
                W_V=W_V,
                W_O=W_O,
                scale=1.0 / math.sqrt(r),
                qk_params=qk,
                ov_params=ov,
                notes=notes,
            )
        )
    return layers


# ---------------------------------------------------------------------------------------------
# Hugging Face GPT-2: fused c_attn Conv1D (weights stored in×out, y = x W + b)
# ---------------------------------------------------------------------------------------------


def _is_conv1d(module: object) -> bool:
    return (
        isinstance(module, nn.Module)
        and type(module).__name__ == "Conv1D"
        and getattr(module, "weight", None) is not None
    )


def _is_gpt2_attention(module: nn.Module) -> bool:
    return (
        _is_conv1d(getattr(module, "c_attn", None))
        and _is_conv1d(getattr(module, "c_proj", None))
        and isinstance(getattr(module, "num_heads", None), int)
    )


def _gpt2_extractor(model: nn.Module, *, fold_norm: bool = False) -> list[LayerHeads]:
    """GPT-2: c_attn.weight (d, 3d) = [W_q | W_k | W_v] in×out, each split into H column blocks
    of width r; c_proj.weight (d, d) in×out, row block h is W_O^h. Cross-attention layers take
    W_q from q_attn (d, d) and [W_k | W_v] from c_attn (d, 2d)."""
    layers: list[LayerHeads] = []
    for name, attn in _outermost(model, _is_gpt2_attention):
        H = int(attn.num_heads)
        r = int(getattr(attn, "head_dim", attn.c_attn.weight.shape[0] // H))
        split = int(getattr(attn, "split_size", H * r))
        cross = bool(getattr(attn, "is_cross_attention", False))
        c_attn = _join(name, "c_attn.weight")
        if cross:
            Wq = attn.q_attn.weight
            Wk, Wv = attn.c_attn.weight.split(split, dim=1)
            qk: tuple[str, ...] = (_join(name, "q_attn.weight"), c_attn)
        else:
            Wq, Wk, Wv = attn.c_attn.weight.split(split, dim=1)
            qk = (c_attn,)
        ov = (c_attn, _join(name, "c_proj.weight"))
        W_Q, W_K, W_V = (_heads_from_in_out(W, H, r) for W in (Wq, Wk, Wv))
        W_O = _out_heads_from_in_out(attn.c_proj.weight, H, r)
        scale = getattr(attn, "scaling", None)
        if scale is None:
            scale = r**-0.5 if getattr(attn, "scale_attn_weights", True) else 1.0
            if getattr(attn, "scale_attn_by_inverse_layer_idx", False):
                scale /= float(getattr(attn, "layer_idx", 0) + 1)
        notes: tuple[str, ...] = (
            ("cross-attention: keys/values read the encoder's hidden states",) if cross else ()
        )
        if fold_norm:
            if cross:
                plan = _NormPlan(
                    query=_pre_norm(model, name, ("ln_cross_attn",)),
                    why_not="keys/values read the encoder's states",
                )
            else:
                entry = _pre_norm(model, name, ("ln_1",))
                plan = _NormPlan(query=entry, key_value=entry)
            W_Q, W_K, W_V, fold_notes = _apply_fold(plan, W_Q, W_K, W_V)
            notes += fold_notes
        layers.append(
            LayerHeads(
                layer=len(layers),
                name=name,
                W_Q=W_Q,
                W_K=W_K,
                W_V=W_V,
                W_O=W_O,
                scale=float(scale),
                qk_params=qk,
                ov_params=ov,
                notes=notes,
            )
        )
    return layers


# ---------------------------------------------------------------------------------------------
# Hugging Face BERT family: BERT, RoBERTa, MiniLM, ELECTRA, (v4-style) ViT ...
#   <attention>.<self>.query / key / value (nn.Linear) + <attention>.output.dense (nn.Linear)
# ---------------------------------------------------------------------------------------------


def _bert_self(module: nn.Module) -> tuple[str, nn.Module] | None:
    for child_name, child in module.named_children():
        if all(isinstance(getattr(child, p, None), nn.Linear) for p in ("query", "key", "value")):
            return child_name, child
    return None


def _is_bert_attention(module: nn.Module) -> bool:
    output = getattr(module, "output", None)
    return isinstance(getattr(output, "dense", None), nn.Linear) and _bert_self(module) is not None


_BERT_LAYER = re.compile(
    r"^(?P<pre>.*?)(?P<stack>(?:encoder|decoder)\.layers?)\.(?P<i>\d+)\.(?P<attr>\w+)$"
)


def _bert_norm_plan(model: nn.Module, name: str, cross: bool) -> _NormPlan:
    if cross:
        return _NormPlan(why_not="cross-attention reads the encoder's states")
    pre = _pre_norm(model, name, ("layernorm_before", "layer_norm1", "ln_1"))
    if pre is not None:  # pre-norm (e.g. v4-style ViT)
        return _NormPlan(query=pre, key_value=pre)
    # post-norm (BERT): the input is the output of the previous block's last LayerNorm,
    # or of the embeddings' LayerNorm for the first block.
    m = _BERT_LAYER.match(name)
    if m is None:
        return _NormPlan(why_not=f"cannot locate the norm preceding {name}")
    i = int(m["i"])
    if i > 0:
        target = f"{m['pre']}{m['stack']}.{i - 1}.output.LayerNorm"
    else:
        target = f"{m['pre']}embeddings.LayerNorm"
    norm = _submodule(model, target)
    if norm is None or _norm_gain(norm) is None:
        return _NormPlan(why_not=f"no {target} found")
    return _NormPlan(query=(target, norm), key_value=(target, norm))


def _bert_extractor(model: nn.Module, *, fold_norm: bool = False) -> list[LayerHeads]:
    """BERT family: query/key/value are ``nn.Linear`` (H·r, d) (y = x Wᵀ + b), row block h is
    head h; ``output.dense`` (d, H·r), column block h is W_O^hᵀ."""
    layers: list[LayerHeads] = []
    for name, attn in _outermost(model, _is_bert_attention):
        found = _bert_self(attn)
        assert found is not None
        self_name, sa = found
        H = _first_attr((sa, getattr(sa, "config", None)), ("num_attention_heads", "num_heads"))
        if H is None:
            raise UnsupportedModelError(
                f"cannot tell the number of heads of {name}; register an adapter for it with rankdecay.register_adapter."
            )
        r = int(getattr(sa, "attention_head_size", sa.query.out_features // H))
        W_Q = _heads_from_linear(sa.query.weight, H, r)
        W_K = _heads_from_linear(sa.key.weight, H, r)
        W_V = _heads_from_linear(sa.value.weight, H, r)
        W_O = _out_heads_from_linear(attn.output.dense.weight, H, r)
        base = _join(name, self_name)
        qk = (_join(base, "query.weight"), _join(base, "key.weight"))
        ov = (_join(base, "value.weight"), _join(name, "output.dense.weight"))
        scale = getattr(sa, "scaling", None)
        scale = float(scale) if isinstance(scale, (int, float)) else 1.0 / math.sqrt(r)
        cross = bool(getattr(attn, "is_cross_attention", False)) or "Cross" in type(sa).__name__
        notes: tuple[str, ...] = (
            ("cross-attention: keys/values read the encoder's hidden states",) if cross else ()
        )
        pos = getattr(sa, "position_embedding_type", None) or getattr(
            getattr(sa, "config", None), "position_embedding_type", None
        )
        if isinstance(pos, str) and pos != "absolute":
            notes += (f"{pos} position scores are added to the QK scores and are not part of W_QK",)
        if fold_norm:
            W_Q, W_K, W_V, fold_notes = _apply_fold(
                _bert_norm_plan(model, name, cross), W_Q, W_K, W_V
            )
            notes += fold_notes
        layers.append(
            LayerHeads(
                layer=len(layers),
                name=name,
                W_Q=W_Q,
                W_K=W_K,
                W_V=W_V,
                W_O=W_O,
                scale=scale,
                qk_params=qk,
                ov_params=ov,
                notes=notes,
            )
        )
    return layers


# ---------------------------------------------------------------------------------------------
# Hugging Face Llama family: q_proj / k_proj / v_proj / o_proj (Llama, Mistral, Qwen2, ViT ...)
# ---------------------------------------------------------------------------------------------

_LLAMA_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")


def _is_llama_attention(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, p, None), nn.Linear) for p in _LLAMA_PROJ)


def _uses_rotary(model: nn.Module, attn: nn.Module) -> bool:
    config = getattr(attn, "config", None) or getattr(model, "config", None)
    for attr in ("rope_parameters", "rope_theta", "rope_scaling"):
        if getattr(config, attr, None) is not None:
            return True
    return _any(model, lambda m: "Rotary" in type(m).__name__)


def _llama_extractor(model: nn.Module, *, fold_norm: bool = False) -> list[LayerHeads]:
    """Llama layout: q_proj (H·r, d), k_proj / v_proj (H_kv·r, d), o_proj (d, H·r), all
    ``nn.Linear``. With grouped-query attention query head h uses key/value head
    h // (H / H_kv) (transformers' ``repeat_kv``); its W_K, W_V are that shared head's."""
    layers: list[LayerHeads] = []
    for name, attn in _outermost(model, _is_llama_attention):
        config = getattr(attn, "config", None)
        H = _first_attr((attn, config), ("num_heads", "num_attention_heads"))
        r = _first_attr((attn, config), ("head_dim",))
        if H is None and r is not None:
            H = attn.q_proj.out_features // r
        if H is None:
            raise UnsupportedModelError(
                f"cannot tell the number of heads of {name}; register an adapter for it with rankdecay.register_adapter."
            )
        if r is None:
            r = attn.q_proj.out_features // H
        n_kv = attn.k_proj.out_features // r
        if (
            H * r != attn.q_proj.out_features
            or n_kv * r != attn.k_proj.out_features
            or n_kv == 0
            or H % n_kv
        ):
            raise UnsupportedModelError(
                f"{name}: q_proj/k_proj widths {attn.q_proj.out_features}/{attn.k_proj.out_features} do not split "
                f"into heads of size {r}; register an adapter for it with rankdecay.register_adapter."
            )
        W_Q = _heads_from_linear(attn.q_proj.weight, H, r)
        W_K = _heads_from_linear(attn.k_proj.weight, n_kv, r)
        W_V = _heads_from_linear(attn.v_proj.weight, n_kv, r)
        W_O = _out_heads_from_linear(attn.o_proj.weight, H, r)
        kv_index: tuple[int, ...] | None = None
        notes: tuple[str, ...] = ()
        if n_kv != H:
            group = H // n_kv
            kv_index = tuple(h // group for h in range(H))
            idx = torch.tensor(kv_index, device=W_K.device)
            W_K, W_V = W_K.index_select(0, idx), W_V.index_select(0, idx)
            notes += (
                f"grouped-query attention: {n_kv} key/value heads shared by {H} query heads ({group} each)",
            )
        rotary = _uses_rotary(model, attn)
        if rotary:
            notes += ("rotary embeddings: QK circuit at relative offset 0",)
            factor = getattr(config, "partial_rotary_factor", None)
            if isinstance(factor, float) and factor < 1.0:
                notes += (f"rotary applies to a fraction {factor} of each head",)
        if isinstance(getattr(attn, "q_norm", None), nn.Module) or isinstance(
            getattr(attn, "k_norm", None), nn.Module
        ):
            notes += (
                "QK-norm: q and k are normalized per head before the product; W_QK is the raw W_Q W_Kᵀ",
            )
        scale = getattr(attn, "scaling", None)
        scale = float(scale) if isinstance(scale, (int, float)) else 1.0 / math.sqrt(r)
        if fold_norm:
            entry = _pre_norm(
                model,
                name,
                ("input_layernorm", "layernorm_before", "ln_1", "layer_norm1", "attention_norm"),
            )
            W_Q, W_K, W_V, fold_notes = _apply_fold(
                _NormPlan(query=entry, key_value=entry), W_Q, W_K, W_V
            )
            notes += fold_notes
        layers.append(
            LayerHeads(
                layer=len(layers),
                name=name,
                W_Q=W_Q,
                W_K=W_K,
                W_V=W_V,
                W_O=W_O,
                kv_head_index=kv_index,
                rotary=rotary,
                scale=scale,
                qk_params=(_join(name, "q_proj.weight"), _join(name, "k_proj.weight")),
                ov_params=(_join(name, "v_proj.weight"), _join(name, "o_proj.weight")),
                notes=notes,
            )
        )
    return layers


def _family(
    name: str, match: Callable[[nn.Module], bool], extractor: Extractor
) -> AttentionAdapter:
    return AttentionAdapter(name, lambda model: _any(model, match), extractor)


def _builtin_adapters() -> list[AttentionAdapter]:
    """Adapters defined in this module, after the protocol one (lowest priority last).

    Each family adapter finds its attention modules anywhere inside the model (so a BertModel
    inside a classifier or a sentence-embedding wrapper is found) and names every tensor
    relative to the model passed in.
    """
    return [
        AttentionAdapter(
            "models defining rankdecay_attention_heads()", _protocol_predicate, _protocol_extractor
        ),
        _family("Hugging Face GPT-2", _is_gpt2_attention, _gpt2_extractor),
        _family(
            "Hugging Face BERT family (BERT, RoBERTa, MiniLM, ELECTRA)",
            _is_bert_attention,
            _bert_extractor,
        ),
        _family(
            "Hugging Face Llama family (Llama, Mistral, Qwen2, ViT and other q_proj/k_proj/v_proj/o_proj layouts)",
            _is_llama_attention,
            _llama_extractor,
        ),
        _family(
            "torch.nn.MultiheadAttention (nn.TransformerEncoder/Decoder)", _is_mha, _mha_extractor
        ),
    ]


def find_adapter(model: nn.Module) -> AttentionAdapter:
    for adapter in [*_ADAPTERS, *_builtin_adapters()]:
        if adapter.predicate(model):
            return adapter
    families = ", ".join(a.name for a in [*_ADAPTERS, *_builtin_adapters()])
    raise UnsupportedModelError(
        f"rankdecay has no adapter for {type(model).__name__}; supported families: {families} — "
        "teach it yours with rankdecay.register_adapter(predicate, extractor)."
    )


def attention_heads(model: nn.Module, **options: object) -> list[LayerHeads]:
    """Per-layer attention factors of ``model`` (see :class:`LayerHeads`), raw weights by default.

    Options are passed to the adapter (e.g. ``fold_norm=True``).
    """
    layers = find_adapter(model).extractor(model, **options)
    if not layers:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no attention layers rankdecay can read; "
            "check the model or register an adapter with rankdecay.register_adapter."
        )
    return layers
