"""Run-directory IO: atomic writes, append-only JSONL, safetensors checkpoints.

Run directory format (the contract between train, sweep, report and results)::

    RUN/
      config.json      {"experiment": str, "preset": str, "seed": int, "config": {...}}
      config.toml      the same, for humans
      metrics.jsonl    one object per log/eval event: {"step": int, <metric>: float, ...}
      spectra.jsonl    one object per (step, layer, head, circuit) or per (step, layer, matrix):
                       {"step", "kind": "circuit"|"matrix", "layer", "head", "circuit"|"matrix",
                        <metric>: float, ..., "singular_values": [...]}
      summary.json     {"status": "running"|"finished"|"failed"|"interrupted", "error": str|None,
                        "final": {...}, "verdict": [{"claim", "target", "measured", "met"}], ...}
      checkpoint/      model.safetensors, optim.safetensors, state.json (written atomically)

Every write is atomic (write to a temp file in the same directory, fsync, ``os.replace``; the
file then gets the permissions of the process umask), and JSONL readers ignore a torn last line,
so a run killed mid-write never breaks ``--resume``. Damaged lines (garbled, invalid UTF-8, not
an object with an integer ``step``) are found by :func:`scan_jsonl`; resume refuses a history
with gaps and ``rankdecay report`` marks it (see docs/reliability.md). OS errors while writing
(disk full) raise :class:`FileWriteError` (exit 2) and leave no temp file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RankdecayError, RankdecayFileNotFoundError, RankdecayValueError

__all__ = [
    "FileWriteError",
    "JsonlScan",
    "append_jsonl",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "read_json",
    "file_mode",
    "read_jsonl",
    "remove_temp_files",
    "scan_jsonl",
    "truncate_jsonl",
]


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _jsonable(value.item())
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


class FileWriteError(RankdecayError, OSError):
    """Writing a file failed in the operating system (disk full, permissions, ...).

    ``path`` is the file, ``reason`` the system's words (e.g. "No space left on device").
    """

    def __init__(self, path: Path, exc: OSError) -> None:
        self.path = Path(path)
        self.reason = exc.strerror or str(exc)
        self.os_errno = exc.errno
        fix = (
            "free some disk space"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT)
            else "check the directory's permissions and free space"
        )
        super().__init__(
            f"could not write {self.path} ({self.reason}); {fix} and try again — "
            "nothing half-written was left behind."
        )


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask (read from /proc where possible, else set-and-restore under a lock)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """Permission bits of a new file under the process umask: ``0o666 & ~umask``.

    ``tempfile.mkstemp`` creates files readable by their owner only (0600); every file we write
    through a temp file is given these bits instead, as ``open(path, "w")`` would.
    """
    return 0o666 & ~_umask()


def remove_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temp files :func:`atomic_write_bytes` leaves when killed (``.NAME.*.tmp``).

    Call only while holding the directory's lock (no other writer can be mid-write). Returns
    what was removed.
    """
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for p in directory.glob(".*.tmp"):
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new file, never a torn one.

    The file gets the permissions of the process umask (:func:`file_mode`). An OS error (disk
    full, permissions) removes the temp file and raises :class:`FileWriteError` (exit 2).
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        if isinstance(exc, FileWriteError):
            raise
        raise FileWriteError(path, exc) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(
    path: str | Path,
    what: str = "file",
    expect: type | None = None,
    fix: str = "remove it or point to another directory",
) -> Any:
    """Read JSON, turning a missing, unreadable or corrupt file into one clear RankdecayError.

    ``expect`` (e.g. ``dict``): the type the top-level value must have. ``fix`` ends the
    sentence about a corrupt file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise RankdecayFileNotFoundError(f"{what} {path} does not exist; check the path.") from None
    except IsADirectoryError:
        raise RankdecayValueError(f"{what} {path} is a directory, not a file; {fix}.") from None
    except OSError as exc:
        raise RankdecayError(
            f"{what} {path} cannot be read ({exc.strerror or exc}); {fix}."
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise RankdecayValueError(
            f"{what} {path} is not valid JSON ({str(exc)[:80]}); it is corrupt or not one of ours — {fix}."
        ) from None
    if expect is not None and not isinstance(data, expect):
        raise RankdecayValueError(
            f"{what} {path} holds a JSON {_json_type(data)} where an {_json_type(expect())} is "
            f"expected; it is corrupt or not one of ours — {fix}."
        )
    return data


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def append_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows as JSON lines with one write + fsync (a crash can only tear the last line).

    An OS error (disk full) cuts the file back to its previous length and raises
    :class:`FileWriteError`, so no partial row is left.
    """
    payload = "".join(json.dumps(_jsonable(r)) + "\n" for r in rows)
    if not payload:
        return
    try:
        with open(path, "ab") as f:
            size = f.tell()
            try:
                f.write(payload.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                with contextlib.suppress(OSError):
                    f.truncate(size)
                raise
    except OSError as exc:
        raise FileWriteError(Path(path), exc) from None


@dataclass
class JsonlScan:
    """What :func:`scan_jsonl` found in a JSONL file.

    ``rows``: the valid rows (JSON objects) in file order; ``lines``: their 1-based line numbers;
    ``bad``: line numbers of complete lines that are not a JSON object (garbled, invalid UTF-8,
    another JSON type, or — with ``need_step`` — without an integer ``step``); ``torn``: the last
    line is unterminated (a crash mid-append); ``missing``: the file does not exist.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    bad: list[int] = field(default_factory=list)
    torn: bool = False
    missing: bool = False


def _valid_step(row: dict[str, Any]) -> bool:
    step = row.get("step")
    return isinstance(step, int) and not isinstance(step, bool) and step >= 0


def scan_jsonl(path: str | Path, need_step: bool = False) -> JsonlScan:
    """Read every line of a JSONL file and classify it (see :class:`JsonlScan`); never raises on
    damaged content. A path that exists but cannot be read raises RankdecayError."""
    path = Path(path)
    scan = JsonlScan()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        scan.missing = True
        return scan
    except OSError as exc:
        raise RankdecayError(
            f"{path} cannot be read ({exc.strerror or exc}); restore it or remove it."
        ) from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        scan.torn = True  # unterminated last line: a crash mid-append
        lines.pop()
    for no, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            scan.bad.append(no)
            continue
        if not isinstance(row, dict) or (need_step and not _valid_step(row)):
            scan.bad.append(no)
            continue
        scan.rows.append(row)
        scan.lines.append(no)
    return scan


def read_jsonl(path: str | Path, need_step: bool = False) -> Iterator[dict[str, Any]]:
    """Yield the valid rows of a JSONL file (JSON objects; with ``need_step``, that have an
    integer ``step``).

    A torn (unterminated) last line and damaged lines are skipped; use :func:`scan_jsonl` to
    learn about them (resume refuses damaged history, ``rankdecay report`` marks it).
    """
    yield from scan_jsonl(path, need_step).rows


def truncate_jsonl(path: str | Path, keep: Any) -> None:
    """Rewrite ``path`` atomically keeping only valid rows for which ``keep(row)`` is true.

    Used on resume to drop rows logged after the checkpoint being resumed from.
    """
    path = Path(path)
    if not path.exists():
        return
    rows = [r for r in read_jsonl(path, need_step=True) if keep(r)]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
