"""The ensemble's optimizer step: each member's own torch AdamW over its views of the stack, with
torch's fused kernel (``fused=True``, what :class:`rankdecay.ensemble.StackEngine` runs) vs the
default single-tensor loop and ``foreach=True``. Grokking members (arm l2, 2 layers) of width
``d`` (MLP 4d), random gradients; median ms of ``--reps`` steps of all M members after 5 warm-up
steps. (Until 2cb862f the ensemble ran a batched re-implementation of AdamW over the stacked
tensors, ``BatchedOptimizer``; its figures against these are in docs/benchmarks.md.)

    python benchmarks/bench_member_optimizers.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _row(d: int, M: int, reps: int) -> tuple[float, float, float]:
    """(fused, default, foreach) ms of one optimizer step of M members of width d."""
    import rankdecay.ensemble as E
    from rankdecay.experiments.grokking import GrokkingConfig
    from rankdecay.train import _seed_everything, build_model, build_optimizer, optimizer_settings

    cfgs = [GrokkingConfig(arm="l2", seed=s) for s in range(M)]  # type: ignore[arg-type]
    models = []
    for c in cfgs:
        c.model.d_model, c.model.d_mlp = d, 4 * d
        _seed_everything(c.seed)
        models.append(build_model(c.model, c.task.build(c.seed)))
    own = [dict(m.named_parameters()) for m in models]
    stacked = E.stack_models(models)
    for name, p in stacked.items():
        p.grad = torch.randn_like(p) * 1e-3
        for i, params in enumerate(own):
            params[name].grad = p.grad[i]

    def members(how: str) -> list[torch.optim.Optimizer]:
        opts = [build_optimizer(m, optimizer_settings(c)[0])[0] for m, c in zip(models, cfgs)]
        if how == "fused":
            E._use_fused(opts, torch.device("cpu"))
        for o in opts:
            for g in o.param_groups:
                g["foreach"] = True if how == "foreach" else g.get("foreach")
        return opts

    fused, plain, each = members("fused"), members("default"), members("foreach")
    return tuple(  # type: ignore[return-value]
        _median_ms(lambda opts=opts: [o.step() for o in opts], reps)
        for opts in (fused, plain, each)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for d, M in ((128, 4), (32, 4), (32, 16)):
        fused, plain, foreach = _row(d, M, args.reps)
        print(
            f"d={d:4d} M={M:3d}: fused {fused:6.2f} ms, default {plain:6.2f} ms "
            f"({plain / fused:.2f}×), foreach {foreach:6.2f} ms ({foreach / fused:.2f}×)"
        )


if __name__ == "__main__":
    main()
