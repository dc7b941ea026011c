"""Where an R4 training step's time goes: one solo run vs one ensemble member, per component.

Builds R4 members (2 layers, d_model 128, 4 heads, MLP 512, batch 512, (a+b) mod 113; arms
alternating l2 / lrd, seeds 0…M−1), then times, median of ``--reps`` after warm-up, on
``--threads`` threads:

- solo (``rankdecay.train``'s pieces): forward + backward, AdamW step, Low-Rank Decay step, the
  three together, and one evaluation of the train and val sets — for an l2 run and an lrd run;
- ensemble of M (``rankdecay.ensemble``): the same pieces batched, divided by M;
- the share of matmul kernels (aten::mm / aten::bmm) in one full step, from torch.profiler.

Optionally (``--compile``) the ensemble's forward + backward through torch.compile (inductor),
with its compile time. Prints ms per member-step and the ratio solo / ensemble.

    python benchmarks/ensemble_step.py --members 4 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


def _median_ms(fn: Callable[[], Any], reps: int, warm: int = 3) -> float:
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def _member(arm: str, seed: int) -> tuple[Any, Any, torch.nn.Module]:
    from rankdecay.experiments.grokking import GrokkingConfig
    from rankdecay.train import _seed_everything, build_model

    cfg = GrokkingConfig(arm=arm, seed=seed)  # type: ignore[arg-type]
    _seed_everything(seed)
    task = cfg.task.build(seed)
    return cfg, task, build_model(cfg.model, task)


def _matmul_share(step: Callable[[], Any]) -> float:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    rows = prof.key_averages()
    total = sum(r.self_cpu_time_total for r in rows)
    mm = sum(r.self_cpu_time_total for r in rows if r.key in ("aten::mm", "aten::bmm"))
    return mm / total


def solo(arm: str, reps: int) -> dict[str, float]:
    from rankdecay.train import build_optimizer, evaluate, optimizer_settings

    cfg, task, model = _member(arm, 0)
    optim, lrd_cfg = optimizer_settings(cfg)
    opt, lrd = build_optimizer(model, optim, None)  # LRD applied by hand below, timed apart
    from rankdecay.decay import LowRankDecay

    decay = (
        LowRankDecay(
            model,
            lrd_cfg.strength,
            target=lrd_cfg.target,
            granularity=lrd_cfg.granularity,
            polar=lrd_cfg.polar,
            mode=lrd_cfg.mode,
            scale_by_lr=False,
        )
        if lrd_cfg.strength > 0
        else None
    )
    x, y = task.train_batch(0, cfg.train.batch_size)

    def fwd_bwd() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()

    def full() -> None:
        fwd_bwd()
        opt.step()
        if decay is not None:
            decay.step()

    sets = task.eval_sets()
    out = {
        "forward+backward": _median_ms(fwd_bwd, reps),
        "optimizer": _median_ms(opt.step, reps),
        "low-rank decay": _median_ms(decay.step, reps) if decay is not None else 0.0,
        "full step": _median_ms(full, reps),
        "evaluation (train+val)": _median_ms(
            lambda: evaluate(model, sets, cfg.train.eval_batch_size), max(3, reps // 5), 1
        ),
    }
    out["matmul share of step"] = _matmul_share(full)
    return out


def ensemble(M: int, reps: int, compile_: bool) -> dict[str, float]:
    from rankdecay import ensemble as E
    from rankdecay.engine import evaluate_members
    from rankdecay.train import build_optimizer, optimizer_settings

    members = [_member("lrd" if i % 2 else "l2", i) for i in range(M)]
    cfgs, tasks, models = zip(*members)
    settings = [optimizer_settings(c) for c in cfgs]
    pre = [build_optimizer(m, o, None)[0] for m, (o, _) in zip(models, settings)]
    own = [dict(m.named_parameters()) for m in models]
    P = E.stack_models(models)
    for n, stacked in P.items():  # as StackEngine.start: members' gradients are views too
        stacked.grad = torch.zeros_like(stacked)
        for i, params in enumerate(own):
            params[n].grad = stacked.grad[i]
    E._use_fused(pre, torch.device("cpu"))  # each member's own AdamW, fused

    def zero_grad() -> None:
        for stacked in P.values():
            assert stacked.grad is not None
            stacked.grad.zero_()

    def opt_step() -> None:
        for o in pre:
            o.step()

    lrds = [s[1] for s in settings]
    on = next(lr for lr in lrds if lr.strength > 0)
    form = {k: getattr(on, k) for k in ("target", "granularity", "polar", "mode")}
    strengths, scale = [lr.strength for lr in lrds], [lr.scale_by_lr for lr in lrds]
    blrd = E.BatchedLowRankDecay(models[0], P, strengths, scale, **form)
    B = cfgs[0].train.batch_size
    X, Y = E._stack_batches([t.train_batch(0, B) for t in tasks])
    mcfg = models[0].cfg
    lrs = [1e-3] * M

    def loss(fwd: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        z = fwd(X)
        ce = F.cross_entropy(z.reshape(-1, z.shape[-1]), Y.reshape(-1), reduction="none")
        return ce.reshape(M, -1).mean(1).sum()

    def eager(x: torch.Tensor) -> torch.Tensor:
        return E.batched_forward(mcfg, P, x)

    def fwd_bwd() -> None:
        zero_grad()
        loss(eager).backward()

    def full() -> None:
        fwd_bwd()
        opt_step()
        blrd.step(lrs)

    sets = [t.eval_sets() for t in tasks]
    chunk = max(1, cfgs[0].train.eval_batch_size // M)
    out = {
        "forward+backward": _median_ms(fwd_bwd, reps) / M,
        "optimizer": _median_ms(opt_step, reps) / M,
        "low-rank decay": _median_ms(lambda: blrd.step(lrs), reps) / M,
        "full step": _median_ms(full, reps) / M,
        "evaluation (train+val)": _median_ms(
            lambda: evaluate_members(eager, sets, chunk), max(3, reps // 5), 1
        )
        / M,
    }
    out["matmul share of step"] = _matmul_share(full)
    if compile_:
        compiled = torch.compile(eager)
        t0 = time.perf_counter()
        zero_grad()
        loss(compiled).backward()
        out["compile time (s, once)"] = time.perf_counter() - t0

        def cfb() -> None:
            zero_grad()
            loss(compiled).backward()

        out["forward+backward, compiled"] = _median_ms(cfb, reps) / M
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = {"solo l2": solo("l2", args.reps), "solo lrd": solo("lrd", args.reps)}
    rows[f"ensemble of {args.members} (per member)"] = ensemble(
        args.members, args.reps, args.compile
    )
    keys = list(dict.fromkeys(k for r in rows.values() for k in r))
    width = max(map(len, keys))
    print(f"R4 step on {args.threads} thread(s), ms per member-step (median of {args.reps}):")
    print(" " * width + "".join(f"{c:>30}" for c in rows))
    for k in keys:
        cells = []
        for r in rows.values():
            v = r.get(k)
            cells.append("" if v is None else f"{100 * v:.0f} %" if "share" in k else f"{v:.2f}")
        print(f"{k:<{width}}" + "".join(f"{c:>30}" for c in cells))
    solo_mean = (rows["solo l2"]["full step"] + rows["solo lrd"]["full step"]) / 2
    ens = rows[f"ensemble of {args.members} (per member)"]
    print(
        f"\nfull step, mean of the two solo arms / ensemble member: {solo_mean / ens['full step']:.2f}×"
    )
    if "forward+backward, compiled" in ens:
        fb = ens["full step"] - ens["forward+backward"] + ens["forward+backward, compiled"]
        print(f"  with the compiled forward+backward: {solo_mean / fb:.2f}×")


if __name__ == "__main__":
    main()
