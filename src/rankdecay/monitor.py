"""SpectralMonitor: per-head attention spectra during training, for any training loop.

Usage::

    monitor = SpectralMonitor(model, every=100)
    for step in range(steps):
        ...  # forward, backward, optimizer.step()
        records = monitor.step(step)   # None except every ``every`` steps

Every ``every`` steps the monitor reads the model's per-head factors with
:func:`rankdecay.heads.attention_heads` (under ``torch.no_grad``) and records, per
(layer, head, circuit) with (A, B) the circuit's factor pair (QK: (W_Q^h, W_K^h), OV:
(W_V^h, W_O^hᵀ), each (d_model, d_head)):

- the singular values σ of A·Bᵀ (batched factored SVD over all heads of a layer, float64);
- every metric of :func:`rankdecay.spectra.spectral_metrics` (rank at ``rtol``, effective rank,
  stable rank, nuclear / Frobenius / spectral norm);
- balance ‖AᵀA − BᵀB‖_F and norm gap ½(‖A‖_F² + ‖B‖_F²) − Σσ.

With ``matrices=True`` it also records, per layer, the same spectrum-only metrics of the whole
query and key weights W_Q = [W_Q^1 … W_Q^H] ∈ ℝ^{d_model×(H·d_head)} (likewise W_K), whose
stable rank is the quantity Low-Rank Decay compresses (REPRODUCTIONS.md R4).

Records are plain dicts in the ``spectra.jsonl`` format of :mod:`rankdecay.runio`, with the
vocabulary of :func:`rankdecay.analyze` records (``layer``, ``name`` = the attention module's
path, ``head``, ``circuit``, ``kv_head`` = the key head (qk) or value head (ov) the query head
reads, ``rtol``, the metrics, ``singular_values``) plus ``step`` and ``kind``:
``{"step", "kind": "circuit", "layer", "name", "head", "circuit", "kv_head", "rtol", <metrics>,
"singular_values"}`` and
``{"step", "kind": "matrix", "layer", "name", "head": None, "matrix": "W_Q"|"W_K", <metrics>, ...}``.
A circuit record without ``step`` and ``kind`` is an analyze record (:meth:`SpectralMonitor.report`).
Files written before 0.1.1 lack ``name`` and ``kv_head``; every reader in rankdecay treats both as
optional.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .errors import RankdecayTypeError, RankdecayValueError
from .heads import LayerHeads, attention_heads
from .runio import append_jsonl
from .spectra import DEFAULT_RTOL, factored_spectrum, spectral_metrics

if TYPE_CHECKING:  # pragma: no cover
    from .analyze import SpectralReport

__all__ = ["SpectralMonitor", "circuit_records", "matrix_records", "summarize_records"]

_CIRCUITS = ("qk", "ov")


def _metrics_lists(s: Tensor, rtol: float) -> dict[str, list[Any]]:
    """Spectrum metrics of ``s`` (..., k) as nested Python lists (one ``tolist`` per metric)."""
    out: dict[str, list[Any]] = {}
    for name, value in spectral_metrics(s, rtol).items():
        out[name] = value.tolist()
    return out


def circuit_records(
    layers: Sequence[LayerHeads],
    step: int,
    circuits: Iterable[str] = _CIRCUITS,
    rtol: float = DEFAULT_RTOL,
    keep_singular_values: bool = True,
) -> list[dict[str, Any]]:
    """One record per (layer, head, circuit); see the module docstring for the fields.

    Heads of one layer are processed as one batch: A, B of shape (H, d, r) → σ of shape (H, k).
    """
    records: list[dict[str, Any]] = []
    for lh in layers:
        for circuit in circuits:
            A, B = lh.factors(circuit)
            # σ (H, k), ‖AᵀA − BᵀB‖_F and ½(‖A‖² + ‖B‖²) − ‖ABᵀ‖_*, float64, from one pass
            s, balance, gap = factored_spectrum(A.detach(), B.detach())
            metrics = _metrics_lists(s, rtol)
            bal, gap = balance.tolist(), gap.tolist()
            sv = s.tolist() if keep_singular_values else None
            for h in range(s.shape[0]):
                rec: dict[str, Any] = {
                    "step": step,
                    "kind": "circuit",
                    "layer": lh.layer,
                    "name": lh.name,
                    "head": h,
                    "circuit": circuit,
                    "kv_head": lh.shared_head(circuit, h),
                    "rtol": rtol,
                }
                for name, values in metrics.items():
                    rec[name] = values[h]
                rec["balance"] = bal[h]
                rec["norm_gap"] = gap[h]
                if sv is not None:
                    rec["singular_values"] = sv[h]
                records.append(rec)
    return records


def _full_matrix(W: Tensor) -> Tensor:
    """(H, d, r) per-head weights → the layer's (d, H·r) matrix [W^1 … W^H]."""
    H, d, r = W.shape
    return W.detach().permute(1, 0, 2).reshape(d, H * r)


def matrix_records(
    layers: Sequence[LayerHeads],
    step: int,
    rtol: float = DEFAULT_RTOL,
    keep_singular_values: bool = True,
) -> list[dict[str, Any]]:
    """Per layer, spectrum metrics of the full W_Q and W_K (d_model × H·d_head), float64.

    For GQA models W_K repeats shared key heads; the reported matrix is the per-query-head one.
    """
    records: list[dict[str, Any]] = []
    for lh in layers:
        mats = [("W_Q", lh.W_Q), ("W_K", lh.W_K)]
        for name, W in mats:
            M = _full_matrix(W).to(torch.float64)
            s = torch.linalg.svdvals(M)
            metrics = _metrics_lists(s, rtol)
            rec: dict[str, Any] = {
                "step": step,
                "kind": "matrix",
                "layer": lh.layer,
                "name": lh.name,
                "head": None,
                "matrix": name,
            }
            rec.update(metrics)
            rec["rtol"] = rtol
            if keep_singular_values:
                rec["singular_values"] = s.tolist()
            records.append(rec)
    return records


def summarize_records(records: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Means over heads (circuits) and layers (matrices) of one monitor step.

    Keys: ``{circuit}_{metric}`` (e.g. ``qk_rank``, ``ov_effective_rank``, ``qk_balance``) and
    ``{matrix}_{metric}`` lower-cased (e.g. ``w_q_stable_rank``), plus ``wqk_stable_rank`` (mean
    over W_Q and W_K, the R4 quantity) when matrix records are present.
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    skip = {
        "step", "kind", "layer", "name", "head", "circuit", "kv_head", "matrix",
        "singular_values", "rtol",
    }  # fmt: skip
    for rec in records:
        prefix = rec["circuit"] if rec["kind"] == "circuit" else rec["matrix"].lower()
        groups = [prefix]
        if rec["kind"] == "matrix":
            groups.append("wqk")
        for key, value in rec.items():
            if key in skip or value is None:
                continue
            for g in groups:
                k = f"{g}_{key}"
                sums[k] = sums.get(k, 0.0) + float(value)
                counts[k] = counts.get(k, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


class SpectralMonitor:
    """Record attention spectra every ``every`` steps of any training loop.

    Args:
        model: any model :func:`rankdecay.attention_heads` supports.
        every: record when ``step % every == 0`` (``every <= 0`` disables the monitor).
        circuits: which circuits to record, a subset of ("qk", "ov").
        rtol: relative tolerance of the numerical rank, #{σᵢ > rtol·σ₁}.
        matrices: also record the full W_Q, W_K of each layer (kind "matrix").
        keep_singular_values: store the singular values in each record.
        callback: called with the list of records after each recording.
        writer: path of a ``spectra.jsonl`` the records are appended to.
        keep_records: keep every record in :attr:`records` (disable for very long runs).
        heads_options: deprecated; other options for :func:`rankdecay.attention_heads`
            (``heads_options={"fold_norm": True}`` is ``fold_norm=True``).
        loggers: experiment trackers that get the tags of
            :func:`rankdecay.integrations.loggers.spectral_scalars` at every recording: the
            names "tensorboard" / "wandb" (files under ``log_dir``), an open ``SummaryWriter``,
            a ``wandb`` run, or any object with ``log(step, scalars)`` and ``close()``.
        log_dir: directory for loggers given by name.
        log_per_head: also log one tag per head (``…/layer3/head1``), not only layer means.
        fold_norm: fold the preceding norm's gain into W_Q, W_K, W_V, as
            ``rankdecay.analyze(model, fold_norm=True)`` does.
        strict: the model is checked at construction (when ``every > 0``): no attention at all
            raises :class:`~rankdecay.heads.UnsupportedModelError`, and a module that looks like
            attention but is not extracted gives an
            :class:`~rankdecay.heads.UnrecognizedAttentionWarning` — or, with ``strict=True``,
            raises too.

    ``step(step)`` returns the records of that step, or None when nothing was recorded.
    ``force_step(step)`` records whatever the step.
    """

    def __init__(
        self,
        model: nn.Module,
        every: int = 100,
        circuits: Sequence[str] = _CIRCUITS,
        rtol: float = DEFAULT_RTOL,
        matrices: bool = True,
        keep_singular_values: bool = True,
        callback: Callable[[list[dict[str, Any]]], None] | None = None,
        writer: str | Path | None = None,
        keep_records: bool = True,
        heads_options: dict[str, Any] | None = None,
        strict: bool = False,
        loggers: Sequence[Any] = (),
        log_dir: str | Path | None = None,
        log_per_head: bool = False,
        fold_norm: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise RankdecayTypeError(
                f"SpectralMonitor needs an nn.Module, got {type(model).__name__}; pass the model itself."
            )
        try:
            every = operator.index(every)
        except TypeError:
            raise RankdecayTypeError(
                f"every must be an integer number of steps, got {every!r}; e.g. every=100."
            ) from None
        bad = [c for c in circuits if c not in _CIRCUITS]
        if bad:
            raise RankdecayValueError(f"unknown circuit(s) {bad}; choose from {_CIRCUITS}.")
        if rtol < 0:
            raise RankdecayValueError(f"rtol must be non-negative, got {rtol}.")
        self.model = model
        self.every = int(every)
        self.circuits = tuple(circuits)
        self.rtol = float(rtol)
        self.matrices = bool(matrices)
        self.keep_singular_values = bool(keep_singular_values)
        self.callback = callback
        self.writer = Path(writer) if writer is not None else None
        self.keep_records = keep_records
        options = dict(heads_options or {})
        if options:
            warnings.warn(
                "SpectralMonitor(heads_options=...) is deprecated; pass fold_norm=True "
                "as rankdecay.analyze does (other options are still forwarded).",
                DeprecationWarning,
                stacklevel=2,
            )
        self.fold_norm = bool(fold_norm or options.pop("fold_norm", False))
        #: keyword options of :func:`rankdecay.attention_heads` (``fold_norm`` included)
        self.heads_options = {**options, **({"fold_norm": True} if self.fold_norm else {})}
        self.records: list[dict[str, Any]] = []
        self._latest: list[dict[str, Any]] = []
        self.log_per_head = bool(log_per_head)
        self.sinks: list[Any] = []
        if loggers:
            from .sinks import as_sink

            self.sinks = [as_sink(obj, log_dir) for obj in loggers]
        if self.every > 0:  # fail (or warn) now, not at the first recording
            with torch.no_grad():
                attention_heads(self.model, strict=strict, **self.heads_options)

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def step(self, step: int) -> list[dict[str, Any]] | None:
        """Record if ``step`` is a multiple of ``every``; return the records or None."""
        if not self.due(step):
            return None
        return self.force_step(step)

    def compute(self, step: int) -> list[dict[str, Any]]:
        """The records of the model as it is now, without storing or writing them."""
        with torch.no_grad():
            layers = attention_heads(self.model, **self.heads_options)
            records = circuit_records(
                layers, step, self.circuits, self.rtol, self.keep_singular_values
            )
            if self.matrices:
                records += matrix_records(layers, step, self.rtol, self.keep_singular_values)
        return records

    def force_step(self, step: int) -> list[dict[str, Any]]:
        records = self.compute(step)
        self._latest = records
        if self.keep_records:
            self.records.extend(records)
        if self.writer is not None:
            append_jsonl(self.writer, records)
        if self.callback is not None:
            self.callback(records)
        if self.sinks:
            from .sinks import log_to_sinks, spectral_scalars

            tags = spectral_scalars(records, per_head=self.log_per_head)
            log_to_sinks(self.sinks, step, tags)
        return records

    def close(self) -> None:
        """Close the loggers (flush an open ``SummaryWriter`` / wandb run that was passed in)."""
        from .sinks import close_sinks

        close_sinks(self.sinks)

    def latest(self) -> list[dict[str, Any]]:
        """Records of the most recent recording (empty before the first)."""
        return list(self._latest)

    def summary(self) -> dict[str, float]:
        """Means of the most recent recording (see :func:`summarize_records`)."""
        return summarize_records(self._latest)

    def report(self) -> SpectralReport:
        """The most recent recording as a :class:`rankdecay.analyze.SpectralReport` (its circuit
        records without ``step`` and ``kind``), e.g. for ``.summary()`` or an HTML page.

        ``report.model`` holds the model class, ``rtol``, ``circuits``, ``fold_norm`` and ``step``.
        """
        from .analyze import SpectralReport

        circuits = [r for r in self._latest if r.get("kind") == "circuit"]
        records = [
            {"singular_values": [], **{k: v for k, v in r.items() if k not in ("step", "kind")}}
            for r in circuits
        ]
        model = {
            "model_class": type(self.model).__name__,
            "rtol": self.rtol,
            "circuits": list(self.circuits),
            "fold_norm": self.fold_norm,
            "step": circuits[0]["step"] if circuits else None,
        }
        return SpectralReport(records=records, model=model)
