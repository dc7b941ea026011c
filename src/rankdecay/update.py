"""The update rules rankdecay writes itself, once: per-member gradient clipping and the Low-Rank
Decay step. (AdamW, Adam and SGD are torch's own: a solo run and every ensemble member step
with their ``torch.optim`` optimizer — the members with its fused kernel over their views of the
stack, measured in docs/benchmarks.md — so no optimizer formula is copied here.)

Each rule is a function of tensors and of hyperparameters that are either Python numbers or
tensors (optax's way): a tensor broadcasts against its operand, so M models stacked into
(M, *shape) tensors take per-member values as (M, 1, …, 1) columns (:func:`member_column`) and
one call acts on every member by its own hyperparameters.

- :func:`clip_grad_norm_`: g ← g·min(1, c/(‖g‖ + 10⁻⁶)) with ‖g‖ the global 2-norm over all the
  gradients (per member with ``members=True``), as ``torch.nn.utils.clip_grad_norm_``.
- Low-Rank Decay (:func:`low_rank_decay_delta`, called by :class:`rankdecay.decay.LowRankDecay`
  and :class:`rankdecay.ensemble.BatchedLowRankDecay`): X = U Σ Vᵀ, step c ≥ 0, X ← X − Δ with
  Δ = c·polar(X) = c·U Vᵀ (``mode="subtract"``: σᵢ → σᵢ − c) or Δ = X − U max(Σ − c, 0) Vᵀ
  (``mode="svt"``, the proximal step of c‖X‖_*).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import RankdecayValueError
from .polar import DEFAULT_FIXED_STEPS, PolarInfo
from .polar import polar as polar_factor

__all__ = [
    "Hyper",
    "clip_grad_norm_",
    "low_rank_decay_delta",
    "member_column",
]

#: a hyperparameter: one number for the whole tensor, or a tensor broadcasting against it
Hyper = float | Tensor


def member_column(values: Sequence[float] | Tensor, like: Tensor) -> Tensor:
    """Per-member numbers (M,) → an (M, 1, …, 1) tensor in ``like``'s dtype and device that
    broadcasts against ``like`` (M, *shape): member i's slice gets ``values[i]``."""
    t = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def clip_grad_norm_(grads: Sequence[Tensor], max_norm: Hyper, *, members: bool = False) -> Tensor:
    """g ← g·min(1, c/(‖g‖ + 10⁻⁶)) for every g, ‖g‖ the 2-norm of all ``grads`` together.

    ``members=True``: every g is (M, …) and each member is clipped by its own norm, with
    ``max_norm`` a number or an (M,) tensor (``inf`` = not clipped). Returns the norm(s): () or (M,).
    """
    if members:
        M = grads[0].shape[0]
        norms = torch.stack(
            [torch.linalg.vector_norm(g.reshape(M, -1), 2, dim=1) for g in grads], 1
        )
        total = torch.linalg.vector_norm(norms, 2, dim=1)  # (M,)
    else:
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_((member_column(coef, g) if members else coef).to(g.dtype))
    return total


def low_rank_decay_delta(
    X: Tensor,
    c: Hyper,
    *,
    mode: str = "subtract",
    polar: str = "svd",
    polar_steps: int = DEFAULT_FIXED_STEPS,
    tol: float = 1e-3,
    max_iter: int | None = None,
) -> tuple[Tensor, PolarInfo | None]:
    """The Low-Rank Decay step Δ (X ← X − Δ) of every matrix of X (…, m, n) → (Δ (…, m, n), info).

    Args:
        X: the matrices (a detached copy or view; not modified).
        c: the step size: a number, or a tensor broadcasting against X as (…, 1, 1).
        mode: "subtract" (Δ = c·polar(X)) or "svt" (Δ = X − U max(Σ − c, 0) Vᵀ, exact SVD).
        polar, polar_steps, tol, max_iter: the polar factor of "subtract" mode
            (:func:`rankdecay.polar.polar`); options are assumed checked by
            :func:`rankdecay.decay.check_lrd_options`.

    Returns:
        Δ, and the :class:`~rankdecay.polar.PolarInfo` of ``polar="newton_schulz"`` (None otherwise).
    """
    if mode == "svt":
        U, S, Vh = torch.linalg.svd(X, full_matrices=False)
        shrink = c[..., 0] if isinstance(c, Tensor) else c  # (…, 1, 1) → (…, 1) against S (…, k)
        return X - (U * torch.clamp(S - shrink, min=0.0).unsqueeze(-2)) @ Vh, None
    if mode != "subtract":
        raise RankdecayValueError(f"unknown LRD mode {mode!r}; choose 'subtract' or 'svt'.")
    if polar == "newton_schulz":
        P, info = polar_factor(X, "newton_schulz", tol, max_iter, return_info=True)
        return c * P, info
    return c * polar_factor(X, polar, steps=polar_steps), None  # type: ignore[arg-type]
