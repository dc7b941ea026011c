"""Update rules written once: AdamW, Adam, SGD (momentum), gradient clipping, the Low-Rank Decay step.

Each rule is a function of tensors — the parameter, its gradient, its state — and of
hyperparameters that are either Python numbers or tensors (optax's way): a tensor broadcasts
against the parameter, so M models stacked into (M, *shape) tensors take per-member values as
(M, 1, …, 1) columns (:func:`member_column`) and one call updates every member by its own
hyperparameters. The single-model path and the batched ensemble therefore run the same code.

The optimizer steps update ``param`` and the state tensors **in place** (the trailing ``_``, as in
torch) and return None; call them under ``torch.no_grad()`` (they are decorated). Their formulas
are those of ``torch.optim``'s single-tensor implementations (float64 results equal torch's to
rounding, tested): with step t ≥ 1 (the count after this step), learning rate η, weight decay λ,

- :func:`adam_` with ``decoupled=True`` (AdamW) or ``False`` (Adam)::

      AdamW: θ ← θ(1 − ηλ)                Adam: g ← g + λθ          (coupled L2)
      m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²
      θ ← θ − η/(1 − β₁ᵗ) · m / (√v/√(1 − β₂ᵗ) + ε)

- :func:`sgd_`: g ← g + λθ; with momentum μ a buffer b ← g at t = 1, b ← μb + g after, g ← b;
  θ ← θ − ηg (no dampening, no Nesterov: torch's defaults).
- :func:`clip_grad_norm_`: g ← g·min(1, c/(‖g‖ + 10⁻⁶)) with ‖g‖ the global 2-norm over all the
  gradients (per member with ``members=True``), as ``torch.nn.utils.clip_grad_norm_``.

Low-Rank Decay (:func:`low_rank_decay_delta`, called by :class:`rankdecay.decay.LowRankDecay`
and :class:`rankdecay.ensemble.BatchedLowRankDecay`): X = U Σ Vᵀ, step c ≥ 0, X ← X − Δ with
Δ = c·polar(X) = c·U Vᵀ (``mode="subtract"``: σᵢ → σᵢ − c) or Δ = X − U max(Σ − c, 0) Vᵀ
(``mode="svt"``, the proximal step of c‖X‖_*).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import RankdecayValueError
from .polar import DEFAULT_FIXED_STEPS, PolarInfo
from .polar import polar as polar_factor

__all__ = [
    "Hyper",
    "adam_",
    "clip_grad_norm_",
    "low_rank_decay_delta",
    "member_column",
    "sgd_",
]

#: a hyperparameter: one number for the whole tensor, or a tensor broadcasting against it
Hyper = float | Tensor


def member_column(values: Sequence[float] | Tensor, like: Tensor) -> Tensor:
    """Per-member numbers (M,) → an (M, 1, …, 1) tensor in ``like``'s dtype and device that
    broadcasts against ``like`` (M, *shape): member i's slice gets ``values[i]``."""
    t = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def _sqrt(x: Hyper) -> Hyper:
    return x.sqrt() if isinstance(x, Tensor) else math.sqrt(x)


def _is_zero(x: Hyper) -> bool:
    """True only for the plain number 0 (a tensor is never inspected: no device sync)."""
    return not isinstance(x, Tensor) and x == 0


@torch.no_grad()
def adam_(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    *,
    step: int,
    lr: Hyper,
    beta1: Hyper = 0.9,
    beta2: Hyper = 0.999,
    eps: Hyper = 1e-8,
    weight_decay: Hyper = 0.0,
    decoupled: bool = True,
) -> None:
    """One AdamW (``decoupled=True``) or Adam (coupled L2) step, in place (module docstring).

    Args:
        param, grad, exp_avg, exp_avg_sq: tensors of one shape (…) — for stacked members (M, …);
            ``grad`` is not modified.
        step: t, the number of steps including this one (≥ 1), the same for every member.
        lr, beta1, beta2, eps, weight_decay: numbers, or tensors broadcasting against ``param``
            (e.g. :func:`member_column`), in ``param``'s dtype.
    """
    if not _is_zero(weight_decay):
        if decoupled:
            param.mul_(1 - lr * weight_decay)
        else:
            grad = grad.add(param * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad * (1 - beta2))
    bias1 = 1 - beta1**step
    bias2_sqrt = _sqrt(1 - beta2**step)
    denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(eps)
    param.addcdiv_(exp_avg * (lr / bias1), denom, value=-1.0)


@torch.no_grad()
def sgd_(
    param: Tensor,
    grad: Tensor,
    momentum_buffer: Tensor | None,
    *,
    step: int,
    lr: Hyper,
    momentum: Hyper = 0.0,
    weight_decay: Hyper = 0.0,
) -> None:
    """One SGD step with optional momentum and coupled L2, in place (module docstring).

    ``momentum_buffer`` (same shape as ``param``, or None for plain SGD) is set to g at
    ``step == 1`` and to μb + g after; a member with μ = 0 in a shared buffer gets b = g.
    """
    if not _is_zero(weight_decay):
        grad = grad.add(param * weight_decay)
    if momentum_buffer is not None:
        if step == 1:
            momentum_buffer.copy_(grad)
        else:
            momentum_buffer.mul_(momentum).add_(grad)
        grad = momentum_buffer
    param.sub_(grad * lr)


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
