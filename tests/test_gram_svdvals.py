"""The Gram eigenvalue route of the spectra kernel (``spectra.gram``, ``gram_svdvals``) against
dense float64 SVDs of the materialized products: accurate where it says so, refused where it
cannot be, and the route the benchmark shape takes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import rankdecay.spectra as spectra_mod
from rankdecay.spectra import (
    NonFiniteInputError,
    factored_spectrum,
    factored_svdvals,
    gram,
    gram_svdvals,
    r_factor,
    spectrum_from_r,
)


def _dense_svdvals(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Ground truth: numpy's float64 SVD of the materialized product A·Bᵀ."""
    return torch.from_numpy(np.linalg.svd(A.numpy() @ B.numpy().T, compute_uv=False))


def _pair(
    rng: np.random.Generator, d: int, r: int, cond_a: float, cond_b: float, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """A = U·diag(a)·Vᵀ, B = W·diag(b)·V'ᵀ with condition numbers cond_a, cond_b. ``mode``:
    "aligned" (V' = V, both large in the same directions), "anti" (V' = V, B large where A is
    small: the Gram route's worst case), "independent" (V' random)."""

    def orth(rows: int) -> np.ndarray:
        return np.linalg.qr(rng.standard_normal((rows, r)))[0]

    def values(cond: float) -> np.ndarray:
        return np.logspace(0, -math.log10(cond), r)

    V = orth(r)
    V_b = orth(r) if mode == "independent" else V
    b = values(cond_b)[::-1] if mode == "anti" else values(cond_b)
    A = orth(d) * values(cond_a) @ V.T * 10 ** rng.uniform(-3, 3)
    return torch.from_numpy(A), torch.from_numpy(orth(d) * b @ V_b.T)


def _error(s: torch.Tensor, ref: torch.Tensor) -> float:
    return float((s - ref[: s.shape[-1]]).abs().max() / ref[0])


def test_every_product_within_1e_10_and_the_route_mix() -> None:
    """240 pairs over r = 1…64, condition numbers 1…1e6, aligned, anti-aligned and independent: every σ of the kernel within 1e-10·σ₁ of a dense SVD; the products the Gram route
    vouches for (ok) are within 3e-11·σ₁ by themselves; both routes occur."""
    rng = np.random.default_rng(20261203)
    accepted = refused = 0
    for i in range(240):
        r = [1, 2, 3, 4, 8, 16, 32, 64][i % 8]
        d = r + int(rng.integers(0, 100))
        mode = ["aligned", "anti", "independent"][i % 3]
        # anti-aligned, ‖A‖‖B‖/σ₁ ≈ min(cond_a, cond_b): kept ≤ 1e3 so that the problem itself
        # (and the dense reference) resolves 1e-10·σ₁ (see the negative control below)
        cond_a, cond_b = 10 ** rng.uniform(0, 6), 10 ** rng.uniform(0, 3 if mode == "anti" else 6)
        A, B = _pair(rng, d, r, cond_a, cond_b, mode)
        ref = _dense_svdvals(A, B)
        s_gram, ok = gram_svdvals(gram(A), gram(B))
        if bool(ok):
            accepted += 1
            assert _error(s_gram, ref) <= 3e-11, (i, r, cond_a, cond_b)
        else:
            refused += 1
        assert _error(factored_svdvals(A, B), ref) <= 1e-10, (i, r, cond_a, cond_b)
    assert accepted >= 40 and refused >= 40, (accepted, refused)


@pytest.mark.parametrize(
    ("mode", "cond_a", "cond_b"), [("anti", 1e4, 1e4), ("independent", 1e8, 1.0)]
)
def test_negative_control_the_acceptance_test_is_what_keeps_the_bound(
    mode: str, cond_a: float, cond_b: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B large where A is small, and A with condition number 1e8: with the acceptance test
    switched off (GRAM_MAX_Q = ∞) the Gram route's σ miss 1e-10·σ₁; with it on, the product is
    refused and the kernel meets the bound. (An anti-aligned pair at 1e8 on both sides is not a
    test case: σ₁ = ‖A‖‖B‖/1e8 there, below what any normwise-stable method — and the dense
    reference's own product A·Bᵀ — resolves to 1e-10·σ₁.)"""
    rng = np.random.default_rng(int(math.log10(cond_a)))
    A, B = _pair(rng, 120, 16, cond_a, cond_b, mode)
    ref = _dense_svdvals(A, B)
    s, ok = gram_svdvals(gram(A), gram(B))
    assert not bool(ok)
    assert _error(factored_svdvals(A, B), ref) <= 1e-10
    monkeypatch.setattr(spectra_mod, "GRAM_MAX_Q", math.inf)
    assert _error(factored_svdvals(A, B), ref) > 1e-10


def test_benchmark_shape_takes_the_gram_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPT-2-small-shaped random factors (768×64, what bench_spectra.py times): every product on
    the Gram route, no R factor computed, σ within 1e-12·σ₁ of a dense SVD."""
    g = torch.Generator().manual_seed(0)
    A = 0.02 * torch.randn(4, 768, 64, generator=g, dtype=torch.float64)
    B = 0.02 * torch.randn(4, 768, 64, generator=g, dtype=torch.float64)
    calls: list[int] = []
    monkeypatch.setattr(spectra_mod, "r_factor", lambda X: calls.append(1) or r_factor(X))
    s = factored_svdvals(A, B)
    assert calls == []
    for i in range(4):
        assert _error(s[i], _dense_svdvals(A[i], B[i])) <= 1e-12


def test_factored_spectrum_gram_route_equals_r_route() -> None:
    """σ, balance ‖AᵀA − BᵀB‖_F and the norm gap from the Grams equal the R route's."""
    g = torch.Generator().manual_seed(1)
    A = torch.randn(5, 90, 12, generator=g, dtype=torch.float64)
    B = torch.randn(5, 70, 12, generator=g, dtype=torch.float64)
    got = factored_spectrum(A, B)
    want = spectrum_from_r(r_factor(A), r_factor(B))
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12 * float(want[0].max()))


def test_broadcast_leading_dims_with_refused_products() -> None:
    """A (3, 1, d, r) against B (1, 2, d, r), where one A is rank-deficient (refused): the
    refused products are recomputed in place; every one matches its dense SVD."""
    g = torch.Generator().manual_seed(2)
    A = torch.randn(3, 1, 40, 6, generator=g, dtype=torch.float64)
    A[1, 0, :, 5] = A[1, 0, :, 4]  # rank 5
    B = torch.randn(1, 2, 30, 6, generator=g, dtype=torch.float64)
    s = factored_svdvals(A, B)
    assert s.shape == (3, 2, 6)
    _, ok = gram_svdvals(gram(A), gram(B))
    assert ok.tolist() == [[True, True], [False, False], [True, True]]
    for i in range(3):
        for j in range(2):
            assert _error(s[i, j], _dense_svdvals(A[i, 0], B[0, j])) <= 1e-10


def test_zero_and_non_finite_factors() -> None:
    """A zero factor: every σ is 0 (refused by the route, exact by the R route); NaN/Inf still
    raise NonFiniteInputError though the route checks finiteness on the Grams' traces."""
    B = torch.randn(20, 4, dtype=torch.float64)
    assert factored_svdvals(torch.zeros(20, 4, dtype=torch.float64), B).abs().max() == 0
    for bad in (math.nan, math.inf):
        A = torch.randn(20, 4, dtype=torch.float64)
        A[3, 2] = bad
        with pytest.raises(NonFiniteInputError):
            factored_svdvals(A, B)
        with pytest.raises(NonFiniteInputError):
            factored_spectrum(B, A)


@pytest.mark.parametrize("r", [8, 16, 64])
def test_finite_factors_whose_grams_overflow(r: int) -> None:
    """|entries| ~ 1e170: AᵀA overflows (Inf, and NaN off the diagonal) though A·Bᵀ is finite.
    The Gram route must hand those products to the R route (not fail in the eigensolver), the
    balance must not be NaN: 0 for balanced factors, Inf where the true value is beyond float
    range. Negative control: the unscaled balance formula does give NaN here."""
    gen = torch.Generator().manual_seed(r)
    A = torch.randn(3, 96, r, dtype=torch.float64, generator=gen)
    B = torch.randn(3, 80, r, dtype=torch.float64, generator=gen)
    big = A * 1e170
    for i in range(3):
        assert _error(factored_svdvals(big[i], B[i]), _dense_svdvals(big[i], B[i])) < 1e-12
    spec = factored_spectrum(big, B)
    assert torch.isinf(spec.balance).all() and torch.isinf(spec.norm_gap).all()
    assert (spectra_mod.balance(big, big) == 0).all()
    assert torch.isnan(torch.linalg.matrix_norm(big.mT @ big - big.mT @ big)).any()
    plain = torch.linalg.matrix_norm(A.mT @ A - B.mT @ B)
    assert torch.equal(spectra_mod.balance(A, B), plain)  # power-of-two scaling: exact


@pytest.mark.parametrize("layout", ["row", "column", "expanded", "grad", "float32"])
def test_gram_equals_xtx(layout: str) -> None:
    """gram(X) = XᵀX whatever the memory layout (numpy's syrk for CPU float64, torch otherwise)."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(3, 50, 7, generator=g, dtype=torch.float64)
    if layout == "column":
        X = X.mT.contiguous().mT
    elif layout == "expanded":
        X = X[:1].expand(4, 50, 7)
    elif layout == "grad":
        X = X.clone().requires_grad_(True)
    elif layout == "float32":
        X = X.float()
    G = gram(X)
    assert G.dtype == X.dtype and G.shape == (*X.shape[:-2], 7, 7)
    torch.testing.assert_close(G, X.mT @ X, rtol=1e-5 if layout == "float32" else 1e-13, atol=0)
    if layout == "grad":
        G.sum().backward()  # the torch path keeps autograd
        assert X.grad is not None
