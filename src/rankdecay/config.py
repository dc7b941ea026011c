"""Typed configs: nested dataclasses, ``--set a.b=value`` overrides, JSON/TOML round trips.

A config is a dataclass whose fields are scalars (int, float, bool, str), ``Literal`` choices,
optionals, tuples/lists of scalars, dicts of str → float, or nested config dataclasses.
``apply_overrides`` parses each value against the field's declared type and raises a one-sentence
:class:`~rankdecay.errors.RankdecayValueError` for an unknown key or a value not among a
``Literal``'s choices, and a :class:`~rankdecay.errors.RankdecayTypeError` for a value of the
wrong type (both :class:`~rankdecay.errors.RankdecayError`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Protocol, TypeVar

from .errors import (
    RankdecayError,
    RankdecayFileNotFoundError,
    RankdecayTypeError,
    RankdecayValueError,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "DataclassInstance",
    "apply_overrides",
    "flatten",
    "from_dict",
    "get_key",
    "load_config_file",
    "parse_assignment",
    "to_dict",
    "to_toml",
]

T = TypeVar("T")


class DataclassInstance(Protocol):
    """Any dataclass instance — a config or one of its sections (what ``dataclasses.fields`` and
    ``dataclasses.replace`` accept; the same protocol as typeshed's ``DataclassInstance``)."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]


#: a config type, kept through :func:`apply_overrides` (an ExperimentConfig in, the same out)
C = TypeVar("C", bound=DataclassInstance)


def to_dict(cfg: DataclassInstance) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def from_dict(cls: type[T], data: Mapping[str, Any], _prefix: str = "") -> T:
    """Build ``cls`` from a (possibly partial) nested dict, rejecting unknown keys."""
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in hints:
            _unknown(_prefix + key, [_prefix + k for k in hints])
        tp = hints[key]
        if _is_dataclass_type(tp) and isinstance(value, Mapping):
            kwargs[key] = from_dict(tp, value, _prefix + key + ".")
        else:
            kwargs[key] = _coerce(value, tp, _prefix + key)
    return cls(**kwargs)


def flatten(cfg: DataclassInstance, prefix: str = "") -> dict[str, Any]:
    """Dotted key → value for every leaf of a config instance."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, prefix + f.name + "."))
        else:
            out[prefix + f.name] = value
    return out


def _unknown(key: str, known: Iterable[str]) -> typing.NoReturn:
    known = list(known)
    close = difflib.get_close_matches(key, known, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise RankdecayValueError(
        f"unknown config key '{key}'{hint}; run `rankdecay list` to see the valid keys."
    )


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (a str from the command line or a JSON value) to type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = RankdecayTypeError(
        f"config key '{key}' expects {_type_name(tp)} but got {value!r}; "
        f"give {key} a value of type {_type_name(tp)} (in the overrides or the config file).",
        param=key,
    )
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except RankdecayError:
                continue
        raise bad
    if origin is typing.Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise RankdecayValueError(
            f"config key '{key}' must be one of {', '.join(map(repr, args))}, got {value!r}; "
            f"set {key} to one of them.",
            param=key,
        )
    if origin in (tuple, list):
        items = value
        if isinstance(value, str):
            items = [v for v in value.strip("[]()").split(",") if v.strip() != ""]
        if not isinstance(items, (list, tuple)):
            raise bad
        elem = args[0] if args else Any
        out = [_coerce(v.strip() if isinstance(v, str) else v, elem, key) for v in items]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise bad from None
        if not isinstance(value, Mapping):
            raise bad
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, key) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                raise bad from None
            if f.is_integer():
                return int(f)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if _is_dataclass_type(tp):
        if isinstance(value, Mapping):
            return from_dict(tp, value, key + ".")
        raise bad
    return value


def parse_assignment(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise RankdecayValueError(
            f"a config override must read key=value, got {text!r}; write e.g. optim.lr=1e-3.",
            param="set",
        )
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def get_key(cfg: DataclassInstance, key: str) -> Any:
    obj = cfg
    for part in key.split("."):
        if not dataclasses.is_dataclass(obj) or part not in {
            f.name for f in dataclasses.fields(obj)
        }:
            _unknown(key, flatten(cfg).keys())
        obj = getattr(obj, part)
    return obj


def apply_overrides(cfg: C, overrides: Mapping[str, Any] | Iterable[str]) -> C:
    """Return a copy of ``cfg`` with dotted-key overrides applied, each parsed against its type.

    ``overrides`` is a mapping ``{"optim.lr": 1e-3}`` or strings ``["optim.lr=1e-3"]``.
    """
    items = (
        overrides.items() if isinstance(overrides, Mapping) else map(parse_assignment, overrides)
    )
    for key, value in items:
        cfg = _replace(cfg, key.split("."), value, key, cfg)
    return cfg


def _replace(obj: C, parts: list[str], value: Any, key: str, root: DataclassInstance) -> C:
    names = {f.name for f in dataclasses.fields(obj)}
    head = parts[0]
    if head not in names:
        _unknown(key, flatten(root).keys())
    hints = _hints(type(obj))
    current = getattr(obj, head)
    if len(parts) == 1:
        if dataclasses.is_dataclass(current) and not isinstance(value, Mapping):
            _unknown(key, flatten(root).keys())
        new = _coerce(value, hints[head], key)
    else:
        if not dataclasses.is_dataclass(current):
            _unknown(key, flatten(root).keys())
        new = _replace(current, parts[1:], value, key, root)
    return dataclasses.replace(obj, **{head: new})


def to_toml(data: Mapping[str, Any]) -> str:
    import tomli_w

    # TOML has no null: None is written as the string "none", which ``from_dict`` /
    # ``apply_overrides`` parse back to None for optional fields.
    def clean(v: Any) -> Any:
        if v is None:
            return "none"
        if isinstance(v, Mapping):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return tomli_w.dumps(clean(data))


def load_config_file(path: str) -> dict[str, Any]:
    """Read a JSON or TOML config file into a dict."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        kind = RankdecayFileNotFoundError if isinstance(exc, FileNotFoundError) else RankdecayError
        raise kind(f"cannot read config file {path} ({exc.strerror}); check the path.") from None
    try:
        if path.endswith(".toml"):
            return tomllib.loads(raw.decode())
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RankdecayValueError(
            f"config file {path} cannot be parsed ({exc}); fix its syntax."
        ) from None
