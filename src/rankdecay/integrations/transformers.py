"""Hugging Face ``Trainer`` integration: attention spectra while training.

Usage::

    from rankdecay.integrations.transformers import SpectralMonitorCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[SpectralMonitorCallback(every=100)])
    trainer.train()

Every ``every`` optimizer steps (``state.global_step % every == 0``, and once before the first
step) the callback runs a :class:`rankdecay.SpectralMonitor` on the model — per (layer, head,
circuit) singular values, rank at ``rtol``, effective and stable rank, norms, balance
‖AᵀA − BᵀB‖_F and norm gap, plus the full W_Q, W_K of each layer — and

- appends the records to ``<output_dir>/<output_file>`` (the ``spectra.jsonl`` format of
  :mod:`rankdecay.runio`) on the main process,
- asks the Trainer to log at that step and adds the means over heads (``rankdecay/qk_rank``,
  ``rankdecay/ov_effective_rank``, ``rankdecay/wqk_stable_rank``, …) to that log entry, so they
  appear in ``trainer.state.log_history`` and in every callback placed after this one (put it
  first in ``trainer.callback_handler.callbacks`` to reach reporting integrations such as
  TensorBoard or W&B).

The records of every recording are also kept in ``callback.monitor.records``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..monitor import SpectralMonitor, summarize_records
from ..spectra import DEFAULT_RTOL

__all__ = ["DEFAULT_LOG_KEYS", "SpectralMonitorCallback"]

#: summary means logged into the Trainer's logs by default
DEFAULT_LOG_KEYS: tuple[str, ...] = (
    "qk_rank",
    "qk_effective_rank",
    "qk_stable_rank",
    "qk_balance",
    "qk_norm_gap",
    "ov_rank",
    "ov_effective_rank",
    "ov_stable_rank",
    "ov_balance",
    "ov_norm_gap",
    "wqk_stable_rank",
)


class SpectralMonitorCallback(TrainerCallback):
    """A ``TrainerCallback`` that runs :class:`rankdecay.SpectralMonitor` every ``every`` steps.

    Args:
        every: record when ``state.global_step % every == 0`` (and at the start of training).
        circuits, rtol, matrices, keep_singular_values: as for :class:`SpectralMonitor`.
        output_file: JSONL file under ``args.output_dir`` for the records; None → no file.
        log_keys: summary keys (see :func:`rankdecay.monitor.summarize_records`) added to the
            Trainer's logs; None → every key.
        prefix: prepended to the logged keys.
        heads_options: forwarded to :func:`rankdecay.attention_heads` (e.g. ``fold_norm=True``).
    """

    def __init__(
        self,
        every: int = 100,
        circuits: Sequence[str] = ("qk", "ov"),
        rtol: float = DEFAULT_RTOL,
        matrices: bool = True,
        keep_singular_values: bool = True,
        output_file: str | None = "spectra.jsonl",
        log_keys: Sequence[str] | None = DEFAULT_LOG_KEYS,
        prefix: str = "rankdecay/",
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
        self.log_keys = None if log_keys is None else tuple(log_keys)
        self.prefix = prefix
        self.heads_options = heads_options
        self.monitor: SpectralMonitor | None = None
        self._pending: dict[str, float] = {}
        self._last_step: int | None = None

    # -- helpers -----------------------------------------------------------------------------

    def _ensure_monitor(self, args: Any, state: Any, model: Any) -> SpectralMonitor:
        if self.monitor is None or self.monitor.model is not model:
            writer = None
            if self.output_file and getattr(state, "is_world_process_zero", True):
                writer = Path(args.output_dir) / self.output_file
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
            )
        return self.monitor

    def _record(self, args: Any, state: Any, model: Any) -> dict[str, float]:
        step = int(state.global_step)
        if model is None or self._last_step == step:
            return {}
        monitor = self._ensure_monitor(args, state, model)
        records = monitor.force_step(step)
        self._last_step = step
        means = summarize_records(records)
        keys = means.keys() if self.log_keys is None else [k for k in self.log_keys if k in means]
        return {f"{self.prefix}{k}": float(means[k]) for k in keys}

    # -- Trainer events ----------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._record(args, state, model)  # the spectra before the first step (file + records only)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        if state.global_step % self.every != 0:
            return control
        means = self._record(args, state, model)
        if means:
            self._pending = means
            control.should_log = True
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not self._pending:
            return
        if logs is not None:
            logs.update(self._pending)
        history = state.log_history
        if history and history[-1].get("step") == state.global_step:
            history[-1].update(self._pending)
        else:
            history.append({**self._pending, "step": state.global_step})
        self._pending = {}

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._pending:
            state.log_history.append({**self._pending, "step": state.global_step})
            self._pending = {}
