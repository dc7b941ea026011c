"""Read back what experiment trackers wrote: TensorBoard event files and W&B offline runs.

Shared by tests/test_integrations.py and tests/test_docs_training.py. ``offline_trackers`` is a
module-scoped fixture (import it into a test module and mark the module with
``pytestmark = pytest.mark.usefixtures("offline_trackers")``) that keeps W&B offline, silent and
inside a temporary folder, and Hugging Face off the hub.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def offline_trackers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """W&B offline, silent, its default files in a temporary folder (no network, no login)."""
    root = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("WANDB_DIR", str(root))
        mp.setenv("WANDB_DISABLE_GIT", "true")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield root


def read_tensorboard(root: Path) -> dict[str, dict[int, float]]:
    """tag → {step: value} of every event file under ``root``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    dirs = sorted({p.parent for p in Path(root).rglob("events.out.tfevents.*")})
    assert dirs, f"no TensorBoard event file under {root}"
    for d in dirs:
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def _leveldb_records(path: Path) -> Iterator[bytes]:
    """Records of W&B's transaction log (a LevelDB-style log: 7-byte file header, 32 KiB blocks,
    each record chunk ``crc32 u32 | length u16 | type u8`` with type full=1, first=2, middle=3,
    last=4)."""
    data = path.read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        if pos + 7 + length > len(data):
            break  # being written
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield buf + chunk


def read_wandb_history(root: Path) -> list[dict[str, Any]]:
    """The history rows (``run.log`` calls, with ``_step``) of the offline runs under ``root``."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(root).rglob("run-*.wandb"))
    assert files, f"no offline W&B run under {root}"
    rows = []
    for f in files:
        # run.finish() can return before W&B's service has written the run out: wait for its
        # final "exit" record
        deadline = time.monotonic() + 60
        while True:
            records = [pb.Record.FromString(data) for data in _leveldb_records(f)]
            kinds = [rec.WhichOneof("record_type") for rec in records]
            if "exit" in kinds or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert "exit" in kinds, f"the W&B run {f} was not finished"
        for rec, kind in zip(records, kinds):
            if kind == "history":
                rows.append(
                    {
                        (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                        for i in rec.history.item
                    }
                )
    return rows
