"""Hugging Face ``Trainer`` integration: attention spectra while training, and a role-aware optimizer.

Usage::

    from rankdecay.integrations.transformers import SpectralMonitorCallback, trainer_optimizer

    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[SpectralMonitorCallback(every=100)],
                      optimizers=(trainer_optimizer(model, args, weight_decay={"attn_qk": 0.0,
                                                    "default": 0.1}, low_rank_decay=1e-3), None))
    trainer.train()

**The callback.** Every ``every`` optimizer steps (``state.global_step % every == 0``, and once
before the first step) it runs a :class:`rankdecay.SpectralMonitor` on the model — per (layer,
head, circuit) singular values of A·Bᵀ (QK: A, B = W_Q^h, W_K^h; OV: W_V^h, W_O^hᵀ, each
(d_model, d_head)), rank at ``rtol``, effective and stable rank, norms, balance ‖AᵀA − BᵀB‖_F and
norm gap, plus the full W_Q, W_K of each layer — and

- appends the records to ``<output_dir>/<output_file>`` (the ``spectra.jsonl`` format of
  :mod:`rankdecay.runio`) on the main process;
- asks the Trainer to log at that step and adds the tags of
  :func:`rankdecay.integrations.loggers.spectral_scalars` (``rankdecay/qk/effective_rank/layer3``,
  ``rankdecay/qk/rank/mean``, …) to that log entry, so they reach ``trainer.state.log_history`` and
  every ``report_to`` integration (TensorBoard, W&B, MLflow, …), which show them as
  ``train/rankdecay/…`` (the Trainer's integrations prefix every training-time key with ``train/``).

Reaching the integrations whatever the callback order: the Trainer calls every callback's
``on_log`` in list order with the same ``logs`` dict, and puts the reporting integrations before
user callbacks. So when the Trainer first calls it (``on_init_end`` for ``callbacks=[…]``,
``on_train_begin`` for ``trainer.add_callback``) the callback moves itself to the front of the
Trainer's callback list; its ``on_log`` then adds the tags before any integration reads ``logs``.
If it cannot find that list (a custom handler), it warns and says how to put it first by hand.

**The optimizer.** :func:`trainer_optimizer` builds the optimizer over
:func:`rankdecay.param_groups` (one group per parameter role, each with its weight decay) with the
Trainer's learning rate and Adam settings, and attaches :class:`rankdecay.LowRankDecay` when
asked; pass it as ``optimizers=(optimizer, None)`` and the Trainer adds its usual scheduler.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import MissingExtraError
from .common import SpectralCallbackBase

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import CallbackHandler
except ImportError:
    raise MissingExtraError(
        "rankdecay.integrations.transformers needs Hugging Face transformers, which is not "
        "installed; install it with `pip install 'rankdecay[hf]'`."
    ) from None

__all__ = ["SpectralMonitorCallback", "trainer_optimizer"]


class SpectralMonitorCallback(SpectralCallbackBase, TrainerCallback):
    """A ``TrainerCallback`` that runs :class:`rankdecay.SpectralMonitor` every ``every`` steps.

    Args: those of :class:`rankdecay.integrations.common.SpectralCallbackBase` — ``every``
    (``state.global_step % every == 0``, and at the start of training), ``circuits``, ``rtol``,
    ``matrices``, ``keep_singular_values``, ``output_file`` (under ``args.output_dir``),
    ``metrics``, ``per_layer``, ``per_head``, ``prefix``, ``fold_norm``, ``heads_options`` — and

        move_first: move this callback to the front of the Trainer's callback list (see the
            module docstring), so the reporting integrations receive the tags.
    """

    def __init__(self, every: int = 100, *, move_first: bool = True, **options: Any) -> None:
        super().__init__(every, **options)
        self.move_first = move_first
        self._pending: dict[str, float] = {}
        self._placed = False

    # -- helpers -----------------------------------------------------------------------------

    def _put_first(self) -> None:
        """Move this callback to index 0 of the calling Trainer's ``CallbackHandler``."""
        if not self.move_first or self._placed:
            return
        frame = sys._getframe(1)
        handler = None
        for _ in range(10):  # call_event → (a subclass's super() calls) → this method
            if frame is None:
                break
            obj = frame.f_locals.get("self")
            if isinstance(obj, CallbackHandler) and any(cb is self for cb in obj.callbacks):
                handler = obj
                break
            frame = frame.f_back
        self._placed = True
        if handler is None:
            warnings.warn(
                "SpectralMonitorCallback could not find the Trainer's callback list, so report_to "
                "integrations called before it will miss the rankdecay tags; put it first with "
                "trainer.callback_handler.callbacks.insert(0, callback).",
                stacklevel=3,
            )
            return
        callbacks = handler.callbacks
        index = next(i for i, cb in enumerate(callbacks) if cb is self)
        if index:
            # safe while call_event iterates: the callback that follows keeps its index
            callbacks.insert(0, callbacks.pop(index))

    def _record(self, args: Any, state: Any, model: Any) -> dict[str, float]:
        if model is None:
            return {}
        main = getattr(state, "is_world_process_zero", True)
        return self.record(model, int(state.global_step), args.output_dir if main else None)

    # -- Trainer events ----------------------------------------------------------------------

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._put_first()

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        self._put_first()  # added with trainer.add_callback after __init__
        self._record(args, state, model)  # the spectra before the first step (file + records only)

    def on_step_end(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> Any:
        if state.global_step % self.every != 0:
            return control
        tags = self._record(args, state, model)
        if tags:
            self._pending = tags
            control.should_log = True
        return control

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self._pending:
            return
        if logs is not None:
            logs.update(self._pending)  # read by every callback after this one (integrations)
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


def trainer_optimizer(
    model: nn.Module,
    args: Any = None,
    *,
    weight_decay: float | Mapping[str, float] | None = None,
    low_rank_decay: float = 0.0,
    lrd_options: Mapping[str, Any] | None = None,
    optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
    **optimizer_kwargs: Any,
) -> torch.optim.Optimizer:
    """An optimizer for ``Trainer(optimizers=(optimizer, None))``: role-aware weight decay + LRD.

    Args:
        model: the model the Trainer trains (build the optimizer before ``Trainer(...)``).
        args: the ``TrainingArguments``; supplies ``lr`` (``learning_rate``) and, for Adam-type
            optimizers, ``betas`` (``adam_beta1``, ``adam_beta2``) and ``eps`` (``adam_epsilon``)
            unless given in ``optimizer_kwargs``.
        weight_decay: per-role decay for :func:`rankdecay.param_groups` (roles attn_qk, attn_ov,
            mlp, embedding, norm, bias, other; ``"attention"`` and ``"default"`` shorthands), or
            one number for all. None → the Trainer's rule: ``args.weight_decay`` everywhere except
            norms and biases (0).
        low_rank_decay: strength of :class:`rankdecay.LowRankDecay` (0 = off), applied after each
            optimizer step with each group's current lr (so it follows the Trainer's schedule).
        lrd_options: more ``LowRankDecay`` arguments (``target``, ``granularity``, ``polar``, …).
        optimizer_cls: a torch optimizer class taking param groups (default AdamW).

    Returns:
        the optimizer; its ``low_rank_decay`` attribute holds the attached LowRankDecay or None.
    """
    from ..decay import LowRankDecay, param_groups

    kwargs = dict(optimizer_kwargs)
    if args is not None:
        kwargs.setdefault("lr", args.learning_rate)
        if issubclass(optimizer_cls, (torch.optim.Adam, torch.optim.AdamW)):
            kwargs.setdefault("betas", (args.adam_beta1, args.adam_beta2))
            kwargs.setdefault("eps", args.adam_epsilon)
    if weight_decay is None:
        base = float(args.weight_decay) if args is not None else 0.0
        weight_decay = {"default": base, "norm": 0.0, "bias": 0.0}
    optimizer = optimizer_cls(param_groups(model, weight_decay), **kwargs)  # type: ignore[arg-type]
    decay = None
    if low_rank_decay > 0:
        decay = LowRankDecay(model, strength=low_rank_decay, **dict(lrd_options or {}))
        decay.attach(optimizer)
    optimizer.low_rank_decay = decay  # type: ignore[attr-defined]
    return optimizer
