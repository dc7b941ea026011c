"""What every long job shows and obeys: one progress bar, and SIGINT / SIGTERM as a flag.

- :class:`ProgressBar` — a rich bar on stderr (label, bar, done/total, a text field, time elapsed
  and remaining), or nothing at all when disabled (rich is imported only when enabled). The
  training loop, the sweep, ``analyze`` and the attention-SVM experiment all show this one bar.
- :class:`StopFlag` — while installed, SIGINT / SIGTERM only set :attr:`StopFlag.signal`; the job
  checks it at its next safe point (a checkpoint), so a run stops resumable. A second Ctrl-C
  raises :class:`KeyboardInterrupt` at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["ProgressBar", "StopFlag"]


class ProgressBar:
    """``label  ━━━━━━━━━━  done/total  text  elapsed  remaining`` on stderr, or nothing when
    ``enabled`` is false; ``transient`` bars disappear when closed."""

    def __init__(
        self, enabled: bool, total: int, label: str, completed: int = 0, transient: bool = False
    ) -> None:
        self._bar: Any = None
        if enabled:
            import rich.progress as rp
            from rich.console import Console

            columns = (rp.MofNCompleteColumn(), rp.TextColumn("{task.fields[text]}"))
            self._bar = rp.Progress(
                rp.TextColumn("[bold]{task.description}"),
                rp.BarColumn(),
                *columns,
                rp.TimeElapsedColumn(),
                rp.TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=transient,
            )
            self._task = self._bar.add_task(label, total=total, completed=completed, text="")
            self._bar.start()

    def update(
        self,
        completed: int | None = None,
        *,
        advance: int = 0,
        text: str | None = None,
        label: str | None = None,
    ) -> None:
        """Set the count to ``completed`` (or add ``advance``) and, if given, the text and label."""
        if self._bar is not None:
            fields = {"completed": completed, "text": text, "description": label}
            given = {k: v for k, v in fields.items() if v is not None}
            self._bar.update(self._task, advance=advance, **given)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class StopFlag:
    """SIGINT / SIGTERM → :attr:`signal` (the signal number) while :meth:`installed`, in the main
    thread (elsewhere signals cannot be caught, and nothing is installed)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    @contextmanager
    def installed(self) -> Iterator[StopFlag]:
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
