"""Training-loop overhead: rankdecay's ``train()`` vs a minimal hand-written PyTorch loop.

Model and batch of R4 (grokking): (a+b) mod 113, 2 layers, d_model 128, 4 heads, MLP 512,
pre-RMSNorm + QK-norm, batch 512, AdamW (l2 arm: weight decay 0.1 on all parameters).

1. Steps/s. Both loops are timed for ``--short`` and ``--long`` steps; the marginal rate
   (long − short) / (T_long − T_short) cancels fixed costs (imports, model build, the step-0 and
   final evaluation, the final checkpoint) in both. Our loop runs with its real bookkeeping
   (running loss/accuracy, logging every 50 steps, LR schedule, NaN checks); evaluation,
   checkpoints and the monitor are off in between, as the hand loop has none. Repeated
   ``--reps`` times alternating; medians are quoted. Target: ratio ≥ 0.95.
2. SpectralMonitor overhead at every=100: the median cost of one recording (monitor step +
   appending its records to spectra.jsonl + the summary means) divided by 100 × the median
   step time of our loop. Target ≤ 3 %.

    python benchmarks/bench_train.py                # defaults: --short 20 --long 120 --reps 3
    python benchmarks/bench_train.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rankdecay.experiments import get_experiment
from rankdecay.monitor import SpectralMonitor, summarize_records
from rankdecay.runio import append_jsonl
from rankdecay.train import build_model


def _cfg(steps: int, monitor_every: int = 0):
    exp = get_experiment("grokking")
    return exp, exp.config(
        "paper",
        {
            "arm": "l2",
            "train.steps": steps,
            "train.log_every": 50,
            "train.eval_every": steps,
            "train.checkpoint_every": steps,
            "train.monitor_every": monitor_every,
        },
    )


def ours(steps: int) -> float:
    """Wall time of ``train()`` for ``steps`` steps (monitor off)."""
    exp, cfg = _cfg(steps)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        exp.run(cfg, Path(d) / "run", progress=False)
        return time.perf_counter() - t0


def hand(steps: int) -> float:
    """Wall time of a minimal loop on the same model, data and batch (plus its setup)."""
    t0 = time.perf_counter()
    _, cfg = _cfg(steps)
    torch.manual_seed(cfg.seed)
    task = cfg.task.build(cfg.seed)
    model = build_model(cfg.model, task)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.1)
    x, y = task.train_x, task.train_y
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(x.shape[0], (512,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    float(loss.detach())
    return time.perf_counter() - t0


def monitor_cost(reps: int = 15) -> float:
    """Median seconds of one recording: monitor + spectra.jsonl append + summary means."""
    _, cfg = _cfg(1)
    task = cfg.task.build(cfg.seed)
    model = build_model(cfg.model, task)
    mon = SpectralMonitor(model, every=100, keep_records=False)
    times = []
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "spectra.jsonl"
        for i in range(reps):
            t0 = time.perf_counter()
            recs = mon.force_step(i * 100)
            append_jsonl(path, recs)
            summarize_records(recs)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", type=int, default=20)
    ap.add_argument("--long", type=int, default=120)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; R4 model, batch 512")
    ours(5), hand(5)  # warm up (imports, allocator, lazy inits)
    rates_ours, rates_hand = [], []
    for r in range(args.reps):
        n = args.long - args.short
        h = n / (hand(args.long) - hand(args.short))
        o = n / (ours(args.long) - ours(args.short))
        rates_hand.append(h)
        rates_ours.append(o)
        print(f"  rep {r}: hand {h:.2f} steps/s, ours {o:.2f} steps/s, ratio {o / h:.3f}")
    mh, mo = statistics.median(rates_hand), statistics.median(rates_ours)
    ratios = [o / h for o, h in zip(rates_ours, rates_hand)]
    print(f"steps/s (median of {args.reps}): hand-written {mh:.2f}, rankdecay train() {mo:.2f}")
    print(f"ratio ours/hand: median {statistics.median(ratios):.3f} (target >= 0.95)")
    c = monitor_cost()
    step_time = 1.0 / mo
    print(
        f"SpectralMonitor: {c * 1e3:.1f} ms per recording; at every=100 that is "
        f"{100 * c / (100 * step_time):.2f} % of the loop (target <= 3 %)"
    )


if __name__ == "__main__":
    main()
