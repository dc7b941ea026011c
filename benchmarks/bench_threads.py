"""Wall time of two everyday commands under different thread settings, interleaved.

Each repetition runs every arm once, in turn (A, B, C, A, B, C, …), so a change in the machine's
load hits all arms alike; the script prints per-arm medians and each arm's ratio to the first arm
(the baseline), plus the load average before and after.

Arms (``--arms``, default all):

- ``before``: the ``rankdecay`` command of the source tree ``--before SRC`` (e.g. an older
  checkout's ``src``): torch's default thread count, OpenMP's default (spinning) wait policy;
- ``default``: this checkout's ``rankdecay`` with its defaults (physical cores, passive wait);
- ``threads1``: this checkout with ``--threads 1``.

Usage (docs/benchmarks.md, "threads")::

    git archive <base-commit> src | tar -x -C /tmp/before
    HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/bench_threads.py --before /tmp/before/src --reps 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE_SRC = Path(__file__).resolve().parents[1] / "src"

COMMANDS: dict[str, list[str]] = {
    "run recall --preset quick": ["run", "recall", "--preset", "quick", "--no-progress"],
    "analyze minilm": ["analyze", "minilm", "--no-progress"],
}


def _rankdecay() -> str:
    exe = shutil.which("rankdecay")
    if exe is None:
        sys.exit("the `rankdecay` console script is not on PATH; pip install -e . first.")
    return exe


def _arm_env(src: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env["PYTHONPATH"] = str(src)
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _time(argv: list[str], env: dict[str, str], workdir: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, default=None, help="src/ of the baseline checkout")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--arms", default="before,default,threads1")
    parser.add_argument("--commands", default=",".join(COMMANDS))
    args = parser.parse_args()
    exe = _rankdecay()
    arms = [a for a in args.arms.split(",") if a]
    if "before" in arms and args.before is None:
        sys.exit("--before SRC is needed for the 'before' arm (or drop it from --arms).")
    envs = {
        "before": _arm_env(args.before) if args.before else {},
        "default": _arm_env(HERE_SRC),
        "threads1": _arm_env(HERE_SRC),
    }
    extra = {"before": [], "default": [], "threads1": ["--threads", "1"]}
    print(f"cpus {os.cpu_count()}, load average before: {os.getloadavg()}", flush=True)
    for label in args.commands.split(","):
        base = COMMANDS[label]
        times: dict[str, list[float]] = {a: [] for a in arms}
        for rep in range(args.reps):
            for arm in arms:
                with tempfile.TemporaryDirectory() as tmp:
                    argv = [exe, *base, *extra[arm]]
                    if base[0] == "run":
                        argv += ["--out", str(Path(tmp) / "run")]
                    wall = _time(argv, envs[arm], Path(tmp))
                times[arm].append(wall)
                print(
                    f"  {label} | {arm} | rep {rep}: {wall:.2f} s  load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
        ref = statistics.median(times[arms[0]])
        print(f"{label}: median wall time over {args.reps} interleaved reps")
        for arm in arms:
            med = statistics.median(times[arm])
            spread = f"{min(times[arm]):.2f}–{max(times[arm]):.2f}"
            print(f"  {arm:<9} {med:7.2f} s  (range {spread})  ratio to {arms[0]}: {med / ref:.3f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
