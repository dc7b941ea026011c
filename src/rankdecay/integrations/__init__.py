"""Framework integrations of :class:`rankdecay.SpectralMonitor`.

- :mod:`rankdecay.integrations.transformers`: ``SpectralMonitorCallback``, a Hugging Face
  ``TrainerCallback`` (needs the ``hf`` extra).

Each integration is imported on demand so that ``import rankdecay`` never needs the framework.
"""

from __future__ import annotations

__all__ = ["SpectralMonitorCallback"]


def __getattr__(name: str) -> object:
    if name == "SpectralMonitorCallback":
        from .transformers import SpectralMonitorCallback

        return SpectralMonitorCallback
    raise AttributeError(f"module 'rankdecay.integrations' has no attribute {name!r}")
