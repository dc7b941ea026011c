"""MLA (DeepSeek-V3): the chain factors reproduce the model's own attention (non-rotary part)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from roles_check import assert_params_are_the_factors  # noqa: E402

from rankdecay.analyze import analyze  # noqa: E402
from rankdecay.heads import attention_heads  # noqa: E402
from rankdecay.mla import is_mla_attention, mla_layer_heads  # noqa: E402
from rankdecay.spectra import factored_svdvals_chain  # noqa: E402

H, D, Q_LORA, KV_LORA, NOPE, ROPE, V = 4, 32, 12, 10, 6, 4, 5


def _model(q_lora: int | None = Q_LORA, layers: int = 2) -> nn.Module:
    cfg = transformers.DeepseekV3Config(
        vocab_size=50, hidden_size=D, intermediate_size=16, moe_intermediate_size=8,
        num_hidden_layers=layers, num_attention_heads=H, num_key_value_heads=H,
        n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
        first_k_dense_replace=1, q_lora_rank=q_lora, kv_lora_rank=KV_LORA,
        qk_nope_head_dim=NOPE, qk_rope_head_dim=ROPE, v_head_dim=V,
    )  # fmt: skip
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.DeepseekV3Model(cfg).eval()
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__.endswith("RMSNorm"):  # gains that matter when (not) folded
                m.weight.uniform_(0.5, 1.5)
            elif isinstance(m, nn.Linear):  # O(1) scores, so probabilities are far from uniform
                m.weight.normal_(0.0, 1.5 / m.in_features**0.5)
    return model


class _GainOnly(nn.Module):
    """x ↦ γ ⊙ x: an RMSNorm without the 1/rms (a per-token scalar), gain kept as ``weight``."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def _prepare(attn: nn.Module, norms: str) -> None:
    """Zero the rotary rows (so q_rope·k_rope = 0) and make the latent norms linear."""
    with torch.no_grad():
        q_out = attn.q_b_proj if attn.q_proj is None else attn.q_proj
        q_out.weight.view(H, NOPE + ROPE, -1)[:, NOPE:] = 0
        attn.kv_a_proj_with_mqa.weight[KV_LORA:] = 0
    for attr in ("q_a_layernorm", "kv_a_layernorm"):
        norm = getattr(attn, attr, None)
        if norm is not None:
            setattr(attn, attr, _GainOnly(norm.weight) if norms == "gain" else nn.Identity())


def _own_forward(model: nn.Module, attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    pos = torch.zeros(1, x.shape[1], dtype=torch.long)
    cos, sin = model.rotary_emb(x, pos)
    with torch.no_grad():
        out, probs = attn(x, position_embeddings=(cos, sin), attention_mask=None)
    return out.double(), probs.double()


def _prod(factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    out = factors[0].double()
    for f in factors[1:]:
        out = out @ f.double()
    return out


def _from_chains(lh, x: torch.Tensor, roll: int = 0) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    (a_qk, b_qk), (a_ov, b_ov) = lh.chains["qk"], lh.chains["ov"]
    W_QK = torch.roll(_prod(a_qk), roll, 0) @ _prod(b_qk).mT  # (H, d, d)
    W_OV = _prod(a_ov) @ _prod(b_ov).mT
    X = x[0].double()
    probs = torch.softmax(lh.scale * X @ W_QK @ X.T, dim=-1)  # (H, T, T)
    out = (probs @ X @ W_OV).sum(0)
    return out[None], probs[None]


@pytest.mark.parametrize("q_lora", [Q_LORA, None])
@pytest.mark.parametrize("norms", ["identity", "gain"])
def test_chains_reproduce_the_models_own_attention(q_lora: int | None, norms: str) -> None:
    model = _model(q_lora, layers=1)
    attn = model.layers[0].self_attn
    assert is_mla_attention(attn)
    _prepare(attn, norms)
    # raw weights with the norms removed, or gains folded when the norms are gain-only
    lh = mla_layer_heads("layers.0.self_attn", attn, model.config, 0, fold_norm=norms == "gain")
    x = torch.randn(1, 7, D)
    out, probs = _own_forward(model, attn, x)
    my_out, my_probs = _from_chains(lh, x)
    torch.testing.assert_close(my_probs, probs, rtol=0, atol=2e-5)
    torch.testing.assert_close(my_out, out, rtol=1e-4, atol=1e-5)
    # the effective factors agree with the chains
    torch.testing.assert_close(lh.W_Q.double(), _prod(lh.chains["qk"][0]), rtol=1e-5, atol=1e-6)
    # negative control: heads rolled on the query side
    _, wrong = _from_chains(lh, x, roll=1)
    assert (wrong - probs).abs().max() > 1e-3


def test_raw_weights_by_default_differ_from_folded_gains() -> None:
    model = _model(layers=1)
    attn = model.layers[0].self_attn
    _prepare(attn, "gain")
    x = torch.randn(1, 5, D)
    _, probs = _own_forward(model, attn, x)
    raw = mla_layer_heads("a", attn, model.config, 0)
    assert any("not folded" in n for n in raw.notes)
    _, raw_probs = _from_chains(raw, x)
    assert (raw_probs - probs).abs().max() > 1e-3  # the gains matter, and raw ignores them


def test_rotary_part_flagged_and_scale_from_module() -> None:
    model = _model(layers=1)
    attn = model.layers[0].self_attn
    lh = mla_layer_heads("layers.0.self_attn", attn, model.config, 0)
    assert lh.rotary and lh.flags["rotary_part"]["dims_per_head"] == ROPE
    assert lh.flags["rotary_part"]["in_circuit"] is False
    assert lh.scale == pytest.approx(attn.scaling)
    assert lh.W_Q.shape == (H, D, NOPE) and lh.W_V.shape == (H, D, V) and lh.W_O.shape == (H, V, D)
    assert lh.chains["qk"][0][0].dim() == 2  # the shared down-projection, decomposed once
    assert not is_mla_attention(nn.Linear(3, 3))
    # its family is the registry's MLA row (it was empty)
    from rankdecay.attention_spec import ARCHITECTURES

    assert lh.family in {a.family for a in ARCHITECTURES} and "MLA" in lh.family
    assert {x.family for x in attention_heads(model)} == {lh.family}


def test_analyze_uses_the_chain_svd_and_matches_dense() -> None:
    model = _model(layers=2)
    report = analyze(model)
    assert {r["layer"] for r in report.records} == {0, 1}
    assert len(report.records) == 2 * H * 2
    for li in range(2):
        attn = model.layers[li].self_attn
        lh = mla_layer_heads(f"layers.{li}.self_attn", attn, model.config, li)
        for c, k in (("qk", NOPE), ("ov", V)):
            a, b = lh.chains[c]
            dense = torch.linalg.svdvals(_prod(a) @ _prod(b).mT)[:, :k]
            chain = factored_svdvals_chain(a, b)
            assert ((chain - dense).abs().amax(-1) <= 1e-12 * dense[:, 0]).all()
            recs = sorted(
                (r for r in report.records if r["layer"] == li and r["circuit"] == c),
                key=lambda r: r["head"],
            )
            s = torch.tensor([r["singular_values"] for r in recs], dtype=torch.float64)
            assert ((s - dense).abs().amax(-1) <= 1e-12 * dense[:, 0]).all()


def test_analyze_fold_norm_folds_pre_norm_and_latent_gains() -> None:
    """analyze(fold_norm=True): σ of diag(γ_in)·W_qaᵀ·diag(γ_q)·W_qb^hᵀ · (diag(γ_in)·W_kvaᵀ·
    diag(γ_kv)·W_kvb^hᵀ)ᵀ, written here from the raw module weights."""
    model = _model(layers=1)
    attn = model.layers[0].self_attn
    g_in = model.layers[0].input_layernorm.weight.detach().double()
    g_q = attn.q_a_layernorm.weight.detach().double()
    g_kv = attn.kv_a_layernorm.weight.detach().double()
    W = {n: getattr(attn, n).weight.detach().double() for n in ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")}  # fmt: skip
    q_up = W["q_b_proj"].view(H, NOPE + ROPE, Q_LORA)[:, :NOPE]  # (H, n, q_lora)
    kv_up = W["kv_b_proj"].view(H, NOPE + V, KV_LORA)
    Q = (g_in[:, None] * W["q_a_proj"].T * g_q) @ q_up.mT  # (H, d, n)
    K = (g_in[:, None] * W["kv_a_proj_with_mqa"][:KV_LORA].T * g_kv) @ kv_up[:, :NOPE].mT
    Vh = (g_in[:, None] * W["kv_a_proj_with_mqa"][:KV_LORA].T * g_kv) @ kv_up[:, NOPE:].mT
    O = W["o_proj"].view(D, H, V).permute(1, 0, 2)  # (H, d, v) = W_O^hᵀ
    report = analyze(model, fold_norm=True)
    for c, (A, B), k in (("qk", (Q, K), NOPE), ("ov", (Vh, O), V)):
        dense = torch.linalg.svdvals(A @ B.mT)[:, :k]
        recs = sorted((r for r in report.records if r["circuit"] == c), key=lambda r: r["head"])
        s = torch.tensor([r["singular_values"] for r in recs], dtype=torch.float64)
        # the fold happens in the weights' float32 before the float64 cast: float32 tolerance
        assert ((s - dense).abs().amax(-1) <= 1e-6 * dense[:, 0]).all()
    raw = analyze(model)
    s_raw = torch.tensor([r["singular_values"] for r in raw.records if r["circuit"] == "qk"])
    s_fold = torch.tensor([r["singular_values"] for r in report.records if r["circuit"] == "qk"])
    assert (s_raw - s_fold).abs().max() > 1e-3 * s_fold.max()  # the gains matter


# ---------------------------------------------------------------------------------------------
# DeepSeek-V4: low-rank queries, one shared key/value head, grouped low-rank output projection
# ---------------------------------------------------------------------------------------------

V4_H, V4_D, V4_HEAD, V4_QLORA, V4_GROUPS, V4_OLORA, V4_ROPE = 4, 32, 16, 12, 2, 6, 4
V4_TYPES = ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"]


def _v4_model(rates: tuple[int, int] = (8, 16), **extra: object) -> nn.Module:
    cfg = transformers.DeepseekV4Config(
        vocab_size=50, hidden_size=V4_D, moe_intermediate_size=8, num_hidden_layers=3,
        num_attention_heads=V4_H, num_key_value_heads=1, head_dim=V4_HEAD,
        q_lora_rank=V4_QLORA, partial_rotary_factor=V4_ROPE / V4_HEAD, n_routed_experts=4,
        num_experts_per_tok=2, n_shared_experts=1, o_groups=V4_GROUPS, o_lora_rank=V4_OLORA,
        index_n_heads=2, index_head_dim=8, index_topk=4, sliding_window=8, hc_mult=2,
        layer_types=V4_TYPES, num_hash_layers=0,
        compress_rates={"compressed_sparse_attention": rates[0], "heavily_compressed_attention": rates[1]},
        **extra,
    )  # fmt: skip
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.DeepseekV4Model(cfg).eval()
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ == "DeepseekV4RMSNorm":
                m.weight.uniform_(0.5, 1.5)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 1.5 / m.in_features**0.5)
            if isinstance(getattr(m, "sinks", None), nn.Parameter):
                m.sinks.uniform_(-1.0, 1.0)
    return model


def _v4_prepare(attn: nn.Module, norms: str) -> None:
    """q_b_norm (no gain: a per-token, per-head 1/rms) off; q_a_norm, kv_norm gain-only or off."""
    attn.q_b_norm = nn.Identity()
    for attr in ("q_a_norm", "kv_norm"):
        norm = getattr(attn, attr)
        setattr(attn, attr, _GainOnly(norm.weight) if norms == "gain" else nn.Identity())


def _v4_own_forward(model: nn.Module, attn: nn.Module, x: torch.Tensor, pos: torch.Tensor):  # type: ignore[no-untyped-def]
    emb = {k: model.rotary_emb(x, pos, layer_type=k) for k in ("main", "compress")}
    with torch.no_grad():
        out, probs = attn(x, position_embeddings=emb, position_ids=pos, attention_mask=None)
    return out.double(), probs.double()


def _v4_from_factors(lh, attn: nn.Module, x: torch.Tensor, roll_q: int = 0, roll_o: int = 0):  # type: ignore[no-untyped-def]
    """Per-head probabilities (sink logit in the softmax, then dropped) and the output, from the
    QK chain and the OV factors (W_V, W_O) alone."""
    a_qk, b_qk = lh.chains["qk"]
    W_QK = torch.roll(_prod(a_qk), roll_q, 0) @ _prod(b_qk).mT  # (H, d, d)
    W_OV = lh.W_V.double() @ torch.roll(lh.W_O.double(), roll_o, 0)  # (H, d, d)
    X = x[0].double()
    scores = lh.scale * X @ W_QK @ X.T  # (H, T, T)
    sinks = attn.sinks.detach().double()[:, None, None].expand(-1, X.shape[0], 1)
    probs = torch.softmax(torch.cat([scores, sinks], -1), dim=-1)[..., :-1]
    out = (probs @ X @ W_OV).sum(0)
    return out[None], probs[None]


@pytest.mark.parametrize("norms", ["identity", "gain"])
def test_v4_factors_reproduce_the_models_own_attention(norms: str) -> None:
    """Every layer type (sliding, CSA, HCA) at positions 0, the sequence shorter than the
    compression rates (so the compressors add no entry): probabilities and output through
    o_a_proj/o_b_proj from our factors; rolled heads (query side, out-projection) fail."""
    from rankdecay.mla import DSV4_FAMILY, dsv4_layer_heads, is_dsv4_attention

    model = _v4_model()
    x = torch.randn(1, 7, V4_D)
    pos = torch.zeros(1, 7, dtype=torch.long)
    for li, kind in enumerate(V4_TYPES):
        attn = model.layers[li].self_attn
        assert is_dsv4_attention(attn) and not is_mla_attention(attn)
        _v4_prepare(attn, norms)
        lh = dsv4_layer_heads(
            f"layers.{li}.self_attn", attn, model.config, li, fold_norm=norms == "gain"
        )
        assert lh.family == DSV4_FAMILY and lh.n_heads == V4_H and lh.n_kv_heads == 1
        out, probs = _v4_own_forward(model, attn, x, pos)
        my_out, my_probs = _v4_from_factors(lh, attn, x)
        torch.testing.assert_close(my_probs, probs, rtol=0, atol=2e-5)
        torch.testing.assert_close(my_out, out, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(lh.W_Q.double(), _prod(lh.chains["qk"][0]), rtol=1e-5, atol=1e-6)
        # negative controls: heads rolled on the query side, or on the output side
        _, wrong = _v4_from_factors(lh, attn, x, roll_q=1)
        assert (wrong - probs).abs().max() > 1e-3
        wrong_out, _ = _v4_from_factors(lh, attn, x, roll_o=1)
        assert (wrong_out - out).abs().max() > 1e-3
        assert ("attention_form" in lh.flags) == (kind != "sliding_attention"), kind


def test_v4_flags_notes_and_raw_weights() -> None:
    from rankdecay.mla import dsv4_layer_heads

    model = _v4_model()
    attn = model.layers[1].self_attn
    lh = dsv4_layer_heads("layers.1.self_attn", attn, model.config, 1)
    assert lh.scale == pytest.approx(attn.scaling) and lh.scale == pytest.approx(V4_HEAD**-0.5)
    assert lh.flags["partial_rotary"] == V4_ROPE / V4_HEAD
    assert lh.flags["rotary_part"]["dims_per_head"] == V4_ROPE == model.config.qk_rope_head_dim
    assert lh.flags["qk_norm"] == "per_head" and lh.flags["attention_sinks"] is True
    assert lh.flags["sliding_window"] == 8
    assert lh.flags["output_groups"] == {"groups": V4_GROUPS, "rank": V4_OLORA}
    assert "compressed sparse" in str(lh.flags["attention_form"])
    assert any("not folded" in n for n in lh.notes) and any("sinks" in n for n in lh.notes)
    assert lh.W_Q.shape == (V4_H, V4_D, V4_HEAD) and lh.W_O.shape == (V4_H, V4_HEAD, V4_D)
    assert lh.kv_head_index == (0,) * V4_H and lh.chains["qk"][1][0].dim() == 2
    # raw weights ignore the gains, which matter
    _v4_prepare(attn, "gain")
    raw = dsv4_layer_heads("a", attn, model.config, 1)
    x = torch.randn(1, 5, V4_D)
    _, probs = _v4_own_forward(model, attn, x, torch.zeros(1, 5, dtype=torch.long))
    _, raw_probs = _v4_from_factors(raw, attn, x)
    assert (raw_probs - probs).abs().max() > 1e-3


def test_v4_yarn_attention_factor_of_the_compress_rotary_is_flagged() -> None:
    """cos, sin × m on the CSA/HCA layers (YaRN "compress" rotary with attention_factor m)."""
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    model = _v4_model(
        rope_parameters={**yarn, "attention_factor": 1.3}, max_position_embeddings=256
    )
    x = torch.zeros(1, 1, V4_D)
    cos, _ = model.rotary_emb(x, torch.zeros(1, 1, dtype=torch.long), layer_type="compress")
    assert torch.allclose(cos, torch.full_like(cos, 1.3))  # the model scales the rotary dims
    found = [lh.flags.get("rope_attention_factor") for lh in attention_heads(model)]
    assert found == [None, 1.3, 1.3]  # sliding layers: plain "main" rotary


def test_v4_rotary_acts_on_the_trailing_dims_only() -> None:
    """With the trailing rope_head_dim rows of each query head and of kv_proj zeroed, the model's
    attention no longer depends on the positions and equals our factors' at any position: the
    rotary dims are those flagged (the rest of the circuit is position-free)."""
    from rankdecay.mla import dsv4_layer_heads

    model = _v4_model()
    x = torch.randn(1, 7, V4_D)
    pos = torch.arange(3, 10)[None]
    for li in (0, 2):  # "main" and "compress" rotary
        attn = model.layers[li].self_attn
        _v4_prepare(attn, "identity")
        _, moved = _v4_own_forward(model, attn, x, pos)  # control: positions matter before
        assert (
            _v4_from_factors(dsv4_layer_heads("a", attn, model.config, li), attn, x)[1] - moved
        ).abs().max() > 1e-3
        with torch.no_grad():
            attn.q_b_proj.weight.view(V4_H, V4_HEAD, -1)[:, -V4_ROPE:] = 0
            attn.kv_proj.weight[-V4_ROPE:] = 0
        lh = dsv4_layer_heads("a", attn, model.config, li)
        out, probs = _v4_own_forward(model, attn, x, pos)
        my_out, my_probs = _v4_from_factors(lh, attn, x)
        torch.testing.assert_close(my_probs, probs, rtol=0, atol=2e-5)
        torch.testing.assert_close(my_out, out, rtol=1e-4, atol=1e-5)


def test_v4_analyze_roles_and_no_warning(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """analyze: QK and OV records for every layer's heads, equal to the dense σ; no
    UnrecognizedAttentionWarning; roles and parameter names are those the factors depend on."""
    import warnings

    from rankdecay.decay import param_roles
    from rankdecay.layer_heads import UnrecognizedAttentionWarning
    from rankdecay.spectral_report import SpectralReport

    model = _v4_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnrecognizedAttentionWarning)
        layers = attention_heads(model, strict=True)
        roles = param_roles(model, strict=True)
        report = analyze(model)
    assert [lh.name for lh in layers] == [f"layers.{i}.self_attn" for i in range(3)]
    assert len(report.records) == 3 * V4_H * 2
    flags = report.model["flags"]
    assert all(flags[f"layers.{i}.self_attn"]["attention_sinks"] for i in range(3))
    assert [("attention_form" in flags[f"layers.{i}.self_attn"]) for i in range(3)] == [
        False,
        True,
        True,
    ]
    report.summary()
    assert SpectralReport.from_json(report.to_json(tmp_path / "r.json")).model["flags"] == flags
    for lh in layers:
        for c in ("qk", "ov"):
            if c in lh.chains:
                a, b = lh.chains[c]
                M = _prod(a) @ _prod(b).mT
            else:
                M = lh.W_V.double() @ lh.W_O.double()
            recs = sorted(
                (r for r in report.records if r["layer"] == lh.layer and r["circuit"] == c),
                key=lambda r: r["head"],
            )
            s = torch.tensor([r["singular_values"] for r in recs], dtype=torch.float64)
            # qk: the chain's reduced rank (q_lora < head_dim); ov: head_dim values
            assert s.shape == (V4_H, V4_QLORA if c == "qk" else V4_HEAD), (c, s.shape)
            dense = torch.linalg.svdvals(M)[:, : s.shape[1]]
            assert ((s - dense).abs().amax(-1) <= 1e-12 * dense[:, 0]).all(), (lh.layer, c)
    assert_params_are_the_factors(model, roles)
    # W_O^h = (o_a_proj block of head h)ᵀ (o_b_proj columns of its group)ᵀ, by hand
    attn = model.layers[0].self_attn
    per = V4_H // V4_GROUPS
    W_a = attn.o_a_proj.weight.detach().double().view(V4_GROUPS, V4_OLORA, per, V4_HEAD)
    W_b = attn.o_b_proj.weight.detach().double().view(V4_D, V4_GROUPS, V4_OLORA)
    for h in range(V4_H):
        g, loc = divmod(h, per)
        W_O = W_a[g, :, loc].T @ W_b[:, g].T  # (D_head, d)
        torch.testing.assert_close(layers[0].W_O[h].double(), W_O, rtol=1e-6, atol=1e-7)
    # fold_norm: σ of diag(γ_in)·W_qaᵀ·diag(γ_q)·W_qb^hᵀ · (diag(γ_in)·W_kvᵀ·diag(γ_kv))ᵀ and of
    # diag(γ_in)·W_kvᵀ·diag(γ_kv) · W_O^h, written here from the raw module weights
    folded = analyze(model, fold_norm=True)
    g_in = model.layers[0].input_layernorm.weight.detach().double()
    g_q = attn.q_a_norm.weight.detach().double()
    g_kv = attn.kv_norm.weight.detach().double()
    W_qa = attn.q_a_proj.weight.detach().double()
    W_qb = attn.q_b_proj.weight.detach().double().view(V4_H, V4_HEAD, V4_QLORA)
    K = g_in[:, None] * attn.kv_proj.weight.detach().double().T * g_kv  # (d, D_head)
    Q = (g_in[:, None] * W_qa.T * g_q) @ W_qb.mT  # (H, d, D_head)
    O = layers[0].W_O.double()
    for c, M in (("qk", Q @ K.T), ("ov", K @ O)):
        recs = sorted(
            (r for r in folded.records if r["layer"] == 0 and r["circuit"] == c),
            key=lambda r: r["head"],
        )
        s = torch.tensor([r["singular_values"] for r in recs], dtype=torch.float64)
        dense = torch.linalg.svdvals(M)[:, : s.shape[1]]
        # the fold happens in the weights' float32 before the float64 cast: float32 tolerance
        assert ((s - dense).abs().amax(-1) <= 1e-6 * dense[:, 0]).all(), c
    s_raw = torch.tensor([r["singular_values"] for r in report.records if r["circuit"] == "qk"])
    s_fold = torch.tensor([r["singular_values"] for r in folded.records if r["circuit"] == "qk"])
    assert (s_raw - s_fold).abs().max() > 1e-3 * s_fold.max()  # the gains matter


def test_v4_saved_directory_loads_through_transformers_renamings(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """save_pretrained writes DeepSeek-V4 under its original key names (layers.N.attn.wq_a, …);
    analyze(DIR) applies transformers' checkpoint renamings and equals analyze(model). Without
    the renamings (negative control) the attention tensors are missing and the load is refused."""
    import importlib
    import warnings

    from rankdecay.errors import RankdecayError

    analyze_mod = importlib.import_module("rankdecay.analyze")  # the module, not the function

    model = _v4_model()
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the streaming fallback's warning (no V4 stream plan)
        on_disk = analyze(str(tmp_path)).records
        want = analyze(model).records
        assert len(on_disk) == len(want) == 3 * 2 * V4_H
        for a, b in zip(on_disk, want):
            assert (a["layer"], a["head"], a["circuit"]) == (b["layer"], b["head"], b["circuit"])
            s, t = torch.tensor(a["singular_values"]), torch.tensor(b["singular_values"])
            assert (s - t).abs().max() <= 1e-12 * t[0]
        monkeypatch.setattr(analyze_mod, "_hf_renamed", lambda model, state: state)
        with pytest.raises(RankdecayError, match="lack"):
            analyze(str(tmp_path))
