"""Cost of the experiment trackers: one log event to TensorBoard / W&B vs the recording it reports.

Model: the R4 grokking model of ``bench_train.py`` (2 layers, d_model 128, 4 heads, QK-norm).
Per repetition, for one monitor recording of that model:

- baseline: ``SpectralMonitor.compute`` (the per-head factored SVDs, float64) — what a monitor step
  costs without any tracker;
- tags: :func:`rankdecay.integrations.loggers.run_scalars` of the records plus a metrics row;
- tensorboard: ``TensorBoardSink.log`` of those tags (``SummaryWriter.add_scalar`` per tag);
- wandb: ``WandbSink.log`` (offline run, files in a temporary folder).

Medians over ``--reps`` interleaved repetitions; the ratios (tracker / baseline) are what the
docs quote. Target: each tracker ≤ 10 % of the recording it reports. Opening and closing the
sinks (W&B starts a service process) is timed once and reported separately.

    python benchmarks/bench_loggers.py              # --reps 30
    OMP_NUM_THREADS=1 python benchmarks/bench_loggers.py --reps 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from rankdecay.experiments import get_experiment
from rankdecay.integrations.loggers import TensorBoardSink, WandbSink, run_scalars
from rankdecay.monitor import SpectralMonitor
from rankdecay.train import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")

    exp = get_experiment("grokking")
    cfg = exp.config("paper", {"train.steps": 1})
    task = cfg.task.build(cfg.seed)
    model = build_model(cfg.model, task)
    monitor = SpectralMonitor(model, every=1, keep_records=False)
    row = {"step": 0, "loss": 1.0, "acc": 0.5, "lr": 1e-3, "val_loss": 1.2, "val_acc": 0.4}

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        tb = TensorBoardSink(Path(tmp) / "tb")
        t_tb_open = time.perf_counter() - t
        t = time.perf_counter()
        wb = WandbSink(Path(tmp) / "wb", name="bench")
        t_wb_open = time.perf_counter() - t
        times: dict[str, list[float]] = {"baseline": [], "tags": [], "tensorboard": [], "wandb": []}
        for step in range(args.reps):
            t0 = time.perf_counter()
            records = monitor.compute(step)
            t1 = time.perf_counter()
            tags = run_scalars({**row, "step": step}, records)
            t2 = time.perf_counter()
            tb.log(step, tags)
            t3 = time.perf_counter()
            wb.log(step, tags)
            t4 = time.perf_counter()
            for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[key].append(dt)
        t = time.perf_counter()
        tb.close()
        wb.close()
        t_close = time.perf_counter() - t

    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"tags per event: {len(tags)}; reps {args.reps}; torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}"
    )
    for key in ("baseline", "tags", "tensorboard", "wandb"):
        print(
            f"{key:12s} {med[key] * 1e3:8.3f} ms   ratio vs baseline {med[key] / med['baseline']:.4f}"
        )
    print(
        f"open: tensorboard {t_tb_open:.2f} s, wandb {t_wb_open:.2f} s; close both {t_close:.2f} s"
    )


if __name__ == "__main__":
    main()
