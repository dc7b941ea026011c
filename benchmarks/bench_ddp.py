"""DistributedDataParallel on CPU: 2 processes (gloo) vs 1 process, same global batch.

Runs ``rankdecay run lm`` (R5's character LM at the quick preset's size: 2 layers, d_model 64,
sequence 64) for a fixed number of steps with global batch B, three ways:

- 1 process × 1 thread (the baseline);
- 1 process × 2 threads (the other way to use both cores);
- ``torchrun --nproc_per_node 2``, 1 thread each (gloo on loopback), B/2 rows per rank;

and prints the training throughput (steps/s from each run's summary, i.e. the loop without
process start-up) and the ratios. Each configuration is run ``--repeats`` times (medians).
The DDP run must log the same losses as the 1-process run (printed: largest relative difference).

    python benchmarks/bench_ddp.py --steps 60 --batch 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(out: Path, args: argparse.Namespace, procs: int, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), GLOO_SOCKET_IFNAME="lo")
    sets = {
        "train.steps": args.steps,
        "train.batch_size": args.batch,
        "train.eval_every": args.steps,
        "train.monitor_every": args.steps,
        "train.log_every": 10,
        "train.checkpoint_every": args.steps,
        "train.device": "cpu",
        "task.n_eval_windows": 16,
    }
    cli = [
        "-m",
        "rankdecay.cli",
        "run",
        "lm",
        "--preset",
        "quick",
        "--out",
        str(out),
        "--no-progress",
    ]
    for k, v in sets.items():
        cli += ["--set", f"{k}={v}"]
    if procs == 1:
        cmd = [sys.executable, *cli]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *cli,
        ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    losses = [
        json.loads(line).get("loss") for line in (out / "metrics.jsonl").read_text().splitlines()
    ]
    return {"steps_per_s": summary["steps_per_s"], "losses": [x for x in losses if x is not None]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=64, help="global batch (sequences)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    configs = {
        "1 proc × 1 thread": (1, 1),
        "1 proc × 2 threads": (1, 2),
        "DDP 2 procs × 1 thread": (2, 1),
    }
    root = Path(tempfile.mkdtemp(prefix="bench_ddp-"))
    rates: dict[str, list[float]] = {k: [] for k in configs}
    worst = 0.0
    try:
        for r in range(args.repeats):
            names = list(configs) if r % 2 == 0 else list(reversed(configs))
            losses = {}
            for name in names:
                procs, threads = configs[name]
                out = root / f"{r}-{procs}-{threads}"
                res = _run(out, args, procs, threads)
                rates[name].append(res["steps_per_s"])
                losses[name] = res["losses"]
                shutil.rmtree(out)
                print(f"repeat {r}: {name:<24} {res['steps_per_s']:.3f} steps/s", flush=True)
            a, b = losses["1 proc × 1 thread"], losses["DDP 2 procs × 1 thread"]
            worst = max(worst, max(abs(x - y) / abs(x) for x, y in zip(a, b)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    base = med["1 proc × 1 thread"]
    print(
        f"\nlm quick model, global batch {args.batch}, {args.steps} steps, median of {args.repeats}:"
    )
    for k, v in med.items():
        print(
            f"  {k:<24} {v:.3f} steps/s  ({v * args.batch:.1f} sequences/s)  ratio {v / base:.2f}×"
        )
    print(
        f"  DDP vs 1 proc × 2 threads: {med['DDP 2 procs × 1 thread'] / med['1 proc × 2 threads']:.2f}×\n"
        f"  largest relative difference of a logged loss, DDP vs 1 process: {worst:.2e}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "steps_per_s": rates, "median": med}, indent=2)
        )


if __name__ == "__main__":
    main()
