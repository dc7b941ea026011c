"""Run files under faults: damaged files, two writers, stale locks, kills, disk full, umask.

One small recall run is trained per session (``_runs``) and copied per case. Cases run
in-process (``rankdecay.cli.main`` with an alarm as the hang guard) except where another
process is the point (a second writer, a dead lock holder). The promises these tests check are
listed in docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from rankdecay.cli import main
from rankdecay.runio import read_jsonl, scan_jsonl

TINY = [
    "task.n_keys=4",
    "task.n_values=4",
    "task.n_pairs=2",
    "task.n_eval=32",
    "model.d_model=16",
    "model.n_heads=2",
    "model.n_layers=1",
    "train.batch_size=8",
    "train.log_every=5",
    "train.eval_every=10",
    "train.monitor_every=10",
    "train.checkpoint_every=10",
    "train.keep_checkpoints=2",
    "train.steps=20",
]
LOGS = ("metrics.jsonl", "spectra.jsonl")


def _sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


class _Hang(Exception):
    pass


@contextlib.contextmanager
def _deadline(cpu_s: int = 60, wall_s: int = 600) -> Iterator[None]:
    """Fail (instead of hanging the suite) when the block spins for ``cpu_s`` CPU seconds or
    blocks for ``wall_s`` seconds (generous: shared test machines can be very loaded)."""

    def fire(signum: int, frame: object) -> None:
        raise _Hang(f"hung ({'CPU' if signum == signal.SIGPROF else 'wall'} time limit)")

    old = {sig: signal.signal(sig, fire) for sig in (signal.SIGALRM, signal.SIGPROF)}
    signal.setitimer(signal.ITIMER_PROF, cpu_s)
    signal.alarm(wall_s)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.setitimer(signal.ITIMER_PROF, 0)
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """main(argv) in-process with a hang guard; (exit code, stderr). A traceback fails the test."""
    capsys.readouterr()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _deadline():
            try:
                code = main(argv)
            except _Hang:
                raise
            except BaseException as exc:  # noqa: BLE001 - a traceback is a failure
                pytest.fail(f"{argv[:3]} raised {type(exc).__name__}: {exc}")
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    return code, out.err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("rankdecay: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="session")
def _runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``ref``: a finished 20-step run (checkpoints at 10 and 20 kept); ``base``: the same run as
    if killed after logging step 20 but before its step-20 checkpoint (checkpoint at 10)."""
    root = tmp_path_factory.mktemp("reliability")
    ref = root / "ref"
    torch.set_num_threads(1)
    assert main(["run", "recall", "--out", str(ref), "--no-progress", *_sets(TINY)]) == 0
    assert (ref / "checkpoint-000000010").is_dir()
    base = root / "base"
    shutil.copytree(ref, base)
    shutil.rmtree(base / "checkpoint")
    os.replace(base / "checkpoint-000000010", base / "checkpoint")
    summary = json.loads((base / "summary.json").read_text())
    summary.update(status="running", step=0)
    (base / "summary.json").write_text(json.dumps(summary))
    return {"ref": ref, "base": base}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _same_history(run: Path, ref: Path) -> None:
    for name in LOGS:
        assert (run / name).read_text() == (ref / name).read_text(), name
    from safetensors.torch import load_file

    a = load_file(str(ref / "checkpoint" / "model.safetensors"))
    b = load_file(str(run / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------ the corruption matrix


def _middle(data: bytes) -> tuple[list[bytes], int]:
    lines = data.split(b"\n")
    return lines, max(0, (len(lines) - 1) // 2)


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _garble(p: Path) -> None:
    data = p.read_bytes()
    if p.suffix == ".safetensors":  # flip bytes in the tensor data
        b = bytearray(data)
        for i in range(len(b) - 64, len(b) - 32):
            b[i] ^= 0x5A
        p.write_bytes(bytes(b))
        return
    lines, mid = _middle(data)
    lines[mid] = b'{"step": 5, "loss": 0.1' + b"#garbled"
    p.write_bytes(b"\n".join(lines))


def _wrong_type(p: Path) -> None:
    if p.suffix == ".jsonl":
        lines, mid = _middle(p.read_bytes())
        lines[mid] = b"[1, 2, 3]"
        p.write_bytes(b"\n".join(lines))
    else:
        p.write_text("[1, 2, 3]\n")


def _bad_utf8(p: Path) -> None:
    data = p.read_bytes()
    if p.suffix == ".safetensors":  # inside the JSON header
        p.write_bytes(data[:12] + b"\xff\xfe" + data[14:])
        return
    lines, mid = _middle(data)
    lines[mid] = lines[mid][:5] + b"\xff\xfe\xfd" + lines[mid][5:]
    p.write_bytes(b"\n".join(lines))


def _delete(p: Path) -> None:
    shutil.rmtree(p) if p.is_dir() else p.unlink()


def _step_edited(p: Path) -> None:
    state = json.loads(p.read_text())
    state["step"] = 15 if state["step"] != 15 else 5
    p.write_text(json.dumps(state))


def _dir_is_file(p: Path) -> None:
    shutil.rmtree(p)
    p.write_text("not a checkpoint\n")


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncate": _truncate,
    "garble_middle": _garble,
    "wrong_type": _wrong_type,
    "invalid_utf8": _bad_utf8,
    "delete": _delete,
}
FILES = [
    "config.json",
    "metrics.jsonl",
    "spectra.jsonl",
    "summary.json",
    "checkpoint/state.json",
    "checkpoint/model.safetensors",
    "checkpoint/optim.safetensors",
]
CASES = [(f, d) for f in FILES for d in DAMAGE] + [
    ("checkpoint/state.json", "step_edited"),
    ("checkpoint", "delete"),
    ("checkpoint", "dir_is_file"),
]
EXTRA = {"step_edited": _step_edited, "dir_is_file": _dir_is_file}


def _damage(run: Path, name: str, how: str) -> None:
    (DAMAGE.get(how) or EXTRA[how])(run / name)


@pytest.mark.parametrize(("name", "how"), CASES, ids=[f"{f}-{d}" for f, d in CASES])
def test_resume_of_a_damaged_run_recovers_or_refuses(
    name: str, how: str, _runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--resume of a run killed before its last checkpoint, with one file damaged: either the
    run ends with exactly the history and weights of an undamaged run (recovery from the
    checkpoint), or exit 2 with one sentence naming the file — never a traceback, a hang or a
    shorter history."""
    run = _copy(_runs["base"], tmp_path / "run")
    _damage(run, name, how)
    code, err = _cli(["run", "--resume", str(run), "--no-progress"], capsys)
    assert code in (0, 2), err
    if code == 2:
        line = _one_error_line(err)
        assert Path(name).name in line or "checkpoint" in line, line
        return
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    _same_history(run, _runs["ref"])
    ref_meta = json.loads((_runs["ref"] / "config.json").read_text())
    assert json.loads((run / "config.json").read_text()) == ref_meta  # rebuilt if damaged
    assert not list(run.rglob("*.tmp"))


REPORT_FILES = [
    "config.json",
    "metrics.jsonl",
    "spectra.jsonl",
    "summary.json",
    "checkpoint/state.json",
]
REPORT_CASES = [(f, d) for f in REPORT_FILES for d in DAMAGE]


@pytest.mark.parametrize(("name", "how"), REPORT_CASES, ids=[f"{f}-{d}" for f, d in REPORT_CASES])
def test_report_of_a_damaged_run_marks_or_refuses(
    name: str,
    how: str,
    _runs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`rankdecay report` of a finished run with one file damaged: exit 2 with one sentence
    naming the file, or a report that marks every lost row ("history has gaps"). Figures are
    not rendered here (test_report_draws_a_run_with_gaps draws one)."""
    import rankdecay.report as report

    monkeypatch.setattr(report, "run_figures", lambda page, run, steps: None)
    run = _copy(_runs["ref"], tmp_path / "run")
    _damage(run, name, how)
    code, err = _cli(["report", str(run), "--out", str(tmp_path / "rep")], capsys)
    assert code in (0, 2), err
    if code == 2:
        line = _one_error_line(err)
        assert Path(name).name in line, line
        return
    lost = any(
        list(read_jsonl(run / f, need_step=True)) != list(read_jsonl(_runs["ref"] / f))
        or scan_jsonl(run / f).bad
        for f in LOGS
    )
    html = (tmp_path / "rep" / "report.html").read_text()
    assert ("history has gaps" in html and "has gaps" in err) == lost, (name, how, err)


def test_report_draws_a_run_with_gaps(
    _runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(_runs["ref"], tmp_path / "run")
    _garble(run / "metrics.jsonl")
    code, err = _cli(["report", str(run), "--out", str(tmp_path / "rep")], capsys)
    assert code == 0 and "metrics.jsonl line(s) 3 are damaged" in err and "step(s) 10" in err
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "history has gaps" in html and "<img" in html


# ------------------------------------------------------------------------ checkpoints


def test_damaged_newest_checkpoint_falls_back_to_the_previous(
    _runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """keep_checkpoints=2: flipped bytes in the newest checkpoint fail its checksum; resume
    moves it aside, continues from the one before and ends with the undamaged history."""
    run = _copy(_runs["ref"], tmp_path / "run")
    _garble(run / "checkpoint" / "model.safetensors")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    code, err = _cli(["run", "--resume", str(run), "--no-progress"], capsys)
    assert code == 0, err
    assert "does not match its checksum" in err and "previous checkpoint" in err
    _same_history(run, _runs["ref"])
    assert list(run.glob("damaged-checkpoint-*"))
    assert sorted(p.name for p in run.glob("checkpoint*")) == ["checkpoint", "checkpoint-000000010"]


def test_kill_at_each_checkpoint_write_step_leaves_a_resumable_run(
    _runs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kill at each rename and at several fsyncs of a resume (emulated by an exception no
    handler catches): the next resume cleans every temp file and ends with the
    history of an uninterrupted run."""
    import rankdecay.runfiles as runfiles

    class Killed(BaseException):
        pass

    # a resume from step 10 makes 8 renames: 2 log truncations, the first summary, the two
    # checkpoint files, checkpoint → checkpoint-000000010, .checkpoint.tmp → checkpoint, the
    # last summary
    points = [("replace", n) for n in range(1, 9)] + [("fsync", n) for n in (3, 6, 9, 12)]
    for target, nth in points:
        if True:
            run = _copy(_runs["base"], tmp_path / f"{target}{nth}")
            calls = {"n": 0}
            real = {"replace": os.replace, "fsync": os.fsync}[target]

            def boom(*a: object, _real=real, _nth=nth, _calls=calls, **k: object) -> object:
                _calls["n"] += 1
                if _calls["n"] == _nth:
                    raise Killed
                return _real(*a, **k)

            monkeypatch.setattr(runfiles.os, target, boom)  # the os module, for every writer
            with pytest.raises(Killed):
                with _deadline():
                    main(["run", "--resume", str(run), "--no-progress"])
            monkeypatch.undo()
            code, err = _cli(["run", "--resume", str(run), "--no-progress"], capsys)
            assert code == 0, (target, nth, err)
            _same_history(run, _runs["ref"])
            assert not list(run.rglob("*.tmp")) and not (run / ".checkpoint.old").exists()


def test_disk_full_ends_in_one_sentence_and_resumes_exactly(
    _runs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ENOSPC at the k-th fsync (log rows, summary, checkpoint files): exit 2, one sentence
    naming the file, no temp file left, the previous checkpoint intact; once space is back,
    resume ends with the history of an uninterrupted run."""
    real = os.fsync
    for nth in (2, 4, 6, 8):
        run = _copy(_runs["base"], tmp_path / f"full{nth}")
        calls = {"n": 0}

        def full(fd: int, _nth: int = nth, _calls: dict[str, int] = calls) -> None:
            _calls["n"] += 1
            if _calls["n"] >= _nth:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(fd)

        monkeypatch.setattr(os, "fsync", full)
        code, err = _cli(["run", "--resume", str(run), "--no-progress"], capsys)
        monkeypatch.undo()
        assert code == 2, err
        line = _one_error_line(err)
        assert "No space left on device" in line and "--resume" in line, line
        assert not list(run.rglob("*.tmp")) and not (run / ".checkpoint.tmp").exists()
        assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] in (10, 20)
        code, err = _cli(["run", "--resume", str(run), "--no-progress"], capsys)
        assert code == 0, err
        _same_history(run, _runs["ref"])


# ------------------------------------------------------------------------ locks


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _files(run: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in run.rglob("*")
        if p.is_file() and p.name != ".rankdecay.lock"
    }


def test_second_writer_is_refused_with_the_holders_pid(
    _runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resume in another process holds the run's lock: a second resume is refused with one
    sentence naming that pid, and the run's files equal those of a single writer."""
    run = _copy(_runs["base"], tmp_path / "run")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from rankdecay.runfiles import RunWriter;"
            "w = RunWriter(sys.argv[1]); w.lock.acquire(); print('locked', flush=True); time.sleep(60)",
            str(run),
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = _files(run)
        code, err = _cli(["run", "--resume", str(run), "--no-progress"], capsys)
        assert code == 2
        assert f"pid {holder.pid}" in _one_error_line(err)
        # a sweep worker reaching a member someone else is writing records it as failed, naming
        # the pid, and leaves it alone
        from rankdecay.sweep import RunTask, execute_task

        overrides = dict(s.split("=", 1) for s in TINY)
        task = RunTask(0, "run", "rankdecay.experiments.recall", "quick", overrides, 0, str(run))
        result = execute_task(task, set_thread_count=False)
        assert result["status"] == "failed" and f"pid {holder.pid}" in result["error"]
        assert _files(run) == before  # the refused writers wrote nothing
    finally:
        holder.kill()
        holder.wait()
    code, err = _cli(["run", "--resume", str(run), "--no-progress"], capsys)  # holder gone
    assert code == 0, err
    assert "stale lock" in err and str(holder.pid) in err
    _same_history(run, _runs["ref"])


def test_two_concurrent_resumes_one_refused_files_as_a_single_writers(
    _runs: dict[str, Path], tmp_path: Path
) -> None:
    """Two `rankdecay run --resume DIR` processes started together: one finishes (exit 0), the
    other is refused with the pid sentence (exit 2) unless it started after the first ended;
    the run's files equal those of a single writer."""
    run = _copy(_runs["base"], tmp_path / "run")
    cmd = [sys.executable, "-m", "rankdecay.cli", "run", "--resume", str(run), "--no-progress"]
    procs = [
        subprocess.Popen(
            cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for code, err in results:
        assert "Traceback" not in err
        if code == 2:
            assert (
                "being written by another rankdecay process (pid" in err
                and len(err.strip().splitlines()) == 1
            )
    _same_history(run, _runs["ref"])


def test_a_lock_left_by_a_dead_process_is_broken_with_a_message(
    _runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(_runs["base"], tmp_path / "run")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".rankdecay.lock").write_text(f"{dead.pid}\n")
    code, err = _cli(["run", "--resume", str(run), "--no-progress"], capsys)
    assert code == 0 and f"broke the stale lock on {run} left by pid {dead.pid}" in err
    assert (run / ".rankdecay.lock").read_text() == ""  # released: no holder recorded


# ------------------------------------------------------------------------ dead ends


def test_resume_may_change_the_learning_rate_and_records_it(
    _runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(_runs["base"], tmp_path / "run")
    code, err = _cli(
        [
            "run",
            "--resume",
            str(run),
            "--no-progress",
            "--set",
            "optim.lr=0.0005",
            "--set",
            "optim.grad_clip=1",
        ],
        capsys,
    )
    assert code == 0, err
    meta = json.loads((run / "config.json").read_text())
    (entry,) = meta["resume_overrides"]
    assert entry["at_step"] == 10
    assert entry["changed"]["optim.lr"][1] == 0.0005 and entry["changed"]["optim.grad_clip"] == [
        0.0,
        1.0,
    ]
    assert meta["config"]["optim"]["lr"] == 0.0005
    lrs = {r["step"]: r.get("lr") for r in read_jsonl(run / "metrics.jsonl")}
    ref = {r["step"]: r.get("lr") for r in read_jsonl(_runs["ref"] / "metrics.jsonl")}
    from rankdecay.config import from_dict
    from rankdecay.train import OptimConfig, lr_at

    new_optim = from_dict(OptimConfig, meta["config"]["optim"])
    assert lrs[5] == ref[5] and lrs[15] == pytest.approx(lr_at(14, new_optim, 20)) != ref[15]
    # a key that changes what the checkpoint means is still refused, naming it
    run2 = _copy(_runs["base"], tmp_path / "run2")
    code, err = _cli(
        [
            "run",
            "--resume",
            str(run2),
            "--no-progress",
            "--set",
            "model.d_model=32",
            "--set",
            "optim.lr=0.1",
        ],
        capsys,
    )
    assert code == 2
    line = _one_error_line(err)
    assert "model.d_model" in line and "optim.lr" not in line.split("(only")[0]


def test_failed_starts_leave_no_blocking_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    # a config error found while building the model: nothing is left behind
    code, err = _cli(
        [
            "run",
            "recall",
            "--out",
            str(out),
            "--no-progress",
            *_sets(TINY),
            "--set",
            "model.n_heads=3",
        ],
        capsys,
    )
    assert code == 2 and not out.exists(), err
    # a NaN before the first checkpoint: the message claims no checkpoint, the --out is reusable
    bad = [*TINY, "optim.lr=1e30", "train.checkpoint_every=1000", "train.log_every=1"]
    code, err = _cli(["run", "recall", "--out", str(out), "--no-progress", *_sets(bad)], capsys)
    line = _one_error_line(err)
    assert code == 2 and "no checkpoint was written yet" in line and "last good" not in line
    assert line.endswith("[--set optim.lr=…, --set optim.grad_clip=…]"), line
    assert not (out / "checkpoint").exists()
    from rankdecay.runfiles import history_gaps

    assert history_gaps(out) == []  # the rows up to the failing step are all there
    code, err = _cli(["run", "recall", "--out", str(out), "--no-progress", *_sets(TINY)], capsys)
    assert code == 0 and "ended before its first checkpoint" in err
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"


def test_files_follow_the_umask(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With umask 022 every file we write is 0644 (mkstemp alone would make 0600)."""
    import rankdecay.report as report
    from rankdecay import analyze
    from rankdecay.experiments import get_experiment
    from rankdecay.train import build_model

    monkeypatch.setattr(report, "run_figures", lambda page, run, steps: None)
    old = os.umask(0o022)
    try:
        run = tmp_path / "run"
        steps = [*TINY, "train.steps=10", "train.keep_checkpoints=1"]
        assert (
            _cli(["run", "recall", "--out", str(run), "--no-progress", *_sets(steps)], capsys)[0]
            == 0
        )
        assert _cli(["report", str(run), "--out", str(tmp_path / "rep")], capsys)[0] == 0
        exp = get_experiment("recall")
        cfg = exp.config("quick", TINY)
        rep = analyze(build_model(cfg.model, cfg.task.build(0)))
        rep.to_json(tmp_path / "a.json")
        rep.to_csv(tmp_path / "a.csv")
        report.analysis_html(rep, tmp_path / "a.html")
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != ".rankdecay.lock"]
    names = {p.name for p in files}
    assert {
        "config.json",
        "summary.json",
        "metrics.jsonl",
        "model.safetensors",
        "state.json",
    } <= names
    assert {"report.html", "summary.csv", "a.json", "a.csv", "a.html"} <= names
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o644"}, modes


SWEEP_DAMAGE = {
    "garbled": "{not json",
    "wrong_type": "[1, 2, 3]",
    "runs_wrong_type": json.dumps({"format": 1, "experiment": "recall", "runs": [1, 2]}),
    "invalid_utf8": None,
}


@pytest.mark.parametrize("how", list(SWEEP_DAMAGE))
def test_damaged_sweep_index_is_one_sentence(
    how: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A damaged sweep.json: `rankdecay report` and `rankdecay sweep` (dry run) end in exit 2
    with one sentence naming sweep.json."""
    out = tmp_path / "sweep"
    out.mkdir()
    text = SWEEP_DAMAGE[how]
    (out / "sweep.json").write_bytes(b'{"runs": "\xff\xfe"}' if text is None else text.encode())
    for argv in (
        ["report", str(out), "--out", str(tmp_path / "rep")],
        ["sweep", "recall", "--grid", "optim.lr=0.001,0.002", "--out", str(out), "--dry-run"],
    ):
        code, err = _cli(argv, capsys)
        assert code == 2 and "sweep.json" in _one_error_line(err), (argv[0], err)


def test_dry_run_refuses_an_output_directory_the_run_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rankdecay sweep --dry-run --out DIR` with DIR a non-empty non-sweep folder (or a run
    directory) ends as the real sweep does: exit 2, one sentence, nothing written; an empty or
    new folder still lists the planned runs and stays as it was."""
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    for out, says in ((foreign, "not empty"), (run_dir, "run directory")):
        before = sorted(p.name for p in out.iterdir())
        for dry in (["--dry-run"], []):
            argv = ["sweep", "recall", "--grid", "optim.lr=0.001,0.002", "--out", str(out), *dry]
            code, err = _cli(argv, capsys)
            assert code == 2 and says in _one_error_line(err), (dry, err)
        assert sorted(p.name for p in out.iterdir()) == before
    fresh = tmp_path / "fresh"
    code, err = _cli(["sweep", "recall", "--out", str(fresh), "--dry-run"], capsys)
    assert code == 0 and not fresh.exists(), err
