"""rankdecay: see and steer how regularization shapes the rank of attention layers.

Every public name is loaded on first use (PEP 562 ``__getattr__``), so ``import rankdecay`` and
the ``rankdecay`` command stay light: torch is imported by the first name that needs it, not by
the package. ``from rankdecay import X`` and type checkers (the ``TYPE_CHECKING`` block below) see
the same names as before.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .threads import cli_environment as _cli_environment

_cli_environment()  # the `rankdecay` command: OMP_WAIT_POLICY=PASSIVE before torch is imported


# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # spectra
    "factored_svdvals": "spectra",
    "factored_svdvals_chain": "spectra",
    "factored_spectrum": "spectra",
    "rank": "spectra",
    "effective_rank": "spectra",
    "stable_rank": "spectra",
    "nuclear_norm": "spectra",
    "frobenius_norm": "spectra",
    "spectral_norm": "spectra",
    "balance": "spectra",
    "norm_gap": "spectra",
    "spectral_metrics": "spectra",
    # heads
    "LayerHeads": "heads",
    "attention_heads": "heads",
    "register_adapter": "heads",
    "UnrecognizedAttentionWarning": "heads",
    "UnsupportedModelError": "heads",
    # analyze
    "analyze": "analyze",
    "SpectralReport": "analyze",
    "load_model": "analyze",
    # polar / decay
    "polar": "polar",
    "param_roles": "decay",
    "param_groups": "decay",
    "describe_groups": "decay",
    "LowRankDecay": "decay",
    # training
    "SpectralMonitor": "monitor",
    "TinyTransformer": "models",
    "ModelConfig": "models",
    # results
    "load_sweep": "results",
    "load_run": "results",
    # errors
    "RankdecayError": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

#: public functions that share their name with the submodule defining them (``rankdecay.analyze``,
#: ``rankdecay.polar``). Importing a submodule binds ``rankdecay.<name>`` to it, which would shadow
#: the function; the package's module class answers these names with the function instead.
_SHADOWED = frozenset(name for name, module in _EXPORTS.items() if name == module)


def _export(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rankdecay' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __getattr__(name: str) -> Any:
    value = _export(name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


class _Package(types.ModuleType):
    """``rankdecay`` itself: the names in :data:`_SHADOWED` always resolve to the function.

    A data descriptor on the module's class wins over the module's ``__dict__``, where the import
    system stores a submodule; assigning a module there is therefore ignored, and assigning anything
    else (a test's monkeypatch) replaces the function until it is deleted.
    """


def _shadowed_property(name: str) -> property:
    slot = f"_override_{name}"

    def get(module: types.ModuleType) -> Any:
        override = module.__dict__.get(slot)
        return override if override is not None else _export(name)

    def set_(module: types.ModuleType, value: Any) -> None:
        if not isinstance(value, types.ModuleType):
            module.__dict__[slot] = value

    def delete(module: types.ModuleType) -> None:
        module.__dict__.pop(slot, None)

    return property(get, set_, delete)


for _name in _SHADOWED:
    setattr(_Package, _name, _shadowed_property(_name))
sys.modules[__name__].__class__ = _Package
del _name


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .analyze import SpectralReport, analyze, load_model  # noqa: F401
    from .decay import LowRankDecay, describe_groups, param_groups, param_roles  # noqa: F401
    from .errors import RankdecayError  # noqa: F401
    from .heads import (  # noqa: F401
        LayerHeads,
        UnrecognizedAttentionWarning,
        UnsupportedModelError,
        attention_heads,
        register_adapter,
    )
    from .models import ModelConfig, TinyTransformer  # noqa: F401
    from .monitor import SpectralMonitor  # noqa: F401
    from .polar import polar  # noqa: F401
    from .results import load_run, load_sweep  # noqa: F401
    from .spectra import (  # noqa: F401
        balance,
        effective_rank,
        factored_spectrum,
        factored_svdvals,
        factored_svdvals_chain,
        frobenius_norm,
        norm_gap,
        nuclear_norm,
        rank,
        spectral_metrics,
        spectral_norm,
        stable_rank,
    )
