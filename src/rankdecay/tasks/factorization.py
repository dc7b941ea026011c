"""Matrix factorization with L2 on the factors: the non-transformer testbed of R1.

Problem (Kobayashi, Akram & von Oswald 2024, Fig. 1)::

    L(A, B) = ℓ(A·Bᵀ) + (λ/2)(‖A‖_F² + ‖B‖_F²),       A ∈ ℝ^{d₁×r}, B ∈ ℝ^{d₂×r}

with a data term ℓ(W) that is either

- full observation ("factorization"): ℓ(W) = ½‖W − D‖_F², e.g. D = diag(0.2, 0.4, 0.6, 0.8, 1);
- matrix sensing: ℓ(W) = (1/2m) Σᵢ (⟨Xᵢ, W⟩ − yᵢ)², yᵢ = ⟨Xᵢ, M⋆⟩, Xᵢ with i.i.d. N(0, 1) entries
  (E[(1/m) Σ Xᵢ⟨Xᵢ, Δ⟩] = Δ, so for m ≫ d₁d₂ it approaches full observation).

Closed forms used as ground truth (full observation, r ≥ rank D):

- The global minimizers satisfy A·Bᵀ = SVT_λ(D) = U max(Σ − λ, 0) Vᵀ (singular-value soft
  thresholding): the L2 problem equals the nuclear one ℓ(W) + λ‖W‖_* because
  ‖W‖_* = min_{ABᵀ=W} ½(‖A‖² + ‖B‖²).
- Balance. With G = ∇ℓ(A·Bᵀ), one gradient-descent step A' = (1−ηλ)A − ηGB, B' = (1−ηλ)B − ηGᵀA
  gives exactly

      C' = (1−ηλ)² C + η² (BᵀGᵀG B − AᵀG Gᵀ A),      C = AᵀA − BᵀB,

  so ‖C‖ contracts per step by (1−ηλ)² up to O(η²); under gradient flow (η → 0, t = ηk),
  C(t) = e^{−2λt} C(0). Without decay (λ = 0) small-step GD conserves C up to O(η²).
- Norm gap. ½(‖A‖² + ‖B‖²) − ‖A·Bᵀ‖_* ≤ ½‖AᵀA − BᵀB‖_* at every point, so the regularizer's gap
  between the L2 form and the nuclear form, λ·gap, is at most (λ/2)‖C‖_* and vanishes with C.

Optimizers: ``gd`` (plain gradient descent on L), ``adam_l2`` (torch.optim.Adam semantics with
weight_decay=λ: the decay λθ is added to the gradient — *coupled* L2, rescaled by Adam's
preconditioner) and ``adamw`` (torch.optim.AdamW semantics: θ ← θ(1 − ηλ) before the Adam step —
*decoupled* decay). All in float64 NumPy: the problem is tiny and the Python loop dominates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..errors import NonFiniteLossError, RankdecayValueError

__all__ = [
    "OPTIMIZERS",
    "FactorizationProblem",
    "History",
    "diagonal_problem",
    "fit_contraction",
    "nuclear_solution",
    "sensing_problem",
    "soft_threshold",
    "train_factorization",
]

Optimizer = Literal["gd", "adam_l2", "adamw"]
OPTIMIZERS: tuple[str, ...] = ("gd", "adam_l2", "adamw")


@dataclass
class FactorizationProblem:
    """Data term ℓ(W) of a factorization problem with W = A·Bᵀ of shape (d₁, d₂).

    ``target`` is D (full observation) or M⋆ (sensing). ``sensing`` is None for full observation,
    else the (m, d₁, d₂) measurement matrices Xᵢ with ``observations`` y (m,).
    """

    target: np.ndarray
    sensing: np.ndarray | None = None
    observations: np.ndarray | None = None
    name: str = "factorization"

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.target.shape[0]), int(self.target.shape[1])

    def loss_and_grad(self, W: np.ndarray) -> tuple[float, np.ndarray]:
        """ℓ(W) and ∇ℓ(W) (d₁, d₂)."""
        if self.sensing is None:
            R = W - self.target
            return 0.5 * float(np.sum(R * R)), R
        assert self.observations is not None
        m = self.sensing.shape[0]
        resid = np.tensordot(self.sensing, W, axes=([1, 2], [0, 1])) - self.observations  # (m,)
        grad = np.tensordot(resid, self.sensing, axes=(0, 0)) / m
        return 0.5 * float(resid @ resid) / m, grad

    def predicted_singular_values(self, lam: float) -> np.ndarray:
        """σ of argmin ℓ(W) + λ‖W‖_*, descending: max(σᵢ(D) − λ, 0) for full observation (closed
        form), by proximal gradient for sensing (see :func:`nuclear_solution`)."""
        if self.sensing is None:
            return soft_threshold(np.linalg.svd(self.target, compute_uv=False), lam)
        return np.linalg.svd(nuclear_solution(self, lam), compute_uv=False)


def soft_threshold(s: np.ndarray, lam: float) -> np.ndarray:
    """max(s − λ, 0), elementwise."""
    return np.maximum(np.asarray(s, dtype=np.float64) - lam, 0.0)


def nuclear_solution(
    problem: FactorizationProblem, lam: float, *, max_iter: int = 20000, tol: float = 1e-12
) -> np.ndarray:
    """argmin_W ℓ(W) + λ‖W‖_* — the convex problem the L2-on-factors problem is equivalent to.

    Full observation: SVT_λ(D) in closed form. Sensing: proximal gradient descent
    W ← SVT_{λ/L}(W − ∇ℓ(W)/L), L = λ_max((1/m) Σ vec(Xᵢ)vec(Xᵢ)ᵀ), until the update's norm is
    below ``tol`` (an independent ground truth for the factored runs).
    """
    if problem.sensing is None:
        U, s, Vt = np.linalg.svd(problem.target, full_matrices=False)
        return (U * soft_threshold(s, lam)) @ Vt
    X = problem.sensing.reshape(problem.sensing.shape[0], -1)
    L = float(np.linalg.eigvalsh(X.T @ X / X.shape[0])[-1])
    W = np.zeros(problem.shape)
    for _ in range(max_iter):
        _, G = problem.loss_and_grad(W)
        U, s, Vt = np.linalg.svd(W - G / L, full_matrices=False)
        W_new = (U * soft_threshold(s, lam / L)) @ Vt
        done = np.linalg.norm(W_new - W) < tol
        W = W_new
        if done:
            break
    return W


def diagonal_problem(values: Sequence[float] = (0.2, 0.4, 0.6, 0.8, 1.0)) -> FactorizationProblem:
    """The R1 problem: D = diag(values) (5×5 by default), full observation."""
    return FactorizationProblem(np.diag(np.asarray(values, dtype=np.float64)), name="diagonal")


def sensing_problem(
    d1: int = 8, d2: int = 8, rank: int = 2, n_measurements: int = 200, seed: int = 0
) -> FactorizationProblem:
    """Matrix sensing of a random rank-``rank`` M⋆ = U Vᵀ/√rank from ``n_measurements`` Gaussian Xᵢ."""
    if min(d1, d2, rank, n_measurements) < 1 or rank > min(d1, d2):
        raise RankdecayValueError(
            f"sensing problem needs positive sizes and rank ≤ min(d1, d2); got d1={d1}, d2={d2}, "
            f"rank={rank}, n_measurements={n_measurements} — fix these config values."
        )
    rng = np.random.default_rng(seed + 7919)
    M = (
        rng.standard_normal((d1, rank))
        @ rng.standard_normal((rank, d2))
        / math.sqrt(rank * max(d1, d2))
    )
    X = rng.standard_normal((n_measurements, d1, d2))
    y = np.tensordot(X, M, axes=([1, 2], [0, 1]))
    return FactorizationProblem(M, sensing=X, observations=y, name="sensing")


@dataclass
class History:
    """Trajectory of one run.

    Per step k = 0..steps (arrays of length steps + 1): ``balance`` ‖AᵀA − BᵀB‖_F.
    Per logged step (``rows``): step, loss, data_loss, singular_values (of A·Bᵀ), balance,
    balance_nuclear ‖C‖_*, norm_gap ½(‖A‖²+‖B‖²) − ‖ABᵀ‖_*, reg_gap λ·norm_gap and
    reg_gap_bound (λ/2)‖C‖_*.
    """

    balance: np.ndarray
    rows: list[dict[str, object]] = field(default_factory=list)
    A: np.ndarray | None = None
    B: np.ndarray | None = None


def _metrics(
    problem: FactorizationProblem, A: np.ndarray, B: np.ndarray, lam: float
) -> dict[str, object]:
    W = A @ B.T
    data_loss, _ = problem.loss_and_grad(W)
    s = np.linalg.svd(W, compute_uv=False)
    C = A.T @ A - B.T @ B
    c_eig = np.linalg.eigvalsh(C)
    half_sq = 0.5 * (float(np.sum(A * A)) + float(np.sum(B * B)))
    gap = half_sq - float(s.sum())
    c_nuc = float(np.abs(c_eig).sum())
    return {
        "loss": data_loss + lam * half_sq,
        "data_loss": data_loss,
        "singular_values": s.tolist(),
        "balance": float(np.linalg.norm(C)),
        "balance_nuclear": c_nuc,
        "norm_gap": gap,
        "reg_gap": lam * gap,
        "reg_gap_bound": 0.5 * lam * c_nuc,
    }


def train_factorization(
    problem: FactorizationProblem,
    *,
    lam: float,
    optimizer: str = "gd",
    lr: float = 0.1,
    steps: int = 3000,
    inner_dim: int | None = None,
    init_scale: float = 0.5,
    seed: int = 0,
    log_every: int = 50,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    A0: np.ndarray | None = None,
    B0: np.ndarray | None = None,
) -> History:
    """Optimize L(A, B) = ℓ(A·Bᵀ) + (λ/2)(‖A‖² + ‖B‖²) and record the trajectory.

    A, B start as ``init_scale`` × N(0, 1) of shapes (d₁, r), (d₂, r), r = ``inner_dim`` (default
    min(d₁, d₂)), unless ``A0``/``B0`` are given. ``optimizer``: "gd" (A ← A − η∇_A L),
    "adam_l2" (Adam on ∇L including λθ: coupled) or "adamw" (θ ← θ(1−ηλ), then Adam on ∇ℓ:
    decoupled), with torch's Adam/AdamW update rules (bias-corrected, ``eps`` outside the root).
    """
    if optimizer not in OPTIMIZERS:
        raise RankdecayValueError(
            f"unknown optimizer {optimizer!r} for the factorization task; choose one of {', '.join(OPTIMIZERS)}."
        )
    if lam < 0 or lr <= 0 or steps < 0 or log_every < 1:
        raise RankdecayValueError(
            f"factorization needs weight decay ≥ 0, lr > 0, steps ≥ 0 and log_every ≥ 1; got "
            f"λ={lam}, lr={lr}, steps={steps}, log_every={log_every} — fix these config values."
        )
    d1, d2 = problem.shape
    r = inner_dim or min(d1, d2)
    rng = np.random.default_rng(seed)
    A = (
        (init_scale * rng.standard_normal((d1, r)))
        if A0 is None
        else np.array(A0, dtype=np.float64)
    )
    B = (
        (init_scale * rng.standard_normal((d2, r)))
        if B0 is None
        else np.array(B0, dtype=np.float64)
    )
    balance = np.empty(steps + 1)
    hist = History(balance=balance)
    mA = np.zeros_like(A)
    mB = np.zeros_like(B)
    vA = np.zeros_like(A)
    vB = np.zeros_like(B)
    b1, b2 = betas
    for k in range(steps + 1):
        C = A.T @ A - B.T @ B
        balance[k] = math.sqrt(float(np.sum(C * C)))
        if k % log_every == 0 or k == steps:
            row = {"step": k, **_metrics(problem, A, B, lam)}
            if not math.isfinite(float(row["loss"])):  # type: ignore[arg-type]
                raise NonFiniteLossError(
                    f"the factorization loss became non-finite at step {k} (optimizer {optimizer}, "
                    f"lr {lr}); lower the learning rate."
                )
            hist.rows.append(row)
        if k == steps:
            break
        _, G = problem.loss_and_grad(A @ B.T)
        gA = G @ B
        gB = G.T @ A
        if optimizer == "gd":
            A, B = A - lr * (gA + lam * A), B - lr * (gB + lam * B)
            continue
        if optimizer == "adam_l2":
            gA = gA + lam * A
            gB = gB + lam * B
        else:  # adamw: decoupled decay first, as torch.optim.AdamW
            A = A * (1.0 - lr * lam)
            B = B * (1.0 - lr * lam)
        t = k + 1
        mA = b1 * mA + (1 - b1) * gA
        mB = b1 * mB + (1 - b1) * gB
        vA = b2 * vA + (1 - b2) * gA * gA
        vB = b2 * vB + (1 - b2) * gB * gB
        c1 = 1 - b1**t
        c2 = math.sqrt(1 - b2**t)
        A = A - lr * (mA / c1) / (np.sqrt(vA) / c2 + eps)
        B = B - lr * (mB / c1) / (np.sqrt(vB) / c2 + eps)
    hist.A, hist.B = A, B
    return hist


def fit_contraction(
    balance: np.ndarray, *, floor: float = 1e-11, skip: float = 0.2, min_points: int = 10
) -> tuple[float, int, int]:
    """Per-step contraction factor of ‖C_k‖ fitted by least squares on log‖C_k‖ = a + k·log ρ.

    The window starts after the first ``skip`` fraction of the steps above ``floor`` × ‖C_0‖
    (the loss-fitting transient, where the O(η²) term is largest) and ends at the last step
    above that floor (below it float64 round-off dominates). Returns (ρ, first, last) with the
    window's step indices; ρ = nan when fewer than ``min_points`` steps are usable.
    """
    b = np.asarray(balance, dtype=np.float64)
    if b.size == 0 or not b[0] > 0:
        return float("nan"), 0, 0
    above = np.nonzero(b > floor * b[0])[0]
    if above.size == 0:
        return float("nan"), 0, 0
    end = int(above[-1])
    # stop at the first step that falls below the floor (later bounces are round-off)
    below = np.nonzero(b[: end + 1] <= floor * b[0])[0]
    if below.size:
        end = int(below[0]) - 1
    start = int(skip * end)
    if end - start + 1 < min_points:
        return float("nan"), start, end
    k = np.arange(start, end + 1, dtype=np.float64)
    slope = np.polyfit(k, np.log(b[start : end + 1]), 1)[0]
    return float(math.exp(slope)), start, end
