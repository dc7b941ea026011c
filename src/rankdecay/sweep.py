"""Grids of runs: ``rankdecay sweep`` and the executors that run them (local processes, Ray).

A sweep is the Cartesian product of a grid (dotted config key → values) times seeds. Its
directory holds one run directory per (point, seed) and an index, ``sweep.json``::

    SWEEP/
      sweep.json     {"format": 1, "experiment", "preset", "grid": {key: [v, ...]}, "seeds": [...],
                      "fixed": {key: v}, "executor", "created", "updated",
                      "runs": [{"name", "point": {key: v}, "seed", "run_dir", "status", "error",
                                "wall_s", "final": {...}}, ...]}
      <name>/        one run directory each (format: :mod:`rankdecay.runio`)

A run's name is ``<key=value>_..._seed=<s>-<hash>``: readable, and stable because the hash is
that of (experiment, preset, fixed overrides, point, seed). ``status`` is one of ``pending``,
``running``, ``finished``, ``failed``, ``interrupted``.

Re-running the same command is idempotent: finished runs are skipped, the others are resumed from
their last checkpoint (``Experiment.run(..., resume=True)``). A run that raises is recorded with
its error and does not stop the others. The exit status of ``rankdecay sweep`` is the number of
runs that did not finish (capped at 100), 0 when all finished, 2 for bad input, 130 on Ctrl-C.

Executors are pluggable: subclass :class:`Executor`, implement ``run_all(tasks, on_event)`` and
register the class with :func:`register_executor` (or add it to :data:`EXECUTORS` as a
``"module:Class"`` string so that its module is imported only when chosen).
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import inspect
import itertools
import json
import os
import re
import shutil
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from .config import DataclassInstance, apply_overrides, get_key, parse_assignment
from .errors import (
    MissingExtraError,
    RankdecayError,
    RankdecayFileExistsError,
    RankdecayTypeError,
    RankdecayValueError,
)
from .progress import ProgressBar
from .runfiles import needs_resume
from .runio import atomic_write_json, read_json, remove_temp_files
from .runlock import DirectoryLockedError, DirLock
from .threads import (
    THREAD_ENV_VARS,
    ThreadCountError,
    available_cpus,
    check_budget,
    default_threads,
    set_threads,
)

__all__ = [
    "EXECUTORS",
    "EXECUTOR_ARGUMENTS",
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "RunEvent",
    "RunTask",
    "SweepSpec",
    "execute_task",
    "executor_arguments",
    "get_executor",
    "plan_sweep",
    "register_executor",
    "run_sweep",
]

SWEEP_FILE = "sweep.json"
SWEEP_LOCK = ".sweep.lock"
FORMAT = 1
MAX_EXIT = 100


# --------------------------------------------------------------------------------------------
# experiments: a registered name, or "package.module:ATTRIBUTE" for a user's own experiment
# --------------------------------------------------------------------------------------------


def resolve_experiment(name: str) -> tuple[Any, str]:
    """Return ``(Experiment, spec)`` where ``spec`` = ``"module:attr"`` that any worker can import.

    ``name`` is a registered experiment (``rankdecay list``) or ``"package.module:ATTR"`` naming an
    :class:`~rankdecay.experiments.Experiment` object in an importable module.
    """
    from . import experiments as registry

    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise RankdecayValueError(
                f"cannot import experiment module '{module_name}' ({exc}); check the name and "
                "that it is on PYTHONPATH."
            ) from None
        exp = getattr(module, attr or "EXPERIMENT", None)
        if not isinstance(exp, registry.Experiment):
            raise RankdecayTypeError(
                f"'{name}' is not an Experiment object; point to a module attribute created with "
                "rankdecay.experiments.Experiment(...)."
            )
        return exp, f"{module_name}:{attr or 'EXPERIMENT'}"
    exp = registry.get_experiment(name)
    module = registry.EXPERIMENT_MODULES[name]
    return exp, f"{registry.__name__}.{module}:EXPERIMENT"


def load_experiment(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module_name), attr or "EXPERIMENT")


# --------------------------------------------------------------------------------------------
# tasks and events: what executors receive and report
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunTask:
    """One run of a sweep, everything a worker (local process, Ray task) needs; picklable."""

    index: int
    name: str
    experiment: str  # "module:attr" spec, importable in any worker
    preset: str
    overrides: dict[str, Any]  # fixed overrides then the grid point (dotted keys, typed values)
    seed: int
    run_dir: str  # absolute path
    threads: int = 1

    def build(self) -> tuple[Any, Any]:
        """``(Experiment, config)`` of this run: defaults → preset → overrides → seed."""
        exp = load_experiment(self.experiment)
        return exp, exp.config(self.preset, self.overrides, seed=self.seed)


@dataclasses.dataclass
class RunEvent:
    """``kind`` is ``"start"`` or ``"done"``; ``result`` (for ``"done"``) is :func:`execute_task`'s dict."""

    kind: str
    index: int
    result: dict[str, Any] | None = None


def run_status(run_dir: str | Path) -> str:
    """Status recorded in ``run_dir/summary.json``: ``missing`` when there is none (or it is torn)."""
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        return "missing"
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("status", "missing"))
    except (OSError, ValueError, AttributeError):  # torn, damaged, or not an object
        return "missing"


def resume_or_clear(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a checkpoint (intact or not) or a history to resume; a
    directory started but never checkpointed is removed (under its lock)."""
    resume = needs_resume(run_dir)
    if not resume and run_dir.exists():
        with DirLock(run_dir):  # refused while another process writes the run
            shutil.rmtree(run_dir)
    return resume


def run_result(summary: Mapping[str, Any], wall: float, default: str = "failed") -> dict[str, Any]:
    """A run's summary as an executor's result: status, error, wall_s, final, verdict."""
    status = str(summary.get("status", default))
    return {
        "status": status,
        "error": summary.get("error") if status != "finished" else None,
        "wall_s": wall,
        "final": summary.get("final", {}),
        "verdict": summary.get("verdict", []),
    }


def execute_task(task: RunTask, set_thread_count: bool = True) -> dict[str, Any]:
    """Run one task in this process and return ``{"status", "error", "wall_s", "final", "verdict"}``.

    A run directory that holds a checkpoint is resumed (``resume=True``); one that was started but
    never checkpointed is cleared and started afresh. Any exception is caught and returned as
    ``status="failed"`` (its traceback is written to ``run_dir/error.txt``); KeyboardInterrupt
    returns ``status="interrupted"``.
    """
    t0 = time.perf_counter()
    run_dir = Path(task.run_dir)
    try:
        if set_thread_count:
            set_threads(task.threads)
        exp, cfg = task.build()
        resume = resume_or_clear(run_dir)
        (run_dir / "error.txt").unlink(missing_ok=True)
        kwargs: dict[str, Any] = {"resume": resume, "progress": False}
        with contextlib.suppress(TypeError, ValueError):
            if "preset" in inspect.signature(exp.run).parameters:
                kwargs["preset"] = task.preset  # recorded in the run's config.json
        summary = exp.run(cfg, run_dir, **kwargs) or {}
        return run_result(summary, time.perf_counter() - t0, default="finished")
    except KeyboardInterrupt:
        return {"status": "interrupted", "error": "interrupted", "wall_s": time.perf_counter() - t0}
    except BaseException as exc:  # noqa: BLE001 - a failing run must not stop the sweep
        return failed_result(exc, [run_dir], time.perf_counter() - t0)


def failed_result(exc: BaseException, run_dirs: Sequence[Path], wall: float) -> dict[str, Any]:
    """The executor's result of a run (or an ensemble of runs) that raised ``exc``: status
    "failed" and the error's first line; the traceback goes to each ``run_dir/error.txt``
    (call it inside the ``except`` block), except into a directory another process holds."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    error = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if not isinstance(exc, DirectoryLockedError):  # another process's directory: hands off
        for run_dir in run_dirs:
            with contextlib.suppress(OSError):
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
    return {"status": "failed", "error": error, "wall_s": wall}


# --------------------------------------------------------------------------------------------
# executors
# --------------------------------------------------------------------------------------------


class Executor(abc.ABC):
    """Runs a list of :class:`RunTask` and reports each start and end through ``on_event``.

    Subclasses get every parsed CLI option as keyword arguments (``workers``,
    ``threads_per_worker``, ``ray_address``, ``gpus_per_run``, plus those their own
    :meth:`add_arguments` declares) and must accept and ignore the others. ``run_all`` receives all
    pending tasks at once, so an executor may group them (e.g. train several seeds together) as
    long as each task ends in exactly one ``"done"`` event whose result has the keys of
    :func:`execute_task`. ``threads_for(workers)`` tells the sweep how many threads each task gets.
    """

    name: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        self.options = options

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Declare executor-specific CLI options (default: none)."""
        return None

    def threads_per_task(self) -> int:
        return 1

    @abc.abstractmethod
    def run_all(self, tasks: Sequence[RunTask], on_event: Callable[[RunEvent], None]) -> None:
        """Run every task, calling ``on_event(RunEvent("start"|"done", task.index, result))``."""

    def describe(self) -> str:
        return self.name

    def session(self) -> contextlib.AbstractContextManager[Any]:
        """Acquire what :meth:`run_all` needs (a cluster connection, …) for the length of a sweep.

        The sweep enters it before it writes anything, so an executor that cannot start (no
        cluster at the address) fails with the sweep directory untouched. Default: nothing.
        """
        return contextlib.nullcontext()


def _watch_parent(parent_pid: int) -> None:
    """Exit this worker at once when the sweep process dies (so no orphan keeps writing)."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(3)
        time.sleep(0.5)


def _worker_main(conn: Any, threads: int, parent_pid: int) -> None:
    """Local worker process: receive jobs ``(fn, tasks)`` on ``conn`` until ``None``, send back
    ``fn(tasks, None)`` (this process's thread count is already set)."""
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(threads)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    set_threads(threads)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if job is None:
            return
        fn, tasks = job
        results = fn(tasks, None)
        try:
            conn.send(results)
        except (OSError, BrokenPipeError):
            return


def _execute_one(tasks: Sequence[RunTask], threads: int | None) -> list[dict[str, Any]]:
    """Job function of one task run as the local executor runs it: ``[execute_task(tasks[0])]``."""
    return [execute_task(tasks[0], set_thread_count=threads is not None)]


class LocalExecutor(Executor):
    """A pool of ``workers`` spawned processes, each limited to ``threads_per_worker`` threads.

    ``workers × threads_per_worker`` may not exceed the CPUs available to this process
    (:func:`rankdecay.threads.check_budget`); the default ``threads_per_worker`` is
    ``physical cores // workers``. A worker that dies (segfault, out of memory) fails only the run
    it held (:meth:`run_jobs`: every run of the job it held) and is replaced.
    """

    name = "local"

    def __init__(self, workers: int = 1, threads_per_worker: int | None = None, **options: Any):
        super().__init__(**options)
        cpus = available_cpus()
        if workers > cpus:
            raise ThreadCountError(
                f"workers={workers} exceeds the {cpus} CPUs available here; use {cpus} or fewer "
                "(or the ray executor for more machines).",
                param="workers",
            )
        if threads_per_worker is None:
            threads_per_worker = default_threads(workers)
        check_budget(workers, threads_per_worker)
        self.workers = workers
        self.threads = threads_per_worker

    def threads_per_task(self) -> int:
        return self.threads

    def describe(self) -> str:
        return f"local ({self.workers} worker(s) × {self.threads} thread(s))"

    def run_all(self, tasks: Sequence[RunTask], on_event: Callable[[RunEvent], None]) -> None:
        self.run_jobs([(_execute_one, [t]) for t in tasks], on_event)

    def run_jobs(
        self,
        jobs: Sequence[tuple[Callable[..., list[dict[str, Any]]], Sequence[RunTask]]],
        on_event: Callable[[RunEvent], None],
    ) -> None:
        """Run each job ``(fn, tasks)`` in a worker as ``fn(tasks, None)`` (``fn`` a picklable
        top-level function returning one :func:`execute_task` result per task): the job's tasks
        start when it is handed out and end with their results when it returns."""
        import multiprocessing
        from multiprocessing.connection import wait

        ctx = multiprocessing.get_context("spawn")
        queue = list(jobs)
        queue.reverse()
        workers: list[dict[str, Any]] = []

        def start_worker() -> dict[str, Any]:
            parent_conn, child_conn = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main, args=(child_conn, self.threads, os.getpid()), daemon=True
            )
            proc.start()
            child_conn.close()
            return {"proc": proc, "conn": parent_conn, "job": None}

        try:
            for _ in range(min(self.workers, len(queue))):
                workers.append(start_worker())
            while True:
                for w in workers:
                    if w["job"] is None and queue:
                        job = queue.pop()
                        w["conn"].send(job)
                        w["job"] = job
                        for t in job[1]:
                            on_event(RunEvent("start", t.index))
                busy = [w for w in workers if w["job"] is not None]
                if not busy:
                    break
                ready = wait([w["conn"] for w in busy] + [w["proc"].sentinel for w in busy], 1.0)
                for i, w in enumerate(workers):
                    job = w["job"]
                    if job is None or (w["conn"] not in ready and w["proc"].sentinel not in ready):
                        continue
                    results: list[dict[str, Any]] | None = None
                    try:
                        if w["conn"].poll():
                            results = w["conn"].recv()
                    except (EOFError, OSError):
                        results = None
                    if results is None:  # the process died holding this job
                        w["proc"].join(1.0)
                        code = w["proc"].exitcode
                        error = f"worker process died (exit code {_signal_name(code)}) while running this run"
                        results = [
                            {"status": "failed", "error": error, "wall_s": None} for _ in job[1]
                        ]
                        w["conn"].close()
                        workers[i] = (
                            start_worker()
                            if queue
                            else {"proc": w["proc"], "conn": None, "job": None, "dead": True}
                        )
                    else:
                        w["job"] = None
                    for t, result in zip(job[1], results):
                        on_event(RunEvent("done", t.index, result))
                workers = [w for w in workers if not w.get("dead")]
        finally:
            self._shutdown(workers)

    @staticmethod
    def _shutdown(workers: list[dict[str, Any]]) -> None:
        for w in workers:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                if w["job"] is None:
                    w["conn"].send(None)
                # a busy worker (interrupted) finds the pipe closed once its run returns, and exits;
                # its run directory (summary.json, checkpoint) already records the outcome
                w["conn"].close()
        deadline = time.monotonic() + 10.0  # give interrupted runs time to save a checkpoint
        for w in workers:
            w["proc"].join(max(0.0, deadline - time.monotonic()))
        for w in workers:
            if w["proc"].is_alive():
                w["proc"].terminate()
                w["proc"].join(5.0)
            if w["proc"].is_alive():
                w["proc"].kill()
                w["proc"].join()


def _ray_execute(task: RunTask) -> dict[str, Any]:
    return execute_task(task)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Raise at once if a ``host:port`` (or ``ray://host:port``) Ray address takes no connection:
    ``ray.init`` would retry it for minutes. ``auto`` and other forms are left to Ray."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address.strip())
    if match is None:
        return
    try:
        socket.create_connection((match[1], int(match[2])), timeout=timeout).close()
    except OSError as exc:
        raise RankdecayError(
            f"cannot reach Ray at {address} ({exc.strerror or exc}); start a cluster there with "
            "`ray start --head` or check the address.",
            param="ray_address",
        ) from None


class RayExecutor(Executor):
    """Each run is one Ray task needing ``threads_per_worker`` CPUs and ``gpus_per_run`` GPUs.

    ``ray_address``: ``None`` starts a local Ray instance (or reuses the one this process already
    initialized), ``"auto"`` joins the cluster started with ``ray start``, anything else is a
    cluster address. Results are written by the workers to the (shared) sweep directory.
    """

    name = "ray"

    def __init__(
        self,
        ray_address: str | None = None,
        threads_per_worker: int | None = None,
        gpus_per_run: float = 0.0,
        workers: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.address = ray_address
        self.threads = int(threads_per_worker or 1)
        self.gpus = float(gpus_per_run or 0.0)
        self.max_in_flight = workers  # None: as many as the cluster's CPUs (GPUs) can hold
        if self.threads < 1:
            raise ThreadCountError(
                f"threads_per_worker must be at least 1, got {self.threads}; use 1 or more.",
                param="threads_per_worker",
            )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--ray-address",
            default=None,
            metavar="ADDR",
            help="Ray cluster: 'auto' (the one `ray start` began) or host:port; default: a local instance",
        )
        parser.add_argument(
            "--gpus-per-run", type=float, default=0.0, help="GPUs each Ray task needs (default 0)"
        )

    def threads_per_task(self) -> int:
        return self.threads

    def describe(self) -> str:
        where = self.address or "local instance"
        return f"ray ({where}; {self.threads} CPU(s), {self.gpus:g} GPU(s) per run)"

    def _capacity(self, ray: Any) -> int:
        """Runs the cluster can hold at once (so "running" in the progress bar means running)."""
        try:
            resources = ray.cluster_resources()
        except Exception:  # noqa: BLE001
            return 0
        slots = int(resources.get("CPU", 0) // self.threads)
        if self.gpus > 0:
            slots = min(slots, int(resources.get("GPU", 0) // self.gpus))
        return max(1, slots)

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """Connect to Ray (start a local instance, or join ``ray_address``) and check that it can
        hold a run; shut down on exit what this call started. Yields the ``ray`` module."""
        try:
            import ray
        except ImportError:
            raise MissingExtraError(
                "the ray executor needs Ray; install it with `pip install 'rankdecay[ray]'`.",
                param="executor",
            ) from None
        started_here = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
            if self.address:
                _check_reachable(self.address)
                kwargs["address"] = self.address
            else:
                kwargs["include_dashboard"] = False
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise RankdecayError(
                    f"cannot connect to Ray at {self.address or 'a local instance'} ({exc}); start "
                    "a cluster with `ray start --head` or check the address.",
                    param="ray_address",
                ) from None
            started_here = True
        try:
            if self.gpus > 0 and not self.address:
                try:
                    n_gpus = ray.cluster_resources().get("GPU", 0)
                except Exception:  # noqa: BLE001
                    n_gpus = None
                if n_gpus == 0:
                    raise RankdecayValueError(
                        f"gpus_per_run={self.gpus:g} but this Ray instance has no GPUs; use 0 or "
                        "connect to a cluster with GPU nodes (ray_address).",
                        param=("gpus_per_run", "ray_address"),
                    )
            yield ray
        finally:
            if started_here:
                ray.shutdown()

    def run_all(self, tasks: Sequence[RunTask], on_event: Callable[[RunEvent], None]) -> None:
        with self.session() as ray:
            self._run_all(ray, tasks, on_event)

    def _run_all(
        self, ray: Any, tasks: Sequence[RunTask], on_event: Callable[[RunEvent], None]
    ) -> None:
        remote = ray.remote(num_cpus=self.threads, num_gpus=self.gpus, max_retries=0)(_ray_execute)
        pending = list(tasks)
        pending.reverse()
        in_flight: dict[Any, RunTask] = {}
        limit = self.max_in_flight or self._capacity(ray) or len(tasks)
        try:
            while pending or in_flight:
                while pending and len(in_flight) < limit:
                    task = pending.pop()
                    in_flight[remote.remote(task)] = task
                    on_event(RunEvent("start", task.index))
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
                for ref in done:
                    task = in_flight.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - worker crash, lost node, ...
                        first = (str(exc).strip().splitlines() or [""])[0]
                        error = f"Ray task failed: {type(exc).__name__}: {first}"
                        result = {"status": "failed", "error": error, "wall_s": None}
                    on_event(RunEvent("done", task.index, result))
        finally:
            for ref in in_flight:
                with contextlib.suppress(Exception):
                    ray.cancel(ref)


def add_ensemble_arguments(parser: argparse.ArgumentParser) -> None:
    """The CLI options of the ensemble executor (:class:`rankdecay.ensemble.EnsembleExecutor`,
    whose ``add_arguments`` calls this), declared here because rankdecay.ensemble imports torch."""
    parser.add_argument(
        "--members",
        type=int,
        default=None,
        metavar="N",
        help="ensemble executor: at most N runs trained together (default: as many as half the free memory fits)",
    )


#: executor name → class, or "module:Class" imported on first use (keeps optional deps lazy)
EXECUTORS: dict[str, type[Executor] | str] = {
    "local": LocalExecutor,
    "ray": RayExecutor,
    # stacks runs of one model shape and trains them together (rankdecay.ensemble)
    "ensemble": "rankdecay.ensemble:EnsembleExecutor",
}

#: executor name → its ``add_arguments``, for executors registered as "module:Class": their CLI
#: options are declared without importing their module (``rankdecay sweep --help`` stays light)
EXECUTOR_ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "ensemble": add_ensemble_arguments,
}


def register_executor(
    name: str,
    cls: type[Executor] | str,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """Make ``--executor NAME`` available (``cls`` may be a ``"module:Class"`` string).

    ``add_arguments(parser)``, when given, declares the executor's CLI options in place of
    ``cls.add_arguments``, so that a ``"module:Class"`` executor is not imported to build the
    parser.
    """
    EXECUTORS[name] = cls
    if add_arguments is not None:
        EXECUTOR_ARGUMENTS[name] = add_arguments
    else:
        EXECUTOR_ARGUMENTS.pop(name, None)


def executor_arguments(name: str) -> Callable[[argparse.ArgumentParser], None]:
    """How executor ``name`` declares its CLI options: its :data:`EXECUTOR_ARGUMENTS` entry, else
    ``add_arguments`` of its class (which imports a ``"module:Class"`` executor)."""
    if name in EXECUTOR_ARGUMENTS:
        return EXECUTOR_ARGUMENTS[name]
    return get_executor(name).add_arguments


def get_executor(name: str) -> type[Executor]:
    if name not in EXECUTORS:
        raise RankdecayValueError(
            f"unknown executor '{name}'; choose one of {', '.join(EXECUTORS)}."
        )
    cls = EXECUTORS[name]
    if isinstance(cls, str):
        module_name, _, attr = cls.partition(":")
        cls = getattr(importlib.import_module(module_name), attr)
        EXECUTORS[name] = cls
    return cls  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# planning: grid × seeds → run names and the sweep.json index
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SweepSpec:
    """What defines a sweep; two commands with equal specs share a sweep directory."""

    experiment: str  # name as given (registered name or module:attr)
    preset: str
    grid: dict[str, list[Any]]
    seeds: list[int]
    fixed: dict[str, Any]

    def identity(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "preset": self.preset,
            "grid": self.grid,
            "seeds": self.seeds,
            "fixed": self.fixed,
        }

    def points(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())]


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _typed(cfg: DataclassInstance, key: str, value: Any) -> Any:
    """Parse ``value`` for config key ``key`` (a RankdecayError for unknown keys or bad types)."""
    typed = get_key(apply_overrides(cfg, {key: value}), key)
    if isinstance(typed, tuple):
        typed = list(typed)
    return typed


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        text = format(value, "g")
    elif isinstance(value, (list, tuple)):
        text = "-".join(_format_value(v) for v in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+=-]", "_", text)


def run_name(spec: SweepSpec, point: Mapping[str, Any], seed: int) -> str:
    """``<key=value>_..._seed=<s>-<hash8>``; the slug uses each key's last two dotted parts."""
    parts = [f"{'.'.join(k.split('.')[-2:])}={_format_value(v)}" for k, v in point.items()]
    slug = "_".join(parts + [f"seed={seed}"])
    if len(slug) > 96:
        slug = slug[:96].rstrip("_.")
    digest = hashlib.sha256(
        _canonical(
            {
                "experiment": spec.experiment,
                "preset": spec.preset,
                "fixed": spec.fixed,
                "point": dict(point),
                "seed": seed,
            }
        ).encode()
    ).hexdigest()[:8]
    return f"{slug}-{digest}"


def _parse_seeds(text: str | int | None, default: int) -> list[int]:
    if text is None:
        return list(range(default))
    if isinstance(text, int):
        count = text
    else:
        text = text.strip()
        if "," in text:
            try:
                seeds = [int(s) for s in text.split(",") if s.strip()]
            except ValueError:
                raise RankdecayValueError(
                    f"seeds expects a count N or a list like 0,1,2, got {text!r}; fix it.",
                    param="seeds",
                ) from None
            if not seeds or len(set(seeds)) != len(seeds):
                raise RankdecayValueError(
                    f"seeds {text!r} must list distinct integers; fix it.", param="seeds"
                )
            return seeds
        try:
            count = int(text)
        except ValueError:
            raise RankdecayValueError(
                f"seeds expects a count N or a list like 0,1,2, got {text!r}; fix it.",
                param="seeds",
            ) from None
    if count < 1:
        raise RankdecayValueError(
            f"seeds must be at least 1, got {count}; give 1 or more.", param="seeds"
        )
    return list(range(count))


def plan_sweep(
    experiment: str,
    preset: str = "quick",
    grid: Sequence[str] | Mapping[str, Sequence[Any]] = (),
    fixed: Sequence[str] | Mapping[str, Any] = (),
    seeds: str | int | None = None,
) -> tuple[Any, str, SweepSpec]:
    """Validate the inputs and return ``(Experiment, module spec, SweepSpec)``.

    ``grid`` entries (``"key=v1,v2"`` strings or a mapping) replace the preset's default grid key
    by key; every value is parsed against the config's declared type.
    """
    exp, module_spec = resolve_experiment(experiment)
    if preset not in exp.presets:
        raise RankdecayValueError(
            f"experiment '{exp.name}' has no preset '{preset}'; choose one of {', '.join(exp.presets)}."
        )
    fixed_items = dict(fixed) if isinstance(fixed, Mapping) else dict(map(parse_assignment, fixed))
    if "seed" in fixed_items:
        raise RankdecayValueError(
            "a sweep sets each run's seed itself; choose them with seeds instead of fixing seed.",
            param=("seeds", "fixed"),
        )
    base = exp.config(preset)
    fixed_typed = {k: _typed(base, k, v) for k, v in fixed_items.items()}
    cfg = apply_overrides(base, fixed_typed)

    raw_grid: dict[str, Sequence[Any]] = {
        k: list(v) for k, v in dict(getattr(exp, "grids", {}).get(preset, {})).items()
    }
    if isinstance(grid, Mapping):
        given = {k: list(v) for k, v in grid.items()}
    else:
        given = {}
        for item in grid:
            if "=" not in item:
                raise RankdecayValueError(
                    f"a grid entry is key=v1,v2,…, got {item!r}; write e.g. optim.lr=1e-3,1e-2.",
                    param="grid",
                )
            key, _, values = item.partition("=")
            given[key.strip()] = [v.strip() for v in values.split(",") if v.strip() != ""]
    for key in fixed_typed:  # --set KEY fixes a key the preset would sweep
        if key not in given:
            raw_grid.pop(key, None)
    raw_grid.update(given)
    if "seed" in raw_grid:
        raise RankdecayValueError(
            "the grid may not contain 'seed'; choose the seeds with seeds=N.",
            param=("grid", "seeds"),
        )
    for key, values in raw_grid.items():
        if not values:
            raise RankdecayValueError(
                f"grid key '{key}' has no values; give at least one, e.g. {key}=v1,v2.",
                param="grid",
            )
        if key in fixed_typed:
            raise RankdecayValueError(
                f"'{key}' is both swept (grid) and fixed; keep only one of them.",
                param=("grid", "fixed"),
            )
    if not raw_grid:
        raise RankdecayValueError(
            f"the grid is empty: preset '{preset}' of '{exp.name}' defines no default grid; give one "
            "as key=v1,v2,….",
            param="grid",
        )
    typed_grid: dict[str, list[Any]] = {}
    for key, values in raw_grid.items():
        typed_values = [_typed(cfg, key, v) for v in values]
        unique: list[Any] = []
        for v in typed_values:
            if v not in unique:
                unique.append(v)
        typed_grid[key] = unique
    from .validation import validate_values

    validate_values(cfg)  # every value of every point, before any run starts
    for key, values in typed_grid.items():
        for v in values:
            validate_values(apply_overrides(cfg, {key: v}))
    default_seeds = int(getattr(exp, "seeds", {}).get(preset, 1))
    spec = SweepSpec(
        experiment=experiment,
        preset=preset,
        grid=typed_grid,
        seeds=_parse_seeds(seeds, default_seeds),
        fixed=fixed_typed,
    )
    return exp, module_spec, spec


def default_out(spec: SweepSpec) -> Path:
    digest = hashlib.sha256(_canonical(spec.identity()).encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9.-]", "_", spec.experiment.split(":")[0].split(".")[-1])
    return Path("sweeps") / f"{name}-{spec.preset}-{digest}"


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [
        k
        for k in ("experiment", "preset", "grid", "seeds", "fixed")
        if _canonical(old.get(k)) != _canonical(new.get(k))
    ]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class SweepIndex:
    """The in-memory ``sweep.json``; :meth:`save` writes it atomically."""

    def __init__(self, out: Path, spec: SweepSpec, executor: str) -> None:
        self.out = out
        self.path = out / SWEEP_FILE
        previous: dict[str, Any] | None = None
        if self.path.exists():
            from .results import sweep_rows_valid

            previous = read_json(
                self.path,
                "sweep index",
                dict,
                "restore it from a backup or choose another output directory",
            )
            if not sweep_rows_valid(previous.get("runs")):
                raise RankdecayValueError(
                    f"{self.path} is not a rankdecay sweep index (or it is damaged); restore it "
                    "from a backup or choose another directory.",
                    param="out",
                )
            diff = _differences(previous, spec.identity())
            if diff:
                raise RankdecayFileExistsError(
                    f"{out} holds a different sweep (its {', '.join(diff)} differ); "
                    "choose another directory or repeat the original sweep.",
                    param="out",
                )
        elif out.exists() and any(p.name != SWEEP_LOCK for p in out.iterdir()):
            if (out / "config.json").exists():
                raise RankdecayFileExistsError(
                    f"{out} is a run directory, not a sweep; choose another directory.",
                    param="out",
                )
            raise RankdecayFileExistsError(
                f"{out} is not empty and holds no {SWEEP_FILE}; choose an empty or new directory.",
                param="out",
            )
        old_rows = {r["name"]: r for r in (previous or {}).get("runs", [])}
        self.data: dict[str, Any] = {
            "format": FORMAT,
            **spec.identity(),
            "executor": executor,
            "created": (previous or {}).get("created", _now()),
            "updated": _now(),
            "runs": [],
        }
        for seed in spec.seeds:
            for point in spec.points():
                name = run_name(spec, point, seed)
                row = {
                    "name": name,
                    "point": point,
                    "seed": seed,
                    "run_dir": name,
                    "status": "pending",
                    "error": None,
                    "wall_s": None,
                    "final": {},
                }
                old = old_rows.get(name)
                if old:
                    row.update(
                        {k: old.get(k, row[k]) for k in ("status", "error", "wall_s", "final")}
                    )
                on_disk = run_status(out / name)
                if on_disk == "finished":
                    if row["status"] != "finished":  # killed between run end and index write
                        summary = read_json(out / name / "summary.json", "run summary")
                        row.update(status="finished", error=None, final=summary.get("final", {}))
                elif row["status"] == "finished" or row["status"] == "running":
                    row["status"] = "interrupted" if on_disk != "missing" else "pending"
                self.data["runs"].append(row)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.data["runs"]

    def counts(self) -> dict[str, int]:
        counts = {s: 0 for s in ("pending", "running", "finished", "failed", "interrupted")}
        for row in self.rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        return counts

    def save(self) -> None:
        self.data["updated"] = _now()
        atomic_write_json(self.path, self.data)


def _lock(out: Path) -> DirLock:
    """An exclusive lock on the sweep directory (:mod:`rankdecay.runlock`; released if we die)."""
    return DirLock(
        out,
        SWEEP_LOCK,
        "sweep",
        "wait for that sweep to finish (or stop it) or choose another output directory",
    )


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SweepResult:
    out: Path
    rows: list[dict[str, Any]]
    counts: dict[str, int]
    executed: list[str]  # names of the runs this invocation started
    interrupted: bool = False

    @property
    def n_failed(self) -> int:
        return sum(1 for r in self.rows if r["status"] != "finished")

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return min(self.n_failed, MAX_EXIT)


def _show_counts(bar: ProgressBar, counts: Mapping[str, int]) -> None:
    """The sweep bar: runs ended (finished or failed) of all, and the counts by status."""
    text = (
        f"[green]{counts.get('finished', 0)} done[/] · [cyan]{counts.get('running', 0)} running[/]"
        f" · [red]{counts.get('failed', 0)} failed[/]"
    )
    if counts.get("interrupted"):
        text += f" · [yellow]{counts['interrupted']} interrupted[/]"
    bar.update(counts.get("finished", 0) + counts.get("failed", 0), text=text)


def run_sweep(
    experiment: str,
    preset: str = "quick",
    grid: Sequence[str] | Mapping[str, Sequence[Any]] = (),
    fixed: Sequence[str] | Mapping[str, Any] = (),
    seeds: str | int | None = None,
    out: str | Path | None = None,
    executor: str = "local",
    progress: bool = False,
    dry_run: bool = False,
    loggers: str | Sequence[str] = (),
    **executor_options: Any,
) -> SweepResult:
    """Run (or resume) a sweep and return its rows; the Python face of ``rankdecay sweep``.

    ``executor_options`` go to the executor class (``workers``, ``threads_per_worker``,
    ``ray_address``, ``gpus_per_run``, ...). ``loggers`` (``--log-to``) sets every run's
    ``train.loggers`` without changing the sweep's identity.
    """
    _exp, module_spec, spec = plan_sweep(experiment, preset, grid, fixed, seeds)
    log_to: dict[str, Any] = {}
    if loggers:
        from .experiments import with_loggers

        log_to = {
            "train.loggers": with_loggers(_exp.config(preset), loggers, _exp.name).train.loggers
        }
    executor_cls = get_executor(executor)
    engine = executor_cls(**executor_options)
    out_path = Path(out) if out is not None else default_out(spec)
    out_path = out_path.expanduser().resolve()
    # validate --out before touching it (a dry run refuses what the run would refuse)
    index = SweepIndex(out_path, spec, engine.describe())
    if dry_run:
        return SweepResult(out_path, index.rows, {}, [])
    with contextlib.ExitStack() as stack:
        if any(row["status"] != "finished" for row in index.rows):
            # connect (e.g. to a Ray cluster) before writing anything: a failure leaves no trace
            stack.enter_context(engine.session())
        stack.enter_context(_lock(out_path))
        remove_temp_files(out_path)  # left by a sweep killed mid-write of sweep.json
        index = SweepIndex(out_path, spec, engine.describe())
        index.save()
        todo = [i for i, row in enumerate(index.rows) if row["status"] != "finished"]
        threads = engine.threads_per_task()
        tasks = []
        for i in todo:
            row = index.rows[i]
            tasks.append(
                RunTask(
                    index=i,
                    name=row["name"],
                    experiment=module_spec,
                    preset=preset,
                    overrides={**spec.fixed, **row["point"], **log_to},
                    seed=row["seed"],
                    run_dir=str(out_path / row["run_dir"]),
                    threads=threads,
                )
            )
        total, done = len(index.rows), len(index.rows) - len(todo)
        bar = ProgressBar(progress and bool(tasks), total, "sweep", done)
        executed: list[str] = []

        def on_event(event: RunEvent) -> None:
            row = index.rows[event.index]
            if event.kind == "start":
                row["status"] = "running"
                row["error"] = None
                executed.append(row["name"])
            else:
                result = event.result or {}
                row["status"] = result.get("status", "failed")
                row["error"] = result.get("error")
                row["wall_s"] = result.get("wall_s")
                row["final"] = result.get("final") or {}
            index.save()
            _show_counts(bar, index.counts())

        interrupted = False
        try:
            if tasks:
                engine.run_all(tasks, on_event)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            for row in index.rows:
                if row["status"] == "running":
                    row["status"] = "interrupted"
            index.save()
            _show_counts(bar, index.counts())
            bar.close()
        return SweepResult(out_path, index.rows, index.counts(), executed, interrupted)


def _signal_name(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"{code}, {signal.Signals(-code).name}"
    return str(code)
