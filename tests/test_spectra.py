"""rankdecay.spectra against dense float64 SVDs of the materialized products and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankdecay.errors import RankdecayError
from rankdecay.spectra import (
    NonFiniteInputError,
    balance,
    effective_rank,
    factored_svd,
    factored_svdvals,
    frobenius_norm,
    norm_gap,
    nuclear_norm,
    rank,
    spectral_metrics,
    spectral_norm,
    stable_rank,
)


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Replace ``rankdecay.spectra.<name>`` (a function of one stack X (n, …)) by a spy that
    records n of every call and then runs the original; returns the record."""
    import rankdecay.spectra as spectra_mod

    calls: list[int] = []
    real = getattr(spectra_mod, name)

    def spy(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return real(x)

    monkeypatch.setattr(spectra_mod, name, spy)
    return calls


def _dense_svdvals(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Ground truth: numpy's float64 SVD of the materialized product A·Bᵀ."""
    P = A.double().numpy() @ B.double().mT.numpy()
    return torch.from_numpy(np.linalg.svd(P, compute_uv=False))


def _r_route(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """σ(A·Bᵀ) by the R route alone: σ(R_A R_Bᵀ) with R from ``r_factor`` (what
    ``factored_svdvals`` falls back to where the Gram eigenvalue route cannot vouch for σ)."""
    from rankdecay.spectra import r_factor

    return torch.linalg.svdvals(r_factor(A) @ r_factor(B).mT)


def _rank_deficient(d: int, r: int, k: int, g: torch.Generator) -> torch.Tensor:
    """A d×r factor of rank k."""
    return torch.randn(d, k, generator=g, dtype=torch.float64) @ torch.randn(
        k, r, generator=g, dtype=torch.float64
    )


SHAPES = [  # (d1, d2, r)
    (16, 16, 4),
    (64, 48, 8),
    (7, 9, 12),  # r > d1, d2
    (5, 30, 6),  # r > d1 only
    (33, 1, 3),
    (128, 128, 64),
]


@pytest.mark.parametrize("d1,d2,r", SHAPES)
@pytest.mark.parametrize("deficient", [False, True])
def test_factored_svdvals_match_dense_svd(d1: int, d2: int, r: int, deficient: bool) -> None:
    g = torch.Generator().manual_seed(d1 * 1000 + d2 * 10 + r)
    if deficient:
        k = max(1, min(d1, d2, r) // 2)
        A, B = _rank_deficient(d1, r, k, g), _rank_deficient(d2, r, k, g)
    else:
        A = torch.randn(d1, r, generator=g, dtype=torch.float64)
        B = torch.randn(d2, r, generator=g, dtype=torch.float64)
    s = factored_svdvals(A, B)
    dense = _dense_svdvals(A, B)
    m = min(d1, d2, r)
    assert s.shape == (m,) and s.dtype == torch.float64
    top = dense[0].item()
    assert torch.all(s[:-1] >= s[1:])
    assert (s - dense[:m]).abs().max().item() <= 1e-10 * top
    assert dense[m:].abs().max().item() <= 1e-10 * top if dense.numel() > m else True
    if deficient:  # the rank is visible at any reasonable tolerance
        assert int(rank(s, rtol=1e-8)) == int(np.linalg.matrix_rank(A.numpy() @ B.numpy().T))


def test_batched_broadcast_and_float32_inputs_computed_in_float64() -> None:
    g = torch.Generator().manual_seed(1)
    A = torch.randn(3, 4, 20, 5, generator=g)  # float32 (layers, heads, d, r)
    B = torch.randn(1, 4, 24, 5, generator=g)  # broadcasts over layers
    s = factored_svdvals(A, B)
    assert s.shape == (3, 4, 5) and s.dtype == torch.float64
    for i in range(3):
        for h in range(4):
            dense = _dense_svdvals(A[i, h], B[0, h])
            assert (s[i, h] - dense[:5]).abs().max() <= 1e-10 * dense[0]
    assert factored_svdvals(A, B, dtype=None).dtype == torch.float32


def test_factored_svd_reconstructs_the_product() -> None:
    g = torch.Generator().manual_seed(2)
    A = torch.randn(2, 30, 6, generator=g, dtype=torch.float64)
    B = torch.randn(2, 25, 6, generator=g, dtype=torch.float64)
    U, S, V = factored_svd(A, B)
    torch.testing.assert_close(U @ torch.diag_embed(S) @ V.mT, A @ B.mT, rtol=1e-12, atol=1e-12)
    eye = torch.eye(6, dtype=torch.float64).expand(2, 6, 6)
    torch.testing.assert_close(U.mT @ U, eye, rtol=0, atol=1e-12)
    torch.testing.assert_close(V.mT @ V, eye, rtol=0, atol=1e-12)


@st.composite
def _factors_and_transform(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d1 = draw(st.integers(1, 24))
    d2 = draw(st.integers(1, 24))
    r = draw(st.integers(1, 10))
    seed = draw(st.integers(0, 2**31 - 1))
    log_cond = draw(st.floats(0.0, math.log(50.0)))
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d1, r, generator=g, dtype=torch.float64)
    B = torch.randn(d2, r, generator=g, dtype=torch.float64)
    # random invertible M = Q₁ diag(σ) Q₂ with condition number ≤ 50
    Q1, _ = torch.linalg.qr(torch.randn(r, r, generator=g, dtype=torch.float64))
    Q2, _ = torch.linalg.qr(torch.randn(r, r, generator=g, dtype=torch.float64))
    sig = torch.exp(torch.rand(r, generator=g, dtype=torch.float64) * log_cond)
    return A, B, Q1 @ torch.diag(sig) @ Q2


@settings(max_examples=60, deadline=None)
@given(_factors_and_transform())
def test_singular_values_invariant_under_gauge_transform(
    case: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    """σ(A M (B M⁻ᵀ)ᵀ) = σ(A Bᵀ) for any invertible M (the factorization's gauge freedom)."""
    A, B, M = case
    s = factored_svdvals(A, B)
    s_t = factored_svdvals(A @ M, B @ torch.linalg.inv(M).mT)
    assert (s - s_t).abs().max().item() <= 1e-9 * max(s[0].item(), 1e-300)


# ---------------------------------------------------------------------------------------------
# Metrics on known matrices
# ---------------------------------------------------------------------------------------------


def test_metrics_of_identity() -> None:
    n = 8
    I = torch.eye(n, dtype=torch.float64)
    s = factored_svdvals(I, I)
    m = spectral_metrics(s)
    assert int(m["rank"]) == n
    assert m["effective_rank"].item() == pytest.approx(n, rel=1e-12)
    assert m["stable_rank"].item() == pytest.approx(n, rel=1e-12)
    assert m["nuclear_norm"].item() == pytest.approx(n, rel=1e-12)
    assert m["frobenius_norm"].item() == pytest.approx(math.sqrt(n), rel=1e-12)
    assert m["spectral_norm"].item() == pytest.approx(1.0, rel=1e-12)
    assert balance(I, I).item() == pytest.approx(0.0, abs=1e-12)
    assert norm_gap(I, I).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_metrics_of_rank_k_products_with_known_spectrum(k: int) -> None:
    """A = U diag(√σ), B = V diag(√σ) with orthonormal U, V: the spectrum is σ exactly."""
    g = torch.Generator().manual_seed(k)
    d, r = 20, 6
    sigma = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.25][:k], dtype=torch.float64)
    U, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    pad = torch.zeros(d, r - k, dtype=torch.float64)
    A = torch.cat([U * sigma.sqrt(), pad], 1)
    B = torch.cat([V * sigma.sqrt(), pad], 1)
    s = factored_svdvals(A, B)
    torch.testing.assert_close(s[:k], sigma, rtol=1e-12, atol=1e-12)
    assert s[k:].abs().max().item() <= 1e-12 if k < r else True
    assert int(rank(s, rtol=1e-2)) == k
    assert int(rank(s, rtol=0.3)) == int((sigma > 0.3 * 5.0).sum())
    p = sigma / sigma.sum()
    assert effective_rank(s).item() == pytest.approx(
        math.exp(-(p * p.log()).sum().item()), rel=1e-9
    )
    assert stable_rank(s).item() == pytest.approx((sigma**2).sum().item() / 25.0, rel=1e-12)
    assert nuclear_norm(s).item() == pytest.approx(sigma.sum().item(), rel=1e-12)
    assert frobenius_norm(s).item() == pytest.approx(sigma.norm().item(), rel=1e-12)
    assert spectral_norm(s).item() == pytest.approx(5.0, rel=1e-12)
    # balanced factorization: AᵀA = BᵀB = diag(σ, 0), so balance and norm gap vanish
    assert balance(A, B).item() == pytest.approx(0.0, abs=1e-12)
    assert norm_gap(A, B).item() == pytest.approx(0.0, abs=1e-12)
    # unbalance it by c: balance = |c² − c⁻²|·‖σ‖₂, gap = ½(c² + c⁻²)Σσ − Σσ
    c = 2.0
    assert balance(A * c, B / c).item() == pytest.approx(
        abs(c**2 - c**-2) * sigma.norm().item(), rel=1e-12
    )
    assert norm_gap(A * c, B / c).item() == pytest.approx(
        (0.5 * (c**2 + c**-2) - 1) * sigma.sum().item(), rel=1e-12
    )


def test_effective_rank_of_equal_singular_values_is_their_count() -> None:
    s = torch.tensor([[2.0, 2.0, 2.0, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(effective_rank(s), torch.tensor([3.0, 1.0], dtype=torch.float64))


def test_metrics_of_zero_matrix() -> None:
    Z = torch.zeros(10, 4, dtype=torch.float64)
    s = factored_svdvals(Z, Z)
    assert torch.equal(s, torch.zeros(4, dtype=torch.float64))
    m = spectral_metrics(s)
    for name, value in m.items():
        assert value.item() == 0, name
    assert balance(Z, Z).item() == 0 and norm_gap(Z, Z).item() == 0


def test_balance_and_norm_gap_against_dense_definitions() -> None:
    g = torch.Generator().manual_seed(5)
    A = torch.randn(4, 12, 3, generator=g, dtype=torch.float64)
    B = torch.randn(4, 15, 3, generator=g, dtype=torch.float64)
    for i in range(4):
        a, b = A[i].numpy(), B[i].numpy()
        assert balance(A, B)[i].item() == pytest.approx(
            np.linalg.norm(a.T @ a - b.T @ b), rel=1e-12
        )
        nuc = np.linalg.norm(a @ b.T, ord="nuc")
        gap = 0.5 * (np.sum(a * a) + np.sum(b * b)) - nuc
        assert norm_gap(A, B)[i].item() == pytest.approx(gap, rel=1e-9, abs=1e-12)
        assert gap >= 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_factors_raise_a_clear_error(bad: float) -> None:
    A = torch.randn(5, 3)
    A[2, 1] = bad
    for fn in (factored_svdvals, balance, norm_gap):
        with pytest.raises(NonFiniteInputError) as info:
            fn(A, torch.randn(5, 3))
        assert isinstance(info.value, RankdecayError)
        assert "NaN or Inf" in str(info.value) and "\n" not in str(info.value)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="inner dimension"):
        factored_svdvals(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="matrices"):
        factored_svdvals(torch.randn(4), torch.randn(4))
    with pytest.raises(ValueError, match="rtol"):
        rank(torch.ones(3), rtol=-1.0)


def _with_cond(rows: int, cols: int, cond: float, g: torch.Generator) -> torch.Tensor:
    """rows×cols float64 factor with singular values log-spaced from 1 down to 1/cond."""
    k = min(rows, cols)
    U, _ = torch.linalg.qr(torch.randn(rows, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(cols, k, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -math.log10(cond), k, dtype=torch.float64)
    return (U * s) @ V.mT


@pytest.mark.parametrize("cond", [1e0, 1e4, 1e8, 1e12])
@pytest.mark.parametrize("which", ["A", "both", "shared_basis"])
def test_r_factor_accuracy_up_to_condition_1e8_and_beyond(cond: float, which: str) -> None:
    """The R factor the kernel uses (Householder, also inside analyze) keeps every σ of A·Bᵀ within
    1e-10·σ₁ of a dense float64 SVD for factor condition numbers up to 1e8 (and 1e12): a
    Gram-based R (CholeskyQR) would lose the small ones at cond ≳ 1e8 (it needs u·cond² < 1)."""
    g = torch.Generator().manual_seed(int(math.log10(cond)) + 7 * len(which))
    d, r = 300, 32
    A = _with_cond(d, r, cond, g)
    B = _with_cond(d, r, cond if which != "A" else 1.0, g)
    if which == "shared_basis":  # σ(A·Bᵀ) = s² spans cond² — the smallest far below u·σ₁
        B = A @ torch.linalg.qr(torch.randn(r, r, generator=g, dtype=torch.float64))[0]
    ref = _dense_svdvals(A, B)[:r]
    for s in (factored_svdvals(A, B), _r_route(A, B)):  # the kernel, and its R route alone
        assert ((s - ref).abs() <= 1e-10 * ref[0]).all(), float((s - ref).abs().max() / ref[0])
    # and a Gram-based R (one Cholesky pass) fails the same bound at cond 1e8 when A carries
    # the small singular values: the reason the kernel keeps Householder (negative control)
    if cond == 1e8 and which == "A":
        L, info = torch.linalg.cholesky_ex(A.mT @ A)
        if int(info) == 0:  # else the Cholesky itself broke down: failed as well
            R_B = torch.linalg.qr(B, mode="r")[1]
            s_gram = torch.linalg.svdvals(L.mT @ R_B.mT)
            assert (s_gram - ref).abs().max() > 1e-10 * ref[0]


def test_r_factor_in_batches_equals_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stack larger than QR_BATCH_ELEMENTS is decomposed in batches (leading dims kept)."""
    import rankdecay.spectra as spectra_mod

    g = torch.Generator().manual_seed(11)
    A = torch.randn(3, 5, 40, 6, generator=g, dtype=torch.float64)
    B = torch.randn(3, 5, 30, 6, generator=g, dtype=torch.float64)
    whole = _r_route(A, B)
    monkeypatch.setattr(spectra_mod, "QR_BATCH_ELEMENTS", 2 * 40 * 6)  # 2 matrices per call
    calls = _count_calls(monkeypatch, "_r_one_call")
    split = _r_route(A, B)
    assert max(calls) <= 3 and len(calls) > 2
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-13)
    ref = _dense_svdvals(A[2, 4], B[2, 4])[:6]
    assert (split[2, 4] - ref).abs().max() <= 1e-12 * ref[0]


@pytest.mark.parametrize("cond", [1e0, 1e1, 1e2])
def test_r_factor_gram_route_taken_and_accurate_below_threshold(
    cond: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Well-conditioned float64 factors take the Gram + Cholesky route (no Householder call) and
    still give every σ of A·Bᵀ within 1e-10·σ₁ of a dense float64 SVD, up to the κ threshold."""

    g = torch.Generator().manual_seed(int(cond) % 97)
    A = torch.stack([_with_cond(200, 16, cond, g) for _ in range(3)])
    B = torch.stack([_with_cond(150, 16, cond, g) for _ in range(3)])
    householder = _count_calls(monkeypatch, "_r_householder")
    s = _r_route(A, B)
    # κ_F(R) ≤ r·κ₂ ≈ 220 at cond 100 (r = 16) < CHOLESKY_MAX_COND: all on the Gram route
    assert householder == []
    for i in range(3):
        ref = _dense_svdvals(A[i], B[i])[:16]
        assert ((s[i] - ref).abs() <= 1e-10 * ref[0]).all()


def test_r_factor_falls_back_per_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    """In one stack, only the ill-conditioned (κ = 1e8) and the rank-deficient matrices go to
    Householder; the result matches an all-Householder run to 1e-12·σ₁ and the dense SVD to
    1e-10·σ₁. (Why the threshold exists: the Gram route's own miss at κ = 1e8 is the negative
    control of test_r_factor_accuracy_up_to_condition_1e8_and_beyond.)"""
    import rankdecay.spectra as spectra_mod

    g = torch.Generator().manual_seed(5)
    A = torch.stack(
        [
            _with_cond(120, 12, 1.0, g),
            _with_cond(120, 12, 1e8, g),
            _with_cond(120, 12, 10.0, g)
            @ torch.diag(torch.tensor([1.0] * 11 + [0.0], dtype=torch.float64)),
        ]
    ).double()
    B = torch.stack([_with_cond(90, 12, 10.0, g) for _ in range(3)])
    refs = [_dense_svdvals(A[i], B[i])[:12] for i in range(3)]
    sent = _count_calls(monkeypatch, "_r_householder")
    s = _r_route(A, B)
    assert sent == [2]  # A's two bad matrices, in one call; B and A[0] on the Gram route
    for i in range(3):
        assert ((s[i] - refs[i]).abs() <= 1e-10 * refs[i][0]).all(), i
    monkeypatch.setattr(spectra_mod, "CHOLESKY_MAX_COND", 0.0)  # all Householder
    s_qr = _r_route(A, B)
    assert ((s - s_qr).abs() <= 1e-12 * s_qr[..., :1]).all()


def test_r_factor_gram_route_anti_aligned_pair_at_the_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Gram route's worst case: B is large exactly where A is small (A = U·diag(s)·Vᵀ,
    B = W·diag(reversed s)·Vᵀ), so A·Bᵀ's σ₁ lives in A's smallest directions, where the
    Cholesky R is least accurate. With κ₂ = 200 (κ_F ≈ 400, just under the threshold) every σ
    is still within 1e-10·σ₁ (measured ≈ 2e-12); the route was taken (no Householder call)."""

    g = torch.Generator().manual_seed(3)
    d, r = 64, 16
    U, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))
    W, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(r, r, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -math.log10(200.0), r, dtype=torch.float64)
    A, B = (U * s) @ V.mT, (W * s.flip(0)) @ V.mT
    householder = _count_calls(monkeypatch, "_r_householder")
    got = _r_route(A, B)
    assert householder == []
    ref = _dense_svdvals(A, B)[:r]
    assert ((got - ref).abs() <= 1e-10 * ref[0]).all(), float((got - ref).abs().max() / ref[0])
    # the same pair at κ₂ = 2000 (κ_F ≈ 5e3) is sent to Householder, factor by factor
    s = torch.logspace(0, -math.log10(2000.0), r, dtype=torch.float64)
    A, B = (U * s) @ V.mT, (W * s.flip(0)) @ V.mT
    got = _r_route(A, B)
    assert householder == [1, 1]
    ref = _dense_svdvals(A, B)[:r]
    assert ((got - ref).abs() <= 1e-10 * ref[0]).all()
