"""layer_heads.select_heads: the grouped-query head selection, copied in the stack's memory order."""

from __future__ import annotations

import pytest
import torch

from rankdecay.layer_heads import select_heads


@pytest.mark.parametrize("layout", ["transposed_view", "contiguous", "bf16_view"])
def test_select_heads_equals_index_select(layout: str) -> None:
    """Same values as ``index_select(0, …)`` whatever the layout; a transposed per-head view
    (a Linear weight's heads, (Hkv·r, d) → (Hkv, d, r)) keeps its column-major heads."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(4 * 8, 20, generator=g)  # Hkv = 4 heads of r = 8, d = 20
    if layout == "bf16_view":
        weight = weight.bfloat16()
    W = weight.view(4, 8, 20).mT  # (4, 20, 8), stride(-2) == 1
    if layout == "contiguous":
        W = W.contiguous()
    index = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    got = select_heads(W, index)
    assert torch.equal(got, W.index_select(0, index))
    assert got.shape == (8, 20, 8)
    if layout != "contiguous":
        assert got.stride(-2) == 1  # copied in the source's order: heads stay column-major


@pytest.mark.parametrize(
    ("heads", "view"),
    [
        ([0, 4, 8, 12], True),
        ([3], True),
        ([0, 1, 2], True),
        ([0, 2, 3], False),
        ([5, 1], False),
        ([], True),
    ],
)
def test_distinct_heads_are_a_view_where_evenly_spaced(heads: list[int], view: bool) -> None:
    """spectral_report._heads: the first query head of each key/value group, X[heads] — a view of
    the expanded stack where the heads are evenly spaced (no copy), else a copy."""
    from rankdecay.spectral_report import _heads

    X = torch.randn(16, 6, 4, generator=torch.Generator().manual_seed(1))
    got = _heads(X, heads)
    assert torch.equal(got, X[heads])
    assert (got.untyped_storage().data_ptr() == X.untyped_storage().data_ptr()) == view
