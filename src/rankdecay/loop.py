"""One run's lifecycle, written once; what differs between trainers is an :class:`Engine`.

    validate every config ─ start (lock) each run directory ─ skip runs already finished
    ─ engine.build ─ resume: restore checkpoints, drop log rows past them ─ engine.start
    ─ "running" summary, spectral monitor, logger sinks
    ─ for each step: learning rate ─ engine.step ─ running sums ─ on log/eval/monitor steps a
      metrics row (NaN/Inf check, evaluation, spectra) ─ early stop ─ checkpoint cadence ─
      SIGINT/SIGTERM: checkpoint, "interrupted"
    ─ "finished" (with the verdict) or "failed" summaries

A run (:class:`RunSpec`) is one run directory (format: :mod:`rankdecay.runio`). An engine trains
R runs at once: one model (R = 1, :class:`rankdecay.engine.ModelEngine`, which under torchrun
is one DDP rank) or a stack of R members (:class:`rankdecay.ensemble.StackEngine`). Runs end on
their own: a NaN/Inf loss fails its run (the engine freezes it) and an early stop finishes it
while the others go on. Under DDP every rank runs this loop and rank 0 alone writes
(``engine.main``); ``engine.share`` gives every rank rank 0's result (a metrics row, the resume
step, an error) and ``engine.any_rank`` tells every rank that one of them was signalled.

Learning rate at the update that produces step t+1 (t = 0, 1, …; W warm-up steps, T steps):
lr·(t+1)/W for t < W, then lr (constant) or min_lr + (lr − min_lr)·½(1 + cos(π·(t−W)/(T−W)))
(cosine).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from .config import to_dict
from .device import spectra_monitor
from .errors import NonFiniteLossError, RankdecayError, RankdecayTypeError, RankdecayValueError
from .integrations.loggers import close_sinks, log_to_sinks, open_run_sinks, run_scalars
from .monitor import summarize_records
from .progress import ProgressBar, StopFlag
from .run_config import LRDConfig, OptimConfig, RunConfig, TrainConfig
from .runfiles import RunWriter
from .runstate import (
    RunResult,
    RunState,
    load_run_checkpoint,
    nonfinite_error,
    save_run_checkpoint,
    write_failure,
)
from .stopping import EarlyStop
from .validation import validate_run_config

__all__ = [
    "Engine",
    "RunSpec",
    "lr_at",
    "optimizer_settings",
    "train_runs",
]

T = TypeVar("T")
Verdict = Callable[[RunResult], list[dict[str, Any]]]
#: metrics-row keys the progress bar shows, and their labels
SHOWN = {
    "loss": "loss",
    "acc": "acc",
    "val_acc": "val acc",
    "test_acc": "test acc",
    "qk_rank": "QK rank",
}


# ----------------------------------------------------------------------------- engine and runs


class Engine:
    """What the loop asks of a trainer that runs R runs at once (one model: R = 1; a stack of
    members: R = M); run i is the engine's i-th config. The defaults are those of one process
    that trains its runs to the end together; subclasses supply the first five methods."""

    device: torch.device  #: where the runs train (set by :meth:`build`)
    main = True  #: this process writes the run directories (False on DDP ranks > 0)
    label = "run"  #: progress-bar label

    def build(self, cfgs: Sequence[RunConfig]) -> None:
        """Seed, build tasks, models and optimizers (each run exactly as a solo run would)."""
        raise NotImplementedError

    def solo(self, i: int) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Run i as a solo model and optimizer (a checkpoint loads into them before
        :meth:`start`; the spectral monitor reads the model)."""
        raise NotImplementedError

    def start(self, step: int) -> None:
        """Ready to train from ``step`` (after any checkpoint was loaded)."""
        raise NotImplementedError

    def step(
        self, t: int, lrs: Sequence[float], live: Sequence[bool]
    ) -> tuple[Sequence[Tensor], Sequence[Tensor]]:
        """One update of every live run at learning rates ``lrs``; each run's training loss and
        accuracy on its batch (0-dim tensors, no host sync)."""
        raise NotImplementedError

    def evaluate(self, step: int) -> list[dict[str, float]]:
        """``{set}_loss`` / ``{set}_acc`` of every run on its evaluation sets at ``step``."""
        raise NotImplementedError

    def checkpoint_view(
        self, i: int
    ) -> AbstractContextManager[tuple[nn.Module, torch.optim.Optimizer]]:
        """Run i as a solo model and optimizer while its checkpoint is written."""
        return contextlib.nullcontext(self.solo(i))

    def end(self, i: int) -> None:
        """Run i ended before the others (failed or stopped early): train it no further."""

    def summary_fields(self) -> dict[str, Any]:
        """Extra keys of every run's summary.json (e.g. ``world_size``, ``ensemble_size``)."""
        return {}

    def resume_hint(self, run_dir: Path) -> str:
        """How to continue an interrupted run."""
        return f"resume {run_dir}"

    def share(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (DDP)."""
        return obj

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (DDP)."""
        return flag


@dataclass
class RunSpec:
    """One run the loop trains: its config, run directory and how to report it."""

    cfg: RunConfig
    run_dir: Path
    experiment: str = "custom"
    preset: str | None = None
    verdict: Verdict | None = None
    resume: bool = False


class _Run:
    """A run inside the loop: its writer, running sums, summary, early stop, monitor, sinks."""

    def __init__(self, index: int, spec: RunSpec) -> None:
        self.index = index  # position among the caller's specs
        self.slot = 0  # position in the engine
        self.spec = spec
        self.writer = RunWriter(spec.run_dir, getattr(spec.cfg.train, "keep_checkpoints", 1))
        self.started = False
        self.live = True
        self.summary: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.state = RunState()
        self.optim = OptimConfig()
        self.early = EarlyStop()
        self.lr = 0.0
        self.monitor: Any = None
        self.sinks: list[Any] = []


# ----------------------------------------------------------------------------- the lifecycle


def check_run_config(cfg: object) -> None:
    """Raise :class:`RankdecayTypeError` unless ``cfg`` is a run config (:class:`RunConfig`)."""
    if not dataclasses.is_dataclass(cfg) or not all(
        hasattr(cfg, f) for f in ("seed", "task", "model", "optim", "lrd", "train")
    ):
        raise RankdecayTypeError(
            f"training needs an experiment config (a dataclass with seed, task, model, optim, "
            f"lrd and train), got {type(cfg).__name__}; make one with "
            "rankdecay.experiments.get_experiment(name).config(preset).",
            param="cfg",
        )


def train_runs(
    engine: Engine,
    specs: Sequence[RunSpec],
    *,
    progress: bool = False,
    raise_failures: bool = True,
    on_done: Callable[[int, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``specs`` with ``engine``; return their summaries (each also in its summary.json).

    ``resume`` (per spec) continues from the run's checkpoint; a finished run is returned as it
    is. ``raise_failures``: a run that failed (NaN/Inf) raises its error once the loop ends (a
    solo run), else its summary says so (ensemble members). ``on_done(i, summary)`` is called as
    run i ends.
    """
    for spec in specs:
        check_run_config(spec.cfg)
        validate_run_config(spec.cfg)  # every value, before any run directory exists
    runs = [_Run(i, spec) for i, spec in enumerate(specs)]

    def start() -> None:
        for r in runs:
            cfg = r.spec.cfg
            meta = {"experiment": r.spec.experiment, "preset": r.spec.preset, "seed": cfg.seed}
            r.writer.start({**meta, "config": to_dict(cfg)}, r.spec.resume)  # locks it
            r.started = True

    try:
        _on_main(engine, start)
        todo = []
        for r in runs:
            prev = r.writer.read_summary() if r.spec.resume else None
            if prev is not None and prev.get("status") == "finished":
                r.summary, r.live = prev, False
                if on_done is not None:
                    on_done(r.index, prev)
            else:
                todo.append(r)
        if todo:
            _Loop(engine, todo, progress, on_done).run()
    except BaseException as exc:
        for r in runs:  # failed before the loop: nothing may block the same --out
            if r.started and not r.spec.resume and not r.writer.summary_written:
                r.writer.abandon()
        path = str(getattr(exc, "path", ""))  # the run whose file could not be written
        owner = next((r for r in runs if path.startswith(str(r.writer.dir))), runs[0])
        err = write_failure(owner.writer, exc, None)
        if err is not None:
            raise err from None
        raise
    finally:
        for r in runs:
            if r.started:
                r.writer.release()
    if raise_failures:
        for r in runs:
            if r.error is not None:
                raise r.error
    return [r.summary or {"status": "failed", "error": "not run"} for r in runs]


class _Loop:
    """The step loop over the runs that are not finished yet (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        runs: list[_Run],
        progress: bool,
        on_done: Callable[[int, dict[str, Any]], None] | None,
    ) -> None:
        self.engine = engine
        self.runs = runs
        self.tc: TrainConfig = runs[0].spec.cfg.train  # the runs share their loop settings
        self.progress = progress
        self.on_done = on_done
        self.shown: dict[str, str] = {}  # the progress bar's text, label → value
        for slot, r in enumerate(runs):
            r.slot = slot

    def live(self) -> list[_Run]:
        return [r for r in self.runs if r.live]

    # ---------------------------------------------------------------- before the first step
    def prepare(self) -> None:
        engine, tc = self.engine, self.tc
        engine.build([r.spec.cfg for r in self.runs])
        for r in self.runs:
            r.state = RunState(device=engine.device)
            r.optim = optimizer_settings(r.spec.cfg)[0]
        resumed = [None] * len(self.runs)
        if any(r.spec.resume for r in self.runs):
            resumed = _on_main(engine, self.restore)
            if not engine.main:  # DDP: the other ranks load the checkpoint rank 0 chose
                for r, step in zip(self.runs, resumed):
                    if step is not None:
                        load_run_checkpoint(r.writer, *engine.solo(r.slot), r.state, tc.steps)
        for r in self.runs:  # a resumed run replays its streak from the rows it kept
            r.early = EarlyStop.from_config(r.spec.cfg.train, r.writer.metrics())
        engine.share(None)  # every rank has read the checkpoint and logs before rank 0 writes
        self.step0 = self.runs[0].state.step
        engine.start(self.step0)
        for r, resumed_from in zip(self.runs, resumed):
            cfg = r.spec.cfg
            r.lr = lr_at(self.step0, r.optim, tc.steps)
            r.summary = {
                "status": "running",
                "error": None,
                "experiment": r.spec.experiment,
                "preset": r.spec.preset,
                "seed": cfg.seed,
                "steps": cfg.train.steps,
                "step": self.step0,
                "resumed_from": resumed_from,
                "device": str(engine.device),
                "torch": torch.__version__,
                "final": {},
                "verdict": [],
                **engine.summary_fields(),
            }
            if engine.main:
                model = engine.solo(r.slot)[0]
                every, rtol = tc.monitor_every, tc.monitor_rtol
                r.monitor = spectra_monitor(
                    model, tc.spectra_device, every=every, rtol=rtol, keep_records=False
                )
                r.writer.write_summary(r.summary)
                r.sinks = open_run_sinks(cfg, r.writer.dir, r.spec.experiment)

    def restore(self) -> list[int | None]:
        """Each resumed run from its newest intact checkpoint, its logs checked against it, all
        at one step; then the rows logged past it are dropped. None: the run starts over."""
        resumed: list[int | None] = []
        for r in self.runs:
            if r.spec.resume and r.writer.has_checkpoint():
                load_run_checkpoint(r.writer, *self.engine.solo(r.slot), r.state, self.tc.steps)
                r.writer.check_history(r.state.step, self.tc)
                resumed.append(r.state.step)
            else:
                if r.spec.resume:  # killed before its first checkpoint (refused if it had run)
                    r.writer.start_over()
                resumed.append(None)
        steps = {r.state.step for r in self.runs}
        if len(steps) > 1:
            raise RankdecayValueError(
                f"ensemble members were checkpointed at different steps {sorted(steps)}; resume "
                "them in separate ensembles (the ensemble executor groups them by step).",
                param="executor",
            )
        for r, step in zip(self.runs, resumed):
            if step is not None:
                r.writer.truncate_after(step)
        return resumed

    # ---------------------------------------------------------------- the loop
    def run(self) -> None:
        self.prepare()
        engine, tc, runs = self.engine, self.tc, self.runs
        self.bar = ProgressBar(self.progress and engine.main, tc.steps, engine.label, self.step0)
        self.t0 = time.perf_counter()
        stop = StopFlag()
        step = self.step0
        try:
            with stop.installed():
                if step == 0:
                    self.bookkeeping(0)
                while step < tc.steps:
                    for r in self.live():
                        if r.early.due:  # also after a resume whose replayed rows are due
                            r.summary["stopped_early"] = r.early.describe(step)
                            self.finish(r, step)
                            engine.end(r.slot)
                    if not self.live():
                        break
                    t = step
                    lrs = [lr_at(t, r.optim, tc.steps) if r.live else 0.0 for r in runs]
                    losses, accs = engine.step(t, lrs, [r.live for r in runs])
                    step = t + 1
                    for r, lr, loss, acc in zip(runs, lrs, losses, accs):
                        if r.live:
                            r.state.accumulate(loss, acc)
                            r.lr = lr
                        r.state.step = step
                    last = step == tc.steps
                    monitor_due = tc.monitor_every > 0 and step % tc.monitor_every == 0
                    if step % tc.log_every == 0 or step % tc.eval_every == 0 or monitor_due or last:
                        self.bookkeeping(step, force=last)
                    if (
                        step % tc.checkpoint_every == 0
                        or last
                        or any(r.early.due for r in self.live())
                    ):
                        self.checkpoint()
                    if engine.any_rank(stop.signal is not None) and not last:
                        self.interrupt(stop.signal, step)
                        return
        except BaseException as exc:
            err = self.crash(exc, step)
            if err is not None:
                raise err from None
            raise
        self.bar.close()
        for r in self.live():
            self.finish(r, step)

    def bookkeeping(self, step: int, force: bool = False) -> None:
        """A metrics row of every live run at ``step`` (:meth:`row`); a NaN/Inf training loss
        fails its run."""
        shown: dict[str, Any] = {}
        for r in self.live():
            try:
                row = self.row(r, step, force)
            except NonFiniteLossError as exc:
                self.fail(r, exc)
                continue
            r.early.update(row)
            shown = shown or row
        for key, label in SHOWN.items():  # the bar keeps each value until it is logged again
            if shown.get(key) is not None:
                self.shown[label] = f"{label} {shown[key]:.3g}"
        self.bar.update(step, text="  ".join(self.shown.values()))

    def row(self, r: _Run, step: int, force: bool) -> dict[str, Any]:
        """Run r's metrics row at ``step``: running loss/acc + lr (log steps), evaluation (eval
        steps), monitor summary (monitor steps; its records go to spectra.jsonl); appended to
        metrics.jsonl and, as tags (:func:`rankdecay.integrations.loggers.run_scalars`), sent to
        the run's sinks. Raises :class:`NonFiniteLossError` when the pending training loss is
        NaN/Inf: every DDP rank decides alike (its sums are the all-reduced ones) and gets rank
        0's row."""
        tc, state = self.tc, r.state
        row: dict[str, Any] = {"step": step}
        if state.count and (step % tc.log_every == 0 or force):
            if not state.pending_finite():
                first = step - state.count + 1
                where = f"at step {step}" if first == step else f"between steps {first} and {step}"
                raise nonfinite_error(f"the training loss became NaN/Inf {where}", r.writer)
            row.update(state.pop(), lr=r.lr)
        if not self.engine.main:
            return self.engine.share(row)
        if step % tc.eval_every == 0 or force:
            row.update(self.engine.evaluate(step)[r.slot])
        records: list[dict[str, Any]] = []
        if r.monitor.every > 0 and (r.monitor.due(step) or force):
            records = r.monitor.force_step(step)
            r.writer.log_spectra(records)
            row.update(summarize_records(records))
        if len(row) > 1:
            r.writer.log_metrics(row)
            if r.sinks:
                scalars = run_scalars(row, records, per_head=tc.log_per_head)
                log_to_sinks(r.sinks, step, scalars)
        return self.engine.share(row)

    def checkpoint(self) -> None:
        """Every live run's checkpoint (rank 0 writes); NaN/Inf weights fail their run."""
        if not self.engine.main:
            return
        for r in self.live():
            try:
                with self.engine.checkpoint_view(r.slot) as (model, optimizer):
                    save_run_checkpoint(r.writer, model, optimizer, r.state)
            except NonFiniteLossError as exc:
                self.fail(r, exc)

    # ---------------------------------------------------------------- how runs end
    def close(self, r: _Run, quiet: bool = False) -> None:
        r.live = False
        if self.engine.main:
            # quiet: another error is on its way, so this summary is a courtesy
            with contextlib.suppress(OSError) if quiet else contextlib.nullcontext():
                r.writer.write_summary(r.summary)
            close_sinks(r.sinks, quiet=quiet)
        if self.on_done is not None:
            self.on_done(r.index, r.summary)

    def final(self, r: _Run) -> dict[str, Any]:
        return _final_values(r.writer.metrics()) if self.engine.main else {}

    def finish(self, r: _Run, step: int) -> None:
        elapsed = time.perf_counter() - self.t0
        rows = r.writer.metrics() if self.engine.main else []
        final = _final_values(rows)
        verdict = r.spec.verdict
        result = RunResult(r.writer.dir, r.spec.cfg, rows, final)
        r.summary.update(
            status="finished",
            step=step,
            final=final,
            verdict=verdict(result) if verdict is not None and self.engine.main else [],
            elapsed_s=elapsed,
            steps_per_s=(step - self.step0) / elapsed if elapsed > 0 else None,
        )
        self.close(r)

    def fail(self, r: _Run, exc: NonFiniteLossError) -> None:
        """A NaN/Inf ends this run alone; the engine trains it no further."""
        self.engine.end(r.slot)
        r.error = exc
        r.summary.update(status="failed", error=str(exc), step=r.state.step, final=self.final(r))
        self.close(r, quiet=True)

    def interrupt(self, signum: int | None, step: int) -> None:
        """SIGINT/SIGTERM: checkpoint every live run and say how to continue."""
        self.checkpoint()
        self.bar.close()
        by = f"signal {signum}" if signum is not None else "a signal"
        for r in self.live():
            hint = self.engine.resume_hint(r.writer.dir)
            r.summary.update(
                status="interrupted",
                step=step,
                error=f"interrupted by {by} at step {step}; {hint} to continue.",
                final=self.final(r),
                elapsed_s=time.perf_counter() - self.t0,
            )
            self.close(r)

    def crash(self, exc: BaseException, step: int) -> RankdecayError | None:
        """Any other error fails every live run; returns the error to raise for a failed write
        (it says what is intact), None to raise ``exc`` itself."""
        self.bar.close()
        errors = []
        for r in self.live():
            err = write_failure(r.writer, exc, step) if self.engine.main else None
            message = str(err) if err is not None else f"{type(exc).__name__}: {exc}"
            r.summary.update(status="failed", error=message, step=step)
            self.close(r, quiet=True)
            errors.append(err)
        return next((e for e in errors if e is not None), None)


# ----------------------------------------------------------------------------- helpers


def _on_main(engine: Engine, fn: Callable[[], T]) -> T:
    """``fn()`` on the writing process; under DDP its result, or its error, reaches every rank."""
    result: Any = None
    error: RankdecayError | None = None
    if engine.main:
        try:
            result = fn()
        except RankdecayError as exc:
            error = exc
    message, result = engine.share((str(error) if error is not None else None, result))
    if error is not None:
        raise error
    if message is not None:
        raise RankdecayError(message)
    return result


# ----------------------------------------------------------------------------- schedule


def optimizer_settings(cfg: RunConfig) -> tuple[OptimConfig, LRDConfig]:
    """The (optim, lrd) sections a run uses.

    An experiment config may define ``optimizer_settings()`` to derive them from its own
    top-level knobs (e.g. ``weight_decay_attn`` or a grokking ``arm``); else ``cfg.optim``,
    ``cfg.lrd``.
    """
    hook = getattr(cfg, "optimizer_settings", None)
    if callable(hook):
        return hook()
    return cfg.optim, cfg.lrd


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


# ----------------------------------------------------------------------------- rows and summaries


def _final_values(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each key's last non-null value over the metrics rows."""
    return {k: v for r in rows for k, v in r.items() if v is not None}
