"""``rankdecay list``: the experiments, their presets, and every config key with type and default.

``rankdecay list`` prints one row per experiment (name, reproduced result, presets, description);
``rankdecay list EXPERIMENT [--preset P]`` prints every dotted config key (the keys
``--set KEY=VALUE`` accepts) with its type, its value under preset P — by default ``quick``, the
preset ``rankdecay run EXPERIMENT`` uses — and, where that differs, the base default of the config
class.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from ..config import flatten
from ..experiments import Experiment, get_experiment, list_experiments
from . import stdout_console

__all__ = ["config_table", "configure_parser", "run_cli"]


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _key_types(cls: type, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.update(_key_types(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = _type_name(tp)
    return out


def config_table(exp: Experiment, preset: str | None = None) -> list[tuple[str, str, Any, Any]]:
    """(key, type, default, value under ``preset`` or None) for every config key."""
    defaults = flatten(exp.config_cls())
    types = _key_types(exp.config_cls)
    preset_values = flatten(exp.config(preset)) if preset else {}
    return [(k, types.get(k, "?"), v, preset_values.get(k)) for k, v in defaults.items()]


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", nargs="?", help="show this experiment's config keys")
    p.add_argument(
        "--preset",
        default=None,
        help="show the values under this preset (default quick, the one `rankdecay run` uses)",
    )


def run_cli(args: argparse.Namespace) -> int:
    from rich.table import Table

    console = stdout_console()
    if not args.experiment:
        table = Table(title="rankdecay experiments")
        for col in ("experiment", "reproduces", "presets", "description"):
            table.add_column(col)
        for name in list_experiments():
            exp = get_experiment(name)
            table.add_row(name, exp.reproduces, ", ".join(exp.presets), exp.description)
        console.print(table)
        console.print(
            "`rankdecay list EXPERIMENT` shows its config keys; `rankdecay run EXPERIMENT --preset quick` runs it."
        )
        return 0
    exp = get_experiment(args.experiment)
    preset = args.preset
    if preset is None and "quick" in exp.presets:
        preset = "quick"  # what `rankdecay run EXPERIMENT` runs
    if preset is not None:
        exp.config(preset)  # validates the preset name
    title = f"{exp.name} — config keys (--set KEY=VALUE)"
    if preset is not None:
        title += f"\nvalues under preset {preset}" + (
            f", the one `rankdecay run {exp.name}` uses" if preset == "quick" else ""
        )
    table = Table(title=title)
    table.add_column("key")
    table.add_column("type")
    if preset is not None:
        table.add_column(f"preset {preset}")
        table.add_column("base default", style="dim")
        for key, tp, default, value in config_table(exp, preset):
            table.add_row(key, tp, repr(value), "" if value == default else repr(default))
    else:
        table.add_column("default")
        for key, tp, default, _ in config_table(exp, None):
            table.add_row(key, tp, repr(default))
    console.print(table)
    presets = ", ".join(f"{name} ({len(ov)} overrides)" for name, ov in exp.presets.items())
    console.print(f"presets: {presets}")
    grids = exp.grids.get(preset or "quick") or {}
    if grids:
        console.print(
            "default sweep grid: " + "; ".join(f"{k} ∈ {list(v)}" for k, v in grids.items())
        )
    return 0
