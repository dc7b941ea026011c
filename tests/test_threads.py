"""Thread counts that fit the machine: physical cores, --threads on every command, the OpenMP wait
policy of the console script, and the sweep's workers × threads budget (exit 2, one sentence)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rankdecay import threads
from rankdecay.cli import build_parser, main
from rankdecay.errors import RankdecayError

TESTS = Path(__file__).resolve().parent


def _cpuinfo_cores(cpus: set[int]) -> int | None:
    """Distinct (physical id, core id) pairs of ``cpus`` read from /proc/cpuinfo (independent
    of the sysfs topology files threads.physical_cores reads)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    cores = set()
    for block in text.strip().split("\n\n"):
        fields = dict(
            (k.strip(), v.strip())
            for k, _, v in (line.partition(":") for line in block.splitlines())
        )
        if "processor" not in fields or "core id" not in fields:
            return None
        if int(fields["processor"]) in cpus:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores) or None


def test_physical_cores_matches_cpuinfo_and_affinity() -> None:
    cores = threads.physical_cores()
    assert 1 <= cores <= threads.available_cpus()
    if hasattr(os, "sched_getaffinity"):
        expected = _cpuinfo_cores(set(os.sched_getaffinity(0)))
        if expected is not None:
            assert cores == expected


def test_default_threads_respects_env_and_never_oversubscribes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpus = threads.available_cpus()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(cpus + 7))
    assert threads.default_threads() == cpus  # capped at the CPUs available
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads.default_threads() == threads.physical_cores()
    for workers in range(1, cpus + 1):
        per = threads.default_threads(workers)
        assert per >= 1 and workers * per <= cpus
        threads.check_budget(workers, per)  # the default always passes the budget


def test_check_budget_names_parameters_not_flags() -> None:
    cpus = threads.available_cpus()
    for workers, n in ((0, 1), (1, 0), (1, cpus + 1), (cpus, 2)):
        with pytest.raises(threads.ThreadCountError) as info:
            threads.check_budget(workers, n)
        assert isinstance(info.value, ValueError) and isinstance(info.value, RankdecayError)
        assert "--" not in str(info.value) and info.value.param


@pytest.mark.parametrize("command", ["analyze", "run", "sweep", "report"])
def test_every_command_takes_threads(command: str) -> None:
    parser, _ = build_parser()
    args = parser.parse_args([command, "x", "--threads", "1"])
    assert (getattr(args, "threads", None) or getattr(args, "threads_per_worker", None)) == 1


def test_cli_sets_torch_threads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        # `report` on an empty directory fails after the threads are set: exit 2, one sentence
        assert main(["report", str(tmp_path), "--threads", "1"]) == 2
        assert torch.get_num_threads() == 1
        assert "Traceback" not in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
        os.environ["OMP_NUM_THREADS"] = "1"


def test_sweep_budget_error_names_both_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sys.path.insert(0, str(TESTS))
    cpus = threads.available_cpus()
    code = main(
        [
            "sweep",
            "sweep_toy:EXPERIMENT",
            "--workers",
            "1",
            "--threads",
            str(cpus + 1),
            "--out",
            str(tmp_path / "sw"),
            "--dry-run",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "oversubscribe" in err
    assert err.endswith("[--workers, --threads]")
    assert not (tmp_path / "sw" / "sweep.json").exists()


def _wait_policy(argv0: str, env_policy: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    code = (
        f"import sys; sys.argv = [{argv0!r}]; import os, rankdecay; "
        "print(os.environ.get('OMP_WAIT_POLICY'))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_console_script_sets_passive_wait_policy_before_torch() -> None:
    assert _wait_policy("/usr/local/bin/rankdecay", None) == "PASSIVE"
    assert _wait_policy("/usr/local/bin/rankdecay", "ACTIVE") == "ACTIVE"  # the user's choice
    assert _wait_policy("/home/me/train.py", None) == "None"  # a library user is left alone


def test_set_threads_limits_an_already_loaded_numpy_blas() -> None:
    """In a fresh process (the thread counts are process-global): numpy loaded first with its
    default pool, then set_threads(1) → every BLAS pool numpy loaded runs one thread."""
    pytest.importorskip("threadpoolctl")
    code = (
        "import numpy\n"
        "from threadpoolctl import threadpool_info\n"
        "from rankdecay.threads import set_threads\n"
        "before = [d['num_threads'] for d in threadpool_info() if d['user_api'] == 'blas']\n"
        "set_threads(1)\n"
        "pools = [d['num_threads'] for d in threadpool_info() if d['user_api'] == 'blas']\n"
        "assert pools and set(pools) == {1}, pools\n"
        "import os\n"
        "assert len(os.sched_getaffinity(0)) == 1 or max(before) > 1, before  # a real change\n"
    )
    drop = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
