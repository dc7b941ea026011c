"""Regularizers that steer attention rank: parameter roles, role-aware weight decay, Low-Rank Decay.

Parameter roles
---------------
:func:`param_roles` gives every parameter one role in ``ROLES``:

- ``attn_qk`` / ``attn_ov``: tensors holding W_Q, W_K / W_V, W_O, as listed by the attention
  adapters of :mod:`rankdecay.heads` (``LayerHeads.qk_params`` / ``ov_params``) — not guessed
  from names. **Fused rule**: a tensor that holds both Q/K and V rows (GPT-2 ``c_attn``,
  ``nn.MultiheadAttention.in_proj_weight``) is listed in both; an optimizer cannot give one
  tensor two weight decays, so it gets ``attn_qk`` (two thirds of its rows are Q/K, and the QK
  circuit is what rank steering is mostly about). Its V rows therefore get the ``attn_qk``
  decay; :class:`LowRankDecay` is not affected (it reaches the Q, K and V blocks separately).
- ``bias``: every bias vector — a parameter named "…bias…" with at most one non-singleton dim,
  including the shift β of a LayerNorm (the same rule as rankdecay's own TinyTransformer).
- ``norm``: the other parameters of a normalization module (LayerNorm, RMSNorm, GroupNorm,
  BatchNorm and any module class whose name ends in "Norm"): the gains.
- ``embedding``: parameters of ``nn.Embedding`` modules or of modules inside a module whose class
  name contains "Embedding" (e.g. a ViT patch projection), and bare parameters whose name says
  embed / cls_token / mask_token.
- ``mlp``: the remaining matrices (≥ 2-D) of a transformer block (the feed-forward weights):
  the block is the attention module's nearest numbered ancestor (``layers.3``; its parent when
  none is numbered), widened to the next numbered ancestor while it holds no matrix besides
  attention — T5's ``block.N.layer.0`` holds only the attention, its feed-forward sits in the
  sibling ``layer.1``. Matrices *inside* an extracted attention module that are not its factors
  (a relative-position table, Swin's ``relative_position_bias_table``) are ``other``.
- ``lora_a`` / ``lora_b``: the factors A (r×d_in) and B (d_out×r) of PEFT LoRA adapters
  (``…lora_A.<adapter>.weight``, ``…lora_B.…``, and the embedding variants) — weight decay on
  them is exactly the L2-on-factors setting of the theory; the frozen base weights keep their
  attention / mlp roles. Alias ``"lora"`` names both in a weight-decay mapping.
- ``other``: everything else (readout / classifier heads, poolers, …), and on purpose the
  parameters an extractor lists in ``LayerHeads.score_params``: score terms of an attention
  module outside W_Q·W_Kᵀ (XLNet's positional key projection ``r``, ``r_r_bias``,
  ``r_s_bias``, ``r_w_bias``, ``seg_embed``; Funnel's ``r_kernel``, ``r_r_bias``, ``r_s_bias``,
  ``r_w_bias``, ``seg_embed``; CPM-Ant's shared ``position_bias.relative_attention_bias``),
  which would otherwise pass for MLP weights.

Attention modules that look like attention but that no adapter extracts are named in an
:class:`~rankdecay.heads.UnrecognizedAttentionWarning` (their weights would otherwise fall to
``mlp``/``other`` without a word); ``strict=True`` raises instead.

A model (or a submodule) can define ``rankdecay_param_roles() -> dict[str, str]`` to name its own
roles (rankdecay's TinyTransformer does); those win, and parameters it leaves out fall back to the
rules above.

Coupled vs decoupled weight decay
---------------------------------
``param_groups(model, {"attn_qk": λ, "default": 0.1})`` returns torch param groups; what the
``weight_decay`` of a group *means* is the optimizer's:

- ``torch.optim.SGD`` and ``torch.optim.Adam``: **coupled** L2 — λθ is added to the gradient, i.e.
  the loss gains (λ/2)‖θ‖². With SGD this is exactly the L2-regularized loss of the theory
  (L(ABᵀ) + (λ/2)(‖A‖² + ‖B‖²), whose minimizers are nuclear-norm regularized); with Adam the
  decay is then rescaled by the adaptive preconditioner.
- ``torch.optim.AdamW``: **decoupled** — θ ← θ(1 − lr·λ) before the Adam step; not the gradient of
  any fixed penalty once Adam normalizes the loss gradient.

Low-Rank Decay
--------------
:class:`LowRankDecay` is a decoupled step applied after each optimizer step, with
c = strength·lr (``scale_by_lr=True``, lr read from the parameter's optimizer group at every step,
so schedulers work) or c = strength:

- ``granularity="matrix"``: W ← W − c·polar(W) (``mode="subtract"``; σᵢ → σᵢ − c with the singular
  vectors kept) or W ← U max(Σ − c, 0) Vᵀ (``mode="svt"``, the proximal step of c‖W‖_*), on each
  attention matrix W_Q, W_K, W_V, W_O of a layer (all heads together) and, for ``target="matrices"``,
  on the MLP matrices as stored.
- ``granularity="head"``: the same on each head's slice W_Q^h, W_K^h, W_V^h (d_model×d_head),
  W_O^h (d_head×d_model); with GQA each shared key/value head once.
- ``granularity="product"``: a step along −∇ of Σ_h ‖A_h B_hᵀ‖_* for each head's QK pair
  (A, B) = (W_Q^h, W_K^h) (and OV pair (W_V^h, W_O^hᵀ) for ``target="attention"``):
  with the thin SVD A Bᵀ = U Σ Vᵀ from :func:`rankdecay.spectra.factored_svd` (float64),
  A ← A − c·U Vᵀ B, B ← B − c·V Uᵀ A — an explicit nuclear-norm decay on the circuit itself
  (singular values ≤ max(d, r)·ε·σ₁ are left out: the minimum-norm subgradient).

Per-head and per-matrix views come from the adapters of :mod:`rankdecay.heads` as differentiable
slices/reshapes of the parameters. An update Δ computed on a view X = P(θ) is written back through
autograd: θ ← θ − ∇_θ⟨Δ, P(θ)⟩ = θ − Pᵀ(Δ). Since P only selects, reshapes and transposes entries
(injectively: shared GQA heads are taken once for matrix/head granularity), P Pᵀ = I and the view
moves by exactly −Δ, whatever the storage (fused qkv, in×out Conv1D, transposed). For ``product``
the shared key head's update is the sum over its query heads — the exact gradient of Σ_h ‖·‖_*.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .errors import RankdecayError, RankdecayTypeError, RankdecayValueError
from .heads import (
    LayerHeads,
    UnsupportedModelError,
    attention_heads,
    check_coverage,
    collect_attention,
    find_adapter,
)
from .spectra import factored_svd
from .update import low_rank_decay_delta

__all__ = [
    "ROLES",
    "LowRankDecay",
    "check_groups",
    "check_lrd_options",
    "describe_groups",
    "param_groups",
    "param_roles",
]

ROLES: tuple[str, ...] = (
    "attn_qk",
    "attn_ov",
    "mlp",
    "embedding",
    "norm",
    "bias",
    "lora_a",
    "lora_b",
    "other",
)
_ALIASES = {"attention": ("attn_qk", "attn_ov"), "lora": ("lora_a", "lora_b")}
_LORA = re.compile(r"(?:^|\.)lora_(?:embedding_)?(?P<side>[AB])(?:\.|$)")


def _kind(ok_type: bool) -> type[RankdecayError]:
    """The error kind of a bad value: wrong type → TypeError, out of range → ValueError."""
    return RankdecayValueError if ok_type else RankdecayTypeError


# --------------------------------------------------------------------------------------- roles


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _block_of(attention: str, matrices: Sequence[str], attn_modules: set[str]) -> str:
    """The transformer block of the attention module ``attention`` (see ``mlp`` in the module
    docstring): its nearest numbered ancestor, widened while that holds no matrix (``matrices``:
    the names of the model's ≥ 2-D parameters) outside attention modules."""
    parts = attention.split(".")
    numbered = [i for i in range(len(parts) - 1) if parts[i].isdigit()]
    if not numbered:
        return _parent(attention)
    for depth in reversed(numbered):
        block = ".".join(parts[: depth + 1])
        inside = [n for n in matrices if n.startswith(block + ".")]
        if any(not any(n.startswith(a + ".") for a in attn_modules if a) for n in inside):
            return block
    return ".".join(parts[: numbered[-1] + 1])


def _is_norm(module: nn.Module) -> bool:
    norm_types: tuple[type, ...] = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
    norm_types += (nn.modules.batchnorm._NormBase,)
    if hasattr(nn, "RMSNorm"):
        norm_types += (nn.RMSNorm,)
    if isinstance(module, norm_types):
        return True
    cls = type(module).__name__
    return cls.endswith(("Norm", "Norm1d", "Norm2d")) or "LayerNorm" in cls or "RMSNorm" in cls


def _is_bias(pname: str, p: Tensor) -> bool:
    return "bias" in pname.lower() and sum(1 for s in p.shape if s != 1) <= 1


def _protocol_roles(model: nn.Module) -> dict[str, str]:
    """Roles from ``rankdecay_param_roles()`` on the model or on the outermost submodules defining it."""
    out: dict[str, str] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        fn = getattr(module, "rankdecay_param_roles", None)
        if callable(fn):
            roles = fn()
            if not isinstance(roles, Mapping):
                raise RankdecayTypeError(
                    f"{type(module).__name__}.rankdecay_param_roles() must return a dict name → role; "
                    "fix the model's method."
                )
            for name, role in roles.items():
                if role not in ROLES:
                    raise RankdecayValueError(
                        f"{type(module).__name__}.rankdecay_param_roles() gives {name!r} the unknown role "
                        f"{role!r}; use one of {', '.join(ROLES)}."
                    )
                out[_join(prefix, name)] = role
            return
        for child_name, child in module.named_children():
            visit(child, _join(prefix, child_name))

    visit(model, "")
    return out


def _attention_layers(model: nn.Module, *, strict: bool = False) -> list[LayerHeads]:
    """The model's attention layers (empty if it has none), warning about — or with
    ``strict=True`` raising on — attention-like modules that are not extracted."""
    try:
        with torch.no_grad():
            found = collect_attention(model)
    except UnsupportedModelError:
        return []
    check_coverage(model, found.unrecognized, strict=strict, stacklevel=4)
    return found.layers


def param_roles(model: nn.Module, *, strict: bool = False) -> dict[str, str]:
    """Role of every parameter of ``model`` (names as in ``model.named_parameters()``).

    Returns:
        dict name → one of ``ROLES`` (attn_qk, attn_ov, mlp, embedding, norm, bias, lora_a,
        lora_b, other), in ``named_parameters`` order; see the module docstring for the rules
        (fused qkv → attn_qk). A module that looks like attention but is not extracted gives an
        :class:`~rankdecay.heads.UnrecognizedAttentionWarning` (``strict=True``: an
        :class:`~rankdecay.heads.UnsupportedModelError`).
    """
    if not isinstance(model, nn.Module):
        raise RankdecayTypeError(
            f"param_roles needs an nn.Module, got {type(model).__name__}; pass the model itself."
        )
    names = [n for n, _ in model.named_parameters()]
    known = set(names)
    roles: dict[str, str] = {n: r for n, r in _protocol_roles(model).items() if n in known}
    for n in names:
        m = _LORA.search(n)
        if m is not None and n not in roles:
            roles[n] = "lora_a" if m["side"] == "A" else "lora_b"
    attn_modules: set[str] = set()
    for layer in _attention_layers(model, strict=strict):
        for n in layer.qk_params:
            if n in known:
                roles.setdefault(n, "attn_qk")
        for n in layer.ov_params:
            if n in known:
                roles.setdefault(n, "attn_ov")  # a fused tensor already got attn_qk above
        for n in layer.score_params:  # score terms outside W_Q·W_Kᵀ (XLNet's r, r_*_bias)
            if n in known:
                roles.setdefault(n, "other")
        attn_modules.add(layer.name)
    modules = dict(model.named_modules())
    matrices = [n for n, p in model.named_parameters() if p.dim() >= 2]
    attn_blocks = {_block_of(m, matrices, attn_modules) for m in attn_modules} - {""}
    embedding_scopes = [
        name for name, m in modules.items() if name and "Embedding" in type(m).__name__
    ]
    for full in names:
        if full in roles:
            continue
        mod_name, pname = _parent(full), full.rsplit(".", 1)[-1]
        module = modules.get(mod_name, model)
        p = model.get_parameter(full)
        lower = pname.lower()
        if _is_bias(pname, p):
            role = "bias"
        elif _is_norm(module):
            role = "norm"
        elif (
            isinstance(module, nn.Embedding)
            or any(full.startswith(s + ".") for s in embedding_scopes)
            or "embed" in lower
            or lower in ("cls_token", "mask_token", "dist_token")
        ):
            role = "embedding"
        elif p.dim() >= 2 and any(full.startswith(a + ".") for a in attn_modules if a):
            role = "other"  # inside an attention module, not a factor: a score term
        elif p.dim() >= 2 and any(full.startswith(b + ".") for b in attn_blocks):
            role = "mlp"
        else:
            role = "other"
        roles[full] = role
    return {n: roles[n] for n in names}


# -------------------------------------------------------------------------------- param groups


def _decay_by_role(
    weight_decay: float | Mapping[str, float], present: Iterable[str]
) -> dict[str, float]:
    present = list(present)
    if isinstance(weight_decay, Mapping):
        unknown = [k for k in weight_decay if k not in (*ROLES, *_ALIASES, "default")]
        if unknown:
            raise RankdecayValueError(
                f"unknown weight-decay key(s) {', '.join(map(repr, unknown))}; use roles "
                f"{', '.join(ROLES)}, 'attention' (both attention roles), 'lora' (both LoRA factors) "
                "or 'default'."
            )
        values: dict[str, float] = {}
        for role in present:
            if role in weight_decay:
                values[role] = weight_decay[role]
            elif any(
                role in members and alias in weight_decay for alias, members in _ALIASES.items()
            ):
                alias = next(a for a, m in _ALIASES.items() if role in m and a in weight_decay)
                values[role] = weight_decay[alias]
            elif "default" in weight_decay:
                values[role] = weight_decay["default"]
            else:
                raise RankdecayValueError(
                    f"no weight decay given for role {role!r} and no 'default'; add "
                    f"{role!r} or 'default' to the mapping."
                )
    else:
        values = {role: weight_decay for role in present}
    for role, v in values.items():
        number = not isinstance(v, bool) and isinstance(v, (int, float))
        if not number or not math.isfinite(v) or v < 0:
            raise _kind(number)(
                f"weight decay for role {role!r} must be a finite number ≥ 0, got {v!r}; fix the value."
            )
    return {r: float(v) for r, v in values.items()}


def param_groups(
    model: nn.Module,
    weight_decay: float | Mapping[str, float] = 0.0,
    *,
    roles: Mapping[str, str] | None = None,
    strict: bool = False,
) -> list[dict[str, Any]]:
    """Torch optimizer param groups, one per role present, with a per-role weight decay.

    Args:
        model: the model; every parameter with ``requires_grad`` lands in exactly one group
            (frozen parameters are left out).
        weight_decay: one value for every role, or a mapping role → value with optional
            ``"attention"`` (both attention roles) and ``"default"`` (all roles not named);
            e.g. ``{"attn_qk": 0.0, "norm": 0.0, "bias": 0.0, "default": 0.1}``.
        roles: name → role to use instead of :func:`param_roles` (missing names fall back to it).
        strict: raise :class:`~rankdecay.heads.UnsupportedModelError` instead of warning when a
            module looks like attention but is not extracted (its weights would get no
            attention role).

    Returns:
        list of dicts ``{"params": [...], "weight_decay": float, "role": str, "names": [...]}``
        in ``ROLES`` order (torch optimizers keep the extra keys). The meaning of weight_decay
        is the optimizer's: coupled L2 for SGD/Adam, decoupled for AdamW (module docstring).
    """
    auto = param_roles(model, strict=strict)
    if roles is not None:
        bad = {n: r for n, r in roles.items() if r not in ROLES}
        if bad:
            raise RankdecayValueError(f"unknown role(s) {bad}; use one of {', '.join(ROLES)}.")
        missing = [n for n in roles if n not in auto]
        if missing:
            raise RankdecayValueError(
                f"roles name parameter(s) the model does not have: {', '.join(missing[:3])}; "
                "use names from model.named_parameters()."
            )
        auto = {n: roles.get(n, r) for n, r in auto.items()}
    by_role: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            by_role.setdefault(auto[name], []).append((name, p))
    if not by_role:
        raise RankdecayValueError(
            f"{type(model).__name__} has no trainable parameters; unfreeze some before building an optimizer."
        )
    decay = _decay_by_role(weight_decay, by_role)
    groups = [
        {
            "params": [p for _, p in by_role[role]],
            "weight_decay": decay[role],
            "role": role,
            "names": [n for n, _ in by_role[role]],
        }
        for role in ROLES
        if role in by_role
    ]
    check_groups(groups)
    return groups


def check_groups(groups: Iterable[Mapping[str, Any]]) -> None:
    """Raise :class:`RankdecayValueError` if a group has no ``params`` or a parameter (the same
    tensor) appears in two groups or twice in one."""
    seen: dict[int, str] = {}
    for i, g in enumerate(groups):
        if not isinstance(g, Mapping) or "params" not in g:
            raise RankdecayValueError(
                f"param group {i} has no 'params'; each group is a dict with a 'params' list, as "
                "torch.optim and param_groups() build them."
            )
        params = g["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        names = list(g.get("names", []))
        label = g.get("role", f"group {i}")
        for j, p in enumerate(params):
            pname = names[j] if j < len(names) else f"#{j}"
            where = f"{pname} of {label}"
            if id(p) in seen:
                raise RankdecayValueError(
                    f"parameter {where} is also in {seen[id(p)]}; every parameter must be in exactly "
                    "one group — remove the duplicate."
                )
            seen[id(p)] = where


def describe_groups(groups: Iterable[Mapping[str, Any]]) -> str:
    """A readable table of param groups: role, tensors, parameters (elements), weight decay, lr."""
    groups = list(groups)
    check_groups(groups)
    rows = [("role", "tensors", "parameters", "weight decay", "lr", "examples")]
    total_t = total_n = 0
    for i, g in enumerate(groups):
        params = g["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        n = sum(p.numel() for p in params)
        total_t += len(params)
        total_n += n
        names = list(g.get("names", []))
        ex = ", ".join(names[:2]) + (f", … (+{len(names) - 2})" if len(names) > 2 else "")
        lr = g.get("lr")
        rows.append(
            (
                str(g.get("role", f"group {i}")),
                str(len(params)),
                f"{n:,}",
                f"{g.get('weight_decay', 0.0):g}",
                "" if lr is None else f"{float(lr):g}",
                ex,
            )
        )
    rows.append(("total", str(total_t), f"{total_n:,}", "", "", ""))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        cells = [
            r[c].rjust(widths[c]) if c in (1, 2, 3, 4) else r[c].ljust(widths[c])
            for c in range(len(r))
        ]
        lines.append("  ".join(cells).rstrip())
        if k == 0 or k == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ------------------------------------------------------------------------------ Low-Rank Decay

TARGETS = ("qk", "attention", "matrices")
GRANULARITIES = ("matrix", "head", "product")
MODES = ("subtract", "svt")
POLARS = ("svd", "newton_schulz", "newton_schulz_fixed")


@dataclass
class _View:
    """One matrix (or batch of head matrices) the decay acts on: which layer/matrix and its owner."""

    key: tuple[Any, ...]  # ("attn", layer, "Q") / ("param", name)
    owner: str  # parameter name the view reads from
    #: when the view is a plain strided view of the owner's storage (no copy): its
    #: (size, stride, storage offset) and the owner's (shape, stride, offset) it was seen with —
    #: then the update is applied in place on that view, without autograd.
    strided: tuple[Any, ...] | None = None


def _strided_layout(X: Tensor, p: Tensor) -> tuple[Any, ...] | None:
    """The layout of X if X is an injective view of p's storage (e.g. a transpose), else None."""
    if X.untyped_storage().data_ptr() != p.untyped_storage().data_ptr():
        return None
    if any(st == 0 and sz > 1 for st, sz in zip(X.stride(), X.shape)):
        return None  # broadcast: not injective
    return (
        (tuple(X.shape), tuple(X.stride()), X.storage_offset()),
        (tuple(p.shape), tuple(p.stride()), p.storage_offset()),
    )


def _read_elsewhere(layer: LayerHeads) -> set[str]:
    """The matrices of ``layer`` that another view already is: a KV-shared layer's W_K and W_V
    (flag ``kv_shared``: its producer's, a layer of their own) and W_V = W_K (flag
    ``values_from_keys``). One stored matrix is decayed once per step."""
    if "kv_shared" in layer.flags:
        return {"K", "V"}
    return {"V"} if layer.flags.get("values_from_keys") else set()


def _unique_kv(W: Tensor, kv_index: tuple[int, ...] | None) -> Tensor:
    """(H, d, r) per query head → (H_kv, d, r), each shared key/value head once."""
    if kv_index is None:
        return W
    firsts = [kv_index.index(j) for j in sorted(set(kv_index))]
    return W[firsts]


def _attn_view(layer: LayerHeads, which: str, granularity: str) -> Tensor:
    """Differentiable view of W_Q / W_K / W_V / W_O of one layer.

    head: (H, d, r) for Q, (H_kv, d, r) for K, V, (H, r, d) for O;
    matrix: (d, H·r) for Q, (d, H_kv·r) for K, V, (H·r, d) for O.
    """
    if which == "Q":
        W = layer.W_Q
    elif which == "K":
        W = _unique_kv(layer.W_K, layer.head_index("qk"))
    elif which == "V":  # the value heads may be grouped differently from the key heads
        W = _unique_kv(layer.W_V, layer.head_index("ov"))
    else:
        W = layer.W_O
    if granularity == "head":
        return W
    if which == "O":
        return W.reshape(W.shape[0] * W.shape[1], W.shape[2])
    return W.permute(1, 0, 2).reshape(W.shape[1], W.shape[0] * W.shape[2])


def check_lrd_options(
    strength: float,
    target: str | Callable[..., bool],
    granularity: str,
    mode: str,
    polar: str,
    polar_steps: int = 5,
) -> None:
    """Raise a :class:`RankdecayValueError` (or :class:`RankdecayTypeError`) naming the first bad
    Low-Rank Decay option: the checks of :class:`LowRankDecay`, which the ensemble runs per member."""
    number = not isinstance(strength, bool) and isinstance(strength, (int, float))
    if not number or not math.isfinite(strength) or strength < 0:
        raise _kind(number)(
            f"LowRankDecay strength must be a finite number ≥ 0, got {strength!r}; e.g. strength=5e-3."
        )
    if not callable(target) and target not in TARGETS:
        raise RankdecayValueError(
            f"unknown LowRankDecay target {target!r}; choose {', '.join(map(repr, TARGETS))} or a callable (name, param) -> bool."
        )
    if granularity not in GRANULARITIES:
        raise RankdecayValueError(
            f"unknown LowRankDecay granularity {granularity!r}; choose {', '.join(map(repr, GRANULARITIES))}."
        )
    if mode not in MODES:
        raise RankdecayValueError(
            f"unknown LowRankDecay mode {mode!r}; choose {', '.join(map(repr, MODES))}."
        )
    if polar not in POLARS:
        raise RankdecayValueError(
            f"unknown polar method {polar!r}; choose {', '.join(map(repr, POLARS))}."
        )
    if mode == "svt" and polar != "svd" and granularity != "product":
        raise RankdecayValueError(
            "mode='svt' needs the singular values, which Newton–Schulz does not give; use polar='svd'."
        )
    if granularity == "product" and mode != "subtract":
        raise RankdecayValueError(
            "granularity='product' is a gradient step on the circuits' nuclear norm (mode='subtract'); "
            "use mode='subtract' or another granularity for 'svt'."
        )
    if granularity == "product" and target not in ("qk", "attention"):
        raise RankdecayValueError(
            "granularity='product' acts on the QK (and OV) circuits; use target='qk' or 'attention'."
        )
    if callable(target) and granularity != "matrix":
        raise RankdecayValueError(
            "a callable target selects stored tensors, which have no heads; use granularity='matrix' "
            "or target='qk'/'attention'."
        )
    integer = not isinstance(polar_steps, bool) and isinstance(polar_steps, int)
    if not integer or polar_steps < 0:
        raise _kind(integer)(
            f"LowRankDecay polar_steps must be an integer ≥ 0, got {polar_steps!r}; e.g. polar_steps=5."
        )


class LowRankDecay:
    """Low-Rank Decay: a decoupled step that shrinks the singular values of chosen weights.

    Args:
        model_or_named_params: a model, or (name, parameter) pairs / a dict (then only
            ``target="matrices"`` or a callable, with ``granularity="matrix"``).
        strength: c per step (times the group's lr when ``scale_by_lr``); ≥ 0.
        target: "qk" (W_Q, W_K of every attention layer), "attention" (W_Q, W_K, W_V, W_O),
            "matrices" (the attention matrices and every mlp-role matrix), or a callable
            ``(name, param) -> bool`` choosing stored ≥2-D parameters (matrix granularity).
        granularity: "matrix", "head" or "product" (see the module docstring).
        polar: "svd" (exact), "newton_schulz" (subtract mode only; ``tol``/``max_iter`` passed to
            :func:`rankdecay.polar.polar`) or "newton_schulz_fixed" (``polar_steps`` cubic steps
            from W/‖W‖_F, unconverged, as the public LRD code; subtract mode only). Product
            granularity always uses the exact factored SVD.
        mode: "subtract" (W − c·polar(W)) or "svt" (soft-threshold the singular values by c;
            needs polar="svd"; not for product).
        scale_by_lr: c = strength·lr (default) or c = strength.
        strict: at construction, a module that looks like attention but is not extracted gives
            an :class:`~rankdecay.heads.UnrecognizedAttentionWarning`; ``strict=True`` raises
            :class:`~rankdecay.heads.UnsupportedModelError` instead.
        polar_steps: the K of ``polar="newton_schulz_fixed"`` (default 5).

    ``attach(optimizer)`` registers a step post-hook (the decay runs after every
    ``optimizer.step()``, with each parameter's current group lr); ``detach()`` removes it;
    ``step(lr)`` applies one decay step by hand. ``last_info`` holds the last step's diagnostics.
    """

    def __init__(
        self,
        model_or_named_params: nn.Module
        | Mapping[str, nn.Parameter]
        | Iterable[tuple[str, nn.Parameter]],
        strength: float,
        target: str | Callable[[str, nn.Parameter], bool] = "qk",
        granularity: str = "matrix",
        polar: str = "svd",
        mode: str = "subtract",
        scale_by_lr: bool = True,
        tol: float = 1e-3,
        max_iter: int | None = None,
        strict: bool = False,
        polar_steps: int = 5,
    ) -> None:
        check_lrd_options(strength, target, granularity, mode, polar, polar_steps)
        self.strength = float(strength)
        self.target = target
        self.granularity = granularity
        self.polar = polar
        self.mode = mode
        self.scale_by_lr = bool(scale_by_lr)
        self.tol = float(tol)
        self.max_iter = max_iter
        self.strict = bool(strict)
        self.polar_steps = polar_steps
        self.last_info: dict[str, Any] = {}
        self._handle: Any = None
        self._adapter: Any = None
        self._optimizer: torch.optim.Optimizer | None = None

        if isinstance(model_or_named_params, nn.Module):
            self.model: nn.Module | None = model_or_named_params
            named = dict(model_or_named_params.named_parameters())
        else:
            self.model = None
            items = (
                model_or_named_params.items()
                if isinstance(model_or_named_params, Mapping)
                else model_or_named_params
            )
            named = {}
            ids: dict[int, str] = {}
            for name, p in items:
                if not isinstance(p, Tensor):
                    raise RankdecayTypeError(
                        f"{name!r} is not a tensor; pass (name, parameter) pairs or a model."
                    )
                if id(p) in ids:
                    raise RankdecayValueError(
                        f"the same parameter is given twice ({ids[id(p)]!r} and {name!r}); pass each once."
                    )
                ids[id(p)] = name
                named[name] = p
            if not callable(target) and target != "matrices":
                raise RankdecayValueError(
                    f"target {target!r} needs the model's attention layout; pass the model instead of named parameters."
                )
            if granularity != "matrix":
                raise RankdecayValueError(
                    "head/product granularity needs the model's attention layout; pass the model instead of named parameters."
                )
        self._params = named
        self._views: list[_View] = []  # stored-parameter views and attention views
        self._attn_which: tuple[str, ...] = ()
        self._circuits: tuple[str, ...] = ()
        self._build()
        if not self._views:
            raise RankdecayValueError(
                f"LowRankDecay(target={target!r}) selects no trainable matrix in this model; "
                "check the target (or the model's attention adapter)."
            )

    # ---------------------------------------------------------------- structure
    def _build(self) -> None:
        target = self.target
        trainable = {n for n, p in self._params.items() if p.requires_grad}
        if callable(target):
            for n, p in self._params.items():
                if n in trainable and target(n, p):
                    if p.dim() < 2:
                        raise RankdecayValueError(
                            f"LowRankDecay acts on matrices but the target selects {n!r} of shape "
                            f"{tuple(p.shape)}; exclude vectors from the callable."
                        )
                    self._views.append(self._param_view(n))
            return
        if self.model is None:  # named params, target "matrices": every stored ≥2-D tensor
            for n, p in self._params.items():
                if n in trainable and p.dim() >= 2:
                    self._views.append(self._param_view(n))
            return
        layers = _attention_layers(self.model, strict=self.strict)
        attn_params: set[str] = set()
        for layer in layers:
            attn_params.update(layer.qk_params)
            attn_params.update(layer.ov_params)
        if target == "qk":
            self._attn_which = ("Q", "K")
            self._circuits = ("qk",)
        else:
            self._attn_which = ("Q", "K", "V", "O")
            self._circuits = ("qk", "ov")
        if layers:
            with torch.enable_grad():
                fresh = attention_heads(self.model)
                if self.granularity == "product":
                    for layer in fresh:
                        for circuit in self._circuits:
                            A, B = layer.factors(circuit)
                            for side, X in (("A", A), ("B", B)):
                                owner = self._owner(X, f"{layer.name} {circuit} {side}")
                                if owner in trainable:
                                    self._views.append(
                                        _View(("prod", layer.layer, circuit, side), owner)
                                    )
                else:
                    for layer in fresh:
                        for which in self._attn_which:
                            if which in _read_elsewhere(layer):
                                continue
                            X = _attn_view(layer, which, self.granularity)
                            owner = self._owner(X, f"{layer.name} W_{which}")
                            if owner in trainable:
                                layout = _strided_layout(X, self._params[owner])
                                self._views.append(
                                    _View(("attn", layer.layer, which), owner, layout)
                                )
        if target == "matrices":
            roles = param_roles(self.model)
            for n, p in self._params.items():
                if (
                    n in trainable
                    and n not in attn_params
                    and p.dim() >= 2
                    and roles.get(n) == "mlp"
                ):
                    self._views.append(self._param_view(n))

    def _param_view(self, name: str) -> _View:
        p = self._params[name]
        X = p.detach().reshape(p.shape[0], -1)
        return _View(("param", name), name, _strided_layout(X, p.detach()))

    def _extract(self) -> list[LayerHeads]:
        """The model's LayerHeads (differentiable views), with the adapter looked up once."""
        assert self.model is not None
        if self._adapter is None:
            self._adapter = find_adapter(self.model)
        return self._adapter.extractor(self.model)

    def _owner(self, X: Tensor, what: str) -> str:
        """The single parameter a view reads from (found once, by autograd)."""
        names = [n for n, p in self._params.items() if p.requires_grad]
        if not X.requires_grad:
            return ""  # frozen: skipped by the caller
        grads = torch.autograd.grad(X.sum(), [self._params[n] for n in names], allow_unused=True)
        owners = [n for n, g in zip(names, grads) if g is not None]
        if len(owners) != 1 and any(".lora_" in n for n in owners):
            raise RankdecayValueError(
                f"{what} is a LoRA-wrapped projection (a frozen base weight plus the adapter "
                f"factors {', '.join(owners[:2])}), not one tensor; to decay the adapters pass "
                "target=lambda name, p: '.lora_' in name (each factor A, B on its own)."
            )
        if len(owners) != 1:
            raise RankdecayValueError(
                f"{what} is built from {len(owners)} parameters ({', '.join(owners[:3])}); LowRankDecay "
                "needs each attention matrix to live in one tensor — use a callable target instead."
            )
        return owners[0]

    @property
    def parameter_names(self) -> list[str]:
        """Names of the parameters this decay modifies."""
        return sorted({v.owner for v in self._views})

    def strided_views(self) -> list[tuple[str, tuple[int, ...], tuple[int, ...], int]]:
        """Every matrix (batch of head matrices) the decay acts on as (owner name, size, stride,
        storage offset from the owner's first element): ``p.as_strided(size, stride,
        p.storage_offset() + offset)`` is it, without a copy. Raises
        :class:`~rankdecay.errors.RankdecayValueError` where one is not a strided view of its
        owner (product granularity; key/value heads shared unevenly; at any granularity the
        block-diagonal matrix of a grouped 1×1 convolution, SqueezeBERT's, which is a copy)."""
        out = []
        for v in self._views:
            if v.strided is None and self.granularity != "matrix":
                raise RankdecayValueError(
                    f"LowRankDecay's {v.key} is not a strided view of {v.owner!r}; use "
                    "granularity='matrix' (or 'head' on a model without shared key/value heads).",
                    param="granularity",
                )
            if v.strided is None:  # a copy even as a whole matrix (a grouped convolution's blocks)
                raise RankdecayValueError(
                    f"LowRankDecay's {v.key} is not a strided view of {v.owner!r} but a copy "
                    "built from it (e.g. the block-diagonal matrix of a grouped 1×1 convolution), "
                    "so no in-place view of it exists; run LowRankDecay itself (the local "
                    "executor), which writes its update back through autograd.",
                    param="granularity",
                )
            (size, stride, offset), (_, _, owner_offset) = v.strided
            out.append((v.owner, size, stride, offset - owner_offset))
        return out

    # ---------------------------------------------------------------- optimizer plumbing
    def attach(self, optimizer: torch.optim.Optimizer) -> LowRankDecay:
        """Run the decay after every ``optimizer.step()``, with each parameter's current group lr."""
        if self._handle is not None:
            raise RankdecayError("this LowRankDecay is already attached; call detach() first.")
        check_groups(optimizer.param_groups)
        in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [n for n in self.parameter_names if id(self._params[n]) not in in_opt]
        if missing:
            raise RankdecayValueError(
                f"LowRankDecay modifies {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}, which "
                "the optimizer does not train; add them to the optimizer or narrow the target."
            )
        self._optimizer = optimizer
        self._handle = optimizer.register_step_post_hook(self._post_hook)
        return self

    def detach(self) -> None:
        """Stop decaying after optimizer steps (the optimizer behaves as before ``attach``)."""
        if self._handle is not None:
            self._handle.remove()
        self._handle = None
        self._optimizer = None

    def _post_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        lrs: dict[int, float] = {}
        for g in optimizer.param_groups:
            lr = float(g["lr"])
            for p in g["params"]:
                lrs[id(p)] = lr
        self._apply({n: lrs[id(self._params[n])] for n in self.parameter_names})

    def step(self, lr: float = 1.0) -> None:
        """One decay step by hand: c = strength·lr (``scale_by_lr``) or strength for every target."""
        self._apply({n: float(lr) for n in self.parameter_names})

    def __repr__(self) -> str:
        t = getattr(self.target, "__name__", "callable") if callable(self.target) else self.target
        return (
            f"LowRankDecay(strength={self.strength:g}, target={t!r}, granularity={self.granularity!r}, "
            f"polar={self.polar!r}, mode={self.mode!r}, scale_by_lr={self.scale_by_lr}, "
            f"{len(self.parameter_names)} tensors)"
        )

    # ---------------------------------------------------------------- the update
    def _c(self, lr: float) -> float:
        return self.strength * lr if self.scale_by_lr else self.strength

    @torch.no_grad()
    def _apply(self, lr_of: Mapping[str, float]) -> None:
        c_of = {n: self._c(lr) for n, lr in lr_of.items()}
        if all(c == 0.0 for c in c_of.values()):
            self.last_info = {"c": 0.0}
            return
        direct: list[tuple[Tensor, Tensor]] = []  # (in-place view, its update)
        with torch.enable_grad():
            views: list[tuple[_View, Tensor, bool]] = []  # (view, X, X is a live in-place view)
            need_heads = self.granularity == "product" or any(
                v.key[0] == "attn" and self._live(v) is None for v in self._views
            )
            by_layer = {lh.layer: lh for lh in self._extract()} if need_heads else {}
            for v in self._views:
                live = self._live(v)
                if live is not None:
                    views.append((v, live, True))
                elif v.key[0] == "param":
                    p = self._params[v.owner]
                    views.append((v, p.reshape(p.shape[0], -1), False))
                elif v.key[0] == "attn":
                    X = _attn_view(by_layer[v.key[1]], v.key[2], self.granularity)
                    views.append((v, X, False))
            surrogate: Tensor | None = None
            info: dict[str, Any] = {"c": max(c_of.values()), "views": len(self._views)}
            if views:
                surrogate = self._matrix_surrogate(views, c_of, info, direct)
            if self.granularity == "product":
                s = self._product_surrogate(by_layer, c_of)
                surrogate = s if surrogate is None else surrogate + s
            grads: tuple[Tensor | None, ...] = ()
            owners = self.parameter_names
            if surrogate is not None:
                grads = torch.autograd.grad(
                    surrogate, [self._params[n] for n in owners], allow_unused=True
                )
        for n, g in zip(owners, grads):
            if g is not None:
                self._params[n].sub_(g)
        for X_live, delta in direct:  # after autograd, which may read the old values
            X_live.sub_(delta)
        self.last_info = info

    def _live(self, v: _View) -> Tensor | None:
        """An in-place view of the owner's storage with the view's layout, if still valid."""
        if v.strided is None:
            return None
        p = self._params[v.owner].detach()
        (size, stride, offset), p_layout = v.strided
        if (tuple(p.shape), tuple(p.stride()), p.storage_offset()) != p_layout:
            return None  # the parameter was re-laid out (e.g. made contiguous differently)
        return p.as_strided(size, stride, offset)

    def _matrix_surrogate(
        self,
        views: list[tuple[_View, Tensor, bool]],
        c_of: Mapping[str, float],
        info: dict[str, Any],
        direct: list[tuple[Tensor, Tensor]],
    ) -> Tensor | None:
        """Δ = c·polar(X) or X − SVT_c(X) for every matrix/head view X, batched by shape.

        Live views get their Δ appended to ``direct``; the others contribute ⟨Δ, X⟩ to the
        returned surrogate (None if there are none).
        """
        buckets: dict[tuple[Any, ...], list[tuple[_View, Tensor, bool]]] = {}
        for v, X, live in views:
            buckets.setdefault((tuple(X.shape), X.dtype, X.device), []).append((v, X, live))
        total: Tensor | None = None
        worst = 0.0
        iters = 0
        for items in buckets.values():
            Xd = torch.stack([x.detach() for _, x, _ in items])  # (n, [H,] m, k), a copy
            c = torch.tensor([c_of[v.owner] for v, _, _ in items], dtype=Xd.dtype, device=Xd.device)
            c = c.view(-1, *([1] * (Xd.dim() - 1)))
            delta, pinfo = low_rank_decay_delta(
                Xd,
                c,
                mode=self.mode,
                polar=self.polar,
                polar_steps=self.polar_steps,
                tol=self.tol,
                max_iter=self.max_iter,
            )
            if pinfo is not None:
                worst = max(worst, pinfo.residual)
                iters = max(iters, pinfo.iterations)
            for i, (_, X, live) in enumerate(items):
                if live:
                    direct.append((X, delta[i]))
                else:
                    term = (delta[i] * X).sum()
                    total = term if total is None else total + term
        if self.mode == "subtract" and self.polar == "newton_schulz":
            info["polar_residual"] = worst
            info["polar_iterations"] = iters
        return total

    def _product_surrogate(
        self, by_layer: Mapping[int, LayerHeads], c_of: Mapping[str, float]
    ) -> Tensor:
        """Σ ⟨c_A·U Vᵀ B, A⟩ + ⟨c_B·V Uᵀ A, B⟩ over heads: the gradient step of c·Σ_h ‖A_h B_hᵀ‖_*."""
        owner = {v.key[1:]: v.owner for v in self._views if v.key[0] == "prod"}
        pairs = dict.fromkeys((k[0], k[1]) for k in owner)
        total: Tensor | None = None
        for layer_idx, circuit in pairs:
            A, B = by_layer[layer_idx].factors(circuit)
            Ad, Bd = A.detach().double(), B.detach().double()
            U, S, V = factored_svd(Ad, Bd, dtype=torch.float64)
            eps = torch.finfo(A.dtype).eps * max(A.shape[-2], B.shape[-2], A.shape[-1])
            keep = (S > eps * S[..., :1]).to(S.dtype).unsqueeze(-2)  # (H, 1, k)
            U, V = U * keep, V * keep
            GA = U @ (V.mT @ Bd)  # (H, d, r): ∂‖ABᵀ‖_*/∂A
            GB = V @ (U.mT @ Ad)  # ∂‖ABᵀ‖_*/∂B
            cA = c_of.get(owner.get((layer_idx, circuit, "A"), ""), 0.0)
            cB = c_of.get(owner.get((layer_idx, circuit, "B"), ""), 0.0)
            term = (cA * GA.to(A.dtype) * A).sum() + (cB * GB.to(B.dtype) * B).sum()
            total = term if total is None else total + term
        if total is None:
            warnings.warn(
                "LowRankDecay(product): no trainable factor pair; nothing to do.", stacklevel=3
            )
            return torch.zeros((), requires_grad=True)
        return total
