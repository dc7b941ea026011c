"""Multi-head latent attention (MLA, DeepSeek-V2/V3): per-head circuits as chains of factors.

DeepSeek-V4's attention (low-rank queries, one key/value head shared by all query heads, a
grouped low-rank output projection) is extracted here as well: :func:`dsv4_layer_heads`.

An MLA module (Hugging Face ``DeepseekV2Attention`` / ``DeepseekV3Attention`` and clones with the
same parameter names) computes, for a residual-stream row x ∈ ℝ^d and query head h
(``nn.Linear`` weights are out×in, y = x Wᵀ):

    queries  c_q = norm_q(x W_qaᵀ)                    q_a_proj (q_lora, d), q_a_layernorm
             q^h = c_q W_qb^hᵀ = [q_nope^h | q_rope^h]  q_b_proj (H·(n + p), q_lora), n + p per head
             (without a query LoRA: q^h = x W_q^hᵀ,     q_proj (H·(n + p), d))
    keys     [c_kv | k_rope] = x W_kvaᵀ                kv_a_proj_with_mqa (kv_lora + p, d)
             c_kv ← norm_kv(c_kv)                      kv_a_layernorm
             [k_nope^h | v^h] = c_kv W_kvb^hᵀ           kv_b_proj (H·(n + v), kv_lora)
    scores   s^h_ij = scale · (q_nope^h_i · k_nope^h_j + q_rope^h_i · k_rope_j)   (rotary on *_rope)
    output   o_i = Σ_h (Σ_j P^h_ij v^h_j) W_O^hᵀ      o_proj (d, H·v)

In the convention of :mod:`rankdecay.heads` (x ↦ xᵀW, circuits A·Bᵀ):

- QK (non-rotary part): W_QK^h = (A₁A₂)(B₁B₂)ᵀ with A₁ = W_qaᵀ (d, q_lora) — shared by every
  head —, A₂ = W_qb^{h,nope}ᵀ (q_lora, n), B₁ = W_kva^{latent}ᵀ (d, kv_lora) shared,
  B₂ = W_kvb^{h,k}ᵀ (kv_lora, n). Without a query LoRA the A chain is the single W_q^{h,nope}ᵀ.
- OV: W_OV^h = (A₁A₂)(B₁)ᵀ with A₁ = W_kva^{latent}ᵀ, A₂ = W_kvb^{h,v}ᵀ (kv_lora, v),
  B₁ = W_O^hᵀ (d, v).

``LayerHeads.chains`` holds exactly these factors, and :func:`rankdecay.analyze` takes their
singular values by QR cascades (:func:`rankdecay.spectra.factored_svdvals_chain`): the shared
d×q_lora and d×kv_lora factors are decomposed once per layer, never a d×d matrix. ``W_Q``,
``W_K``, ``W_V`` hold the materialized effective per-head factors (A₁A₂ etc., d×n) so that
``LayerHeads.factors`` and autograd-based users keep working (that product costs
d·q_lora·H·n multiply-adds per layer; analyze itself does not use it).

The decoupled rotary part q_rope^h · k_rope (p dims per head; k_rope is one key head shared by
all query heads, read straight from the residual stream) depends on the positions and is not
in W_QK; it is described in ``flags["rotary_part"]``.

Norm gains: the latent RMSNorms (q_a_layernorm, kv_a_layernorm) sit *between* factors. Their
per-row 1/rms is a positive scalar per token (it rescales a token's scores, not the circuit);
their gains γ are a diagonal between the factors. By default the raw weights are reported
(gains not folded, as everywhere in rankdecay); ``fold_norm=True`` replaces A₂ by diag(γ_q)·A₂
and B₂ (and the OV A₂) by diag(γ_kv)·B₂, i.e. the circuit the model computes up to those
per-token scalars. Biases are not part of the circuits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .layer_heads import LayerHeads, UnsupportedModelError

__all__ = [
    "DSV4_FAMILY",
    "MLA_FAMILY",
    "MLAPlan",
    "dsv4_layer_heads",
    "is_dsv4_attention",
    "is_mla_attention",
    "mla_heads_from_tensors",
    "mla_layer_heads",
    "mla_plan_from_checkpoint",
    "mla_plan_from_module",
    "mla_scale",
]

#: the family name of MLA layers (the row of rankdecay.attention_spec.ARCHITECTURES)
MLA_FAMILY = "DeepSeek-V2/V3 (MLA)"

_REQUIRED = ("kv_a_proj_with_mqa", "kv_b_proj", "o_proj")


def is_mla_attention(module: nn.Module) -> bool:
    """True for a DeepSeek-V2/V3-style MLA module: ``kv_a_proj_with_mqa``, ``kv_b_proj`` and
    ``o_proj`` linears plus either ``q_proj`` or the ``q_a_proj``/``q_b_proj`` pair."""
    if not all(isinstance(getattr(module, p, None), nn.Linear) for p in _REQUIRED):
        return False
    if isinstance(getattr(module, "q_proj", None), nn.Linear):
        return True
    return isinstance(getattr(module, "q_a_proj", None), nn.Linear) and isinstance(
        getattr(module, "q_b_proj", None), nn.Linear
    )


def _dim(module: nn.Module, config: object | None, name: str, *attrs: str) -> int:
    """The first non-negative int among ``attrs`` on the module, then on the config."""
    for obj in (module, config):
        for attr in attrs:
            value = getattr(obj, attr, None) if obj is not None else None
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
    raise UnsupportedModelError(
        f"{name}: cannot tell the MLA {attrs[0]} (not on the module nor its config); "
        "register an adapter for it with rankdecay.register_adapter."
    )


def _gain(norm: object) -> Tensor | None:
    weight = getattr(norm, "weight", None)
    return weight if isinstance(weight, Tensor) and weight.dim() == 1 else None


@dataclass
class MLAPlan:
    """Where one MLA module's tensors are and its sizes: what :func:`mla_heads_from_tensors`
    needs, from a live module (:func:`mla_layer_heads`) or from a checkpoint's tensor names and
    ``config.json`` (:func:`mla_plan_from_checkpoint`, for ``analyze(DIR)`` streaming).

    ``q_lora``: queries through ``q_a_proj`` → ``q_b_proj`` (else one ``q_proj``). ``q_norm`` /
    ``kv_norm``: the latent norms' gain tensors (read only with ``fold_norm``). ``bias``: one of
    the projections has a bias (a note; biases are not part of the circuits)."""

    name: str
    layer: int
    n_heads: int
    nope: int
    rope: int
    v_dim: int
    kv_lora: int
    q_lora: bool
    scale: float
    interleaved: bool | None = None
    bias: bool = False
    q_norm: str | None = None
    kv_norm: str | None = None
    kind: str = "self"
    family: str = MLA_FAMILY

    def weight(self, part: str) -> str:
        """The full tensor name of projection ``part``'s weight."""
        return f"{self.name}.{part}.weight"

    @property
    def q_params(self) -> tuple[str, ...]:
        if self.q_lora:
            return (self.weight("q_a_proj"), self.weight("q_b_proj"))
        return (self.weight("q_proj"),)


#: the projections of an MLA module besides its queries (relative names)
_KV_O = ("kv_a_proj_with_mqa", "kv_b_proj", "o_proj")


def mla_scale(config: object, qk_head_dim: int) -> float:
    """The score scale of an MLA module from its config, as transformers' DeepSeek-V2/V3
    (``yarn_apply_mscale``) computes it: 1/√(n + p), times mscale² with
    mscale = 0.1·mscale_all_dim·ln(factor) + 1 when the rope type is not "default",
    ``mscale_all_dim`` is set and factor > 1 (a raw ``config.json`` may still say
    ``rope_scaling``/``type``)."""
    scale = qk_head_dim ** (-0.5)
    get = config.get if isinstance(config, Mapping) else lambda k: getattr(config, k, None)
    params = get("rope_parameters") or get("rope_scaling")
    if not isinstance(params, Mapping):
        return scale
    if (params.get("rope_type") or params.get("type") or "default") == "default":
        return scale
    mscale_all_dim = params.get("mscale_all_dim", 0)
    factor = params.get("factor")
    if mscale_all_dim and isinstance(factor, (int, float)) and factor > 1:
        mscale = 0.1 * mscale_all_dim * math.log(factor) + 1.0
        scale = scale * mscale * mscale
    return scale


def mla_layer_heads(
    name: str,
    module: nn.Module,
    config: object | None,
    layer: int,
    *,
    fold_norm: bool = False,
) -> LayerHeads:
    """The per-head QK (non-rotary part) and OV circuits of one MLA module as chains.

    Args:
        name: the module's qualified name (for parameter names and messages).
        module: the MLA module (see :func:`is_mla_attention`).
        config: the model config (dims are read from the module first, then from it).
        layer: the layer index to record.
        fold_norm: fold the latent norms' gains γ between the factors (raw weights otherwise).

    Returns:
        a :class:`~rankdecay.heads.LayerHeads` with ``chains`` {"qk": ((A₁, A₂), (B₁, B₂)),
        "ov": ((A₁, A₂), (B₁,))} (shared factors (d, ·), per-head factors (H, ·, ·)), the
        materialized effective W_Q, W_K (H, d, n), W_V (H, d, v), W_O (H, v, d), the module's
        scale, ``rotary=True`` and ``flags["rotary_part"]`` (see :func:`mla_heads_from_tensors`).
    """
    plan, tensors = mla_plan_from_module(name, module, config, layer)
    return mla_heads_from_tensors(plan, tensors.__getitem__, fold_norm=fold_norm)


def mla_plan_from_module(
    name: str, module: nn.Module, config: object | None, layer: int
) -> tuple[MLAPlan, dict[str, Tensor]]:
    """The :class:`MLAPlan` of a live MLA module (sizes from the module, then ``config``) and the
    tensors it names: the rule of :func:`mla_layer_heads`, also applied to a model built on the
    meta device to plan a checkpoint's MLA modules for streaming (:mod:`rankdecay.meta_plan`)."""
    n = _dim(module, config, name, "qk_nope_head_dim")
    p = _dim(module, config, name, "qk_rope_head_dim")
    q_proj = getattr(module, "q_proj", None)
    lora_q = not isinstance(q_proj, nn.Linear)
    scale = getattr(module, "scaling", None)
    rope_cfg = getattr(config, "rope_interleave", None)
    plan = MLAPlan(
        name=name,
        layer=layer,
        n_heads=_dim(module, config, name, "num_heads", "num_attention_heads"),
        nope=n,
        rope=p,
        v_dim=_dim(module, config, name, "v_head_dim"),
        kv_lora=_dim(module, config, name, "kv_lora_rank"),
        q_lora=lora_q,
        scale=float(scale) if isinstance(scale, (int, float)) else 1.0 / math.sqrt(n + p),
        interleaved=bool(rope_cfg) if rope_cfg is not None else None,
    )
    parts = ["q_a_proj", "q_b_proj"] if lora_q else ["q_proj"]
    tensors = {plan.weight(part): getattr(module, part).weight for part in (*parts, *_KV_O)}
    plan.bias = any(getattr(module, part).bias is not None for part in (parts[-1], *_KV_O))
    for field_, norm in (("q_norm", "q_a_layernorm"), ("kv_norm", "kv_a_layernorm")):
        if (field_ == "kv_norm" or lora_q) and (
            g := _gain(getattr(module, norm, None))
        ) is not None:
            tensors[plan.weight(norm)] = g
            setattr(plan, field_, plan.weight(norm))
    return plan, tensors


#: ``rope_interleave`` of a config.json that omits it (the config class's default: the hub's
#: DeepSeek-V3 config.json predates the key; DeepseekV2Config has none)
_ROPE_INTERLEAVE_DEFAULT = {"deepseek_v3": True}


def mla_plan_from_checkpoint(
    prefix: str, config: Mapping[str, Any], names: Set[str], layer: int
) -> MLAPlan | None:
    """The :class:`MLAPlan` of the MLA module at ``prefix`` of a checkpoint from its tensor
    names and (sub-)``config.json``, or None when ``prefix`` has no MLA projection (one of them
    missing is named by the dry run that reads the plan's tensors). Sizes come
    from ``num_attention_heads``, ``qk_nope_head_dim``, ``qk_rope_head_dim``, ``v_head_dim`` and
    ``kv_lora_rank`` (the tensors' widths are checked against them when read), the scale from
    :func:`mla_scale`; queries are low-rank when ``q_a_proj``/``q_b_proj`` are present (V3,
    ``q_lora_rank`` set), else ``q_proj`` (V2-Lite, ``q_lora_rank`` None)."""

    def has(part: str, what: str = "weight") -> bool:
        return f"{prefix}.{part}.{what}" in names

    if not any(has(part) for part in ("kv_a_proj_with_mqa", "kv_b_proj", "q_a_proj", "q_b_proj")):
        return None  # no MLA projection: not an MLA module (a missing one is named when read)
    lora_q = has("q_a_proj") or has("q_b_proj") or not has("q_proj")
    dims = {}
    for key in ("num_attention_heads", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
        value = config.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise UnsupportedModelError(
                f"{prefix}: config.json has no usable {key} ({value!r}), which an MLA module "
                "needs; fix config.json (save it with the model's config class)."
            )
        dims[key] = value
    kv_lora = config.get("kv_lora_rank")
    if not (isinstance(kv_lora, int) and not isinstance(kv_lora, bool) and kv_lora >= 0):
        raise UnsupportedModelError(
            f"{prefix}: config.json has no usable kv_lora_rank ({kv_lora!r}), which an MLA "
            "module needs; fix config.json (save it with the model's config class)."
        )
    n, p = dims["qk_nope_head_dim"], dims["qk_rope_head_dim"]
    interleaved = config.get(
        "rope_interleave", _ROPE_INTERLEAVE_DEFAULT.get(config.get("model_type"))
    )
    q_last = "q_b_proj" if lora_q else "q_proj"
    return MLAPlan(
        name=prefix,
        layer=layer,
        n_heads=dims["num_attention_heads"],
        nope=n,
        rope=p,
        v_dim=dims["v_head_dim"],
        kv_lora=kv_lora,
        q_lora=lora_q,
        scale=mla_scale(config, n + p),
        interleaved=bool(interleaved) if interleaved is not None else None,
        bias=any(has(part, "bias") for part in (q_last, *_KV_O)),
        q_norm=f"{prefix}.q_a_layernorm.weight" if lora_q and has("q_a_layernorm") else None,
        kv_norm=f"{prefix}.kv_a_layernorm.weight" if has("kv_a_layernorm") else None,
    )


def mla_heads_from_tensors(
    plan: MLAPlan,
    get: Callable[[str], Tensor],
    *,
    fold_norm: bool = False,
    materialize: bool = True,
) -> LayerHeads:
    """The :class:`~rankdecay.heads.LayerHeads` of one MLA module from its plan and a tensor
    lookup (a live module's parameters, or tensors read from a checkpoint): the one rule of
    both paths. Widths that do not fit the plan's sizes raise :class:`UnsupportedModelError`;
    the norm gains are read (``get(plan.q_norm)`` …) only with ``fold_norm``.

    ``materialize=False`` leaves the effective W_Q, W_K, W_V as meta tensors of their shapes and
    dtypes (no data): for a caller that takes the spectra from ``chains`` alone (checkpoint
    streaming), which then skips the d·q_lora·H·n and 2·d·kv_lora·H·n multiply-adds per layer
    (a DeepSeek-V3 layer: about 0.6 TFLOP and three 235 MB bfloat16 products)."""
    name = plan.name
    H, n, p, v, kv_lora = plan.n_heads, plan.nope, plan.rope, plan.v_dim, plan.kv_lora
    q_params = plan.q_params
    q_w = get(q_params[-1])  # q_b_proj (H·(n + p), q_lora) or q_proj (H·(n + p), d)
    kv_a = get(plan.weight("kv_a_proj_with_mqa"))  # (kv_lora + p, d)
    kv_b = get(plan.weight("kv_b_proj"))  # (H·(n + v), kv_lora)
    o_w = get(plan.weight("o_proj"))  # (d, H·v)
    q_a = get(q_params[0]) if plan.q_lora else None  # (q_lora, d)
    d = int(kv_a.shape[-1])
    expected = {
        "q": (tuple(q_w.shape), (H * (n + p), q_a.shape[0] if q_a is not None else d)),
        "kv_a_proj_with_mqa": (tuple(kv_a.shape), (kv_lora + p, d)),
        "kv_b_proj": (tuple(kv_b.shape), (H * (n + v), kv_lora)),
        "o_proj": (tuple(o_w.shape), (d, H * v)),
    }
    if q_a is not None:
        expected["q_a_proj"] = (tuple(q_a.shape), (q_a.shape[0], d))
    for what, (got, want) in expected.items():
        if got != want:
            raise UnsupportedModelError(
                f"{name}: {what} has shape {got}, expected {want} from heads={H}, nope={n}, "
                f"rope={p}, v={v}, kv_lora={kv_lora}, d={d}; register an adapter for it with "
                "rankdecay.register_adapter."
            )
    notes: list[str] = []
    # queries: per-head rows [h(n+p), h(n+p)+n) of q_b_proj / q_proj are the non-rotary part
    q_heads = q_w.reshape(H, n + p, q_w.shape[1])
    q_nope = q_heads[:, :n, :].mT  # (H, q_in, n)
    kv_heads = kv_b.reshape(H, n + v, kv_lora)
    k_up = kv_heads[:, :n, :].mT  # (H, kv_lora, n)
    v_up = kv_heads[:, n:, :].mT  # (H, kv_lora, v)
    latent = kv_a[:kv_lora].mT  # (d, kv_lora), shared by every head
    W_O = o_w.reshape(o_w.shape[0], H, v).permute(1, 2, 0)  # (H, v, d)
    if fold_norm:
        folded = []
        if plan.q_lora and plan.q_norm is not None:
            g = get(plan.q_norm)
            q_nope = q_nope * g.to(q_nope.dtype)[None, :, None]
            folded.append("q_a_layernorm")
        if plan.kv_norm is not None:
            g = get(plan.kv_norm)
            k_up = k_up * g.to(k_up.dtype)[None, :, None]
            v_up = v_up * g.to(v_up.dtype)[None, :, None]
            folded.append("kv_a_layernorm")
        notes.append(
            f"MLA latent norm gains folded between the factors ({', '.join(folded) or 'none found'})"
        )
    else:
        notes.append(
            "MLA latent norm gains (q_a_layernorm, kv_a_layernorm) not folded: raw weights "
            "(fold_norm=True folds them between the factors)"
        )

    def product(a: Tensor, b: Tensor) -> Tensor:  # (d, ·) @ (H, ·, m) → (H, d, m)
        if materialize:
            return a @ b
        shape, dtype = (b.shape[0], a.shape[0], b.shape[-1]), torch.promote_types(a.dtype, b.dtype)
        return torch.empty(shape, dtype=dtype, device="meta")

    if q_a is not None:
        q_down = q_a.mT  # (d, q_lora), shared by every head
        a_qk: tuple[Tensor, ...] = (q_down, q_nope)
        W_Q = product(q_down, q_nope)  # (H, d, n)
    else:
        a_qk = (q_nope,)
        W_Q = q_nope
    W_K = product(latent, k_up)  # (H, d, n)
    W_V = product(latent, v_up)  # (H, d, v)
    kv_params = (plan.weight("kv_a_proj_with_mqa"), plan.weight("kv_b_proj"))
    rotary_part = {
        "dims_per_head": p,
        "query": f"rows n..n+p of each head's block of {q_params[-1].rsplit('.', 1)[0]}",
        "key": f"rows {kv_lora}..{kv_lora + p} of {name}.kv_a_proj_with_mqa (one key head shared by all query heads)",
        "interleaved": plan.interleaved,
        "in_circuit": False,
    }
    notes.append(
        f"MLA: QK is the non-rotary part (nope, {n} dims per head) as a chain of factors; the "
        f"decoupled rotary part ({p} dims per head, one shared rotary key) is position-dependent "
        "and not in W_QK"
    )
    if plan.bias:
        notes.append("biases are not part of the circuits")
    return LayerHeads(
        layer=plan.layer,
        name=name,
        W_Q=W_Q,
        W_K=W_K,
        W_V=W_V,
        W_O=W_O,
        rotary=True,
        scale=plan.scale,
        qk_params=(*q_params, *kv_params),
        ov_params=(*kv_params, plan.weight("o_proj")),
        notes=tuple(notes),
        flags={"rotary": True, "mla": True, "rotary_part": rotary_part},
        chains={"qk": (a_qk, (latent, k_up)), "ov": ((latent, v_up), (W_O.mT,))},
        kind=plan.kind,
        family=plan.family,
    )


# ---------------------------------------------------------------------------------------------
# DeepSeek-V4: low-rank queries, one shared key/value head, grouped low-rank output projection
# ---------------------------------------------------------------------------------------------

#: the family name of DeepSeek-V4 layers (the row of rankdecay.attention_spec.ARCHITECTURES)
DSV4_FAMILY = "DeepSeek-V4 (shared-KV MQA, low-rank q, grouped low-rank output)"

#: what the compressor of a CSA/HCA layer adds to the attention (flag ``attention_form``)
DSV4_FORMS = {
    "compressed_sparse_attention": "compressed sparse attention (CSA): gated pools of key/value "
    "windows, selected per query by a lightning indexer, join the keys/values of the sliding "
    "window",
    "heavily_compressed_attention": "heavily compressed attention (HCA): gated pools of long "
    "key/value windows join the keys/values of the sliding window",
}


def is_dsv4_attention(module: nn.Module) -> bool:
    """True for a DeepSeek-V4-style module (Hugging Face ``DeepseekV4Attention``): ``q_a_proj``,
    ``q_b_proj``, ``kv_proj`` and ``o_b_proj`` linears, a grouped ``o_a_proj`` (a linear with an
    int ``n_groups``) and no ``kv_a_proj_with_mqa`` (that is V2/V3 MLA)."""
    if isinstance(getattr(module, "kv_a_proj_with_mqa", None), nn.Module):
        return False
    if not all(
        isinstance(getattr(module, p, None), nn.Linear)
        for p in ("q_a_proj", "q_b_proj", "kv_proj", "o_a_proj", "o_b_proj")
    ):
        return False
    groups = getattr(module.o_a_proj, "n_groups", None)
    return isinstance(groups, int) and not isinstance(groups, bool) and groups > 0


def _rope_dims(module: nn.Module, config: object | None, D: int) -> int:
    """Rotary dims per head: the layer's rope type's ``partial_rotary_factor`` (as the model's
    rotary embedding computes it), else the config's ``qk_rope_head_dim``."""
    params = getattr(config, "rope_parameters", None)
    kind = getattr(module, "rope_layer_type", None)
    if isinstance(params, dict) and isinstance(params.get(kind), dict):
        fraction = params[kind].get("partial_rotary_factor", 1.0)
        if isinstance(fraction, (int, float)):
            return int(D * fraction)
    p = getattr(config, "qk_rope_head_dim", None)
    return p if isinstance(p, int) and 0 <= p <= D else D


def _dsv4_flags(
    module: nn.Module, config: object | None, name: str, H: int, D: int, p: int, G: int, o_lora: int
) -> tuple[dict[str, object], list[str]]:
    """The flags and notes of one DeepSeek-V4 attention module (see :func:`dsv4_layer_heads`)."""
    notes: list[str] = []
    per = H // G
    flags: dict[str, object] = {"rotary": True, "mqa": True}
    if 0 < p < D:
        flags["partial_rotary"] = p / D
    flags["rotary_part"] = {
        "dims_per_head": p,
        "query": f"the trailing {p} of each head's {D} rows of {name}.q_b_proj",
        "key": f"the trailing {p} rows of {name}.kv_proj (one key head shared by all query heads)",
        "interleaved": True,
        "in_circuit": True,
        "value": "rotated by the key's position, rotated back by the query's: in the OV "
        "circuit at relative offset 0",
    }
    rope = getattr(config, "rope_parameters", None)
    rope = rope.get(getattr(module, "rope_layer_type", None)) if isinstance(rope, dict) else None
    rope = rope if isinstance(rope, dict) else {}
    factor = rope.get("attention_factor")
    if isinstance(factor, (int, float)) and rope.get("rope_type", "default") != "default":
        if factor != 1.0:  # cos, sin × m: the rotary dims of q·k (and of the value) by m²
            flags["rope_attention_factor"] = float(factor)
            notes.append(
                f"rotary cos/sin scaled by {factor:.4g}: the rotated part of q·kᵀ, and the "
                f"value's rotary dims, by {factor:.4g}² (not in the scale: partial rotary)"
            )
    flags["qk_norm"] = "per_head"
    flags["attention_sinks"] = isinstance(getattr(module, "sinks", None), Tensor)
    window = getattr(module, "sliding_window", None)
    if isinstance(window, int) and not isinstance(window, bool) and window > 0:
        flags["sliding_window"] = window
    flags["output_groups"] = {"groups": G, "rank": o_lora}
    layer_type = getattr(module, "layer_type", None)
    compressor = getattr(module, "compressor", None)
    if isinstance(compressor, nn.Module):
        flags["attention_form"] = DSV4_FORMS.get(
            str(layer_type),
            f"{type(compressor).__name__}: compressed keys/values join those of the window",
        )
        notes.append(
            f"not plain softmax attention ({flags['attention_form']}): the spectra describe "
            "W_Q·W_Kᵀ and W_V·W_O, not the model's attention map alone; the compressor's own "
            "projections are not extracted"
        )
    if not flags["attention_sinks"]:
        del flags["attention_sinks"]
    notes.append(
        f"DeepSeek-V4: one key/value head (kv_proj) read as both key and value by all {H} query "
        f"heads; QK over all {D} dims of a head at relative offset 0 (rotary on the trailing "
        f"{p}, interleaved); the value's rotary dims are rotated back at the query's position, "
        "so OV is exact for them at relative offset 0"
    )
    notes.append(
        "QK-norm (per_head): q_b_norm rescales each query head by 1/rms (no gain) and kv_norm "
        "each key/value row by 1/rms: per-token scalars, not in W_QK"
    )
    if "attention_sinks" in flags:
        notes.append(
            "attention sinks: a learned per-head logit joins each softmax (rows sum to < 1); "
            "not part of W_QK"
        )
    notes.append(
        f"output projection grouped low-rank: W_O^h = o_a_proj block of head h ({G} groups of "
        f"{per} heads, rank {o_lora}) then o_b_proj's columns of its group, materialized (the "
        "product in float64, kept in at least float32)"
    )
    hc = getattr(config, "hc_mult", None)
    if isinstance(hc, int) and hc > 1:
        notes.append(
            f"hyper-connections: the residual is {hc} streams; the attention reads a "
            "data-dependent mix of them (then input_layernorm) and its output is added to each "
            "with a data-dependent weight, outside W_V·W_O"
        )
    return flags, notes


def dsv4_layer_heads(
    name: str,
    module: nn.Module,
    config: object | None,
    layer: int,
    *,
    fold_norm: bool = False,
) -> LayerHeads:
    """The per-head QK and OV circuits of one DeepSeek-V4 attention module.

    The module (``nn.Linear`` weights out×in, y = x Wᵀ; H heads of size D, G output groups of
    H/G heads, o_lora the per-group output rank) computes for a residual row x:

        c_q = norm_q(x W_qaᵀ)                       q_a_proj (q_lora, d), q_a_norm (gain γ_q)
        q^h = rms_h(c_q W_qb^hᵀ)                    q_b_proj (H·D, q_lora), q_b_norm (no gain)
        kv  = norm_kv(x W_kvᵀ)                      kv_proj (D, d), kv_norm (gain γ_kv): the one
                                                    key head, and the one value head, of all H
        s^h_ij = scale · q^h_i · kv_j (rotary on the trailing p dims of q and kv), a learned
        sink logit per head in each softmax; the context's trailing p dims are rotated back by
        the query's position, then
        o_i = Σ_h ctx^h_i W_a^hᵀ W_b^{g(h)}ᵀ           o_a_proj (G·o_lora, H·D/G, grouped: head h
                                                    is block (g, ·) × (l, ·) of group g = h // (H/G)),
                                                    o_b_proj (d, G·o_lora), columns of group g

    In the convention of :mod:`rankdecay.heads` (circuits A·Bᵀ):

    - QK: W_QK^h = (W_qaᵀ W_qb^hᵀ)(W_kvᵀ)ᵀ, all D dims, at relative offset 0 (the rotary dims
      included, as for other partial-rotary families), as the chain
      ((W_qaᵀ (d, q_lora), W_qb^hᵀ (H, q_lora, D)), (W_kvᵀ (d, D),)); W_Q materialized (H, d, D),
      W_K the shared key head (a view, ``kv_head_index`` all 0).
    - OV: W_OV^h = W_kvᵀ · W_O^h with W_O^h = W_a^hᵀ W_b^{g(h)}ᵀ (D, d), materialized (H, D, d)
      (multiplied in float64, stored in at least float32: a bfloat16 product would round the
      circuit); W_V the shared value head (the same kv_proj). The value's trailing p dims are rotated by
      the key's position and back by the query's: the circuit is exact for them at relative
      offset 0 (flag ``rotary_part``).

    Norm gains γ_q (between W_qa and W_qb) and γ_kv (after W_kv) are not folded by default (raw
    weights); ``fold_norm=True`` folds them (the per-token 1/rms scalars stay out, and q_b_norm
    has no gain: flag ``qk_norm`` "per_head"). Sinks, sliding window and the compressor of
    CSA/HCA layers are flagged (``attention_sinks``, ``sliding_window``, ``attention_form``).
    """
    H = _dim(module, config, name, "num_heads", "num_attention_heads")
    D = _dim(module, config, name, "head_dim")
    q_a, q_b, kv, o_a, o_b = (
        module.q_a_proj,
        module.q_b_proj,
        module.kv_proj,
        module.o_a_proj,
        module.o_b_proj,
    )
    G = int(o_a.n_groups)
    d = q_a.in_features
    q_lora = q_a.out_features
    if H % G or o_a.out_features % G:
        raise UnsupportedModelError(
            f"{name}: {H} heads or o_a_proj's {o_a.out_features} outputs do not split into "
            f"{G} groups; register an adapter for it with rankdecay.register_adapter."
        )
    o_lora = o_a.out_features // G
    expected = {
        "q_b_proj": ((q_b.out_features, q_b.in_features), (H * D, q_lora)),
        "kv_proj": ((kv.out_features, kv.in_features), (D, d)),
        "o_a_proj": ((o_a.in_features,), (H * D // G,)),
        "o_b_proj": ((o_b.out_features, o_b.in_features), (d, G * o_lora)),
    }
    for what, (got, want) in expected.items():
        if got != want:
            raise UnsupportedModelError(
                f"{name}: {what} has shape {got}, expected {want} from heads={H}, head_dim={D}, "
                f"groups={G}, d={d}; register an adapter for it with rankdecay.register_adapter."
            )
    p = _rope_dims(module, config, D)
    notes: list[str] = []
    q_up = q_b.weight.reshape(H, D, q_lora).mT  # (H, q_lora, D)
    key = kv.weight.mT  # (d, D): the one key head, and the one value head
    value = key
    if fold_norm:
        folded = []
        if (g := _gain(getattr(module, "q_a_norm", None))) is not None:
            q_up = q_up * g.to(q_up.dtype)[None, :, None]
            folded.append("q_a_norm")
        if (g := _gain(getattr(module, "kv_norm", None))) is not None:
            key = value = key * g.to(key.dtype)
            folded.append("kv_norm")
        notes.append(
            f"DeepSeek-V4 norm gains folded between the factors ({', '.join(folded) or 'none found'})"
        )
    else:
        notes.append(
            "DeepSeek-V4 norm gains (q_a_norm, kv_norm) not folded: raw weights "
            "(fold_norm=True folds them)"
        )
    q_down = q_a.weight.mT  # (d, q_lora), shared by every head
    W_Q = q_down @ q_up  # (H, d, D)
    W_K = key.expand(H, d, D)
    W_V = value.expand(H, d, D)
    # head h = (group g, local l): o_a rows [g·o_lora, (g+1)·o_lora), columns [l·D, (l+1)·D)
    per = H // G
    W_a = o_a.weight.reshape(G, o_lora, per, D).permute(0, 2, 3, 1)  # (G, per, D, o_lora)
    W_b = o_b.weight.reshape(d, G, o_lora).permute(1, 2, 0)  # (G, o_lora, d)
    # the product in float64, kept in at least float32: a bfloat16 W_O would round the OV
    # circuit itself to bfloat16 (relative 4e-3), far above the spectra's precision
    dt = torch.promote_types(o_a.weight.dtype, torch.float32)
    W_O = (W_a.double() @ W_b[:, None].double()).reshape(H, D, d).to(dt)  # (H, D, d)
    scale = getattr(module, "scaling", None)
    scale = float(scale) if isinstance(scale, (int, float)) else 1.0 / math.sqrt(D)
    flags, more = _dsv4_flags(module, config, name, H, D, p, G, o_lora)
    notes.extend(more)
    if any(getattr(m, "bias", None) is not None for m in (q_a, q_b, kv, o_a, o_b)):
        notes.append("biases are not part of the circuits")
    q_params = (f"{name}.q_a_proj.weight", f"{name}.q_b_proj.weight")
    kv_param = f"{name}.kv_proj.weight"
    return LayerHeads(
        layer=layer,
        name=name,
        W_Q=W_Q,
        W_K=W_K,
        W_V=W_V,
        W_O=W_O,
        kv_head_index=(0,) * H,
        rotary=True,
        scale=scale,
        qk_params=(*q_params, kv_param),
        ov_params=(kv_param, f"{name}.o_a_proj.weight", f"{name}.o_b_proj.weight"),
        notes=tuple(notes),
        flags=flags,
        chains={"qk": ((q_down, q_up), (key,))},
        family=DSV4_FAMILY,
    )
