"""MLA (DeepSeek-V3): the chain factors reproduce the model's own attention (non-rotary part)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

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
