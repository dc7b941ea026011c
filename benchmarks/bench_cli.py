"""CPU time of the light commands: ``python -m rankdecay --help``, ``list``, ``sweep --help`` (issue 16).

Each command runs ``--repeats`` times in a fresh interpreter; the CPU time (user + system) of the
child is read from ``resource.getrusage(RUSAGE_CHILDREN)`` and the median is printed beside that of
the baseline ``python -c pass`` in the same run and of ``python -c "import torch"`` (what the
command cost when every command imported torch). ``--before SRC`` adds the same commands run with
another checkout's ``src`` on PYTHONPATH (e.g. the main branch before issue 16) under the same load;
there ``-m rankdecay`` is spelled ``-m rankdecay.cli`` (``rankdecay/__main__.py`` is new).

    PYTHONPATH=src python benchmarks/bench_cli.py --repeats 7 [--before /work/main/src]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")

COMMANDS: dict[str, list[str]] = {
    "python -c pass (baseline)": ["-c", "pass"],
    'python -c "import torch"': ["-c", "import torch"],
    "python -m rankdecay --help": ["-m", "rankdecay", "--help"],
    "python -m rankdecay.cli --help": ["-m", "rankdecay.cli", "--help"],
    "python -m rankdecay run --help": ["-m", "rankdecay", "run", "--help"],
    "python -m rankdecay report --help": ["-m", "rankdecay", "report", "--help"],
    "python -m rankdecay sweep --help": ["-m", "rankdecay", "sweep", "--help"],
    "python -m rankdecay list": ["-m", "rankdecay", "list"],
    "python -m rankdecay list grokking": ["-m", "rankdecay", "list", "grokking"],
    "python -m rankdecay list attention-svm": ["-m", "rankdecay", "list", "attention-svm"],
}


def cpu_seconds(args: list[str], src: str) -> float:
    """User + system CPU seconds of one ``python ARGS`` run with ``src`` on PYTHONPATH."""
    env = dict(os.environ, PYTHONPATH=src, OMP_NUM_THREADS="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        return float("nan")  # the command failed in that checkout
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--before", default=None, metavar="SRC", help="another checkout's src")
    args = parser.parse_args()
    sources = [("this", SRC)] + ([("before", args.before)] if args.before else [])
    print(f"load average {os.getloadavg()[0]:.2f}; median CPU s (user+sys) of {args.repeats} runs")
    base = None
    for label, cmd in COMMANDS.items():
        for name, src in sources:
            if name == "before" and "rankdecay" not in " ".join(cmd):
                continue
            if name == "before" and cmd[:2] == ["-m", "rankdecay"]:
                cmd = ["-m", "rankdecay.cli", *cmd[2:]]  # no rankdecay/__main__.py before
            times = [cpu_seconds(cmd, src) for _ in range(args.repeats)]
            median = statistics.median(times)
            base = median if base is None else base
            print(f"{label:<38} [{name:>6}] {median:6.3f} s  ({median / base:5.1f}× baseline)")


if __name__ == "__main__":
    main()
