"""Experiment trackers: TensorBoard and Weights & Biases sinks, and the tag names they share.

A *sink* is anything with ``log(step, scalars)`` and ``close()``; the spectral monitor, the
training loop of ``rankdecay run`` and the framework callbacks hand it a flat dict tag → float.
The same tag names are used everywhere (:func:`spectral_scalars`, :func:`metric_scalars`):

- ``rankdecay/<group>/<metric>/mean`` — mean over every head and layer;
- ``rankdecay/<group>/<metric>/layer<L>`` — mean over the heads of layer L (a matrix record: its
  value);
- ``rankdecay/<group>/<metric>/layer<L>/head<h>`` — one head (only with ``per_head=True``);

where ``<group>`` is the circuit ``qk`` / ``ov`` (W_QK^h = W_Q^h W_K^hᵀ, W_OV^h = W_V^h W_O^h), or
the whole-layer matrix ``w_q`` / ``w_k`` (d_model × H·d_head), and ``wqk`` (means over W_Q and W_K,
the stable rank Low-Rank Decay compresses). ``<metric>`` is a spectral metric of the records
(rank at rtol, effective_rank, stable_rank, nuclear/frobenius/spectral_norm, balance, norm_gap).
Training metrics of our own runs: ``train/loss``, ``train/accuracy``, ``train/lr`` and
``<split>/loss``, ``<split>/accuracy`` per evaluation set (``val/loss``, …).

Inside the Hugging Face Trainer its reporting integrations prefix every training-time key with
``train/`` (``train/rankdecay/qk/rank/layer0``); the rest of the name is the same.

TensorBoard needs the ``tensorboard`` extra, W&B the ``wandb`` extra; a missing package raises
:class:`MissingExtraError` naming the ``pip install`` that fixes it. W&B runs offline (files under
the run directory, ``wandb sync`` uploads them later) unless ``WANDB_MODE`` says otherwise or an
API key is configured.
"""

from __future__ import annotations

import netrc
import os
import secrets
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .errors import MissingExtraError, RankdecayError
from .results import _record_group

__all__ = [
    "DEFAULT_METRICS",
    "LOGGERS",
    "LoggerSink",
    "MissingExtraError",
    "NotASinkError",
    "TensorBoardSink",
    "UnknownLoggerError",
    "WandbSink",
    "as_sink",
    "check_loggers",
    "close_sinks",
    "log_to_sinks",
    "metric_scalars",
    "open_sinks",
    "parse_loggers",
    "spectral_scalars",
    "wandb_mode",
]

#: logger names accepted by ``train.loggers`` / ``--log-to`` → the extra that provides them
LOGGERS: dict[str, str] = {"tensorboard": "tensorboard", "wandb": "wandb"}

#: metrics logged per group by default (records may hold more; ``metrics=None`` logs them all)
DEFAULT_METRICS: tuple[str, ...] = (
    "rank",
    "effective_rank",
    "stable_rank",
    "spectral_norm",
    "balance",
    "norm_gap",
)

#: record fields that are not metrics
_ID_KEYS = frozenset(
    {"step", "kind", "layer", "head", "kv_head", "circuit", "matrix", "name", "rtol"}
)


class UnknownLoggerError(RankdecayError, ValueError):
    """A logger name that is not one of :data:`LOGGERS` (or one given without a directory)."""


class NotASinkError(RankdecayError, TypeError):
    """An object passed as a logger that is neither a name, a known writer/run, nor a sink."""


@runtime_checkable
class LoggerSink(Protocol):
    """Where scalars go: ``log(step, {tag: value})`` any number of times, then ``close()``."""

    def log(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------- tag names


def spectral_scalars(
    records: Iterable[Mapping[str, Any]],
    *,
    per_layer: bool = True,
    per_head: bool = False,
    metrics: Sequence[str] | None = DEFAULT_METRICS,
    prefix: str = "rankdecay",
) -> dict[str, float]:
    """Monitor / analyze records of one step → ``{tag: value}`` (tag names in the module docstring).

    Means are plain averages of the records' values (over the heads of a layer, or over every
    (layer, head)); records whose metric is None or not a number are skipped.
    """
    wanted = None if metrics is None else set(metrics)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}

    def add(tag: str, value: float) -> None:
        sums[tag] = sums.get(tag, 0.0) + value
        counts[tag] = counts.get(tag, 0) + 1

    for rec in records:
        group = _record_group(rec)
        if group is None:
            continue
        is_matrix = "circuit" not in rec or rec.get("kind") == "matrix"
        groups = [group, "wqk"] if is_matrix else [group]
        layer, head = rec.get("layer"), rec.get("head")
        for key, value in rec.items():
            if key in _ID_KEYS or (wanted is not None and key not in wanted):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            v = float(value)
            for g in groups:
                add(f"{prefix}/{g}/{key}/mean", v)
            base = f"{prefix}/{group}/{key}"
            if per_layer and layer is not None:
                add(f"{base}/layer{layer}", v)
            if per_head and layer is not None and head is not None:
                add(f"{base}/layer{layer}/head{head}", v)
    return {tag: sums[tag] / counts[tag] for tag in sums}


_TRAIN_NAMES = {"loss": "train/loss", "acc": "train/accuracy", "lr": "train/lr"}


def metric_scalars(row: Mapping[str, Any], skip: Iterable[str] = ()) -> dict[str, float]:
    """A metrics row of ``rankdecay run`` → tags: ``loss``/``acc``/``lr`` → ``train/…``,
    ``<split>_loss`` / ``<split>_acc`` → ``<split>/loss`` / ``<split>/accuracy``; any other
    number ``x`` → ``train/x``. ``step``, the keys in ``skip`` and non-numbers are left out."""
    out: dict[str, float] = {}
    ignore = {"step", *skip}
    for key, value in row.items():
        if key in ignore or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key in _TRAIN_NAMES:
            tag = _TRAIN_NAMES[key]
        elif key.endswith("_loss"):
            tag = f"{key[: -len('_loss')]}/loss"
        elif key.endswith("_acc"):
            tag = f"{key[: -len('_acc')]}/accuracy"
        else:
            tag = f"train/{key}"
        out[tag] = float(value)
    return out


# ----------------------------------------------------------------------------- names, extras


def parse_loggers(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"tensorboard,wandb"`` or a list → validated, de-duplicated names (``""``/None → ())."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    names: list[str] = []
    for item in items:
        name = str(item).strip().lower()
        if not name or name in ("none",):
            continue
        if name not in LOGGERS:
            raise UnknownLoggerError(
                f"unknown logger {item!r}; choose from {', '.join(LOGGERS)} "
                "(e.g. tensorboard,wandb).",
                param="log_to",
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def _missing(what: str, extra: str) -> MissingExtraError:
    return MissingExtraError(
        f"logging to {what} needs the {extra} package, which is not installed; "
        f"install it with `pip install 'rankdecay[{extra}]'`."
    )


def _import_summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises ImportError when the tensorboard package is missing
        raise _missing("TensorBoard", "tensorboard") from None
    return SummaryWriter


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise _missing("Weights & Biases", "wandb") from None
    return wandb


def check_loggers(names: Iterable[str]) -> None:
    """Raise :class:`MissingExtraError` now if a logger's package is missing (before a run)."""
    for name in parse_loggers(list(names)):
        if name == "tensorboard":
            _import_summary_writer()
        elif name == "wandb":
            _import_wandb()


# ----------------------------------------------------------------------------- sinks


class TensorBoardSink:
    """Scalars as TensorBoard events: ``SummaryWriter.add_scalar(tag, value, step)``.

    Args:
        log_dir: directory of the event files (ignored when ``writer`` is given).
        writer: an open ``torch.utils.tensorboard.SummaryWriter`` to write to instead; it is
            flushed, not closed, by :meth:`close`.
    """

    def __init__(self, log_dir: str | Path | None = None, writer: Any = None) -> None:
        if writer is None:
            if log_dir is None:
                raise UnknownLoggerError(
                    "TensorBoardSink needs log_dir or an open SummaryWriter; pass one of them."
                )
            writer = _import_summary_writer()(log_dir=str(log_dir))
            self._owned = True
        else:
            self._owned = False
        self.writer = writer

    @property
    def log_dir(self) -> str:
        return str(self.writer.log_dir)

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        file_writer = getattr(self.writer, "_get_file_writer", None)
        if file_writer is None:  # another SummaryWriter flavour (tensorboardX): one call per tag
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, int(step))
            return
        # one event holding every value (what add_scalar writes, per tag): ~100× fewer writes
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=t, simple_value=float(v)) for t, v in scalars.items()]
        file_writer().add_summary(Summary(value=values), int(step))

    def close(self) -> None:
        if self._owned:
            self.writer.close()
        else:
            self.writer.flush()


def _has_wandb_key() -> bool:
    """Whether a W&B API key is configured (environment or ~/.netrc), without any network call."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


_WANDB_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline"}


def wandb_mode(where: str | Path = "the run directory") -> str:
    """The W&B mode to pass to ``wandb.init`` (explicitly: wandb reads its environment only once
    per process): ``$WANDB_MODE`` ("disabled", or online/offline and their old spellings); else
    "online" when an API key is configured and "offline" (with a warning naming ``where``)
    when none is, so a run never stops to ask for a login."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        return _WANDB_MODES.get(env, env)
    if _has_wandb_key():
        return "online"
    warnings.warn(
        f"no W&B API key is configured, so W&B logs offline to {where}; upload later with "
        "`wandb sync`, or set WANDB_MODE to choose.",
        stacklevel=3,
    )
    return "offline"


class WandbSink:
    """Scalars as Weights & Biases history: ``run.log(scalars, step=step)``.

    Args:
        log_dir: where W&B keeps its files (``<log_dir>/wandb/``); the run id is stored in
            ``<log_dir>/wandb/rankdecay_run_id`` so a resumed run continues the same W&B run.
        name, config, project, group: passed to ``wandb.init`` (project defaults to
            ``$WANDB_PROJECT`` or "rankdecay").
        run: an active ``wandb`` run to log to instead (not finished by :meth:`close`).

    Mode: :func:`wandb_mode` — ``$WANDB_MODE`` when set; else online when an API key is
    configured, otherwise offline (with a warning naming ``wandb sync``): it never asks for a login.
    """

    def __init__(
        self,
        log_dir: str | Path | None = None,
        *,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        project: str | None = None,
        group: str | None = None,
        run: Any = None,
    ) -> None:
        if run is not None:
            self.run, self._owned = run, False
            return
        if log_dir is None:
            raise UnknownLoggerError("WandbSink needs log_dir or an active wandb run; pass one.")
        wandb = _import_wandb()  # before anything is written
        root = Path(log_dir).resolve()  # its service process has its own working directory
        (root / "wandb").mkdir(parents=True, exist_ok=True)
        id_file = root / "wandb" / "rankdecay_run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else ""
        if not run_id:
            run_id = secrets.token_hex(4)
            id_file.write_text(run_id + "\n")
        mode = wandb_mode(root / "wandb")
        options: dict[str, Any] = {
            "project": project or os.environ.get("WANDB_PROJECT") or "rankdecay",
            "name": name,
            "group": group,
            "config": dict(config) if config is not None else None,
            "dir": str(root),
            "id": run_id,
            "resume": "allow",
            "mode": mode,
        }
        try:  # several runs at once (an ensemble of runs in one process): wandb >= 0.19.10
            self.run = wandb.init(**options, reinit="create_new")
        except (TypeError, ValueError, wandb.errors.UsageError):
            self.run = wandb.init(**options, reinit=True)
        self._owned = True

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log(dict(scalars), step=int(step))

    def close(self) -> None:
        if self._owned:
            self.run.finish()


def as_sink(obj: Any, log_dir: str | Path | None = None) -> LoggerSink:
    """A sink from a logger name (opened under ``log_dir``), an open ``SummaryWriter``, an
    active ``wandb`` run, or an object that already has ``log(step, scalars)`` and ``close()``."""
    if isinstance(obj, str):
        (name,) = parse_loggers([obj])
        if log_dir is None:
            raise UnknownLoggerError(
                f"logger {obj!r} needs a directory for its files; pass log_dir=… "
                "(or pass an open SummaryWriter / wandb run instead of the name)."
            )
        return open_sinks([name], log_dir)[0]
    if getattr(obj, "__name__", None) == "wandb" and hasattr(obj, "init"):  # the wandb module
        if obj.run is None:
            raise UnknownLoggerError("no active wandb run; call wandb.init() before passing wandb.")
        return WandbSink(run=obj.run)
    module = type(obj).__module__
    if module.startswith("torch.utils.tensorboard") or module.startswith("tensorboardX"):
        return TensorBoardSink(writer=obj)
    if module.startswith("wandb"):
        return WandbSink(run=obj)
    if callable(getattr(obj, "log", None)) and callable(getattr(obj, "close", None)):
        return obj  # type: ignore[no-any-return]
    raise NotASinkError(
        f"cannot log to a {type(obj).__name__}; pass 'tensorboard', 'wandb', a SummaryWriter, "
        "a wandb run, or an object with log(step, scalars) and close()."
    )


def open_sinks(
    names: Iterable[str],
    log_dir: str | Path,
    *,
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
    group: str | None = None,
) -> list[LoggerSink]:
    """Open the named loggers for one run: TensorBoard events in ``<log_dir>/tensorboard``,
    W&B files in ``<log_dir>/wandb``; ``name``, ``config``, ``group`` label the W&B run."""
    sinks: list[LoggerSink] = []
    try:
        for logger in parse_loggers(list(names)):
            if logger == "tensorboard":
                sinks.append(TensorBoardSink(Path(log_dir) / "tensorboard"))
            else:
                sinks.append(WandbSink(log_dir, name=name, config=config, group=group))
    except BaseException:
        close_sinks(sinks)
        raise
    return sinks


def log_to_sinks(sinks: Sequence[LoggerSink], step: int, scalars: Mapping[str, float]) -> None:
    """Send ``scalars`` to every sink (non-finite values included: they mark a diverged run)."""
    if not scalars:
        return
    for sink in sinks:
        sink.log(step, scalars)


def close_sinks(sinks: Sequence[LoggerSink], quiet: bool = False) -> None:
    """Close every sink, even when one of them fails; the first error is re-raised unless
    ``quiet`` (used while another exception is already on its way)."""
    error: BaseException | None = None
    for sink in sinks:
        try:
            sink.close()
        except Exception as exc:  # noqa: BLE001 - close the others first
            error = error or exc
    if error is not None and not quiet:
        raise error
