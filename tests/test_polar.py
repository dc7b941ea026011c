"""polar(): SVD and Newton–Schulz against the dense float64 SVD polar factor."""

from __future__ import annotations

import warnings

import pytest
import torch

from rankdecay.errors import RankdecayError
from rankdecay.polar import PolarConvergenceWarning, newton_schulz_min_iterations, polar


def _with_spectrum(
    m: int, n: int, s: torch.Tensor, batch: tuple[int, ...] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """W = U diag(s) Vᵀ with random orthonormal U (m, k), V (n, k); returns (W, U Vᵀ) in float64."""
    k = s.shape[-1]
    U, _ = torch.linalg.qr(torch.randn(*batch, m, k, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(*batch, n, k, dtype=torch.float64))
    return (U * s) @ V.mT, U @ V.mT


def _dense_polar(W: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    return U @ Vh


SHAPES = [(32, 32), (48, 20), (20, 48), (1, 9), (9, 1), (64, 63)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cond", [1.0, 30.0, 1e3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_newton_schulz_matches_svd_polar(
    shape: tuple[int, int], cond: float, dtype: torch.dtype
) -> None:
    m, n = shape
    k = min(m, n)
    s = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), k, dtype=torch.float64) * 3.7
    W, _ = _with_spectrum(m, n, s)
    W = W.to(dtype)
    truth = _dense_polar(W)  # of the rounded W
    tol = 1e-3
    X, info = polar(W, "newton_schulz", tol=tol, return_info=True)
    assert X.dtype == dtype and X.shape == W.shape
    assert info.converged and info.residual <= tol and info.iterations > 0
    err = torch.linalg.matrix_norm(X.double() - truth, ord=2).item()
    # residual bounds the spectral distance to U Vᵀ (plus the rounding of X itself)
    assert err <= tol
    assert err <= info.residual + (1e-5 if dtype == torch.float32 else 1e-12) * cond
    assert int(info.rank) == k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_svd_polar_exact_and_batched(dtype: torch.dtype) -> None:
    W = torch.randn(3, 2, 7, 5, dtype=dtype)
    X, info = polar(W, "svd", return_info=True)
    truth = _dense_polar(W)
    assert torch.allclose(X.double(), truth, atol=10 * torch.finfo(dtype).eps)
    assert info.residuals.shape == (3, 2) and info.iterations == 0
    # X is semi-orthogonal (XᵀX = I for the tall-transposed side)
    assert torch.allclose(X.mT @ X, torch.eye(5, dtype=dtype).expand(3, 2, 5, 5), atol=1e-5)


def test_newton_schulz_batched_matches_per_matrix() -> None:
    W = torch.randn(4, 30, 12, dtype=torch.float64)
    X = polar(W, "newton_schulz", tol=1e-8)
    for i in range(4):
        assert torch.allclose(X[i], _dense_polar(W[i]), atol=1e-8)


def test_rank_deficient_maps_null_space_to_zero() -> None:
    A = torch.randn(40, 4, dtype=torch.float64)
    W = A @ torch.randn(4, 30, dtype=torch.float64)  # rank 4
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    partial = U[:, :4] @ Vh[:4]
    for method in ("svd", "newton_schulz"):
        X, info = polar(W, method, tol=1e-6, return_info=True)
        assert info.converged and int(info.rank) == 4
        assert torch.allclose(X, partial, atol=1e-6), method


def test_zero_matrix() -> None:
    for method in ("svd", "newton_schulz"):
        X, info = polar(torch.zeros(5, 3), method, return_info=True)
        assert torch.equal(X, torch.zeros(5, 3)) and int(info.rank) == 0 and info.converged


def test_non_convergence_is_reported() -> None:
    s = torch.logspace(0, -3, 16, dtype=torch.float64)
    W, _ = _with_spectrum(16, 16, s)
    with pytest.warns(PolarConvergenceWarning, match="residual"):
        X, info = polar(W, "newton_schulz", tol=1e-3, max_iter=4, return_info=True)
    assert not info.converged and info.residual > 1e-3 and info.iterations == 4
    # the returned matrix is indeed far from polar: the warning was warranted
    assert torch.linalg.matrix_norm(X - _dense_polar(W), ord=2) > 1e-3
    # when converged, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        polar(W, "newton_schulz", tol=1e-3)


def test_min_iterations_resolve_rcond() -> None:
    """After k_min steps, a singular value rcond·σ₁ is past ½ in the worst pre-scaling case."""
    k = 64
    n = newton_schulz_min_iterations(k, 1e-3)
    x = 1e-3 * k**-0.25
    for _ in range(n):
        x = (15 * x - 10 * x**3 + 3 * x**5) / 8
    assert x >= 0.5
    assert newton_schulz_min_iterations(k, 1e-4) > n


def test_low_precision_round_trip() -> None:
    W = torch.randn(16, 8).to(torch.bfloat16)
    X = polar(W, "newton_schulz")
    assert X.dtype == torch.bfloat16
    assert torch.allclose(X.double(), _dense_polar(W.double()), atol=2e-2)


def test_bad_input() -> None:
    with pytest.raises(RankdecayError, match="method"):
        polar(torch.randn(3, 3), "qr")  # type: ignore[arg-type]
    with pytest.raises(RankdecayError):
        polar(torch.randn(3))
    with pytest.raises(RankdecayError):
        polar(torch.randn(3, 3), tol=0.0)
    with pytest.raises(RankdecayError, match="NaN"):
        polar(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "newton_schulz")
    with pytest.raises(RankdecayError, match="NaN"):
        polar(torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), "svd")
    with pytest.raises(RankdecayError):
        polar(torch.ones(3, 3, dtype=torch.int64))


@pytest.mark.parametrize("shape", [(32, 32), (48, 20), (20, 48)])
@pytest.mark.parametrize("steps", [0, 1, 5, 12])
def test_fixed_newton_schulz_is_the_cubic_map_on_normalised_singular_values(
    shape: tuple[int, int], steps: int
) -> None:
    """polar(W, "newton_schulz_fixed", steps=K) = U φ_K(σ/(‖W‖_F + 1e-8)) Vᵀ with
    φ(s) = 1.5s − 0.5s³ iterated K times (the public LRD code), against a float64 SVD."""
    torch.manual_seed(steps)
    m, n = shape
    k = min(m, n)
    s = torch.logspace(0, -3, k, dtype=torch.float64) * 2.3
    W, _ = _with_spectrum(m, n, s)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    x = S / (S.square().sum().sqrt() + 1e-8)
    for _ in range(steps):
        x = 1.5 * x - 0.5 * x**3
    want = (U * x) @ Vh
    got64 = polar(W, "newton_schulz_fixed", steps=steps)
    assert (got64 - want).abs().max() < 1e-12
    got32 = polar(W.float(), "newton_schulz_fixed", steps=steps)
    assert got32.dtype == torch.float32 and (got32.double() - want).abs().max() < 1e-5
    # 5 steps from the Frobenius prescale leave small singular values far below 1 (not polar)
    if steps == 5:
        assert torch.linalg.svdvals(got64).min() < 0.1


def test_fixed_newton_schulz_batched_and_diagnostics() -> None:
    torch.manual_seed(0)
    W = torch.randn(3, 2, 16, 10, dtype=torch.float64)
    out = polar(W, "newton_schulz_fixed", steps=4)
    for idx in [(0, 0), (2, 1)]:
        assert torch.allclose(out[idx], polar(W[idx], "newton_schulz_fixed", steps=4), atol=1e-14)
    # many steps converge (no check is made: the result is whatever K steps give)
    P, info = polar(W, "newton_schulz_fixed", steps=60, return_info=True)
    assert info.iterations == 60 and info.converged
    assert (P - _dense_polar(W)).abs().max() < 1e-9
    _, info5 = polar(W, "newton_schulz_fixed", steps=5, return_info=True)
    assert not info5.converged and info5.residual > 1e-3
    assert torch.equal(polar(torch.zeros(4, 3), "newton_schulz_fixed"), torch.zeros(4, 3))
    with pytest.raises(RankdecayError, match="steps must be an integer"):
        polar(W, "newton_schulz_fixed", steps=-1)
    with pytest.raises(RankdecayError, match="newton_schulz_fixed"):
        polar(W, "newton_schulz_fast")
