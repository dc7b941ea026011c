"""R4's full phase diagram with the ensemble executor: wall time and fraction of peak throughput.

Runs ``rankdecay sweep grokking --preset phase --executor ensemble`` (6 train fractions × 6
strengths × 2 arms = 72 runs of the R4 model per seed; the preset has one seed, ``--seeds 3``
gives the issue's 216 runs) with ``--set train.steps=S`` on one device, times it end to end, and
reports:

- wall time, runs per hour, how many runs finished and the ensemble sizes the executor chose;
- FLOPs done: one member's training step (forward + backward of the batched forward, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` on the CPU — the matmuls, and attention where
  the counter knows the kernel; not the elementwise ops, the optimizer or Low-Rank Decay's SVDs) × runs × steps, plus the evaluations
  (forward FLOPs per example × evaluated examples × evaluations);
- achieved TFLOP/s = FLOPs / wall, and its fraction of the device's peak for the precision used
  (fp32, TF32 if ``torch.backends.cuda.matmul.allow_tf32``, or bf16 with ``train.amp=bf16``)
  from a table of datasheet peaks (dense), or ``--peak-tflops``.

Before the sweep it prints two pre-flight timings on the device, each projected over the run:
Low-Rank Decay's batched polar factor (SVD vs Newton–Schulz) and one member's spectral recording
(float64 SVDs on the GPU vs on the CPU) — the two parts that are loops of small decompositions
rather than batched matmuls. Pick ``--set lrd.polar=…`` / ``--set train.spectra_device=…`` from
them (and say so next to the figure). The issue-7 target is ≤ 10 minutes on one H100 for 2500
steps:

    python benchmarks/gpu_phase.py --steps 2500 --seeds 3 --device cuda --json $OUT/gpu_phase.json

At tiny scale on a CPU (what the test suite runs):

    python benchmarks/gpu_phase.py --steps 3 --device cpu --fractions 0.3,0.5 --strengths 1e-3 --seeds 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

#: dense datasheet peaks, TFLOP/s: (fp32, tf32, bf16); matched by substring of the device name
PEAKS = {
    "H100 PCIe": (51.0, 378.0, 756.0),
    "H100": (67.0, 495.0, 989.0),  # SXM
    "H200": (67.0, 495.0, 989.0),
    "A100": (19.5, 156.0, 312.0),
}


def member_flops(cfg: Any) -> tuple[int, int]:
    """(training-step FLOPs, forward FLOPs per evaluated example) of one R4 member.

    Counted by FlopCounterMode on the CPU over :func:`rankdecay.ensemble.batched_forward` with one
    member (the per-member work of an ensemble step): forward + backward of a training batch,
    and the forward of one evaluation batch divided by its size.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from rankdecay.ensemble import _stack_batches, batched_forward, stack_models
    from rankdecay.train import build_model

    task = cfg.task.build(cfg.seed)
    model = build_model(cfg.model, task)
    P = stack_models([model])
    x, y = _stack_batches([task.train_batch(0, cfg.train.batch_size)])
    with FlopCounterMode(display=False) as counter:
        z = batched_forward(model.cfg, P, x)
        F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1)).backward()
    step = counter.get_total_flops()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        batched_forward(model.cfg, P, x)
    return step, counter.get_total_flops() // x.shape[1]


def peak_tflops(device: str, amp: str) -> tuple[str, float | None]:
    """(device name, dense peak TFLOP/s for the precision in use, or None when unknown)."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name()
    col = 2 if amp == "bf16" else 1 if torch.backends.cuda.matmul.allow_tf32 else 0
    for key, peaks in PEAKS.items():
        if key in name:
            return name, peaks[col]
    return name, None


def lrd_preflight(cfg: Any, n_lrd: int, steps: int, device: str) -> dict[str, float]:
    """Seconds one ensemble step's Low-Rank Decay polar factor takes on ``device`` for ``n_lrd``
    LRD members (4 matrices of d_model × d_model each: W_Q, W_K of 2 layers), by method, and the
    projection over ``steps`` — batched SVD is a loop of small SVDs on some backends, which can
    dominate a GPU run; ``--set lrd.polar=newton_schulz`` is the matmul-only alternative."""
    from rankdecay.polar import polar

    d = cfg.model.d_model
    X = torch.randn(max(1, n_lrd), 2 * cfg.model.n_layers, d, d, device=device)
    out: dict[str, float] = {}
    for method in ("svd", "newton_schulz"):
        polar(X, method)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        polar(X, method)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        out[f"{method}_s_per_step"] = time.perf_counter() - t
        out[f"{method}_s_total"] = out[f"{method}_s_per_step"] * steps
    return out


def monitor_preflight(cfg: Any, runs: int, events: int, device: str) -> dict[str, float]:
    """Seconds one member's spectral recording takes with the float64 SVDs on ``device``
    (``train.spectra_device=model``) and on the CPU (``=cpu``), and the projection over ``runs``
    members × ``events`` recordings — small float64 SVDs can be slow on a GPU."""
    from rankdecay.device import spectra_monitor
    from rankdecay.train import build_model

    model = build_model(cfg.model, cfg.task.build(0)).to(device)
    out: dict[str, float] = {}
    for where in ("model", "cpu"):
        mon = spectra_monitor(model, where, every=1, keep_records=False)
        mon.compute(0)  # warm-up
        t = time.perf_counter()
        mon.compute(0)
        out[f"{where}_s_per_record"] = time.perf_counter() - t
        out[f"{where}_s_total"] = out[f"{where}_s_per_record"] * runs * events
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--device", default="cuda")
    p.add_argument("--members", type=int, default=None, help="ensemble size (default: auto)")
    p.add_argument("--fractions", default=None, help="override the grid's train fractions")
    p.add_argument("--strengths", default=None, help="override the grid's strengths")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more overrides")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--out", default=None, help="sweep directory (default: a temporary one)")
    p.add_argument("--json", default=None, help="write the measurements here")
    args = p.parse_args(argv)

    from rankdecay.experiments import get_experiment
    from rankdecay.sweep import plan_sweep, run_sweep

    # the ensemble needs members that end together and batches of one size: the public early stop
    # and partial last batch of the phase preset would send every run solo, so they are off here
    # (pass --set train.early_stop_above=0.99 --set task.last_batch=partial to measure them solo)
    fixed: dict[str, Any] = {
        "train.steps": args.steps,
        "train.device": args.device,
        "train.early_stop_above": None,
        "task.last_batch": "wrap",
    }
    fixed.update(dict(kv.split("=", 1) for kv in args.set))
    grid: dict[str, list[Any]] = {}
    if args.fractions:
        grid["task.train_fraction"] = [float(v) for v in args.fractions.split(",")]
    if args.strengths:
        grid["strength"] = [float(v) for v in args.strengths.split(",")]
    _exp, _spec_mod, spec = plan_sweep("grokking", "phase", grid, fixed, args.seeds)
    cfg = get_experiment("grokking").config("phase", {**spec.fixed}, seed=0)
    step_flops, eval_flops = member_flops(cfg)
    task = cfg.task.build(0)
    n_eval = sum(len(x) for x, _ in task.eval_sets().values())  # train + val = all pairs
    evals = len({*range(0, args.steps + 1, cfg.train.eval_every), args.steps})  # + the last step

    n_lrd = len(spec.seeds) * sum(p.get("arm") == "lrd" for p in spec.points())
    pre = lrd_preflight(cfg, n_lrd, args.steps, args.device)
    print(
        f"LRD polar of {n_lrd} members' W_Q, W_K per step on {args.device}: "
        + ", ".join(
            f"{m} {pre[f'{m}_s_per_step'] * 1e3:.1f} ms (× {args.steps} = {pre[f'{m}_s_total']:.0f} s)"
            for m in ("svd", "newton_schulz")
        )
        + f"; this run uses lrd.polar={cfg.lrd.polar}",
        flush=True,
    )
    n_runs = len(spec.seeds) * len(spec.points())
    records = len({*range(0, args.steps + 1, cfg.train.monitor_every), args.steps})
    mon = monitor_preflight(cfg, n_runs, records, args.device)
    print(
        f"spectral monitor, one member's recording: on the model's device "
        f"{mon['model_s_per_record'] * 1e3:.1f} ms, on the CPU {mon['cpu_s_per_record'] * 1e3:.1f} ms "
        f"(× {n_runs} runs × {records} recordings = {mon['model_s_total']:.0f} s / "
        f"{mon['cpu_s_total']:.0f} s); this run uses train.spectra_device={cfg.train.spectra_device}",
        flush=True,
    )
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu_phase-"))
    options: dict[str, Any] = {}
    if args.members:
        options["members"] = args.members
    t0 = time.perf_counter()
    result = run_sweep(
        "grokking",
        preset="phase",
        grid=grid,
        fixed=fixed,
        seeds=args.seeds,
        out=out,
        executor="ensemble",
        progress=True,
        **options,
    )
    wall = time.perf_counter() - t0
    rows = result.rows
    n = len(rows)
    finished = sum(r.get("status") == "finished" for r in rows)
    flops = n * (args.steps * step_flops + evals * n_eval * eval_flops)
    name, peak = peak_tflops(args.device, str(spec.fixed.get("train.amp", "none")))
    peak = args.peak_tflops or peak
    achieved = flops / wall / 1e12
    sizes = sorted(
        json.loads(f.read_text()).get("ensemble_size", 1) for f in out.glob("*/summary.json")
    )
    report = {
        "device": name,
        "ensemble_sizes": sorted(set(sizes)),
        "runs": n,
        "finished": finished,
        "steps": args.steps,
        "wall_s": wall,
        "runs_per_hour": 3600 * n / wall,
        "flops_per_member_step": step_flops,
        "eval_flops_per_example": eval_flops,
        "total_flops": flops,
        "lrd_preflight": pre,
        "monitor_preflight": mon,
        "achieved_tflops": achieved,
        "peak_tflops": peak,
        "fraction_of_peak": achieved / peak if peak else None,
        "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30
        if args.device.startswith("cuda") and torch.cuda.is_available()
        else None,
    }
    print(
        f"\nR4 phase diagram: {n} runs × {args.steps} steps on {name}: {wall:.1f} s "
        f"({wall / 60:.2f} min; target ≤ 10 min on one H100), {finished}/{n} finished, "
        f"ensemble sizes {sorted(set(sizes))}\n"
        f"  counted FLOPs {flops:.3e} (step {step_flops:.3e} per member) → {achieved:.2f} TFLOP/s"
        + (f" = {100 * achieved / peak:.1f} % of {peak:g} TFLOP/s peak" if peak else "")
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
