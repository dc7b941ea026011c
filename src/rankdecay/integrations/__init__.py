"""Framework integrations of :class:`rankdecay.SpectralMonitor`.

- :mod:`rankdecay.integrations.loggers`: TensorBoard and W&B sinks and the tag names every
  integration shares (extras ``tensorboard``, ``wandb``).
- :mod:`rankdecay.integrations.transformers`: ``SpectralMonitorCallback``, a Hugging Face
  ``TrainerCallback`` whose tags reach every ``report_to`` integration, and ``trainer_optimizer``
  (role-aware weight decay + Low-Rank Decay for the Trainer) (extra ``hf``).
- :mod:`rankdecay.integrations.lightning`: ``SpectralMonitorCallback`` for Lightning, logging
  through the trainer's loggers (extra ``lightning``).

Each integration is imported on demand so that ``import rankdecay`` never needs the framework.
"""

from __future__ import annotations

__all__ = ["SpectralMonitorCallback"]


def __getattr__(name: str) -> object:
    if name == "SpectralMonitorCallback":
        from .transformers import SpectralMonitorCallback

        return SpectralMonitorCallback
    raise AttributeError(f"module 'rankdecay.integrations' has no attribute {name!r}")
