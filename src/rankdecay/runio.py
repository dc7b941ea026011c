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

Every write is atomic (write to a temp file in the same directory, fsync, ``os.replace``), and
JSONL readers ignore a torn last line, so a run killed mid-write never breaks ``--resume``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import RankdecayError

__all__ = [
    "append_jsonl",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "read_json",
    "read_jsonl",
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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new file, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read JSON, turning a missing or corrupt file into one clear RankdecayError."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RankdecayError(f"{what} {path} does not exist; check the path.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RankdecayError(
            f"{what} {path} is not valid JSON ({exc}); it is corrupt or not one of ours — "
            "remove it or point to another directory."
        ) from None


def append_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows as JSON lines with one write + fsync (a crash can only tear the last line)."""
    payload = "".join(json.dumps(_jsonable(r)) + "\n" for r in rows)
    if not payload:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the complete lines of a JSONL file; a torn (unterminated or unparsable) last line is skipped."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                return  # torn last line from a crash mid-write
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                return


def truncate_jsonl(path: str | Path, keep: Any) -> None:
    """Rewrite ``path`` atomically keeping only complete rows for which ``keep(row)`` is true.

    Used on resume to drop rows logged after the checkpoint being resumed from.
    """
    path = Path(path)
    if not path.exists():
        return
    rows = [r for r in read_jsonl(path) if keep(r)]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
