"""factored_svdvals_chain: σ((A₁⋯A_k)(B₁⋯B_m)ᵀ) by QR cascades against a dense float64 SVD."""

from __future__ import annotations

import pytest
import torch

import rankdecay as rd
import rankdecay.spectra as spectra_mod
from rankdecay.spectra import NonFiniteInputError, factored_svdvals, factored_svdvals_chain


def _prod(factors: list[torch.Tensor]) -> torch.Tensor:
    out = factors[0].double()
    for f in factors[1:]:
        out = out @ f.double()
    return out


def _dense(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.svdvals(_prod(a) @ _prod(b).mT)


def _with_cond(rows: int, cols: int, cond: float, gen: torch.Generator) -> torch.Tensor:
    """rows×cols float64 matrix with singular values log-spaced from 1 down to 1/cond."""
    k = min(rows, cols)
    U, _ = torch.linalg.qr(torch.randn(rows, k, dtype=torch.float64, generator=gen))
    V, _ = torch.linalg.qr(torch.randn(cols, k, dtype=torch.float64, generator=gen))
    s = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), k, dtype=torch.float64)
    return (U * s) @ V.mT


def _check(s: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    k = s.shape[-1]
    assert (ref[..., k:] <= tol * ref[..., :1]).all(), "the chain dropped a non-zero singular value"
    err = (s - ref[..., :k]).abs().amax(-1) / ref[..., 0]
    assert (err < tol).all(), float(err.max())


@pytest.mark.parametrize(
    "a_shapes,b_shapes",
    [
        ([(40, 12), (12, 8)], [(30, 8)]),  # MLA-like OV: latent down then per-head up, vs W_Oᵀ
        ([(40, 12), (12, 8)], [(40, 16), (16, 8)]),  # MLA-like QK
        ([(20, 30), (30, 25), (25, 6)], [(18, 6)]),  # a wide first factor
        ([(25, 6)], [(18, 4), (4, 6)]),  # bottleneck narrower than r
    ],
)
def test_chain_matches_dense_svd(
    a_shapes: list[tuple[int, int]], b_shapes: list[tuple[int, int]]
) -> None:
    gen = torch.Generator().manual_seed(0)
    a = [torch.randn(*s, dtype=torch.float64, generator=gen) for s in a_shapes]
    b = [torch.randn(*s, dtype=torch.float64, generator=gen) for s in b_shapes]
    _check(factored_svdvals_chain(a, b), _dense(a, b), 1e-12)


def test_batched_with_shared_unbatched_leading_factor_decomposed_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gen = torch.Generator().manual_seed(1)
    H = 5
    down = torch.randn(48, 10, dtype=torch.float64, generator=gen)  # shared by every head
    up = torch.randn(H, 10, 6, dtype=torch.float64, generator=gen)
    out = torch.randn(H, 48, 6, dtype=torch.float64, generator=gen)
    calls: list[tuple[int, ...]] = []
    one_call = spectra_mod._r_one_call  # every R factor is computed by one call of this

    def spy(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return one_call(x)

    monkeypatch.setattr(spectra_mod, "_r_one_call", spy)
    s = factored_svdvals_chain([down, up], [out])
    monkeypatch.undo()
    assert (1, 48, 10) in calls, calls  # the shared factor once, unbatched
    assert not any(c[-2:] == (48, 10) and c[0] > 1 for c in calls), calls
    assert s.shape == (H, 6)
    for h in range(H):
        _check(s[h], _dense([down, up[h]], [out[h]]), 1e-12)


def test_single_factor_chains_equal_factored_svdvals_and_float32_computes_in_float64() -> None:
    gen = torch.Generator().manual_seed(2)
    A = torch.randn(3, 30, 7, generator=gen)
    B = torch.randn(3, 20, 7, generator=gen)
    s = factored_svdvals_chain([A], [B])
    assert s.dtype == torch.float64
    torch.testing.assert_close(s, factored_svdvals(A, B), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("where", [0, 1])
def test_rank_deficient_factors(where: int) -> None:
    gen = torch.Generator().manual_seed(3)
    a = [
        torch.randn(36, 9, dtype=torch.float64, generator=gen),
        torch.randn(9, 7, dtype=torch.float64, generator=gen),
    ]
    # make one factor of the A chain rank 2
    a[where] = torch.randn(a[where].shape[0], 2, dtype=torch.float64, generator=gen) @ torch.randn(
        2, a[where].shape[1], dtype=torch.float64, generator=gen
    )
    b = [torch.randn(30, 7, dtype=torch.float64, generator=gen)]
    s = factored_svdvals_chain(a, b)
    ref = _dense(a, b)
    _check(s, ref, 1e-12)
    assert int(rd.rank(s, rtol=1e-8)) == 2


@pytest.mark.parametrize("cond", [1e4, 1e8])
def test_ill_conditioned_factors(cond: float) -> None:
    gen = torch.Generator().manual_seed(4)
    a = [_with_cond(60, 12, cond, gen), _with_cond(12, 8, cond, gen)]
    b = [_with_cond(50, 8, cond, gen)]
    _check(factored_svdvals_chain(a, b), _dense(a, b), 1e-10)


def test_negative_control_wrong_order_differs() -> None:
    gen = torch.Generator().manual_seed(5)
    a = [
        torch.randn(20, 6, dtype=torch.float64, generator=gen),
        torch.randn(6, 6, dtype=torch.float64, generator=gen),
    ]
    b = [torch.randn(15, 6, dtype=torch.float64, generator=gen)]
    s = factored_svdvals_chain(a, b)
    wrong = _dense([a[0], a[1].mT], b)
    assert (s - wrong[:6]).abs().max() > 1e-3 * s[0]


def test_errors_are_clear() -> None:
    A, B = torch.randn(10, 4), torch.randn(8, 4)
    with pytest.raises(ValueError, match="at least one factor"):
        factored_svdvals_chain([], [B])
    with pytest.raises(ValueError, match="does not multiply"):
        factored_svdvals_chain([A, torch.randn(5, 4)], [B])
    with pytest.raises(ValueError, match="same width"):
        factored_svdvals_chain([A], [torch.randn(8, 3)])
    with pytest.raises(ValueError, match="matrix"):
        factored_svdvals_chain([torch.randn(4)], [B])
    bad = A.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteInputError):
        factored_svdvals_chain([bad], [B])


def test_public_name() -> None:
    assert rd.factored_svdvals_chain is factored_svdvals_chain
    assert "factored_svdvals_chain" in rd.__all__
