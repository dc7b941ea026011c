"""One writer per directory: an advisory lock on a lock file, shared by runs and sweeps.

A writer (``rankdecay run``, a sweep, an ensemble worker, DDP rank 0) holds an exclusive
``fcntl.flock`` on ``DIR/<name>`` while it writes ``DIR`` and records its pid in the file. The
kernel releases the lock when the process exits, however it exits, so a lock can never outlive
its holder; a lock file whose recorded pid is no longer running is *stale*: the next writer
takes the lock and says so. A second writer while the holder lives gets one sentence naming the
holder's pid (:class:`DirectoryLockedError`, exit 2).

The file is opened without truncation and rewritten only once the lock is held, so a writer
that is refused never erases the holder's pid. On systems without ``fcntl`` (Windows) locking is
a no-op.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import TracebackType

from .errors import RankdecayError

__all__ = ["RUN_LOCK", "DirLock", "DirectoryLockedError", "lock_holder"]

#: the lock file of a run directory (a sweep directory uses ``.sweep.lock``)
RUN_LOCK = ".rankdecay.lock"


class DirectoryLockedError(RankdecayError):
    """Another live process holds the directory's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OSError:
        return False
    return True


def lock_holder(path: str | Path) -> int | None:
    """The pid recorded in lock file ``path`` (None when absent, empty or not a pid)."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    first = text.split()[0] if text else ""
    return int(first) if first.isdigit() else None


class DirLock:
    """Exclusive lock on directory ``dir`` through the lock file ``dir/name``.

    ``acquire()`` raises :class:`DirectoryLockedError` naming the holder's pid when another
    process holds it, and notes on stderr when it breaks a stale lock left by a dead process.
    ``what`` describes the directory in messages ("run", "sweep"); ``hint`` is the fix.
    Use as a context manager or call ``acquire()`` / ``release()``; acquiring twice in one
    process is counted, not re-locked.
    """

    def __init__(
        self, dir: str | Path, name: str = RUN_LOCK, what: str = "run", hint: str = ""
    ) -> None:
        self.dir = Path(dir)
        self.path = self.dir / name
        self.what = what
        self.hint = hint or "wait for it to finish or stop it, then try again"
        self._fd: int | None = None
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> DirLock:
        if self._fd is not None:
            self._depth += 1
            return self
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks
            self._depth = 1
            return self
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise RankdecayError(
                f"cannot lock the {self.what} directory {self.dir} ({exc.strerror or exc}); "
                "check that it is a directory you may write to."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            pid = lock_holder(self.path)
            who = f"pid {pid}" if pid is not None else "a process that has not recorded its pid yet"
            raise DirectoryLockedError(
                f"the {self.what} directory {self.dir} is being written by another rankdecay "
                f"process ({who}); {self.hint}."
            ) from None
        previous = lock_holder(self.path)
        if previous is not None and previous != os.getpid() and not _pid_alive(previous):
            print(
                f"rankdecay: note: broke the stale lock on {self.dir} left by pid {previous}, "
                "which is no longer running.",
                file=sys.stderr,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        self._depth = 1
        return self

    def release(self) -> None:
        if self._depth > 1:
            self._depth -= 1
            return
        self._depth = 0
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # no pid left behind: a later reader sees no holder
        except OSError:  # pragma: no cover - read-only or vanished directory
            pass
        os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
