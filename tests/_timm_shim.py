"""Import timm without torchvision (test helper).

PyPI has no torchvision build for the CPU-only torch wheel this project pins, and timm imports
torchvision at package import time for data transforms, datasets and FrozenBatchNorm2d — none of
which a ViT's attention uses. :func:`import_timm` puts a stand-in ``torchvision`` package in
``sys.modules`` (every submodule and attribute is an inert placeholder class) only if the real
one is missing, then imports timm. The attention modules the tests check are timm's real code.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any


class _PlaceholderMeta(type):
    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(name)


def _placeholder(name: str) -> type:
    return _PlaceholderMeta(name, (), {"__init__": lambda self, *a, **k: None})


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(name)


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: object, target: object = None) -> Any:
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StubModule(spec.name)
        module.__path__ = []  # a package: submodules import through this finder
        module.__version__ = "0.0.0+stub"
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def import_timm() -> types.ModuleType:
    """``import timm``, with a stand-in torchvision if the real one is not installed."""
    if importlib.util.find_spec("timm") is None:
        import pytest

        pytest.skip("timm is not installed")
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        sys.meta_path.append(_StubFinder())
    return importlib.import_module("timm")
