"""Typed config overrides and file round trips (rankdecay.config)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal

import pytest

from rankdecay.config import apply_overrides, flatten, from_dict, to_dict, to_toml
from rankdecay.errors import RankdecayError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class Inner:
    lr: float = 1e-3
    init_std: float | None = 0.02
    kind: Literal["a", "b"] = "a"
    dims: tuple[int, ...] = (1, 2)
    by_role: dict[str, float] = field(default_factory=dict)


@dataclass
class Outer:
    seed: int = 0
    flag: bool = False
    name: str = "x"
    inner: Inner = field(default_factory=Inner)


def test_overrides_parse_each_type() -> None:
    cfg = apply_overrides(
        Outer(),
        [
            "seed=3",
            "flag=true",
            "inner.lr=2e-2",
            "inner.init_std=none",
            "inner.kind=b",
            "inner.dims=4,5,6",
            'inner.by_role={"attn_qk": 0.1}',
        ],
    )
    assert cfg.seed == 3 and cfg.flag is True
    assert cfg.inner.lr == pytest.approx(2e-2) and cfg.inner.init_std is None
    assert cfg.inner.kind == "b" and cfg.inner.dims == (4, 5, 6)
    assert cfg.inner.by_role == {"attn_qk": 0.1}
    assert Outer().inner.lr == 1e-3  # the original is untouched


@pytest.mark.parametrize(
    "assignment, fragment",
    [
        ("inner.lrr=1", "unknown config key 'inner.lrr'"),
        ("seed=abc", "expects int"),
        ("inner.kind=c", "must be one of"),
        ("flag=maybe", "expects bool"),
        ("seed", "key=value"),
        ("inner=3", "unknown config key"),
    ],
)
def test_bad_overrides_name_the_key(assignment: str, fragment: str) -> None:
    with pytest.raises(RankdecayError, match=fragment):
        apply_overrides(Outer(), [assignment])


def test_unknown_key_suggests_close_match() -> None:
    with pytest.raises(RankdecayError, match="did you mean inner.lr"):
        apply_overrides(Outer(), ["inner.lrr=1"])


def test_toml_round_trip_keeps_none() -> None:
    cfg = apply_overrides(Outer(), ["inner.init_std=none", "inner.dims=7"])
    back = from_dict(Outer, tomllib.loads(to_toml(to_dict(cfg))))
    assert back == cfg


def test_flatten_lists_every_leaf() -> None:
    keys = set(flatten(Outer()))
    assert {"seed", "flag", "name", "inner.lr", "inner.init_std", "inner.kind"} <= keys
