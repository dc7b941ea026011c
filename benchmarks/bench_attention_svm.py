"""R2 training vectorized over problems vs a Python loop over problems.

Times (median of ``--repeats``, thread CPU time with one torch thread, robust to other processes
competing for the CPU) of normalized GD on S problems (n = 6, T = 8, d = 10, float64) for each
parameterization:

- batched: one call of :func:`rankdecay.tasks.attention_svm.train` on all S problems;
- loop:    S calls, one problem each (the same code with a batch of one).

Prints both times, the speed-up loop / batched, and the largest relative difference between the
two final iterates: it is at rounding level (1e-15) for the first ~100 steps; later, normalized GD
with a fixed step amplifies the different summation orders of the batched kernels (K Qᵀ and
diagonal: up to ~1e-2 after 300 steps), a property of the dynamics, not of the batching.

Run:  python benchmarks/bench_attention_svm.py [--problems 100] [--steps 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from rankdecay.tasks.attention_svm import make_data, train


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = make_data(range(args.problems))
    singles = [data.select([i]) for i in range(args.problems)]
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread, "
        f"{args.problems} problems × {args.steps} steps, median of {args.repeats} (thread CPU time)"
    )
    print(f"{'param':6s} {'batched s':>10s} {'loop s':>10s} {'speed-up':>9s}")
    for param in ("W", "KQ", "diag"):
        kw = dict(steps=args.steps, log_every=args.steps)

        def batched(param: str = param, kw: dict = kw) -> object:
            return train(data, param, "logistic", **kw)

        def loop(param: str = param, kw: dict = kw) -> object:
            return [train(s, param, "logistic", **kw) for s in singles]

        a, b = batched().W[-1], torch.cat([r.W[-1] for r in loop()])
        diff = float(((a - b).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)).max())
        tb = median_time(batched, args.repeats)
        tl = median_time(loop, args.repeats)
        print(
            f"{param:6s} {tb:10.3f} {tl:10.3f} {tl / tb:8.1f}×  max rel. difference of W_T: {diff:.1e}"
        )


if __name__ == "__main__":
    main()
