"""Spectra of factored matrices A·Bᵀ and the metrics rankdecay reports.

Pure tensor maths: nothing here knows about ``nn.Module``.

Factored SVD
------------
For A ∈ ℝ^{d₁×r} and B ∈ ℝ^{d₂×r} take thin QR factorizations A = Q_A R_A, B = Q_B R_B
(Q_A ∈ ℝ^{d₁×k₁}, R_A ∈ ℝ^{k₁×r}, k₁ = min(d₁, r); likewise for B). Then

    A·Bᵀ = Q_A (R_A R_Bᵀ) Q_Bᵀ,

and since Q_A, Q_B have orthonormal columns, σ(A·Bᵀ) = σ(R_A R_Bᵀ), a k₁×k₂ matrix (the *R route*).
In float64 the kernel first tries the cheaper *Gram route*, σ(A·Bᵀ)² = λ(Lᵀ·AᵀA·L) with
BᵀB = L·Lᵀ (:func:`gram_svdvals`), keeping its σ only where an a-posteriori estimate vouches for
them to 1e-10·σ₁ (:data:`GRAM_MAX_Q`) and taking the R route for the rest. The cost is
O(d·r²) per product instead of O(d³) for the SVD of the materialized d₁×d₂ product, and every
leading dimension (layer, head, …) is batched. The result has min(d₁, d₂, r) values, which is
all the non-zero ones (rank(A·Bᵀ) ≤ r); the remaining singular values of the d₁×d₂ product are 0.

Metrics (on singular values σ₁ ≥ σ₂ ≥ … ≥ 0, shape (..., k))
-------------------------------------------------------------
- ``rank(s, rtol)``         #{σᵢ > rtol·σ₁}   (0 for the zero matrix)
- ``effective_rank(s)``     exp(−Σ pᵢ log pᵢ), pᵢ = σᵢ/Σσ (Roy & Vetterli 2007; 0 for the zero matrix)
- ``stable_rank(s)``        Σσᵢ² / σ₁²       (0 for the zero matrix)
- ``nuclear_norm(s)``       Σσᵢ
- ``frobenius_norm(s)``     √Σσᵢ²
- ``spectral_norm(s)``      σ₁
- ``balance(A, B)``         ‖AᵀA − BᵀB‖_F   (0 at every critical point of an L2-regularized loss)
- ``norm_gap(A, B)``        ½(‖A‖_F² + ‖B‖_F²) − ‖A·Bᵀ‖_* ≥ 0 (0 iff the factorization is balanced)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .errors import RankdecayError, RankdecayTypeError, RankdecayValueError

try:  # the optional native Gram kernel (src/rankdecay/_gram.c, built by setup.py)
    from . import _gram as _native
except ImportError:  # no C compiler at install time: the BLAS computes the Grams
    _native = None

DEFAULT_RTOL = 1e-2
#: elements per batched QR call (8 MiB of float64): keeps geqrf's working copy in cache
QR_BATCH_ELEMENTS = 1 << 20
#: largest κ_F(R) = ‖R‖_F·‖R⁻¹‖_F for which :func:`r_factor` keeps the Gram + Cholesky R
CHOLESKY_MAX_COND = 500.0
#: largest q = u·tr(AᵀA)·tr(BᵀB) / (r·σ̃₁·σ̃_r) for which :func:`factored_svdvals` keeps the σ of
#: the Gram eigenvalue route (measured error ≤ 6·q·σ₁, so ≤ 3e-12·σ₁ here; see :func:`gram_svdvals`)
GRAM_MAX_Q = 5e-13
_UNIT_ROUNDOFF = 2.0**-53  # float64

__all__ = [
    "CHOLESKY_MAX_COND",
    "DEFAULT_RTOL",
    "NonFiniteInputError",
    "QR_BATCH_ELEMENTS",
    "balance",
    "chain_r",
    "effective_rank",
    "FactoredSpectrum",
    "GRAM_MAX_Q",
    "factored_spectrum",
    "factored_svd",
    "factored_svdvals",
    "factored_svdvals_chain",
    "frobenius_norm",
    "gram",
    "gram_kernel",
    "gram_svdvals",
    "norm_gap",
    "nuclear_norm",
    "r_factor",
    "rank",
    "require_finite",
    "require_finite_gram",
    "spectral_metrics",
    "spectrum_from_grams",
    "spectrum_from_r",
    "spectral_norm",
    "stable_rank",
]


class NonFiniteInputError(RankdecayError, ValueError):
    """A factor contains NaN or Inf, so its spectrum is undefined."""


def _require_tensor(x: object, name: str, shape: str) -> None:
    if not isinstance(x, Tensor):
        raise RankdecayTypeError(
            f"{name} must be a torch.Tensor {shape}, got {type(x).__name__}; convert it with "
            "torch.as_tensor."
        )


def _check_factors(
    A: Tensor, B: Tensor, dtype: torch.dtype | None, finite: bool = True
) -> tuple[Tensor, Tensor]:
    _require_tensor(A, "A", "(..., d, r)")
    _require_tensor(B, "B", "(..., d, r)")
    if A.dim() < 2 or B.dim() < 2:
        raise RankdecayValueError(
            f"factors must be matrices (..., d, r); got shapes {tuple(A.shape)} and {tuple(B.shape)}."
        )
    if A.shape[-1] != B.shape[-1]:
        raise RankdecayValueError(
            f"A·Bᵀ needs the same inner dimension r; got A {tuple(A.shape)} and B {tuple(B.shape)}."
        )
    if dtype is not None:
        A, B = A.to(dtype), B.to(dtype)
    if finite:
        require_finite(A)
        require_finite(B)
    return A, B


def require_finite(X: Tensor, what: str = "a factor") -> None:
    """Raise :class:`NonFiniteInputError` if X holds NaN or Inf.

    NaN/Inf propagate into a sum, so the cheap sum decides; the full elementwise check only runs
    to confirm when the sum is non-finite (it could also overflow on huge finite values).
    """
    if not (bool(torch.isfinite(X.sum())) or bool(torch.isfinite(X).all())):
        raise NonFiniteInputError(
            f"{what} contains NaN or Inf, so its singular values are undefined; "
            "check the weights (e.g. a diverged run) before analysing them."
        )


def _core(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Q_A, Q_B and the small core M = R_A R_Bᵀ with A·Bᵀ = Q_A M Q_Bᵀ."""
    Q_A, R_A = torch.linalg.qr(A, mode="reduced")  # (..., d1, k1), (..., k1, r)
    Q_B, R_B = torch.linalg.qr(B, mode="reduced")  # (..., d2, k2), (..., k2, r)
    return Q_A, Q_B, R_A @ R_B.mT  # (..., k1, k2)


def factored_svdvals(A: Tensor, B: Tensor, dtype: torch.dtype | None = torch.float64) -> Tensor:
    """Singular values of A·Bᵀ from its factors, without forming the product.

    Float64 factors with d₁, d₂ ≥ r take the Gram eigenvalue route (:func:`gram_svdvals`); a
    product whose σ that route cannot guarantee to 1e-10·σ₁ (ill-conditioned, low-rank), and
    every other dtype or shape, takes the R route: σ(R_A R_Bᵀ) with R from :func:`r_factor`.

    Args:
        A: (..., d₁, r) tensor.
        B: (..., d₂, r) tensor; leading dims broadcast with A's.
        dtype: compute dtype (float64 by default whatever the inputs' dtype); ``None`` keeps it.

    Returns:
        (..., min(d₁, d₂, r)) singular values in descending order, in ``dtype``.
    """
    A, B = _check_factors(A, B, dtype, finite=False)
    if not _gram_route(A, B):
        require_finite(A)
        require_finite(B)
        return torch.linalg.svdvals(r_factor(A) @ r_factor(B).mT)
    return _svdvals_and_grams(A, B)[0]


def spectrum_from_grams(G_A: Tensor, G_B: Tensor) -> tuple[FactoredSpectrum, Tensor]:
    """σ(A·Bᵀ), balance and norm gap from the Grams G_A = AᵀA and G_B = BᵀB (..., r, r).

    σ by :func:`gram_svdvals`; balance ‖G_A − G_B‖_F; gap ½(tr G_A + tr G_B) − Σσ. Returns the
    spectrum and ``ok`` (...,): where False, the σ (and the gap) are not vouched for to
    1e-10·σ₁, and the caller recomputes them from the factors (:func:`spectrum_from_r`).
    """
    s, ok = gram_svdvals(G_A, G_B)
    return _gram_spectrum(s, G_A, G_B), ok


def _gram_spectrum(s: Tensor, G_A: Tensor, G_B: Tensor) -> FactoredSpectrum:
    """σ with the balance ‖G_A − G_B‖_F and the gap ½(tr G_A + tr G_B) − Σσ."""
    bal = torch.linalg.matrix_norm(G_A - G_B)
    return FactoredSpectrum(s, bal, 0.5 * (_trace(G_A) + _trace(G_B)) - s.sum(-1))


def _svdvals_and_grams(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """σ(A·Bᵀ) by the Gram route, the R route for the products it cannot vouch for; AᵀA, BᵀB."""
    r = A.shape[-1]
    G_A, G_B = gram(A), gram(B)
    require_finite_gram(A, G_A)
    require_finite_gram(B, G_B)
    s, ok = gram_svdvals(G_A, G_B)
    if not bool(ok.all()):  # the R route for the products the Gram route cannot vouch for
        batch = s.shape[:-1]
        bad = ~ok
        A_bad = A.expand(*batch, *A.shape[-2:])[bad]
        B_bad = B.expand(*batch, *B.shape[-2:])[bad]
        s[bad] = torch.linalg.svdvals(r_factor(A_bad) @ r_factor(B_bad).mT)[..., :r]
    return s, G_A, G_B


def require_finite_gram(X: Tensor, G: Tensor, what: str = "a factor") -> None:
    """:func:`require_finite` for X whose Gram G = XᵀX is at hand: tr(G) = ‖X‖_F² is NaN/Inf
    iff X holds NaN/Inf (or its squares overflow), so the full pass over X runs only then."""
    if not bool(torch.isfinite(_trace(G).sum())):
        require_finite(X, what)


def _gram_route(A: Tensor, B: Tensor) -> bool:
    r = A.shape[-1]
    return (
        A.dtype == B.dtype == torch.float64
        and r > 0
        and A.shape[-2] >= r
        and B.shape[-2] >= r
        and GRAM_MAX_Q > 0
    )


def gram(X: Tensor) -> Tensor:
    """The Gram matrix XᵀX (..., r, r) of X (..., d, r).

    A CPU float64 tensor outside autograd goes to the native kernel where it runs (X stored
    row- or column-major, r a multiple of 16, an AVX-512 CPU: :func:`gram_kernel`; 1.5–1.8×
    faster than OpenBLAS's ``syrk`` on 768×64 factors, docs/benchmarks.md), split over torch's
    thread count; otherwise through numpy's ``matmul`` on a transposed view, which its BLAS
    computes as a symmetric rank-k update (``syrk``: d·r² multiply-adds, half a GEMM's, and
    ≈ 1.6× faster than torch's batched GEMM for 768×64 factors). Anything else through torch's
    ``X.mT @ X``.
    """
    if X.device.type == "cpu" and X.dtype == torch.float64 and not X.requires_grad:
        G = _native_gram(X)
        if G is not None:
            return G
        Xn = _np(X)
        return torch.from_numpy(np.matmul(np.swapaxes(Xn, -1, -2), Xn))
    return X.mT @ X


def gram_kernel(r: int = 64) -> str:
    """What computes the float64 CPU Grams of r-column factors here: ``"native (AVX-512)"`` or
    ``"BLAS (numpy)"`` (no compiler at install time, a CPU without AVX-512F, or r % 16 ≠ 0)."""
    runs = _native is not None and r > 0 and r % 16 == 0 and _native.available()
    return "native (AVX-512)" if runs else "BLAS (numpy)"


def _native_gram(X: Tensor) -> Tensor | None:
    """XᵀX by the native kernel, the batch split over torch's threads; None where it does not run."""
    d, r = X.shape[-2:]
    transposed = not X.is_contiguous() and X.mT.is_contiguous()  # stored column-major
    if _native is None or not (X.is_contiguous() or transposed) or X.numel() == 0 or r % 16:
        return None
    G = torch.empty(*X.shape[:-2], r, r, dtype=torch.float64)
    size = X.element_size()

    def run(i: int, n: int) -> bool:  # items i … i + n − 1
        x, g = X.data_ptr() + i * d * r * size, G.data_ptr() + i * r * r * size
        return bool(_native.gram(x, n, d, r, g, transposed))

    return G if _over_threads(G.numel() // (r * r), run) else None


def _native_congruence(G_A: Tensor, G_B: Tensor) -> tuple[Tensor, Tensor] | None:
    """(Lᵀ G_A L, info) with G_B = L·Lᵀ by the native kernel (info: the failed pivot, 0 where G_B
    is positive definite; there the result is 0); None where the kernel does not run."""
    r = G_A.shape[-1]
    tensors = (G_A, G_B)
    if _native is None or r % 16 or G_A.shape != G_B.shape or G_A.numel() == 0:
        return None
    if not all(t.device.type == "cpu" and t.dtype == torch.float64 for t in tensors):
        return None
    if not all(t.is_contiguous() and not t.requires_grad for t in tensors):
        return None
    M = torch.empty_like(G_A)
    info = torch.empty(G_A.shape[:-2], dtype=torch.int32)
    step = r * r * M.element_size()

    def run(i: int, n: int) -> bool:  # items i … i + n − 1
        a, b, m = (t.data_ptr() + i * step for t in (G_A, G_B, M))
        return bool(_native.congruence(a, b, n, r, m, info.data_ptr() + 4 * i))

    return (M, info) if _over_threads(info.numel(), run) else None


def _over_threads(n: int, run: Callable[[int, int], bool]) -> bool:
    """``run(i, count)`` over items 0 … n − 1 in one contiguous chunk per torch thread (a native
    kernel releases the GIL); True where every chunk ran."""
    step = -(-n // min(torch.get_num_threads(), n))
    if step == n:
        return run(0, n)
    with ThreadPoolExecutor(-(-n // step)) as pool:
        return all(pool.map(lambda i: run(i, min(step, n - i)), range(0, n, step)))


def gram_svdvals(G_A: Tensor, G_B: Tensor) -> tuple[Tensor, Tensor]:
    """σ(A·Bᵀ) from the Grams G_A = AᵀA and G_B = BᵀB (..., r, r), and where they are accurate.

    With the Cholesky factorization G_B = L·Lᵀ, σ(A·Bᵀ)² = λ(G_A G_B) = λ(Lᵀ G_A L), one symmetric
    r×r eigenvalue problem per product: no QR, no R_A, no r×r SVD.

    Accuracy: rounding in the Grams (‖E_A‖ ≲ u‖A‖², likewise for B), in L and in the eigensolver
    moves each λ by ≲ u‖A‖²‖B‖², so σᵢ by ≲ u‖A‖²‖B‖²/σᵢ: harmless for a well-conditioned product,
    √u·σ₁ for a rank-deficient one. Each product's bound is estimated a posteriori by
    q = u·tr(G_A)·tr(G_B) / (r·σ̃₁·σ̃_r); measured over 5000 random pairs (r = 1…96, condition
    numbers 1…1e5 on each side, aligned, anti-aligned and independent bases:
    benchmarks/gram_route_calibration.py; tests/test_gram_svdvals.py holds the bound),
    the error is at most 6·q·σ₁. ``ok`` is True where q ≤ :data:`GRAM_MAX_Q` (so the σ are within
    3e-12·σ₁ of exact) and the Cholesky succeeded; callers recompute the rest another way.

    Returns:
        σ (..., r) descending, and ok (...,) bool. Leading dims of G_A and G_B broadcast.
    """
    native = _native_congruence(G_A, G_B)  # Lᵀ G_A L in one pass, L's zeros skipped
    if native is not None:
        M, info = native
    else:
        L, info = torch.linalg.cholesky_ex(G_B)  # G_B = L·Lᵀ, (..., r, r)
        M = _matmul(_matmul(L.mT, G_A), L)
    # finite factors whose squares overflow (|x| ≳ 1e154) give an Inf Gram: not this route's
    finite = torch.isfinite(M).flatten(-2).all(-1)
    if not bool(finite.all()):
        M = torch.where(finite[..., None, None], M, 0.0)
    lam = torch.linalg.eigvalsh(M)  # ascending
    s = lam.clamp_min(0).sqrt().flip(-1)
    r = G_A.shape[-1]
    traces = _trace(G_A) * _trace(G_B)
    q = _UNIT_ROUNDOFF * traces / (r * s[..., 0] * s[..., -1])  # NaN or inf where σ̃_r = 0
    return s, (info == 0) & (q <= GRAM_MAX_Q) & finite


def _matmul(X: Tensor, Y: Tensor) -> Tensor:
    """X @ Y; small CPU float64 stacks through numpy (its BLAS: ≈ 1.4× torch's for 64×64 here)."""
    if X.device.type == Y.device.type == "cpu" and X.dtype == Y.dtype == torch.float64:
        if not (X.requires_grad or Y.requires_grad):
            return torch.from_numpy(np.matmul(_np(X), _np(Y)))
    return X @ Y


def _np(X: Tensor) -> np.ndarray:
    return X.resolve_conj().resolve_neg().numpy()


def _trace(G: Tensor) -> Tensor:
    return G.diagonal(dim1=-2, dim2=-1).sum(-1)


def r_factor(X: Tensor) -> Tensor:
    """The triangular factor R of a thin QR X = Q·R, without forming Q.

    X (..., d, r) → R (..., k, r), k = min(d, r), with XᵀX = RᵀR and ‖X‖_F = ‖R‖_F (R is unique up
    to the signs of its rows, which no spectrum depends on). Two routes, chosen per matrix:

    - **Gram + Cholesky** (float64, d ≥ r): R = chol(XᵀX)ᵀ. One GEMM-rate product XᵀX and an
      r×r Cholesky. Cholesky's backward error R̃ᵀR̃ = XᵀX + E, ‖E‖ ≲ c·u·‖X‖², perturbs R̃ by a
      factor (I + Δ)^{1/2} with ‖Δ‖ ≲ c·u·κ(X)², so σ(R̃_A R̃_Bᵀ) can move by ~u·κ²·σ₁ when the
      product's large directions are X's small ones (B large where A is small). Measured on such
      anti-aligned pairs: error ≤ 0.1·u·κ_F²·σ₁ (r = 16…64, tests/test_spectra.py). So it is used
      only where the computed κ_F(R) = ‖R‖_F·‖R⁻¹‖_F ≥ κ₂(X) is at most
      :data:`CHOLESKY_MAX_COND` = 500: every σ then stays within ~3e-12·σ₁ of a dense float64
      SVD. Random init (κ_F ≈ r·1.5) and trained heads (MiniLM: κ_F 33–47) take this route.
    - **Householder QR** (LAPACK ``geqrf``, backward stable for any condition number,
      rank-deficient X included) for every other matrix: a failed Cholesky, κ_F above the
      threshold (low-rank, rank-collapsed weights), float32/16 compute, or d < r.

    A large stack is decomposed in batches of :data:`QR_BATCH_ELEMENTS` elements, so the working
    copy stays in cache (docs/benchmarks.md, "spectra kernel"). ``geqrf`` works on a column-major
    copy, so X laid out column-major per matrix (X = Y.mT of a contiguous Y) saves a transpose.
    """
    per_call = max(1, QR_BATCH_ELEMENTS // max(1, X.shape[-2] * X.shape[-1]))
    if X.dim() == 2:
        return _r_one_call(X.unsqueeze(0))[0]
    if math.prod(X.shape[:-2]) <= per_call:
        return _r_one_call(X)
    flat = X.flatten(0, -3)
    parts = [_r_one_call(flat[i : i + per_call]) for i in range(0, flat.shape[0], per_call)]
    k = min(X.shape[-2], X.shape[-1])
    return torch.cat(parts).reshape(*X.shape[:-2], k, X.shape[-1])


def _r_householder(X: Tensor) -> Tensor:
    """R (n, k, r) of a stack X (n, d, r) by Householder QR; the reflectors are dropped."""
    k = min(X.shape[-2], X.shape[-1])
    packed, _ = torch.geqrf(X)  # R in the upper triangle, Householder vectors below
    return packed[..., :k, :].triu()


def _r_one_call(X: Tensor) -> Tensor:
    """R of a stack X (n, d, r): Gram + Cholesky where accurate (see :func:`r_factor`), else QR."""
    d, r = X.shape[-2], X.shape[-1]
    if X.dtype != torch.float64 or d < r or X.shape[0] == 0 or not CHOLESKY_MAX_COND > 0:
        return _r_householder(X)
    G = gram(X)  # (n, r, r)
    L, info = torch.linalg.cholesky_ex(G)  # XᵀX = L·Lᵀ; R = Lᵀ
    failed = info != 0
    eye = torch.eye(r, dtype=X.dtype, device=X.device)
    safe = torch.where(failed[..., None, None], eye, L)  # potri on a failed factor could raise
    # κ_F(R)² = ‖R‖_F²·‖R⁻¹‖_F² = tr(XᵀX)·tr((XᵀX)⁻¹), (XᵀX)⁻¹ = L⁻ᵀL⁻¹ from L (LAPACK potri)
    kappa_sq = _trace(G) * _trace(torch.cholesky_inverse(safe))  # κ_F(R) ≥ κ₂(X)
    fallback = failed | ~(kappa_sq <= CHOLESKY_MAX_COND**2)  # NaN-safe
    R = L.mT
    if bool(fallback.any()):
        R = R.clone()
        R[fallback] = _r_householder(X[fallback])
    return R


def spectrum_from_r(R_A: Tensor, R_B: Tensor) -> FactoredSpectrum:
    """σ(A·Bᵀ), balance and norm gap from the R factors of A = Q_A R_A and B = Q_B R_B.

    σ(A·Bᵀ) = σ(R_A R_Bᵀ); AᵀA = R_AᵀR_A, so balance = ‖R_AᵀR_A − R_BᵀR_B‖_F; ‖A‖_F = ‖R_A‖_F, so
    norm gap = ½(‖R_A‖_F² + ‖R_B‖_F²) − Σσ. Any R with A = Q·R and orthonormal Q works (a chain's
    cascade R from :func:`chain_r` too). Shapes: R_A (..., k₁, r), R_B (..., k₂, r).
    """
    s = torch.linalg.svdvals(R_A @ R_B.mT)
    bal = _balance(R_A, R_B)
    half_sq = 0.5 * (R_A.pow(2).sum((-2, -1)) + R_B.pow(2).sum((-2, -1)))
    return FactoredSpectrum(s, bal, half_sq - s.sum(-1))


def chain_r(
    factors: Sequence[Tensor], dtype: torch.dtype | None = torch.float64, side: str = "A"
) -> Tensor:
    """R with A₁A₂⋯A_k = Q·R (Q orthonormal columns) by a QR cascade, never forming the product.

    A₁ = Q₁R₁; then A₁A₂ = Q₁(R₁A₂) and R₁A₂ = Q₂R₂, …, so A₁⋯A_k = (Q₁Q₂⋯Q_k)·R_k with
    Q₁⋯Q_k orthonormal columns. Leading (batch) dims broadcast; an unbatched leading factor (2-D)
    is decomposed once and shared by every batch element.
    """
    if len(factors) == 0:
        raise RankdecayValueError(f"the {side} chain needs at least one factor; got none.")
    R: Tensor | None = None
    for i, F in enumerate(factors):
        if not isinstance(F, Tensor) or F.dim() < 2:
            shape = tuple(F.shape) if isinstance(F, Tensor) else type(F).__name__
            kind = RankdecayValueError if isinstance(F, Tensor) else RankdecayTypeError
            raise kind(f"factor {i} of the {side} chain must be a matrix (..., p, q); got {shape}.")
        if dtype is not None:
            F = F.to(dtype)
        require_finite(F, f"factor {i} of the {side} chain")
        if R is not None and R.shape[-1] != F.shape[-2]:
            raise RankdecayValueError(
                f"the {side} chain does not multiply: factor {i - 1} ends with {R.shape[-1]} "
                f"columns (after reduction) but factor {i} has {F.shape[-2]} rows."
            )
        M = F if R is None else R @ F  # (..., k, q): small whenever R is (a QR already shrank it)
        R = r_factor(M)  # (..., min(k, q), q)
    assert R is not None
    return R


def factored_svdvals_chain(
    a_factors: Sequence[Tensor],
    b_factors: Sequence[Tensor],
    dtype: torch.dtype | None = torch.float64,
) -> Tensor:
    """Singular values of (A₁A₂⋯A_k)(B₁B₂⋯B_m)ᵀ from the factors, by QR cascades.

    With A₁⋯A_k = Q_A R_A and B₁⋯B_m = Q_B R_B (Q with orthonormal columns; R from the cascade
    R₁ = qr(A₁), Rⱼ = qr(Rⱼ₋₁Aⱼ)), the product is Q_A (R_A R_Bᵀ) Q_Bᵀ, so its singular values are
    those of the small core R_A R_Bᵀ. No d×d matrix and no d×r chain product is ever formed; the
    largest matrix decomposed is a factor itself (or R·factor). Used for MLA's low-rank query and
    latent key/value paths and LoRA's W + s·B·A.

    Args:
        a_factors: A₁ (..., d₁, p₁), A₂ (..., p₁, p₂), …, A_k (..., p_{k−1}, r).
        b_factors: B₁ (..., d₂, q₁), …, B_m (..., q_{m−1}, r) — the same final width r.
            Leading dims broadcast across all factors (e.g. A₁ (d, p) shared, A₂ (H, p, r) per
            head); a factor without leading dims is decomposed once for all of them.
        dtype: compute dtype (float64 by default); ``None`` keeps the inputs'.

    Returns:
        (..., k) singular values, descending, k = min of the reduced ranks of both sides (all the
        non-zero ones); the product's remaining singular values are 0.
    """
    R_A = chain_r(a_factors, dtype, "A")
    R_B = chain_r(b_factors, dtype, "B")
    if R_A.shape[-1] != R_B.shape[-1]:
        raise RankdecayValueError(
            f"(A₁⋯A_k)(B₁⋯B_m)ᵀ needs both chains to end with the same width; got {R_A.shape[-1]} "
            f"and {R_B.shape[-1]}."
        )
    return torch.linalg.svdvals(R_A @ R_B.mT)


class FactoredSpectrum(NamedTuple):
    """What :func:`factored_spectrum` returns; each field has the factors' leading shape."""

    singular_values: Tensor  # (..., k), descending
    balance: Tensor  # (...,)  ‖AᵀA − BᵀB‖_F
    norm_gap: Tensor  # (...,)  ½(‖A‖_F² + ‖B‖_F²) − ‖A·Bᵀ‖_*


def factored_spectrum(
    A: Tensor, B: Tensor, dtype: torch.dtype | None = torch.float64
) -> FactoredSpectrum:
    """σ(A·Bᵀ), balance and norm gap together, from one O(d·r²) pass over each factor.

    On the Gram route (see :func:`factored_svdvals`) the balance is ‖AᵀA − BᵀB‖_F and the gap
    ½(tr AᵀA + tr BᵀB) − Σσ straight from the Grams. Otherwise, with A = Q_A R_A (Q_A orthonormal
    columns): AᵀA = R_AᵀR_A and ‖A‖_F = ‖R_A‖_F, so both come from the small R factors
    (:func:`spectrum_from_r`).

    Args:
        A: (..., d₁, r); B: (..., d₂, r). dtype as in :func:`factored_svdvals`.
    """
    A, B = _check_factors(A, B, dtype, finite=False)
    if not _gram_route(A, B):
        require_finite(A)
        require_finite(B)
        return spectrum_from_r(r_factor(A), r_factor(B))
    return _gram_spectrum(*_svdvals_and_grams(A, B))


def factored_svd(
    A: Tensor, B: Tensor, dtype: torch.dtype | None = torch.float64
) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD A·Bᵀ = U diag(S) Vᵀ from the factors.

    Returns:
        U (..., d₁, k), S (..., k), V (..., d₂, k) with k = min(d₁, d₂, r); U and V have
        orthonormal columns. U = Q_A U_M, V = Q_B V_M where M = R_A R_Bᵀ = U_M diag(S) V_Mᵀ.
    """
    A, B = _check_factors(A, B, dtype)
    Q_A, Q_B, M = _core(A, B)
    U_M, S, Vh_M = torch.linalg.svd(M, full_matrices=False)
    return Q_A @ U_M, S, Q_B @ Vh_M.mT


def _leading(s: Tensor) -> Tensor:
    return s[..., :1]


def rank(s: Tensor, rtol: float = DEFAULT_RTOL) -> Tensor:
    """Numerical rank #{σᵢ > rtol·σ₁} of singular values ``s`` (..., k) → (...,) int64."""
    _require_tensor(s, "s", "of singular values (..., k)")
    if not isinstance(rtol, (int, float)):
        raise RankdecayTypeError(
            f"rtol must be a number, got {type(rtol).__name__}; e.g. rtol=1e-2."
        )
    if rtol < 0:
        raise RankdecayValueError(f"rtol must be non-negative, got {rtol}.")
    if s.shape[-1] == 0:
        return torch.zeros(s.shape[:-1], dtype=torch.int64, device=s.device)
    return (s > rtol * _leading(s)).sum(-1)


def effective_rank(s: Tensor) -> Tensor:
    """Effective rank exp(−Σ pᵢ log pᵢ), pᵢ = σᵢ/Σσ (Roy & Vetterli 2007); 0 for the zero matrix.

    ``s``: (..., k) → (...,). Lies in [1, k] for a non-zero matrix; equals k iff all σᵢ are equal.
    """
    _require_tensor(s, "s", "of singular values (..., k)")
    total = s.sum(-1, keepdim=True)
    p = torch.where(total > 0, s / total.clamp_min(torch.finfo(s.dtype).tiny), torch.zeros_like(s))
    entropy = -(torch.where(p > 0, p * torch.log(p.clamp_min(torch.finfo(s.dtype).tiny)), 0.0)).sum(
        -1
    )
    return torch.where(total.squeeze(-1) > 0, torch.exp(entropy), torch.zeros_like(entropy))


def stable_rank(s: Tensor) -> Tensor:
    """Stable rank Σσᵢ² / σ₁² of ``s`` (..., k) → (...,); 0 for the zero matrix."""
    _require_tensor(s, "s", "of singular values (..., k)")
    if s.shape[-1] == 0:
        return s.new_zeros(s.shape[:-1])
    top = _leading(s).squeeze(-1)
    fro2 = (s * s).sum(-1)
    return torch.where(top > 0, fro2 / (top * top).clamp_min(torch.finfo(s.dtype).tiny), 0.0)


def nuclear_norm(s: Tensor) -> Tensor:
    """Nuclear norm Σσᵢ: (..., k) → (...,)."""
    _require_tensor(s, "s", "of singular values (..., k)")
    return s.sum(-1)


def frobenius_norm(s: Tensor) -> Tensor:
    """Frobenius norm √Σσᵢ²: (..., k) → (...,)."""
    _require_tensor(s, "s", "of singular values (..., k)")
    return torch.sqrt((s * s).sum(-1))


def spectral_norm(s: Tensor) -> Tensor:
    """Spectral norm σ₁: (..., k) → (...,); 0 for an empty spectrum."""
    _require_tensor(s, "s", "of singular values (..., k)")
    if s.shape[-1] == 0:
        return s.new_zeros(s.shape[:-1])
    return s.max(-1).values


def balance(A: Tensor, B: Tensor, dtype: torch.dtype | None = torch.float64) -> Tensor:
    """‖AᵀA − BᵀB‖_F for A (..., d₁, r), B (..., d₂, r) → (...,).

    Zero at every critical point of L(A·Bᵀ) + (λ/2)(‖A‖² + ‖B‖²) with λ > 0, and conserved by
    gradient flow on L(A·Bᵀ) alone.
    """
    A, B = _check_factors(A, B, dtype)
    return _balance(A, B)


def _balance(A: Tensor, B: Tensor) -> Tensor:
    """‖AᵀA − BᵀB‖_F = c²‖ÃᵀÃ − B̃ᵀB̃‖_F with Ã = A/c, B̃ = B/c and c the power of two nearest the
    largest |entry| of each pair (an exact scaling): squares of finite entries that overflow
    do not turn the difference into Inf − Inf = NaN (a result beyond float range is Inf)."""
    big = torch.maximum(A.detach().abs().amax((-2, -1)), B.detach().abs().amax((-2, -1)))
    c = torch.exp2(torch.log2(big.clamp_min(torch.finfo(big.dtype).tiny)).round())
    a, b = A / c[..., None, None], B / c[..., None, None]
    return torch.linalg.matrix_norm(a.mT @ a - b.mT @ b) * c * c


def norm_gap(A: Tensor, B: Tensor, dtype: torch.dtype | None = torch.float64) -> Tensor:
    """½(‖A‖_F² + ‖B‖_F²) − ‖A·Bᵀ‖_* ≥ 0 for A (..., d₁, r), B (..., d₂, r) → (...,).

    By the variational form of the nuclear norm this is non-negative, and zero iff the factors
    are balanced (AᵀA = BᵀB on the relevant subspace).
    """
    A, B = _check_factors(A, B, dtype)
    half_sq = 0.5 * (A.pow(2).sum((-2, -1)) + B.pow(2).sum((-2, -1)))
    return half_sq - factored_svdvals(A, B, dtype=None).sum(-1)


def spectral_metrics(s: Tensor, rtol: float = DEFAULT_RTOL) -> dict[str, Tensor]:
    """All spectrum-only metrics of ``s`` (..., k) as a dict of (...,) tensors."""
    return {
        "rank": rank(s, rtol),
        "effective_rank": effective_rank(s),
        "stable_rank": stable_rank(s),
        "nuclear_norm": nuclear_norm(s),
        "frobenius_norm": frobenius_norm(s),
        "spectral_norm": spectral_norm(s),
    }
