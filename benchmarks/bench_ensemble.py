"""Ensemble executor vs local executor on an R4 grid at reduced steps: runs per hour.

The grid is R4's (grokking): 2 layers, d_model 128, 4 heads, MLP 512, batch 512, (a+b) mod 113,
both arms, fractions × seeds, with the quick preset's cadences (eval/monitor every 100 steps) and
fewer steps (``--set KEY=VALUE`` adds overrides to both, e.g. ``train.compile=true``). Both executors run the same sweep (same run names, into separate directories) with
the same CPU budget (``--workers`` processes × 1 thread each), and the script prints runs/hour of
each and their ratio, plus the largest relative difference of the runs' final validation loss
between the two sweeps (the ensemble must reproduce the local runs).

With ``--repeats R`` the pair is measured R times (alternating which goes first) and the
medians are reported — the machine may be shared.

    python benchmarks/bench_ensemble.py --steps 200 --seeds 2 --workers 2 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def _sweep(executor: str, out: Path, args: argparse.Namespace) -> float:
    from rankdecay.sweep import run_sweep

    fixed = {
        "train.steps": args.steps,
        "train.eval_every": args.eval_every,
        "train.monitor_every": args.eval_every,
        "train.log_every": 50,
        "train.checkpoint_every": args.steps,
        "train.device": "cpu",
        **dict(kv.split("=", 1) for kv in args.set),
    }
    options: dict = {"workers": args.workers, "threads_per_worker": 1}
    if executor == "ensemble" and args.members:
        options["members"] = args.members
    t0 = time.perf_counter()
    result = run_sweep(
        "grokking",
        preset="quick",
        grid={"task.train_fraction": args.fractions, "arm": args.arms},
        fixed=fixed,
        seeds=args.seeds,
        out=out,
        executor=executor,
        **options,
    )
    wall = time.perf_counter() - t0
    if result.n_failed:
        raise SystemExit(f"{executor}: {result.n_failed} run(s) did not finish: {result.rows}")
    return wall


def _final_losses(out: Path) -> dict[str, float]:
    index = json.loads((out / "sweep.json").read_text())
    return {r["name"]: r["final"]["val_loss"] for r in index["runs"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument(
        "--fractions", type=lambda s: [float(x) for x in s.split(",")], default=[0.3, 0.5]
    )
    p.add_argument("--arms", type=lambda s: s.split(","), default=["l2", "lrd"])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--members", type=int, default=None, help="ensemble size (default: auto)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for both sweeps, e.g. train.compile=true (repeatable)",
    )
    p.add_argument("--json", default=None, help="write the measurements here")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    n_runs = len(args.fractions) * len(args.arms) * args.seeds
    root = Path(tempfile.mkdtemp(prefix="bench_ensemble-"))
    walls: dict[str, list[float]] = {"local": [], "ensemble": []}
    worst = 0.0
    try:
        for r in range(args.repeats):
            order = ["local", "ensemble"] if r % 2 == 0 else ["ensemble", "local"]
            for ex in order:
                out = root / f"{ex}-{r}"
                wall = _sweep(ex, out, args)
                walls[ex].append(wall)
                print(
                    f"repeat {r}: {ex:<8} {n_runs} runs in {wall:7.1f} s = {3600 * n_runs / wall:7.1f} runs/h",
                    flush=True,
                )
            a, b = _final_losses(root / f"local-{r}"), _final_losses(root / f"ensemble-{r}")
            worst = max(worst, max(abs(a[k] - b[k]) / abs(a[k]) for k in a))
            shutil.rmtree(root / f"local-{r}")
            shutil.rmtree(root / f"ensemble-{r}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    rph = {k: 3600 * n_runs / v for k, v in med.items()}
    ratio = rph["ensemble"] / rph["local"]
    print(
        f"\nR4 grid, {n_runs} runs × {args.steps} steps (batch 512, d 128), {args.workers} worker(s) × 1 thread, "
        f"median of {args.repeats}:\n"
        f"  local    {rph['local']:8.1f} runs/hour\n"
        f"  ensemble {rph['ensemble']:8.1f} runs/hour\n"
        f"  ratio ensemble/local = {ratio:.2f}×   (target ≥ 2×)\n"
        f"  largest relative difference of a run's final val_loss between the sweeps: {worst:.2e}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "walls": walls,
                    "runs_per_hour": rph,
                    "ratio": ratio,
                    "max_rel_diff": worst,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
