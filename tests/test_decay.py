"""Parameter roles, param_groups and Low-Rank Decay, checked on real model classes.

Ground truth: dense float64 SVDs of the per-head/per-matrix views, autograd of the nuclear norm
of the materialized circuits, and plain torch optimizers run side by side.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rankdecay.decay import LowRankDecay, check_groups, describe_groups, param_groups, param_roles
from rankdecay.errors import RankdecayError
from rankdecay.heads import attention_heads

transformers = pytest.importorskip("transformers")


# ------------------------------------------------------------------------------------ models


def gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=64,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2Model(cfg)


def bert() -> nn.Module:
    cfg = transformers.BertConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=64,
        max_position_embeddings=16,
    )
    return transformers.BertModel(cfg)


def llama_gqa() -> nn.Module:
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=64,
    )
    return transformers.LlamaModel(cfg)


def encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


def tiny() -> nn.Module:
    models = pytest.importorskip("rankdecay.models")
    cfg = models.ModelConfig(
        n_layers=2, d_model=32, n_heads=4, d_mlp=64, vocab_size=11, bias=True, qk_norm="rms"
    )
    return models.TinyTransformer(cfg)


# ------------------------------------------------------------------------------------ roles


def test_roles_gpt2_fused_qkv_is_attn_qk() -> None:
    r = param_roles(gpt2())
    assert r["h.0.attn.c_attn.weight"] == "attn_qk"  # fused q,k,v: the documented rule
    assert r["h.1.attn.c_proj.weight"] == "attn_ov"
    assert r["h.0.attn.c_attn.bias"] == "bias"
    assert r["h.0.mlp.c_fc.weight"] == "mlp" and r["h.1.mlp.c_proj.weight"] == "mlp"
    assert r["wte.weight"] == "embedding" and r["wpe.weight"] == "embedding"
    assert r["h.0.ln_1.weight"] == "norm" and r["ln_f.weight"] == "norm"
    assert r["h.0.ln_1.bias"] == "bias"


def test_roles_bert() -> None:
    r = param_roles(bert())
    p = "encoder.layer.1."
    assert r[p + "attention.self.query.weight"] == "attn_qk"
    assert r[p + "attention.self.key.weight"] == "attn_qk"
    assert r[p + "attention.self.value.weight"] == "attn_ov"
    assert r[p + "attention.output.dense.weight"] == "attn_ov"  # W_O, not the MLP's output.dense
    assert r[p + "output.dense.weight"] == "mlp" and r[p + "intermediate.dense.weight"] == "mlp"
    assert r[p + "attention.output.LayerNorm.weight"] == "norm"
    assert r["embeddings.word_embeddings.weight"] == "embedding"
    assert r["embeddings.token_type_embeddings.weight"] == "embedding"
    assert r["embeddings.LayerNorm.weight"] == "norm"
    assert r["pooler.dense.weight"] == "other" and r["pooler.dense.bias"] == "bias"


def test_roles_llama_gqa() -> None:
    r = param_roles(llama_gqa())
    p = "layers.0."
    assert (
        r[p + "self_attn.q_proj.weight"] == "attn_qk"
        and r[p + "self_attn.k_proj.weight"] == "attn_qk"
    )
    assert (
        r[p + "self_attn.v_proj.weight"] == "attn_ov"
        and r[p + "self_attn.o_proj.weight"] == "attn_ov"
    )
    for m in ("gate_proj", "up_proj", "down_proj"):
        assert r[f"{p}mlp.{m}.weight"] == "mlp"
    assert r[p + "input_layernorm.weight"] == "norm" and r["norm.weight"] == "norm"
    assert r["embed_tokens.weight"] == "embedding"


def test_roles_multihead_attention_and_encoder() -> None:
    r = param_roles(encoder())
    assert r["layers.0.self_attn.in_proj_weight"] == "attn_qk"
    assert r["layers.0.self_attn.in_proj_bias"] == "bias"
    assert r["layers.1.self_attn.out_proj.weight"] == "attn_ov"
    assert r["layers.0.linear1.weight"] == "mlp" and r["layers.0.linear2.weight"] == "mlp"
    assert r["layers.0.norm1.weight"] == "norm"
    mha = nn.MultiheadAttention(16, 2, kdim=8, vdim=12)
    r = param_roles(mha)
    assert r["q_proj_weight"] == "attn_qk" and r["k_proj_weight"] == "attn_qk"
    assert r["v_proj_weight"] == "attn_ov" and r["out_proj.weight"] == "attn_ov"


def test_roles_tiny_transformer() -> None:
    m = tiny()
    r = param_roles(m)
    assert r["blocks.0.attn.q.weight"] == "attn_qk" and r["blocks.1.attn.k.weight"] == "attn_qk"
    assert r["blocks.0.attn.v.weight"] == "attn_ov" and r["blocks.0.attn.o.weight"] == "attn_ov"
    assert r["blocks.0.mlp.fc_in.weight"] == "mlp"
    assert r["blocks.0.attn.q_norm.weight"] == "norm"
    assert r["embed.weight"] == "embedding"
    assert set(r) == {n for n, _ in m.named_parameters()}


def test_roles_generic_model_without_attention() -> None:
    m = nn.Sequential(nn.Embedding(10, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    r = param_roles(m)
    assert r == {
        "0.weight": "embedding",
        "1.weight": "norm",
        "1.bias": "bias",
        "2.weight": "other",
        "2.bias": "bias",
    }


def test_roles_protocol_on_wrapped_submodule() -> None:
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4))
            self.u = nn.Parameter(torch.randn(4, 4))

        def rankdecay_param_roles(self) -> dict[str, str]:
            return {"w": "attn_ov"}

    outer = nn.Module()
    outer.inner = Inner()
    r = param_roles(outer)
    assert r == {"inner.w": "attn_ov", "inner.u": "other"}  # u falls back to the generic rules

    class Bad(Inner):
        def rankdecay_param_roles(self) -> dict[str, str]:
            return {"w": "attention"}

    with pytest.raises(RankdecayError, match="unknown role"):
        param_roles(Bad())


# ------------------------------------------------------------------------------------ groups


@pytest.mark.parametrize("make", [gpt2, bert, llama_gqa, encoder, tiny])
def test_param_groups_cover_every_trainable_parameter_once(make) -> None:
    m = make()
    frozen = next(iter(m.parameters()))
    frozen.requires_grad_(False)
    groups = param_groups(m, {"attn_qk": 0.0, "attention": 0.05, "default": 0.1})
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) == len(trainable)
    assert set(ids) == {id(p) for p in trainable}
    roles = param_roles(m)
    for g in groups:
        assert all(roles[n] == g["role"] for n in g["names"])
        expected = {"attn_qk": 0.0, "attn_ov": 0.05}.get(g["role"], 0.1)
        assert g["weight_decay"] == expected
    torch.optim.AdamW(groups, lr=1e-3)  # torch accepts the extra keys
    table = describe_groups(groups)
    assert "attn_qk" in table and "total" in table
    assert f"{sum(p.numel() for p in trainable):,}" in table


def test_param_groups_with_adam_is_coupled_and_adamw_decoupled() -> None:
    """With zero loss gradient, AdamW shrinks θ by (1 − lr·λ) per group; Adam sees λθ as the gradient."""
    m = encoder()
    groups_w = param_groups(m, {"attn_qk": 0.0, "default": 0.5})
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.AdamW(groups_w, lr=0.1)
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in m.named_parameters():
        factor = 1.0 if param_roles(m)[n] == "attn_qk" else 1 - 0.1 * 0.5
        assert torch.allclose(p.detach(), before[n] * factor, atol=1e-7), n
    m2 = encoder()
    before = {n: p.detach().clone() for n, p in m2.named_parameters()}
    opt = torch.optim.Adam(param_groups(m2, {"attn_qk": 0.0, "default": 0.5}), lr=0.1)
    for p in m2.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    w = m2.layers[0].linear1.weight.detach()
    b0 = before["layers.0.linear1.weight"]
    # coupled: the gradient Adam normalizes is g = λθ, so its first step is lr·g/(|g| + ε)
    g = 0.5 * b0
    assert torch.allclose(w, b0 - 0.1 * g / (g.abs() + 1e-8), atol=1e-6)
    assert torch.equal(
        m2.layers[0].self_attn.in_proj_weight.detach(), before["layers.0.self_attn.in_proj_weight"]
    )


def test_param_groups_bad_input() -> None:
    m = encoder()
    with pytest.raises(RankdecayError, match="default"):
        param_groups(m, {"attn_qk": 0.0})
    with pytest.raises(RankdecayError, match="unknown weight-decay key"):
        param_groups(m, {"attn": 0.0, "default": 0.1})
    with pytest.raises(RankdecayError, match="≥ 0"):
        param_groups(m, -0.1)
    with pytest.raises(RankdecayError, match="does not have"):
        param_groups(m, 0.1, roles={"nope": "mlp"})
    groups = param_groups(m, 0.1)
    groups[1]["params"].append(groups[0]["params"][0])
    with pytest.raises(RankdecayError, match="exactly one group"):
        describe_groups(groups)
    with pytest.raises(RankdecayError):
        check_groups(groups)


# ------------------------------------------------------------------------------------ LRD: exactness


def _spectrum_matrix(
    m: int, n: int, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    k = s.numel()
    U, _ = torch.linalg.qr(torch.randn(m, k, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, dtype=torch.float64))
    return (U * s) @ V.T, U, V


@pytest.mark.parametrize("shape", [(12, 12), (16, 7), (7, 16)])
@pytest.mark.parametrize("mode", ["subtract", "svt"])
def test_one_step_shrinks_singular_values_keeps_vectors(shape: tuple[int, int], mode: str) -> None:
    m, n = shape
    k = min(m, n)
    s = torch.linspace(1.0, 0.05, k, dtype=torch.float64)
    W0, U, V = _spectrum_matrix(m, n, s)
    p = nn.Parameter(W0.clone())
    c = 0.2 if mode == "svt" else 0.03  # svt: some σ fall below c and must hit 0
    lrd = LowRankDecay({"w": p}, strength=c / 0.5, target="matrices", mode=mode)
    lrd.step(lr=0.5)  # c = strength·lr
    expected = s - c if mode == "subtract" else torch.clamp(s - c, min=0)
    assert torch.allclose(p.detach(), (U * expected) @ V.T, atol=1e-12)
    # equivalently: the same singular vectors, σ mapped as the theory says
    got = torch.linalg.svdvals(p.detach())
    assert torch.allclose(got, torch.sort(expected, descending=True).values, atol=1e-12)


def test_newton_schulz_lrd_matches_svd_to_tol() -> None:
    W0, _, _ = _spectrum_matrix(24, 10, torch.logspace(0, -2, 10, dtype=torch.float64))
    p1, p2 = nn.Parameter(W0.clone()), nn.Parameter(W0.clone())
    LowRankDecay({"w": p1}, 0.1, target="matrices").step(1.0)
    lrd = LowRankDecay({"w": p2}, 0.1, target="matrices", polar="newton_schulz", tol=1e-6)
    lrd.step(1.0)
    assert lrd.last_info["polar_residual"] <= 1e-6
    assert torch.linalg.matrix_norm(p1.detach() - p2.detach(), ord=2) <= 0.1 * 1e-6 * 1.01


def _views(model: nn.Module, which: str, head: bool) -> torch.Tensor:
    """Per-layer W_Q/W_K/W_V/W_O as float64 (layers, [H,] m, k) from the adapter (ground truth layout)."""
    out = []
    with torch.no_grad():
        for lh in attention_heads(model):
            W = {"Q": lh.W_Q, "K": lh.W_K, "V": lh.W_V, "O": lh.W_O}[which].double()
            if which in ("K", "V") and lh.kv_head_index is not None:
                W = W[[lh.kv_head_index.index(j) for j in sorted(set(lh.kv_head_index))]]
            if not head:
                W = (
                    W.reshape(W.shape[0] * W.shape[1], W.shape[2])
                    if which == "O"
                    else W.permute(1, 0, 2).reshape(W.shape[1], -1)
                )
            out.append(W.clone())
    return torch.stack(out)


@pytest.mark.parametrize("make", [gpt2, bert, llama_gqa, encoder, tiny])
@pytest.mark.parametrize("granularity", ["matrix", "head"])
def test_lrd_through_adapters_is_exact_for_any_storage(make, granularity: str) -> None:
    """Q and K views lose exactly c from every singular value; V and O are untouched (target qk)."""
    m = make().double()
    head = granularity == "head"
    before = {w: _views(m, w, head) for w in "QKVO"}
    c = 1e-3  # W − c·U Vᵀ = U (Σ − c) Vᵀ, whatever the σ (a σ < c flips sign)
    LowRankDecay(m, strength=c, target="qk", granularity=granularity, scale_by_lr=False).step()
    for w in "QK":
        U, S, Vh = torch.linalg.svd(before[w], full_matrices=False)
        expected = (U * (S - c).unsqueeze(-2)) @ Vh
        assert torch.allclose(_views(m, w, head), expected, atol=1e-12), w
    for w in "VO":
        assert torch.equal(_views(m, w, head), before[w]), w


def test_lrd_attention_target_moves_ov_and_matrices_target_moves_mlp() -> None:
    m = gpt2().double()
    v0, o0 = _views(m, "V", False), _views(m, "O", False)
    mlp0 = m.h[0].mlp.c_fc.weight.detach().clone()
    LowRankDecay(m, 1e-3, target="attention", scale_by_lr=False).step()
    assert not torch.equal(_views(m, "V", False), v0) and not torch.equal(_views(m, "O", False), o0)
    assert torch.equal(m.h[0].mlp.c_fc.weight.detach(), mlp0)
    wte0 = m.wte.weight.detach().clone()
    LowRankDecay(m, 1e-3, target="matrices", scale_by_lr=False).step()
    assert not torch.equal(m.h[0].mlp.c_fc.weight.detach(), mlp0)
    assert torch.equal(m.wte.weight.detach(), wte0)  # embeddings are not "matrices"


@pytest.mark.parametrize("make", [gpt2, llama_gqa, tiny, encoder])
@pytest.mark.parametrize("target", ["qk", "attention"])
def test_product_step_is_minus_c_times_nuclear_gradient(make, target: str) -> None:
    m = make().double()
    c = 1e-3
    circuits = ("qk",) if target == "qk" else ("qk", "ov")
    ref = copy.deepcopy(m)
    total = torch.zeros((), dtype=torch.float64)
    for lh in attention_heads(ref):
        for circuit in circuits:
            A, B = lh.factors(circuit)
            total = total + torch.linalg.matrix_norm(A @ B.mT, ord="nuc").sum()
    params = dict(ref.named_parameters())
    grads = dict(zip(params, torch.autograd.grad(total, list(params.values()), allow_unused=True)))
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    lrd = LowRankDecay(m, c, target=target, granularity="product", scale_by_lr=False)
    lrd.step()
    moved = 0
    for n, p in m.named_parameters():
        g = grads[n]
        expected = before[n] if g is None else before[n] - c * g
        assert torch.allclose(p.detach(), expected, atol=1e-12), n
        moved += g is not None and bool(g.abs().max() > 0)
    assert moved >= 2


# ------------------------------------------------------------------------------------ LRD: optimizers


def _loss(model: nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(2, 5, 32, dtype=next(model.parameters()).dtype)
    return model(x).pow(2).mean()


OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.01),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_attach_matches_manual_steps_with_scheduler(name: str) -> None:
    torch.manual_seed(0)
    m1 = encoder().double()
    m1.eval()
    m2 = copy.deepcopy(m1)

    opt1 = OPTIMIZERS[name](m1.parameters())
    sched1 = torch.optim.lr_scheduler.StepLR(opt1, step_size=1, gamma=0.5)
    lrd = LowRankDecay(m1, strength=0.5, target="qk").attach(opt1)
    lr0 = opt1.param_groups[0]["lr"]
    for _ in range(3):
        _loss(m1).backward()
        opt1.step()
        opt1.zero_grad()
        sched1.step()
    assert lrd.last_info["c"] == pytest.approx(0.5 * lr0 * 0.25)  # the scheduled lr of step 3

    # reference: plain optimizer steps, then LRD.step(lr used by that step) by hand
    opt2 = OPTIMIZERS[name](m2.parameters())
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    manual = LowRankDecay(m2, strength=0.5, target="qk")
    for _ in range(3):
        _loss(m2).backward()
        used = opt2.param_groups[0]["lr"]
        opt2.step()
        opt2.zero_grad()
        manual.step(used)
        sched2.step()
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        assert torch.allclose(p1, p2, atol=1e-12), n

    # detach: from now on the optimizer behaves exactly as a plain one
    lrd.detach()
    m3 = copy.deepcopy(m1)
    opt3 = OPTIMIZERS[name](m3.parameters())
    opt3.load_state_dict(copy.deepcopy(opt1.state_dict()))  # torch would share the buffers
    for m, opt in ((m1, opt1), (m3, opt3)):
        _loss(m).backward()
        opt.step()
    for p1, p3 in zip(m1.parameters(), m3.parameters()):
        assert torch.allclose(p1, p3, atol=1e-12)


def test_attach_reads_each_groups_lr() -> None:
    m = encoder().double()
    m.eval()
    ref = copy.deepcopy(m)
    groups = param_groups(m, 0.0)
    for g in groups:
        g["lr"] = 0.02 if g["role"] == "attn_qk" else 0.001
    opt = torch.optim.SGD(groups, lr=0.001)
    lrd = LowRankDecay(m, 1.0, target="matrices").attach(opt)
    _loss(m).backward()
    opt.step()
    ref_groups = param_groups(ref, 0.0)
    for g in ref_groups:
        g["lr"] = 0.02 if g["role"] == "attn_qk" else 0.001
    opt_ref = torch.optim.SGD(ref_groups, lr=0.001)
    _loss(ref).backward()
    opt_ref.step()
    roles = param_roles(ref)
    LowRankDecay(ref, 1.0, target="matrices")._apply(
        {n: (0.02 if roles[n] == "attn_qk" else 0.001) for n in lrd.parameter_names}
    )
    for (n, p), q in zip(m.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-12), n


def test_scale_by_lr_false_ignores_lr() -> None:
    p1 = nn.Parameter(torch.randn(6, 4, dtype=torch.float64))
    p2 = nn.Parameter(p1.detach().clone())
    LowRankDecay({"w": p1}, 0.01, target="matrices", scale_by_lr=False).step(lr=123.0)
    LowRankDecay({"w": p2}, 0.01, target="matrices").step(lr=1.0)
    assert torch.allclose(p1, p2)


def test_callable_target() -> None:
    m = encoder()
    lrd = LowRankDecay(m, 0.1, target=lambda n, p: n.endswith("linear1.weight"))
    assert lrd.parameter_names == ["layers.0.linear1.weight", "layers.1.linear1.weight"]


# ------------------------------------------------------------------------------------ bad input


def test_lrd_bad_input() -> None:
    m = encoder()
    with pytest.raises(RankdecayError, match="target"):
        LowRankDecay(m, 0.1, target="mlp")
    with pytest.raises(RankdecayError, match="granularity"):
        LowRankDecay(m, 0.1, granularity="row")
    with pytest.raises(RankdecayError, match="mode"):
        LowRankDecay(m, 0.1, mode="hard")
    with pytest.raises(RankdecayError, match="polar"):
        LowRankDecay(m, 0.1, polar="qr")
    with pytest.raises(RankdecayError, match="≥ 0"):
        LowRankDecay(m, -0.1)
    with pytest.raises(RankdecayError, match="svd"):
        LowRankDecay(m, 0.1, mode="svt", polar="newton_schulz")
    with pytest.raises(RankdecayError, match="subtract"):
        LowRankDecay(m, 0.1, granularity="product", mode="svt")
    with pytest.raises(RankdecayError):
        LowRankDecay(m, 0.1, granularity="product", target="matrices")
    with pytest.raises(RankdecayError, match="callable"):
        LowRankDecay(m, 0.1, target=lambda n, p: True, granularity="head")
    with pytest.raises(RankdecayError, match="vectors"):
        LowRankDecay(m, 0.1, target=lambda n, p: True)
    with pytest.raises(RankdecayError, match="model"):
        LowRankDecay(dict(m.named_parameters()), 0.1, target="qk")
    p = nn.Parameter(torch.randn(3, 3))
    with pytest.raises(RankdecayError, match="twice"):
        LowRankDecay([("a", p), ("b", p)], 0.1, target="matrices")
    with pytest.raises(RankdecayError, match="selects no"):
        LowRankDecay(nn.Sequential(nn.Linear(3, 3)), 0.1, target="qk")
    lrd = LowRankDecay(m, 0.1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    lrd.attach(opt)
    with pytest.raises(RankdecayError, match="already attached"):
        lrd.attach(opt)
    lrd.detach()
    with pytest.raises(RankdecayError, match="does not train"):
        LowRankDecay(m, 0.1).attach(torch.optim.SGD(m.layers[0].linear1.parameters(), lr=0.1))
    # a parameter in two groups (torch forbids it at construction; a hand-edited optimizer can have it)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    opt.param_groups.append(
        {**opt.param_groups[0], "params": [m.layers[0].self_attn.in_proj_weight]}
    )
    with pytest.raises(RankdecayError, match="exactly one group"):
        LowRankDecay(m, 0.1).attach(opt)


def test_bad_arguments_are_value_or_type_errors() -> None:
    """Each bad argument is also the built-in error its nature says (and still a RankdecayError)."""
    m = encoder()
    p = nn.Parameter(torch.randn(3, 3))
    cases = [
        (ValueError, lambda: LowRankDecay(m, -0.1)),
        (TypeError, lambda: LowRankDecay(m, "strong")),
        (ValueError, lambda: LowRankDecay(m, 0.1, mode="hard")),
        (TypeError, lambda: LowRankDecay(m, 0.1, polar_steps=2.5)),
        (TypeError, lambda: LowRankDecay([("a", 3.0)], 0.1, target="matrices")),
        (ValueError, lambda: LowRankDecay([("a", p), ("b", p)], 0.1, target="matrices")),
        (TypeError, lambda: param_roles("model")),
        (ValueError, lambda: param_groups(m, {"nonsense": 0.1})),
        (ValueError, lambda: param_groups(m, -1.0)),
        (TypeError, lambda: param_groups(m, "0.1")),
    ]
    for kind, call in cases:
        with pytest.raises(kind) as err:
            call()
        assert isinstance(err.value, RankdecayError)


def test_in_place_and_autograd_paths_agree() -> None:
    """A view that is a plain strided view is updated in place; if the parameter is re-laid out
    after construction, LowRankDecay falls back to the autograd path with the same result."""
    m1 = tiny().double()
    m2 = copy.deepcopy(m1)
    lrd1 = LowRankDecay(m1, 1e-2, target="attention", scale_by_lr=False)
    lrd2 = LowRankDecay(m2, 1e-2, target="attention", scale_by_lr=False)
    assert all(v.strided is not None for v in lrd2._views)
    w = m2.blocks[0].attn.q.weight
    w.data = w.data.t().contiguous().t()  # same values, transposed strides
    assert lrd2._live(next(v for v in lrd2._views if v.owner == "blocks.0.attn.q.weight")) is None
    lrd1.step()
    lrd2.step()
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        assert torch.allclose(p1, p2, atol=1e-13), n


def test_lrd_fixed_newton_schulz_is_the_public_step() -> None:
    """polar="newton_schulz_fixed": W ← W − c·U φ₅(σ/(‖W‖_F + 1e-8)) Vᵀ on each stored W_Q, W_K
    (φ(s) = 1.5s − 0.5s³), after the optimizer step, not lr-scaled — against a float64 SVD."""
    from rankdecay.experiments import get_experiment
    from rankdecay.train import build_model

    cfg = get_experiment("grokking").config("paper")
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.task.build(0))
    names = [f"blocks.{i}.attn.{w}.weight" for i in range(2) for w in ("q", "k")]
    before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    lrd = LowRankDecay(model, 5e-3, polar="newton_schulz_fixed", polar_steps=5, scale_by_lr=False)
    lrd.step(lr=123.0)  # not lr-scaled: the lr must not matter
    for n, p in model.named_parameters():
        if n not in names:
            assert torch.equal(p.detach().double(), before[n])
            continue
        U, S, Vh = torch.linalg.svd(before[n], full_matrices=False)
        s = S / (S.square().sum().sqrt() + 1e-8)
        for _ in range(5):
            s = 1.5 * s - 0.5 * s**3
        want = before[n] - 5e-3 * (U * s) @ Vh
        assert (p.detach().double() - want).abs().max() < 1e-6


def test_mlp_role_follows_the_block_not_the_attention_modules_parent() -> None:
    """The feed-forward matrices of a block are ``mlp`` where they sit beside the attention's
    own sub-block (T5: ``block.N.layer.1``; CPM-Ant: ``layers.N.ffn`` beside ``layers.N.self_att``);
    a matrix inside an attention module that is not a factor (Swin's relative-position table) is
    ``other``, and a stage's patch merging stays ``other``; Llama and BERT are unchanged."""
    transformers = pytest.importorskip("transformers")
    import warnings

    def roles(model: torch.nn.Module) -> dict[str, str]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {n: r for n, r in param_roles(model).items() if r in ("mlp", "other")}

    t5 = roles(
        transformers.T5Model(
            transformers.T5Config(
                d_model=32, d_ff=64, num_layers=1, num_heads=4, d_kv=8, vocab_size=50
            )
        )
    )
    assert {n for n, r in t5.items() if r == "mlp"} == {
        f"{side}.block.0.layer.{i}.DenseReluDense.{w}.weight"
        for side, i in (("encoder", 1), ("decoder", 2))
        for w in ("wi", "wo")
    }
    cpm = roles(
        transformers.CpmAntModel(
            transformers.CpmAntConfig(
                hidden_size=32,
                dim_ff=64,
                num_hidden_layers=1,
                num_attention_heads=4,
                dim_head=8,
                vocab_size=50,
            )  # fmt: skip
        )
    )
    assert {n for n, r in cpm.items() if r == "mlp"} == {
        "encoder.layers.0.ffn.ffn.w_in.w_0.weight",
        "encoder.layers.0.ffn.ffn.w_in.w_1.weight",
        "encoder.layers.0.ffn.ffn.w_out.weight",
    }
    swin = roles(
        transformers.SwinModel(
            transformers.SwinConfig(
                embed_dim=16,
                depths=[1, 1],
                num_heads=[2, 2],
                image_size=16,
                patch_size=4,
                window_size=2,
            )  # fmt: skip
        )
    )
    table = (
        "encoder.layers.0.blocks.0.attention.relative_position_bias.relative_position_bias_table"
    )
    assert swin[table] == "other"
    assert swin["encoder.layers.0.downsample.reduction.weight"] == "other"
    assert swin["encoder.layers.0.blocks.0.mlp.fc1.weight"] == "mlp"
    llama = roles(
        transformers.LlamaModel(
            transformers.LlamaConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=4,
                vocab_size=50,
            )  # fmt: skip
        )
    )
    assert llama == {
        f"layers.0.mlp.{w}.weight": "mlp" for w in ("gate_proj", "up_proj", "down_proj")
    }
