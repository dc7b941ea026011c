"""The run directory of one run: the one reader and writer of its files (format: :mod:`rankdecay.runio`).

:class:`RunWriter` is used by every trainer (:func:`rankdecay.train.train`, the stacked
ensemble, rank 0 of a DDP launch). Its promises (docs/reliability.md lists the tests):

- **one writer**: :meth:`RunWriter.start` takes the directory's lock (:mod:`rankdecay.runlock`);
  a second writer is refused with the holder's pid. :meth:`RunWriter.release` frees it.
- **checkpoints** are written into ``.checkpoint.tmp/`` and swapped in with two renames
  (``checkpoint`` → ``.checkpoint.old`` or, with ``keep_checkpoints`` > 1,
  ``checkpoint-<step>``; then ``.checkpoint.tmp`` → ``checkpoint``), so at every instant one
  complete checkpoint exists. ``state.json`` records the sha256 and size of each safetensors
  file and a copy of the run's config; both safetensors files carry the step in their metadata.
  Loading verifies the checksums, the schema of ``state.json`` and the step (state vs tensor
  metadata vs ``train.steps``); a damaged newest checkpoint falls back to the previous one kept
  (with a message) or is refused with one sentence.
- **history**: the checkpoint is the truth for what has run. On resume the logs are checked
  against it (:meth:`RunWriter.check_history`): rows past the checkpoint are dropped, a torn
  last line or stray damaged lines past the history are dropped with a note, and a history
  with gaps (a garbled or missing row at or before the checkpoint step) is refused. A damaged
  ``config.json`` is rebuilt from the checkpoint's copy; ``summary.json`` is rebuilt at the end.
- **no dead ends**: a run that fails before its loop starts leaves nothing behind (the caller
  calls :meth:`RunWriter.abandon`), and a new run may reuse the directory of a run that
  failed before its first checkpoint. On resume, keys in :data:`RESUMABLE_KEYS` (learning-rate
  schedule, gradient clipping, how many checkpoints to keep) may change; each change is recorded
  in ``config.json["resume_overrides"]``; other changes are refused with the list of keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import to_toml
from .errors import (
    RankdecayError,
    RankdecayFileExistsError,
    RankdecayFileNotFoundError,
    RankdecayValueError,
)
from .runio import (
    FileWriteError,
    _jsonable,
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
    read_jsonl,
    remove_temp_files,
    scan_jsonl,
    truncate_jsonl,
)
from .runlock import RUN_LOCK, DirLock

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = [
    "CHECKPOINT_FORMAT",
    "RESUMABLE_KEYS",
    "CheckpointDamaged",
    "RunWriter",
    "checkpoint_step",
    "expected_log_steps",
    "history_gaps",
    "needs_resume",
]

#: state.json "format" of checkpoints with checksums (format 1: none, read unverified)
CHECKPOINT_FORMAT = 2

#: config keys a resume may change: they steer the updates still to come, not what the
#: checkpoint holds (its weights, optimizer moments, step, data order)
RESUMABLE_KEYS = frozenset(
    {
        "optim.lr",
        "optim.min_lr",
        "optim.warmup_steps",
        "optim.schedule",
        "optim.grad_clip",
        "train.keep_checkpoints",
        "train.loggers",
        "train.log_per_head",
    }
)

#: the files of a run directory that a failed start may leave (removed by abandon / reuse)
_RUN_FILES = ("config.json", "config.toml", "metrics.jsonl", "spectra.jsonl", "summary.json")


class CheckpointDamaged(RankdecayError, ValueError):
    """A checkpoint directory fails verification (``reason`` says how)."""


def _note(message: str) -> None:
    print(f"rankdecay: note: {message}", file=sys.stderr)


_NOTED: set[str] = set()


def _note_once(message: str) -> None:
    if message not in _NOTED:
        _NOTED.add(message)
        _note(message)


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _model_bytes(model: nn.Module, metadata: dict[str, str]) -> bytes:
    """``safetensors.torch.save_model`` into bytes: tied tensors are stored once (the dropped
    names recorded in the metadata, as save_model does), every tensor contiguous."""
    from safetensors.torch import _remove_duplicate_names, save

    state = model.state_dict()
    meta = dict(metadata)
    for kept, dropped in _remove_duplicate_names(state).items():
        for name in dropped:
            meta.setdefault(name, kept)
            del state[name]
    return save({k: v.contiguous() for k, v in state.items()}, metadata=meta)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_state(state: Any) -> str | None:
    """Why ``state.json``'s content is not a checkpoint state (None when it is)."""
    if not isinstance(state, dict):
        return "state.json is not a JSON object"
    if not _is_int(state.get("step")):
        return f"state.json has no non-negative integer step (got {state.get('step')!r})"
    if not _is_int(state.get("count")):
        return "state.json has no non-negative integer count"
    opt = state.get("optimizer")
    if not isinstance(opt, dict) or not isinstance(opt.get("param_groups"), list):
        return "state.json has no optimizer state"
    if not all(isinstance(g, dict) for g in opt["param_groups"]):
        return "state.json's optimizer param_groups are not objects"
    if not isinstance(opt.get("scalars", {}), dict):
        return "state.json's optimizer scalars are not an object"
    rng = state.get("rng")
    if (
        not isinstance(rng, dict)
        or not isinstance(rng.get("python"), list)
        or len(rng["python"]) != 3
        or not isinstance(rng.get("numpy"), dict)
    ):
        return "state.json has no random-generator state"
    files = state.get("files")
    if files is not None and not (
        isinstance(files, dict)
        and all(
            isinstance(v, dict) and isinstance(v.get("sha256"), str) and _is_int(v.get("bytes"))
            for v in files.values()
        )
    ):
        return "state.json's file checksums are malformed"
    return None


def expected_log_steps(tc: Any, upto: int) -> tuple[set[int], set[int]]:
    """(metrics steps, spectra steps) a run with loop settings ``tc`` has logged by step ``upto``.

    The training loop logs a metrics row at step 0 and at every step s with s % log_every == 0,
    s % eval_every == 0 or s % monitor_every == 0 (monitor on), and at the last step
    (``train.steps``); the monitor writes spectra at step 0, every monitor_every steps and at
    the last step. ``tc`` needs steps, log_every, eval_every and monitor_every.
    """
    steps, m = int(tc.steps), int(tc.monitor_every)
    end = min(int(upto), steps)
    metrics = {0} if end >= 0 else set()
    spectra: set[int] = set()
    for s in range(0, end + 1):
        due = m > 0 and s % m == 0
        if s == 0 or s % tc.log_every == 0 or s % tc.eval_every == 0 or due or s == steps:
            metrics.add(s)
        if m > 0 and (due or s == steps):
            spectra.add(s)
    return metrics, spectra


def _ranges(steps: list[int], limit: int = 6) -> str:
    shown = ", ".join(str(s) for s in steps[:limit])
    return shown + (f" … ({len(steps)} in all)" if len(steps) > limit else "")


def _gaps_in(
    path: Path, expected: set[int], upto: int, per_step_rows: bool
) -> tuple[list[str], int]:
    """Problems of one log file up to step ``upto``; and how many damaged lines lie past it."""
    scan = scan_jsonl(path, need_step=True)
    name = path.name
    if scan.missing:
        return ([f"{name} is missing"] if expected else []), 0
    kept = [(line, r) for line, r in zip(scan.lines, scan.rows) if r["step"] <= upto]
    last_kept = kept[-1][0] if kept else 0
    problems = []
    inside = [b for b in scan.bad if b < last_kept]
    if inside:
        problems.append(f"{name} line(s) {_ranges(inside)} are damaged")
    counts = Counter(r["step"] for _, r in kept)
    missing = sorted(expected - set(counts))
    if missing:
        problems.append(f"{name} has no rows for step(s) {_ranges(missing)}")
    if per_step_rows and counts:
        full = max(counts.values())
        short = sorted(s for s, c in counts.items() if c < full)
        if short:
            problems.append(f"{name} lacks rows at step(s) {_ranges(short)}")
    elif counts:
        dup = sorted(s for s, c in counts.items() if c > 1)
        if dup:
            problems.append(f"{name} has duplicate rows for step(s) {_ranges(dup)}")
    return problems, len(scan.bad) - len(inside)


def history_gaps(run_dir: str | Path, upto: int | None = None, tc: Any = None) -> list[str]:
    """What is missing from a run's metrics/spectra history up to step ``upto`` (empty: none).

    ``tc`` (the run's train config; read from config.json when omitted) gives the steps that
    must have been logged (:func:`expected_log_steps`); ``upto`` defaults to the checkpoint's
    step, else the summary's. Runs not written by :func:`rankdecay.train.train` (no ``train``
    section with log cadences) are checked for damaged lines only.
    """
    run_dir = Path(run_dir)
    if tc is None:
        tc = _train_section(run_dir)
    if upto is None:
        upto = checkpoint_step(run_dir)
    if upto is None:
        upto = _summary_step(run_dir)
        if upto is not None and _summary_status(run_dir) != "finished":
            upto -= 1  # a run that stopped at this step (NaN, disk full) may lack its rows
    if upto is None or tc is None:
        problems = []
        for name in ("metrics.jsonl", "spectra.jsonl"):
            scan = scan_jsonl(run_dir / name)
            if scan.bad:
                problems.append(f"{name} line(s) {_ranges(scan.bad)} are damaged")
        return problems
    metric_steps, spectra_steps = expected_log_steps(tc, upto)
    p1, _ = _gaps_in(run_dir / "metrics.jsonl", metric_steps, upto, per_step_rows=False)
    p2, _ = _gaps_in(run_dir / "spectra.jsonl", spectra_steps, upto, per_step_rows=True)
    return p1 + p2


class _Cadence:
    def __init__(self, d: Mapping[str, Any]) -> None:
        self.steps = int(d["steps"])
        self.log_every = int(d["log_every"])
        self.eval_every = int(d["eval_every"])
        self.monitor_every = int(d["monitor_every"])


def _train_section(run_dir: Path) -> Any:
    try:
        meta = json.loads((run_dir / "config.json").read_bytes().decode("utf-8"))
        t = meta["config"]["train"]
        c = _Cadence(t)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if min(c.log_every, c.eval_every) <= 0 or c.monitor_every < 0 or c.steps < 0:
        return None
    return c


def checkpoint_step(run_dir: str | Path) -> int | None:
    """The step of the run's current checkpoint (None when there is none or it is unreadable)."""
    run_dir = Path(run_dir)
    for name in ("checkpoint", ".checkpoint.old"):
        try:
            step = json.loads((run_dir / name / "state.json").read_bytes().decode("utf-8"))["step"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _is_int(step):
            return int(step)
    return None


def needs_resume(run_dir: str | Path) -> bool:
    """Whether a sweep must resume ``run_dir`` rather than clear it and start afresh: it holds a
    checkpoint (intact or damaged — resuming says which) or a history past step 0."""
    w = RunWriter(run_dir)
    return w.dir.is_dir() and (w.has_checkpoint() or w.reached_step() > 0)


def _summary_status(run_dir: Path) -> str | None:
    try:
        status = json.loads((run_dir / "summary.json").read_bytes().decode("utf-8"))["status"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return status if isinstance(status, str) else None


def _summary_step(run_dir: Path) -> int | None:
    try:
        step = json.loads((run_dir / "summary.json").read_bytes().decode("utf-8"))["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return int(step) if _is_int(step) else None


class RunWriter:
    """The run directory of one run (format in :mod:`rankdecay.runio`; promises in the module
    docstring). ``keep_checkpoints``: how many checkpoints to keep (``train.keep_checkpoints``)."""

    CONFIG = "config.json"

    def __init__(self, run_dir: str | Path, keep_checkpoints: int = 1) -> None:
        self.dir = Path(run_dir)
        self.metrics_path = self.dir / "metrics.jsonl"
        self.spectra_path = self.dir / "spectra.jsonl"
        self.summary_path = self.dir / "summary.json"
        self.ckpt = self.dir / "checkpoint"
        self._tmp = self.dir / ".checkpoint.tmp"
        self._old = self.dir / ".checkpoint.old"
        if not _is_int(keep_checkpoints, 1):
            raise RankdecayValueError(
                f"train.keep_checkpoints must be a positive integer, got {keep_checkpoints!r}; "
                "set train.keep_checkpoints to 1 or more.",
                param="train.keep_checkpoints",
            )
        self.keep = int(keep_checkpoints)
        self.lock = DirLock(
            self.dir,
            RUN_LOCK,
            "run",
            "wait for it to finish or stop it, then try again (or write a new run into another directory)",
        )
        self.summary_written = False
        self._meta: dict[str, Any] | None = None

    # -- run identity -----------------------------------------------------------------------

    def is_run(self) -> bool:
        return (self.dir / self.CONFIG).is_file()

    def read_meta(self) -> dict[str, Any]:
        """The run's config.json, validated; a damaged one is replaced by the checkpoint's copy
        (in memory; :meth:`start` writes it back under the lock)."""
        fix = "give a run directory that rankdecay wrote"
        path = self.dir / self.CONFIG
        if not self.dir.is_dir():
            exists = self.dir.exists()
            what = "it is not a directory" if exists else "it does not exist"
            kind = RankdecayValueError if exists else RankdecayFileNotFoundError
            raise kind(
                f"{self.dir} is not a rankdecay run directory ({what}); {fix}.", param="resume"
            )
        try:
            meta = read_json(path, "run config", dict, fix)
            why = self._meta_problem(meta)
            if why:
                raise RankdecayValueError(f"run config {path} {why}; {fix}.", param="resume")
            return meta
        except RankdecayError as exc:
            copy = self._checkpoint_meta()
            if copy is None:
                if not path.exists():
                    raise RankdecayValueError(
                        f"{self.dir} is not a rankdecay run directory (it has no {self.CONFIG}); {fix}.",
                        param="resume",
                    ) from None
                raise
            _note_once(f"{exc} — using the copy of the config kept in the checkpoint instead.")
            self._meta = copy
            return copy

    @staticmethod
    def _meta_problem(meta: Mapping[str, Any]) -> str | None:
        if not isinstance(meta.get("config"), dict):
            return 'has no "config" object'
        if not isinstance(meta.get("experiment"), str):
            return 'has no "experiment" name'
        return None

    def _checkpoint_meta(self) -> dict[str, Any] | None:
        for d in self._candidates():
            try:
                run = json.loads((d / "state.json").read_bytes().decode("utf-8")).get("run")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(run, dict) and self._meta_problem(run) is None:
                return run
        return None

    def start(self, meta: dict[str, Any], resume: bool) -> None:
        """Lock the run directory and create (or, on resume, validate) its config files.

        On resume, differences in :data:`RESUMABLE_KEYS` are accepted and recorded; others are
        refused. A new run may reuse a directory whose run failed before its first checkpoint.
        """
        meta = json.loads(json.dumps(_jsonable(meta)))
        if resume:
            self.read_meta()  # a clear sentence before locking a directory that is no run
            self.lock.acquire()
            try:
                self._clean_temp()
                self._resume_config(meta)
            except BaseException:
                self.release()
                raise
            return
        if self.is_run() and not self._failed_start():
            raise RankdecayFileExistsError(
                f"{self.dir} already holds a run; resume it to continue "
                "or choose another output directory.",
                param=("resume", "out"),
            )
        self._created = not self.dir.exists()
        self.lock.acquire()
        try:
            if self.is_run():
                if not self._failed_start():  # pragma: no cover - raced with another start
                    raise RankdecayFileExistsError(
                        f"{self.dir} already holds a run; choose another output directory.",
                        param="out",
                    )
                status = (self.read_summary() or {}).get("status", "unknown")
                _note(
                    f"{self.dir} held a run that ended before its first checkpoint (status "
                    f"{status}); replacing it with the new run."
                )
                self._remove_run_files()
            self._clean_temp()
            self._write_meta(meta)
            for p in (self.metrics_path, self.spectra_path):
                atomic_write_text(p, "")
        except BaseException:
            self.release()
            raise

    def _failed_start(self) -> bool:
        """The directory holds a run with no checkpoint that is not finished (nothing to resume)."""
        if self._candidates():
            return False
        summary = self.read_summary()
        return summary is None or summary.get("status") != "finished"

    def _write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_json(self.dir / self.CONFIG, meta)
        atomic_write_text(self.dir / "config.toml", to_toml(meta))
        self._meta = meta

    def _resume_config(self, meta: dict[str, Any]) -> None:
        stored = self.read_meta()
        diff = _config_diff(stored, meta)
        refused = [k for k in diff if k not in RESUMABLE_KEYS]
        if refused:
            raise RankdecayValueError(
                f"cannot resume {self.dir}: its config differs in {', '.join(refused[:5])}"
                f"{' …' if len(refused) > 5 else ''}, which would change what its checkpoint "
                "means; resume with the same settings (only "
                f"{', '.join(sorted(RESUMABLE_KEYS))} may change) or start a new run in another "
                "directory.",
                param="out",
            )
        new = {k: v for k, v in meta.items() if k != "resume_overrides"}
        history = list(stored.get("resume_overrides") or [])
        if diff and (self.read_summary() or {}).get("status") == "finished":
            _note(
                f"{self.dir} is finished; its settings stay as they were ({', '.join(diff)} unchanged)."
            )
            new, diff = {**stored}, []
        if diff:
            old_flat, new_flat = _flat_meta(stored), _flat_meta(meta)
            history.append(
                {
                    "at_step": checkpoint_step(self.dir),
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "changed": {k: [old_flat.get(k), new_flat.get(k)] for k in diff},
                }
            )
            _note(
                "resuming with changed "
                + ", ".join(f"{k} ({old_flat.get(k)} → {new_flat.get(k)})" for k in diff)
                + f"; recorded in {self.dir / self.CONFIG}."
            )
        if history:
            new["resume_overrides"] = history
        rewrite = bool(diff) or self._meta is not None or not self._config_intact()
        if rewrite:
            self._write_meta(new)
        elif not (self.dir / "config.toml").is_file():
            atomic_write_text(self.dir / "config.toml", to_toml(stored))

    def _config_intact(self) -> bool:
        try:
            meta = json.loads((self.dir / self.CONFIG).read_bytes().decode("utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(meta, dict) and self._meta_problem(meta) is None

    def release(self) -> None:
        """Release the directory's lock (also released by the OS when the process ends)."""
        self.lock.release()

    def abandon(self) -> None:
        """Undo a start that failed before the loop began: remove what :meth:`start` wrote
        (the directory itself when this start created it) and release the lock."""
        try:
            self._remove_run_files()
            if getattr(self, "_created", False):
                with contextlib.suppress(OSError):
                    (self.dir / RUN_LOCK).unlink(missing_ok=True)
                    self.dir.rmdir()
        finally:
            self.release()

    def _remove_run_files(self) -> None:
        for name in _RUN_FILES:
            (self.dir / name).unlink(missing_ok=True)
        for d in (self._tmp, self._old, *self._candidates()):
            if d.is_dir():
                shutil.rmtree(d)

    def _clean_temp(self) -> None:
        """Remove temp files a killed writer left (only ever called under the lock)."""
        removed = remove_temp_files(self.dir)
        if self._tmp.exists():
            shutil.rmtree(self._tmp) if self._tmp.is_dir() else self._tmp.unlink()
            removed.append(self._tmp)
        self._recover()
        for d in self._candidates():
            if d.is_dir():
                removed += remove_temp_files(d)
        if removed:
            _note(
                f"removed {len(removed)} temp file(s) left in {self.dir} by an interrupted write "
                f"({', '.join(p.name for p in removed[:3])})."
            )

    # -- logs -------------------------------------------------------------------------------

    def log_metrics(self, row: dict[str, Any]) -> None:
        append_jsonl(self.metrics_path, [row])

    def log_spectra(self, records: list[dict[str, Any]]) -> None:
        append_jsonl(self.spectra_path, records)

    def truncate_after(self, step: int) -> None:
        """Drop every metrics/spectra row logged after ``step`` (rows past the checkpoint)."""
        for p in (self.metrics_path, self.spectra_path):
            if p.exists() or step < 0:
                truncate_jsonl(p, lambda r: int(r.get("step", -1)) <= step)
            if not p.exists():
                atomic_write_text(p, "")

    def check_history(self, step: int, tc: Any) -> None:
        """Refuse to continue when the logs lack rows the checkpoint at ``step`` has run past.

        Rows after ``step`` and damaged lines past the history are dropped by
        :meth:`truncate_after` (the caller's next call); a note says how many damaged lines
        went. See :func:`expected_log_steps`.
        """
        metric_steps, spectra_steps = expected_log_steps(tc, step)
        p1, extra1 = _gaps_in(self.metrics_path, metric_steps, step, per_step_rows=False)
        p2, extra2 = _gaps_in(self.spectra_path, spectra_steps, step, per_step_rows=True)
        problems = p1 + p2
        if problems:
            raise RankdecayValueError(
                f"cannot resume {self.dir}: its checkpoint is at step {step} but "
                f"{'; '.join(problems)}, so its history cannot be rebuilt; restore the damaged "
                "file(s) from a backup, or start the run again into a new directory.",
                param="out",
            )
        if extra1 + extra2:
            _note(
                f"dropped {extra1 + extra2} damaged line(s) after the history in {self.dir} "
                f"(the history up to the checkpoint at step {step} is complete)."
            )

    def start_over(self) -> None:
        """Resume without a checkpoint: empty the logs and start at step 0 — refused when the
        logs or summary show the run had got past step 0 (its checkpoint was lost)."""
        reached = self.reached_step()
        if reached > 0:
            raise RankdecayValueError(
                f"cannot resume {self.dir}: it has no checkpoint but its history reaches step "
                f"{reached}; restore {self.ckpt} from a backup, or start the run again into a new "
                "directory.",
                param="out",
            )
        self.truncate_after(-1)

    def reached_step(self) -> int:
        """The last step the logs or summary of this directory reach (0 when none)."""
        steps = [r["step"] for r in read_jsonl(self.metrics_path, need_step=True)]
        steps += [r["step"] for r in read_jsonl(self.spectra_path, need_step=True)]
        return max([0, *steps, _summary_step(self.dir) or 0])

    def metrics(self) -> list[dict[str, Any]]:
        return list(read_jsonl(self.metrics_path, need_step=True))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.summary_path, summary)
        self.summary_written = True

    def read_summary(self) -> dict[str, Any] | None:
        """summary.json, or None when it is missing or damaged (it is rebuilt by the run)."""
        if not self.summary_path.exists():
            return None
        try:
            summary = read_json(self.summary_path, "run summary", dict)
        except RankdecayError:
            return None
        return summary if isinstance(summary.get("status"), str) else None

    # -- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(
        self,
        model: nn.Module,
        tensors: Mapping[str, Tensor],
        state: Mapping[str, Any],
    ) -> None:
        """Write model weights, the extra tensors (optimizer, RNG, running sums) and JSON state
        (with checksums and a copy of the run's config); keep the newest ``keep`` checkpoints.

        An OS error (disk full) removes the partial checkpoint and raises
        :class:`~rankdecay.runio.FileWriteError`; the previous checkpoint stays intact.
        """
        from safetensors.torch import save

        step = int(state["step"])
        tag = {"step": str(step), "format": str(CHECKPOINT_FORMAT)}
        current = self._tmp / "state.json"
        try:
            if self._tmp.exists():
                shutil.rmtree(self._tmp)
            self._tmp.mkdir(parents=True)
            files = {}
            for name, data in (
                ("model.safetensors", _model_bytes(model, tag)),
                ("optim.safetensors", save(dict(tensors), metadata=tag)),
            ):
                current = self._tmp / name
                atomic_write_bytes(current, data)  # umask permissions; OS errors → FileWriteError
                files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            full = {**state, "format": CHECKPOINT_FORMAT, "files": files}
            if self._meta is not None or self._config_intact():
                full["run"] = (
                    self._meta
                    if self._meta is not None
                    else json.loads((self.dir / self.CONFIG).read_bytes().decode("utf-8"))
                )
            current = self._tmp / "state.json"
            atomic_write_json(current, full)
            _fsync_dir(self._tmp)
            current = self.ckpt
            if self.ckpt.exists():
                if self._old.exists():
                    shutil.rmtree(self._old)
                prev = checkpoint_step(self.dir) if self.keep > 1 else None
                if prev is not None and prev != step:
                    target = self.dir / f"checkpoint-{prev:09d}"
                    if target.exists():
                        shutil.rmtree(target)
                    os.replace(self.ckpt, target)
                else:
                    os.replace(self.ckpt, self._old)
            os.replace(self._tmp, self.ckpt)
            _fsync_dir(self.dir)
            if self._old.exists():
                shutil.rmtree(self._old)
            for old in self._previous()[max(0, self.keep - 1) :]:
                shutil.rmtree(old)
        except OSError as exc:
            with contextlib.suppress(OSError):
                if self._tmp.exists():
                    shutil.rmtree(self._tmp)
                self._recover()
            if isinstance(exc, FileWriteError):
                raise
            raise FileWriteError(current, exc) from None

    def _previous(self) -> list[Path]:
        """Older checkpoints kept (``checkpoint-<step>``), newest first."""
        if not self.dir.is_dir():
            return []
        found = [p for p in self.dir.glob("checkpoint-*") if p.name[11:].isdigit()]
        return sorted(found, key=lambda p: int(p.name[11:]), reverse=True)

    def _candidates(self) -> list[Path]:
        """Checkpoint paths, newest first (whatever state they are in)."""
        out = [p for p in (self.ckpt, self._old) if p.exists() or p.is_symlink()]
        return out + self._previous()

    def has_checkpoint(self) -> bool:
        """Whether any checkpoint exists (damaged or not: loading it says which)."""
        self._recover()
        return bool(self._candidates())

    def _recover(self) -> None:
        """Finish a checkpoint swap a kill interrupted: ``checkpoint/`` is the newest."""
        if self.ckpt.exists() or self.ckpt.is_symlink():
            if self._old.is_dir() and (self.ckpt / "state.json").is_file():
                with contextlib.suppress(OSError):
                    shutil.rmtree(self._old)
            return
        with contextlib.suppress(OSError):
            if (self._old / "state.json").is_file():
                os.replace(self._old, self.ckpt)
            elif self._previous():
                os.replace(self._previous()[0], self.ckpt)

    def _verify(self, d: Path, max_step: int | None) -> dict[str, Any]:
        """The state of checkpoint ``d`` after checking its files; raises CheckpointDamaged."""
        from safetensors import safe_open

        if not d.is_dir():
            raise CheckpointDamaged(f"{d} is not a directory")
        try:
            state = json.loads((d / "state.json").read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise CheckpointDamaged("its state.json is missing") from None
        except (OSError, ValueError) as exc:
            raise CheckpointDamaged(f"its state.json is unreadable ({str(exc)[:60]})") from None
        why = _check_state(state)
        if why:
            raise CheckpointDamaged(why)
        step = state["step"]
        if max_step is not None and step > max_step:
            raise CheckpointDamaged(f"its step {step} lies beyond the run's {max_step} steps")
        files = state.get("files")
        for name in ("model.safetensors", "optim.safetensors"):
            path = d / name
            if not path.is_file():
                raise CheckpointDamaged(f"its {name} is missing")
            if files is not None:
                want = files.get(name)
                if want is None:
                    raise CheckpointDamaged(f"state.json has no checksum for {name}")
                digest, size = _sha256(path)
                if size != want["bytes"] or digest != want["sha256"]:
                    raise CheckpointDamaged(f"{name} does not match its checksum")
            try:
                with safe_open(str(path), framework="pt") as f:
                    tag = (f.metadata() or {}).get("step")
            except Exception as exc:  # noqa: BLE001 - safetensors raises several types
                raise CheckpointDamaged(
                    f"{name} is not a safetensors file ({str(exc)[:60]})"
                ) from None
            if tag is not None and tag != str(step):
                raise CheckpointDamaged(f"state.json says step {step} but {name} holds step {tag}")
        return state

    def load_checkpoint(
        self,
        model: nn.Module,
        apply: Callable[[dict[str, Tensor], dict[str, Any]], None] | None = None,
        max_step: int | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Load the newest intact checkpoint into ``model`` (and ``apply(tensors, state)``, e.g.
        the optimizer and RNG); return (extra tensors, JSON state).

        A damaged newest checkpoint is moved aside to ``damaged-checkpoint-<time>`` and the
        previous one kept is used, with a note; when none is left, one sentence names the
        damage and the fix.
        """
        from safetensors.torch import load_file, load_model

        self._recover()
        candidates = [self.ckpt, *self._previous()]
        damage: list[str] = []
        for d in candidates:
            try:
                state = self._verify(d, max_step)
                try:
                    missing, unexpected = load_model(
                        model, str(d / "model.safetensors"), strict=False
                    )
                    if unexpected or missing:
                        raise CheckpointDamaged(
                            f"its weights do not fit the model ({', '.join(sorted([*unexpected, *missing])[:3])})"
                        )
                    tensors = load_file(str(d / "optim.safetensors"))
                    for need in ("run.loss_sum", "run.acc_sum", "rng.torch"):
                        if need not in tensors:
                            raise CheckpointDamaged(f"optim.safetensors lacks {need}")
                    if apply is not None:
                        apply(tensors, state)
                except CheckpointDamaged:
                    raise
                except (OSError, ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
                    raise CheckpointDamaged(
                        f"it cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''})"
                    ) from None
            except CheckpointDamaged as exc:
                damage.append(f"{d.name}: {exc}")
                continue
            if d != self.ckpt:
                self._set_aside(damage, d)
            if state.get("files") is None:
                _note(
                    f"checkpoint {d} has no checksums (written by an older rankdecay); loaded unverified."
                )
            return tensors, state
        if len(damage) == 1:
            raise RankdecayValueError(
                f"cannot resume {self.dir}: its checkpoint is damaged ({damage[0].split(': ', 1)[1]}) "
                f"and no earlier checkpoint exists (train.keep_checkpoints={self.keep} keeps "
                f"{'only the newest' if self.keep == 1 else 'older ones once written'}); restore "
                "it from a backup, or start the run again into a new directory.",
                param="out",
            )
        raise RankdecayValueError(
            f"cannot resume {self.dir}: every checkpoint is damaged ({'; '.join(damage)}); "
            "restore one from a backup, or start the run again into a new directory.",
            param="out",
        )

    def _set_aside(self, damage: list[str], good: Path) -> None:
        """Move the damaged newer checkpoints aside and make ``good`` the current one."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for i, d in enumerate([self.ckpt, *self._previous()]):
            if d == good:
                break
            if d.exists() or d.is_symlink():
                os.replace(d, self.dir / f"damaged-{d.name}-{stamp}-{i}")
        os.replace(good, self.ckpt)
        _note(
            f"{'; '.join(damage)} — moved aside as damaged-…; resuming from the previous "
            f"checkpoint ({good.name})."
        )


def _flat_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    config = meta.get("config")
    return _flat_dict(
        {"experiment": meta.get("experiment"), **(config if isinstance(config, dict) else {})}
    )


def _config_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ; a key only one side has counts as a difference unless
    it is resumable (a setting added to rankdecay after the run was written)."""
    fa, fb = _flat_meta(a), _flat_meta(b)
    out = []
    for k in sorted(set(fa) | set(fb)):
        if fa.get(k) != fb.get(k):
            if k not in fa and k in RESUMABLE_KEYS:
                continue
            out.append(k)
    return out


def _flat_dict(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if (
            isinstance(v, Mapping)
            and v
            and not all(isinstance(x, (int, float)) for x in v.values())
        ):
            out.update(_flat_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
