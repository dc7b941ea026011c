"""The native Gram kernel (src/rankdecay/_gram.c) behind ``spectra.gram``: XᵀX equal to numpy's
float64 product to rounding, exactly symmetric, the same whatever the thread count, and the BLAS
fallback wherever it does not run (r % 16 ≠ 0, a strided X, no build, no AVX-512)."""

from __future__ import annotations

import platform
import shutil

import numpy as np
import pytest
import torch

import rankdecay.spectra as spectra_mod
from rankdecay.spectra import factored_svdvals, gram, gram_kernel

native = pytest.mark.skipif(
    gram_kernel() != "native (AVX-512)", reason="the native Gram kernel does not run on this CPU"
)


def _reference(X: torch.Tensor) -> np.ndarray:
    Xn = X.numpy()
    return np.einsum("...dr,...ds->...rs", Xn, Xn, optimize=False)  # no BLAS: plain sums


def _close(G: torch.Tensor, X: torch.Tensor) -> None:
    """|G − XᵀX| ≤ 4·d·u·‖x_i‖‖x_j‖ elementwise: the bound of any summation order."""
    d = X.shape[-2]
    col = np.sqrt((X.numpy() ** 2).sum(-2))  # (..., r)
    bound = 4 * d * 2.0**-53 * col[..., :, None] * col[..., None, :]
    assert np.all(np.abs(G.numpy() - _reference(X)) <= bound)


def test_an_install_with_a_c_compiler_builds_the_kernel() -> None:
    """setup.py's extension is optional (an install without a compiler still works); with gcc at
    hand, as on CI, a missing module means the build broke."""
    if platform.machine() not in ("x86_64", "AMD64") or shutil.which("cc") is None:
        pytest.skip("no C compiler or not x86-64: the BLAS computes the Grams")
    assert spectra_mod._native is not None, "rankdecay._gram was not built: see setup.py"


@native
@pytest.mark.parametrize(("shape", "r"), [((), 16), ((3,), 64), ((2, 5), 80), ((4,), 128)])
@pytest.mark.parametrize("d", [1, 15, 129, 300])
def test_native_gram_equals_the_float64_product(shape: tuple[int, ...], r: int, d: int) -> None:
    X = torch.randn(*shape, d, r, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
    X[..., 0] *= 1e6  # columns of very different scales: the bound is per entry
    G = spectra_mod._native_gram(X)
    assert G is not None and G.shape == (*shape, r, r)
    assert torch.equal(G, G.mT)  # both triangles written, the lower one copied
    _close(G, X)


@native
def test_native_gram_does_not_depend_on_the_thread_count() -> None:
    X = torch.randn(7, 200, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gram(X), spectra_mod._native_congruence(gram(X), gram(X + 1))
        torch.set_num_threads(2)
        two = gram(X), spectra_mod._native_congruence(gram(X), gram(X + 1))
    finally:
        torch.set_num_threads(saved)
    assert one[1] is not None and two[1] is not None
    assert torch.equal(one[0], two[0]) and torch.equal(one[1][0], two[1][0])


@native
@pytest.mark.parametrize("r", [16, 64, 128])
@pytest.mark.parametrize("d", [2, 7, 8, 300])
def test_native_gram_of_a_factor_stored_column_major(d: int, r: int) -> None:
    """X (…, d, r) whose transpose is contiguous (an nn.Linear's q/k/v head as (d_model, r)):
    the kernel's dot-product tiles, equal to the float64 product to rounding."""
    g = torch.Generator().manual_seed(d)
    X = torch.randn(2, 3, r, d, dtype=torch.float64, generator=g).mT
    assert not X.is_contiguous() and X.mT.is_contiguous()
    X[..., 1] *= 1e-6
    G = spectra_mod._native_gram(X)
    assert G is not None and torch.equal(G, G.mT)
    _close(G, X)


@pytest.mark.parametrize("r", [8, 24, 64])
def test_gram_takes_the_blas_where_the_kernel_does_not_run(r: int) -> None:
    """r not a multiple of 16, a strided X: no kernel call, and the same Gram to rounding."""
    X = torch.randn(3, 50, r, dtype=torch.float64, generator=torch.Generator().manual_seed(r))
    strided = X.transpose(0, 1).contiguous().transpose(0, 1)  # same values, neither layout
    assert not strided.is_contiguous() and not strided.mT.is_contiguous()
    assert spectra_mod._native_gram(strided) is None
    if r % 16:
        assert spectra_mod._native_gram(X) is None
    _close(gram(strided), X)
    _close(gram(X), X)


def test_spectra_do_not_depend_on_which_code_computes_the_grams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    g = torch.Generator().manual_seed(3)
    A = torch.randn(12, 256, 64, dtype=torch.float64, generator=g)
    B = torch.randn(12, 256, 64, dtype=torch.float64, generator=g)
    s = factored_svdvals(A, B)
    monkeypatch.setattr(spectra_mod, "_native", None)
    assert gram_kernel() == "BLAS (numpy)"
    s_blas = factored_svdvals(A, B)
    assert torch.allclose(s, s_blas, rtol=0, atol=1e-12 * float(s_blas.max()))


def _spd(n: int, r: int, seed: int) -> torch.Tensor:
    X = torch.randn(n, 3 * r, r, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return (X.mT @ X).contiguous()


@native
@pytest.mark.parametrize("r", [16, 64, 128])
def test_native_congruence_equals_cholesky_and_two_products(r: int) -> None:
    """Lᵀ·G_A·L with G_B = L·Lᵀ against numpy's Cholesky and products, to rounding."""
    G_A, G_B = _spd(5, r, r), _spd(5, r, r + 1)
    out = spectra_mod._native_congruence(G_A, G_B)
    assert out is not None
    M, info = out
    assert torch.equal(info, torch.zeros(5, dtype=torch.int32))
    assert torch.equal(M, M.mT)
    L = np.linalg.cholesky(G_B.numpy())
    ref = np.swapaxes(L, -1, -2) @ G_A.numpy() @ L
    scale = np.linalg.norm(G_A.numpy(), axis=(-2, -1)) * np.linalg.norm(G_B.numpy(), axis=(-2, -1))
    assert np.all(np.abs(M.numpy() - ref).max(axis=(-2, -1)) <= 8 * r * 2.0**-53 * scale)


@native
def test_native_congruence_flags_a_gram_that_is_not_positive_definite() -> None:
    """The failed item gets its pivot in ``info`` and M = 0; the others are untouched by it, and
    gram_svdvals refuses exactly that product (its caller recomputes it by the R route)."""
    G_A, G_B = _spd(4, 64, 1), _spd(4, 64, 2)
    G_B[1, 10, 10] = -1.0  # pivot 11 is not positive
    G_B[2, 0, 0] = float("nan")
    out = spectra_mod._native_congruence(G_A, G_B)
    assert out is not None
    M, info = out
    assert info.tolist()[0] == 0 and info.tolist()[3] == 0
    assert info[1] > 0 and info[2] == 1
    assert torch.equal(M[1], torch.zeros(64, 64, dtype=torch.float64))
    ok_items = spectra_mod._native_congruence(G_A[[0, 3]].contiguous(), G_B[[0, 3]].contiguous())
    assert ok_items is not None and torch.equal(ok_items[0], M[[0, 3]])
    assert spectra_mod.gram_svdvals(G_A, G_B)[1].tolist() == [True, False, False, True]


@pytest.mark.parametrize("layout", ["row", "column"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf_factors_raise_on_the_kernel_path(layout: str, bad: float) -> None:
    """A NaN/Inf entry in a factor the kernel takes (r = 16, either memory order) ends in
    NonFiniteInputError, as on the BLAS path, not in a crash or in numbers."""
    g = torch.Generator().manual_seed(3)
    A = torch.randn(4, 48, 16, dtype=torch.float64, generator=g)
    B = torch.randn(4, 48, 16, dtype=torch.float64, generator=g)
    if layout == "column":
        A = A.mT.contiguous().mT
    A[2, 5, 7] = bad
    with pytest.raises(spectra_mod.NonFiniteInputError):
        factored_svdvals(A, B)
