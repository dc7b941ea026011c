"""How far ensemble members drift from solo runs of the same config, in float32 and float64.

Trains R4 (grokking) grid points twice — each alone with ``rankdecay.train.train`` and all
together with ``rankdecay.ensemble.train_ensemble`` — for ``--steps`` steps, once per dtype
(``train.dtype``), and prints, per window of steps, the largest relative difference of the
logged training loss between the two, over members:

    max_i |L_ens,i(t) − L_solo,i(t)| / |L_solo,i(t)|

If the ensemble computed something different from the solo runs (a wrong weight decay, a
shifted batch, a missing LRD step), the difference would be large in float64 as well. If it
only sums in another order, the float64 difference stays ~1e-10 while the float32 one grows
from ~1e-6 as training amplifies rounding.

    python benchmarks/ensemble_exactness.py --steps 200
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

POINTS = [  # (seed, overrides): both arms and two data fractions
    (0, ["arm=lrd", "task.train_fraction=0.5"]),
    (1, ["arm=l2", "task.train_fraction=0.5"]),
    (2, ["arm=lrd", "task.train_fraction=0.3"]),
    (3, ["arm=l2", "task.train_fraction=0.3"]),
]


def _losses(run: Path) -> dict[int, float]:
    from rankdecay.runio import read_jsonl

    return {r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r}


def drift(steps: int, dtype: str, root: Path, log_every: int) -> dict[int, float]:
    """Step → max over members of the relative training-loss difference ensemble vs solo."""
    from rankdecay.ensemble import EnsembleMember, train_ensemble
    from rankdecay.experiments import get_experiment
    from rankdecay.train import train

    exp = get_experiment("grokking")
    fixed = [
        f"train.steps={steps}",
        f"train.log_every={log_every}",
        f"train.eval_every={steps}",
        f"train.monitor_every={steps}",
        f"train.checkpoint_every={steps}",
        "train.device=cpu",
        f"train.dtype={dtype}",
    ]
    cfgs = [exp.config("quick", [*fixed, *o], seed=s) for s, o in POINTS]
    for i, c in enumerate(cfgs):
        train(c, root / f"solo{i}", progress=False)
    train_ensemble([EnsembleMember(c, root / f"ens{i}") for i, c in enumerate(cfgs)])
    out: dict[int, float] = {}
    for i in range(len(cfgs)):
        a, b = _losses(root / f"solo{i}"), _losses(root / f"ens{i}")
        for t, la in a.items():
            out[t] = max(out.get(t, 0.0), abs(b[t] - la) / max(abs(la), 1e-300))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--window", type=int, default=25)
    p.add_argument("--dtypes", default="float64,float32")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    results = {}
    for dtype in args.dtypes.split(","):
        with tempfile.TemporaryDirectory(prefix=f"ens-exact-{dtype}-") as d:
            results[dtype] = drift(args.steps, dtype, Path(d), args.log_every)
    print(
        f"R4 quick, {len(POINTS)} members, {args.steps} steps: max relative |ΔL| ensemble vs solo"
    )
    print("steps".ljust(14) + "".join(d.rjust(12) for d in results))
    for lo in range(0, args.steps + 1, args.window):
        hi = min(lo + args.window, args.steps + 1)
        row = [
            max((v for t, v in r.items() if lo <= t < hi), default=float("nan"))
            for r in results.values()
        ]
        print(f"{lo:>5}–{hi - 1:<7}" + "".join(f"{v:12.2e}" for v in row))


if __name__ == "__main__":
    main()
