"""factored_spectrum: σ, balance and norm gap from the QR factors equal their dense definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rankdecay.spectra import NonFiniteInputError, _check_factors, factored_spectrum


def _dense(A: torch.Tensor, B: torch.Tensor) -> tuple[np.ndarray, float, float]:
    a, b = A.double().numpy(), B.double().numpy()
    s = np.linalg.svd(a @ b.T, compute_uv=False)
    bal = np.linalg.norm(a.T @ a - b.T @ b)
    gap = 0.5 * ((a**2).sum() + (b**2).sum()) - s.sum()
    return s, float(bal), float(gap)


@pytest.mark.parametrize(
    "d1, d2, r, rank_a", [(30, 20, 8, 8), (6, 9, 12, 6), (25, 25, 10, 3), (5, 40, 5, 5)]
)
def test_matches_dense_definitions(d1: int, d2: int, r: int, rank_a: int) -> None:
    g = torch.Generator().manual_seed(d1 * 100 + r)
    A = torch.randn(3, d1, rank_a, generator=g) @ torch.randn(rank_a, r, generator=g)
    B = torch.randn(3, d2, r, generator=g)
    out = factored_spectrum(A, B)
    for i in range(3):
        s, bal, gap = _dense(A[i], B[i])
        k = out.singular_values.shape[-1]
        assert k == min(d1, d2, r)
        np.testing.assert_allclose(out.singular_values[i].numpy(), s[:k], rtol=0, atol=1e-10 * s[0])
        assert float(out.balance[i]) == pytest.approx(bal, rel=1e-10)
        assert float(out.norm_gap[i]) == pytest.approx(gap, rel=1e-8, abs=1e-9 * s.sum())


def test_balanced_factors_have_zero_gap_and_balance() -> None:
    # A = U√Σ, B = V√Σ is the balanced factorization of U Σ Vᵀ
    U, _ = torch.linalg.qr(torch.randn(12, 4, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(9, 4, dtype=torch.float64))
    root = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64).sqrt())
    out = factored_spectrum(U @ root, V @ root)
    assert float(out.balance) < 1e-12 and abs(float(out.norm_gap)) < 1e-12


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_factor_is_a_clear_error(bad: float) -> None:
    A = torch.randn(10, 4)
    A[3, 2] = bad
    with pytest.raises(NonFiniteInputError, match="NaN or Inf"):
        factored_spectrum(A, torch.randn(8, 4))


def test_huge_finite_values_are_not_mistaken_for_inf() -> None:
    # the cheap guard sums the factor; a sum that overflows must fall back to the exact check
    A = torch.full((200, 2), 1e307, dtype=torch.float64)
    assert not torch.isfinite(A.sum())
    checked, _ = _check_factors(A, torch.ones(3, 2, dtype=torch.float64), None)
    assert checked is A


def _assert_records_match_dense(report, model: torch.nn.Module, k: int) -> None:  # type: ignore[no-untyped-def]
    """Every record's σ equals a dense float64 SVD of its head's own product, to 1e-12·σ₁."""
    from rankdecay.heads import attention_heads

    with torch.no_grad():
        layers = attention_heads(model)
    for rec in report.records:
        A, B = layers[rec["layer"]].factors(rec["circuit"])
        h = rec["head"]
        dense = torch.linalg.svdvals(A[h].double() @ B[h].double().mT)[:k]
        s = torch.tensor(rec["singular_values"], dtype=torch.float64)
        assert (s - dense).abs().max() <= 1e-12 * dense[0]


def _gqa_llama():  # type: ignore[no-untyped-def]
    """(rankdecay.analyze, rankdecay.spectral_report, a 2-layer LlamaModel with 8 query heads
    sharing 2 key/value heads of size 8, d_model 64, seeded random init)."""
    import importlib
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        hidden_size=64,
        num_attention_heads=8,
        num_key_value_heads=2,
        num_hidden_layers=2,
        intermediate_size=32,
        vocab_size=50,
        head_dim=8,
    )
    torch.manual_seed(0)
    model = transformers.LlamaModel(cfg).eval()
    modules = (importlib.import_module(f"rankdecay.{m}") for m in ("analyze", "spectral_report"))
    return (*modules, model)


def test_analyze_decomposes_each_shared_kv_head_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """GQA: 8 query heads share 2 key/value heads; the QR runs on 2 K (and 2 V) factors per
    layer, not 8, and every head's σ still equals a dense float64 SVD of its own W_Q W_Kᵀ."""
    analyze_mod, report_mod, model = _gqa_llama()
    rows: list[int] = []
    real = report_mod.gram

    def counting(X: torch.Tensor) -> torch.Tensor:
        rows.append(X.shape[0])
        return real(X)

    monkeypatch.setattr(report_mod, "gram", counting)
    report = analyze_mod.analyze(model)
    # per layer: qk → 8 W_Q + 2 W_K; ov → 2 W_V + 8 W_O
    assert sum(rows) == 2 * (8 + 2 + 2 + 8)
    _assert_records_match_dense(report, model, 8)
    assert all(rec["kv_head"] == rec["head"] // 4 for rec in report.records)


def test_analyze_recomputes_only_the_refused_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    """GQA (8 query heads, 2 K/V heads): query head 5 of layer 1 collapsed to rank 1, so its QK
    product is refused by the Gram route (q above GRAM_MAX_Q). The R route runs once, on that
    head's W_Q and the one W_K it reads; every record still equals a dense float64 SVD."""
    analyze_mod, report_mod, model = _gqa_llama()
    with torch.no_grad():
        rows = model.layers[1].self_attn.q_proj.weight[5 * 8 : 6 * 8]  # head 5: (8, 64)
        rows.copy_(torch.outer(torch.randn(8), torch.randn(64)))
    calls: list[tuple[int, ...]] = []
    real = report_mod.r_factor

    def counting(X: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(X.shape))
        return real(X)

    monkeypatch.setattr(report_mod, "r_factor", counting)
    report = analyze_mod.analyze(model)
    assert calls == [(1, 64, 8), (1, 64, 8)]  # head 5's W_Q, and W_K of key head 1
    _assert_records_match_dense(report, model, 8)
    rec = next(r for r in report.records if (r["layer"], r["head"], r["circuit"]) == (1, 5, "qk"))
    assert rec["rank"] == 1


def test_analyze_qr_batches_split_factor_stacks_without_changing_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A QR batch budget of 3 factors splits every (H=4)-head stack across batches; the records
    still equal a dense float64 SVD of each head's product."""
    import importlib
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    analyze_mod = importlib.import_module("rankdecay.analyze")
    report_mod = importlib.import_module("rankdecay.spectral_report")
    torch.manual_seed(0)
    model = transformers.GPT2Model(transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4)).eval()
    monkeypatch.setattr(report_mod, "_QR_BATCH_ELEMENTS", 3 * 64 * 16)
    report = analyze_mod.analyze(model)
    _assert_records_match_dense(report, model, 16)
