"""Wall time of one sweep with 1 vs 2 local workers and on a local Ray instance.

    python benchmarks/bench_sweep.py                       # rankdecay sweep recall --preset quick
    python benchmarks/bench_sweep.py --set train.steps=200 --repeats 1   # a reduced sweep

Each configuration runs the same CLI command (``rankdecay sweep EXPERIMENT --preset P``) into a
fresh directory, as a subprocess, and is timed end to end (process start, worker start, all runs,
index writes). Printed: the median wall time of each and the speed-up of 2 workers and of Ray
over 1 worker, measured in the same invocation. 1 worker gets all CPUs as torch threads
(--threads-per-worker = CPUs), 2 workers get CPUs // 2 each, so both use the whole machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time


def _run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="recall")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--set", dest="fixed", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the sweep directories

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    base = [
        sys.executable,
        "-m",
        "rankdecay.cli",
        "sweep",
        args.experiment,
        "--preset",
        args.preset,
        "--no-progress",
    ]
    for item in args.fixed:
        base += ["--set", item]
    if args.seeds:
        base += ["--seeds", args.seeds]
    configs = {
        "local, 1 worker": ["--workers", "1", "--threads-per-worker", str(cpus)],
        "local, 2 workers": ["--workers", "2", "--threads-per-worker", str(max(1, cpus // 2))],
    }
    try:
        import ray  # noqa: F401

        if not args.no_ray:
            configs["ray (local instance)"] = ["--executor", "ray", "--threads-per-worker", "1"]
    except ImportError:
        print("ray is not installed: skipping the Ray executor")
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {k: [] for k in configs}
    root = tempfile.mkdtemp(prefix="bench-sweep-")
    try:
        for r in range(args.repeats):
            for name, extra in configs.items():
                out = os.path.join(root, f"{r}-{name.split()[0]}-{len(times[name])}-{extra[1]}")
                wall = _run([*base, *extra, "--out", out])
                times[name].append(wall)
                print(f"  repeat {r + 1}: {name:<22} {wall:8.1f} s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{' '.join(base[2:])}  ({cpus} CPUs, load average at start: {load_before:.1f})")
    ref = statistics.median(times["local, 1 worker"])
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:<22} median {med:8.1f} s   speed-up vs 1 worker {ref / med:5.2f}×")


if __name__ == "__main__":
    main()
