"""TinyTransformer: the configurable transformer every experiment trains.

One pre-norm block (``norm`` ∈ none / layer / rms)::

    h ← h + Attn(N₁(h))          Attn = multi-head softmax attention (torch's fused SDPA kernel)
    h ← h + MLP(N₂(h))           omitted when d_mlp = 0 (attention-only)

followed by an optional final norm and a linear readout at the last position (``readout="last"``,
logits (B, n_out)) or at every position (``readout="all"``, logits (B, T, n_out)).

Attention weights are stored as four separate bias-optional ``nn.Linear`` maps ``q``, ``k``, ``v``
(d_model → H·d_head) and ``o`` (H·d_head → d_model), so W_Q and W_K can get their own weight decay
and Low-Rank Decay. In the project's convention (x ↦ xᵀW, see :mod:`rankdecay.heads`) head h has

    W_Q^h = q.weight[h·d_head:(h+1)·d_head, :]ᵀ ∈ ℝ^{d_model×d_head}   (likewise W_K^h, W_V^h)
    W_O^h = o.weight[:, h·d_head:(h+1)·d_head]ᵀ ∈ ℝ^{d_head×d_model}

and, without QK-norm, the pre-softmax score of query position i on key position j is
``scale · x_iᵀ W_Q^h (W_K^h)ᵀ x_j`` (x = the normed residual stream N₁(h), biases aside) with
``scale = 1/√d_head``; :meth:`TinyTransformer.rankdecay_attention_heads` returns exactly these
factors as differentiable views.

QK-norm (``qk_norm``):

- ``"rms"``: q ← g_q ⊙ q / rms(q) and k ← g_k ⊙ k / rms(k), where rms is taken over the **full**
  H·d_head query (key) vector of a token and g_q, g_k are learnable gains; then scale 1/√d_head.
- ``"l2"``: per head q̂ = q/‖q‖, k̂ = k/‖k‖ and scores τ_h · q̂·k̂. The temperature τ_h is a
  learnable per-head parameter initialised to √d_head when ``qk_temperature`` is None (our choice,
  so that scores start with the magnitude of unnormalised attention at unit-RMS q, k), or the fixed
  number ``qk_temperature`` otherwise.

Either way, without q/k biases the logits are invariant to W_Q ↦ c·W_Q and W_K ↦ c·W_K (c > 0),
so the gradient with respect to W_Q (W_K) is orthogonal to W_Q (W_K): the premise of Low-Rank
Decay. ``qk_norm_eps`` is kept tiny (1e-8) so this holds down to weights ~1e-2 of their init size.

Positions (``pos``): learned absolute embeddings, none, or rotary (rotate-half form, base
``rope_base``, applied to q and k after QK-norm; the QK circuit then is the one at offset 0).

Images: ``patch_size > 0`` switches the input to float images (B, C, H, W); :func:`patchify` cuts
them into non-overlapping p×p patches that a linear map embeds. With ``pool="cls"`` a learned
class token is **appended after** the patches, so readout "last" reads it (and with
``causal=True`` it still sees every patch); ``pool="mean"`` averages the final states of all
patches instead. The sequence length is then (image_size/p)² (+1), ``max_len`` is ignored.

Initialisation (``init_std``): GPT-2-like — every Linear/Embedding weight, the learned positions and
the class token ~ N(0, init_std²), biases 0, norm gains 1 (default init_std = 0.02, no residual
rescaling). ``init_std=None`` keeps PyTorch's defaults (Linear: U(±1/√fan_in); Embedding and learned
positions N(0, 1); class token 0). Per role, ``init_embed`` (token embedding, patch embedding,
class token), ``init_pos`` (learned positions) and ``init_linear`` (every other Linear: q, k, v,
o, MLP, readout) override it: a number s → N(0, s²) (biases 0), ``"torch"`` → PyTorch's default
for that module, None → as ``init_std`` says. The public LRD code's init is ``init_std=None,
init_pos=0.02`` (token embedding N(0, 1), Linear Kaiming-uniform, positions N(0, 0.02²)).

The MLP is fc_out(act(fc_in(x))) with act ∈ gelu/relu/silu, or for ``"swiglu"``
fc_out(silu(fc_gate(x)) ⊙ fc_in(x)); d_mlp is the hidden width as given (no 2/3 rescaling).

The forward is written once, as :func:`functional_forward` (cfg, parameter dict, input) and the
per-block functions it loops over: the module's ``forward`` runs the same functions with its own
parameters, through its Block / Attention / MLP submodules (so forward hooks on them fire; the
result is bitwise that of :func:`functional_forward`), and the batched ensemble
(:mod:`rankdecay.ensemble`) calls it with ``members=True`` on parameters stacked to (M, *shape),
where every linear map y = x Wᵀ becomes a batched matmul (M, N, d_in) @ (M, d_in, d_out) and
activations carry a leading member dim (M, B, T, d). It has no data-dependent control flow and no
in-place updates, so it works under ``torch.func.functional_call`` + ``vmap`` and ``torch.compile``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import RankdecayTypeError, RankdecayValueError
from .heads import LayerHeads
from .run_config import ModelConfig

__all__ = [
    "ModelConfig",
    "TinyTransformer",
    "apply_rotary",
    "functional_forward",
    "patchify",
    "rotary_tables",
    "sdpa_scale",
]

Params = Mapping[str, Tensor]
_Rope = tuple[Tensor, Tensor] | None  # rotary (cos, sin) tables, (max_len, d_head) each
_Map = Callable[[Tensor], Tensor]


class ModuleParams(Mapping[str, Tensor]):
    """A module's parameters as the ``Params`` mapping of the functional forward, name → tensor
    as in ``named_parameters()`` — plus its submodules, so that the module's own forward runs
    each ``nn.Linear`` / norm / ``nn.Embedding`` *as a module call* and every forward hook fires
    (TransformerLens-style hooks on ``blocks.0.attn.q`` see what they saw before the forward
    became functional). The module calls compute exactly what the functional branch computes
    (``F.linear``, ``F.layer_norm``, ``F.rms_norm``, ``F.embedding`` with the same arguments)."""

    def __init__(self, module: nn.Module) -> None:
        self._module = module

    def __getitem__(self, name: str) -> Tensor:
        owner, _, attr = name.rpartition(".")
        try:  # getattr, not get_parameter: under torch.func.functional_call they are tensors
            value = getattr(self._module.get_submodule(owner), attr)
        except AttributeError as err:
            raise KeyError(name) from err
        if not isinstance(value, Tensor):
            raise KeyError(name)
        return value

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (n for n, _ in self._module.named_parameters())

    def __len__(self) -> int:
        return sum(1 for _ in self._module.named_parameters())

    def module(self, prefix: str) -> nn.Module | None:
        """The submodule a parameter prefix such as ``"blocks.0.attn.q."`` names, or None."""
        try:
            return self._module.get_submodule(prefix.rstrip("."))
        except AttributeError:
            return None


_NORMS = (nn.LayerNorm, nn.RMSNorm, nn.Identity)


def _module_call(
    P: Params, prefix: str, members: bool, kinds: tuple[type[nn.Module], ...]
) -> nn.Module | None:
    """The submodule to call for ``prefix`` when P is a module's own :class:`ModuleParams` and
    the submodule is one of ``kinds`` (a tied readout reads the embedding's weight as a linear
    map, so it is not an ``nn.Embedding`` call)."""
    if members or not isinstance(P, ModuleParams):
        return None
    mod = P.module(prefix)
    return mod if isinstance(mod, kinds) else None


# ---------------------------------------------------------------------------------- helpers
def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut (B, C, H, W) images into non-overlapping patches → (B, (H/p)·(W/p), C·p·p).

    Patches are ordered row-major over the patch grid; each patch vector is ordered (c, i, j).
    """
    if images.dim() != 4:
        raise RankdecayValueError(
            f"image input must be (B, C, H, W), got shape {tuple(images.shape)}; reshape the batch."
        )
    B, C, H, W = images.shape
    p = patch_size
    if H % p or W % p:
        raise RankdecayValueError(
            f"image size {H}×{W} is not a multiple of patch_size={p}; change model.patch_size.",
            param="model.patch_size",
        )
    x = images.reshape(B, C, H // p, p, W // p, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # B, gh, gw, C, p, p
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def rotary_tables(max_len: int, d_head: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos, sin tables (max_len, d_head) for rotate-half RoPE: angle(t, i) = t · base^(−2i/d_head)."""
    inv_freq = base ** (-torch.arange(0, d_head, 2, dtype=torch.float64) / d_head)
    angles = torch.arange(max_len, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (..., T, d_head) by position: x·cos + rotate_half(x)·sin, rotate_half(a, b) = (−b, a)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rot = torch.cat([-x2, x1], dim=-1)
    return x * cos.to(x.dtype) + rot * sin.to(x.dtype)


def sdpa_scale(cfg: ModelConfig) -> float:
    """The factor the attention multiplies q·k by (after QK-norm and temperature): 1/√d_head, or
    with ``qk_norm="l2"`` the fixed ``qk_temperature`` (1 when τ_h is learned and folded into q)."""
    if cfg.qk_norm == "l2":
        return 1.0 if cfg.qk_temperature is None else float(cfg.qk_temperature)
    return 1.0 / math.sqrt(cfg.head_dim)


# ------------------------------------------------------------------------- functional forward
# Every function below reads its weights from ``P`` (parameter name → tensor, the names of
# ``TinyTransformer.named_parameters()``; ``prefix`` is the submodule's name with a trailing dot,
# "" for the module itself). ``members=False``: P[n] has the module's shape and activations are
# (B, T, d). ``members=True``: P[n] is (M, *shape) — M models stacked (an ensemble) — and every
# activation carries the same leading M: (M, B, T, d); member i's output is that of the model
# with weights P[·][i] on input x[i]. Only shapes steer the code (no data-dependent branch), so
# it runs under torch.func.functional_call + vmap and torch.compile.

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


def _lead(v: Tensor, ndim: int, members: bool) -> Tensor:
    """Per-member v (M, *s) → (M, 1, …, 1, *s) with ``ndim`` dims, broadcasting against an
    activation (M, B, …, *s); without members v broadcasts from the right as it is."""
    if not members:
        return v
    return v.reshape(v.shape[0], *([1] * (ndim - v.dim())), *v.shape[1:])


def _linear(h: Tensor, P: Params, name: str, members: bool) -> Tensor:
    """y = h Wᵀ + b, W = P[name+"weight"] (d_out, d_in), b = P[name+"bias"] if present.

    members: W (M, d_out, d_in), h (M, …, d_in) → (M, …, d_out), one matmul per member (bmm).
    """
    mod = _module_call(P, name, members, (nn.Linear,))
    if mod is not None:
        return mod(h)  # nn.Linear: F.linear(h, W, b)
    W, b = P[name + "weight"], P.get(name + "bias")
    if not members:
        return F.linear(h, W, b)
    shape = h.shape
    y = torch.bmm(h.reshape(shape[0], -1, shape[-1]), W.transpose(1, 2))
    if b is not None:
        y = y + b.unsqueeze(1)
    return y.reshape(*shape[:-1], W.shape[1])


def _norm(kind: str, h: Tensor, P: Params, name: str, eps: float, members: bool) -> Tensor:
    """Over the last dim d: layer g ⊙ (h − μ)/√(σ² + eps) + β; rms g ⊙ h/√(mean(h²) + eps); none h."""
    mod = _module_call(P, name, members, _NORMS)
    if mod is not None:
        return mod(h)  # nn.LayerNorm / nn.RMSNorm with the same d, eps; nn.Identity for none
    if kind == "none":
        return h
    w, b, d = P[name + "weight"], P.get(name + "bias"), (h.shape[-1],)
    if not members:
        return F.rms_norm(h, d, w, eps) if kind == "rms" else F.layer_norm(h, d, w, b, eps)
    normed = F.rms_norm(h, d, None, eps) if kind == "rms" else F.layer_norm(h, d, None, None, eps)
    out = normed * _lead(w, h.dim(), True)
    return out if b is None else out + _lead(b, h.dim(), True)


def _qkv(
    cfg: ModelConfig,
    P: Params,
    prefix: str,
    h: Tensor,
    rope: _Rope,
    members: bool,
    last_only: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """h (…, T, d) → q (…, H, T_q, d_head), k, v (…, H, T, d_head), ready for SDPA.

    q = h W_qᵀ (+ b), likewise k, v; QK-norm "rms" over the full H·d_head vector (gains g_q, g_k),
    or "l2" per head with q ← τ_h·q/‖q‖ (learned τ) and k ← k/‖k‖; then rotary on q and k.
    ``last_only``: queries at the last position only (T_q = 1).
    """
    H, dh, T = cfg.n_heads, cfg.head_dim, h.shape[-2]
    q = _linear(h[..., -1:, :] if last_only else h, P, prefix + "q.", members)
    k = _linear(h, P, prefix + "k.", members)
    v = _linear(h, P, prefix + "v.", members)
    if cfg.qk_norm == "rms":
        q = _norm("rms", q, P, prefix + "q_norm.", cfg.qk_norm_eps, members)
        k = _norm("rms", k, P, prefix + "k_norm.", cfg.qk_norm_eps, members)
    q, k, v = (t.unflatten(-1, (H, dh)).transpose(-3, -2) for t in (q, k, v))
    if cfg.qk_norm == "l2":
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        if cfg.qk_temperature is None:  # τ: (H,) or (M, H) → broadcast over (…, H, T, d_head)
            tau = P[prefix + "qk_temperature"][..., None, None]
            q = q * _lead(tau, q.dim(), members).to(q.dtype)
    if cfg.pos == "rotary":
        if rope is None:
            rope = rotary_tables(cfg.seq_len, dh, cfg.rope_base)
        cos, sin = (t.to(q.device) for t in rope)
        Tq = q.shape[-2]
        q = apply_rotary(q, cos[T - Tq : T], sin[T - Tq : T])
        k = apply_rotary(k, cos[:T], sin[:T])
    return q, k, v


def _attention(
    cfg: ModelConfig,
    P: Params,
    prefix: str,
    h: Tensor,
    rope: _Rope,
    members: bool,
    last_only: bool = False,
) -> Tensor:
    """Multi-head attention h (…, T, d) → (…, T_q, d): concat_h softmax(s·q_h k_hᵀ + mask) v_h · W_oᵀ.

    s = :func:`sdpa_scale`; the causal mask hides keys after the query (the single last query of
    ``last_only`` sees every key either way). The one SDPA call site of
    rankdecay: the member and batch dims are folded into SDPA's batch dim.
    """
    q, k, v = _qkv(cfg, P, prefix, h, rope, members, last_only)
    *lead, H, Tq, dh = q.shape
    T = k.shape[-2]
    out = F.scaled_dot_product_attention(
        q.reshape(-1, H, Tq, dh),
        k.reshape(-1, H, T, dh),
        v.reshape(-1, H, T, dh),
        is_causal=cfg.causal and not last_only,
        scale=sdpa_scale(cfg),
    )
    out = out.reshape(*lead, H, Tq, dh).transpose(-3, -2).flatten(-2)  # (…, T_q, H·d_head)
    return _linear(out, P, prefix + "o.", members)


def _mlp(cfg: ModelConfig, P: Params, prefix: str, h: Tensor, members: bool) -> Tensor:
    """fc_out(act(fc_in(h))), or fc_out(silu(fc_gate(h)) ⊙ fc_in(h)) for swiglu; (…, d) → (…, d)."""
    if cfg.mlp == "swiglu":
        gate = F.silu(_linear(h, P, prefix + "fc_gate.", members))
        a = gate * _linear(h, P, prefix + "fc_in.", members)
    else:
        a = _ACTIVATIONS[cfg.mlp](_linear(h, P, prefix + "fc_in.", members))
    return _linear(a, P, prefix + "fc_out.", members)


def _residual(
    h: Tensor,
    ln1: _Map,
    attn: _Map,
    ln2: _Map | None,
    mlp: _Map | None,
    last_only: bool = False,
) -> Tensor:
    """One pre-norm block from its four maps: h ← h + attn(ln1(h)); h ← h + mlp(ln2(h)) (no MLP
    when ``mlp`` is None); (…, T, d) → (…, T_q, d). ``last_only``: attn returns the last position
    only (T_q = 1), and so does the block. The functional forward passes the functions below, the
    module :class:`Block` its submodules (so that their forward hooks fire)."""
    a = attn(ln1(h))
    h = (h[..., -1:, :] if last_only else h) + a
    if mlp is not None and ln2 is not None:
        h = h + mlp(ln2(h))
    return h


def _block(
    cfg: ModelConfig,
    P: Params,
    prefix: str,
    h: Tensor,
    rope: _Rope,
    members: bool,
    last_only: bool = False,
) -> Tensor:
    """:func:`_residual` with the norms, attention and MLP of block ``prefix`` read from ``P``."""

    def norm(name: str) -> _Map:
        return lambda x: _norm(cfg.norm, x, P, prefix + name, cfg.norm_eps, members)

    def attn(x: Tensor) -> Tensor:
        return _attention(cfg, P, prefix + "attn.", x, rope, members, last_only)

    def mlp(x: Tensor) -> Tensor:
        return _mlp(cfg, P, prefix + "mlp.", x, members)

    has_mlp = cfg.d_mlp > 0
    ln2, ff = (norm("ln2."), mlp) if has_mlp else (None, None)
    return _residual(h, norm("ln1."), attn, ln2, ff, last_only)


def _embed(cfg: ModelConfig, P: Params, x: Tensor, members: bool) -> Tensor:
    """Input → residual stream (…, T, d): token or patch embedding (+ class token) + positions.

    x: int64 tokens (B, T) or float images (B, C, H, W), with a leading M when ``members``.
    """
    m = "M, " if members else ""
    if cfg.images:
        C, S = cfg.in_channels, cfg.image_size
        if x.dim() != 4 + members or tuple(x.shape[-3:]) != (C, S, S):
            raise RankdecayValueError(
                f"expected images of shape ({m}B, {C}, {S}, {S}), got {tuple(x.shape)}; "
                "match model.in_channels/image_size to the data."
            )
        W = P["patch_embed.weight"]
        patches = patchify(x.reshape(-1, C, S, S).to(W.dtype), cfg.patch_size)
        h = _linear(patches.reshape(*x.shape[:-3], *patches.shape[1:]), P, "patch_embed.", members)
        if cfg.pool == "cls":  # appended after the patches, so readout "last" reads it
            cls = _lead(P["cls_token"], h.dim(), members).to(h.dtype)
            h = torch.cat([h, cls.expand(*h.shape[:-2], 1, h.shape[-1])], dim=-2)
    else:
        if x.dim() != 2 + members:
            raise RankdecayValueError(
                f"token input must be ({m}B, T), got shape {tuple(x.shape)}; reshape the batch."
            )
        if x.shape[-1] > cfg.max_len:
            raise RankdecayValueError(
                f"sequence length {x.shape[-1]} exceeds model.max_len={cfg.max_len}; raise model.max_len.",
                param="model.max_len",
            )
        E = P["embed.weight"]  # (V, d) or (M, V, d)
        mod = _module_call(P, "embed.", members, (nn.Embedding,))
        if mod is not None:
            h = mod(x)  # nn.Embedding: F.embedding(x, E)
        elif members:
            h = E[torch.arange(E.shape[0], device=x.device).view(-1, 1, 1), x]
        else:
            h = F.embedding(x, E)
    if cfg.pos == "learned":
        h = h + _lead(P["pos_embed.weight"][..., : h.shape[-2], :], h.dim(), members).to(h.dtype)
    return h


def _hidden(
    cfg: ModelConfig,
    P: Params,
    x: Tensor,
    rope: _Rope,
    members: bool,
    last_only: bool,
    blocks: Sequence[_Map] | None = None,
) -> Tensor:
    """Residual stream after the final norm (…, T, d); ``last_only``: the final block at the last
    position only (T = 1 on return) — all that readout "last" reads. ``blocks``: the module's
    :class:`Block` s, called in place of :func:`_block` (same result; their hooks fire)."""
    h = _embed(cfg, P, x, members)
    L = cfg.n_layers
    for i in range(L):
        if blocks is not None:
            h = blocks[i](h)
        else:
            h = _block(cfg, P, f"blocks.{i}.", h, rope, members, last_only and i == L - 1)
    final = cfg.norm if cfg.final_norm else "none"
    return _norm(final, h, P, "ln_f.", cfg.norm_eps, members)


def functional_forward(
    cfg: ModelConfig,
    params: Params,
    x: Tensor,
    rope: _Rope = None,
    *,
    members: bool = False,
    last_trick: bool = False,
) -> Tensor:
    """The TinyTransformer forward as a function of its parameters (the module's ``forward``).

    Args:
        cfg: the model config; params: parameter name (as in ``named_parameters()``) → tensor,
            of shape (M, *shape) when ``members``; x: int64 tokens (B, T) or images (B, C, H, W),
            with a leading M when ``members``; rope: the (cos, sin) tables (max_len, d_head) for
            rotary positions (computed when None); last_trick: with readout "last" (and no mean
            pooling) the final block works at the last position only — same result, fewer FLOPs.

    Returns:
        logits = readout(h) Wᵤᵀ (+ b), Wᵤ the unembedding (or the token embedding when tied):
        (B, n_out) for readout "last" (h at the last position, or the mean over patches for
        ``pool="mean"``), (B, T, n_out) for "all"; with members a leading M, member i's being
        the forward of weights params[·][i] on x[i].
    """
    trick = last_trick and cfg.readout == "last" and not (cfg.images and cfg.pool == "mean")
    return _readout(cfg, params, _hidden(cfg, params, x, rope, members, trick), members)


def _readout(cfg: ModelConfig, P: Params, h: Tensor, members: bool) -> Tensor:
    """Final residual stream (…, T, d) → logits: readout "last" reads the last position (or the
    mean over patches for ``pool="mean"``), "all" every position; then h Wᵤᵀ (+ b)."""
    if cfg.readout == "last":
        h = h.mean(dim=-2) if cfg.images and cfg.pool == "mean" else h[..., -1, :]
    return _linear(h, P, "embed." if cfg.tie_embeddings else "unembed.", members)


# ---------------------------------------------------------------------------------- modules
# The modules hold the parameters (their names are the checkpoint format) and the init; their
# forwards call the functions above with their own parameters.


def _module_norm(kind: str, d: int, eps: float, bias: bool) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(d, eps=eps, bias=bias)
    if kind == "rms":
        return nn.RMSNorm(d, eps=eps)
    return nn.Identity()


class Attention(nn.Module):
    """Multi-head attention with separate q, k, v, o maps, optional QK-norm and rotary positions."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        H, dh, d = cfg.n_heads, cfg.head_dim, cfg.d_model
        self.n_heads, self.d_head = H, dh
        self.q = nn.Linear(d, H * dh, bias=cfg.bias)
        self.k = nn.Linear(d, H * dh, bias=cfg.bias)
        self.v = nn.Linear(d, H * dh, bias=cfg.bias)
        self.o = nn.Linear(H * dh, d, bias=cfg.bias)
        if cfg.qk_norm == "rms":
            self.q_norm = nn.RMSNorm(H * dh, eps=cfg.qk_norm_eps)
            self.k_norm = nn.RMSNorm(H * dh, eps=cfg.qk_norm_eps)
        if cfg.qk_norm == "l2" and cfg.qk_temperature is None:
            self.qk_temperature = nn.Parameter(torch.full((H,), math.sqrt(dh)))
        if cfg.pos == "rotary":
            cos, sin = rotary_tables(cfg.seq_len, dh, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    @property
    def sdpa_scale(self) -> float:
        """Factor SDPA multiplies q·k by (after QK-norm / temperature)."""
        return sdpa_scale(self.cfg)

    def rope(self) -> tuple[Tensor, Tensor] | None:
        """The rotary (cos, sin) tables (max_len, d_head), or None without rotary positions."""
        return (self.rope_cos, self.rope_sin) if self.cfg.pos == "rotary" else None

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v as (B, H, T, d_head), after QK-norm, temperature and rotary, ready for SDPA."""
        return _qkv(self.cfg, ModuleParams(self), "", x, self.rope(), False)

    def scores(self, x: Tensor) -> Tensor:
        """Pre-softmax scores (B, H, T, T) before the causal mask, by the same path as forward."""
        q, k, _ = self.qkv(x)
        return self.sdpa_scale * (q @ k.transpose(-1, -2))

    def forward(self, x: Tensor) -> Tensor:
        return _attention(self.cfg, ModuleParams(self), "", x, self.rope(), False)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.bias)
        if cfg.mlp == "swiglu":
            self.fc_gate = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.bias)
        self.fc_out = nn.Linear(cfg.d_mlp, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor) -> Tensor:
        return _mlp(self.cfg, ModuleParams(self), "", x, False)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ln1 = _module_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.attn = Attention(cfg)
        if cfg.d_mlp > 0:
            self.ln2 = _module_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
            self.mlp = MLP(cfg)

    def forward(self, h: Tensor) -> Tensor:
        """h ← h + attn(ln1(h)); h ← h + mlp(ln2(h)): :func:`_residual` over the submodules."""
        return _residual(
            h, self.ln1, self.attn, getattr(self, "ln2", None), getattr(self, "mlp", None)
        )


class TinyTransformer(nn.Module):
    """Configurable pre-norm transformer; see the module docstring for the exact architecture.

    ``forward(x)``: x is int64 tokens (B, T) with T ≤ max_len, or float images (B, C, H, W) when
    ``patch_size > 0``. Returns logits (B, n_out) for ``readout="last"`` and (B, T, n_out) for
    ``readout="all"``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise RankdecayTypeError(
                f"TinyTransformer takes a ModelConfig, got {type(cfg).__name__}; build one with "
                "rankdecay.ModelConfig(...)."
            )
        cfg.validate()
        self.cfg = cfg
        d = cfg.d_model
        roles: dict[str, str] = {}
        if cfg.images:
            self.patch_embed = nn.Linear(cfg.in_channels * cfg.patch_size**2, d, bias=cfg.bias)
            roles["patch_embed.weight"] = "embedding"
            if cfg.pool == "cls":
                self.cls_token = nn.Parameter(torch.zeros(d))
                roles["cls_token"] = "embedding"
        else:
            self.embed = nn.Embedding(cfg.vocab_size, d)
            roles["embed.weight"] = "embedding"
        if cfg.pos == "learned":
            self.pos_embed = nn.Embedding(cfg.seq_len, d)
            roles["pos_embed.weight"] = "embedding"
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        for i in range(cfg.n_layers):
            p = f"blocks.{i}"
            roles |= {f"{p}.attn.q.weight": "attn_qk", f"{p}.attn.k.weight": "attn_qk"}
            roles |= {f"{p}.attn.v.weight": "attn_ov", f"{p}.attn.o.weight": "attn_ov"}
            if cfg.qk_norm == "rms":
                roles |= {f"{p}.attn.q_norm.weight": "norm", f"{p}.attn.k_norm.weight": "norm"}
            if cfg.qk_norm == "l2" and cfg.qk_temperature is None:
                roles[f"{p}.attn.qk_temperature"] = "norm"  # the QK-norm's gain
            if cfg.norm != "none":
                roles[f"{p}.ln1.weight"] = "norm"
                if cfg.d_mlp > 0:
                    roles[f"{p}.ln2.weight"] = "norm"
            if cfg.d_mlp > 0:
                roles |= {f"{p}.mlp.fc_in.weight": "mlp", f"{p}.mlp.fc_out.weight": "mlp"}
                if cfg.mlp == "swiglu":
                    roles[f"{p}.mlp.fc_gate.weight"] = "mlp"
        self.ln_f = _module_norm(cfg.norm if cfg.final_norm else "none", d, cfg.norm_eps, cfg.bias)
        if cfg.final_norm and cfg.norm != "none":
            roles["ln_f.weight"] = "norm"
        if not cfg.tie_embeddings:
            self.unembed = nn.Linear(d, cfg.out_dim, bias=cfg.bias)
            roles["unembed.weight"] = "other"  # the readout
        self._init_weights()
        names = [n for n, _ in self.named_parameters()]
        self._roles = {n: ("bias" if n.endswith(".bias") else roles.get(n, "other")) for n in names}

    # ------------------------------------------------------------------ init
    def _init_weights(self) -> None:
        stds = self.cfg.init_stds()
        embeds = {id(getattr(self, n, None)) for n in ("embed", "patch_embed")}
        for m in self.modules():  # module order: the RNG stream of the all-N(0, init_std²) init
            if not isinstance(m, (nn.Linear, nn.Embedding)):
                continue
            role = (
                "pos"
                if m is getattr(self, "pos_embed", None)
                else "embed"
                if id(m) in embeds
                else "linear"
            )
            std = stds[role]
            if std is None:
                continue  # PyTorch's default, drawn when the module was built
            nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        if self.cfg.images and self.cfg.pool == "cls" and stds["embed"] is not None:
            nn.init.normal_(self.cls_token, 0.0, stds["embed"])

    # ------------------------------------------------------------------ forward
    def rope(self) -> tuple[Tensor, Tensor] | None:
        """The rotary (cos, sin) tables (max_len, d_head) the blocks share, or None."""
        return self.blocks[0].attn.rope() if self.cfg.n_layers > 0 else None

    def embed_input(self, x: Tensor) -> Tensor:
        """Input → residual stream (B, T, d_model): token/patch embedding (+ class token) + positions."""
        return _embed(self.cfg, ModuleParams(self), x, False)

    def hidden_states(self, x: Tensor) -> Tensor:
        """Residual stream after the final norm, (B, T, d_model), through the :class:`Block`
        modules (their forward hooks and those of their attention and MLP fire)."""
        P = ModuleParams(self)
        return _hidden(self.cfg, P, x, self.rope(), False, False, blocks=self.blocks)

    def forward(self, x: Tensor) -> Tensor:
        """:func:`functional_forward` with this module's parameters, computed through the
        :class:`Block` modules so that forward hooks on blocks, attention and MLP fire; the
        result is bitwise that of :func:`functional_forward` (the same functions run)."""
        return _readout(self.cfg, ModuleParams(self), self.hidden_states(x), False)

    # ------------------------------------------------------------------ rankdecay protocol
    def rankdecay_param_roles(self) -> dict[str, str]:
        """Parameter name → attn_qk / attn_ov / mlp / embedding / norm / bias / other (all parameters).

        q, k weights → attn_qk; v, o weights → attn_ov; every bias → bias; norm gains, QK-norm gains
        and the l2 QK-norm temperature → norm; token/position/patch embeddings and the class token
        → embedding; the untied readout → other.
        """
        return dict(self._roles)

    def rankdecay_attention_heads(
        self, *, fold_norm: bool = False, **options: object
    ) -> list[LayerHeads]:
        """Per-layer attention factors as differentiable views of q/k/v/o weights.

        W_Q, W_K, W_V: (H, d_model, d_head); W_O: (H, d_head, d_model). ``fold_norm=True`` multiplies
        the pre-attention norm gain into the rows of W_Q, W_K, W_V and, with ``qk_norm="rms"``, the
        QK-norm gains into the columns of W_Q, W_K (the weights stay differentiable).
        """
        if options:
            raise RankdecayTypeError(
                f"TinyTransformer does not understand option(s) {', '.join(sorted(options))}; "
                "the only option is fold_norm."
            )
        cfg = self.cfg
        H, dh, d = cfg.n_heads, cfg.head_dim, cfg.d_model
        layers: list[LayerHeads] = []
        for i, block in enumerate(self.blocks):
            a: Attention = block.attn
            prefix = f"blocks.{i}.attn"
            W_Q = a.q.weight.view(H, dh, d).transpose(1, 2)
            W_K = a.k.weight.view(H, dh, d).transpose(1, 2)
            W_V = a.v.weight.view(H, dh, d).transpose(1, 2)
            W_O = a.o.weight.view(d, H, dh).permute(1, 2, 0)
            notes: list[str] = []
            if fold_norm and cfg.norm != "none":
                g = block.ln1.weight.view(1, d, 1)
                W_Q, W_K, W_V = g * W_Q, g * W_K, g * W_V
                notes.append(f"gain of blocks.{i}.ln1 folded into W_Q, W_K, W_V")
            if cfg.qk_norm == "rms":
                if fold_norm:
                    W_Q = W_Q * a.q_norm.weight.view(H, 1, dh)
                    W_K = W_K * a.k_norm.weight.view(H, 1, dh)
                    notes.append("QK-norm gains folded into W_Q, W_K")
                notes.append(
                    "q, k are RMS-normalised over all heads: scores = scale·qᵀk/(rms(q)·rms(k))"
                )
            scale: float | None = 1.0 / math.sqrt(dh)
            if cfg.qk_norm == "l2":
                if cfg.qk_temperature is None:
                    scale = None
                    notes.append(
                        "q, k are L2-normalised per head; scores = τ_h·q̂ᵀk̂ with a learned τ_h"
                    )
                else:
                    scale = float(cfg.qk_temperature)
                    notes.append("q, k are L2-normalised per head; scores = scale·q̂ᵀk̂")
            if cfg.bias:
                notes.append("q/k/v/o biases are not part of the circuits")
            layers.append(
                LayerHeads(
                    layer=i,
                    name=prefix,
                    W_Q=W_Q,
                    W_K=W_K,
                    W_V=W_V,
                    W_O=W_O,
                    rotary=cfg.pos == "rotary",
                    scale=scale,
                    qk_params=(f"{prefix}.q.weight", f"{prefix}.k.weight"),
                    ov_params=(f"{prefix}.v.weight", f"{prefix}.o.weight"),
                    notes=tuple(notes),
                )
            )
        return layers

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
