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

from typing import Any

from ..errors import MissingExtraError
from .common import SpectralCallbackBase

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the package's older name
    try:
        from pytorch_lightning.callbacks import Callback  # type: ignore[no-redef]
    except ImportError:
        raise MissingExtraError(
            "rankdecay.integrations.lightning needs Lightning, which is not installed; install "
            "it with `pip install 'rankdecay[lightning]'`."
        ) from None

__all__ = ["SpectralMonitorCallback"]


class SpectralMonitorCallback(SpectralCallbackBase, Callback):
    """A Lightning ``Callback`` that records attention spectra every ``every`` optimizer steps.

    Args: those of :class:`rankdecay.integrations.common.SpectralCallbackBase` — ``every``,
    ``circuits``, ``rtol``, ``matrices``, ``keep_singular_values``, ``output_file`` (under
    ``trainer.log_dir``), ``metrics``, ``per_layer``, ``per_head``, ``prefix``, ``fold_norm``, ``heads_options``.
    """

    def _record(self, trainer: Any, pl_module: Any) -> None:
        step = int(trainer.global_step)
        folder = (trainer.log_dir or trainer.default_root_dir) if trainer.is_global_zero else None
        tags = self.record(pl_module, step, folder)
        if not tags:
            return
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
