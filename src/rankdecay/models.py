"""TinyTransformer: the configurable transformer every experiment trains.

One pre-norm block (``norm`` ∈ none / layer / rms)::

    h ← h + Attn(N₁(h))          Attn = multi-head softmax attention (scaled_dot_product_attention)
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

The forward pass has no data-dependent control flow and no in-place updates, so it works under
``torch.func.functional_call`` + ``vmap`` (ensembles) and ``torch.compile``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import RankdecayError
from .heads import LayerHeads
from .run_config import ModelConfig

__all__ = ["ModelConfig", "TinyTransformer", "patchify", "rotary_tables", "apply_rotary"]


# ---------------------------------------------------------------------------------- helpers
def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut (B, C, H, W) images into non-overlapping patches → (B, (H/p)·(W/p), C·p·p).

    Patches are ordered row-major over the patch grid; each patch vector is ordered (c, i, j).
    """
    if images.dim() != 4:
        raise RankdecayError(
            f"image input must be (B, C, H, W), got shape {tuple(images.shape)}; reshape the batch."
        )
    B, C, H, W = images.shape
    p = patch_size
    if H % p or W % p:
        raise RankdecayError(
            f"image size {H}×{W} is not a multiple of patch_size={p}; change model.patch_size."
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


def _norm(kind: str, d: int, eps: float, bias: bool) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(d, eps=eps, bias=bias)
    if kind == "rms":
        return nn.RMSNorm(d, eps=eps)
    return nn.Identity()


# ---------------------------------------------------------------------------------- modules


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
        if self.cfg.qk_norm == "l2":
            return 1.0 if self.cfg.qk_temperature is None else float(self.cfg.qk_temperature)
        return 1.0 / math.sqrt(self.d_head)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v as (B, H, T, d_head), after QK-norm, temperature and rotary, ready for SDPA."""
        B, T, _ = x.shape
        H, dh = self.n_heads, self.d_head
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.cfg.qk_norm == "rms":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, H, dh).transpose(1, 2)
        k = k.view(B, T, H, dh).transpose(1, 2)
        v = v.view(B, T, H, dh).transpose(1, 2)
        if self.cfg.qk_norm == "l2":
            q = F.normalize(q, dim=-1)
            k = F.normalize(k, dim=-1)
            if self.cfg.qk_temperature is None:
                q = q * self.qk_temperature.view(H, 1, 1).to(q.dtype)
        if self.cfg.pos == "rotary":
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k, v

    def scores(self, x: Tensor) -> Tensor:
        """Pre-softmax scores (B, H, T, T) before the causal mask, by the same path as forward."""
        q, k, _ = self.qkv(x)
        return self.sdpa_scale * (q @ k.transpose(-1, -2))

    def forward(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x)
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.cfg.causal, scale=self.sdpa_scale
        )
        return self.o(out.transpose(1, 2).reshape(B, T, self.n_heads * self.d_head))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.kind = cfg.mlp
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.bias)
        if cfg.mlp == "swiglu":
            self.fc_gate = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.bias)
        self.fc_out = nn.Linear(cfg.d_mlp, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "swiglu":
            return self.fc_out(F.silu(self.fc_gate(x)) * self.fc_in(x))
        h = self.fc_in(x)
        h = F.gelu(h) if self.kind == "gelu" else F.relu(h) if self.kind == "relu" else F.silu(h)
        return self.fc_out(h)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = _norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.attn = Attention(cfg)
        self.has_mlp = cfg.d_mlp > 0
        if self.has_mlp:
            self.ln2 = _norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
            self.mlp = MLP(cfg)

    def forward(self, h: Tensor) -> Tensor:
        h = h + self.attn(self.ln1(h))
        if self.has_mlp:
            h = h + self.mlp(self.ln2(h))
        return h


class TinyTransformer(nn.Module):
    """Configurable pre-norm transformer; see the module docstring for the exact architecture.

    ``forward(x)``: x is int64 tokens (B, T) with T ≤ max_len, or float images (B, C, H, W) when
    ``patch_size > 0``. Returns logits (B, n_out) for ``readout="last"`` and (B, T, n_out) for
    ``readout="all"``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
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
        self.ln_f = _norm(cfg.norm if cfg.final_norm else "none", d, cfg.norm_eps, cfg.bias)
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
    def embed_input(self, x: Tensor) -> Tensor:
        """Input → residual stream (B, T, d_model): token/patch embedding (+ class token) + positions."""
        cfg = self.cfg
        if cfg.images:
            if (
                x.dim() != 4
                or x.shape[1] != cfg.in_channels
                or x.shape[2] != cfg.image_size
                or x.shape[3] != cfg.image_size
            ):
                raise RankdecayError(
                    f"expected images of shape (B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}), "
                    f"got {tuple(x.shape)}; match model.in_channels/image_size to the data."
                )
            h = self.patch_embed(patchify(x.to(self.patch_embed.weight.dtype), cfg.patch_size))
            if cfg.pool == "cls":
                h = torch.cat([h, self.cls_token.to(h.dtype).expand(h.shape[0], 1, -1)], dim=1)
        else:
            if x.dim() != 2:
                raise RankdecayError(
                    f"token input must be (B, T), got shape {tuple(x.shape)}; reshape the batch."
                )
            if x.shape[1] > cfg.max_len:
                raise RankdecayError(
                    f"sequence length {x.shape[1]} exceeds model.max_len={cfg.max_len}; raise model.max_len."
                )
            h = self.embed(x)
        if cfg.pos == "learned":
            h = h + self.pos_embed.weight[: h.shape[1]].to(h.dtype)
        return h

    def hidden_states(self, x: Tensor) -> Tensor:
        """Residual stream after the final norm, (B, T, d_model)."""
        h = self.embed_input(x)
        for block in self.blocks:
            h = block(h)
        return self.ln_f(h)

    def forward(self, x: Tensor) -> Tensor:
        h = self.hidden_states(x)
        if self.cfg.readout == "last":
            h = h.mean(dim=1) if (self.cfg.images and self.cfg.pool == "mean") else h[:, -1]
        if self.cfg.tie_embeddings:
            return h @ self.embed.weight.T
        return self.unembed(h)

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
            raise RankdecayError(
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
