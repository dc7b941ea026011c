"""Lightning integration: attention spectra logged through the trainer's loggers.

Usage::

    import lightning as L
    from rankdecay.integrations.lightning import SpectralMonitorCallback

    trainer = L.Trainer(max_epochs=10, logger=L.pytorch.loggers.TensorBoardLogger("logs"),
                        callbacks=[SpectralMonitorCallback(every=100)])
    trainer.fit(lit_module, train_loader)

Every ``every`` optimizer steps (``trainer.global_step % every == 0``, and at the start of
training) the callback runs a :class:`rankdecay.SpectralMonitor` on the LightningModule (any
attention module inside it that :func:`rankdecay.attention_heads` supports) — per (layer, head,
circuit) singular values of A·Bᵀ (QK: A, B = W_Q^h, W_K^h; OV: W_V^h, W_O^hᵀ, each
(d_model, d_head)) and their metrics, plus the full W_Q, W_K of each layer — and

- sends the tags of :func:`rankdecay.integrations.loggers.spectral_scalars`
  (``rankdecay/qk/effective_rank/layer3``, ``rankdecay/qk/rank/mean``, …) to every logger of the
  trainer with ``logger.log_metrics(tags, step=trainer.global_step)`` — so they land in TensorBoard,
  W&B, CSV, MLflow, … at their own step, whatever ``log_every_n_steps`` is;
- appends the records to ``<trainer.log_dir>/<output_file>`` (the ``spectra.jsonl`` format of
  :mod:`rankdecay.runio`) on global rank 0.

The records of every recording are also kept in ``callback.monitor.records``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from ..monitor import SpectralMonitor
from ..spectra import DEFAULT_RTOL
from .loggers import DEFAULT_METRICS, spectral_scalars

__all__ = ["SpectralMonitorCallback"]


class SpectralMonitorCallback(Callback):
    """A Lightning ``Callback`` that records attention spectra every ``every`` optimizer steps.

    Args:
        every: record when ``trainer.global_step % every == 0`` (and at the start of training).
        circuits, rtol, matrices, keep_singular_values: as for :class:`SpectralMonitor`.
        output_file: JSONL file under ``trainer.log_dir`` for the records; None → no file.
        metrics, per_layer, per_head, prefix: which tags are logged (see
            :func:`rankdecay.integrations.loggers.spectral_scalars`).
        heads_options: forwarded to :func:`rankdecay.attention_heads`.
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
    ) -> None:
        if every <= 0:
            raise ValueError(f"every must be positive, got {every}.")
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
        self.monitor: SpectralMonitor | None = None
        self._last_step: int | None = None

    def _ensure_monitor(self, trainer: Any, pl_module: Any) -> SpectralMonitor:
        if self.monitor is None or self.monitor.model is not pl_module:
            writer = None
            if self.output_file and trainer.is_global_zero:
                writer = Path(trainer.log_dir or trainer.default_root_dir) / self.output_file
                writer.parent.mkdir(parents=True, exist_ok=True)
            self.monitor = SpectralMonitor(
                pl_module,
                every=self.every,
                circuits=self.circuits,
                rtol=self.rtol,
                matrices=self.matrices,
                keep_singular_values=self.keep_singular_values,
                writer=writer,
                heads_options=self.heads_options,
            )
        return self.monitor

    def _record(self, trainer: Any, pl_module: Any) -> None:
        step = int(trainer.global_step)
        if self._last_step == step:
            return
        self._last_step = step
        records = self._ensure_monitor(trainer, pl_module).force_step(step)
        tags = spectral_scalars(
            records,
            per_layer=self.per_layer,
            per_head=self.per_head,
            metrics=self.metrics,
            prefix=self.prefix,
        )
        for logger in trainer.loggers:  # log_metrics is rank-zero-only in every Lightning logger
            logger.log_metrics(tags, step=step)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._record(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step % self.every == 0:
            self._record(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        for logger in trainer.loggers:
            logger.save()
