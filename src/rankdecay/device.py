"""Where and how a run computes: device selection, bf16 autocast, torch.compile, spectra placement.

Five settings of :class:`rankdecay.train.TrainConfig` end up here:

- ``device``: ``"auto"`` (CUDA when ``torch.cuda.is_available()``, else CPU), ``"cpu"``,
  ``"cuda"`` or ``"cuda:N"`` → :func:`resolve_device`.
- ``amp``: ``"none"`` (float32 everywhere) or ``"bf16"`` → :func:`autocast`: the forward pass runs
  under ``torch.autocast(device_type, dtype=torch.bfloat16)`` (matmuls in bfloat16, reductions
  and the loss in float32, weights and optimizer states stay float32). ``"fp16"`` is not offered:
  it needs a gradient scaler, and bf16 has the exponent range of float32.
- ``dtype``: ``"float32"`` (default) or ``"float64"`` → :func:`param_dtype`: the dtype of the
  weights, optimizer states and activations (the model is built, then cast with
  ``.to(dtype)``; image inputs follow the weights). float64 is for exactness checks — two
  computations that differ only in summation order agree to ~1e-16 relative per step in float64
  but ~1e-7 in float32, and training amplifies such differences — not for speed. It cannot be
  combined with ``amp="bf16"``.
- ``compile``: ``False`` or ``True`` → :func:`maybe_compile` wraps the model's forward in
  ``torch.compile`` (the parameters stay those of the original module, so optimizers, Low-Rank
  Decay, the monitor and checkpoints keep working on the uncompiled module).
- ``spectra_device``: ``"model"`` (compute the float64 spectra where the weights live) or
  ``"cpu"`` (copy each layer's factors to the CPU first; keeps float64 work off a GPU whose
  float64 throughput is low, at the price of a device→host copy) → :func:`spectra_monitor`.

Memory (:func:`available_memory`): free bytes of the CUDA device (``torch.cuda.mem_get_info``) or
``MemAvailable`` of ``/proc/meminfo`` (the ensemble executor sizes ensembles from it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from .errors import RankdecayError, RankdecayValueError
from .heads import attention_heads
from .monitor import SpectralMonitor, circuit_records, matrix_records

_F = TypeVar("_F", bound=Callable[..., Any])

__all__ = [
    "AMP_MODES",
    "DTYPES",
    "SPECTRA_DEVICES",
    "CPUSpectralMonitor",
    "autocast",
    "available_memory",
    "loss_precision",
    "maybe_compile",
    "param_dtype",
    "resolve_device",
    "spectra_monitor",
]

AMP_MODES = ("none", "bf16")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
SPECTRA_DEVICES = ("model", "cpu")


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` → a ``torch.device`` that exists here.

    ``auto`` is ``cuda`` (the current CUDA device) when CUDA is available, else ``cpu``.
    """
    if isinstance(name, torch.device):
        name = str(name)
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise RankdecayValueError(
            f"unknown device {name!r}; set train.device to auto, cpu, cuda or cuda:N.",
            param="train.device",
        ) from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise RankdecayValueError(
            f"device {name!r} is not supported; set train.device to auto, cpu, cuda or cuda:N.",
            param="train.device",
        )
    if not torch.cuda.is_available():
        raise RankdecayValueError(
            f"train.device is {text!r} but no CUDA device is available; set it to cpu (or auto).",
            param="train.device",
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise RankdecayValueError(
            f"train.device is {text!r} but only {torch.cuda.device_count()} CUDA device(s) exist; "
            "choose cuda:0 … or auto.",
            param="train.device",
        )
    return device


def autocast(device: torch.device, amp: str = "none") -> contextlib.AbstractContextManager[Any]:
    """Context for the forward pass: ``torch.autocast(device.type, bfloat16)`` for ``amp="bf16"``.

    ``amp="none"`` returns a no-op context. bf16 autocast works on CPU too (slow there; useful to
    test the path without a GPU).
    """
    if amp not in AMP_MODES:
        raise RankdecayValueError(
            f"unknown train.amp {amp!r}; choose one of {', '.join(map(repr, AMP_MODES))}."
        )
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def param_dtype(name: str, amp: str = "none") -> torch.dtype:
    """``train.dtype`` → the torch dtype of weights, optimizer states and activations.

    ``"float32"`` or ``"float64"``; float64 with ``amp="bf16"`` is refused (autocast would run
    the matmuls in bfloat16 anyway, defeating the point of float64).
    """
    if name not in DTYPES:
        raise RankdecayValueError(
            f"unknown train.dtype {name!r}; choose one of {', '.join(map(repr, DTYPES))}."
        )
    if name != "float32" and amp != "none":
        raise RankdecayValueError(
            f"train.dtype={name} cannot be combined with train.amp={amp}; set train.amp=none "
            "for float64 training (or train.dtype=float32 for bf16 autocast)."
        )
    return DTYPES[name]


def loss_precision(logits: torch.Tensor) -> torch.Tensor:
    """Logits as the loss should see them: float16/bfloat16 (autocast output) → float32,
    float32 and float64 unchanged (so float64 training keeps a float64 loss)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        return logits.float()
    return logits


def maybe_compile(module: _F, enabled: bool, **options: Any) -> _F:
    """``torch.compile(module, **options)`` when ``enabled``, else ``module`` unchanged.

    ``module`` is an ``nn.Module`` or a function (e.g. the ensemble's batched forward). The
    returned wrapper shares the parameters of ``module``; train and checkpoint ``module``, call
    the wrapper. Errors surface at the first call (compilation is lazy).
    """
    if not enabled:
        return module
    if not hasattr(torch, "compile"):  # pragma: no cover - torch < 2
        raise RankdecayError(
            "train.compile needs torch ≥ 2.0; upgrade torch or set train.compile=false."
        )
    return torch.compile(module, **options)  # type: ignore[return-value]


# ------------------------------------------------------------------------------ spectra


def _to_cpu_layers(layers: list[Any]) -> list[Any]:
    """LayerHeads with every factor tensor copied to the CPU (float64 happens later)."""
    out = []
    for lh in layers:
        moved = {
            f.name: getattr(lh, f.name).detach().to("cpu")
            for f in dataclasses.fields(lh)
            if isinstance(getattr(lh, f.name), torch.Tensor)
        }
        out.append(dataclasses.replace(lh, **moved))
    return out


class CPUSpectralMonitor(SpectralMonitor):
    """:class:`~rankdecay.monitor.SpectralMonitor` that copies the factors to the CPU before the
    float64 SVDs (same records as the plain monitor)."""

    def compute(self, step: int) -> list[dict[str, Any]]:
        with torch.no_grad():
            layers = _to_cpu_layers(attention_heads(self.model, **self.heads_options))
            records = circuit_records(
                layers, step, self.circuits, self.rtol, self.keep_singular_values
            )
            if self.matrices:
                records += matrix_records(layers, step, self.rtol, self.keep_singular_values)
        return records


def spectra_monitor(model: nn.Module, where: str = "model", **kwargs: Any) -> SpectralMonitor:
    """A :class:`~rankdecay.monitor.SpectralMonitor` whose float64 spectra run on ``where``.

    ``where="model"``: the plain monitor (spectra computed on the weights' device);
    ``where="cpu"``: :class:`CPUSpectralMonitor` (the same records from CPU copies).
    """
    if where not in SPECTRA_DEVICES:
        raise RankdecayValueError(
            f"unknown train.spectra_device {where!r}; choose one of "
            f"{', '.join(map(repr, SPECTRA_DEVICES))}."
        )
    cls = (
        SpectralMonitor
        if where == "model" or next((p.device.type == "cpu" for p in model.parameters()), True)
        else CPUSpectralMonitor
    )
    return cls(model, **kwargs)


# ------------------------------------------------------------------------------ memory


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on ``device``: CUDA free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return 4 * 1024**3  # pragma: no cover - unknown platform: assume 4 GiB
