"""One-layer softmax attention and its max-margin (attention-SVM) limits: the testbed of R2.

Model ("cross-attention" mode of Tarzanagh et al. 2023, "Transformers as SVMs"; Sheen et al.
2024, arXiv 2403.08699)::

    f(X, z) = vᵀ Xᵀ softmax(X W z),      X ∈ ℝ^{T×d} (tokens as rows), z ∈ ℝ^d, v ∈ ℝ^d fixed

trained on n samples (Xᵢ, zᵢ, yᵢ ∈ {±1}) with L(W) = (1/n) Σᵢ ℓ(yᵢ f(Xᵢ, zᵢ)), ℓ the logistic
loss log(1 + e^{−u}) or the exponential loss e^{−u}. Three parameterizations of W ∈ ℝ^{d×d}:

- ``"W"``:    W itself;
- ``"KQ"``:   W = K Qᵀ, K, Q ∈ ℝ^{d×m} (m = d by default);
- ``"diag"``: W = diag(k ⊙ q), k, q ∈ ℝ^d (diagonal K, Q).

Gradient (hand-vectorized over a batch of S independent problems). With sᵢ = Xᵢ W zᵢ ∈ ℝ^T,
pᵢ = softmax(sᵢ), hᵢ = Xᵢ v, fᵢ = pᵢᵀhᵢ and cᵢ = yᵢ ℓ'(yᵢ fᵢ) / n::

    ∂L/∂sᵢ = cᵢ · pᵢ ⊙ (hᵢ − fᵢ)           (sums to 0 over tokens)
    ∇_W L  = Σᵢ Σₜ (∂L/∂s_{iₜ}) (x_{iₜ} − x_{iaᵢ}) zᵢᵀ,   aᵢ = argmaxₜ s_{iₜ}

(subtracting x_{iaᵢ} is exact because ∂L/∂sᵢ sums to zero) and ∇_K = ∇_W L · Q,
∇_Q = (∇_W L)ᵀ K, ∇_k = diag(∇_W L) ⊙ q, ∇_q = diag(∇_W L) ⊙ k.

Numerics (why the gradient is returned as ``grad_scaled · exp(log_scale)``). Normalized GD makes
‖W‖ grow linearly (W) or quadratically (K Qᵀ) in the step count, so the softmax saturates: the
non-selected probabilities fall below float64's range (e^{−745}) and a naive gradient becomes
exactly 0, or is dominated by the rounding error of 1 − p_selected. Computing each token's
weight in log space (log pᵢₜ + log|cᵢ(hᵢₜ − fᵢ)|), subtracting the per-problem maximum and
referring tokens to the selected one keeps the gradient's *direction* exact whatever the scale
— which is all normalized GD uses.

Max-margin problems (αᵢ = the token the trained model selects)::

    min ‖W‖  s.t.  (x_{iαᵢ} − x_{iₜ})ᵀ W zᵢ ≥ 1   for all i and all t ≠ αᵢ

with ‖·‖ the Frobenius norm (``"fro"``, the limit of the W parameterization), the nuclear norm
(``"nuc"``, the limit of K Qᵀ), or, over diagonal W = diag(w), the ℓ1 norm of w (``"diag_l1"``,
the limit of diagonal K, Q; equal to the nuclear norm of diag(w)) and the ℓ2 norm of w
(``"diag_l2"``, the contrast). Solved with cvxpy + Clarabel (extra ``svm``).

Data (our choices where the papers' details could not be confirmed, see docs/reproductions.md):
tokens and queries i.i.d. Gaussian normalized to the unit sphere; v Gaussian normalized to unit
norm; labels yᵢ uniform ±1; initial weights i.i.d. N(0, init_scale²) entries. Every seed has its
own generators, so a seed's problem does not depend on which other seeds share its batch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..errors import MissingExtraError, NonFiniteLossError, RankdecayError, RankdecayValueError
from .base import step_generator

__all__ = [
    "LOSSES",
    "PARAMETERIZATIONS",
    "SVMS_FOR",
    "SVM_NORMS",
    "AttentionSVMData",
    "LossGrad",
    "SVMInfeasibleError",
    "SVMSolution",
    "TrainResult",
    "attention_loss",
    "attention_svm",
    "combine",
    "conservation_drift",
    "correlation",
    "init_params",
    "loss_and_grad",
    "loss_and_grad_naive",
    "make_data",
    "param_grads",
    "selected_tokens",
    "solve_attention_svm",
    "svm_constraints",
    "train",
]

Parameterization = Literal["W", "KQ", "diag"]
Loss = Literal["logistic", "exponential"]
SVMNorm = Literal["fro", "nuc", "diag_l1", "diag_l2"]
PARAMETERIZATIONS: tuple[str, ...] = ("W", "KQ", "diag")
LOSSES: tuple[str, ...] = ("logistic", "exponential")
SVM_NORMS: tuple[str, ...] = ("fro", "nuc", "diag_l1", "diag_l2")
#: the SVMs each parameterization is compared with (the first is the one theory predicts)
SVMS_FOR: dict[str, tuple[str, ...]] = {
    "W": ("fro", "nuc"),
    "KQ": ("nuc", "fro"),
    "diag": ("diag_l1", "diag_l2"),
}


def _check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise RankdecayValueError(
            f"unknown {what} {value!r}; choose one of {', '.join(map(repr, choices))}."
        )


# ------------------------------------------------------------------------------------ data


@dataclass
class AttentionSVMData:
    """A batch of S independent attention-classification problems (one per seed).

    Shapes: ``X`` (S, n, T, d) unit-norm tokens, ``z`` (S, n, d) unit queries, ``v`` (S, d) the
    fixed unit head, ``y`` (S, n) labels ±1. ``h = X v`` (S, n, T) are the token scores vᵀx.
    """

    X: Tensor
    z: Tensor
    v: Tensor
    y: Tensor
    seeds: tuple[int, ...]
    h: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.h = torch.einsum("sntd,sd->snt", self.X, self.v)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        S, n, T, d = self.X.shape
        return int(S), int(n), int(T), int(d)

    def select(self, index: Sequence[int]) -> AttentionSVMData:
        idx = torch.as_tensor(list(index), dtype=torch.long)
        return AttentionSVMData(
            self.X[idx],
            self.z[idx],
            self.v[idx],
            self.y[idx],
            tuple(self.seeds[i] for i in idx.tolist()),
        )

    def optimal_tokens(self) -> Tensor:
        """(S, n) index of the token with the largest score yᵢ vᵀx_{iₜ} (the globally optimal choice)."""
        return (self.h * self.y[..., None]).argmax(-1)


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def make_data(
    seeds: Sequence[int], n: int = 6, T: int = 8, d: int = 10, dtype: torch.dtype = torch.float64
) -> AttentionSVMData:
    """Draw one problem per seed (see the module docstring for the distribution)."""
    if n < 1 or T < 2 or d < 1:
        raise RankdecayValueError(
            f"the attention-SVM problem needs n ≥ 1, T ≥ 2, d ≥ 1 (got n={n}, T={T}, d={d}); fix the config."
        )
    if len(seeds) == 0:
        raise RankdecayValueError("no seeds given; set n_seeds ≥ 1.")
    Xs, zs, vs, ys = [], [], [], []
    for s in seeds:
        g = step_generator(int(s), "attention-svm-data")
        Xs.append(_unit(torch.randn(n, T, d, generator=g, dtype=torch.float64)))
        zs.append(_unit(torch.randn(n, d, generator=g, dtype=torch.float64)))
        vs.append(_unit(torch.randn(d, generator=g, dtype=torch.float64)))
        ys.append(torch.randint(0, 2, (n,), generator=g).to(torch.float64) * 2.0 - 1.0)
    return AttentionSVMData(
        torch.stack(Xs).to(dtype),
        torch.stack(zs).to(dtype),
        torch.stack(vs).to(dtype),
        torch.stack(ys).to(dtype),
        tuple(int(s) for s in seeds),
    )


# ------------------------------------------------------------------------------------ model


def init_params(
    param: str,
    seeds: Sequence[int],
    d: int,
    scale: float,
    width: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> dict[str, Tensor]:
    """Initial parameters, entries i.i.d. N(0, scale²), one generator per seed.

    ``"W"`` → {"W": (S, d, d)}; ``"KQ"`` → {"K", "Q": (S, d, m)}, m = ``width`` or d;
    ``"diag"`` → {"k", "q": (S, d)}.
    """
    _check_choice(param, PARAMETERIZATIONS, "parameterization")
    m = d if width is None else int(width)
    if m < 1:
        raise RankdecayValueError(f"the K, Q width must be ≥ 1 (got {m}); fix kq_width.")
    shapes = {"W": {"W": (d, d)}, "KQ": {"K": (d, m), "Q": (d, m)}, "diag": {"k": (d,), "q": (d,)}}[
        param
    ]
    out: dict[str, list[Tensor]] = {k: [] for k in shapes}
    for s in seeds:
        g = step_generator(int(s), f"attention-svm-init-{param}")
        for name, shape in shapes.items():
            out[name].append(scale * torch.randn(*shape, generator=g, dtype=torch.float64))
    return {k: torch.stack(v).to(dtype) for k, v in out.items()}


def combine(param: str, params: dict[str, Tensor]) -> Tensor:
    """The attention matrix W (S, d, d) of a parameterization."""
    if param == "W":
        return params["W"]
    if param == "KQ":
        return params["K"] @ params["Q"].mT
    if param == "diag":
        return torch.diag_embed(params["k"] * params["q"])
    _check_choice(param, PARAMETERIZATIONS, "parameterization")
    raise AssertionError  # pragma: no cover


def param_grads(param: str, params: dict[str, Tensor], G: Tensor) -> dict[str, Tensor]:
    """Chain rule from G = ∇_W L (S, d, d) to the parameters (see the module docstring)."""
    if param == "W":
        return {"W": G}
    if param == "KQ":
        return {"K": G @ params["Q"], "Q": G.mT @ params["K"]}
    if param == "diag":
        g = torch.diagonal(G, dim1=-2, dim2=-1)
        return {"k": g * params["q"], "q": g * params["k"]}
    _check_choice(param, PARAMETERIZATIONS, "parameterization")
    raise AssertionError  # pragma: no cover


def _loss_terms(u: Tensor, loss: str) -> tuple[Tensor, Tensor]:
    """ℓ(u) and ℓ'(u)."""
    if loss == "logistic":
        return torch.nn.functional.softplus(-u), -torch.sigmoid(-u)
    if loss == "exponential":
        e = torch.exp(-u)
        return e, -e
    _check_choice(loss, LOSSES, "loss")
    raise AssertionError  # pragma: no cover


def attention_loss(data: AttentionSVMData, W: Tensor, loss: str) -> Tensor:
    """Reference (autograd-friendly) loss (S,): (1/n) Σᵢ ℓ(yᵢ vᵀXᵢᵀ softmax(Xᵢ W zᵢ))."""
    s = torch.einsum("sntd,sde,sne->snt", data.X, W, data.z)
    f = torch.einsum("snt,sntd,sd->sn", torch.softmax(s, -1), data.X, data.v)
    return _loss_terms(data.y * f, loss)[0].mean(-1)


@dataclass
class LossGrad:
    """Loss (S,), ∇_W L = ``grad_scaled · exp(log_scale)`` ((S, d, d) and (S,)), probabilities (S, n, T)."""

    loss: Tensor
    grad_scaled: Tensor
    log_scale: Tensor
    probs: Tensor

    @property
    def grad(self) -> Tensor:
        """The gradient itself (may underflow to 0 where the softmax is saturated)."""
        return self.grad_scaled * torch.exp(self.log_scale)[:, None, None]


def loss_and_grad(data: AttentionSVMData, W: Tensor, loss: str) -> LossGrad:
    """Loss and ∇_W L for a batch W (S, d, d), exact in direction at any scale (module docstring)."""
    _check_choice(loss, LOSSES, "loss")
    X, z, h, y = data.X, data.z, data.h, data.y
    n, d = X.shape[1], X.shape[-1]
    s = torch.einsum("sntd,sde,sne->snt", X, W, z)
    logp = torch.log_softmax(s, -1)
    p = logp.exp()
    a = s.argmax(-1, keepdim=True)  # (S, n, 1) the selected (most attended) token
    ha = torch.gather(h, -1, a)
    hd = h - ha  # h_t − h_a, exact
    fd = (p * hd).sum(-1)  # f − h_a, accurate even when p_a rounds to 1
    u = y * (ha.squeeze(-1) + fd)
    ell, dell = _loss_terms(u, loss)
    c = dell * y / n  # ∂L/∂f (S, n)
    coef = c[..., None] * (hd - fd[..., None])  # ∂L/∂s = coef · p
    others = torch.ones_like(s, dtype=torch.bool).scatter_(-1, a, False)
    keep = others & (coef != 0)
    logmag = torch.where(
        keep, logp + torch.log(coef.abs().where(keep, torch.ones_like(coef))), -torch.inf
    )
    M = logmag.flatten(1).max(1).values  # (S,)
    M = torch.where(torch.isfinite(M), M, torch.zeros_like(M))
    w = torch.where(keep, torch.sign(coef) * torch.exp(logmag - M[:, None, None]), 0.0)
    Xa = torch.gather(X, 2, a[..., None].expand(-1, -1, 1, d))
    G = torch.einsum("snt,sntd,sne->sde", w, X - Xa, z)
    return LossGrad(ell.mean(-1), G, M, p)


def loss_and_grad_naive(data: AttentionSVMData, W: Tensor, loss: str) -> LossGrad:
    """The textbook float64 gradient ∇_W L = Σᵢ Σₜ cᵢ pᵢₜ (hᵢₜ − fᵢ) x_{iₜ} zᵢᵀ (what autograd
    computes). Kept to show what goes wrong once the softmax saturates (``log_scale`` is 0)."""
    _check_choice(loss, LOSSES, "loss")
    X, z, h, y = data.X, data.z, data.h, data.y
    n = X.shape[1]
    p = torch.softmax(torch.einsum("sntd,sde,sne->snt", X, W, z), -1)
    f = (p * h).sum(-1)
    ell, dell = _loss_terms(y * f, loss)
    ds = (dell * y / n)[..., None] * p * (h - f[..., None])
    G = torch.einsum("snt,sntd,sne->sde", ds, X, z)
    return LossGrad(ell.mean(-1), G, torch.zeros(G.shape[0], dtype=G.dtype), p)


# ------------------------------------------------------------------------------------ training


@dataclass
class TrainResult:
    """History of one parameterization × loss over a batch of seeds.

    ``steps`` (L,) logged iterations; ``W`` (L, S, d, d) the attention matrix at each; ``loss``
    (L, S); ``balance`` (L, S, m, m) the matrix KᵀK − QᵀQ (diag(k⊙k − q⊙q) for ``"diag"``, zeros
    (L, S, 1, 1) for ``"W"``); final ``params``
    and ``probs`` (S, n, T).
    """

    param: str
    loss_name: str
    steps: list[int]
    W: Tensor
    loss: Tensor
    balance: Tensor
    params: dict[str, Tensor]
    probs: Tensor


def _balance(param: str, params: dict[str, Tensor]) -> Tensor:
    if param == "KQ":
        K, Q = params["K"], params["Q"]
        return K.mT @ K - Q.mT @ Q
    if param == "diag":
        return torch.diag_embed(params["k"] ** 2 - params["q"] ** 2)
    W = params["W"]
    return torch.zeros(W.shape[0], 1, 1, dtype=W.dtype)


def _fro(x: Tensor) -> Tensor:
    return x.flatten(1).norm(dim=1)


def train(
    data: AttentionSVMData,
    param: str,
    loss: str,
    *,
    steps: int = 2000,
    lr: float = 0.1,
    normalized: bool = True,
    init_scale: float = 0.01,
    kq_width: int | None = None,
    log_every: int = 10,
    params: dict[str, Tensor] | None = None,
    callback: Callable[[int], None] | None = None,
    gradient: str = "exact",
) -> TrainResult:
    """(Normalized) gradient descent on L, vectorized over the S problems of ``data``.

    Normalized GD: each parameter P ← P − lr · ∇_P L / ‖∇_P L‖_F (per problem; a zero gradient
    leaves P unchanged). Plain GD (``normalized=False``): P ← P − lr · ∇_P L.
    Logs at every ``log_every``-th iteration and at the last one. ``gradient="naive"`` uses
    :func:`loss_and_grad_naive` instead of the saturation-exact :func:`loss_and_grad`.
    """
    _check_choice(param, PARAMETERIZATIONS, "parameterization")
    _check_choice(loss, LOSSES, "loss")
    _check_choice(gradient, ("exact", "naive"), "gradient")
    grad_fn = loss_and_grad if gradient == "exact" else loss_and_grad_naive
    if steps < 0 or log_every < 1 or not (lr > 0 and math.isfinite(lr)):
        raise RankdecayValueError(
            f"need steps ≥ 0, log_every ≥ 1 and a finite lr > 0 (got {steps}, {log_every}, {lr}); fix the config."
        )
    S, _, _, d = data.shape
    if params is None:
        params = init_params(param, data.seeds, d, init_scale, kq_width, data.X.dtype)
    params = {k: v.clone() for k, v in params.items()}
    logged: list[int] = []
    Ws: list[Tensor] = []
    losses: list[Tensor] = []
    bal: list[Tensor] = []
    for it in range(steps + 1):
        W = combine(param, params)
        lg = grad_fn(data, W, loss)
        if it % log_every == 0 or it == steps:
            logged.append(it)
            Ws.append(W.clone())
            losses.append(lg.loss)
            bal.append(_balance(param, params))
        if it == steps:
            break
        grads = param_grads(param, params, lg.grad_scaled)
        if normalized:
            for k, g in grads.items():
                norm = _fro(g)
                factor = torch.where(norm > 0, lr / norm.clamp_min(torch.finfo(g.dtype).tiny), 0.0)
                params[k] = params[k] - factor.view(-1, *([1] * (g.dim() - 1))) * g
        else:
            scale = torch.exp(lg.log_scale)
            for k, g in grads.items():
                params[k] = params[k] - lr * scale.view(-1, *([1] * (g.dim() - 1))) * g
        if callback is not None:
            callback(it + 1)
    if not all(torch.isfinite(v).all() for v in params.values()):
        raise NonFiniteLossError(
            f"the {param} parameters became NaN/Inf under the {loss} loss; lower lr or the number of steps."
        )
    return TrainResult(
        param,
        loss,
        logged,
        torch.stack(Ws),
        torch.stack(losses),
        torch.stack(bal),
        params,
        lg.probs,
    )


def selected_tokens(probs: Tensor) -> Tensor:
    """αᵢ = argmaxₜ pᵢₜ: the token each sample attends to most. (S, n, T) → (S, n)."""
    return probs.argmax(-1)


def correlation(W1: Tensor, W2: Tensor) -> Tensor:
    """corr(W₁, W₂) = ⟨W₁, W₂⟩ / (‖W₁‖_F ‖W₂‖_F) over the last two dims (batched; 0 if either is 0)."""
    W1 = torch.as_tensor(W1, dtype=torch.float64)
    W2 = torch.as_tensor(W2, dtype=torch.float64)
    # normalize first so that huge iterates (‖KQᵀ‖ ~ 1e4 and more) cannot overflow
    n1 = W1.flatten(-2).norm(dim=-1)[..., None, None]
    n2 = W2.flatten(-2).norm(dim=-1)[..., None, None]
    U1 = torch.where(n1 > 0, W1 / n1.clamp_min(1e-300), 0.0)
    U2 = torch.where(n2 > 0, W2 / n2.clamp_min(1e-300), 0.0)
    return (U1 * U2).sum((-2, -1))


def conservation_drift(
    data: AttentionSVMData,
    loss: str,
    *,
    steps: int = 2000,
    lr: float = 1e-3,
    init_scale: float = 0.5,
    kq_width: int | None = None,
    normalized: bool = False,
    callback: Callable[[int], None] | None = None,
) -> dict[str, Tensor]:
    """Relative drift of C = KᵀK − QᵀQ under GD on L(K Qᵀ) without regularization.

    Gradient flow conserves C exactly (∇_K L = G Q, ∇_Q L = Gᵀ K give d/dt C = 0); a GD step
    changes it by lr²(∇_Kᵀ∇_K − ∇_Qᵀ∇_Q). Returns per problem (S,): ``drift`` =
    maxₜ ‖C_t − C_0‖_F / ‖C_0‖_F over about 200 logged steps and ``moved`` = ‖W_T − W_0‖_F / ‖W_0‖_F (how far W travelled,
    so a small drift is not just a frozen run). ``callback(iteration)`` as in :func:`train`.
    """
    res = train(
        data,
        "KQ",
        loss,
        steps=steps,
        lr=lr,
        normalized=normalized,
        init_scale=init_scale,
        kq_width=kq_width,
        log_every=max(1, steps // 200),
        callback=callback,
    )
    C0 = res.balance[0]
    drift = _fro((res.balance - C0[None]).flatten(0, 1)).view(len(res.steps), -1).max(0).values
    moved = _fro(res.W[-1] - res.W[0]) / _fro(res.W[0])
    return {"drift": drift / _fro(C0), "moved": moved}


# ------------------------------------------------------------------------------------ SVMs


class SVMInfeasibleError(RankdecayError):
    """No W satisfies the attention-SVM constraints for the given token selection."""


@dataclass
class SVMSolution:
    """One attention-SVM solve. ``W`` (d, d) is None unless ``status`` is "optimal" or
    "optimal_inaccurate"; ``objective`` is the norm of W; ``min_margin`` = min over constraints of
    (x_{iαᵢ} − x_{iₜ})ᵀ W zᵢ (≥ 1 up to solver tolerance); ``duals`` (m,) the constraints'
    multipliers (for the Frobenius problem min ½‖W‖², W = Σ λₖ Aₖ)."""

    norm: str
    status: str
    W: np.ndarray | None
    objective: float
    min_margin: float
    duals: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.W is not None


def svm_constraints(
    X: Tensor | np.ndarray, z: Tensor | np.ndarray, alpha: Sequence[int]
) -> np.ndarray:
    """Constraint matrices Aₖ = (x_{iαᵢ} − x_{iₜ}) zᵢᵀ for every i, t ≠ αᵢ: (n(T−1), d, d).

    ``X`` (n, T, d), ``z`` (n, d), ``alpha`` (n,) for one problem; ⟨Aₖ, W⟩ ≥ 1 are the constraints.
    """
    X = np.asarray(X, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    n, T, _ = X.shape
    rows = []
    for i in range(n):
        a = int(alpha[i])
        if not 0 <= a < T:
            raise RankdecayValueError(
                f"selected token {a} of sample {i} is out of range 0..{T - 1}."
            )
        for t in range(T):
            if t != a:
                rows.append(np.outer(X[i, a] - X[i, t], z[i]))
    return np.stack(rows)


_PROBLEMS: dict[tuple[str, int, int, str], tuple[Any, Any, Any, Any]] = {}


def _cvxpy() -> Any:
    try:
        import cvxpy as cp
    except ImportError:
        raise MissingExtraError(
            "solving the attention SVM needs cvxpy with the Clarabel solver; install them with "
            "`pip install rankdecay[svm]`."
        ) from None
    return cp


def _problem(norm: str, m: int, d: int, solver: str) -> tuple[Any, Any, Any, Any]:
    """A cached, DPP-parameterized cvxpy problem: (problem, A parameter, variable, constraint)."""
    key = (norm, m, d, solver)
    if key not in _PROBLEMS:
        cp = _cvxpy()
        if norm.startswith("diag"):
            A = cp.Parameter((m, d))
            w = cp.Variable(d)
            obj = cp.norm1(w) if norm == "diag_l1" else 0.5 * cp.sum_squares(w)
            con = A @ w >= 1
        else:
            A = cp.Parameter((m, d * d))
            w = cp.Variable((d, d))
            obj = cp.normNuc(w) if norm == "nuc" else 0.5 * cp.sum_squares(w)
            con = A @ cp.vec(w, order="C") >= 1
        prob = cp.Problem(cp.Minimize(obj), [con])
        # The first solve of a parameterized problem compiles it and rounds differently (~1e-13)
        # from every later solve, which reuses the compiled form. Compile it here, on a dummy
        # (infeasible) instance, so that every real solve takes the same path and a problem's
        # solution never depends on which problems this process solved before (a resumed run
        # then writes the same numbers as an uninterrupted one).
        A.value = np.zeros(A.shape)
        with contextlib.suppress(cp.error.SolverError):
            prob.solve(solver=solver)
        _PROBLEMS[key] = (prob, A, w, con)
    return _PROBLEMS[key]


def solve_attention_svm(
    X: Tensor | np.ndarray,
    z: Tensor | np.ndarray,
    alpha: Sequence[int],
    norm: str = "fro",
    solver: str = "CLARABEL",
) -> SVMSolution:
    """Solve min ‖W‖ s.t. (x_{iαᵢ} − x_{iₜ})ᵀ W zᵢ ≥ 1 ∀ i, t ≠ αᵢ for one problem.

    ``norm``: "fro" | "nuc" | "diag_l1" | "diag_l2" (the last two over diagonal W). Never raises
    for an infeasible problem: the status says so (see :func:`attention_svm` for the strict form).
    """
    _check_choice(norm, SVM_NORMS, "SVM norm")
    cp = _cvxpy()
    A3 = svm_constraints(X, z, alpha)
    m, d, _ = A3.shape
    A = np.stack([np.diag(a) for a in A3]) if norm.startswith("diag") else A3.reshape(m, d * d)
    prob, Ap, var, con = _problem(norm, m, d, solver)
    Ap.value = A
    try:
        prob.solve(solver=solver)
    except cp.error.SolverError as exc:
        if solver not in cp.installed_solvers():
            raise MissingExtraError(
                f"the cvxpy solver {solver} is not installed; install it with `pip install rankdecay[svm]`."
            ) from None
        return SVMSolution(norm, f"solver_error: {exc}", None, math.nan, math.nan)
    status = str(prob.status)
    if status not in ("optimal", "optimal_inaccurate") or var.value is None:
        return SVMSolution(norm, status, None, math.nan, math.nan)
    value = np.asarray(var.value, dtype=np.float64)
    W = np.diag(value) if norm.startswith("diag") else value
    margins = np.einsum("kde,de->k", A3, W)
    objective = {
        "fro": float(np.linalg.norm(W)),
        "nuc": float(np.linalg.svd(W, compute_uv=False).sum()),
        "diag_l1": float(np.abs(np.diag(W)).sum()),
        "diag_l2": float(np.linalg.norm(np.diag(W))),
    }[norm]
    duals = None if con.dual_value is None else np.asarray(con.dual_value, dtype=np.float64).ravel()
    return SVMSolution(norm, status, W, objective, float(margins.min()), duals)


def attention_svm(
    X: Tensor | np.ndarray,
    z: Tensor | np.ndarray,
    alpha: Sequence[int],
    norm: str = "fro",
    solver: str = "CLARABEL",
) -> np.ndarray:
    """Like :func:`solve_attention_svm` but returns W (d, d) and raises :class:`SVMInfeasibleError`
    when the problem has no solution."""
    sol = solve_attention_svm(X, z, alpha, norm, solver)
    if sol.W is None:
        raise SVMInfeasibleError(
            f"the {norm} attention SVM is {sol.status} for this token selection (no W separates each "
            "selected token from the others); pick the tokens a trained model selects, or, for the "
            "diagonal problem, accept that diagonal W cannot realize this selection."
        )
    return sol.W
