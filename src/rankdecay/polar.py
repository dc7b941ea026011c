"""Polar factor of a matrix: exact (SVD) or Newton–Schulz with a certified residual.

For W ∈ ℝ^{m×n} with thin SVD W = U Σ Vᵀ, the polar factor is polar(W) = U Vᵀ (the orthogonal /
semi-orthogonal matrix nearest to W; the gradient of the nuclear norm ‖W‖_* where W has full
rank). For a rank-deficient W we return the partial isometry U_S V_Sᵀ over the *range* S (the
singular values counted as non-zero); the null directions map to 0, which is the minimum-norm
subgradient of ‖W‖_*. The zero matrix maps to the zero matrix. All shapes (..., m, n) are batched
over the leading dimensions; m < n, m = n and m > n all work.

``method="svd"``
    Exact up to rounding: X = U diag(1[σᵢ > rcond·σ₁]) Vᵀ with rcond = max(m, n)·ε(dtype) by
    default (the numerical-rank cut of ``torch.linalg.matrix_rank``).

``method="newton_schulz"``
    Matrix multiplications only (fast on accelerators). Work on the smaller Gram side: if m < n
    iterate on Wᵀ and transpose back, so the Gram matrix G = XᵀX is k×k with k = min(m, n).
    Pre-scaling X₀ = W / ‖WᵀW‖_F^{1/2}: since ‖WᵀW‖_F = (Σσᵢ⁴)^{1/2} ≥ σ₁², every singular value
    of X₀ lies in [0, 1], and σ₁(X₀) ≥ k^{-1/4}. Iterate the quintic Newton–Schulz map

        X ← X · (15 I − 10 G + 3 G²) / 8,          G = XᵀX,

    which acts on each singular value as x ↦ f(x) = (15x − 10x³ + 3x⁵)/8: f is increasing,
    maps [0, 1] onto [0, 1], fixes 0 and 1, grows small values by 1.875× per step and converges
    to 1 with order 3 (f'(1) = f''(1) = 0). Singular vectors are unchanged.

    Residual (the stopping rule). With M = G² − G (eigenvalues g(g − 1), g = x²), every
    eigenvalue of G lies within r = (1 − √(1 − 4‖M‖₂))/2 ≈ ‖M‖₂ of {0, 1} when ‖M‖₂ < 1/4. So
    with Π the projector onto the eigenvectors of G with eigenvalue > ½ (the range S),

        ‖XᵀX − Π‖₂ ≤ r:   on the range ‖XᵀX − I‖ ≤ r, hence ‖X − U_S V_Sᵀ‖₂ ≤ r there
                          (|x − 1| ≤ |x² − 1| for x ≥ 0); off the range singular values ≤ √r.

    ‖M‖₂ is bounded from above without an eigen-decomposition by min(‖M‖_F, ‖M²‖_F^{1/2},
    ‖M⁴‖_F^{1/4}) (the last two only near convergence), so the reported residual is certified,
    not estimated. The iteration stops when r ≤ ``tol`` **and** at least k_min iterations were
    done, where k_min is the number of steps that lifts x₀ = rcond·k^{-1/4} above ½ (so every
    singular value ≥ rcond·σ₁, default rcond = 1e-3, is guaranteed to be in the range S;
    smaller ones are unresolved: NS maps each to ≈0 or ≈1 within the residual, whichever it
    reached). If ``max_iter`` is hit first, a :class:`PolarConvergenceWarning` names the
    residual, and the non-polar iterate is returned (diagnostics say ``converged=False``).
    Low-precision inputs (float16/bfloat16) are iterated in float32 and cast back.
``method="newton_schulz_fixed"``
    The fixed-step form of the LRD public code (``Chunjiang-Intelligence/low-rank-decay``):
    X₀ = W / (‖W‖_F + 1e-8), then ``steps`` (K, default 5) cubic Newton–Schulz steps
        X ← 1.5·X − 0.5·X (XᵀX),
    which act on each singular value of X₀ (σᵢ/‖W‖_F ∈ [0, 1]) as s ↦ 1.5s − 0.5s³, iterated K
    times. No convergence check: the Frobenius prescale puts small singular values far below 1
    (σᵢ/‖W‖_F ≤ 1/√rank for a flat spectrum), and K = 5 steps lift them only by ≤ 1.5⁵ ≈ 7.6×,
    so the result is **not** the polar factor but U·diag(φ_K(σᵢ/‖W‖_F))·Vᵀ with φ_K the K-fold
    map — a step that weights large singular values more than small ones.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal, overload

import torch
from torch import Tensor

from .errors import RankdecayTypeError, RankdecayValueError

__all__ = [
    "DEFAULT_FIXED_STEPS",
    "METHODS",
    "PolarConvergenceWarning",
    "PolarInfo",
    "newton_schulz_min_iterations",
    "polar",
]

Method = Literal["svd", "newton_schulz", "newton_schulz_fixed"]
METHODS: tuple[str, ...] = ("svd", "newton_schulz", "newton_schulz_fixed")
#: steps of the fixed-step cubic Newton–Schulz (the public LRD code's value)
DEFAULT_FIXED_STEPS = 5
#: added to ‖W‖_F in the fixed-step prescale (as in the public LRD code)
FIXED_PRESCALE_EPS = 1e-8
DEFAULT_NS_RCOND = 1e-3


class PolarConvergenceWarning(RuntimeWarning):
    """Newton–Schulz stopped at max_iter with a residual above tol."""


@dataclass
class PolarInfo:
    """Diagnostics of one :func:`polar` call.

    ``residual``: certified upper bound on ‖XᵀX − Π‖₂ (worst over the batch; Π = projector onto
    the range, see the module docstring); ``residuals``: per batch member (shape of W's leading
    dims); ``rank``: the number of singular values counted in the range, per batch member;
    ``iterations``: Newton–Schulz steps taken (0 for SVD); ``converged``: residual ≤ tol.
    """

    method: str
    iterations: int
    residual: float
    residuals: Tensor
    rank: Tensor
    converged: bool
    tol: float


def _ns_map(x: float) -> float:
    return (15.0 * x - 10.0 * x**3 + 3.0 * x**5) / 8.0


def newton_schulz_min_iterations(k: int, rcond: float = DEFAULT_NS_RCOND) -> int:
    """Steps of x ↦ (15x − 10x³ + 3x⁵)/8 that lift x₀ = rcond·k^{-1/4} above ½ (k = Gram size)."""
    if not 0 < rcond < 1:
        raise RankdecayValueError(
            f"polar: rcond must lie in (0, 1), got {rcond}; pass e.g. rcond=1e-4."
        )
    x = rcond * k ** (-0.25)
    n = 0
    while x < 0.5:
        x = _ns_map(x)
        n += 1
    return n


def _spectral_bound(M: Tensor) -> Tensor:
    """Upper bound on ‖M‖₂ for symmetric M (..., k, k): min(‖M‖_F, ‖M²‖_F^½, ‖M⁴‖_F^¼)."""
    b = torch.linalg.matrix_norm(M)
    M2 = M @ M
    b = torch.minimum(b, torch.linalg.matrix_norm(M2).sqrt())
    M4 = M2 @ M2
    return torch.minimum(b, torch.linalg.matrix_norm(M4).sqrt().sqrt())


def _range_residual(G: Tensor, G2: Tensor, tol: float, exact: bool = False) -> Tensor:
    """Certified r with ‖G − Π‖₂ ≤ r from M = G² − G; 1.0 where ‖M‖₂ ≥ ¼ (not yet separated).

    The cheap Frobenius bound is used unless it is too loose to decide (``exact`` forces the
    tighter bounds).
    """
    M = G2 - G
    fro = torch.linalg.matrix_norm(M)
    k = G.shape[-1]
    m = fro
    if exact or bool(((fro > tol) & (fro <= 4 * tol * math.sqrt(k))).any()):
        m = _spectral_bound(M)
    m = m.to(torch.float64)
    r = (1.0 - torch.sqrt(torch.clamp(1.0 - 4.0 * m, min=0.0))) / 2.0
    return torch.where(m < 0.25, r, torch.ones_like(r))


def _check(W: Tensor, method: str, tol: float) -> None:
    if method not in METHODS:
        raise RankdecayValueError(
            f"unknown polar method {method!r}; choose {', '.join(map(repr, METHODS))}."
        )
    if W.dim() < 2:
        raise RankdecayValueError(
            f"polar needs a matrix (..., m, n); got shape {tuple(W.shape)} — pass a 2-D weight."
        )
    if not tol > 0:
        raise RankdecayValueError(f"polar: tol must be positive, got {tol}; pass e.g. tol=1e-3.")
    if not W.is_floating_point():
        raise RankdecayTypeError(
            f"polar needs a floating-point tensor, got {W.dtype}; convert it with .float()."
        )


def _finite_or_raise(x: Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise RankdecayValueError(
            "polar: the matrix contains NaN or Inf, so it has no polar factor; check the weights "
            "(e.g. a diverged run) before applying Low-Rank Decay."
        )


@overload
def polar(
    W: Tensor,
    method: Method = ...,
    tol: float = ...,
    max_iter: int | None = ...,
    *,
    rcond: float | None = ...,
    steps: int = ...,
    return_info: Literal[False] = ...,
) -> Tensor: ...
@overload
def polar(
    W: Tensor,
    method: Method = ...,
    tol: float = ...,
    max_iter: int | None = ...,
    *,
    rcond: float | None = ...,
    steps: int = ...,
    return_info: Literal[True],
) -> tuple[Tensor, PolarInfo]: ...


def polar(
    W: Tensor,
    method: Method = "svd",
    tol: float = 1e-3,
    max_iter: int | None = None,
    *,
    rcond: float | None = None,
    steps: int = DEFAULT_FIXED_STEPS,
    return_info: bool = False,
) -> Tensor | tuple[Tensor, PolarInfo]:
    """Polar factor U Vᵀ of W (..., m, n) → (..., m, n), same dtype and device.

    Args:
        W: matrix or batch of matrices (any m, n).
        method: "svd" (exact), "newton_schulz" (matmul-only, certified; see the module
            docstring) or "newton_schulz_fixed" (``steps`` cubic steps from W/‖W‖_F, no check).
        tol: Newton–Schulz stops once the certified residual ‖XᵀX − I‖₂ on the range is ≤ tol.
        max_iter: Newton–Schulz step cap (default k_min + 30); hitting it with the residual above
            tol emits a :class:`PolarConvergenceWarning` naming the residual.
        rcond: range threshold relative to σ₁. SVD: σᵢ ≤ rcond·σ₁ map to 0 (default
            max(m, n)·ε). Newton–Schulz: σᵢ ≥ rcond·σ₁ are guaranteed resolved (default 1e-3).
        return_info: also return a :class:`PolarInfo` (iterations, residual, rank, converged).

    Raises:
        RankdecayValueError: unknown method, non-matrix input, tol ≤ 0, NaN/Inf entries.
        RankdecayTypeError: a tensor that is not floating point.
    """
    _check(W, method, tol)
    if W.numel() == 0:
        info = PolarInfo(
            method,
            0,
            0.0,
            W.new_zeros(W.shape[:-2]),
            torch.zeros(W.shape[:-2], dtype=torch.int64),
            True,
            tol,
        )
        return (W.clone(), info) if return_info else W.clone()
    orig_dtype = W.dtype
    work = W if W.dtype in (torch.float32, torch.float64) else W.float()
    wide = work.shape[-2] < work.shape[-1]
    X = work.mT if wide else work  # tall: (..., m, k), k ≤ m
    if method == "svd":
        out, info = _polar_svd(X, tol, rcond, diagnose=return_info)
    elif method == "newton_schulz_fixed":
        out, info = _polar_ns_fixed(X, steps, tol, diagnose=return_info)
    else:
        out, info = _polar_ns(X, tol, max_iter, rcond)
    if wide:
        out = out.mT
    out = out.to(orig_dtype).contiguous()
    return (out, info) if return_info else out


def _polar_svd(
    X: Tensor, tol: float, rcond: float | None, diagnose: bool = True
) -> tuple[Tensor, PolarInfo]:
    _finite_or_raise(X)
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    eps = torch.finfo(X.dtype).eps
    cut = (rcond if rcond is not None else max(X.shape[-2], X.shape[-1]) * eps) * S[..., :1]
    keep = (S > cut).to(X.dtype)
    out = (U * keep.unsqueeze(-2)) @ Vh
    if not diagnose:  # the residual costs a few k×k products; only on request
        res = torch.zeros(X.shape[:-2], dtype=torch.float64, device=X.device)
        info = PolarInfo("svd", 0, float("nan"), res, keep.sum(-1).to(torch.int64), True, tol)
        return out, info
    G = out.mT @ out
    res = _range_residual(G, G @ G, tol, exact=True)
    info = PolarInfo(
        "svd", 0, float(res.max()), res, keep.sum(-1).to(torch.int64), bool((res <= tol).all()), tol
    )
    return out, info


def _polar_ns(
    X: Tensor, tol: float, max_iter: int | None, rcond: float | None
) -> tuple[Tensor, PolarInfo]:
    k = X.shape[-1]
    k_min = newton_schulz_min_iterations(k, DEFAULT_NS_RCOND if rcond is None else rcond)
    cap = k_min + 30 if max_iter is None else int(max_iter)
    if cap < 0:
        raise RankdecayValueError(f"polar: max_iter must be ≥ 0, got {max_iter}.")
    G = X.mT @ X  # (..., k, k)
    s2 = torch.linalg.matrix_norm(G)  # ‖WᵀW‖_F = s², s ≥ σ₁
    _finite_or_raise(s2)
    s2 = s2.clamp_min(torch.finfo(X.dtype).tiny)  # zero matrix: X stays 0
    X = X / s2.sqrt()[..., None, None]
    G = G / s2[..., None, None]
    eye = torch.eye(k, dtype=X.dtype, device=X.device)
    it = 0
    while True:
        G2 = G @ G
        res = _range_residual(G, G2, tol)
        converged = bool((res <= tol).all())
        if (converged and it >= k_min) or it >= cap:
            break
        X = X @ ((15.0 * eye - 10.0 * G + 3.0 * G2) / 8.0)
        G = X.mT @ X
        it += 1
    rank = torch.diagonal(G, dim1=-2, dim2=-1).sum(-1).round().to(torch.int64)
    worst = float(res.max())
    ok = converged and it >= k_min
    if not ok:
        why = (
            f"residual ‖XᵀX − I‖ on the range = {worst:.3g} > tol {tol:g}"
            if not converged
            else f"only {it} < {k_min} steps were allowed, so singular values down to rcond·σ₁ are not resolved"
        )
        warnings.warn(
            f"Newton–Schulz polar did not converge in {it} iterations: {why}; raise max_iter, "
            "loosen tol or use method='svd'.",
            PolarConvergenceWarning,
            stacklevel=3,
        )
    return X, PolarInfo("newton_schulz", it, worst, res, rank, ok, tol)


def _polar_ns_fixed(
    X: Tensor, steps: int, tol: float, diagnose: bool = True
) -> tuple[Tensor, PolarInfo]:
    """K cubic Newton–Schulz steps X ← 1.5X − 0.5X(XᵀX) from X/(‖X‖_F + 1e-8), X (..., m, k).

    Diagnostics (on request): the certified residual of XᵀX against the projector onto its
    eigenvalues > ½ (``rank`` counts those), ``converged`` = residual ≤ tol — reported, never
    acted on.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise RankdecayValueError(
            f"polar: steps must be an integer ≥ 0, got {steps!r}; pass e.g. steps=5."
        )
    norm = torch.linalg.matrix_norm(X)  # Frobenius, (...,)
    _finite_or_raise(norm)
    Y = X / (norm + FIXED_PRESCALE_EPS)[..., None, None]
    for _ in range(steps):
        Y = 1.5 * Y - 0.5 * (Y @ (Y.mT @ Y))
    if not diagnose:
        res = torch.full(X.shape[:-2], float("nan"), dtype=torch.float64, device=X.device)
        rank = torch.zeros(X.shape[:-2], dtype=torch.int64, device=X.device)
        return Y, PolarInfo("newton_schulz_fixed", steps, float("nan"), res, rank, False, tol)
    G = Y.mT @ Y
    res = _range_residual(G, G @ G, tol, exact=True)
    rank = (torch.linalg.eigvalsh(G.double()) > 0.5).sum(-1)
    worst = float(res.max())
    return Y, PolarInfo("newton_schulz_fixed", steps, worst, res, rank, worst <= tol, tol)
