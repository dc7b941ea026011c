"""Why the ensemble keeps its batched optimizer: one AdamW step over M stacked members, batched
(:class:`rankdecay.ensemble.BatchedOptimizer`) vs each member's own torch AdamW over its views of
the stack (default implementation, and ``foreach=True``). Grokking members (arm l2, 2 layers) of
width ``d`` (MLP 4d), random gradients; median ms of ``--reps`` steps after 5 warm-up steps.

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
    """(batched, members' torch AdamW, foreach) ms of one step of M members of width d."""
    import rankdecay.ensemble as E
    from rankdecay.experiments.grokking import GrokkingConfig
    from rankdecay.train import _seed_everything, build_model, build_optimizer, optimizer_settings

    cfgs = [GrokkingConfig(arm="l2", seed=s) for s in range(M)]  # type: ignore[arg-type]
    models = []
    for c in cfgs:
        c.model.d_model, c.model.d_mlp = d, 4 * d
        _seed_everything(c.seed)
        models.append(build_model(c.model, c.task.build(c.seed)))

    def fresh(foreach: bool | None = None) -> list[torch.optim.Optimizer]:
        opts = [build_optimizer(m, optimizer_settings(c)[0])[0] for m, c in zip(models, cfgs)]
        for o in opts:
            for g in o.param_groups:
                g["foreach"] = foreach
        return opts

    own = [dict(m.named_parameters()) for m in models]
    stacked = E.stack_models(models)
    batched = E.BatchedOptimizer(stacked, fresh(), own)
    for name, p in stacked.items():
        p.grad = torch.randn_like(p) * 1e-3
        for i, params in enumerate(own):
            params[name].grad = p.grad[i]
    plain, each = fresh(), fresh(True)
    return (
        _median_ms(lambda: batched.step([1e-3] * M), reps),
        _median_ms(lambda: [o.step() for o in plain], reps),
        _median_ms(lambda: [o.step() for o in each], reps),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for d, M in ((128, 4), (32, 4), (32, 16)):
        batched, plain, foreach = _row(d, M, args.reps)
        print(
            f"d={d:4d} M={M:3d}: batched {batched:6.2f} ms, members' torch AdamW {plain:6.2f} ms "
            f"({plain / batched:.2f}×), foreach {foreach:6.2f} ms ({foreach / batched:.2f}×)"
        )


if __name__ == "__main__":
    main()
