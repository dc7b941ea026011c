"""update.py: per-member gradient clipping against torch.nn.utils.clip_grad_norm_, and the
Low-Rank Decay step against dense float64 SVDs and LowRankDecay; negative controls."""

from __future__ import annotations

import pytest
import torch

from rankdecay.decay import LowRankDecay, check_lrd_options
from rankdecay.errors import RankdecayError
from rankdecay.models import ModelConfig, TinyTransformer
from rankdecay.update import (
    clip_grad_norm_,
    low_rank_decay_delta,
)


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
