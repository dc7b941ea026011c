"""Per-module extraction (rankdecay.heads + rankdecay.attention_spec) against the models' own forward.

One harness for every architecture of ``attention_spec.ARCHITECTURES``: each model is built from
its config class with tiny random weights (no download), biases zeroed, position-dependent
score terms neutralised (rotary at position 0, T5/MPNet/DeBERTa relative embeddings zeroed,
BLOOM's ALiBi added back from the model's own function), in float64. Forward hooks record, per
attention module and per call, the inputs of its q, k and v projections and the input and output
of its output projection. From the extracted factors alone the test then rebuilds, per head,

    P_h = softmax(scale · (X_q W_Q^h)(X_k W_K^h)ᵀ + mask),   z_h = P_h X_v W_V^h,

and requires: z_h equals head h's slice of the output projection's input; the model's own
probabilities, recovered as z_h · pinv(X_v W_V^h) (exact: X_v W_V^h has full row rank, S ≤ r),
equal P_h; and Σ_h z_h W_O^h equals the output projection's output. A wrong split, transpose,
head order, GQA map or scale changes these at O(1); the negative control (heads rolled) must
fail. Tolerances are float32-sized because several models compute softmax in float32.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from roles_check import assert_params_are_the_factors
from torch import Tensor, nn

from rankdecay.attention_spec import ARCHITECTURES, architectures_table
from rankdecay.heads import (
    LayerHeads,
    UnrecognizedAttentionWarning,
    UnsupportedModelError,
    attention_heads,
    unrecognized_attention,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
t = transformers

D, H, L, T, B = 32, 4, 2, 6, 2
TOL = {"rtol": 1e-5, "atol": 1e-6}
P_TOL = {"rtol": 1e-4, "atol": 1e-5}


def _randomize(model: nn.Module, seed: int = 0, zero: tuple[str, ...] = ()) -> nn.Module:
    """O(1) scores, zero biases (and the parameters matching ``zero``), gains in [0.5, 1.5]."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or any(re.search(z, name) for z in zero):
                p.zero_()
            elif p.dim() >= 2:
                p.copy_(
                    torch.randn(p.shape, generator=g, dtype=p.dtype)
                    * (1.5 / math.sqrt(p.shape[-1]))
                )
            else:
                p.copy_(0.5 + torch.rand(p.shape, generator=g, dtype=p.dtype))
    return model.double().eval()


def _ids(n: int = T, seed: int = 1) -> Tensor:
    """Distinct tokens per row (equal tokens make equal rows, and X_v W_V rank-deficient)."""
    g = torch.Generator().manual_seed(seed)
    return 3 + torch.rand(B, 37, generator=g).argsort(-1)[:, :n]


def _pos0(n: int = T) -> Tensor:
    return torch.zeros(B, n, dtype=torch.long)


def _pixels(size: int = 8) -> Tensor:
    return torch.randn(
        B, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )


def _decoder_self(lh: LayerHeads) -> bool:
    return lh.kind == "self" and "decoder" in lh.name


@dataclass
class Case:
    build: Callable[[], nn.Module]
    inputs: Callable[[nn.Module], dict[str, Any]]
    causal: Callable[[LayerHeads], bool]
    n_layers: int
    family: str
    kinds: tuple[str, ...] = ("self",)
    bias: Callable[[LayerHeads, int], Tensor] | None = None  # extra score term (B, H, T, S)
    calls_per_layer: int | Callable[[LayerHeads], int] = 1  # a number, or one per layer
    flags: dict[str, object] = field(default_factory=dict)  # flags every layer must carry
    #: run after extraction, before the forward: turns off what the check leaves out of the
    #: scores (QK-norms, attention sinks), so that the model computes softmax(scale·q·kᵀ)
    neutralise: Callable[[nn.Module], None] | None = None
    time_first: bool = False  # activations (T, B, d) (FSMT): transposed before the check
    #: a forward check of its own (model, extracted layers), run instead of the recorded
    #: per-head one, with its own rolled control (JetMoE: routed per-token experts)
    check: Callable[[nn.Module, list[LayerHeads]], None] | None = None


def _always(lh: LayerHeads) -> bool:
    return True


def _never(lh: LayerHeads) -> bool:
    return False


def _lm(config_cls: Any, model_cls: Any, **kw: Any) -> Callable[[], nn.Module]:
    base = dict(
        vocab_size=50,
        hidden_size=D,
        num_hidden_layers=L,
        num_attention_heads=H,
        intermediate_size=2 * D,
        attn_implementation="eager",
    )
    base.update(kw)
    return lambda: model_cls(config_cls(**base))


QK_NORMS = ("q_norm", "k_norm", "q_layernorm", "k_layernorm", "qk_norm")


def _no_qk_norm(model: nn.Module) -> None:
    """Replace every attention module's QK-norm (per head, full width, Llama-4's weightless L2
    norm) by the identity: the factors give the raw q·kᵀ, the norm is a flag."""
    for module in list(model.modules()):
        for name in QK_NORMS:
            if isinstance(getattr(module, name, None), nn.Module):
                setattr(module, name, nn.Identity())


def _no_qk_norm_open_gate(model: nn.Module) -> None:
    """Gated attention (Qwen3-Next): no QK-norm, and each head's output gate held open —
    a bias of +40 on the gate rows [H, 2, r][:, 1] of q_proj (whose weights are there too)
    makes sigmoid(gate) = 1 to rounding, so the out-projection reads the plain context."""
    _no_qk_norm(model)
    for module in model.modules():
        q = getattr(module, "q_proj", None)
        gated = ("Qwen3NextAttention", "Qwen3_5Attention", "Qwen3_5MoeAttention")
        if type(module).__name__ in gated and isinstance(q, nn.Linear):
            r = int(module.head_dim)
            bias = torch.zeros(q.out_features, dtype=q.weight.dtype)
            bias.view(-1, 2, r)[:, 1] = 40.0
            q.bias = nn.Parameter(bias)


def _zero_params(model: nn.Module, pattern: str) -> None:
    """Zero the parameters whose names match ``pattern`` (a path the check leaves out)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if re.search(pattern, name):
                p.zero_()


def _no_qk_or_value_norm(model: nn.Module) -> None:
    """Gemma-4 vision: QK-norms off, and the per-head RMS norm of the values (``v_norm``, a
    flag) replaced by the identity, so the context is P·(x W_V)."""
    _no_qk_norm(model)
    for module in list(model.modules()):
        if isinstance(getattr(module, "v_norm", None), nn.Module):
            module.v_norm = nn.Identity()


def _no_sinks(model: nn.Module) -> None:
    """GPT-OSS: a per-head sink logit joins each softmax; −∞ removes it (a flag, not W_QK)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(getattr(module, "sinks", None), nn.Parameter):
                module.sinks.fill_(float("-inf"))


def _causal_lm_inputs(m: nn.Module) -> dict[str, Any]:
    return {"input_ids": _ids(), "position_ids": _pos0()}


def _bloom_alibi(lh: LayerHeads, n: int) -> Tensor:
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    alibi = build_alibi_tensor(torch.ones(B, n, dtype=torch.long), lh.n_heads, torch.float64)
    return alibi.view(B, lh.n_heads, 1, n)


class CausalSelfAttention(nn.Module):
    """nanoGPT's CausalSelfAttention (model.py), faithfully: fused c_attn, c_proj, n_head."""

    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=True)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=True)
        self.n_head, self.n_embd = n_head, n_embd

    def forward(self, x: Tensor) -> Tensor:
        Bx, Tx, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(Bx, Tx, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(Bx, Tx, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(Bx, Tx, self.n_head, C // self.n_head).transpose(1, 2)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(Bx, Tx, C)
        return self.c_proj(y)


class NanoBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(D)
        self.attn = CausalSelfAttention(D, H)
        self.ln_2 = nn.LayerNorm(D)
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(50, D),
                wpe=nn.Embedding(16, D),
                h=nn.ModuleList([NanoBlock() for _ in range(L)]),
                ln_f=nn.LayerNorm(D),
            )
        )

    def forward(self, idx: Tensor) -> Tensor:
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(idx.shape[1]))
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)


def _timm_vit() -> nn.Module:
    from _timm_shim import import_timm

    import_timm()
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=8, patch_size=4, embed_dim=D, depth=L, num_heads=H, num_classes=0
    )


def _peft_llama() -> nn.Module:
    peft = pytest.importorskip("peft")
    base = _lm(t.LlamaConfig, t.LlamaModel, num_key_value_heads=2)()
    cfg = peft.LoraConfig(
        r=2, lora_alpha=6, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    model = peft.get_peft_model(base, cfg)
    return model


def _enc_dec_sizes(decoder_heads: int = H) -> dict[str, int]:
    """The tiny encoder–decoder sizes (BART-style config names) of the seq2seq cases."""
    return dict(
        d_model=D,
        encoder_layers=L,
        decoder_layers=L,
        encoder_attention_heads=H,
        decoder_attention_heads=decoder_heads,
        encoder_ffn_dim=2 * D,
        decoder_ffn_dim=2 * D,
    )


def _seq2seq_inputs(m: nn.Module) -> dict[str, Any]:
    return {"input_ids": _ids(), "decoder_input_ids": _ids(seed=3)}


def _whisper_inputs(m: nn.Module) -> dict[str, Any]:
    feats = torch.randn(B, 8, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    return {"input_features": feats, "decoder_input_ids": _ids(seed=3)}


def _ved() -> nn.Module:
    enc = t.ViTConfig(
        image_size=8,
        patch_size=4,
        hidden_size=D,
        num_hidden_layers=L,
        num_attention_heads=H,
        intermediate_size=2 * D,
    )
    dec = t.GPT2Config(
        vocab_size=50,
        n_embd=D,
        n_layer=L,
        n_head=H,
        n_positions=16,
        add_cross_attention=True,
        is_decoder=True,
        bos_token_id=0,
        eos_token_id=0,
    )
    cfg = t.VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg._attn_implementation = "eager"
    model = t.VisionEncoderDecoderModel(cfg)
    model.set_attn_implementation("eager")
    return model


def _moa_output(lh: LayerHeads, router: Tensor, top_k: int, x: Tensor) -> Tensor:
    """JetMoE's attention output rebuilt from the factors: per head h = e·H_kv + j,
    ctx_h = softmax(scale·(x W_Q^h)(x W_K^h)ᵀ + causal) x W_V^h; expert e's output
    Σ_j ctx_{e·H_kv+j} W_O^{e·H_kv+j}; the token's output Σ_e g_e(t)·(expert e's), g = softmax
    over the router's top-k logits (the model's own router weight ``router``, (E, d))."""
    Bx, Tx, _ = x.shape
    q = torch.einsum("btd,hdr->bhtr", x, lh.W_Q)
    k = torch.einsum("bsd,hdr->bhsr", x, lh.W_K)
    v = torch.einsum("bsd,hdr->bhsr", x, lh.W_V)
    scores = lh.scale * q @ k.mT
    scores = scores.masked_fill(torch.ones(Tx, Tx, dtype=torch.bool).triu(1), float("-inf"))
    ctx = scores.softmax(-1) @ v
    E = router.shape[0]
    per_expert = torch.einsum("bhtr,hre->bthe", ctx, lh.W_O).view(Bx, Tx, E, -1, x.shape[-1])
    logits = (x @ router.T).float()  # the model routes in float32
    top, index = logits.topk(top_k, -1)
    gates = torch.zeros(Bx, Tx, E, dtype=x.dtype).scatter(-1, index, top.softmax(-1).to(x.dtype))
    return torch.einsum("bte,bted->btd", gates, per_expert.sum(3))


def _jetmoe_check(model: nn.Module, layers: list[LayerHeads]) -> None:
    """Each JetMoE attention layer's output equals :func:`_moa_output` of its factors; with the
    heads rolled (another expert's query and output for each head) it does not."""
    seen: dict[str, tuple[Tensor, Tensor]] = {}
    handles = []
    for lh in layers:
        module = model.get_submodule(lh.name)

        def hook(
            _m: nn.Module, args: tuple, kwargs: dict, output: Any, name: str = lh.name
        ) -> None:
            seen[name] = (kwargs.get("hidden_states", args[0] if args else None), output[0])

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(input_ids=_ids(), position_ids=_pos0(), attention_mask=torch.ones(B, T))
    finally:
        for h in handles:
            h.remove()
    for lh in layers:
        module = model.get_submodule(lh.name)
        router, top_k = module.experts.router.layer.weight.detach(), int(module.top_k)
        x, out = seen[lh.name]
        torch.testing.assert_close(_moa_output(lh, router, top_k, x), out, **TOL)
        rolled = dataclasses.replace(lh, W_Q=lh.W_Q.roll(1, 0), W_O=lh.W_O.roll(1, 0))
        with pytest.raises(AssertionError):
            torch.testing.assert_close(_moa_output(rolled, router, top_k, x), out, **TOL)


def _gemma4_audio_compare(
    lh: LayerHeads, rec: dict[str, Tensor], s: Tensor, module: nn.Module, left: int, right: int
) -> None:
    """One Gemma-4 audio attention call rebuilt from the factors, in float64: per head
    P_h = softmax(scale·(x W_Q^h diag(s))(x W_K^h)ᵀ + window), the window written out from the
    config as transformers' ``sliding_window_mask_function((left − 1, right))`` reads it
    (0 ≤ i − j < left − 1 or 0 < j − i < right), relative position scores and soft-cap off.
    P_h equals the probabilities the module returns (query i in block b = i // C, row i mod C;
    key j in context column past_h + j − b·C, past_h = the module's max_past_horizon; the
    other columns must hold no mass), P_h x W_V^h equals head h of ``post``'s input and
    Σ_h (P_h x W_V^h) W_O^h ``post``'s output."""
    x = rec["x"].double()
    n = x.shape[1]
    q = torch.einsum("btd,hdr->bhtr", x, lh.W_Q.double()) * s
    k = torch.einsum("bsd,hdr->bhsr", x, lh.W_K.double())
    v = torch.einsum("bsd,hdr->bhsr", x, lh.W_V.double())
    assert lh.scale is not None
    scores = lh.scale * q @ k.mT
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    dist = i - j
    allowed = ((dist >= 0) & (dist < left - 1)) | ((dist < 0) & (-dist < right))
    P = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    ctx = P @ v
    probs = rec["probs"].double()  # (B, H, blocks, C, context)
    C, width, past_h = probs.shape[3], probs.shape[4], int(module.max_past_horizon)
    col = past_h + j - (i // C) * C
    inside = (col >= 0) & (col < width)
    rows = probs[:, :, i // C, i % C, col.clamp(0, width - 1)]  # (B, H, n, n)
    P_model = rows * inside
    torch.testing.assert_close(P, P_model, **P_TOL)
    whole = probs.flatten(2, 3)[:, :, :n].sum(-1)  # every context column of query i
    torch.testing.assert_close(whole, P_model.sum(-1), **P_TOL)  # no mass elsewhere
    z = rec["z"].double()
    torch.testing.assert_close(ctx, z.view(*z.shape[:2], lh.n_heads, -1).transpose(1, 2), **P_TOL)
    out = torch.einsum("bhtr,hre->bte", ctx, lh.W_O.double())
    torch.testing.assert_close(out, rec["out"].double(), **P_TOL)


def _gemma4_audio_check(model: nn.Module, layers: list[LayerHeads]) -> None:
    """Gemma-4 audio (Gemma4AudioAttention, eager float32 only): relative position scores
    (relative_k_proj) zeroed and the soft-cap set to 1e10 (c·tanh(s/c) = s), a full forward of
    the encoder on T frames (one chunk); each call equals :func:`_gemma4_audio_compare` with
    s = softplus(per_dim_scale) (the parameter the ``per_dim_scale`` flag names). Controls:
    heads rolled, and s left out (the flag is not decoration), each must fail."""
    model.float()  # the module computes q, k, v in float32 and cannot run in float64
    recs: dict[str, dict[str, Tensor]] = {}
    handles = []
    for lh in layers:
        module = model.get_submodule(lh.name)
        with torch.no_grad():
            module.relative_k_proj.weight.zero_()
            module.softcap.fill_(1e10)
        rec: dict[str, Tensor] = {}
        recs[lh.name] = rec

        def pre(_m: nn.Module, args: tuple, kwargs: dict, rec: dict = rec) -> None:
            rec["x"] = kwargs.get("hidden_states", args[0] if args else None)

        def post(_m: nn.Module, args: tuple, output: Any, rec: dict = rec) -> None:
            rec["probs"] = output[1]

        def o_in(_m: nn.Module, args: tuple, rec: dict = rec) -> None:
            rec["z"] = args[0]

        def o_out(_m: nn.Module, args: tuple, output: Tensor, rec: dict = rec) -> None:
            rec["out"] = output

        handles += [
            module.register_forward_pre_hook(pre, with_kwargs=True),
            module.register_forward_hook(post),
            module.post.register_forward_pre_hook(o_in),
            module.post.register_forward_hook(o_out),
        ]
    try:
        with torch.no_grad():
            feats = torch.randn(B, 4 * T, 8, generator=torch.Generator().manual_seed(4))
            model(input_features=feats)  # two stride-2 convolutions: 4·T frames → T
    finally:
        for h in handles:
            h.remove()
    cfg = model.config
    left, right = cfg.attention_context_left, cfg.attention_context_right
    for lh in layers:
        module = model.get_submodule(lh.name)
        assert lh.flags["sliding_window"] == (left - 1) + max(right - 1, 0)
        s_name = lh.flags["per_dim_scale"]
        assert s_name == f"{lh.name}.per_dim_scale"
        s = torch.nn.functional.softplus(model.get_parameter(str(s_name)).detach().double())
        rec = recs[lh.name]
        _gemma4_audio_compare(lh, rec, s, module, left, right)
        rolled = dataclasses.replace(
            lh, W_Q=lh.W_Q.roll(1, 0), W_K=lh.W_K.roll(1, 0), W_V=lh.W_V.roll(1, 0)
        )
        with pytest.raises(AssertionError):
            _gemma4_audio_compare(rolled, rec, s, module, left, right)
        with pytest.raises(AssertionError):
            _gemma4_audio_compare(lh, rec, torch.ones_like(s), module, left, right)


def _gemma3n_audio_check(model: nn.Module, layers: list[LayerHeads]) -> None:
    """Gemma-3n audio (Gemma3nAudioConformerAttention: q/k/v in ``attn``, ``post`` beside it;
    float64): relative position scores (``relative_position_embedding.pos_proj``) zeroed and
    the soft-cap set to 1e10, a full encoder forward on T frames (two chunks). Per head
    P_h = softmax(scale·(x W_Q^h diag(s))(x W_K^h)ᵀ + window), s = softplus(per_dim_scale), the
    window written out from the config (keys i − (left − 1) … i + right, the module's own
    ``local_causal_valid_mask``): P_h x W_V^h equals head h of ``attn``'s output (= ``post``'s
    input), the module's probabilities recovered as ctx_h·pinv(x W_V^h) equal P_h, and
    Σ_h (P_h x W_V^h) W_O^h ``post``'s output. Controls: heads rolled, s left out."""
    recs: dict[str, dict[str, Tensor]] = {}
    handles = []
    for lh in layers:
        module = model.get_submodule(lh.name)
        with torch.no_grad():
            module.attn.relative_position_embedding.pos_proj.weight.zero_()
            module.attn.softcap.fill_(1e10)
        rec: dict[str, Tensor] = {}
        recs[lh.name] = rec

        def attn_io(_m: nn.Module, args: tuple, output: Tensor, rec: dict = rec) -> None:
            rec["x"], rec["ctx"] = args[0], output

        def o_io(_m: nn.Module, args: tuple, output: Tensor, rec: dict = rec) -> None:
            rec["z"], rec["out"] = args[0], output

        handles += [
            module.attn.register_forward_hook(attn_io),
            module.post.register_forward_hook(o_io),
        ]
    try:
        with torch.no_grad():
            mel = torch.randn(B, 4 * T, 8, generator=torch.Generator().manual_seed(4)).double()
            model(mel, torch.zeros(B, 4 * T, dtype=torch.bool))  # True would mark padding
    finally:
        for h in handles:
            h.remove()
    cfg = model.config
    past, future = cfg.conf_attention_context_left - 1, cfg.conf_attention_context_right

    def compare(lh: LayerHeads, rec: dict[str, Tensor], s: Tensor) -> None:
        x, n = rec["x"], rec["x"].shape[1]
        q = torch.einsum("btd,hdr->bhtr", x, lh.W_Q) * s
        k = torch.einsum("bsd,hdr->bhsr", x, lh.W_K)
        v = torch.einsum("bsd,hdr->bhsr", x, lh.W_V)
        assert lh.scale is not None
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        allowed = (j - i >= -past) & (j - i <= future)
        P = (lh.scale * q @ k.mT).masked_fill(~allowed, float("-inf")).softmax(-1)
        ctx = P @ v
        torch.testing.assert_close(ctx, rec["ctx"].transpose(1, 2), **TOL)
        z = rec["z"]
        torch.testing.assert_close(ctx, z.view(*z.shape[:2], lh.n_heads, -1).transpose(1, 2), **TOL)
        assert torch.linalg.matrix_rank(v).min() == n
        P_model = rec["ctx"].transpose(1, 2) @ torch.linalg.pinv(v)
        torch.testing.assert_close(P, P_model, **P_TOL)
        torch.testing.assert_close(torch.einsum("bhtr,hre->bte", ctx, lh.W_O), rec["out"], **TOL)

    for lh in layers:
        assert lh.flags["sliding_window"] == past + 1 + future
        s_name = lh.flags["per_dim_scale"]
        assert s_name == f"{lh.name}.attn.per_dim_scale"
        s = torch.nn.functional.softplus(model.get_parameter(str(s_name)).detach())
        rec = recs[lh.name]
        compare(lh, rec, s)
        rolled = dataclasses.replace(
            lh, W_Q=lh.W_Q.roll(1, 0), W_K=lh.W_K.roll(1, 0), W_V=lh.W_V.roll(1, 0)
        )
        with pytest.raises(AssertionError):
            compare(rolled, rec, s)
        with pytest.raises(AssertionError):
            compare(lh, rec, torch.ones_like(s))


def _fan_in_rescale(model: nn.Module, pattern: str) -> None:
    """Rescale the parameters matching ``pattern`` from ``_randomize``'s 1/√(last dim) to
    1/√(fan-in) (a 1×1 convolution's last dim is 1, XLNet's (d, H, r) reads d): O(1) scores,
    a softmax that is not one-hot."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if re.search(pattern, name):
                fan_in = p.shape[0] if p.dim() == 3 and p.shape[-1] != 1 else math.prod(p.shape[1:])
                p.mul_(math.sqrt(p.shape[-1] / fan_in))


def _squeezebert_check(model: nn.Module, layers: list[LayerHeads]) -> None:
    """SqueezeBERT (q/k/v 1×1 ``nn.Conv1d`` on (B, C, T), possibly grouped; out-projection
    the block's ``post_attention.conv1d``), float64, biases zeroed, no padding: per head
    P_h = softmax(scale·(X W_Q^h)(X W_K^h)ᵀ) with X the attention module's input (transposed
    to (B, T, C)); ``_check`` requires z_h = P_h X W_V^h to be head h of ``post_attention.conv1d``'s
    input, the module's probabilities (z_h·pinv(X W_V^h)) to be P_h and Σ_h z_h W_O^h the conv's
    output; the module's own scores (``output_attentions``) equal scale·(X W_Q^h)(X W_K^h)ᵀ.
    Controls: heads rolled, and the grouped weights read as if ungrouped (W_Q from the
    (d, d/G) weight tiled, not block-diagonal), each must fail."""
    _fan_in_rescale(model, r"(query|key|value|conv1d)\.weight$")
    with torch.no_grad():
        layers = attention_heads(model, strict=True)  # after the rescale (grouped: copies)
    recs: dict[str, dict[str, Tensor]] = {}
    handles = []
    for lh in layers:
        rec: dict[str, Tensor] = {}
        recs[lh.name] = rec

        def attn_in(_m: nn.Module, args: tuple, output: Any, rec: dict = rec) -> None:
            rec["x"] = args[0].transpose(1, 2)
            rec["scores"] = output["attention_score"]

        def o_io(_m: nn.Module, args: tuple, output: Tensor, rec: dict = rec) -> None:
            rec["z"], rec["out"] = args[0].transpose(1, 2), output.transpose(1, 2)

        block = lh.name.rsplit(".", 1)[0]
        handles += [
            model.get_submodule(lh.name).register_forward_hook(attn_in),
            model.get_submodule(f"{block}.post_attention.conv1d").register_forward_hook(o_io),
        ]
    try:
        with torch.no_grad():
            model(input_ids=_ids(), attention_mask=torch.ones(B, T), output_attentions=True)
    finally:
        for h in handles:
            h.remove()

    def compare(lh: LayerHeads, rec: dict[str, Tensor]) -> None:
        x = rec["x"]
        _check(lh, x, x, x, rec["z"], rec["out"], False, None)
        q = torch.einsum("btd,hdr->bhtr", x, lh.W_Q)
        k = torch.einsum("bsd,hdr->bhsr", x, lh.W_K)
        assert lh.scale is not None
        torch.testing.assert_close(lh.scale * q @ k.mT, rec["scores"], **TOL)

    for lh in layers:
        rec = recs[lh.name]
        compare(lh, rec)
        rolled = dataclasses.replace(
            lh, W_Q=lh.W_Q.roll(1, 0), W_K=lh.W_K.roll(1, 0), W_V=lh.W_V.roll(1, 0)
        )
        with pytest.raises(AssertionError):
            compare(rolled, rec)
        conv = model.get_submodule(f"{lh.name}.query")
        if conv.groups > 1:  # the (d, d/G) weight tiled over the groups: wrong off the blocks
            w = conv.weight.detach()[..., 0].repeat(1, conv.groups)
            tiled = dataclasses.replace(lh, W_Q=w.T.reshape(D, H, -1).permute(1, 0, 2))
            with pytest.raises(AssertionError):
                compare(tiled, rec)


def _xlnet_scores(
    model: nn.Module, lh: LayerHeads, rec: dict[str, Any], content_bias: bool = True
) -> Tensor:
    """XLNet's scores (B, H, i, j) from the factors: scale·[(x_i W_Q^h + u)·(x_j W_K^h)
    + positional + segment], u the parameter the ``content_bias`` flag names (left out with
    ``content_bias=False``); the positional term (x_i W_Q^h + r_r_bias)·(e W_R) through the
    module's own ``rel_shift_bnij`` and the segment term (x_i W_Q^h + r_s_bias)·seg_embed[s_ij]
    from the module's own tensors and the encodings e / segment matrix it was called with."""
    module = model.get_submodule(lh.name)
    x = rec["h"]  # (T, B, d)
    q = torch.einsum("ibd,ndr->ibnr", x, lh.W_Q)
    k = torch.einsum("jbd,ndr->jbnr", x, lh.W_K)
    u = model.get_parameter(str(lh.flags["content_bias"])) if content_bias else 0.0
    ac = torch.einsum("ibnd,jbnd->bnij", q + u, k)
    k_r = torch.einsum("ibh,hnd->ibnd", rec["r"].to(module.r.dtype), module.r)  # as the module
    bd = torch.einsum("ibnd,jbnd->bnij", q + module.r_r_bias, k_r)
    bd = module.rel_shift_bnij(bd, klen=ac.shape[3])
    seg = model.get_parameter(str(lh.flags["segment_bias"]))
    ef = torch.einsum("ibnd,snd->ibns", q + module.r_s_bias, seg)
    ef = torch.einsum("ijbs,ibns->bnij", rec["seg_mat"], ef)
    assert lh.scale is not None
    return lh.scale * (ac + bd + ef)


def _xlnet_compare(model: nn.Module, lh: LayerHeads, rec: dict[str, Any], **kw: bool) -> None:
    """P_h = softmax(:func:`_xlnet_scores`) equals the module's probabilities, z_h = P_h X W_V^h
    its per-head context (``attn_vec``), and Σ_h z_h W_O^h its ``post_attention`` output
    (residual and layer norm off: the module's own method with ``residual=False`` and its
    ``layer_norm`` replaced by the identity)."""
    P = _xlnet_scores(model, lh, rec, **kw).softmax(-1)
    torch.testing.assert_close(P, rec["prob"].permute(2, 3, 0, 1), **P_TOL)
    v = torch.einsum("jbd,ndr->bnjr", rec["h"], lh.W_V)
    ctx = P @ v  # (B, H, T, r)
    torch.testing.assert_close(ctx, rec["vec"].permute(1, 2, 0, 3), **TOL)
    out = torch.einsum("bhtr,hre->tbe", ctx, lh.W_O)
    torch.testing.assert_close(out, rec["out"], **TOL)


def _xlnet_check(model: nn.Module, layers: list[LayerHeads]) -> None:
    """XLNet (XLNetRelativeAttention: raw q, k, v, o of shape (d, H, r), activations (T, B, d)),
    float64, the three query biases set nonzero (``_randomize`` zeroes parameters named "…bias"),
    a forward with two segments (token_type_ids) and no mask: nothing is neutralised —
    the content bias r_w_bias, the relative-position term (r, r_r_bias, the sinusoidal encodings
    the module was called with, its rel_shift) and the segment term (seg_embed, r_s_bias, the
    segment matrix it was called with) are added back from the model's own tensors
    (:func:`_xlnet_scores`), the QK circuit is scale·(x W_Q^h)(x W_K^h)ᵀ of the factors.
    Checked per layer by :func:`_xlnet_compare`. Controls: heads rolled, and the content bias
    left out (the flag is not decoration), each must fail."""
    _fan_in_rescale(model, r"rel_attn\.[qkvor]$")
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():  # _randomize zeroed the three biases (their names end in "bias")
        for name, p in model.named_parameters():
            if re.search(r"rel_attn\.r_[rsw]_bias$", name):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / math.sqrt(p.shape[-1]))
        layers = attention_heads(model, strict=True)
    recs: dict[str, dict[str, Any]] = {}
    originals = []
    handles = []
    for lh in layers:
        module = model.get_submodule(lh.name)
        rec: dict[str, Any] = {}
        recs[lh.name] = rec

        def pre(_m: nn.Module, args: tuple, rec: dict = rec) -> None:
            rec["h"], rec["r"], rec["seg_mat"] = args[0], args[4], args[5]

        def core(*args: Any, module: nn.Module = module, rec: dict = rec, **kw: Any) -> Any:
            out = type(module).rel_attn_core(module, *args, **kw)
            rec["vec"], rec["prob"] = out
            norm, module.layer_norm = module.layer_norm, nn.Identity()
            try:
                rec["out"] = module.post_attention(None, rec["vec"], residual=False)
            finally:
                module.layer_norm = norm
            return out

        module.rel_attn_core = core  # type: ignore[method-assign]
        originals.append(module)
        handles.append(module.register_forward_pre_hook(pre))
    token_types = torch.zeros(B, T, dtype=torch.long)
    token_types[:, T // 2 :] = 1
    try:
        with torch.no_grad():
            model(input_ids=_ids(), token_type_ids=token_types, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
        for module in originals:
            del module.rel_attn_core
    for lh in layers:
        rec = recs[lh.name]
        assert rec["seg_mat"] is not None and rec["r"] is not None
        with torch.no_grad():
            _xlnet_compare(model, lh, rec)
            rolled = dataclasses.replace(
                lh, W_Q=lh.W_Q.roll(1, 0), W_K=lh.W_K.roll(1, 0), W_V=lh.W_V.roll(1, 0)
            )
            with pytest.raises(AssertionError):
                _xlnet_compare(model, rolled, rec)
            with pytest.raises(AssertionError):
                _xlnet_compare(model, lh, rec, content_bias=False)


def _funnel_scores(
    model: nn.Module, lh: LayerHeads, rec: dict[str, Any], content: bool = True, pos: bool = True
) -> Tensor:
    """Funnel's scores (B, H, i, j) from the factors: with q = scale·X_q W_Q^h (the module
    scales q before every term), scale·(x_i W_Q^h + u)·(x_j W_K^h) (u the parameter the
    ``content_bias`` flag names; left out with ``content=False``) + the positional term (the
    module's own ``relative_positional_attention`` on q and the position encodings it was called
    with; left out with ``pos=False``) + the segment term (its ``relative_token_type_attention``
    on q and the token-type matrix it was called with, seg_embed and r_s_bias), both times the
    cls mask as in the module."""
    module = model.get_submodule(lh.name)
    assert lh.scale is not None
    q = lh.scale * torch.einsum("bid,ndr->binr", rec["xq"], lh.W_Q)
    k = torch.einsum("bjd,ndr->bjnr", rec["xk"], lh.W_K)
    position_embeds, token_type_mat, _, cls_mask = rec["inputs"]
    u = lh.scale * model.get_parameter(str(lh.flags["content_bias"])) if content else 0.0
    scores = torch.einsum("bind,bjnd->bnij", q + u, k)
    if pos:
        scores = scores + module.relative_positional_attention(
            position_embeds, q, k.shape[1], cls_mask
        )
    return scores + module.relative_token_type_attention(token_type_mat, q, cls_mask)


def _funnel_compare(model: nn.Module, lh: LayerHeads, rec: dict[str, Any], **kw: bool) -> None:
    """P_h = softmax(:func:`_funnel_scores`) equals the module's probabilities, z_h = P_h X_v W_V^h
    the input of its post_proj (head h's slice), Σ_h z_h W_O^h post_proj's output (bias zero)."""
    P = _funnel_scores(model, lh, rec, **kw).softmax(-1)
    torch.testing.assert_close(P, rec["prob"], **P_TOL)
    v = torch.einsum("bjd,ndr->bnjr", rec["xv"], lh.W_V)
    ctx = P @ v  # (B, H, i, r)
    Bq, Tq = ctx.shape[0], ctx.shape[2]
    torch.testing.assert_close(ctx, rec["z"].view(Bq, Tq, lh.n_heads, -1).transpose(1, 2), **TOL)
    torch.testing.assert_close(torch.einsum("bhtr,hre->bte", ctx, lh.W_O), rec["out"], **TOL)


def _funnel_check(model: nn.Module, layers: list[LayerHeads]) -> None:
    """Funnel (FunnelRelMultiheadAttention: nn.Linear q_head (no bias), k_head, v_head,
    post_proj; activations (B, T, d)), float64, biases zeroed except the three query biases
    r_w_bias, r_r_bias, r_s_bias (set nonzero), r_kernel at fan-in scale, a forward with two
    segments (token_type_ids) and no padding: nothing is neutralised — the content bias, the
    relative-position term and the segment term are added back from the model's own tensors
    (:func:`_funnel_scores`); the QK circuit is scale·(X_q W_Q^h)(X_k W_K^h)ᵀ of the factors.
    The encoder pools (block_sizes [1, 1]): the first layer of block 2 reads pooled queries
    (X_q shorter than X_k), which the check requires to have been seen. Checked per layer by
    :func:`_funnel_compare`. Controls: heads rolled, the content bias left out, the positional
    term left out, each must fail."""
    _fan_in_rescale(model, r"attention\.r_kernel$")
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # _randomize zeroed the three biases (their names end in "bias")
        for name, p in model.named_parameters():
            if re.search(r"attention\.r_[rsw]_bias$", name):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / math.sqrt(p.shape[-1]))
        layers = attention_heads(model, strict=True)
    recs: dict[str, dict[str, Any]] = {}
    handles = []
    for lh in layers:
        module = model.get_submodule(lh.name)
        rec: dict[str, Any] = {}
        recs[lh.name] = rec

        def pre(_m: nn.Module, args: tuple, rec: dict = rec) -> None:
            rec["xq"], rec["xk"], rec["xv"], rec["inputs"] = args[:4]

        def post(_m: nn.Module, args: tuple, output: Any, rec: dict = rec) -> None:
            rec["prob"] = output[1]

        def o_io(_m: nn.Module, args: tuple, output: Tensor, rec: dict = rec) -> None:
            rec["z"], rec["out"] = args[0], output

        handles += [
            module.register_forward_pre_hook(pre),
            module.register_forward_hook(post),
            module.post_proj.register_forward_hook(o_io),
        ]
    token_types = torch.zeros(B, T, dtype=torch.long)
    token_types[:, T // 2 :] = 1
    try:
        with torch.no_grad():
            model(input_ids=_ids(), token_type_ids=token_types, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    assert any(rec["xq"].shape[1] < rec["xk"].shape[1] for rec in recs.values())  # pooled q
    for lh in layers:
        rec = recs[lh.name]
        assert rec["inputs"][1] is not None and bool(rec["inputs"][2].all())  # segments, no pad
        with torch.no_grad():
            _funnel_compare(model, lh, rec)
            rolled = dataclasses.replace(
                lh, W_Q=lh.W_Q.roll(1, 0), W_K=lh.W_K.roll(1, 0), W_V=lh.W_V.roll(1, 0)
            )
            with pytest.raises(AssertionError):
                _funnel_compare(model, rolled, rec)
            with pytest.raises(AssertionError):
                _funnel_compare(model, lh, rec, content=False)
            with pytest.raises(AssertionError):
                _funnel_compare(model, lh, rec, pos=False)


CPMANT_BIAS = "position_bias.relative_attention_bias"


def _cpmant_compare(lh: LayerHeads, rec: dict[str, Any], position_bias: bool = True) -> None:
    """P_h = softmax(scale·(X W_Q^h)(X W_K^h)ᵀ + B_h, masked) equals the module's probabilities,
    z_h = P_h X W_V^h the input of its attention_out (head h's slice), Σ_h z_h W_O^h its output;
    B the position bias the module was called with (left out with ``position_bias=False``)."""
    x = rec["x"]
    assert lh.scale is not None
    q = torch.einsum("btd,hdr->bhtr", x, lh.W_Q)
    k = torch.einsum("bsd,hdr->bhsr", x, lh.W_K)
    scores = lh.scale * q @ k.mT + (rec["bias"] if position_bias else 0.0)
    mask = rec["mask"][:, None].bool()  # (B, 1, T, S), True = visible (int32 in the model)
    P = scores.masked_fill(~mask, float("-inf")).softmax(-1).masked_fill(~mask, 0.0)
    torch.testing.assert_close(P, rec["prob"], **P_TOL)
    ctx = P @ torch.einsum("bsd,hdr->bhsr", x, lh.W_V)
    Bq, Tq = ctx.shape[0], ctx.shape[2]
    torch.testing.assert_close(ctx, rec["z"].view(Bq, Tq, lh.n_heads, -1).transpose(1, 2), **TOL)
    torch.testing.assert_close(torch.einsum("bhtr,hre->bte", ctx, lh.W_O), rec["out"], **TOL)


def _cpmant_check(model: nn.Module, layers: list[LayerHeads]) -> None:
    """CPM-Ant (CpmAntAttention: nn.Linear project_q, project_k, project_v, attention_out, no
    biases; activations (B, T, d), a prompt token prepended by the model), float64, the model's
    position_bias.relative_attention_bias set random (``_randomize`` zeroes it): the relative-position (and segment
    pair) bias is added back from the tensor the model passed the module (B, H, T, S), as is its
    boolean attention mask (-inf where False, probabilities 0 there). Checked per layer by
    :func:`_cpmant_compare`, which requires the bias to be nonzero. Controls: heads rolled, the
    position bias left out, each must fail."""
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():  # _randomize zeroed it (its name ends in "bias")
        table = model.get_parameter(CPMANT_BIAS)
        table.copy_(torch.randn(table.shape, generator=g, dtype=table.dtype))
    recs: dict[str, dict[str, Any]] = {}
    handles = []
    for lh in layers:
        module = model.get_submodule(lh.name)
        rec: dict[str, Any] = {}
        recs[lh.name] = rec

        def pre(_m: nn.Module, args: tuple, rec: dict = rec) -> None:
            assert args[0] is args[1]  # self-attention: one input for q, k and v
            rec["x"], rec["mask"], rec["bias"] = args[0], args[2], args[3]

        def post(_m: nn.Module, args: tuple, output: Any, rec: dict = rec) -> None:
            rec["prob"] = output[1]

        def o_io(_m: nn.Module, args: tuple, output: Tensor, rec: dict = rec) -> None:
            rec["z"], rec["out"] = args[0], output

        handles += [
            module.register_forward_pre_hook(pre),
            module.register_forward_hook(post),
            module.attention_out.register_forward_hook(o_io),
        ]
    try:
        with torch.no_grad():
            model(input_ids=_ids(), output_attentions=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    for lh in layers:
        rec = recs[lh.name]
        assert rec["bias"].abs().max() > 0.1 and bool(rec["mask"].all())
        with torch.no_grad():
            _cpmant_compare(lh, rec)
            rolled = dataclasses.replace(
                lh, W_Q=lh.W_Q.roll(1, 0), W_K=lh.W_K.roll(1, 0), W_V=lh.W_V.roll(1, 0)
            )
            with pytest.raises(AssertionError):
                _cpmant_compare(rolled, rec)
            with pytest.raises(AssertionError):
                _cpmant_compare(lh, rec, position_bias=False)


def _squeezebert(**groups: int) -> Callable[[], nn.Module]:
    cfg = dict(q_groups=1, k_groups=1, v_groups=1, post_attention_groups=1)
    cfg.update(groups)
    return lambda: t.SqueezeBertModel(
        t.SqueezeBertConfig(
            vocab_size=50,
            hidden_size=D,
            embedding_size=D,
            num_hidden_layers=L,
            num_attention_heads=H,
            intermediate_size=2 * D,
            intermediate_groups=1,
            output_groups=1,
            **cfg,
        )
    )


def _gemma4_vision_config(**extra: Any) -> Any:
    """A tiny Gemma4VisionConfig (D wide, L layers, H heads of D/H, 2×2 patches)."""
    return t.Gemma4VisionConfig(
        hidden_size=D,
        intermediate_size=2 * D,
        num_hidden_layers=L,
        num_attention_heads=H,
        num_key_value_heads=H,
        head_dim=D // H,
        patch_size=2,
        position_embedding_size=16,
        pooling_kernel_size=1,
        **extra,
    )


CASES: dict[str, Case] = {
    "llama_gqa": Case(
        _lm(t.LlamaConfig, t.LlamaModel, num_key_value_heads=2),
        _causal_lm_inputs,
        _always,
        L,
        "Llama",
        flags={"rotary": True},
    ),
    "mistral_mqa": Case(
        _lm(t.MistralConfig, t.MistralModel, num_key_value_heads=1),
        _causal_lm_inputs,
        _always,
        L,
        "Mistral",
        flags={"sliding_window": 4096},
    ),
    "qwen2_gqa": Case(
        _lm(t.Qwen2Config, t.Qwen2Model, num_key_value_heads=2),
        _causal_lm_inputs,
        _always,
        L,
        "Qwen2",
    ),
    "gemma2": Case(
        _lm(
            t.Gemma2Config,
            t.Gemma2Model,
            num_key_value_heads=2,
            head_dim=8,
            query_pre_attn_scalar=16,
            attn_logit_softcapping=None,
            final_logit_softcapping=None,
        ),
        _causal_lm_inputs,
        _always,
        L,
        "Gemma-2",
    ),
    "gpt2": Case(
        lambda: t.GPT2Model(
            t.GPT2Config(
                vocab_size=50,
                n_embd=D,
                n_layer=L,
                n_head=H,
                n_positions=16,
                scale_attn_by_inverse_layer_idx=True,
                attn_implementation="eager",
            )
        ),
        lambda m: {"input_ids": _ids()},
        _always,
        L,
        "GPT-2",
    ),
    "gpt_bigcode": Case(
        lambda: t.GPTBigCodeModel(
            t.GPTBigCodeConfig(
                vocab_size=50,
                n_embd=D,
                n_layer=L,
                n_head=H,
                n_positions=16,
                multi_query=True,
                attn_implementation="eager",
            )
        ),
        lambda m: {"input_ids": _ids()},
        _always,
        L,
        "GPT-BigCode",
    ),
    "nanogpt": Case(NanoGPT, lambda m: {"idx": _ids()}, _always, L, "nanoGPT"),
    "gpt_neox": Case(
        _lm(t.GPTNeoXConfig, t.GPTNeoXModel, rotary_pct=0.5),
        _causal_lm_inputs,
        _always,
        L,
        "GPT-NeoX",
        flags={"partial_rotary": 0.5},
    ),
    "bloom": Case(
        lambda: t.BloomModel(
            t.BloomConfig(
                vocab_size=50, hidden_size=D, n_layer=L, n_head=H, attn_implementation="eager"
            )
        ),
        lambda m: {"input_ids": _ids()},
        _always,
        L,
        "BLOOM",
        bias=_bloom_alibi,
        flags={"alibi": True},
    ),
    "falcon": Case(
        _lm(t.FalconConfig, t.FalconModel, num_kv_heads=2, new_decoder_architecture=True),
        _causal_lm_inputs,
        _always,
        L,
        "Falcon",
        flags={"rotary": True},
    ),
    "falcon_mq": Case(
        _lm(t.FalconConfig, t.FalconModel, multi_query=True, new_decoder_architecture=False),
        _causal_lm_inputs,
        _always,
        L,
        "Falcon",
    ),
    "falcon_head_qkv": Case(
        _lm(t.FalconConfig, t.FalconModel, multi_query=False, new_decoder_architecture=False),
        _causal_lm_inputs,
        _always,
        L,
        "Falcon",
    ),
    "codegen": Case(
        lambda: t.CodeGenModel(
            t.CodeGenConfig(
                vocab_size=50,
                n_embd=D,
                n_layer=L,
                n_head=H,
                rotary_dim=4,
                n_positions=16,
                attn_implementation="eager",
            )
        ),
        _causal_lm_inputs,
        _always,
        L,
        "CodeGen",
        flags={"partial_rotary": 0.5},
    ),
    "phi3": Case(
        _lm(t.Phi3Config, t.Phi3Model, num_key_value_heads=2, pad_token_id=0),
        _causal_lm_inputs,
        _always,
        L,
        "Phi-3",
    ),
    "phi3_longrope": Case(  # LongRoPE scales cos/sin by √(1 + ln 4 / ln 16): m² in the scale
        _lm(
            t.Phi3Config,
            t.Phi3Model,
            num_key_value_heads=2,
            pad_token_id=0,
            max_position_embeddings=64,
            original_max_position_embeddings=16,
            rope_parameters={
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "short_factor": [1.0] * 4,
                "long_factor": [2.0] * 4,
                "original_max_position_embeddings": 16,
            },
        ),
        _causal_lm_inputs,
        _always,
        L,
        "Phi-3",
        flags={"rope_attention_factor": math.sqrt(1 + math.log(4) / math.log(16))},
    ),
    "phi": Case(
        _lm(t.PhiConfig, t.PhiModel, partial_rotary_factor=0.5),
        _causal_lm_inputs,
        _always,
        L,
        "Phi",
        flags={"partial_rotary": 0.5},
    ),
    "gptj": Case(
        lambda: t.GPTJModel(
            t.GPTJConfig(
                vocab_size=50,
                n_embd=D,
                n_layer=L,
                n_head=H,
                rotary_dim=4,
                n_positions=16,
                attn_implementation="eager",
            )
        ),
        _causal_lm_inputs,
        _always,
        L,
        "GPT-J",
        flags={"partial_rotary": 0.5},
    ),
    "opt": Case(
        lambda: t.OPTModel(
            t.OPTConfig(
                vocab_size=50,
                hidden_size=D,
                num_hidden_layers=L,
                num_attention_heads=H,
                ffn_dim=2 * D,
                word_embed_proj_dim=D,
                max_position_embeddings=16,
                attn_implementation="eager",
            )
        ),
        lambda m: {"input_ids": _ids()},
        _always,
        L,
        "OPT",
    ),
    "bart": Case(
        lambda: t.BartModel(
            t.BartConfig(
                vocab_size=50,
                d_model=D,
                encoder_layers=L,
                decoder_layers=L,
                encoder_attention_heads=H,
                decoder_attention_heads=H,
                encoder_ffn_dim=2 * D,
                decoder_ffn_dim=2 * D,
                max_position_embeddings=16,
                attn_implementation="eager",
            )
        ),
        _seq2seq_inputs,
        _decoder_self,
        3 * L,
        "BART",
        kinds=("self", "cross"),
    ),
    "whisper": Case(
        lambda: t.WhisperModel(
            t.WhisperConfig(
                vocab_size=50,
                d_model=D,
                encoder_layers=L,
                decoder_layers=L,
                encoder_attention_heads=H,
                decoder_attention_heads=H,
                encoder_ffn_dim=2 * D,
                decoder_ffn_dim=2 * D,
                num_mel_bins=8,
                max_source_positions=8,
                max_target_positions=16,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
                decoder_start_token_id=1,
                attn_implementation="eager",
            )
        ),
        _whisper_inputs,
        _decoder_self,
        3 * L,
        "Whisper",
        kinds=("self", "cross"),
    ),
    "t5": Case(
        lambda: t.T5Model(
            t.T5Config(
                vocab_size=50,
                d_model=D,
                d_kv=8,
                d_ff=2 * D,
                num_layers=L,
                num_heads=H,
                relative_attention_num_buckets=8,
                attn_implementation="eager",
            )
        ),
        _seq2seq_inputs,
        _decoder_self,
        3 * L,
        "T5",
        kinds=("self", "cross"),
        flags={"relative_position_bias": True},
    ),
    "clip": Case(
        lambda: t.CLIPModel(
            t.CLIPConfig(
                text_config=dict(
                    vocab_size=50,
                    hidden_size=D,
                    num_hidden_layers=L,
                    num_attention_heads=H,
                    intermediate_size=2 * D,
                    max_position_embeddings=16,
                ),
                vision_config=dict(
                    hidden_size=D,
                    num_hidden_layers=L,
                    num_attention_heads=H,
                    intermediate_size=2 * D,
                    image_size=8,
                    patch_size=4,
                ),
                attn_implementation="eager",
            )
        ),
        lambda m: {"input_ids": _ids(), "pixel_values": _pixels()},
        lambda lh: "text_model" in lh.name,
        2 * L,
        "CLIP",
    ),
    "bert": Case(
        _lm(t.BertConfig, t.BertModel), lambda m: {"input_ids": _ids()}, _never, L, "BERT"
    ),
    "bert_decoder": Case(
        _lm(t.BertConfig, t.BertModel, is_decoder=True, add_cross_attention=True),
        lambda m: {
            "input_ids": _ids(),
            "encoder_hidden_states": torch.randn(
                B, T, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64
            ),
        },
        lambda lh: lh.kind == "self",
        2 * L,
        "BERT",
        kinds=("self", "cross"),
    ),
    "distilbert": Case(
        lambda: t.DistilBertModel(
            t.DistilBertConfig(
                vocab_size=50,
                dim=D,
                n_layers=L,
                n_heads=H,
                hidden_dim=2 * D,
                attn_implementation="eager",
            )
        ),
        lambda m: {"input_ids": _ids()},
        _never,
        L,
        "DistilBERT",
    ),
    "albert": Case(
        _lm(t.AlbertConfig, t.AlbertModel, embedding_size=16),
        lambda m: {"input_ids": _ids()},
        _never,
        1,
        "ALBERT",
        calls_per_layer=L,
    ),
    "deberta_v2": Case(
        _lm(
            t.DebertaV2Config,
            t.DebertaV2Model,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            max_relative_positions=8,
            position_buckets=4,
            share_att_key=False,
        ),
        lambda m: {"input_ids": _ids()},
        _never,
        L,
        "DeBERTa-v2",
        flags={"relative_position_bias": True},
    ),
    "modernbert": Case(
        _lm(t.ModernBertConfig, t.ModernBertModel, pad_token_id=0, global_attn_every_n_layers=2),
        lambda m: {"input_ids": _ids(), "position_ids": _pos0()},
        _never,
        L,
        "ModernBERT",
        flags={"rotary": True},
    ),
    "mpnet": Case(
        _lm(t.MPNetConfig, t.MPNetModel),
        lambda m: {"input_ids": _ids()},
        _never,
        L,
        "MPNet",
        flags={"relative_position_bias": True},
    ),
    "vit": Case(
        lambda: t.ViTModel(
            t.ViTConfig(
                image_size=8,
                patch_size=4,
                hidden_size=D,
                num_hidden_layers=L,
                num_attention_heads=H,
                intermediate_size=2 * D,
                attn_implementation="eager",
            )
        ),
        lambda m: {"pixel_values": _pixels()},
        _never,
        L,
        "ViT",
    ),
    "timm_vit": Case(_timm_vit, lambda m: {"x": _pixels()}, _never, L, "timm"),
    "vision_encoder_decoder": Case(
        _ved,
        lambda m: {"pixel_values": _pixels(), "decoder_input_ids": _ids()},
        _decoder_self,
        3 * L,
        "ViT",
        kinds=("self", "cross"),
    ),
    # decoder families the per-module name table covers without a row of their own (survey:
    # docs/arch_survey.md); each checked here against its own forward
    "qwen3": Case(
        _lm(t.Qwen3Config, t.Qwen3Model, num_key_value_heads=2, head_dim=8),
        _causal_lm_inputs,
        _always,
        L,
        "Qwen3",
        flags={"qk_norm": "per_head", "rotary": True},
        neutralise=_no_qk_norm,
    ),
    "qwen3_next": Case(
        _lm(
            t.Qwen3NextConfig,
            t.Qwen3NextModel,
            experts_implementation="eager",
            num_key_value_heads=2,
            head_dim=8,
            layer_types=["full_attention"] * L,
            num_experts=2,
            num_experts_per_tok=1,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=16,
        ),
        _causal_lm_inputs,
        _always,
        L,
        "Qwen3-Next",
        flags={"qk_norm": "per_head", "rotary": True, "output_gate": True},
        neutralise=_no_qk_norm_open_gate,
    ),
    "qwen3_5_text": Case(
        _lm(
            t.Qwen3_5TextConfig,
            t.Qwen3_5TextModel,
            num_key_value_heads=2,
            head_dim=8,
            layer_types=["full_attention"] * L,
        ),
        _causal_lm_inputs,
        _always,
        L,
        "Qwen3-Next",
        flags={"qk_norm": "per_head", "rotary": True, "output_gate": True},
        neutralise=_no_qk_norm_open_gate,
    ),
    "qwen3_moe": Case(
        _lm(
            t.Qwen3MoeConfig,
            t.Qwen3MoeModel,
            experts_implementation="eager",  # grouped_mm has no float64
            num_key_value_heads=2,
            head_dim=8,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
        ),
        _causal_lm_inputs,
        _always,
        L,
        "Qwen3",
        flags={"qk_norm": "per_head"},
        neutralise=_no_qk_norm,
    ),
    "gemma3": Case(
        _lm(
            t.Gemma3TextConfig,
            t.Gemma3TextModel,
            num_key_value_heads=2,
            head_dim=8,
            query_pre_attn_scalar=16,
        ),
        _causal_lm_inputs,
        _always,
        L,
        "Gemma-3",
        flags={"qk_norm": "per_head", "rotary": True},
        neutralise=_no_qk_norm,
    ),
    "olmo2": Case(
        _lm(t.Olmo2Config, t.Olmo2Model, num_key_value_heads=2),
        _causal_lm_inputs,
        _always,
        L,
        "OLMo-2",
        flags={"qk_norm": "full"},
        neutralise=_no_qk_norm,
    ),
    "mixtral": Case(
        _lm(
            t.MixtralConfig,
            t.MixtralModel,
            experts_implementation="eager",  # grouped_mm has no float64
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
        ),
        _causal_lm_inputs,
        _always,
        L,
        "Mixtral",
    ),
    "qwen2_moe": Case(
        _lm(
            t.Qwen2MoeConfig,
            t.Qwen2MoeModel,
            experts_implementation="eager",  # grouped_mm has no float64
            num_key_value_heads=2,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=16,
        ),
        _causal_lm_inputs,
        _always,
        L,
        "Qwen2-MoE",
    ),
    "phimoe": Case(
        _lm(
            t.PhimoeConfig,
            t.PhimoeModel,
            experts_implementation="eager",  # grouped_mm has no float64
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
        ),
        _causal_lm_inputs,
        _always,
        L,
        "Phi-3.5-MoE",
    ),
    "stablelm": Case(
        _lm(t.StableLmConfig, t.StableLmModel, num_key_value_heads=2, qk_layernorm=True),
        _causal_lm_inputs,
        _always,
        L,
        "StableLM",
        flags={"partial_rotary": 0.25, "qk_norm": "per_head"},
        neutralise=_no_qk_norm,
    ),
    "cohere": Case(
        _lm(t.CohereConfig, t.CohereModel, num_key_value_heads=2, use_qk_norm=True),
        _causal_lm_inputs,
        _always,
        L,
        "Cohere",
        flags={"qk_norm": "per_head", "rotary": True},
        neutralise=_no_qk_norm,
    ),
    "granite": Case(  # attention_multiplier: the score scale is not 1/√r
        _lm(t.GraniteConfig, t.GraniteModel, num_key_value_heads=2, attention_multiplier=0.3),
        _causal_lm_inputs,
        _always,
        L,
        "Granite",
    ),
    "gpt_oss": Case(
        _lm(
            t.GptOssConfig,
            t.GptOssModel,
            experts_implementation="eager",  # grouped_mm has no float64
            num_key_value_heads=2,
            head_dim=8,
            num_local_experts=4,
            num_experts_per_tok=2,
        ),
        _causal_lm_inputs,
        _always,
        L,
        "GPT-OSS",
        flags={"attention_sinks": True, "rotary": True},
        neutralise=_no_sinks,
    ),
    "llama4_text": Case(  # layer 1 is a NoPE layer (no_rope_layer_interval=2)
        _lm(
            t.Llama4TextConfig,
            t.Llama4TextModel,
            experts_implementation="eager",  # grouped_mm has no float64
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size_mlp=2 * D,
            num_local_experts=2,
            no_rope_layer_interval=2,
        ),
        _causal_lm_inputs,
        _always,
        L,
        "Llama-4",
        neutralise=_no_qk_norm,
    ),
    # survey fixes: fused splits and name-table entries (docs/arch_survey.md)
    "persimmon": Case(
        _lm(t.PersimmonConfig, t.PersimmonModel, qk_layernorm=True),
        _causal_lm_inputs,
        _always,
        L,
        "Persimmon",
        flags={"partial_rotary": 0.5, "qk_norm": "per_head"},
        neutralise=_no_qk_norm,
    ),
    "gpt_neox_japanese": Case(
        _lm(t.GPTNeoXJapaneseConfig, t.GPTNeoXJapaneseModel, intermediate_multiple_size=2),
        _causal_lm_inputs,
        _always,
        L,
        "GPT-NeoX-Japanese",
        flags={"rotary": True},
    ),
    "bark_semantic": Case(
        lambda: t.BarkSemanticModel(
            t.BarkSemanticConfig(
                input_vocab_size=50,
                output_vocab_size=50,
                hidden_size=D,
                num_layers=L,
                num_heads=H,
                block_size=16,
                attn_implementation="eager",
            )
        ),
        lambda m: {"input_ids": _ids()},
        _always,
        L,
        "Bark",
    ),
    "blip2_vision": Case(
        lambda: t.Blip2VisionModel(
            t.Blip2VisionConfig(
                hidden_size=D,
                num_hidden_layers=L,
                num_attention_heads=H,
                intermediate_size=2 * D,
                image_size=8,
                patch_size=4,
                attn_implementation="eager",
            )
        ),
        lambda m: {"pixel_values": _pixels()},
        _never,
        L,
        "BLIP",
    ),
    "wav2vec2_conformer": Case(
        lambda: t.Wav2Vec2ConformerModel(
            t.Wav2Vec2ConformerConfig(
                hidden_size=D,
                num_hidden_layers=L,
                num_attention_heads=H,
                intermediate_size=2 * D,
                conv_dim=(16, 16),
                conv_stride=(5, 2),
                conv_kernel=(10, 3),
                num_feat_extract_layers=2,
                conv_depthwise_kernel_size=3,
                position_embeddings_type="relative",
                max_source_positions=64,
            )
        ),
        lambda m: {
            "input_values": torch.randn(
                B, 80, generator=torch.Generator().manual_seed(8), dtype=torch.float64
            )
        },
        _never,
        L,
        "Conformer",
        flags={"relative_position_bias": True},
    ),
    "pix2struct_vision": Case(  # out-projection named "output"; unscaled scores (T5-style)
        lambda: t.Pix2StructVisionModel(
            t.Pix2StructVisionConfig(
                hidden_size=D,
                num_hidden_layers=L,
                num_attention_heads=H,
                d_kv=8,
                d_ff=2 * D,
                patch_embed_hidden_size=12,
                seq_len=16,
            )
        ),
        lambda m: {
            "flattened_patches": torch.cat(
                [
                    torch.zeros(B, T, 2, dtype=torch.float64),
                    torch.randn(
                        B, T, 12, generator=torch.Generator().manual_seed(9), dtype=torch.float64
                    ),
                ],
                -1,
            )
        },
        _never,
        L,
        "Pix2Struct",
    ),
    "gpt_neo": Case(  # unscaled scores; layer 1 local (window 16 > T)
        lambda: t.GPTNeoModel(
            t.GPTNeoConfig(
                vocab_size=50,
                hidden_size=D,
                num_layers=L,
                num_heads=H,
                intermediate_size=2 * D,
                attention_types=[[["global", "local"], 1]],
                window_size=16,
                max_position_embeddings=16,
                attn_implementation="eager",
            )
        ),
        lambda m: {"input_ids": _ids()},
        _always,
        L,
        "GPT-Neo",
    ),
    "openai_privacy_filter": Case(  # q and k each scaled by r^(-1/4); bidirectional; sinks
        _lm(
            t.OpenAIPrivacyFilterConfig,
            t.OpenAIPrivacyFilterModel,
            pad_token_id=0,
            num_key_value_heads=2,
            head_dim=8,
            num_local_experts=4,
            num_experts_per_tok=2,
            experts_implementation="eager",
        ),
        _causal_lm_inputs,
        _never,
        L,
        "privacy filter",
        flags={"attention_sinks": True},
        neutralise=_no_sinks,
    ),
    "openai_gpt": Case(  # class "Attention" like timm's, but Conv1D c_attn: the name table
        lambda: t.OpenAIGPTModel(
            t.OpenAIGPTConfig(vocab_size=50, n_embd=D, n_layer=L, n_head=H, n_positions=16)
        ),
        lambda m: {"input_ids": _ids()},
        _always,
        L,
        "name table",
    ),
    "peft_lora_llama": Case(
        _peft_llama, _causal_lm_inputs, _always, L, "Llama", flags={"lora": True}
    ),
    "bart_uneven_heads": Case(  # decoder heads ≠ encoder heads (the checkpoint plan read both
        lambda: t.BartModel(  # from encoder_attention_heads, splitting the decoder's wrongly)
            t.BartConfig(
                vocab_size=50,
                **_enc_dec_sizes(decoder_heads=H // 2),
                max_position_embeddings=16,
                attn_implementation="eager",
            )
        ),
        _seq2seq_inputs,
        _decoder_self,
        3 * L,
        "BART",
        kinds=("self", "cross"),
    ),
    # gap helper "odd" (issue 14): time-first activations, BERT-style fused/odd self modules
    "fsmt": Case(  # activations (T, B, d): the harness transposes them (time_first)
        lambda: t.FSMTModel(
            t.FSMTConfig(
                src_vocab_size=50,
                tgt_vocab_size=50,
                **_enc_dec_sizes(),
                max_position_embeddings=16,
                pad_token_id=1,
                bos_token_id=0,
                eos_token_id=2,
                decoder_start_token_id=2,
            )
        ),
        # with use_cache on (the default) FSMTModel builds no causal mask, so in this call the
        # decoder reads every position (use_cache=False would mask, but its mask builder
        # overflows in float64: fill_with_neg_inf puts float64's min into a float32 tensor)
        _seq2seq_inputs,
        _never,
        3 * L,
        "name table",
        kinds=("self", "cross"),
        time_first=True,
    ),
    "deberta_v1": Case(  # fused in_proj [H, 3, r] in `self`, out-projection in `output.dense`
        _lm(
            t.DebertaConfig,
            t.DebertaModel,
            relative_attention=True,
            pos_att_type=["c2p", "p2c"],
            max_relative_positions=8,
        ),
        lambda m: {"input_ids": _ids()},
        _never,
        L,
        "DeBERTa (v1)",
        flags={"relative_position_bias": True},
    ),
    "convbert": Case(  # 2 attention heads (H / head_ratio) of d/4; the span convolutions'
        _lm(t.ConvBertConfig, t.ConvBertModel, embedding_size=D),  # output is zeroed
        lambda m: {"input_ids": _ids()},
        _never,
        L,
        "ConvBERT",
        flags={"span_convolution": 2},
        neutralise=lambda m: _zero_params(m, r"conv_out_layer\.weight$"),
    ),
    "lxmert": Case(  # language, vision, and one cross-modal layer called in both directions
        lambda: t.LxmertModel(
            t.LxmertConfig(
                vocab_size=50,
                hidden_size=D,
                num_attention_heads=H,
                intermediate_size=2 * D,
                l_layers=1,
                x_layers=1,
                r_layers=1,
                visual_feat_dim=12,
                visual_pos_dim=4,
            )
        ),
        lambda m: {
            "input_ids": _ids(),
            "visual_feats": torch.randn(
                B, 5, 12, generator=torch.Generator().manual_seed(11), dtype=torch.float64
            ),
            "visual_pos": torch.rand(
                B, 5, 4, generator=torch.Generator().manual_seed(12), dtype=torch.float64
            ),
        },
        _never,
        5,
        "LXMERT",
        kinds=("self", "cross"),
        calls_per_layer=lambda lh: 2 if lh.kind == "cross" else 1,
    ),
    # SqueezeBERT: q/k/v/o grouped 1×1 convolutions; G = 8 for v: groups of 4 channels, a
    # head of 8 spans two; G = 2 for q and o: two heads per group; k: one head per group
    "squeezebert": Case(
        _squeezebert(q_groups=2, k_groups=4, v_groups=8, post_attention_groups=2),
        lambda m: {"input_ids": _ids()},
        _never,
        L,
        "SqueezeBERT",
        flags={"grouped_projections": "q: 2, k: 4, v: 8, o: 2"},
        check=_squeezebert_check,
    ),
    "squeezebert_ungrouped": Case(  # G = 1 everywhere: the factors are views of the weights
        _squeezebert(),
        lambda m: {"input_ids": _ids()},
        _never,
        L,
        "SqueezeBERT",
        check=_squeezebert_check,
    ),
    "xlnet": Case(
        lambda: t.XLNetModel(
            t.XLNetConfig(vocab_size=50, d_model=D, n_layer=L, n_head=H, d_inner=2 * D)
        ),
        lambda m: {"input_ids": _ids()},
        _never,
        L,
        "XLNet",
        flags={"relative_position_bias": True},
        check=_xlnet_check,
    ),
    # Funnel: block_sizes [1, 1] (the second block pools its queries) + one decoder layer
    "funnel": Case(
        lambda: t.FunnelModel(
            t.FunnelConfig(
                vocab_size=50,
                block_sizes=[1, 1],
                num_decoder_layers=1,
                d_model=D,
                n_head=H,
                d_head=D // H,
                d_inner=2 * D,
            )
        ),
        lambda m: {"input_ids": _ids()},
        _never,
        3,
        "Funnel",
        flags={"relative_position_bias": True},
        check=_funnel_check,
    ),
    "funnel_factorized": Case(  # attention_type "factorized": the other positional term
        lambda: t.FunnelModel(
            t.FunnelConfig(
                vocab_size=50,
                block_sizes=[1, 1],
                num_decoder_layers=1,
                d_model=D,
                n_head=H,
                d_head=D // H,
                d_inner=2 * D,
                attention_type="factorized",
            )
        ),
        lambda m: {"input_ids": _ids()},
        _never,
        3,
        "Funnel",
        flags={"relative_position_bias": True},
        check=_funnel_check,
    ),
    "cpmant": Case(
        lambda: t.CpmAntModel(
            t.CpmAntConfig(
                vocab_size=50,
                hidden_size=D,
                num_attention_heads=H,
                dim_head=D // H,
                dim_ff=2 * D,
                num_hidden_layers=L,
                prompt_length=1,
            )
        ),
        lambda m: {"input_ids": _ids()},
        _never,
        L,
        "CPM-Ant",
        flags={"relative_position_bias": True},
        check=_cpmant_check,
    ),
    "jetmoe": Case(  # 3 experts × 2 key/value heads = 6 heads; 2 experts per token
        _lm(
            t.JetMoeConfig,
            t.JetMoeModel,
            num_key_value_heads=2,
            kv_channels=8,
            num_local_experts=3,
            num_experts_per_tok=2,
        ),
        _causal_lm_inputs,
        _always,
        L,
        "JetMoE",
        flags={"attention_experts": 3, "rotary": True},
        check=_jetmoe_check,
    ),
    "gemma4_text": Case(  # Gemma4TextAttention: scale 1, v_norm; no KV-shared layers here
        _lm(
            t.Gemma4TextConfig,
            t.Gemma4TextModel,
            num_key_value_heads=2,
            head_dim=8,
            global_head_dim=8,
            hidden_size_per_layer_input=8,
            vocab_size_per_layer_input=50,
            layer_types=["sliding_attention", "full_attention"],
        ),
        _causal_lm_inputs,
        _always,
        L,
        "Gemma-4 text",
        flags={"rotary": True, "qk_norm": "per_head", "value_norm": True},
        neutralise=_no_qk_or_value_norm,
    ),
    "gemma4_text_kv_shared": Case(  # layers 2, 3 reuse layers 0, 1's k/v; full layers: V = K,
        _lm(  # heads of 16 and one key/value head (per_layer_config)
            t.Gemma4TextConfig,
            t.Gemma4TextModel,
            num_hidden_layers=4,
            num_kv_shared_layers=2,
            attention_k_eq_v=True,
            num_key_value_heads=2,
            num_global_key_value_heads=1,
            head_dim=8,
            global_head_dim=16,
            hidden_size_per_layer_input=8,
            vocab_size_per_layer_input=50,
            layer_types=["sliding_attention", "full_attention"] * 2,
        ),
        _causal_lm_inputs,
        _always,
        4,
        "Gemma-4 text",
        flags={"rotary": True, "qk_norm": "per_head", "value_norm": True},
        neutralise=_no_qk_or_value_norm,
    ),
    "gemma3n_text": Case(  # scale 1, v_norm; layers 4, 5 reuse layers 2, 3's k/v
        _lm(
            t.Gemma3nTextConfig,
            t.Gemma3nTextModel,
            num_hidden_layers=6,
            num_kv_shared_layers=2,
            num_key_value_heads=2,
            head_dim=8,
            hidden_size_per_layer_input=8,
            vocab_size_per_layer_input=50,
            laurel_rank=4,
            layer_types=["sliding_attention", "full_attention"] * 3,
            activation_sparsity_pattern=[0.0] * 6,
        ),
        _causal_lm_inputs,
        _always,
        6,
        "Gemma-3n text",
        flags={"rotary": True, "qk_norm": "per_head", "value_norm": True},
        neutralise=_no_qk_or_value_norm,
    ),
    "gemma4_vision": Case(  # q/k/v/o wrapped in Gemma4ClippableLinear (clip ranges ±inf here)
        lambda: t.Gemma4VisionModel(
            _gemma4_vision_config(use_clipped_linears=True, attn_implementation="eager")
        ),
        lambda m: {  # T patches at 2-D position (0, 0): the 2-D rotary is the identity
            "pixel_values": torch.rand(B, T, 3 * 2 * 2, generator=torch.Generator().manual_seed(2)),
            "pixel_position_ids": torch.zeros(B, T, 2, dtype=torch.long),
        },
        _never,
        L,
        "Gemma-4 vision",
        flags={"rotary": True, "qk_norm": "per_head", "value_norm": True, "clipped_linears": True},
        neutralise=_no_qk_or_value_norm,
    ),
    "gemma4_audio": Case(  # out-projection `post`; per_dim_scale, relative_k_proj, soft-cap
        lambda: t.Gemma4AudioModel(
            t.Gemma4AudioConfig(
                hidden_size=D,
                num_hidden_layers=L,
                num_attention_heads=H,
                subsampling_conv_channels=[8, 4],  # 8 mel bins in
                output_proj_dims=D,
                attention_chunk_size=4,  # T = 6 frames: two blocks
                attention_context_left=4,  # keys i − 2 … i + 2 (window 5)
                attention_context_right=3,
                attn_implementation="eager",
            )
        ),
        lambda m: {},  # the check runs its own forward
        _never,  # the check writes the window out itself
        L,
        "Gemma-4 audio",
        flags={
            "clipped_linears": True,
            "relative_position_bias": True,
            "softcap": 50.0,
            "sliding_window": 5,
        },
        check=_gemma4_audio_check,
    ),
    "gemma3n_audio": Case(  # q/k/v in `attn`, out-projection `post` beside it; per_dim_scale
        lambda: __import__(
            "transformers.models.gemma3n.modeling_gemma3n", fromlist=["_"]
        ).Gemma3nAudioEncoder(
            t.Gemma3nAudioConfig(
                hidden_size=D,
                conf_num_hidden_layers=L,
                conf_num_attention_heads=H,
                sscp_conv_channel_size=[8, 4],
                input_feat_size=8,  # 8 mel bins in
                conf_attention_chunk_size=4,  # T = 6 frames: two blocks
                conf_attention_context_left=3,  # keys i − 2 … i + 2 (window 5)
                conf_attention_context_right=2,
            )
        ),
        lambda m: {},  # the check runs its own forward
        _never,  # the check writes the window out itself
        L,
        "Gemma-3n audio",
        flags={"relative_position_bias": True, "softcap": 50.0, "sliding_window": 5},
        check=_gemma3n_audio_check,
    ),
    "moshi": Case(  # q/k/v/o wrapped in MoshiLinear (one nn.Linear: no per-codebook weights)
        _lm(t.MoshiConfig, t.MoshiModel, head_dim=D // H, ffn_dim=2 * D, audio_vocab_size=50),
        lambda m: {  # positions all 0 without a mask would read as packed one-token sequences
            **_causal_lm_inputs(m),
            "attention_mask": torch.ones(B, T, dtype=torch.long),
        },
        _always,
        L,
        "q/k/v/o by name table",
        flags={"rotary": True},
    ),
    "timesformer": Case(  # per layer a time attention (over frames) and a space attention
        lambda: t.TimesformerModel(
            t.TimesformerConfig(
                image_size=8,
                patch_size=4,
                num_frames=2,
                hidden_size=D,
                num_hidden_layers=L,
                num_attention_heads=H,
                intermediate_size=2 * D,
            )
        ),
        lambda m: {
            "pixel_values": torch.randn(
                B, 2, 3, 8, 8, generator=torch.Generator().manual_seed(10), dtype=torch.float64
            )
        },
        _never,
        2 * L,
        "TimeSformer",
    ),
}


# -- value heads of their own size / count (gap helper vhead2) --------------------------------


def _audio(config_cls: str, model_cls: str, **kw: Any) -> Callable[[], nn.Module]:
    """A Nemotron audio encoder (SDPA: the only forward that runs when k and v differ in heads)."""
    base = dict(hidden_size=D, num_hidden_layers=L, num_attention_heads=H, intermediate_size=2 * D)
    base.update(kw)

    def build() -> nn.Module:
        mod = __import__(f"transformers.models.{model_cls}", fromlist=["_"])
        return getattr(mod, config_cls + "Model")(getattr(mod, config_cls + "Config")(**base))

    return build


def _audio_inputs(m: nn.Module) -> dict[str, Any]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    return {"inputs_embeds": x, "position_ids": _pos0()}


CASES.update(
    {
        "mimo_v2_flash": Case(  # r = 12, r_v = 8; layer 1: sliding window, 2× K/V heads, sinks
            _lm(
                t.MiMoV2FlashConfig,
                t.MiMoV2FlashModel,
                num_key_value_heads=1,
                head_dim=12,
                v_head_dim=8,
                layer_types=["full_attention", "sliding_attention"],
                mlp_layer_types=["dense", "dense"],
                sliding_window=16,
            ),
            _causal_lm_inputs,
            _always,
            L,
            "MiMo-V2-Flash",
            flags={"rotary": True, "value_scale": 0.707},
            neutralise=_no_sinks,
        ),
        "nemotron3_5_transcribe": Case(  # bidirectional audio encoder, LayerNorm QK-norm
            _audio(
                "Nemotron3_5TranscribeAsrAudio",
                "nemotron3_5_transcribe.modeling_nemotron3_5_transcribe",
                attn_implementation="eager",
            ),
            _audio_inputs,
            _never,
            L,
            "Nemotron",
            flags={"rotary": True, "qk_norm": "per_head", "partial_rotary": 0.5},
            neutralise=_no_qk_norm,
        ),
        "nemotron3_diarization": Case(
            _audio(
                "Nemotron3DiarizationAudio",
                "nemotron3_diarization.modeling_nemotron3_diarization",
                attn_implementation="eager",
            ),
            _audio_inputs,
            _never,
            L,
            "Nemotron",
            flags={"rotary": True},
        ),
        "nemotron3_diarization_kv2": Case(  # k: 2 heads, v: 4 heads (query head h: k h//2, v h)
            _audio(
                "Nemotron3DiarizationAudio",
                "nemotron3_diarization.modeling_nemotron3_diarization",
                num_key_value_heads=2,
                attn_implementation="sdpa",
            ),
            _audio_inputs,
            _never,
            L,
            "Nemotron",
            flags={"rotary": True},
        ),
    }
)


@pytest.mark.parametrize("name", ["mimo_v2_flash", "nemotron3_diarization_kv2"])
def test_value_heads_of_their_own_size_or_count_downstream(name: str) -> None:
    """Value heads of size r_v ≠ r (MiMo) or H_v ≠ H_kv heads (Nemotron, k: 2, v: 4): analyze's
    OV σ per query head equal the dense SVD of v_proj/o_proj slices cut by hand (rank ≤ r_v),
    its ``kv_head`` column names the value head read, and LowRankDecay per head lowers each
    distinct value head's σ by exactly c (the value map, not the key map, picks them)."""
    from rankdecay.analyze import analyze
    from rankdecay.decay import LowRankDecay

    model = _build(name)
    report = analyze(model)
    assert report.model.get("d_v") == (8 if name == "mimo_v2_flash" else None)
    for lh in attention_heads(model):
        attn = model.get_submodule(lh.name)
        Wv, Wo = attn.v_proj.weight, attn.o_proj.weight  # (H_v·r_v, d), (d, H·r_v)
        rv = Wo.shape[1] // H
        Hv = Wv.shape[0] // rv
        assert rv == (8 if name == "mimo_v2_flash" else D // H) and lh.W_V.shape[-1] == rv
        rows = sorted(
            (r for r in report.records if r["name"] == lh.name and r["circuit"] == "ov"),
            key=lambda r: r["head"],
        )
        for h, rec in enumerate(rows):
            j = h // (H // Hv)
            ov = Wv[j * rv : (j + 1) * rv].T @ Wo[:, h * rv : (h + 1) * rv].T
            ref = torch.linalg.svdvals(ov)
            got = torch.tensor(rec["singular_values"], dtype=torch.float64)
            assert len(got) <= rv and float(ref[rv:].abs().sum()) < 1e-10  # rank ≤ r_v
            torch.testing.assert_close(got, ref[: len(got)], rtol=1e-9, atol=1e-12)
            assert rec["kv_head"] == j
    c = 1e-3
    with torch.no_grad():
        per_head = {
            lh.name: torch.linalg.svdvals(
                model.get_submodule(lh.name).v_proj.weight.detach().view(-1, rv, D)
            )
            for lh in attention_heads(model)
        }
    LowRankDecay(model, c, target="attention", granularity="head", scale_by_lr=False).step()
    with torch.no_grad():
        for n, sv in per_head.items():
            after = torch.linalg.svdvals(model.get_submodule(n).v_proj.weight.view(-1, rv, D))
            torch.testing.assert_close(after, sv - c, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "name,note",
    [
        ("mimo_v2_flash", "value heads of size 8, query/key heads of size 12"),
        ("nemotron3_diarization_kv2", "4 query heads read 2 key heads (head h: key head h // 2)"),
    ],
)
def test_value_head_notes_and_flags_live_equal_checkpoint(name: str, note: str) -> None:
    """The notes that say how the OV spectrum reads (r_v ≠ r; value heads grouped unlike the
    key heads, with no "grouped-query" note claiming they share) and the flags are the same from
    the live module and from the checkpoint's tensor names (where K/V counts come from widths)."""
    from rankdecay.heads import layer_heads_from_tensors, plan_from_checkpoint

    model = _build(name)
    live = {lh.name: lh for lh in attention_heads(model)}
    state = model.state_dict()
    for plan in plan_from_checkpoint(model.config.to_dict(), list(state)):
        disk = layer_heads_from_tensors(plan, state.__getitem__)
        assert (disk.notes, disk.flags) == (live[plan.name].notes, live[plan.name].flags)
        assert sum(note in n for n in disk.notes) == 1, disk.notes
        if name == "nemotron3_diarization_kv2":
            assert disk.flags["value_heads"] == H
            assert not any(n.startswith("grouped-query") for n in disk.notes)


#: parameters zeroed so that position-dependent score terms vanish (their tables, not W_QK)
ZERO = {
    "t5": (r"relative_attention_bias",),
    "mpnet": (r"relative_attention_bias",),
    "deberta_v2": (r"rel_embeddings",),
    "wav2vec2_conformer": (r"linear_pos", r"pos_bias_u", r"pos_bias_v"),
    "deberta_v1": (r"rel_embeddings",),
}


def _build(name: str) -> nn.Module:
    model = CASES[name].build()
    model = _randomize(model, zero=ZERO.get(name, ()))
    if name == "peft_lora_llama":  # LoRA's B starts at zero; make the update visible
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lora_B" in pname:
                    p.copy_(
                        torch.randn(p.shape, generator=g, dtype=p.dtype) / math.sqrt(p.shape[-1])
                    )
    return model


def _module_of(param: str) -> str:
    """The module applying a weight (a LoRA layer, not its base layer: its output has B·A·x)."""
    module = param.rsplit(".", 1)[0]
    return module.removesuffix(".base_layer")


@dataclass
class Recorded:
    xq: list[Tensor] = field(default_factory=list)
    xk: list[Tensor] = field(default_factory=list)
    xv: list[Tensor] = field(default_factory=list)
    z: list[Tensor] = field(default_factory=list)
    out: list[Tensor] = field(default_factory=list)


def _batch_first(rec: Recorded) -> Recorded:
    """The recordings of a time-first module ((T, B, d), FSMT) as (B, T, d)."""
    return Recorded(
        *([x.transpose(0, 1) for x in getattr(rec, f.name)] for f in dataclasses.fields(rec))
    )


def _record(model: nn.Module, layers: list[LayerHeads]) -> tuple[list[Recorded], list[Any]]:
    recs, handles = [], []

    def store(into: list[Tensor]) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            into.append((args[0] if args else next(iter(kwargs.values()))).detach())

        return hook

    for lh in layers:
        rec = Recorded()
        qk = lh.qk_params if len(lh.qk_params) == 2 else lh.qk_params * 2
        v_name, o_name = lh.ov_params
        for param, into in ((qk[0], rec.xq), (qk[1], rec.xk), (v_name, rec.xv), (o_name, rec.z)):
            handles.append(
                model.get_submodule(_module_of(param)).register_forward_pre_hook(
                    store(into), with_kwargs=True
                )
            )
        handles.append(
            model.get_submodule(_module_of(o_name)).register_forward_hook(
                lambda _m, _a, output, rec=rec: rec.out.append(output.detach())
            )
        )
        recs.append(rec)
    return recs, handles


def _check(
    lh: LayerHeads,
    xq: Tensor,
    xk: Tensor,
    xv: Tensor,
    z: Tensor,
    out: Tensor,
    causal: bool,
    bias: Tensor | None,
) -> None:
    Hh, r = lh.n_heads, lh.W_V.shape[-1]  # r: the value head size (r_v; r_qk may differ)
    assert lh.scale is not None
    q = torch.einsum("btd,hdr->bhtr", xq, lh.W_Q)
    k = torch.einsum("bsd,hdr->bhsr", xk, lh.W_K)
    v = torch.einsum("bsd,hdr->bhsr", xv, lh.W_V) * float(lh.flags.get("value_scale", 1.0))  # type: ignore[arg-type]
    scores = lh.scale * q @ k.mT
    if bias is not None:
        scores = scores + bias
    if causal:
        n, s = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(n, s, dtype=torch.bool).triu(1), float("-inf"))
    P = scores.softmax(-1)
    ctx = P @ v
    parts = z.shape[-1] // (Hh * r)  # > 1: out-projection input [parts, H, r] (ConvBERT)
    z_heads = z.reshape(*z.shape[:-1], parts, Hh, r)[..., 0, :, :].transpose(1, 2)
    torch.testing.assert_close(ctx, z_heads, **TOL)
    assert v.shape[-2] <= r and torch.linalg.matrix_rank(v).min() == v.shape[-2]
    P_model = z_heads @ torch.linalg.pinv(v)
    torch.testing.assert_close(P, P_model, **P_TOL)
    torch.testing.assert_close(torch.einsum("bhtr,hre->bte", ctx, lh.W_O), out, **TOL)


def _run(name: str) -> tuple[list[LayerHeads], list[Recorded]]:
    case = CASES[name]
    model = _build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnrecognizedAttentionWarning)
        with torch.no_grad():
            layers = attention_heads(model, strict=True)
    if case.neutralise is not None:
        case.neutralise(model)
    recs, handles = _record(model, layers)
    try:
        with torch.no_grad():
            model(**case.inputs(model))
    finally:
        for h in handles:
            h.remove()
    return layers, recs


@pytest.mark.parametrize("name", list(CASES))
def test_factors_reproduce_the_models_own_attention(name: str) -> None:
    case = CASES[name]
    if case.check is not None:
        model = _build(name)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnrecognizedAttentionWarning)
            with torch.no_grad():
                layers = attention_heads(model, strict=True)
        assert len(layers) == case.n_layers and all(case.family in lh.family for lh in layers)
        for key, value in case.flags.items():
            assert all(lh.flags.get(key) == value for lh in layers), [lh.flags for lh in layers]
        case.check(model, layers)
        return
    layers, recs = _run(name)
    assert len(layers) == case.n_layers, [lh.name for lh in layers]
    assert {lh.kind for lh in layers} == set(case.kinds)
    assert all(
        case.family in lh.family for lh in layers if lh.kind == "self" and "decoder" not in lh.name
    ) or (name == "vision_encoder_decoder"), {lh.family for lh in layers}
    for key, value in case.flags.items():
        assert all(lh.flags.get(key) == value for lh in layers if lh.kind == "self"), [
            lh.flags for lh in layers
        ]
    with torch.no_grad():
        for lh, rec in zip(layers, recs):
            calls = case.calls_per_layer
            calls = calls(lh) if callable(calls) else calls
            assert len(rec.z) == calls, (lh.name, len(rec.z))
            rec = _batch_first(rec) if case.time_first else rec
            for call in range(calls):
                bias = case.bias(lh, rec.xk[call].shape[1]) if case.bias else None
                _check(
                    lh,
                    rec.xq[call],
                    rec.xk[call],
                    rec.xv[call],
                    rec.z[call],
                    rec.out[call],
                    case.causal(lh),
                    bias,
                )
            rolled = dataclasses.replace(
                lh, W_Q=lh.W_Q.roll(1, 0), W_K=lh.W_K.roll(1, 0), W_V=lh.W_V.roll(1, 0)
            )
            with pytest.raises(AssertionError):
                bias = case.bias(lh, rec.xk[0].shape[1]) if case.bias else None
                _check(
                    rolled,
                    rec.xq[0],
                    rec.xk[0],
                    rec.xv[0],
                    rec.z[0],
                    rec.out[0],
                    case.causal(lh),
                    bias,
                )


# ---------------------------------------------------------------------------------------------
# the docs table and the registry are the same thing, and every row is tested
# ---------------------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
ELSEWHERE = {  # rows checked against their models' forward in other test files
    "mha": "tests/test_heads.py::test_mha_factors_reproduce_forward",
    "minilm_real": "tests/test_heads.py::test_hf_factors_reproduce_forward",
    "roberta": "tests/test_heads.py::test_hf_factors_reproduce_forward",
    "deepseek_v3": "tests/test_mla.py (H14b) + dispatch below",
    "deepseek_v4": "tests/test_mla.py::test_v4_factors_reproduce_the_models_own_attention",
    "llava": "test_multi_tower_models_cover_every_tower",
}


def test_every_table_row_is_tested_and_the_docs_show_the_registry() -> None:
    for arch in ARCHITECTURES:
        assert arch.tested_by, arch.family
        for case in arch.tested_by:
            assert case in CASES or case in ELSEWHERE, (arch.family, case)
    text = DOCS.read_text(encoding="utf-8")
    assert architectures_table() in text, (
        "docs/metrics.md: regenerate the table with architectures_table()"
    )


# ---------------------------------------------------------------------------------------------
# multi-tower models, MLA dispatch, flags
# ---------------------------------------------------------------------------------------------


def _llava() -> nn.Module:
    vision = t.CLIPVisionConfig(
        hidden_size=D,
        num_hidden_layers=L,
        num_attention_heads=H,
        intermediate_size=2 * D,
        image_size=8,
        patch_size=4,
    )
    text = t.LlamaConfig(
        vocab_size=50,
        hidden_size=D,
        num_hidden_layers=L,
        num_attention_heads=H,
        num_key_value_heads=2,
        intermediate_size=2 * D,
    )
    return t.LlavaModel(
        t.LlavaConfig(
            vision_config=vision, text_config=text, image_token_id=49, vision_feature_layer=-1
        )
    )


def test_multi_tower_models_cover_every_tower() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnrecognizedAttentionWarning)
        llava = _llava()
        layers = attention_heads(llava, strict=True)
        ved = _ved()
        ved_layers = attention_heads(ved, strict=True)
    towers = {lh.name.split(".")[0] for lh in layers}
    assert towers == {"vision_tower", "language_model"} and len(layers) == 2 * L
    by_tower = {tw: [lh for lh in layers if lh.name.startswith(tw)] for tw in towers}
    assert all("CLIP" in lh.family and not lh.rotary for lh in by_tower["vision_tower"])
    assert all(
        "Llama" in lh.family and lh.rotary and lh.n_kv_heads == 2
        for lh in by_tower["language_model"]
    )
    for tower in towers:  # the same factors as the tower analysed on its own
        alone = attention_heads(llava.get_submodule(tower))
        for a, b in zip(alone, by_tower[tower]):
            assert b.name == f"{tower}.{a.name}"
            torch.testing.assert_close(a.W_Q, b.W_Q)
            torch.testing.assert_close(a.W_O, b.W_O)
    assert [lh.kind for lh in ved_layers].count("cross") == L
    assert {lh.name.split(".")[0] for lh in ved_layers} == {"encoder", "decoder"}


def _gemma4_multimodal() -> nn.Module:
    """A tiny Gemma4Model: text, vision and audio towers, random weights."""
    audio = t.Gemma4AudioConfig(
        hidden_size=D,
        num_hidden_layers=L,
        num_attention_heads=H,
        subsampling_conv_channels=[8, 4],
        output_proj_dims=D,
    )
    text = t.Gemma4TextConfig(
        vocab_size=64,
        hidden_size=D,
        intermediate_size=2 * D,
        num_hidden_layers=L,
        num_attention_heads=H,
        num_key_value_heads=2,
        head_dim=D // H,
        global_head_dim=D // H,
        hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=64,
        layer_types=["sliding_attention", "full_attention"],
    )
    vision = _gemma4_vision_config()
    return t.Gemma4Model(t.Gemma4Config(text_config=text, vision_config=vision, audio_config=audio))


def test_gemma4_multimodal_model_extracts_its_audio_tower() -> None:
    """Gemma4Model (text, vision and audio towers): every tower's attention extracted with no
    warning; the audio tower's layers carry the Gemma-4 audio row, the same factors as the
    tower analysed alone, q/k/v/post their attention roles, and analyze runs through."""
    from rankdecay.analyze import analyze
    from rankdecay.decay import param_roles

    model = _gemma4_multimodal()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnrecognizedAttentionWarning)
        layers = attention_heads(model, strict=True)
        roles = param_roles(model, strict=True)
        analyze(model)
    towers = {lh.name.split(".")[0] for lh in layers}
    assert towers == {"language_model", "vision_tower", "audio_tower"} and len(layers) == 3 * L
    audio_layers = [lh for lh in layers if lh.name.startswith("audio_tower.")]
    alone = attention_heads(model.audio_tower)
    for a, b in zip(alone, audio_layers, strict=True):
        assert "Gemma-4 audio" in b.family and b.name == f"audio_tower.{a.name}"
        assert b.flags["per_dim_scale"] == f"{b.name}.per_dim_scale"
        torch.testing.assert_close(a.W_Q, b.W_Q)
        torch.testing.assert_close(a.W_O, b.W_O)
        prefix = b.name + "."
        assert roles[prefix + "q_proj.linear.weight"] == roles[prefix + "k_proj.linear.weight"]
        assert roles[prefix + "q_proj.linear.weight"] == "attn_qk"
        assert roles[prefix + "v_proj.linear.weight"] == "attn_ov"
        assert roles[prefix + "post.linear.weight"] == "attn_ov"


def test_gemma4_checkpoint_streams_its_vision_and_audio_towers(tmp_path: Path) -> None:
    """A saved Gemma4Model streams all three towers (the vision and audio towers' projections are
    wrapped, ``…q_proj.linear.weight``; audio's out-projection is ``post``), planned from tensor
    names and ``vision_config`` / ``audio_config``: no warning, the in-memory records to 1e-12
    relative, in the in-memory order, and the vision/audio layers' family, scale, flags and
    notes those of the live rules. Negative controls: a wrapped projection no plan reads is still
    named in a warning; heads permuted on disk change the records; a tower projection that does
    not split into its config's heads is refused in one sentence."""
    import numpy as np
    from safetensors.torch import load_file, save_file

    from rankdecay.analyze import analyze
    from rankdecay.checkpoint import CheckpointIndex, CorruptCheckpointError, read_model_config
    from rankdecay.heads import plan_from_checkpoint
    from rankdecay.stream import StreamingFallbackWarning, _dry_run

    torch.manual_seed(7)
    model = _gemma4_multimodal().eval()
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnrecognizedAttentionWarning)
        warnings.simplefilter("error", StreamingFallbackWarning)
        streamed = analyze(tmp_path)
        in_memory = analyze(model)
        live = attention_heads(model, strict=True)
    assert streamed.model["streamed"] is True
    towers = [r["name"].split(".")[0] for r in streamed.records]
    assert list(dict.fromkeys(towers)) == ["vision_tower", "language_model", "audio_tower"]
    # every tower has a row (the text tower: Gemma-4 text, scale 1): no scale is assumed
    for name, notes in streamed.model["notes"].items():
        assert not any("assumed" in n for n in notes), (name, notes)
    assert len(streamed.records) == len(in_memory.records)
    for a, b in zip(streamed.records, in_memory.records, strict=True):
        keys = ("layer", "name", "head", "circuit", "kv_head", "rank")
        assert [a[k] for k in keys] == [b[k] for k in keys]
        sa, sb = np.asarray(a["singular_values"]), np.asarray(b["singular_values"])
        assert sa.shape == sb.shape and np.all(np.abs(sa - sb) <= 1e-12 * np.abs(sb))
    config, index = read_model_config(tmp_path), CheckpointIndex.open(tmp_path)
    planned = {
        p.plan.name: p.meta for p in _dry_run(plan_from_checkpoint(config, index.specs), index)
    }
    towers_checked = 0
    for lh in live:
        if lh.name.split(".")[0] in ("vision_tower", "audio_tower", "language_model"):
            meta = planned[lh.name]
            assert (meta.family, meta.scale, meta.flags, meta.notes, meta.rotary) == (
                lh.family,
                lh.scale,
                lh.flags,
                lh.notes,
                lh.rotary,
            )
            towers_checked += 1
    assert towers_checked == 3 * L

    state = load_file(str(tmp_path / "model.safetensors"))
    extra = dict(state, **{"extra_tower.layers.0.attn.q_proj.linear.weight": torch.zeros(D, D)})
    save_file(extra, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.warns(UnrecognizedAttentionWarning, match="extra_tower.layers.0.attn"):
        assert len(analyze(tmp_path).records) == len(streamed.records)  # wrapped, unplanned
    q = "vision_tower.encoder.layers.0.self_attn.q_proj.linear.weight"
    r = D // H
    state[q] = state[q].reshape(H, r, D).roll(1, 0).reshape(H * r, D).contiguous()
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    permuted = analyze(tmp_path)
    changed = {
        (a["name"], a["circuit"])
        for a, b in zip(permuted.records, streamed.records, strict=True)
        if not np.allclose(a["singular_values"], b["singular_values"], rtol=1e-6)
    }
    assert changed == {("vision_tower.encoder.layers.0.self_attn", "qk")}
    k = "audio_tower.layers.1.self_attn.k_proj.linear.weight"
    state[k] = state[k][: D - 2].contiguous()  # 30 rows: not whole heads of 8
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CorruptCheckpointError, match="do not fit the head counts") as info:
        analyze(tmp_path)
    assert "\n" not in str(info.value) and str(info.value).endswith("save_pretrained.")


def test_relative_k_proj_is_flagged_beyond_gemma() -> None:
    """``relative_k_proj`` (Transformer-XL-style relative scores, with ``bias_u``/``bias_v``) marks
    relative position scores wherever it sits: Parakeet's encoder, extracted by the name table,
    had carried no flag for them."""
    model = t.ParakeetEncoder(
        t.ParakeetEncoderConfig(
            hidden_size=D, num_hidden_layers=L, num_attention_heads=H, intermediate_size=2 * D
        )
    )
    layers = attention_heads(model, strict=True)
    assert len(layers) == L and all(lh.flags.get("relative_position_bias") for lh in layers)
    assert all(
        "relative position scores are added to the QK scores" in " ".join(lh.notes) for lh in layers
    )


def test_deepseek_v3_dispatches_to_mla() -> None:
    mla = pytest.importorskip("rankdecay.mla")
    cfg = t.DeepseekV3Config(
        vocab_size=50,
        hidden_size=D,
        num_hidden_layers=L,
        num_attention_heads=H,
        num_key_value_heads=H,
        intermediate_size=2 * D,
        moe_intermediate_size=16,
        q_lora_rank=16,
        kv_lora_rank=16,
        qk_rope_head_dim=4,
        qk_nope_head_dim=8,
        v_head_dim=8,
        n_routed_experts=4,
        num_experts_per_tok=2,
        first_k_dense_replace=1,
        n_group=1,
        topk_group=1,
    )
    model = t.DeepseekV3Model(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnrecognizedAttentionWarning)
        layers = attention_heads(model, strict=True)
    assert len(layers) == L and all(
        mla.is_mla_attention(model.get_submodule(lh.name)) for lh in layers
    )
    assert all(lh.chains for lh in layers)


def test_flags_partial_rotary_qk_norm_softcap_window() -> None:
    gemma = _lm(
        t.Gemma2Config,
        t.Gemma2Model,
        num_key_value_heads=2,
        head_dim=8,
        query_pre_attn_scalar=16,
        attn_logit_softcapping=50.0,
        sliding_window=64,
    )()
    layers = attention_heads(gemma)
    assert all(lh.flags["softcap"] == 50.0 and lh.scale == pytest.approx(16**-0.5) for lh in layers)
    assert layers[0].flags.get("sliding_window") == 64  # Gemma-2 alternates sliding / global layers
    assert "sliding_window" not in layers[1].flags
    qwen3 = _lm(t.Qwen3Config, t.Qwen3Model, num_key_value_heads=2, head_dim=8)()
    assert all(lh.flags["qk_norm"] == "per_head" for lh in attention_heads(qwen3))
    olmo2 = _lm(t.Olmo2Config, t.Olmo2Model, num_key_value_heads=4)()
    assert all(lh.flags["qk_norm"] == "full" for lh in attention_heads(olmo2))
    assert all("QK-norm" in " ".join(lh.notes) for lh in attention_heads(olmo2))
    neox = attention_heads(_lm(t.GPTNeoXConfig, t.GPTNeoXModel, rotary_pct=0.25)())
    assert all(lh.flags["partial_rotary"] == 0.25 and lh.rotary for lh in neox)
    swin = t.SwinModel(
        t.SwinConfig(
            image_size=8, patch_size=2, embed_dim=16, depths=[1], num_heads=[2], window_size=2
        )
    )
    assert all(lh.flags["relative_position_bias"] for lh in attention_heads(swin, strict=True))
    bert = attention_heads(_lm(t.BertConfig, t.BertModel)())
    assert all(not lh.flags for lh in bert)


def test_flags_of_newer_decoders() -> None:
    """Llama-4: rotary + weightless L2 QK-norm on RoPE layers, neither on NoPE layers; GPT-OSS:
    attention sinks flagged and noted; Granite: its attention_multiplier is the scale."""
    llama4 = attention_heads(CASES["llama4_text"].build())
    assert llama4[0].rotary and llama4[0].flags.get("qk_norm") == "per_head"
    assert not llama4[1].rotary and "rotary" not in llama4[1].flags
    assert "qk_norm" not in llama4[1].flags
    gpt_oss = attention_heads(CASES["gpt_oss"].build())
    assert all(lh.flags["attention_sinks"] for lh in gpt_oss)
    assert all(any("attention sinks" in n for n in lh.notes) for lh in gpt_oss)
    granite = attention_heads(CASES["granite"].build())
    assert all(lh.scale == pytest.approx(0.3) for lh in granite)
    neo = attention_heads(CASES["gpt_neo"].build())
    assert [lh.flags.get("sliding_window") for lh in neo] == [None, 16]
    mpt = t.MptModel(t.MptConfig(d_model=D, n_heads=H, n_layers=1, vocab_size=50))
    assert all(lh.flags.get("alibi") and not lh.rotary for lh in attention_heads(mpt))
    roformer = _lm(t.RoFormerConfig, t.RoFormerModel, embedding_size=D)()
    assert all(lh.rotary for lh in attention_heads(roformer))
    afmoe = _lm(
        t.AfmoeConfig,
        t.AfmoeModel,
        num_key_value_heads=2,
        head_dim=8,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
    )()
    gated = attention_heads(afmoe)
    assert all(lh.flags.get("output_gate") for lh in gated)
    assert all(any("output gate" in n for n in lh.notes) for lh in gated)


def test_scale_rules() -> None:
    t5 = [lh.scale for lh in attention_heads(CASES["t5"].build())]
    assert t5 == [1.0] * (3 * L)
    deberta = attention_heads(CASES["deberta_v2"].build())
    assert all(lh.scale == pytest.approx((3 * (D // H)) ** -0.5) for lh in deberta)
    gpt2 = attention_heads(CASES["gpt2"].build())
    assert [lh.scale for lh in gpt2] == pytest.approx([(D // H) ** -0.5, (D // H) ** -0.5 / 2])


def test_docs_worked_example_registers_a_new_module() -> None:
    """The register_adapter example of docs/metrics.md runs and its factors reproduce the module."""
    from rankdecay.heads import _ADAPTERS

    text = DOCS.read_text(encoding="utf-8")
    block = (
        text.split("### Teaching rankdecay a new module", 1)[1]
        .split("```python\n", 1)[1]
        .split("```", 1)[0]
    )
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    n_adapters = len(_ADAPTERS)
    try:
        exec(compile(block, str(DOCS), "exec"), namespace)
        model = _randomize(namespace["model"])
        layers = attention_heads(model)
        assert [lh.name for lh in layers] == ["0", "1"] and layers[0].family == "MyAttention"
        x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
        recs, handles = _record(model, layers)
        with torch.no_grad():
            model(x)
        for h in handles:
            h.remove()
        for lh, rec in zip(layers, recs):
            _check(lh, rec.xq[0], rec.xk[0], rec.xv[0], rec.z[0], rec.out[0], False, None)
    finally:
        del _ADAPTERS[: len(_ADAPTERS) - n_adapters]


# ---------------------------------------------------------------------------------------------
# nothing silent: unrecognised attention warns in every entry point; strict=True raises
# ---------------------------------------------------------------------------------------------


class OddAttention(nn.Module):
    """Attention rankdecay cannot read: one packed parameter, no projection modules."""

    def __init__(self) -> None:
        super().__init__()
        self.packed = nn.Parameter(torch.randn(4, D, D) * 0.1)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v, o = (x @ w for w in self.packed)
        return ((q @ k.mT).softmax(-1) @ v) @ o


def _two_towers() -> nn.Module:
    """A recognised BERT tower and an unrecognised one."""
    return nn.ModuleDict(
        {"text": _lm(t.BertConfig, t.BertModel)(), "odd": nn.Sequential(OddAttention())}
    )


def test_unrecognized_attention_warns_everywhere_and_strict_raises() -> None:
    from rankdecay.analyze import analyze
    from rankdecay.decay import LowRankDecay, param_groups, param_roles
    from rankdecay.monitor import SpectralMonitor

    model = _two_towers()
    entry_points: dict[str, Callable[..., object]] = {
        "attention_heads": lambda **kw: attention_heads(model, **kw),
        "param_roles": lambda **kw: param_roles(model, **kw),
        "param_groups": lambda **kw: param_groups(model, {"attention": 0.0, "default": 0.1}, **kw),
        "SpectralMonitor": lambda **kw: SpectralMonitor(model, every=10, **kw),
        "LowRankDecay": lambda **kw: LowRankDecay(model, 1e-3, **kw),
        "analyze": lambda **kw: analyze(model, **kw),
    }
    for where, call in entry_points.items():
        with pytest.warns(UnrecognizedAttentionWarning, match=r"odd\.0 \(OddAttention") as record:
            call()
        assert "register_adapter" in str(record[0].message), where
        with pytest.raises(UnsupportedModelError, match="odd.0") as info:
            call(strict=True)
        assert isinstance(info.value, ValueError), where
    roles = param_roles(model)
    assert roles["odd.0.packed"] == "other"  # what the warning is about
    assert roles["text.encoder.layer.0.attention.self.query.weight"] == "attn_qk"


def test_no_false_positives_on_containers_and_recognised_models() -> None:
    """Parent containers (BertAttention around BertSelfAttention, T5LayerSelfAttention, MPNet's
    MPNetAttention, Siglip's pooling head around nn.MultiheadAttention) do not warn."""
    models = [
        CASES["bert"].build(),
        CASES["t5"].build(),
        CASES["mpnet"].build(),
        CASES["deberta_v2"].build(),
        t.SiglipVisionModel(
            t.SiglipVisionConfig(
                hidden_size=D,
                num_hidden_layers=1,
                num_attention_heads=H,
                intermediate_size=2 * D,
                image_size=8,
                patch_size=4,
            )
        ),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnrecognizedAttentionWarning)
        for model in models:
            attention_heads(model, strict=True)


def test_only_unrecognised_attention_is_an_error() -> None:
    with pytest.raises(UnsupportedModelError, match="OddAttention"):
        attention_heads(nn.Sequential(OddAttention()))


def test_lora_factors_get_their_own_roles() -> None:
    from rankdecay.decay import ROLES, param_groups, param_roles

    model = _build("peft_lora_llama")
    roles = param_roles(model)
    lora = {n: r for n, r in roles.items() if "lora_" in n}
    assert lora and all(r == ("lora_a" if ".lora_A." in n else "lora_b") for n, r in lora.items())
    assert {"lora_a", "lora_b"} <= set(ROLES)
    base_q = next(n for n in roles if n.endswith("q_proj.base_layer.weight"))
    assert roles[base_q] == "attn_qk"
    groups = param_groups(model, {"lora": 0.1, "default": 0.0})  # PEFT freezes the base weights
    by_role = {g["role"]: g for g in groups}
    assert set(by_role) == {"lora_a", "lora_b"} and by_role["lora_a"]["weight_decay"] == 0.1


def test_lora_effective_weight_is_w_plus_s_ba() -> None:
    model = _build("peft_lora_llama")
    layers = attention_heads(model)
    q_layer = model.get_submodule(_module_of(layers[0].qk_params[0]))
    s = q_layer.scaling["default"]
    W = (
        q_layer.base_layer.weight
        + s * q_layer.lora_B["default"].weight @ q_layer.lora_A["default"].weight
    )
    r = D // H
    torch.testing.assert_close(layers[0].W_Q, W.reshape(H, r, D).mT)
    assert layers[0].flags.get("lora") and any(
        "LoRA adapter 'default'" in n for n in layers[0].notes
    )
    with model.disable_adapter():
        plain = attention_heads(model)[0].W_Q
    torch.testing.assert_close(plain, q_layer.base_layer.weight.reshape(H, r, D).mT)


# ---------------------------------------------------------------------------------------------
# the name-based plan (checkpoints on disk) gives exactly the live factors
# ---------------------------------------------------------------------------------------------

CHECKPOINT_CASES = [
    "llama_gqa", "mistral_mqa", "qwen2_gqa", "gemma2", "gpt2", "gpt_bigcode", "gpt_neox", "bloom",
    "falcon", "falcon_mq", "falcon_head_qkv", "codegen", "phi3", "phi", "gptj", "opt", "bart", "whisper", "t5", "clip",
    "bert", "distilbert", "albert", "deberta_v2", "modernbert", "mpnet", "vit", "vision_encoder_decoder",
    "qwen3", "qwen3_moe", "gemma3", "olmo2", "mixtral", "qwen2_moe", "phimoe", "stablelm", "cohere",
    "granite", "gpt_oss", "llama4_text", "phi3_longrope", "persimmon", "gpt_neox_japanese",
    "wav2vec2_conformer", "openai_gpt", "blip2_vision", "bark_semantic", "pix2struct_vision",
    "gpt_neo", "openai_privacy_filter", "qwen3_next", "qwen3_5_text",
    "fsmt", "bart_uneven_heads", "deberta_v1", "timesformer", "convbert", "lxmert",
    "jetmoe", "squeezebert", "squeezebert_ungrouped", "xlnet", "funnel", "funnel_factorized",
    "cpmant",
]  # fmt: skip
CHECKPOINT_CASES += [
    "gemma4_text_kv_shared",
    "gemma3n_text",
    "mimo_v2_flash",
    "nemotron3_5_transcribe",
    "nemotron3_diarization",
    "nemotron3_diarization_kv2",
]


@pytest.mark.parametrize("name", CHECKPOINT_CASES)
def test_checkpoint_plan_equals_live_extraction(name: str) -> None:
    """plan_from_checkpoint(config.json, tensor names) + layer_heads_from_tensors(state_dict)
    equals the live per-module extraction: same modules, factors bit for bit, scale, kind."""
    from rankdecay.heads import layer_heads_from_tensors, plan_from_checkpoint

    model = _build(name)
    with torch.no_grad():
        live = {lh.name: lh for lh in attention_heads(model)}
    state = model.state_dict()
    plans = plan_from_checkpoint(model.config.to_dict(), list(state))
    assert sorted(p.name for p in plans) == sorted(live)
    for plan in plans:
        disk = layer_heads_from_tensors(plan, state.__getitem__)
        ref = live[plan.name]
        for field_name in ("W_Q", "W_K", "W_V", "W_O"):
            torch.testing.assert_close(
                getattr(disk, field_name), getattr(ref, field_name), rtol=0, atol=0
            )
        assert disk.scale == pytest.approx(ref.scale, rel=1e-12), plan.name
        assert (disk.kind, disk.rotary, disk.kv_head_index, disk.v_head_index) == (
            ref.kind,
            ref.rotary,
            ref.kv_head_index,
            ref.v_head_index,
        )
        assert disk.qk_params == ref.qk_params and disk.ov_params == ref.ov_params
        assert disk.score_params == ref.score_params, plan.name
        shared = {k for k in ref.flags if k not in ("qk_norm", "lora")}
        assert {k: disk.flags.get(k) for k in shared} == {k: ref.flags[k] for k in shared}, (
            plan.name
        )


def test_analyze_reports_flags_and_cross_attention() -> None:
    from rankdecay.analyze import analyze

    report = analyze(CASES["t5"].build())
    flags, kinds = report.model["flags"], report.model["attention_kinds"]
    assert all(f.get("relative_position_bias") for f in flags.values()) and len(flags) == 3 * L
    assert sorted(kinds) == [f"decoder.block.{i}.layer.1.EncDecAttention" for i in range(L)]
    assert set(kinds.values()) == {"cross"}


# ---------------------------------------------------------------------------------------------
# roles, parameter names and LowRankDecay for every architecture
# ---------------------------------------------------------------------------------------------

ROLE_CASES = [n for n in CASES if n not in ("peft_lora_llama", "timm_vit")] + ["timm_vit"]


@pytest.mark.parametrize("name", ROLE_CASES)
def test_attention_roles_and_parameter_names(name: str) -> None:
    """Every attention weight gets attn_qk/attn_ov (fused → attn_qk), and qk_params/ov_params
    are exactly the parameters the factors depend on (autograd)."""
    from rankdecay.decay import param_roles

    model = CASES[name].build()
    roles = param_roles(model, strict=True)
    assert_params_are_the_factors(model, roles)


@pytest.mark.parametrize(
    "name", ["gpt_neox", "falcon", "codegen", "gpt_bigcode", "gpt2", "qwen3_next", "jetmoe"]
)
def test_low_rank_decay_through_split_specs(name: str) -> None:
    """LowRankDecay(granularity="head") moves each head's σ(W_Q^h), σ(W_K^h) by exactly −c,
    whether the head is a strided view (GPT-NeoX, GPT-2) or a gather (Falcon, CodeGen); a gated
    q projection's gate rows (Qwen3-Next) stay as they were."""
    from rankdecay.decay import LowRankDecay

    model = CASES[name].build().double()
    c = 1e-3
    gates = {
        n: p.detach().view(-1, 2, p.shape[0] // (2 * H), p.shape[1])[:, 1].clone()
        for n, p in model.named_parameters()
        if name == "qwen3_next" and n.endswith("q_proj.weight")
    }
    with torch.no_grad():
        before = attention_heads(model)
        sv = [(torch.linalg.svdvals(lh.W_Q), torch.linalg.svdvals(lh.W_K)) for lh in before]
    LowRankDecay(model, c, target="qk", granularity="head", scale_by_lr=False).step()
    for n, g in gates.items():
        p = model.get_parameter(n).detach()
        torch.testing.assert_close(p.view(-1, 2, p.shape[0] // (2 * H), p.shape[1])[:, 1], g)
    with torch.no_grad():
        after = attention_heads(model)
        for (sq, sk), lh in zip(sv, after):
            torch.testing.assert_close(torch.linalg.svdvals(lh.W_Q), sq - c, rtol=0, atol=1e-10)
            if lh.kv_head_index is None:
                torch.testing.assert_close(torch.linalg.svdvals(lh.W_K), sk - c, rtol=0, atol=1e-10)


def test_fold_norm_of_cpmant_and_not_of_funnel() -> None:
    """fold_norm=True on CPM-Ant folds the sibling pre-norm ``layernorm_before_attention`` (RMS,
    gain only): x̂ W^fold = x W^raw for W_Q, W_K, W_V with x the attention module's input
    (recorded: the norm's output) and x̂ = x / γ, W_O unchanged, the raw factor on x̂ fails.
    Funnel (post-norm, pooled queries, the decoder's upsampled sum) is left raw with a note that
    says why."""
    model = _build("cpmant")
    raw = attention_heads(model, strict=True)
    folded = attention_heads(model, strict=True, fold_norm=True)
    seen: dict[str, Tensor] = {}
    handles = []
    for lh in raw:

        def attn_in(_m: nn.Module, args: tuple, key: str = lh.name) -> None:
            seen[key] = args[0]

        handles.append(model.get_submodule(lh.name).register_forward_pre_hook(attn_in))
    try:
        with torch.no_grad():
            model(input_ids=_ids(), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for r_lh, f_lh in zip(raw, folded):
            norm = r_lh.name.rsplit(".", 1)[0] + ".layernorm_before_attention"
            assert any(f"gain of {norm} folded into W_Q, W_K, W_V" in n for n in f_lh.notes)
            torch.testing.assert_close(f_lh.W_O, r_lh.W_O)
            x = seen[r_lh.name]
            x_hat = x / model.get_submodule(norm).weight
            for which in ("W_Q", "W_K", "W_V"):
                Wf, Wr = getattr(f_lh, which), getattr(r_lh, which)
                want = torch.einsum("btd,hdr->bhtr", x, Wr)
                torch.testing.assert_close(torch.einsum("btd,hdr->bhtr", x_hat, Wf), want, **TOL)
                with pytest.raises(AssertionError):
                    torch.testing.assert_close(
                        torch.einsum("btd,hdr->bhtr", x_hat, Wr), want, **TOL
                    )
    funnel = _build("funnel")
    for r_lh, f_lh in zip(attention_heads(funnel), attention_heads(funnel, fold_norm=True)):
        assert any("Funnel is post-norm" in n for n in f_lh.notes), f_lh.notes
        torch.testing.assert_close(f_lh.W_Q, r_lh.W_Q)


POST_NORMS = {  # case → norm preceding attention layer i (hard-coded here), None: no norm
    "squeezebert": lambda i: (
        "embeddings.LayerNorm" if i == 0 else f"encoder.layers.{i - 1}.output.layernorm"
    ),
    "xlnet": lambda i: None if i == 0 else f"layer.{i - 1}.ff.layer_norm",
}


@pytest.mark.parametrize("name", list(POST_NORMS))
def test_fold_norm_of_post_norm_squeezebert_and_xlnet(name: str) -> None:
    """fold_norm=True on the post-norm SqueezeBERT (the previous block's output.layernorm over
    channels, the embeddings' LayerNorm for block 0) and XLNet (the previous layer's
    ff.layer_norm; layer 0 reads the word embeddings: nothing folded, said in a note): with
    β zeroed, x̂ W^fold = x̃ W^raw for W_Q, W_K, W_V, x̂ the norm's normalised input (recorded)
    and x̃ the attention module's input (recorded, (B, C, T) / (T, B, d) made (B, T, d)); W_O is
    not folded. The raw factors are the ones the forward checks above validate."""
    model = _build(name)
    raw = attention_heads(model, strict=True)
    folded = attention_heads(model, strict=True, fold_norm=True)
    norm_of = POST_NORMS[name]
    seen: dict[str, Tensor] = {}
    handles = []
    for i, lh in enumerate(raw):
        target = norm_of(i)
        if target is None:
            assert any("no norm precedes" in n for n in folded[i].notes), folded[i].notes
            continue
        assert any(f"gain of {target} folded into W_Q, W_K, W_V" in n for n in folded[i].notes)

        def norm_in(_m: nn.Module, args: tuple, key: str = target) -> None:
            seen[key] = args[0]

        def attn_in(_m: nn.Module, args: tuple, key: str = lh.name) -> None:
            seen[key] = args[0]

        handles += [
            model.get_submodule(target).register_forward_pre_hook(norm_in),
            model.get_submodule(lh.name).register_forward_pre_hook(attn_in),
        ]
    try:
        with torch.no_grad():
            model(input_ids=_ids())
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for i, (r_lh, f_lh) in enumerate(zip(raw, folded)):
            torch.testing.assert_close(f_lh.W_O, r_lh.W_O)
            target = norm_of(i)
            if target is None:
                torch.testing.assert_close(f_lh.W_Q, r_lh.W_Q)
                continue
            u, x = seen[target], seen[r_lh.name]
            if name == "squeezebert":  # attention and SqueezeBertLayerNorm take (B, C, T)
                x = x.transpose(1, 2)  # the embeddings' nn.LayerNorm takes (B, T, C)
                u = u if target.startswith("embeddings") else u.transpose(1, 2)
            else:  # XLNet: (T, B, d)
                u, x = u.transpose(0, 1), x.transpose(0, 1)
            eps = float(model.get_submodule(target).eps)
            x_hat = torch.nn.functional.layer_norm(u, u.shape[-1:], eps=eps)
            for which in ("W_Q", "W_K", "W_V"):
                Wf, Wr = getattr(f_lh, which), getattr(r_lh, which)
                got = torch.einsum("btd,hdr->bhtr", x_hat, Wf)
                torch.testing.assert_close(got, torch.einsum("btd,hdr->bhtr", x, Wr), **TOL)
                with pytest.raises(AssertionError):  # the raw factor on x̂: the gain is missing
                    torch.testing.assert_close(
                        torch.einsum("btd,hdr->bhtr", x_hat, Wr),
                        torch.einsum("btd,hdr->bhtr", x, Wr),
                        **TOL,
                    )


def test_xlnet_score_parameters_are_named_and_get_role_other() -> None:
    """XLNet's parameters that add score terms outside W_Q·W_Kᵀ (the positional key projection
    r, r_r_bias, r_s_bias, r_w_bias, seg_embed) are listed in ``LayerHeads.score_params`` and
    get role "other" on purpose (by the block rule r and the biases would pass for MLP weights,
    seg_embed for an embedding); the flags name the content bias and the segment embeddings,
    and the notes say what lies outside the QK circuit."""
    from rankdecay.decay import param_roles

    model = CASES["xlnet"].build()
    roles = param_roles(model, strict=True)
    for lh in attention_heads(model, strict=True):
        extra = {f"{lh.name}.{p}" for p in ("r", "r_r_bias", "r_s_bias", "r_w_bias", "seg_embed")}
        assert set(lh.score_params) == extra
        assert {roles[n] for n in extra} == {"other"}
        assert lh.flags["content_bias"] == f"{lh.name}.r_w_bias"
        assert lh.flags["segment_bias"] == f"{lh.name}.seg_embed"
        assert lh.flags["relative_position_bias"] is True
        text = " ".join(lh.notes)
        assert "content bias" in text and "segment" in text and "relative position" in text
    assert roles["layer.0.ff.layer_1.weight"] == "mlp"


@pytest.mark.parametrize("name", ["funnel", "cpmant"])
def test_funnel_and_cpmant_score_parameters_are_named_and_get_role_other(name: str) -> None:
    """Funnel's parameters that add score terms outside W_Q·W_Kᵀ (r_w_bias, r_kernel, r_r_bias,
    r_s_bias, seg_embed: inside the module) and CPM-Ant's position bias table (the model's
    position_bias.relative_attention_bias, shared by all layers) are listed in
    ``LayerHeads.score_params`` and get role "other"; q/k/v/o get attn_qk / attn_ov; the flags
    name Funnel's content bias and segment embeddings, and the notes say what lies outside the
    QK circuit."""
    from rankdecay.decay import param_roles

    model = CASES[name].build()
    roles = param_roles(model, strict=True)
    for lh in attention_heads(model, strict=True):
        if name == "funnel":
            own = ("r_w_bias", "r_kernel", "r_r_bias", "r_s_bias", "seg_embed")
            extra = {f"{lh.name}.{p}" for p in own}
            parts = ("q_head", "k_head", "v_head", "post_proj")
            assert lh.flags["content_bias"] == f"{lh.name}.r_w_bias"
            assert lh.flags["segment_bias"] == f"{lh.name}.seg_embed"
            text = " ".join(lh.notes)
            assert "content bias" in text and "segment" in text and "pooled" in text
        else:
            extra = {CPMANT_BIAS}
            parts = ("project_q", "project_k", "project_v", "attention_out")
            assert CPMANT_BIAS in " ".join(lh.notes)
        assert set(lh.score_params) == extra
        assert {roles[n] for n in extra} == {"other"}
        assert lh.flags["relative_position_bias"] is True
        assert [roles[f"{lh.name}.{p}.weight"] for p in parts] == [
            "attn_qk",
            "attn_qk",
            "attn_ov",
            "attn_ov",
        ]
        assert "relative position" in " ".join(lh.notes)


@pytest.mark.parametrize(
    "name", ["squeezebert", "squeezebert_ungrouped", "xlnet", "funnel", "cpmant"]
)
@pytest.mark.parametrize("granularity", ["matrix", "head"])
def test_low_rank_decay_on_conv_and_raw_parameter_attention(name: str, granularity: str) -> None:
    """LowRankDecay(target="attention") on SqueezeBERT's 1×1 convolutions (grouped: the
    block-diagonal matrices are copies, the update goes back through autograd; ungrouped: views)
    XLNet's raw (d, H, r) q/k/v/o (views) and the named nn.Linear q/k/v/o of Funnel and
    CPM-Ant (views) moves every singular value of every W_Q, W_K, W_V,
    W_O (per head, or per whole matrix) by exactly −c, off-block entries of a grouped
    convolution staying zero (they are not parameters); target="qk" leaves W_V, W_O as they were.
    ``strided_views()`` (the batched ensemble's path) describes the views and refuses the grouped
    copies with a sentence that names the grouped convolution."""
    from rankdecay.decay import LowRankDecay
    from rankdecay.errors import RankdecayValueError

    def svals(model: nn.Module) -> list[Tensor]:
        """σ of W_Q, W_K, W_V, W_O of every layer: per head (H, ·) or of the whole matrix."""
        out = []
        with torch.no_grad():
            for lh in attention_heads(model):
                for which, W in zip("QKVO", (lh.W_Q, lh.W_K, lh.W_V, lh.W_O)):
                    if granularity == "matrix" and which == "O":  # (H·r, d)
                        W = W.reshape(-1, W.shape[-1])
                    elif granularity == "matrix":  # (d, H·r)
                        W = W.permute(1, 0, 2).reshape(W.shape[1], -1)
                    out.append(torch.linalg.svdvals(W))
        return out

    c = 1e-3
    for target, moved in (("qk", (0, 1)), ("attention", (0, 1, 2, 3))):
        model = _build(name)
        before = svals(model)
        decay = LowRankDecay(model, c, target=target, granularity=granularity, scale_by_lr=False)
        if name == "squeezebert":
            with pytest.raises(
                RankdecayValueError,
                match="grouped 1×1 convolution" if granularity == "matrix" else "strided",
            ):
                decay.strided_views()
        else:
            assert len(decay.strided_views()) == CASES[name].n_layers * len(moved)
        decay.step()
        after = svals(model)
        for i, (sb, sa) in enumerate(zip(before, after)):
            expected = sb - c if i % 4 in moved else sb
            torch.testing.assert_close(sa, expected, rtol=0, atol=1e-10)


FORM_CASES = {  # family → (config class, model class): attention that is not plain softmax
    "diffllama": ("DiffLlamaConfig", "DiffLlamaModel", "DiffLlamaAttention"),
    "bitnet": ("BitNetConfig", "BitNetModel", "BitNetAttention"),
    "doge": ("DogeConfig", "DogeModel", "DogeAttention"),
    "longformer": ("LongformerConfig", "LongformerModel", "LongformerSelfAttention"),
    "nystromformer": ("NystromformerConfig", "NystromformerModel", "NystromformerSelfAttention"),
    "yoso": ("YosoConfig", "YosoModel", "YosoSelfAttention"),
    "llama": ("LlamaConfig", "LlamaModel", None),  # control: plain softmax, no flag
}


@pytest.mark.parametrize("family", list(FORM_CASES))
def test_attention_that_is_not_plain_softmax_is_flagged_and_noted(family: str) -> None:
    """Families whose q/k/v/o extract but whose attention is not softmax(scale·q·kᵀ)·v (the
    survey's forward check found them: differential, dynamic-mask, sparse, approximate, a norm
    before W_O) carry the ``attention_form`` flag and a note saying the spectra describe the
    weights, not the attention map; Llama (plain softmax) carries neither."""
    from rankdecay.attention_spec import ATTENTION_FORMS

    config_cls, model_cls, attn_cls = FORM_CASES[family]
    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    kw |= dict(vocab_size=64, max_position_embeddings=64)
    if family in ("diffllama", "bitnet", "doge", "llama"):
        kw["num_key_value_heads"] = 2
    if family == "longformer":
        kw["attention_window"] = 4
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kw))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnrecognizedAttentionWarning)
        (lh,) = attention_heads(model, strict=True)
    notes = [n for n in lh.notes if n.startswith("not plain softmax attention")]
    if attn_cls is None:
        assert "attention_form" not in lh.flags and not notes
        return
    assert attn_cls in {type(m).__name__ for m in model.modules()}  # the table names real classes
    assert lh.flags["attention_form"] == ATTENTION_FORMS[attn_cls]
    assert len(notes) == 1 and ATTENTION_FORMS[attn_cls] in notes[0]


def test_mlps_feed_forwards_residuals_and_bias_tables_are_not_taken_for_attention() -> None:
    """A module named like attention (or with key/value children) whose class name ends in MLP,
    FeedForward, Residual or Bias (EdgeTAM, RWKV, Inkling-2, Phi-4 had such false warnings) does
    not warn; the same children under an ``…Attention`` name still do."""

    def holder(cls_name: str) -> nn.Module:
        kind = type(cls_name, (nn.Module,), {})
        m = kind()
        m.key, m.value = nn.Linear(D, D), nn.Linear(D, D)
        return m

    for name in (
        "VideoMemoryAttentionMLP",
        "RwkvFeedForward",
        "BlockAttentionResidual",
        "RelativeAttentionBias",
    ):
        model = nn.Sequential(holder(name))
        assert unrecognized_attention(model, []) == []
    assert unrecognized_attention(nn.Sequential(holder("OddAttention")), []) == ["0"]


def test_hybrid_linear_attention_layers_are_named_not_skipped_silently() -> None:
    """Qwen3-Next with one full-attention and one linear-attention (Gated DeltaNet) layer: the
    full one is extracted, the linear one (no softmax QK circuit) is named in the warning."""
    model = _lm(
        t.Qwen3NextConfig,
        t.Qwen3NextModel,
        num_key_value_heads=2,
        head_dim=8,
        layer_types=["full_attention", "linear_attention"],
        num_experts=2,
        num_experts_per_tok=1,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
        linear_num_value_heads=2,
        linear_num_key_heads=2,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
    )()
    with pytest.warns(UnrecognizedAttentionWarning, match=r"layers\.1\.linear_attn") as caught:
        layers = attention_heads(model)
    assert [lh.name for lh in layers] == ["layers.0.self_attn"]
    # the warning says why (a kind without a softmax q·kᵀ circuit), not "teach rankdecay"
    (message,) = {str(w.message) for w in caught}
    assert "linear attention (gated delta rule): no softmax q·kᵀ circuit" in message
    assert "register_adapter" not in message and "nothing to extract there" in message


def test_deberta_v1_talking_heads_scale_and_timesformer_post_projection() -> None:
    """DeBERTa v1: talking heads (scores and probabilities mixed across heads) carry the
    ``attention_form`` flag in the live and the checkpoint plan; its scale counts every entry
    of pos_att_type (1 + 3 here: the module divides q by √(r·(1 + len(pos_att_type))), v2 counts
    only c2p/p2c). TimeSformer: the time attention's output goes through temporal_dense after
    W_O (flag ``post_projection``, both paths); the space attention has no such map."""
    from rankdecay.attention_spec import TALKING_HEADS
    from rankdecay.heads import plan_from_checkpoint

    model = _lm(
        t.DebertaConfig,
        t.DebertaModel,
        relative_attention=True,
        pos_att_type=["c2p", "p2c", "p2p"],
        talking_head=True,
    )()
    live = attention_heads(model, strict=True)
    disk = plan_from_checkpoint(model.config.to_dict(), list(model.state_dict()))
    for lh in [*live, *disk]:
        assert lh.flags["attention_form"] == TALKING_HEADS
        assert lh.scale == pytest.approx((4 * (D // H)) ** -0.5, rel=1e-12)
    space_time = attention_heads(CASES["timesformer"].build())
    posts = {lh.name: lh.flags.get("post_projection") for lh in space_time}
    tf = CASES["timesformer"].build()
    disk_posts = {
        p.name: p.flags.get("post_projection")
        for p in plan_from_checkpoint(tf.config.to_dict(), list(tf.state_dict()))
    }
    assert posts == disk_posts
    assert posts == {
        f"encoder.layer.{i}.{kind}": ("temporal_dense" if kind == "temporal_attention" else None)
        for i in range(L)
        for kind in ("attention", "temporal_attention")
    }
    # fold_norm folds the norm each attention reads: temporal_layernorm before the time
    # attention, layernorm_before before the space attention (diag(γ)·W, γ random here)
    tf = _randomize(tf)
    raw = {lh.name: lh for lh in attention_heads(tf)}
    for lh in attention_heads(tf, fold_norm=True):
        block, _, kind = lh.name.rpartition(".")
        norm = "temporal_layernorm" if kind == "temporal_attention" else "layernorm_before"
        gain = tf.get_parameter(f"{block}.{norm}.weight").detach()
        assert any(norm in note for note in lh.notes), lh.notes
        torch.testing.assert_close(lh.W_Q, gain[:, None] * raw[lh.name].W_Q, rtol=0, atol=0)
    # a hub config.json stores DeBERTa's pos_att_type as "c2p|p2c": the checkpoint plan reads
    # that string like the config class does (3 terms → 1/√(3r), not len("c2p|p2c") = 7)
    dv1 = CASES["deberta_v1"].build()
    as_hub = {**dv1.config.to_dict(), "pos_att_type": "c2p|p2c"}
    as_list = {**dv1.config.to_dict(), "pos_att_type": ["c2p", "p2c"]}
    names = list(dv1.state_dict())
    hub_scales = [p.scale for p in plan_from_checkpoint(as_hub, names)]
    list_scales = [p.scale for p in plan_from_checkpoint(as_list, names)]
    assert hub_scales == list_scales == [pytest.approx((3 * (D // H)) ** -0.5)] * len(hub_scales)


@pytest.mark.parametrize("name", ["deberta_v1", "timesformer", "lxmert", "convbert"])
def test_bert_style_fused_and_split_heads_stream_like_in_memory(name: str, tmp_path: Path) -> None:
    """The save_pretrained files of DeBERTa v1, TimeSformer, LXMERT and ConvBERT stream to the
    report of the in-memory model: same modules in the same order (LXMERT registers layer,
    x_layers, r_layers, and its cross-modal layer first in a block), same spectra to 1e-12."""
    import numpy as np

    from rankdecay import analyze

    model = _build(name)
    model.save_pretrained(tmp_path / "m")
    streamed, live = analyze(tmp_path / "m"), analyze(model)
    assert streamed.model["streamed"] is True and len(streamed.records) == len(live.records) > 0
    for a, b in zip(live.records, streamed.records):
        keys = ("layer", "name", "head", "circuit", "kv_head")
        assert [a[k] for k in keys] == [b[k] for k in keys]
        sa, sb = np.asarray(a["singular_values"]), np.asarray(b["singular_values"])
        assert np.abs(sa - sb).max() <= 1e-12 * sa.max()


@pytest.mark.parametrize("name", ["squeezebert", "xlnet", "funnel", "cpmant"])
def test_conv_and_raw_parameter_attention_stream_like_in_memory(name: str, tmp_path: Path) -> None:
    """The save_pretrained files of SqueezeBERT (grouped 1×1 convolutions, the out-projection in
    the block's post_attention.conv1d; group counts from config.json) and XLNet (raw
    ``rel_attn.{q,k,v,o}`` of shape (d, H, r)), Funnel (q_head/k_head/v_head/post_proj) and
    CPM-Ant (project_q/k/v, attention_out) stream without a fallback or an
    UnrecognizedAttentionWarning to the report of the in-memory model: same modules, heads and
    circuits in the same order, same spectra to 1e-12, the same flags; SqueezeBERT group counts
    in config.json that do not fit the tensors are refused (CorruptCheckpointError)."""
    import numpy as np

    from rankdecay import analyze
    from rankdecay.stream import StreamingFallbackWarning

    model = _build(name)
    model.save_pretrained(tmp_path / "m")
    with warnings.catch_warnings():
        warnings.simplefilter("error", StreamingFallbackWarning)
        warnings.simplefilter("error", UnrecognizedAttentionWarning)
        streamed = analyze(tmp_path / "m")
    live = analyze(model)
    assert streamed.model["streamed"] is True and len(streamed.records) == len(live.records) > 0
    flag_keys = ("grouped_projections", "relative_position_bias", "content_bias", "segment_bias")
    for a, b in zip(live.records, streamed.records):
        keys = ("layer", "name", "head", "circuit", "kv_head", *(k for k in flag_keys if k in a))
        assert [a[k] for k in keys] == [b[k] for k in keys]
        sa, sb = np.asarray(a["singular_values"]), np.asarray(b["singular_values"])
        assert np.abs(sa - sb).max() <= 1e-12 * sa.max()
    if name == "squeezebert":  # group counts in config.json that do not fit the tensors
        import json

        from rankdecay.checkpoint import CorruptCheckpointError

        path = tmp_path / "m" / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "q_groups": 4}))
        with pytest.raises(CorruptCheckpointError, match=r"reads 64 channels with 4 group\(s\)"):
            analyze(tmp_path / "m")


# ---------------------------------------------------------------------------------------------
# KV-shared layers (Gemma-3n, Gemma-4): q and o of their own, k and v of an earlier layer
# ---------------------------------------------------------------------------------------------

KV_SHARED = {  # case → (consumer → producer layer, layers whose values are the keys)
    "gemma4_text_kv_shared": ({2: 0, 3: 1}, {1, 3}),
    "gemma3n_text": ({4: 2, 5: 3}, set()),
}


@pytest.mark.parametrize("name", list(KV_SHARED))
def test_kv_shared_layers_read_their_producers_keys_and_values(name: str) -> None:
    """A KV-shared layer's W_K, W_V are those of the layer whose keys and values it reuses
    (transformers' ``kv_sharing_modes``), named in flag ``kv_shared`` and a note; the model's
    attention is reproduced with that layer's input as the keys' source and not with the
    consumer's own input (the control). Under ``attention_k_eq_v`` W_V is W_K."""
    from rankdecay.attention_spec import kv_producers

    producers, k_eq_v = KV_SHARED[name]
    model = _build(name)
    assert kv_producers(model.config) == producers
    layers, recs = _run(name)
    with torch.no_grad():
        for lh, rec in zip(layers, recs):
            i = int(lh.name.split(".")[1])
            src = f"layers.{producers[i]}.self_attn" if i in producers else lh.name
            assert lh.flags.get("kv_shared") == (src if i in producers else None)
            assert lh.qk_params == (f"{lh.name}.q_proj.weight", f"{src}.k_proj.weight")
            v = "k_proj" if i in k_eq_v else "v_proj"
            assert lh.ov_params == (f"{src}.{v}.weight", f"{lh.name}.o_proj.weight")
            assert (lh.flags.get("values_from_keys") is True) == (i in k_eq_v)
            assert torch.equal(lh.W_V, lh.W_K) == (i in k_eq_v)
            assert any("KV-shared" in n for n in lh.notes) == (i in producers)
            _check(lh, rec.xq[0], rec.xk[0], rec.xv[0], rec.z[0], rec.out[0], True, None)
            if i in producers:  # keys and values from the consumer's own input: not the model
                assert not torch.allclose(rec.xq[0], rec.xk[0])
                with pytest.raises(AssertionError):
                    _check(lh, rec.xq[0], rec.xq[0], rec.xq[0], rec.z[0], rec.out[0], True, None)


def test_kv_shared_checkpoint_ignores_the_consumers_own_unused_keys() -> None:
    """A Gemma-3n hub checkpoint still holds k_proj/v_proj for its KV-shared layers (transformers
    ignores them on load): the plan reads the producer's, as the loaded model computes."""
    from rankdecay.heads import layer_heads_from_tensors, plan_from_checkpoint

    model = _build("gemma3n_text")
    state = dict(model.state_dict())
    for i in (4, 5):  # the unused tensors a hub checkpoint carries
        for proj in ("k_proj", "v_proj"):
            state[f"layers.{i}.self_attn.{proj}.weight"] = torch.randn(16, D)
    plans = {p.name: p for p in plan_from_checkpoint(model.config.to_dict(), list(state))}
    with torch.no_grad():
        live = {lh.name: lh for lh in attention_heads(model)}
    for i, producer in ((4, 2), (5, 3)):
        plan = plans[f"layers.{i}.self_attn"]
        assert plan.k == f"layers.{producer}.self_attn.k_proj.weight"
        assert plan.flags["kv_shared"] == f"layers.{producer}.self_attn"
        disk = layer_heads_from_tensors(plan, state.__getitem__)
        assert torch.equal(disk.W_K, live[plan.name].W_K)
        assert torch.equal(disk.W_V, live[plan.name].W_V)


@pytest.mark.parametrize("granularity", ["matrix", "head"])
def test_low_rank_decay_steps_a_shared_key_matrix_once(granularity: str) -> None:
    """W_K of layer 0 is read by layer 2 too and, with attention_k_eq_v, layer 1's W_K is its
    W_V: LowRankDecay still moves every singular value of each stored matrix by exactly −c
    (a matrix counted twice would move by −2c)."""
    from rankdecay.decay import LowRankDecay

    model = CASES["gemma4_text_kv_shared"].build().double()
    c = 1e-3
    names = [f"layers.{i}.self_attn.{p}" for i, p in ((0, "k_proj"), (0, "v_proj"), (1, "k_proj"))]
    names = [f"{n}.weight" for n in names]  # (16, 32): σ ≫ c, so each moves by exactly −c
    params = dict(model.named_parameters())

    def svals(n: str) -> Tensor:
        W = params[n].detach()
        r = 16 if n.startswith("layers.1.") else 8  # full-attention layers: global_head_dim
        return torch.linalg.svdvals(W.view(-1, r, W.shape[1]) if granularity == "head" else W)

    before = {n: svals(n) for n in names}
    LowRankDecay(model, c, target="attention", granularity=granularity, scale_by_lr=False).step()
    for n in names:
        torch.testing.assert_close(svals(n), before[n] - c, rtol=0, atol=1e-10)


def test_default_size_gemma4_checkpoint_plans_use_each_layers_own_heads() -> None:
    """Gemma4TextConfig() at its default size (30 layers, heads of 256; every sixth layer is
    full attention with heads of 512, saved under ``per_layer_config`` keys "05", "11", …), built
    on the meta device: every layer's checkpoint plan splits into the shapes the live extraction
    finds (a plan that read the top-level head_dim refused the real checkpoint)."""
    from rankdecay.heads import layer_heads_from_tensors, plan_from_checkpoint

    config = t.Gemma4TextConfig()
    assert "05" in config.to_dict()["per_layer_config"]  # the zero-padded keys on disk
    with torch.device("meta"):
        model = t.Gemma4TextModel(config)
    live = {lh.name: lh for lh in attention_heads(model)}
    state = model.state_dict()
    plans = plan_from_checkpoint(config.to_dict(), list(state))
    assert [p.name for p in plans] == list(live) and len(plans) == config.num_hidden_layers
    widths = set()
    for plan in plans:
        disk = layer_heads_from_tensors(plan, state.__getitem__)
        for f in ("W_Q", "W_K", "W_V", "W_O"):
            assert getattr(disk, f).shape == getattr(live[plan.name], f).shape, (plan.name, f)
        widths.add(disk.W_Q.shape[-1])
    assert widths == {256, 512}
