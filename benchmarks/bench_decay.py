"""Cost of Low-Rank Decay: one LRD step vs one AdamW step, and LRD's overhead on a training step.

Part 1 — for d ∈ {128, 512, 1024}: the parameters are one attention layer's W_Q and W_K (d×d each,
float32). Times (median of ``--repeats``) of one AdamW step on them and of one LRD step
(granularity "matrix", mode "subtract") with polar="svd" and polar="newton_schulz" (tol 1e-3);
prints the ratio LRD / AdamW and the Newton–Schulz residual and iteration count.

Part 2 — the R4 grokking model shape (2 layers, d = 128, 4 heads, MLP 512, RMSNorm + QK-norm,
inputs [a, b, =] over 113 residues, batch 512): median time of a full training step
(forward + backward + AdamW) without and with LRD attached (target "qk"; matrix granularity with
SVD and Newton–Schulz polar, head granularity, product granularity), and the overhead in percent
(target ≤ 10 %).

Run:  python benchmarks/bench_decay.py [--threads 1] [--repeats 15] [--sizes 128 512 1024]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from rankdecay.decay import LowRankDecay

#: timer: thread CPU time by default (with one torch thread every op runs on the calling thread, so
#: this is robust to other processes competing for the CPU); ``--clock wall`` for wall time
CLOCK: Callable[[], float] = time.thread_time


def median_time(fn: Callable[[], None], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return statistics.median(times)


def bench_step(d: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    params = {
        "W_Q": nn.Parameter(torch.randn(d, d) / d**0.5),
        "W_K": nn.Parameter(torch.randn(d, d) / d**0.5),
    }
    for p in params.values():
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.AdamW(params.values(), lr=1e-3, weight_decay=0.1)
    t_adamw = median_time(opt.step, repeats)
    out = {"d": d, "adamw_ms": 1e3 * t_adamw}
    for method in ("svd", "newton_schulz"):
        lrd = LowRankDecay(
            params, 5e-3, target="matrices", polar=method, tol=1e-3, scale_by_lr=False
        )
        t = median_time(lambda lrd=lrd: lrd.step(1.0), repeats)
        out[f"{method}_ms"] = 1e3 * t
        out[f"{method}_ratio"] = t / t_adamw
        if method == "newton_schulz":
            out["ns_iterations"] = lrd.last_info.get("polar_iterations", 0)
            out["ns_residual"] = lrd.last_info.get("polar_residual", float("nan"))
    return out


def grokking_model() -> nn.Module:
    try:
        from rankdecay.models import ModelConfig, TinyTransformer

        cfg = ModelConfig(
            n_layers=2,
            d_model=128,
            n_heads=4,
            d_mlp=512,
            norm="rms",
            qk_norm="rms",
            vocab_size=114,
            n_out=113,
            max_len=3,
            readout="last",
            causal=True,
        )
        return TinyTransformer(cfg)
    except ImportError:  # pragma: no cover - models.py not available
        raise SystemExit("rankdecay.models is needed for part 2") from None


#: (label, granularity, polar) of the LRD variants timed on the training step (target "qk")
VARIANTS = [
    ("qk/matrix/svd", "matrix", "svd"),
    ("qk/matrix/newton_schulz", "matrix", "newton_schulz"),
    ("qk/head/svd", "head", "svd"),
    ("qk/product", "product", "svd"),
]


def bench_training(repeats: int, batch: int = 512) -> dict[str, float]:
    torch.manual_seed(0)
    model = grokking_model()
    x = torch.randint(0, 113, (batch, 3))
    x[:, 2] = 113
    y = torch.randint(0, 113, (batch,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    loss_fn = nn.CrossEntropyLoss()

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    def timed() -> float:
        t0 = CLOCK()
        train_step()
        return CLOCK() - t0

    out: dict[str, float] = {}
    for _ in range(3):
        train_step()
    bases: list[float] = []
    for label, gran, method in VARIANTS:
        lrd = LowRankDecay(
            model, 5e-3, target="qk", granularity=gran, polar=method, scale_by_lr=False
        )
        lrd.attach(opt)
        train_step()  # warm-up with the hook
        lrd.detach()
        # interleave plain and LRD steps so that the load of a shared machine cancels in the pairs
        plain, extra = [], []
        for _ in range(repeats):
            t_plain = timed()
            lrd.attach(opt)
            t_lrd = timed()
            lrd.detach()
            plain.append(t_plain)
            extra.append(t_lrd - t_plain)
        bases += plain
        base = statistics.median(plain)
        out[f"overhead_{label}_pct"] = 100.0 * statistics.median(extra) / base
        out[f"lrd_alone_{label}_ms"] = 1e3 * median_time(lambda lrd=lrd: lrd.step(1.0), repeats)
    out["step_ms"] = 1e3 * statistics.median(bases)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 1024])
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--clock", choices=["thread", "wall"], default="thread")
    args = ap.parse_args()
    global CLOCK
    if args.clock == "wall" or args.threads > 1:
        CLOCK = time.perf_counter
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"threads={args.threads}, float32, clock={'thread CPU time' if CLOCK is time.thread_time else 'wall'}"
    )
    print("\nPart 1: one step on W_Q, W_K (d×d each); medians")
    print(
        f"{'d':>5} {'AdamW ms':>9} {'LRD svd ms':>11} {'×AdamW':>7} {'LRD NS ms':>10} {'×AdamW':>7} {'NS iters':>8} {'NS resid':>9}"
    )
    for d in args.sizes:
        r = bench_step(d, args.repeats if d < 1024 else max(5, args.repeats // 3))
        print(
            f"{d:5d} {r['adamw_ms']:9.3f} {r['svd_ms']:11.2f} {r['svd_ratio']:7.1f} "
            f"{r['newton_schulz_ms']:10.2f} {r['newton_schulz_ratio']:7.1f} {int(r['ns_iterations']):8d} {r['ns_residual']:9.1e}"
        )
    if not args.skip_training:
        print(
            "\nPart 2: R4 grokking model (2 layers, d=128, 4 heads, MLP 512), batch 512, full step"
        )
        r = bench_training(args.repeats)
        print(f"  train step (fwd+bwd+AdamW), median: {r['step_ms']:.2f} ms")
        print(
            "  overhead = median of (LRD step − plain step) over interleaved pairs / median plain step"
        )
        for label, _, _ in VARIANTS:
            print(
                f"  + LRD {label:<24}: overhead {r[f'overhead_{label}_pct']:+5.1f} %  "
                f"(LRD step alone {r[f'lrd_alone_{label}_ms']:.2f} ms; target ≤ 10 %)"
            )


if __name__ == "__main__":
    main()
