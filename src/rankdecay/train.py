"""One training run: optimizer from config, loop, evaluation, spectra, run directory, resume.

Every transformer experiment (recall, grokking, lm, vit) is a config with the fields

    seed: int, task: <task config with build(seed)>, model: ModelConfig,
    optim: OptimConfig, lrd: LRDConfig, train: TrainConfig

and :func:`train` turns it into a run directory (format: :mod:`rankdecay.runio`).

The pieces are kept apart so other trainers (e.g. an ensemble of stacked models) can reuse the
bookkeeping without the loop:

- :func:`build_optimizer`, :func:`lr_at` — optimizer and learning-rate schedule from config;
- :func:`loss_and_accuracy`, :func:`evaluate` — the objective and the evaluation;
- :class:`RunState` — the step counter and the running training metrics (device tensors, no
  per-step host sync), saved in the checkpoint so a resumed run logs the same numbers;
- :class:`RunWriter` — the run directory: config, metrics/spectra JSONL, summary, atomic
  checkpoints (safetensors + JSON; loaded with safetensors only) and resume validation.

Loss and accuracy. With logits z ∈ ℝ^{N×C} (N = batch, or batch·positions for a language model)
and targets y ∈ {0…C−1}^N (−100 = ignored): loss = −(1/N) Σ log softmax(z)_{n,yₙ},
accuracy = (1/N) Σ [argmax zₙ = yₙ].

Learning rate at the update that produces step t+1 (t = 0, 1, …; W warm-up steps, T steps):
lr·(t+1)/W for t < W, then lr (constant) or min_lr + (lr − min_lr)·½(1 + cos(π·(t−W)/(T−W)))
(cosine).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import to_dict
from .device import autocast, loss_precision, maybe_compile, param_dtype, spectra_monitor
from .errors import NonFiniteLossError, RankdecayError
from .integrations.loggers import close_sinks, open_run_sinks
from .run_config import LRDConfig, OptimConfig, TrainConfig
from .runfiles import RunWriter, checkpoint_step
from .runio import FileWriteError, _jsonable
from .stopping import EarlyStop
from .validation import check_memory, validate_run_config

__all__ = [
    "LRDConfig",
    "OptimConfig",
    "RunResult",
    "RunState",
    "RunWriter",
    "TrainConfig",
    "build_model",
    "build_optimizer",
    "evaluate",
    "loss_and_accuracy",
    "lr_at",
    "train",
]


# ----------------------------------------------------------------------------- configs


# ----------------------------------------------------------------------------- model / optimizer


def resolve_device(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` → torch.device (see :func:`rankdecay.device.resolve_device`)."""
    from .device import resolve_device as _resolve

    return _resolve(name)


def build_model(model_cfg: Any, task: Any) -> nn.Module:
    """The experiment's TinyTransformer with the task's sizes filled in.

    Fields of the model config that describe the data (vocabulary, outputs, sequence length,
    readout) are taken from the task, so a config never disagrees with its data.
    """
    from .models import TinyTransformer

    names = {f.name for f in dataclasses.fields(model_cfg)}
    fill = {k: v for k, v in task.model_fields().items() if k in names}
    model_cfg = dataclasses.replace(model_cfg, **fill)
    return TinyTransformer(model_cfg)


def optimizer_settings(cfg: Any) -> tuple[OptimConfig, LRDConfig]:
    """The (optim, lrd) sections a run uses.

    An experiment config may define ``optimizer_settings()`` to derive them from its own
    top-level knobs (e.g. ``weight_decay_attn`` or a grokking ``arm``); else ``cfg.optim``,
    ``cfg.lrd``.
    """
    hook = getattr(cfg, "optimizer_settings", None)
    if callable(hook):
        return hook()
    return cfg.optim, cfg.lrd


def _weight_decay_spec(optim: OptimConfig) -> float | dict[str, float]:
    """``optim.weight_decay`` for every role, overridden per role by ``weight_decay_by_role``
    (roles of :func:`rankdecay.param_roles`, or "attention" for both attention roles)."""
    if not optim.weight_decay_by_role:
        return float(optim.weight_decay)
    return {
        "default": float(optim.weight_decay),
        **{k: float(v) for k, v in optim.weight_decay_by_role.items()},
    }


def build_optimizer(
    model: nn.Module, optim: OptimConfig, lrd: LRDConfig | None = None
) -> tuple[torch.optim.Optimizer, Any]:
    """Optimizer over ``param_groups(model, weight decay per role)``, with LRD attached if on.

    Returns (optimizer, low_rank_decay or None).
    """
    from .decay import LowRankDecay, param_groups

    if optim.lr <= 0 or not math.isfinite(optim.lr):
        raise RankdecayError(
            f"optim.lr must be a positive number, got {optim.lr}; set optim.lr to e.g. 1e-3.",
            param="optim.lr",
        )
    groups = param_groups(model, _weight_decay_spec(optim))
    if optim.name == "adamw":
        betas = tuple(optim.betas)
        if len(betas) != 2:
            raise RankdecayError(
                f"optim.betas needs two values, got {list(betas)}; set optim.betas to e.g. 0.9,0.98.",
                param="optim.betas",
            )
        opt: torch.optim.Optimizer = torch.optim.AdamW(
            groups, lr=optim.lr, betas=betas, eps=optim.eps
        )  # type: ignore[arg-type]
    elif optim.name == "adam":
        betas = tuple(optim.betas)
        if len(betas) != 2:
            raise RankdecayError(
                f"optim.betas needs two values, got {list(betas)}; set optim.betas to e.g. 0.9,0.98.",
                param="optim.betas",
            )
        opt = torch.optim.Adam(groups, lr=optim.lr, betas=betas, eps=optim.eps)  # type: ignore[arg-type]
    else:
        opt = torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum)
    for g in opt.param_groups:
        g["initial_lr"] = optim.lr
    decay = None
    if lrd is not None and lrd.strength > 0:
        decay = LowRankDecay(
            model,
            strength=lrd.strength,
            target=lrd.target,
            granularity=lrd.granularity,
            polar=lrd.polar,
            mode=lrd.mode,
            scale_by_lr=lrd.scale_by_lr,
            polar_steps=lrd.polar_steps,
        )
        decay.attach(opt)
    return opt, decay


def lr_at(t: int, optim: OptimConfig, total_steps: int) -> float:
    """Learning rate of the update that produces step t+1 (see the module docstring)."""
    w = optim.warmup_steps
    if w > 0 and t < w:
        return optim.lr * (t + 1) / w
    if optim.schedule == "constant":
        return optim.lr
    span = max(1, total_steps - w)
    progress = min(1.0, max(0.0, (t - w) / span))
    return optim.min_lr + (optim.lr - optim.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- objective


def loss_and_accuracy(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy and accuracy of logits (..., C) against integer targets (...).

    Targets equal to −100 are ignored. Both results are 0-dim tensors (no host sync). Half-precision
    logits (autocast) are upcast to float32 first; float32/float64 logits are used as they are.
    """
    C = logits.shape[-1]
    z = loss_precision(logits).reshape(-1, C)
    t = y.reshape(-1)
    loss = F.cross_entropy(z, t, ignore_index=-100)
    with torch.no_grad():
        hit = z.argmax(-1) == t
        if t.dtype.is_floating_point:  # pragma: no cover - defensive
            raise TypeError("targets must be integer class indices")
        valid = t != -100
        acc = (hit & valid).sum() / valid.sum().clamp_min(1)
    return loss, acc


@torch.no_grad()
def evaluate(
    model: nn.Module,
    eval_sets: Mapping[str, tuple[Tensor, Tensor]],
    batch_size: int = 2048,
) -> dict[str, float]:
    """``{name}_loss`` and ``{name}_acc`` over each evaluation set (token-weighted means)."""
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    try:
        for name, (x, y) in eval_sets.items():
            loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
            hit_sum = torch.zeros((), dtype=torch.float64, device=x.device)
            count = 0
            for i in range(0, x.shape[0], batch_size):
                xb, yb = x[i : i + batch_size], y[i : i + batch_size]
                logits = model(xb)
                C = logits.shape[-1]
                z, t = logits.reshape(-1, C), yb.reshape(-1)
                valid = t != -100
                n = int(valid.sum())
                loss_sum += F.cross_entropy(
                    loss_precision(z), t, ignore_index=-100, reduction="sum"
                ).double()
                hit_sum += ((z.argmax(-1) == t) & valid).sum().double()
                count += n
            out[f"{name}_loss"] = float(loss_sum / max(count, 1))
            out[f"{name}_acc"] = float(hit_sum / max(count, 1))
    finally:
        model.train(was_training)
    return out


# ----------------------------------------------------------------------------- bookkeeping


@dataclass
class RunState:
    """Step counter and running training metrics of one run (or one ensemble member).

    ``accumulate`` adds a step's loss and accuracy on the device without syncing; ``pop`` returns
    their means since the last ``pop`` (one host sync per log event).
    """

    step: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    loss_sum: Tensor = field(default=None)  # type: ignore[assignment]
    acc_sum: Tensor = field(default=None)  # type: ignore[assignment]
    count: int = 0

    def __post_init__(self) -> None:
        if self.loss_sum is None:
            self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        if self.acc_sum is None:
            self.acc_sum = torch.zeros((), dtype=torch.float64, device=self.device)

    def accumulate(self, loss: Tensor, acc: Tensor) -> None:
        self.loss_sum.add_(loss.detach())
        self.acc_sum.add_(acc)
        self.count += 1

    def pending_finite(self) -> bool:
        return bool(torch.isfinite(self.loss_sum))

    def pop(self) -> dict[str, float]:
        if self.count == 0:
            return {}
        out = {"loss": float(self.loss_sum) / self.count, "acc": float(self.acc_sum) / self.count}
        self.loss_sum.zero_()
        self.acc_sum.zero_()
        self.count = 0
        return out

    def tensors(self) -> dict[str, Tensor]:
        return {
            "run.loss_sum": self.loss_sum.detach().cpu(),
            "run.acc_sum": self.acc_sum.detach().cpu(),
        }

    def load(self, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
        self.step = int(meta["step"])
        self.count = int(meta["count"])
        self.loss_sum = tensors["run.loss_sum"].to(self.device).clone()
        self.acc_sum = tensors["run.acc_sum"].to(self.device).clone()


@dataclass
class RunResult:
    """What a verdict function sees: the run's full metric history and its final values."""

    run_dir: Path
    config: Any
    metrics: list[dict[str, Any]]
    final: dict[str, Any]

    def series(self, key: str) -> list[tuple[int, float]]:
        return [(r["step"], r[key]) for r in self.metrics if r.get(key) is not None]


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _py_state_to_json(random.getstate()),
        "numpy": {
            "kind": np_state[0],
            "keys": np.asarray(np_state[1]).tolist(),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    return state


def _py_state_to_json(st: Any) -> list[Any]:
    version, internal, gauss = st
    return [version, list(internal), gauss]


def _rng_tensors() -> dict[str, Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def _set_rng(state: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            np.asarray(n["keys"], dtype=np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _optimizer_to_parts(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state dict → (tensors for safetensors, JSON-able rest)."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    meta = {"param_groups": _jsonable(sd["param_groups"]), "scalars": scalars}
    return tensors, meta


def _optimizer_from_parts(
    opt: torch.optim.Optimizer, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, rest in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(rest)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    opt.load_state_dict({"state": state, "param_groups": groups})


# ----------------------------------------------------------------------------- signals / progress


class _StopFlag:
    """Turns SIGINT / SIGTERM into a flag the loop checks once per step (a second Ctrl-C aborts)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    @contextmanager
    def installed(self) -> Iterator[_StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)
        try:
            yield self
        finally:
            for sig, old in self._old.items():
                signal.signal(sig, old)


class _Progress:
    def __init__(self, enabled: bool, total: int, start: int, label: str) -> None:
        self.enabled = enabled
        self._p: Any = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._p = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            transient=False,
        )
        self._p.start()
        self._task = self._p.add_task(label, total=total, completed=start, info="")
        self.info: dict[str, str] = {}

    def update(self, step: int, values: Mapping[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        if values:
            for key, label in (
                ("loss", "loss"),
                ("acc", "acc"),
                ("val_acc", "val acc"),
                ("test_acc", "test acc"),
                ("qk_rank", "QK rank"),
            ):
                if values.get(key) is not None:
                    self.info[label] = f"{label} {values[key]:.3g}"
        self._p.update(self._task, completed=step, info="  ".join(self.info.values()))

    def close(self) -> None:
        if self.enabled and self._p is not None:
            self._p.stop()


# ----------------------------------------------------------------------------- the run


Verdict = Callable[[RunResult], list[dict[str, Any]]]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _final_values(rows: list[dict[str, Any]]) -> dict[str, Any]:
    final: dict[str, Any] = {}
    for r in rows:
        for k, v in r.items():
            if v is not None:
                final[k] = v
    return final


def _params_finite(model: nn.Module) -> bool:
    flags = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


def initial_summary(
    cfg: Any,
    experiment: str,
    preset: str | None,
    step: int,
    resumed_from: int | None,
    device: torch.device,
) -> dict[str, Any]:
    """The ``summary.json`` of a run that is starting (status "running")."""
    return {
        "status": "running",
        "error": None,
        "experiment": experiment,
        "preset": preset,
        "seed": cfg.seed,
        "steps": cfg.train.steps,
        "step": step,
        "resumed_from": resumed_from,
        "device": str(device),
        "torch": torch.__version__,
        "final": {},
        "verdict": [],
    }


def nonfinite_error(cause: str, writer: RunWriter) -> NonFiniteLossError:
    """The error for a NaN/Inf: ``cause`` and how to continue, stating only what is on disk."""
    step = checkpoint_step(writer.dir)
    if step is None:
        return NonFiniteLossError(
            f"{cause}; no checkpoint was written yet, so lower optim.lr or set optim.grad_clip and "
            f"start the run again (into the same directory {writer.dir} if you like).",
            param=("optim.lr", "optim.grad_clip"),
        )
    return NonFiniteLossError(
        f"{cause}; lower optim.lr or set optim.grad_clip and resume {writer.dir}, which continues "
        f"from its intact checkpoint at step {step}.",
        param=("resume", "optim.lr", "optim.grad_clip"),
    )


def write_failure(writer: RunWriter, exc: BaseException, step: int | None) -> RankdecayError | None:
    """After an OS error while writing (disk full), the one-sentence error to raise instead
    (None for other errors); the summary is updated only if that write still succeeds."""
    if not isinstance(exc, FileWriteError):
        return None
    fix = "free some space" if exc.os_errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
    ck = checkpoint_step(writer.dir)
    where = (
        f"its checkpoint at step {ck} is intact, so {fix} and resume {writer.dir}"
        if ck is not None
        else f"no checkpoint was written yet, so {fix} and start the run again"
    )
    at = f" at step {step}" if step is not None else ""
    return RankdecayError(
        f"the run stopped{at}: could not write {exc.path} ({exc.reason}); {where} "
        "(no half-written file was left behind).",
        param="resume" if ck is not None else None,
    )


def resume_from_checkpoint(
    writer: RunWriter,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: RunState,
    tc: TrainConfig,
) -> int | None:
    """Restore model, optimizer, running sums and RNG from the run's newest intact checkpoint,
    check the logs against it and drop rows past it; return its step (None: no checkpoint, the
    run starts over — refused when its logs show it had run).
    """

    def restore(tensors: dict[str, Tensor], ck: dict[str, Any]) -> None:
        _optimizer_from_parts(optimizer, tensors, ck["optimizer"])
        state.load(tensors, ck)
        _set_rng(ck["rng"], tensors)

    if writer.has_checkpoint():
        writer.load_checkpoint(model, restore, max_step=tc.steps)
        writer.check_history(state.step, tc)
        writer.truncate_after(state.step)
        return state.step
    writer.start_over()  # killed before its first checkpoint (refused if its logs say otherwise)
    return None


def save_run_checkpoint(
    writer: RunWriter, model: nn.Module, optimizer: torch.optim.Optimizer, state: RunState
) -> None:
    """Checkpoint weights, optimizer state, running sums and RNG (refuses NaN/Inf weights)."""
    if not _params_finite(model):
        raise nonfinite_error(f"the weights became NaN/Inf by step {state.step}", writer)
    opt_tensors, opt_meta = _optimizer_to_parts(optimizer)
    tensors = {**opt_tensors, **state.tensors(), **_rng_tensors()}
    writer.save_checkpoint(
        model,
        tensors,
        {"step": state.step, "count": state.count, "optimizer": opt_meta, "rng": _rng_state()},
    )


def log_event(
    step: int,
    *,
    state: RunState,
    writer: RunWriter,
    tc: TrainConfig,
    lr: float,
    evaluate_fn: Callable[[], dict[str, float]],
    monitor: Any,
    force_eval: bool = False,
    sinks: Sequence[Any] = (),
) -> dict[str, Any]:
    """One metrics row at ``step``: running loss/acc + lr (log steps), evaluation (eval steps),
    monitor summary (monitor steps; its records go to spectra.jsonl); appended to metrics.jsonl
    and, as tags (:func:`rankdecay.integrations.loggers.run_scalars`), sent to ``sinks``.

    Raises :class:`NonFiniteLossError` when the pending training loss is NaN/Inf.
    """
    from .monitor import summarize_records

    row: dict[str, Any] = {"step": step}
    if state.count and (step % tc.log_every == 0 or force_eval):
        if not state.pending_finite():
            first = step - state.count + 1
            where = f"at step {step}" if first == step else f"between steps {first} and {step}"
            raise nonfinite_error(f"the training loss became NaN/Inf {where}", writer)
        row.update(state.pop())
        row["lr"] = lr
    if step % tc.eval_every == 0 or force_eval:
        row.update(evaluate_fn())
    records: list[dict[str, Any]] = []
    if monitor.every > 0 and (monitor.due(step) or force_eval):
        records = monitor.force_step(step)
        writer.log_spectra(records)
        row.update(summarize_records(records))
    if len(row) > 1:
        writer.log_metrics(row)
        if sinks:
            from .integrations.loggers import log_to_sinks, run_scalars

            log_to_sinks(sinks, step, run_scalars(row, records, per_head=tc.log_per_head))
    return row


def train(
    cfg: Any,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    experiment: str = "custom",
    preset: str | None = None,
    verdict: Verdict | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``; return the summary (also written to summary.json).

    ``resume=True`` continues from the directory's checkpoint (the config must be the same);
    rows logged after the checkpoint are dropped first, so the resumed run's metrics.jsonl
    equals that of an uninterrupted run. A NaN/Inf training loss raises
    :class:`~rankdecay.errors.NonFiniteLossError` after writing ``status: "failed"``; SIGINT /
    SIGTERM save a checkpoint and return with ``status: "interrupted"``.
    """
    from .distributed import launched_distributed, train_distributed

    if launched_distributed():  # under torchrun: DistributedDataParallel (rankdecay.distributed)
        return train_distributed(
            cfg,
            run_dir,
            resume=resume,
            progress=progress,
            experiment=experiment,
            preset=preset,
            verdict=verdict,
        )
    tc: TrainConfig = cfg.train
    validate_run_config(cfg)  # every value, before the run directory exists
    writer = RunWriter(run_dir, getattr(tc, "keep_checkpoints", 1))
    meta = {"experiment": experiment, "preset": preset, "seed": cfg.seed, "config": to_dict(cfg)}
    writer.start(meta, resume)  # locks the directory: one writer per run
    try:
        return _train_locked(
            cfg,
            writer,
            resume=resume,
            progress=progress,
            experiment=experiment,
            preset=preset,
            verdict=verdict,
        )
    except BaseException as exc:
        if not resume and not writer.summary_written:
            writer.abandon()  # failed before the loop: nothing may block the same --out
        err = write_failure(writer, exc, None)
        if err is not None:
            raise err from None
        raise
    finally:
        writer.release()


def _train_locked(
    cfg: Any,
    writer: RunWriter,
    *,
    resume: bool,
    progress: bool,
    experiment: str,
    preset: str | None,
    verdict: Verdict | None,
) -> dict[str, Any]:
    """:func:`train` once its run directory is started and locked."""
    tc: TrainConfig = cfg.train
    if resume:
        prev = writer.read_summary()
        if prev is not None and prev.get("status") == "finished":
            return prev
    device = resolve_device(tc.device)

    _seed_everything(cfg.seed)
    task = cfg.task.build(cfg.seed)
    check_memory(cfg, task, device)  # refuses an absurd model/batch before allocating it
    model = build_model(cfg.model, task).to(device=device, dtype=param_dtype(tc.dtype, tc.amp))
    model.train()
    optim_cfg, lrd_cfg = optimizer_settings(cfg)
    optimizer, _lrd = build_optimizer(model, optim_cfg, lrd_cfg)

    forward = maybe_compile(model, tc.compile)
    amp = autocast(device, tc.amp)
    monitor = spectra_monitor(
        model, tc.spectra_device, every=tc.monitor_every, rtol=tc.monitor_rtol, keep_records=False
    )
    if device.type != "cpu" and callable(getattr(task, "to", None)):
        task.to(device)  # batches are then made on the device
    eval_sets = {k: (x.to(device), y.to(device)) for k, (x, y) in task.eval_sets().items()}
    state = RunState(device=device)

    resumed_from: int | None = None
    if resume:
        resumed_from = resume_from_checkpoint(writer, model, optimizer, state, tc)
    early = EarlyStop.from_config(tc, writer.metrics())

    summary = initial_summary(cfg, experiment, preset, state.step, resumed_from, device)
    writer.write_summary(summary)
    sinks = open_run_sinks(cfg, writer.dir, experiment)

    def checkpoint() -> None:
        save_run_checkpoint(writer, model, optimizer, state)

    def evaluate_now() -> dict[str, float]:
        with amp:
            return evaluate(forward, eval_sets, tc.eval_batch_size)

    def bookkeeping(step: int, force_eval: bool = False) -> dict[str, Any]:
        return log_event(
            step,
            state=state,
            writer=writer,
            tc=tc,
            lr=optimizer.param_groups[0]["lr"],
            evaluate_fn=evaluate_now,
            monitor=monitor,
            force_eval=force_eval,
            sinks=sinks,
        )

    bar = _Progress(progress, tc.steps, state.step, f"{experiment}")
    t0 = time.perf_counter()
    start_step = state.step
    stop = _StopFlag()
    params = [p for p in model.parameters() if p.requires_grad]
    clip = optim_cfg.grad_clip
    try:
        with stop.installed():
            if state.step == 0:
                row0 = bookkeeping(0)
                bar.update(0, row0)
                early.update(row0)
            while state.step < tc.steps:
                if stop.signal is not None:
                    break
                if early.due:  # also after a resume whose replayed evaluations are already due
                    summary["stopped_early"] = early.describe(state.step)
                    break
                t = state.step
                lr = lr_at(t, optim_cfg, tc.steps)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                x, y = task.train_batch(t, tc.batch_size)
                if x.device != device:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with amp:
                    logits = forward(x)
                loss, acc = loss_and_accuracy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, clip)
                optimizer.step()
                state.accumulate(loss, acc)
                state.step = t + 1
                s = state.step
                last = s == tc.steps
                if s % tc.log_every == 0 or s % tc.eval_every == 0 or monitor.due(s) or last:
                    row = bookkeeping(s, force_eval=last)
                    bar.update(s, row)
                    early.update(row)
                if s % tc.checkpoint_every == 0 or last or early.due:
                    checkpoint()
            if stop.signal is not None and state.step < tc.steps:
                checkpoint()
                bar.close()
                summary.update(
                    status="interrupted",
                    step=state.step,
                    error=f"interrupted by signal {stop.signal} at step {state.step}; "
                    f"resume {writer.dir} to continue.",
                    final=_final_values(writer.metrics()),
                    elapsed_s=time.perf_counter() - t0,
                )
                writer.write_summary(summary)
                close_sinks(sinks)
                return summary
    except NonFiniteLossError as exc:
        bar.close()
        close_sinks(sinks, quiet=True)
        summary.update(
            status="failed", error=str(exc), step=state.step, final=_final_values(writer.metrics())
        )
        with contextlib.suppress(OSError):
            writer.write_summary(summary)
        raise
    except BaseException as exc:
        bar.close()
        close_sinks(sinks, quiet=True)
        err = write_failure(writer, exc, state.step)
        message = str(err) if err is not None else f"{type(exc).__name__}: {exc}"
        summary.update(status="failed", error=message, step=state.step)
        with contextlib.suppress(OSError):
            writer.write_summary(summary)
        if err is not None:
            raise err from None
        raise
    bar.close()
    close_sinks(sinks)
    elapsed = time.perf_counter() - t0
    rows = writer.metrics()
    final = _final_values(rows)
    result = RunResult(writer.dir, cfg, rows, final)
    summary.update(
        status="finished",
        step=state.step,
        final=final,
        verdict=verdict(result) if verdict is not None else [],
        elapsed_s=elapsed,
        steps_per_s=(state.step - start_step) / elapsed if elapsed > 0 else None,
    )
    writer.write_summary(summary)
    return summary
