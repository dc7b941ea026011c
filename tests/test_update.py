"""update.py: the optimizer steps against torch.optim (float64, several steps, per-member
hyperparameters through stacked tensors), gradient clipping against clip_grad_norm_, and the
Low-Rank Decay step against dense float64 SVDs and LowRankDecay; negative controls."""

from __future__ import annotations

import pytest
import torch

from rankdecay.decay import LowRankDecay, check_lrd_options
from rankdecay.errors import RankdecayError
from rankdecay.models import ModelConfig, TinyTransformer
from rankdecay.update import (
    adam_,
    clip_grad_norm_,
    low_rank_decay_delta,
    member_column,
    sgd_,
)

M = 3
SHAPES = {"a": (4, 3), "b": (5,)}
LRS = [1e-2, 3e-3, 0.1]
WDS = {"a": [0.1, 0.0, 0.5], "b": [0.0, 0.2, 0.05]}
BETAS = [(0.9, 0.999), (0.8, 0.98), (0.95, 0.9)]
EPS = [1e-8, 1e-6, 1e-7]
MOM = [0.9, 0.0, 0.5]
CLIP = [0.5, float("inf"), 2.0]
STEPS = 6


def _torch_members(name: str, init: dict[str, torch.Tensor], order: list[int]) -> list[dict]:
    """Member i's parameters and torch optimizer, with member order[i]'s hyperparameters."""
    out = []
    for i in range(M):
        j = order[i]
        ps = {n: torch.nn.Parameter(v[i].clone()) for n, v in init.items()}
        groups = [{"params": [ps[n]], "weight_decay": WDS[n][j]} for n in SHAPES]
        if name == "adamw":
            opt = torch.optim.AdamW(groups, lr=LRS[j], betas=BETAS[j], eps=EPS[j])
        elif name == "adam":
            opt = torch.optim.Adam(groups, lr=LRS[j], betas=BETAS[j], eps=EPS[j])
        else:
            opt = torch.optim.SGD(groups, lr=LRS[j], momentum=MOM[j])
        out.append({"params": ps, "opt": opt, "clip": CLIP[j], "lr": LRS[j]})
    return out


def _run(name: str, order: list[int]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """STEPS steps of the update functions on stacked (M, …) tensors and of torch per member."""
    g = torch.Generator().manual_seed(0)
    init = {n: torch.randn(M, *s, generator=g, dtype=torch.float64) for n, s in SHAPES.items()}
    stacked = {n: v.clone() for n, v in init.items()}
    state = {n: (torch.zeros_like(v), torch.zeros_like(v)) for n, v in init.items()}
    solo = _torch_members(name, init, order)
    for step in range(1, STEPS + 1):
        grads = {n: torch.randn(M, *s, generator=g, dtype=torch.float64) for n, s in SHAPES.items()}
        scale = 1 + 0.1 * step  # a schedule: lr changes every step
        clipped = {n: v.clone() for n, v in grads.items()}
        clip_grad_norm_(
            list(clipped.values()), torch.tensor(CLIP, dtype=torch.float64), members=True
        )
        for n, p in stacked.items():
            col = lambda v, p=p: member_column(v, p)  # noqa: E731
            lr = col([lr * scale for lr in LRS])
            if name in ("adamw", "adam"):
                adam_(
                    p,
                    clipped[n],
                    *state[n],
                    step=step,
                    lr=lr,
                    beta1=col([b[0] for b in BETAS]),
                    beta2=col([b[1] for b in BETAS]),
                    eps=col(EPS),
                    weight_decay=col(WDS[n]),
                    decoupled=name == "adamw",
                )
            else:
                buf = state[n][0]
                sgd_(
                    p,
                    clipped[n],
                    buf,
                    step=step,
                    lr=lr,
                    momentum=col(MOM),
                    weight_decay=col(WDS[n]),
                )
        for i, member in enumerate(solo):
            ps = member["params"]
            for n in SHAPES:
                ps[n].grad = grads[n][i].clone()
            torch.nn.utils.clip_grad_norm_(list(ps.values()), member["clip"])
            for group in member["opt"].param_groups:
                group["lr"] = member["lr"] * scale
            member["opt"].step()
    return stacked, solo


def _max_rel_diff(stacked: dict[str, torch.Tensor], solo: list[dict]) -> float:
    worst = 0.0
    for i, member in enumerate(solo):
        for n, p in member["params"].items():
            ref = p.detach()
            worst = max(worst, float((stacked[n][i] - ref).abs().max() / ref.abs().max()))
    return worst


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_update_functions_equal_torch_optim_per_member(name: str) -> None:
    stacked, solo = _run(name, order=[0, 1, 2])
    assert _max_rel_diff(stacked, solo) < 1e-12
    # negative control: torch members given each other's hyperparameters no longer match
    stacked, solo = _run(name, order=[1, 2, 0])
    assert _max_rel_diff(stacked, solo) > 1e-4


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_number_hyperparameters_equal_torch(name: str) -> None:
    """One model, Python-float hyperparameters (the single-tensor form)."""
    g = torch.Generator().manual_seed(1)
    p0 = torch.randn(6, 4, generator=g, dtype=torch.float64)
    p, ref = p0.clone(), torch.nn.Parameter(p0.clone())
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    kw = dict(lr=0.05, weight_decay=0.3)
    if name == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW([ref], betas=(0.8, 0.95), eps=1e-6, **kw)
    elif name == "adam":
        opt = torch.optim.Adam([ref], betas=(0.8, 0.95), eps=1e-6, **kw)
    else:
        opt = torch.optim.SGD([ref], momentum=0.7, **kw)
    for step in range(1, 5):
        grad = torch.randn(6, 4, generator=g, dtype=torch.float64)
        if name == "sgd":
            sgd_(p, grad, m, step=step, lr=0.05, momentum=0.7, weight_decay=0.3)
        else:
            adam_(p, grad, m, v, step=step, lr=0.05, beta1=0.8, beta2=0.95, eps=1e-6,
                  weight_decay=0.3, decoupled=name == "adamw")  # fmt: skip
        ref.grad = grad
        opt.step()
    torch.testing.assert_close(p, ref.detach(), rtol=1e-13, atol=1e-13)


def test_clip_grad_norm_matches_torch_and_leaves_small_gradients() -> None:
    g = torch.Generator().manual_seed(2)
    grads = [torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(5, generator=g)]
    grads[1] = grads[1].double()
    ref = [x.clone().requires_grad_(True) for x in grads]
    for r, x in zip(ref, grads):
        r.grad = x.clone()
    got = [x.clone() for x in grads]
    norm = clip_grad_norm_(got, 1.0)
    torch.nn.utils.clip_grad_norm_(ref, 1.0)
    for r, x in zip(ref, got):
        torch.testing.assert_close(x, r.grad, rtol=1e-14, atol=1e-14)
    assert float(norm) > 1.0  # the case clipped something
    same = [x.clone() for x in grads]
    clip_grad_norm_(same, float(norm) * 2)
    assert all(torch.equal(a, b) for a, b in zip(same, grads))


def _svd_truth(X: torch.Tensor, c: torch.Tensor, mode: str) -> torch.Tensor:
    """Δ from a dense float64 SVD per matrix: c·U Vᵀ, or X − U max(Σ − c, 0) Vᵀ."""
    out = torch.empty_like(X)
    for i in range(X.shape[0]):
        U, S, Vh = torch.linalg.svd(X[i].double(), full_matrices=False)
        ci = float(c.reshape(-1)[i])
        new = (
            U @ Vh * ci if mode == "subtract" else X[i] - U @ torch.diag((S - ci).clamp(min=0)) @ Vh
        )
        out[i] = new
    return out


@pytest.mark.parametrize("mode", ["subtract", "svt"])
@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (4, 4)])
def test_lrd_delta_equals_dense_svd(mode: str, shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(3)
    X = torch.randn(4, *shape, generator=g, dtype=torch.float64)
    c = torch.tensor([0.0, 0.1, 0.5, 3.0], dtype=torch.float64).view(-1, 1, 1)  # per matrix
    delta, info = low_rank_decay_delta(X, c, mode=mode)
    assert info is None
    torch.testing.assert_close(delta, _svd_truth(X, c, mode), rtol=1e-10, atol=1e-12)
    # the step lowers every singular value by min(c, σ) (svt) / c (subtract)
    s_old, s_new = torch.linalg.svdvals(X), torch.linalg.svdvals(X - delta)
    if mode == "svt":
        assert torch.allclose(s_new, (s_old - c[..., 0]).clamp(min=0), atol=1e-10)
    # negative control: the members' c swapped gives a different Δ
    wrong, _ = low_rank_decay_delta(X, c.flip(0), mode=mode)
    assert (wrong - delta).abs().max() > 1e-2


def test_lrd_delta_polar_variants() -> None:
    g = torch.Generator().manual_seed(4)
    X = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    exact = _svd_truth(X, torch.full((3,), 0.2, dtype=torch.float64), "subtract")
    ns, info = low_rank_decay_delta(X, 0.2, polar="newton_schulz", tol=1e-8)
    assert info is not None and info.residual <= 1e-8
    torch.testing.assert_close(ns, exact, rtol=0, atol=1e-7)
    fixed, _ = low_rank_decay_delta(X, 0.2, polar="newton_schulz_fixed", polar_steps=3)
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    s = S / (torch.linalg.matrix_norm(X)[:, None] + 1e-8)
    for _ in range(3):
        s = 1.5 * s - 0.5 * s**3
    torch.testing.assert_close(fixed, 0.2 * (U * s[:, None, :]) @ Vh, rtol=1e-10, atol=1e-12)
    assert (fixed - exact).abs().max() > 1e-2  # the fixed-step map is not the polar factor


@pytest.mark.parametrize("granularity", ["matrix", "head"])
def test_lrd_delta_is_low_rank_decays_step(granularity: str) -> None:
    """W_Q ← W_Q − Δ(W_Q) by hand equals LowRankDecay's step on a TinyTransformer."""
    cfg = ModelConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=0, vocab_size=5, max_len=4)
    torch.manual_seed(5)
    model = TinyTransformer(cfg).double()
    W = model.blocks[0].attn.q.weight.detach().clone()  # (H·dh, d) = W_Qᵀ
    X = (
        W.T if granularity == "matrix" else W.reshape(2, 4, 8).transpose(1, 2)
    )  # (d, H·dh) / (H, d, dh)
    delta, _ = low_rank_decay_delta(X, 0.05 * 0.3)
    expected = (
        (X - delta).T if granularity == "matrix" else (X - delta).transpose(1, 2).reshape(8, 8)
    )
    LowRankDecay(model, 0.05, target="qk", granularity=granularity).step(0.3)
    torch.testing.assert_close(
        model.blocks[0].attn.q.weight.detach(), expected, rtol=1e-12, atol=1e-13
    )
    assert (expected - W).abs().max() > 1e-3  # it moved


def test_lrd_options_checked_once_with_kinds() -> None:
    check_lrd_options(0.1, "qk", "head", "svt", "svd", 5)
    for bad, kind in [
        (dict(strength=-1.0), ValueError),
        (dict(strength="x"), TypeError),
        (dict(mode="svt", polar="newton_schulz"), ValueError),
        (dict(granularity="product", mode="svt"), ValueError),
        (dict(polar_steps=1.5), TypeError),
    ]:
        args = dict(strength=0.1, target="qk", granularity="matrix", mode="subtract", polar="svd")
        args.update(bad)
        with pytest.raises(kind) as err:
            check_lrd_options(**args)  # type: ignore[arg-type]
        assert isinstance(err.value, RankdecayError)
