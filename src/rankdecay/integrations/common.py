"""What the framework callbacks share: the monitor settings, the monitor, and the tags of a step.

:class:`SpectralCallbackBase` is mixed into :class:`rankdecay.integrations.transformers.
SpectralMonitorCallback` (Hugging Face) and :class:`rankdecay.integrations.lightning.
SpectralMonitorCallback` (Lightning); each adds only its framework's events.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import RankdecayValueError
from ..monitor import SpectralMonitor
from ..sinks import DEFAULT_METRICS, spectral_scalars
from ..spectra import DEFAULT_RTOL

__all__ = ["SpectralCallbackBase"]


class SpectralCallbackBase:
    """Settings of a monitor callback and one recording → tags.

    Args:
        every: record every ``every`` optimizer steps (and at the start of training).
        circuits, rtol, matrices, keep_singular_values: as for :class:`SpectralMonitor`.
        output_file: JSONL file (under the framework's output folder) for the records; None → no
            file.
        metrics, per_layer, per_head, prefix: which tags are logged (see
            :func:`rankdecay.integrations.loggers.spectral_scalars`).
        fold_norm: fold the preceding norm's gain into W_Q, W_K, W_V before the spectra, as
            ``rankdecay.analyze(model, fold_norm=True)`` and ``SpectralMonitor(fold_norm=True)`` do.
        heads_options: deprecated (as in :class:`SpectralMonitor`); other options of
            :func:`rankdecay.attention_heads`, forwarded only when given.
    """

    def __init__(
        self,
        every: int = 100,
        circuits: Sequence[str] = ("qk", "ov"),
        rtol: float = DEFAULT_RTOL,
        matrices: bool = True,
        keep_singular_values: bool = True,
        output_file: str | None = "spectra.jsonl",
        metrics: Sequence[str] | None = DEFAULT_METRICS,
        per_layer: bool = True,
        per_head: bool = False,
        prefix: str = "rankdecay",
        heads_options: dict[str, Any] | None = None,
        fold_norm: bool = False,
    ) -> None:
        if every <= 0:
            raise RankdecayValueError(f"every must be positive, got {every}.")
        self.every = int(every)
        self.circuits = tuple(circuits)
        self.rtol = float(rtol)
        self.matrices = matrices
        self.keep_singular_values = keep_singular_values
        self.output_file = output_file
        self.metrics = None if metrics is None else tuple(metrics)
        self.per_layer = per_layer
        self.per_head = per_head
        self.prefix = prefix
        self.heads_options = heads_options
        self.fold_norm = bool(fold_norm)
        self.monitor: SpectralMonitor | None = None
        self._last_step: int | None = None

    def ensure_monitor(self, model: Any, folder: str | Path | None) -> SpectralMonitor:
        """The monitor of ``model`` (a new one when the model changed); records are appended to
        ``<folder>/<output_file>`` when ``folder`` is given (the main process only)."""
        if self.monitor is None or self.monitor.model is not model:
            writer = None
            if self.output_file and folder is not None:
                writer = Path(folder) / self.output_file
                writer.parent.mkdir(parents=True, exist_ok=True)
            self.monitor = SpectralMonitor(
                model,
                every=self.every,
                circuits=self.circuits,
                rtol=self.rtol,
                matrices=self.matrices,
                keep_singular_values=self.keep_singular_values,
                writer=writer,
                heads_options=self.heads_options,
                fold_norm=self.fold_norm,
            )
        return self.monitor

    def record(self, model: Any, step: int, folder: str | Path | None) -> dict[str, float]:
        """Record ``model`` at ``step`` (once per step) and return the tags; {} if already done."""
        if self._last_step == step:
            return {}
        self._last_step = step
        records = self.ensure_monitor(model, folder).force_step(step)
        return spectral_scalars(
            records,
            per_layer=self.per_layer,
            per_head=self.per_head,
            metrics=self.metrics,
            prefix=self.prefix,
        )
