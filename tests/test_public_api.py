"""The public names of DESIGN.md resolve to what they promise, whatever was imported first."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import rankdecay as rd

CONTRACT = [
    "factored_svdvals",
    "rank",
    "effective_rank",
    "stable_rank",
    "balance",
    "norm_gap",
    "attention_heads",
    "register_adapter",
    "analyze",
    "SpectralReport",
    "param_roles",
    "param_groups",
    "polar",
    "LowRankDecay",
    "SpectralMonitor",
    "load_sweep",
]


def test_every_export_resolves() -> None:
    for name in rd.__all__:
        assert getattr(rd, name) is not None, name


def test_functions_are_not_shadowed_by_same_named_submodules() -> None:
    # import every submodule first (as the CLI and the trainer do), then use the public names
    for mod in pkgutil.walk_packages(rd.__path__, "rankdecay."):
        if mod.name.startswith("rankdecay.integrations"):
            continue  # needs transformers' Trainer; tested in its own file
        importlib.import_module(mod.name)
    for name in CONTRACT:
        obj = getattr(rd, name)
        assert not inspect.ismodule(obj), f"rd.{name} is a module, not the public callable"
        assert callable(obj), name


def test_fresh_interpreter_submodule_first() -> None:
    code = (
        "import rankdecay.polar, rankdecay.analyze, rankdecay as rd, torch, inspect;"
        "assert inspect.isfunction(rd.polar) and inspect.isfunction(rd.analyze);"
        "P = rd.polar(torch.eye(3, dtype=torch.float64) * 2);"
        "assert torch.allclose(P, torch.eye(3, dtype=torch.float64))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
