"""rankdecay: see and steer how regularization shapes the rank of attention layers.

The public names below are loaded lazily so that ``import rankdecay`` (and the CLI) stays fast and
optional extras are only needed by the parts that use them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .threads import cli_environment as _cli_environment

_cli_environment()  # the `rankdecay` command: OMP_WAIT_POLICY=PASSIVE before torch is imported

from ._version import __version__  # noqa: E402

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

# ``analyze`` and ``polar`` are both a submodule and a public function of the same name. Python
# binds ``rankdecay.<name>`` to the submodule when it is first imported, which would shadow the
# function; importing them here, once, makes the function binding the final one.
from .analyze import analyze  # noqa: E402
from .polar import polar  # noqa: E402


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rankdecay' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"rankdecay.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


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
