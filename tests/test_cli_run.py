"""`rankdecay run` / `rankdecay list` end to end (in-process CLI): learning, bad input, signals."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from rankdecay.cli import main
from rankdecay.runio import read_jsonl

TINY_RECALL = [
    "task.n_keys=4",
    "task.n_values=4",
    "task.n_pairs=2",
    "task.n_eval=64",
    "model.d_model=16",
    "model.n_heads=2",
    "train.batch_size=16",
    "train.log_every=5",
    "train.eval_every=10",
    "train.monitor_every=10",
    "train.checkpoint_every=20",
]


def _sets(items: list[str]) -> list[str]:
    out: list[str] = []
    for s in items:
        out += ["--set", s]
    return out


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_run_recall_quick_learns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "recall"
    argv = ["run", "recall", "--preset", "quick", "--out", str(run), "--no-progress"]
    argv += _sets(["train.steps=250", "train.eval_every=50", "train.monitor_every=50"])
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "verdict" in out and "the model learns recall" in out
    summary = _summary(run)
    assert summary["status"] == "finished"
    assert summary["final"]["val_acc"] >= 0.95
    row = next(r for r in summary["verdict"] if "learns recall" in r["claim"])
    assert row["met"] is True
    # every circuit of every layer/head was monitored at each monitor step
    spectra = list(read_jsonl(run / "spectra.jsonl"))
    assert {r["step"] for r in spectra} == {0, 50, 100, 150, 200, 250}


def test_run_grokking_quick_memorizes(tmp_path: Path) -> None:
    run = tmp_path / "grok"
    argv = [
        "run",
        "grokking",
        "--preset",
        "quick",
        "--out",
        str(run),
        "--no-progress",
        "--seed",
        "1",
    ]
    argv += _sets(
        [
            "arm=l2",
            "task.p=23",
            "model.d_model=32",
            "model.d_mlp=64",
            "optim.lr=3e-3",
            "train.batch_size=512",  # ≥ the 264 training pairs: full batch
            "train.steps=100",
            "train.eval_every=50",
            "train.monitor_every=50",
            "train.log_every=25",
        ]
    )
    assert main(argv) == 0
    summary = _summary(run)
    assert summary["seed"] == 1 and summary["final"]["train_acc"] >= 0.99
    rows = {r["claim"].split(" (")[0]: r for r in summary["verdict"]}
    assert rows["memorizes the training set"]["met"] is True
    baseline = float(rows["memorization baseline"]["measured"])
    assert 0.3 < baseline < 0.6  # ≈ f = 0.5 (p = 23: few pairs)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run", "nope"], "unknown experiment 'nope'"),
        (["run", "recall", "--preset", "huge"], "has no preset 'huge'"),
        (["run", "recall", "--set", "optim.lrr=1"], "unknown config key 'optim.lrr'"),
        (["run", "recall", "--set", "train.steps=many"], "config key 'train.steps' expects int"),
        (["run", "recall", "--set", "optim.name=lion"], "must be one of"),
        (["run", "recall", "--set", "train.steps"], "must read key=value, got 'train.steps'"),
        (["run"], "name an experiment"),
        (["list", "nope"], "unknown experiment 'nope'"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main([*argv, *(["--out", str(tmp_path / "x")] if argv[:2] == ["run", "recall"] else [])])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert len(err.splitlines()) == 1 and err.startswith("rankdecay: error: ")
    assert "Traceback" not in err


def test_resume_bad_directories(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["run", "--resume", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "not a rankdecay run directory" in err and err.rstrip().endswith("[--resume]"), err
    (empty / "config.json").write_text("{broken")
    assert main(["run", "--resume", str(empty)]) == 2
    assert "not valid JSON" in capsys.readouterr().err

    run = tmp_path / "r"
    base = [
        "run",
        "recall",
        "--out",
        str(run),
        "--no-progress",
        *_sets([*TINY_RECALL, "train.steps=10"]),
    ]
    assert main(base) == 0
    capsys.readouterr()
    differs = [
        "run",
        "recall",
        "--resume",
        str(run),
        "--no-progress",
        *_sets([*TINY_RECALL, "train.steps=10", "model.d_model=32"]),
    ]
    assert main(differs) == 2
    err = capsys.readouterr().err
    assert "config differs in model.d_model" in err and len(err.strip().splitlines()) == 1
    assert err.rstrip().endswith("[--out]"), err
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and err.rstrip().endswith("[--resume, --out]"), err
    # the same settings (or none) resume fine; a finished run is left as it is
    assert main(["run", "--resume", str(run), "--no-progress"]) == 0
    assert (
        main(
            [
                "run",
                "recall",
                "--resume",
                str(run),
                "--no-progress",
                *_sets([*TINY_RECALL, "train.steps=10"]),
            ]
        )
        == 0
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_checkpoint_and_resumes(
    sig: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "sig"
    argv = [
        "run",
        "recall",
        "--out",
        str(run),
        "--no-progress",
        *_sets([*TINY_RECALL, "train.steps=100000"]),
    ]

    def fire() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not (run / "checkpoint" / "state.json").exists():
            time.sleep(0.005)
        os.kill(os.getpid(), sig)

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=fire, daemon=True)
    t.start()
    code = main(argv)
    t.join()
    assert code == 130
    err = capsys.readouterr().err
    assert "resume" in err and str(run) in err
    summary = _summary(run)
    assert summary["status"] == "interrupted"
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["step"] == summary["step"] >= 20
    assert max(r["step"] for r in read_jsonl(run / "metrics.jsonl")) <= state["step"]
    # handlers restored to what they were (not assumed default: a background job ignores SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("recall", "grokking", "lm", "vit"):
        assert name in out
    assert main(["list", "grokking", "--preset", "quick"]) == 0
    out = capsys.readouterr().out
    for key in (
        "arm",
        "strength",
        "task.train_fraction",
        "lrd.scale_by_lr",
        "optim.lr",
        "train.steps",
    ):
        assert key in out
    assert "task.train_fraction ∈" in out.replace("\n", " ") or "default sweep grid" in out


class _ClosedPipe(io.TextIOBase):
    """A stdout whose reader has gone (``rankdecay … | head -1``): every write is EPIPE."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        return self._fd


@pytest.mark.parametrize("command", ["sweep", "list", "list grokking"])
def test_closed_stdout_ends_quietly(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A reader that closes the pipe early is no error of ours: no traceback, nothing on stderr,
    status 141 (what a shell reports for SIGPIPE), and stdout now points at /dev/null — also
    where rich prints the table (its own handler exits 1)."""
    argv = command.split()
    if command == "sweep":
        argv += ["recall", "--dry-run", "--out", str(tmp_path / "sweep")]
    with (tmp_path / "stdout").open("w") as held:
        monkeypatch.setattr(sys, "stdout", _ClosedPipe(held.fileno()))
        code = main(argv)
        assert os.path.samestat(os.fstat(held.fileno()), os.stat(os.devnull))
    monkeypatch.undo()
    assert code == 141
    assert capsys.readouterr().err == ""


def test_experiments_declare_their_trainer() -> None:
    """``Experiment.trainer`` replaces the function attribute the ensemble executor used to read:
    the transformer experiments declare the rankdecay loop (and get their ``run`` from it), the
    others their own ``run``; a record with neither is refused."""
    from rankdecay.experiments import Experiment, get_experiment, list_experiments

    loop = {"recall", "grokking", "lm", "vit"}
    for name in list_experiments():
        exp = get_experiment(name)
        assert exp.trainer == ("train" if name in loop else None), name
        assert callable(exp.run) and (exp.verdict is not None) == (name in loop)
        assert not hasattr(exp.run, "rankdecay_trainer")
    with pytest.raises(ValueError, match="neither a run function nor trainer='train'"):
        Experiment(name="x", description="", config_cls=dict)
