"""How many CPU threads torch uses, so that rankdecay fits the machine it runs on.

torch's default intra-op thread count is the number of *logical* CPUs of the machine, and its
OpenMP runtime spin-waits between parallel regions. On a machine whose cores are busy with other
work (a shared server, a sweep's other workers) the spinning threads steal the cores the useful
ones need: on a 2-core machine at load ≈ 3, `rankdecay run recall --preset quick` took 89 s with
torch's default against 9 s with one thread (docs/benchmarks.md, "threads").

What every ``rankdecay`` command does:

- ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep instead of spinning) when the user has
  not set it. OpenMP reads it once, when torch is imported, so :func:`cli_environment` sets it
  from ``rankdecay/__init__.py`` before torch is imported, and only for the ``rankdecay`` console
  script: a library user's process is never changed.
- ``--threads N`` sets the intra-op thread count (:func:`set_threads`). The default
  (:func:`default_threads`) is ``OMP_NUM_THREADS`` when the user set it, else the number of
  *physical* cores this process may run on (hyper-threads share one core's arithmetic units,
  so more threads than cores only adds contention).
- A sweep runs ``workers`` processes of ``threads`` threads each; ``workers × threads`` may not
  exceed the CPUs this process may use (:func:`check_budget`), and the default per-run thread count
  is ``physical cores // workers`` (at least 1).

Nothing here imports torch at module level.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from .errors import RankdecayError

__all__ = [
    "THREAD_ENV_VARS",
    "ThreadCountError",
    "add_threads_argument",
    "available_cpus",
    "check_budget",
    "cli_environment",
    "default_threads",
    "physical_cores",
    "set_threads",
]

#: environment variables that size the thread pools of torch's BLAS / OpenMP back-ends
THREAD_ENV_VARS: tuple[str, ...] = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class ThreadCountError(RankdecayError, ValueError):
    """A worker or thread count that is not positive or does not fit the CPUs."""


def available_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores among the logical CPUs this process may run on (at least 1).

    Linux: distinct ``(physical_package_id, core_id)`` pairs of the CPUs in the affinity mask,
    read from ``/sys/devices/system/cpu/cpuN/topology``. Elsewhere ``psutil.cpu_count(logical=False)``
    when psutil is installed, else the logical count.
    """
    logical = available_cpus()
    try:
        cpus = sorted(os.sched_getaffinity(0))  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        cpus = []
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(
                (
                    (topo / "physical_package_id").read_text().strip(),
                    (topo / "core_id").read_text().strip(),
                )
            )
        except OSError:
            cores.clear()
            break
    if cores:
        return max(1, min(len(cores), logical))
    with contextlib.suppress(Exception):
        import psutil  # type: ignore[import-untyped]

        count = psutil.cpu_count(logical=False)
        if count:
            return max(1, min(int(count), logical))
    return max(1, logical)


def _env_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a positive int, when the user set it (else None)."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    try:
        value = int(text.split(",")[0])
    except ValueError:
        return None
    return value if value >= 1 else None


def default_threads(workers: int = 1) -> int:
    """Threads per process when ``workers`` processes share this machine: ``OMP_NUM_THREADS``
    when set (at most the available CPUs), else ``physical_cores() // workers``; at least 1."""
    env = _env_threads()
    if env is not None and workers == 1:
        return min(env, available_cpus())
    return max(1, physical_cores() // max(1, workers))


def check_budget(workers: int, threads: int) -> None:
    """Refuse ``workers`` processes × ``threads`` threads that would oversubscribe the CPUs.

    Raises :class:`~rankdecay.errors.RankdecayError` (a ValueError) naming both numbers and the CPU
    count; the messages name the library parameters (``workers``, ``threads``).
    """
    cpus = available_cpus()
    if workers < 1:
        raise ThreadCountError(
            f"workers must be at least 1, got {workers}; use 1 or more.", param="workers"
        )
    if threads < 1:
        raise ThreadCountError(
            f"threads must be at least 1, got {threads}; use 1 or more.", param="threads"
        )
    if workers * threads > cpus:
        raise ThreadCountError(
            f"{workers} worker(s) × {threads} thread(s) would oversubscribe the {cpus} CPUs "
            f"available here; lower the workers or the threads so that their product is at most {cpus}.",
            param=("workers", "threads"),
        )


def set_threads(threads: int) -> None:
    """Limit this process's intra-op parallelism (torch, OpenMP, MKL) to ``threads``.

    Also sets :data:`THREAD_ENV_VARS` so that processes started from this one inherit the count,
    and one inter-op thread (when torch still allows changing it). numpy's BLAS (the spectra
    kernel's Gram products, :func:`rankdecay.spectra.gram`) reads those variables when numpy is
    loaded; if it already is, its pool is resized through ``threadpoolctl`` where installed.
    """
    if threads < 1:
        raise ThreadCountError(f"threads must be at least 1, got {threads}; use 1 or more.")
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(threads)
    if "numpy" in sys.modules:
        with contextlib.suppress(ImportError):
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=threads, user_api="blas")
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only settable before any inter-op work
        torch.set_num_interop_threads(1)


def add_threads_argument(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    """``--threads N`` on a command's parser (``args.threads``; None → :func:`default_threads`)."""
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help=help_text
        or (
            "torch CPU threads (default: OMP_NUM_THREADS if set, else the physical cores, "
            f"{physical_cores()} here)"
        ),
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _is_cli_process() -> bool:
    """True in the ``rankdecay`` console script (``rankdecay``, ``rankdecay.exe``, ``rankdecay-script.py``)."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name == "rankdecay" or name.startswith(("rankdecay.", "rankdecay-"))


def cli_environment() -> None:
    """In the ``rankdecay`` console script, before torch is imported: ``OMP_WAIT_POLICY=PASSIVE``
    unless the user set a policy. Does nothing in any other process or once torch is imported."""
    if "torch" in sys.modules or not _is_cli_process():
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
