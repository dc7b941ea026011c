"""Time of one ``train_ensemble`` call — M grokking members (arms alternating l2 / lrd, seeds
0…M−1) of width d (MLP 4d), S steps, evaluation only at the end, no spectral monitor, 1 thread —
optionally A/B against another checkout, interleaved.

    python benchmarks/ensemble_time.py 32 16 200 train.batch_size=32
    git worktree add /tmp/old 2cb862f     # e.g. the batched optimizer, before the fused members
    python benchmarks/ensemble_time.py 32 16 200 train.batch_size=32 --baseline /tmp/old --pairs 5

With ``--baseline DIR`` each pair runs this checkout (A) and DIR's ``src`` (B) in fresh
processes, alternating which goes first, and prints each run's CPU and wall seconds (the child's
own accounting), the A/B ratio per pair and the medians: pairing keeps the ratio meaningful on a
machine whose speed drifts. Extra positional arguments are config overrides for every member.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train_once(d: int, M: int, S: int, overrides: list[str]) -> float:
    """Train the ensemble once in this process; its wall seconds."""
    import torch

    from rankdecay.ensemble import EnsembleMember, train_ensemble
    from rankdecay.experiments import get_experiment

    torch.set_num_threads(1)
    base = [
        f"model.d_model={d}",
        f"model.d_mlp={4 * d}",
        f"train.steps={S}",
        f"train.eval_every={S}",
        f"train.log_every={min(50, S)}",
        "train.monitor_every=0",
        f"train.checkpoint_every={S}",
        "train.device=cpu",
    ]
    exp = get_experiment("grokking")
    cfgs = [
        exp.config("quick", [*base, *overrides, f"arm={'lrd' if i % 2 else 'l2'}"], seed=i)
        for i in range(M)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        members = [EnsembleMember(c, Path(tmp) / f"r{i}") for i, c in enumerate(cfgs)]
        summaries = train_ensemble(members)
        wall = time.perf_counter() - t0
    if not all(s["status"] == "finished" for s in summaries):
        raise SystemExit(f"a member did not finish: {summaries}")
    return wall


def _child(src: Path, args: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of this script run once on ``src`` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, *args], env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("d", type=int)
    p.add_argument("members", type=int)
    p.add_argument("steps", type=int)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--baseline", type=Path, help="another checkout (its src/ is imported)")
    p.add_argument("--pairs", type=int, default=5)
    a = p.parse_args()
    if a.baseline is None:
        wall = train_once(a.d, a.members, a.steps, a.overrides)
        print(
            f"d={a.d} M={a.members} steps={a.steps}: {wall:.2f} s, {1e3 * wall / a.steps:.1f} ms/step"
        )
        return
    here = Path(__file__).resolve().parents[1] / "src"
    args = [str(a.d), str(a.members), str(a.steps), *a.overrides]
    ratios: dict[str, list[float]] = {"cpu": [], "wall": []}
    print(f"load average {os.getloadavg()[0]:.1f}; A = {here}, B = {a.baseline / 'src'}")
    for i in range(a.pairs):
        order = [("A", here), ("B", a.baseline / "src")]
        runs = dict((k, _child(src, args)) for k, src in (order if i % 2 == 0 else order[::-1]))
        (ca, wa), (cb, wb) = runs["A"], runs["B"]
        ratios["cpu"].append(ca / cb)
        ratios["wall"].append(wa / wb)
        print(
            f"pair {i + 1}: A {ca:.2f} s CPU {wa:.2f} s wall, B {cb:.2f} s CPU {wb:.2f} s wall, A/B CPU {ca / cb:.3f}"
        )
    for k, v in ratios.items():
        print(f"A/B {k}: median {statistics.median(v):.3f} (min {min(v):.3f}, max {max(v):.3f})")


if __name__ == "__main__":
    main()
