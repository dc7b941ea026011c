"""TinyTransformer: shapes, masking, rotary, the heads adapter against the forward pass, QK-norm
scale invariance (R4's premise), parameter roles, patchify, vmap-ability."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

import rankdecay as rd
from rankdecay.config import apply_overrides
from rankdecay.errors import RankdecayError
from rankdecay.models import ModelConfig, TinyTransformer, patchify

V = 11


def small(**kw: object) -> ModelConfig:
    base = dict(n_layers=2, d_model=16, n_heads=2, d_mlp=24, vocab_size=V, max_len=12)
    base.update(kw)
    return ModelConfig(**base)  # type: ignore[arg-type]


def tokens(B: int = 3, T: int = 7) -> torch.Tensor:
    return torch.randint(0, V, (B, T))


COMBOS = [
    dict(),
    dict(readout="all"),
    dict(d_mlp=0, norm="none"),
    dict(mlp="swiglu", norm="rms", qk_norm="rms", pos="rotary"),
    dict(mlp="relu", qk_norm="l2", pos="none", causal=False),
    dict(mlp="silu", qk_norm="l2", qk_temperature=3.0, tie_embeddings=True, readout="all"),
    dict(d_head=5, n_heads=3, bias=True, init_std=None, final_norm=False),
    dict(n_out=4, norm="rms", qk_norm="rms", readout="all"),
]


@pytest.mark.parametrize(
    "kw", COMBOS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default"
)
def test_token_shapes_and_backward(kw: dict) -> None:
    cfg = small(**kw)
    model = TinyTransformer(cfg)
    out = model(tokens())
    n_out = cfg.n_out or V
    assert out.shape == ((3, 7, n_out) if cfg.readout == "all" else (3, n_out))
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "kw",
    [
        dict(pool="cls"),
        dict(pool="mean"),
        dict(pool="cls", readout="all", pos="rotary", causal=False),
        dict(pool="mean", pos="none", in_channels=3),
    ],
)
def test_image_shapes(kw: dict) -> None:
    cfg = small(patch_size=4, image_size=8, n_out=10, vocab_size=0, **kw)
    model = TinyTransformer(cfg)
    x = torch.randn(2, cfg.in_channels, 8, 8)
    out = model(x)
    T = 4 + (1 if cfg.pool == "cls" else 0)
    assert out.shape == ((2, T, 10) if cfg.readout == "all" else (2, 10))
    with pytest.raises(RankdecayError):
        model(torch.randn(2, cfg.in_channels, 12, 12))


def test_last_readout_is_last_position_of_all() -> None:
    torch.manual_seed(1)
    m_last = TinyTransformer(small(readout="last"))
    m_all = TinyTransformer(small(readout="all"))
    m_all.load_state_dict(m_last.state_dict())
    x = tokens()
    torch.testing.assert_close(m_last(x), m_all(x)[:, -1])


def test_tied_readout_uses_embedding() -> None:
    model = TinyTransformer(small(tie_embeddings=True, readout="all"))
    x = tokens()
    h = model.hidden_states(x)
    torch.testing.assert_close(model(x), h @ model.embed.weight.T)
    assert "unembed.weight" not in dict(model.named_parameters())


@pytest.mark.parametrize("pos", ["learned", "rotary", "none"])
def test_causal_masking_is_causal(pos: str) -> None:
    model = TinyTransformer(small(readout="all", pos=pos))
    x = tokens(2, 9)
    t = 5
    x2 = x.clone()
    x2[:, t] = (x2[:, t] + 1) % V
    y, y2 = model(x), model(x2)
    torch.testing.assert_close(y[:, :t], y2[:, :t], rtol=0, atol=0)
    assert (y[:, t:] - y2[:, t:]).abs().max() > 1e-4
    # the same edit in a bidirectional model reaches earlier positions
    bi = TinyTransformer(dataclasses.replace(model.cfg, causal=False))
    assert (bi(x)[:, :t] - bi(x2)[:, :t]).abs().max() > 1e-4


@pytest.mark.parametrize(
    "kw", [dict(), dict(qk_norm="rms", pos="rotary"), dict(qk_norm="l2", causal=False)]
)
def test_sdpa_matches_explicit_softmax(kw: dict) -> None:
    cfg = small(**kw)
    attn = TinyTransformer(cfg).blocks[0].attn
    x = torch.randn(2, 6, cfg.d_model)
    s = attn.scores(x)
    if cfg.causal:
        s = s.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    _, _, v = attn.qkv(x)
    o = (s.softmax(-1) @ v).transpose(1, 2).reshape(2, 6, -1)
    torch.testing.assert_close(attn(x), attn.o(o), rtol=1e-5, atol=1e-6)


def test_rotary_scores_depend_only_on_relative_position() -> None:
    cfg = small(pos="rotary", max_len=16)
    attn = TinyTransformer(cfg).blocks[0].attn
    x = torch.randn(1, 6, cfg.d_model)
    shift = 5
    x_shifted = torch.cat([torch.randn(1, shift, cfg.d_model), x], dim=1)
    s, s_shifted = attn.scores(x), attn.scores(x_shifted)[:, :, shift:, shift:]
    torch.testing.assert_close(s_shifted, s, rtol=1e-4, atol=1e-5)
    # ... and they do depend on the relative offset: the same (query, key) content farther apart
    q_tok, k_tok = torch.randn(cfg.d_model), torch.randn(cfg.d_model)
    near = attn.scores(torch.stack([k_tok, q_tok])[None])[0, :, 1, 0]
    far = attn.scores(
        torch.stack([k_tok, torch.randn(cfg.d_model), torch.randn(cfg.d_model), q_tok])[None]
    )[0, :, 3, 0]
    assert (near - far).abs().max() > 1e-4


def _pre_attention(
    model: TinyTransformer, layer: int, x: torch.Tensor, fold_norm: bool
) -> torch.Tensor:
    """Input the extracted factors act on: ln1(x), or ln1 without its gain when the gain is folded."""
    ln = model.blocks[layer].ln1
    if not fold_norm or model.cfg.norm == "none":
        return ln(x)
    if model.cfg.norm == "layer":
        return F.layer_norm(x, (x.shape[-1],), eps=ln.eps)
    return F.rms_norm(x, (x.shape[-1],), eps=ln.eps)


ADAPTER_CASES = [
    dict(norm="layer", fold_norm=False),
    dict(norm="layer", fold_norm=True),
    dict(norm="rms", fold_norm=True, d_head=5, n_heads=3),
    dict(norm="rms", qk_norm="rms", fold_norm=True),
    dict(norm="rms", qk_norm="rms", fold_norm=False),
    dict(norm="none", pos="rotary", fold_norm=False),
    dict(norm="layer", qk_norm="l2", fold_norm=False),
    dict(norm="layer", qk_norm="l2", qk_temperature=2.5, fold_norm=False),
]


@pytest.mark.parametrize(
    "case", ADAPTER_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
)
def test_adapter_reproduces_scores_and_ov(case: dict) -> None:
    case = dict(case)
    fold = case.pop("fold_norm")
    torch.manual_seed(2)
    model = TinyTransformer(small(**case)).double()
    # non-trivial gains so folding matters
    with torch.no_grad():
        for name, p in model.named_parameters():
            if model.rankdecay_param_roles()[name] == "norm":
                p.copy_(torch.rand_like(p) + 0.5)
    cfg = model.cfg
    layers = model.rankdecay_attention_heads(fold_norm=fold)
    assert [lh.layer for lh in layers] == list(range(cfg.n_layers))
    H, dh, d = cfg.n_heads, cfg.head_dim, cfg.d_model
    params = dict(model.named_parameters())
    for i, lh in enumerate(layers):
        assert lh.W_Q.shape == lh.W_K.shape == lh.W_V.shape == (H, d, dh) and lh.W_O.shape == (
            H,
            dh,
            d,
        )
        assert set(lh.qk_params) | set(lh.ov_params) <= set(params)
        assert lh.rotary == (cfg.pos == "rotary")
        attn = model.blocks[i].attn
        x = torch.randn(2, 5, d, dtype=torch.float64)
        xn = model.blocks[i].ln1(x)
        u = _pre_attention(model, i, x, fold)  # what the factors multiply
        scores = attn.scores(xn)  # (B, H, T, T), the model's own
        bilinear = torch.einsum("btd,hde,hfe,bsf->bhts", u, lh.W_Q, lh.W_K, u)
        if cfg.qk_norm == "none":
            expected = lh.scale * bilinear
        elif cfg.qk_norm == "rms":
            rq = (
                attn.q(xn).square().mean(-1).add(cfg.qk_norm_eps).sqrt()
            )  # per token, over all heads
            rk = attn.k(xn).square().mean(-1).add(cfg.qk_norm_eps).sqrt()
            if not fold:
                g = (attn.q_norm.weight * attn.k_norm.weight).view(H, dh)
                bilinear = torch.einsum("btd,hde,he,hfe,bsf->bhts", u, lh.W_Q, g, lh.W_K, u)
            expected = lh.scale * bilinear / (rq[:, None, :, None] * rk[:, None, None, :])
        else:  # l2 per head
            nq = torch.einsum("btd,hde->bhte", u, lh.W_Q).norm(dim=-1)
            nk = torch.einsum("btd,hde->bhte", u, lh.W_K).norm(dim=-1)
            tau = lh.scale if lh.scale is not None else attn.qk_temperature.view(1, H, 1, 1)
            expected = tau * bilinear / (nq[..., :, None] * nk[..., None, :])
        if lh.rotary:  # the circuit is the one at relative offset 0: compare the diagonal only
            scores, expected = (
                scores.diagonal(dim1=-2, dim2=-1),
                expected.diagonal(dim1=-2, dim2=-1),
            )
        torch.testing.assert_close(scores, expected)
        # OV: attention output = Σ_h A_h · u W_V^h W_O^h with the model's own pattern A
        full = (
            attn.scores(xn)
            .masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
            .softmax(-1)
        )
        ov = torch.einsum("bhts,bsd,hde,hef->btf", full, u, lh.W_V, lh.W_O)
        torch.testing.assert_close(attn(xn), ov)


def test_adapter_views_are_differentiable_and_registered() -> None:
    model = TinyTransformer(small(norm="rms"))
    layers = rd.attention_heads(model, fold_norm=True)
    assert len(layers) == 2
    layers[1].W_K.sum().backward()
    assert (
        model.blocks[1].attn.k.weight.grad is not None
        and model.blocks[1].attn.k.weight.grad.abs().sum() > 0
    )
    assert model.blocks[1].ln1.weight.grad is not None  # folded gain is in the graph
    with pytest.raises(RankdecayError):
        model.rankdecay_attention_heads(nonsense=True)


def _logits_and_qk_grads(
    model: TinyTransformer, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, list]:
    model.zero_grad()
    out = model(x)
    F.cross_entropy(out, y).backward()
    qk = [
        (p.detach().clone(), p.grad.detach().clone())
        for n, p in model.named_parameters()
        if model.rankdecay_param_roles()[n] == "attn_qk"
    ]
    return out.detach(), qk


@pytest.mark.parametrize("qk_norm", ["rms", "l2"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_qk_norm_scale_invariance(qk_norm: str, dtype: torch.dtype) -> None:
    """R4's premise: with QK-norm the logits do not see the scale of W_Q or W_K, so ⟨∇W, W⟩ = 0."""
    torch.manual_seed(3)
    # float64: exact maths (no epsilon in the QK RMS-norm); float32: the default config
    eps = 0.0 if dtype == torch.float64 else ModelConfig.qk_norm_eps
    model = TinyTransformer(
        small(norm="rms", qk_norm=qk_norm, qk_norm_eps=eps, d_model=32, n_heads=4)
    ).to(dtype)
    x, y = tokens(8, 7), torch.randint(0, V, (8,))
    ref, grads = _logits_and_qk_grads(model, x, y)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    for W, G in grads:
        cos = (W * G).sum() / (W.norm() * G.norm())
        assert abs(float(cos)) < (1e-9 if dtype == torch.float64 else 1e-4)
    for which, c in itertools.product(["q", "k"], [0.1, 10.0]):
        scaled = TinyTransformer(model.cfg).to(dtype)
        scaled.load_state_dict(model.state_dict())
        with torch.no_grad():
            for block in scaled.blocks:
                getattr(block.attn, which).weight.mul_(c)
        torch.testing.assert_close(scaled(x).detach(), ref, **tol)


def test_without_qk_norm_scale_matters() -> None:
    """Control for the test above: the same checks fail without QK-norm."""
    model = TinyTransformer(small(norm="rms", d_model=32, n_heads=4)).double()
    x, y = tokens(8, 7), torch.randint(0, V, (8,))
    ref, grads = _logits_and_qk_grads(model, x, y)
    assert max(abs(float((W * G).sum() / (W.norm() * G.norm()))) for W, G in grads) > 1e-3
    with torch.no_grad():
        for block in model.blocks:
            block.attn.q.weight.mul_(10.0)
    assert (model(x) - ref).abs().max() > 1e-3


@pytest.mark.parametrize("kw", COMBOS + [dict(patch_size=4, image_size=8, n_out=10, vocab_size=0)])
def test_param_roles_complete(kw: dict) -> None:
    model = TinyTransformer(small(**kw))
    roles = model.rankdecay_param_roles()
    names = [n for n, _ in model.named_parameters()]
    assert sorted(roles) == sorted(names)
    assert set(roles.values()) <= {
        "attn_qk",
        "attn_ov",
        "mlp",
        "embedding",
        "norm",
        "bias",
        "other",
    }
    for n, r in roles.items():
        leaf = ["", *n.split(".")]
        if n.endswith(".bias"):
            assert r == "bias"
        elif leaf[-2] in ("q", "k"):
            assert r == "attn_qk"
        elif leaf[-2] in ("v", "o"):
            assert r == "attn_ov"
        elif "mlp" in leaf:
            assert r == "mlp"
    qk = {p for lh in model.rankdecay_attention_heads() for p in lh.qk_params}
    assert qk == {n for n, r in roles.items() if r == "attn_qk"}
    assert rd.param_roles(model) == roles  # decay.param_roles takes the model's own roles


def test_patchify_matches_unfold() -> None:
    x = torch.randn(2, 3, 8, 12)
    ref = F.unfold(x, kernel_size=4, stride=4).transpose(1, 2)  # (B, L, C·p·p), (c, i, j) order
    torch.testing.assert_close(patchify(x, 4), ref)
    with pytest.raises(RankdecayError):
        patchify(x, 5)


def test_init_std() -> None:
    model = TinyTransformer(small(d_model=64, n_heads=4, init_std=0.02))
    assert abs(float(model.blocks[0].attn.q.weight.detach().std()) - 0.02) < 0.002
    default = TinyTransformer(small(d_model=64, n_heads=4, init_std=None))
    bound = 1 / math.sqrt(64)  # PyTorch's default Linear init: U(±1/√fan_in)
    assert float(default.blocks[0].attn.q.weight.detach().abs().max()) <= bound
    assert abs(float(default.blocks[0].attn.q.weight.detach().std()) - bound / math.sqrt(3)) < 0.01


def test_vmap_ensemble_matches_members() -> None:
    """The forward works under functional_call + vmap (the ensemble trainer's path)."""
    cfg = small(qk_norm="rms", norm="rms", pos="rotary")
    members = [TinyTransformer(cfg) for _ in range(3)]
    params, buffers = stack_module_state(members)
    base = TinyTransformer(cfg).to("meta")
    x = tokens()

    def f(p: dict, b: dict) -> torch.Tensor:
        return functional_call(base, (p, b), (x,))

    out = vmap(f)(params, buffers)
    for i, m in enumerate(members):
        torch.testing.assert_close(out[i], m(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kw",
    [
        dict(d_model=10, n_heads=3),
        dict(pos="rotary", d_head=5),
        dict(vocab_size=0),
        dict(tie_embeddings=True, n_out=3),
        dict(patch_size=3, image_size=8, n_out=10),
        dict(patch_size=4, image_size=8),
        dict(qk_norm="l2", qk_temperature=-1.0),
        dict(d_mlp=-1),
    ],
)
def test_bad_configs_raise(kw: dict) -> None:
    with pytest.raises(RankdecayError):
        TinyTransformer(small(**kw))


def test_too_long_input_raises() -> None:
    with pytest.raises(RankdecayError, match="max_len"):
        TinyTransformer(small(max_len=4))(tokens(1, 5))


def test_config_nests_and_overrides() -> None:
    @dataclasses.dataclass
    class Outer:
        model: ModelConfig = dataclasses.field(default_factory=ModelConfig)

    cfg = apply_overrides(
        Outer(), ["model.qk_norm=rms", "model.d_head=8", "model.init_std=none", "model.n_out=7"]
    )
    assert (cfg.model.qk_norm, cfg.model.d_head, cfg.model.init_std, cfg.model.n_out) == (
        "rms",
        8,
        None,
        7,
    )
    with pytest.raises(RankdecayError):
        apply_overrides(Outer(), ["model.qk_norm=banana"])


def test_init_per_role_public_and_default_unchanged() -> None:
    """init_embed / init_pos / init_linear override init_std per role; all None = the old init."""
    cfg = small(d_model=64, n_heads=4, init_std=0.02)
    torch.manual_seed(5)
    old = TinyTransformer(cfg)
    torch.manual_seed(5)
    same = TinyTransformer(
        dataclasses.replace(cfg, init_embed=0.02, init_pos=0.02, init_linear=0.02)
    )
    assert all(torch.equal(a, b) for a, b in zip(old.parameters(), same.parameters()))
    # the public LRD code: PyTorch defaults, positions N(0, 0.02²)
    pub = TinyTransformer(dataclasses.replace(cfg, vocab_size=500, init_std=None, init_pos=0.02))
    assert abs(float(pub.embed.weight.std()) - 1.0) < 0.05  # nn.Embedding: N(0, 1)
    assert abs(float(pub.pos_embed.weight.std()) - 0.02) < 0.01
    bound = 1 / math.sqrt(64)  # Linear: U(±1/√fan_in)
    for w in (pub.blocks[0].attn.q.weight, pub.blocks[1].mlp.fc_in.weight, pub.unembed.weight):
        assert float(w.abs().max()) <= bound and float(w.std()) > 0.8 * bound / math.sqrt(3)
    mixed = TinyTransformer(dataclasses.replace(cfg, init_embed="torch", init_linear=0.5))
    assert abs(float(mixed.blocks[0].attn.k.weight.std()) - 0.5) < 0.05
    assert float(mixed.embed.weight.std()) > 0.5 and float(mixed.pos_embed.weight.std()) < 0.05
    with pytest.raises(RankdecayError, match="init_pos"):
        TinyTransformer(dataclasses.replace(cfg, init_pos=-1.0))
    over = apply_overrides(cfg, {"init_pos": "torch", "init_linear": "0.1", "init_embed": "none"})
    assert (over.init_pos, over.init_linear, over.init_embed) == ("torch", 0.1, None)


MEMBER_GRID = [
    *COMBOS,
    dict(norm="layer", bias=True, qk_norm="l2", pos="rotary", mlp="swiglu", readout="all"),
    dict(norm="rms", qk_norm="rms", pos="learned", mlp="gelu", causal=False),
    dict(patch_size=4, image_size=8, n_out=10, vocab_size=0, pool="cls", bias=True),
    dict(patch_size=4, image_size=8, n_out=10, vocab_size=0, pool="mean", qk_norm="l2"),
    dict(
        patch_size=4, image_size=8, n_out=10, vocab_size=0, pool="cls", readout="all", pos="rotary"
    ),
]


@pytest.mark.parametrize(
    "kw", MEMBER_GRID, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default"
)
def test_functional_forward_with_members_equals_each_members_module(kw: dict) -> None:
    """functional_forward(members=True) on stacked weights == every member's own forward (float64),
    with and without the last-position trick, and its gradients == the members' gradients."""
    from rankdecay.models import functional_forward

    cfg = small(**kw)
    M = 3
    models = []
    for i in range(M):
        torch.manual_seed(10 + i)
        m = TinyTransformer(cfg).double()
        with torch.no_grad():  # non-trivial gains, biases and temperatures
            for p in m.parameters():
                if p.dim() == 1:
                    p.add_(0.3 * torch.randn_like(p))
        models.append(m)
    g = torch.Generator().manual_seed(0)
    if cfg.images:
        x = torch.randn(M, 2, cfg.in_channels, 8, 8, generator=g, dtype=torch.float64)
    else:
        x = torch.randint(0, V, (M, 2, 7), generator=g)
    P = {
        n: torch.stack([m.get_parameter(n).detach() for m in models]).requires_grad_(True)
        for n, _ in models[0].named_parameters()
    }
    refs = [m(x[i]) for i, m in enumerate(models)]
    for trick in (False, True):
        out = functional_forward(cfg, P, x, models[0].rope(), members=True, last_trick=trick)
        for i, ref in enumerate(refs):
            torch.testing.assert_close(out[i], ref, rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad(out.square().sum(), list(P.values()))
    for i, m in enumerate(models):
        ref_grads = torch.autograd.grad(refs[i].square().sum(), list(m.parameters()))
        for gs, gr in zip(grads, ref_grads):
            torch.testing.assert_close(gs[i], gr, rtol=1e-9, atol=1e-10)
    # negative control: member 1's weights given to member 0 change member 0's output
    swapped = {n: p.detach()[[1, 1, 2]] for n, p in P.items()}
    assert (functional_forward(cfg, swapped, x, members=True)[0] - refs[0]).abs().max() > 1e-6


def test_functional_forward_with_members_compiles_without_graph_breaks() -> None:
    """No data-dependent control flow: torch.compile(fullgraph=True) traces the members mode
    (the module's own forward is compiled in tests/test_device.py)."""
    from rankdecay.models import functional_forward

    cfg = small(n_layers=1, norm="rms", qk_norm="l2", pos="rotary", mlp="swiglu")
    model = TinyTransformer(cfg)
    P = {n: torch.stack([p.detach(), 2 * p.detach()]) for n, p in model.named_parameters()}
    x = tokens()

    def f(x: torch.Tensor) -> torch.Tensor:
        return functional_forward(cfg, P, x, members=True, last_trick=True)

    torch._dynamo.reset()
    out = torch.compile(f, backend="eager", fullgraph=True)(torch.stack([x, x]))
    torch.testing.assert_close(out[0], model(x), rtol=1e-5, atol=1e-6)


def test_bad_input_errors_are_value_errors() -> None:
    model = TinyTransformer(small())
    with pytest.raises(ValueError, match="max_len"):
        model(tokens(1, 13))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="fold_norm"):
        model.rankdecay_attention_heads(nonsense=True)


@pytest.mark.parametrize(
    "kw", MEMBER_GRID, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default"
)
def test_forward_hooks_on_blocks_attention_and_mlp_fire(kw: dict) -> None:
    """model(x) goes through its Block, Attention and MLP modules, so forward hooks on them fire
    (as in PyTorch/TransformerLens-style analysis) and see what the block computes:
    attn sees ln1(block input), mlp sees ln2(block input + attn output), the block returns
    their residual sum. The output is bitwise that of functional_forward on the same weights,
    and a hook that zero-ablates an attention output changes the logits."""
    from rankdecay.models import functional_forward

    cfg = small(**kw)
    torch.manual_seed(0)
    model = TinyTransformer(cfg)
    x = torch.randn(2, cfg.in_channels, 8, 8) if cfg.images else tokens(2, 7)
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_m: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
            seen[name + ".in"], seen[name + ".out"] = args[0], out

        return hook

    handles = []
    for i, block in enumerate(model.blocks):
        handles.append(block.register_forward_hook(keep(f"block{i}")))
        handles.append(block.attn.register_forward_hook(keep(f"attn{i}")))
        if cfg.d_mlp > 0:
            handles.append(block.mlp.register_forward_hook(keep(f"mlp{i}")))
    out = model(x)
    expected = functional_forward(cfg, dict(model.named_parameters()), x, model.rope())
    assert torch.equal(out, expected)
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            h, a = seen[f"block{i}.in"], seen[f"attn{i}.out"]
            assert torch.equal(seen[f"attn{i}.in"], block.ln1(h))
            assert torch.equal(a, block.attn(block.ln1(h)))
            if cfg.d_mlp > 0:
                assert torch.equal(seen[f"mlp{i}.in"], block.ln2(h + a))
                assert torch.equal(seen[f"block{i}.out"], h + a + seen[f"mlp{i}.out"])
            else:
                assert torch.equal(seen[f"block{i}.out"], h + a)
    for handle in handles:
        handle.remove()
    handle = model.blocks[0].attn.register_forward_hook(lambda _m, _a, o: torch.zeros_like(o))
    ablated = model(x)
    handle.remove()
    assert (ablated - out).abs().max() > 1e-4 * out.abs().max()  # far above rounding
    assert torch.equal(model(x), out)  # hooks removed: the plain forward again


@pytest.mark.parametrize(
    "kw", MEMBER_GRID, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default"
)
def test_forward_hooks_on_every_leaf_module_fire(kw: dict) -> None:
    """Every submodule the forward uses is *called*, so its forward hook fires: the q/k/v/o and
    MLP Linears, QK-norms, block and final norms, the token/patch embedding and the readout —
    only the ModuleList and the learned positions (read as a table) are not modules the forward
    calls. A hook that zeroes the v projection's output changes the logits (hooks act), and the
    plain forward stays bitwise functional_forward."""
    from rankdecay.models import functional_forward

    cfg = small(**kw)
    torch.manual_seed(0)
    model = TinyTransformer(cfg)
    x = torch.randn(2, cfg.in_channels, 8, 8) if cfg.images else tokens(2, 7)
    fired: set[str] = set()
    handles = [
        mod.register_forward_hook(lambda _m, _a, _o, n=name: fired.add(n))
        for name, mod in model.named_modules()
    ]
    out = model(x)
    for handle in handles:
        handle.remove()
    silent = {n for n, _ in model.named_modules()} - fired
    assert silent <= {"blocks", "pos_embed"}, sorted(silent)
    assert "blocks.0.attn.q" in fired and "blocks.0.attn.o" in fired
    assert torch.equal(
        out, functional_forward(cfg, dict(model.named_parameters()), x, model.rope())
    )
    handle = model.blocks[0].attn.v.register_forward_hook(lambda _m, _a, o: torch.zeros_like(o))
    ablated = model(x)
    handle.remove()
    assert (ablated - out).abs().max() > 1e-4 * out.abs().max()
