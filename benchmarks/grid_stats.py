"""Mean ± std over seeds of a sweep's final metrics, one row per grid point (docs/reproductions.md).

    python benchmarks/grid_stats.py runs/r5-paper
    python benchmarks/grid_stats.py runs/r6-paper --metrics final.val_acc,spectra.qk.rank

Reads the sweep with ``rankdecay.load_sweep`` (finished runs only; the others are listed) and
groups by the swept keys (``df.attrs["grid"]``). Default metrics: validation loss and accuracy,
and the mean over heads of rank (at the recorded rtol), effective rank and stable rank of the QK
and OV circuits at the last monitored step. Printed as a markdown table; per key, whether the
per-point means are non-increasing along each swept key with the other keys fixed.
"""

from __future__ import annotations

import argparse
import math

import rankdecay

DEFAULT = [
    "final.val_loss",
    "final.val_acc",
    "spectra.qk.rank",
    "spectra.qk.effective_rank",
    "spectra.qk.stable_rank",
    "spectra.ov.rank",
    "spectra.ov.effective_rank",
    "spectra.ov.stable_rank",
]


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.4g}" if math.isnan(std) else f"{mean:.4g} ± {std:.2g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep")
    p.add_argument("--metrics", default=",".join(DEFAULT))
    args = p.parse_args()
    df = rankdecay.load_sweep(args.sweep)
    keys = list(df.attrs.get("grid") or [])
    done = df[df["status"] == "finished"]
    for _, row in df[df["status"] != "finished"].iterrows():
        print(f"left out (status {row['status']}): {row['run']}")
    metrics = [m for m in args.metrics.split(",") if m in done.columns]
    groups = done.groupby(keys, sort=True) if keys else [((), done)]
    print("| " + " | ".join([*keys, "seeds", *metrics]) + " |")
    print("|" + "---|" * (len(keys) + 1 + len(metrics)))
    means: dict[tuple, dict[str, float]] = {}
    for point, g in groups:
        point = point if isinstance(point, tuple) else (point,)
        cells = [f"{v:g}" if isinstance(v, float) else str(v) for v in point]
        stats = {m: (float(g[m].mean()), float(g[m].std(ddof=1))) for m in metrics}
        means[point] = {m: s[0] for m, s in stats.items()}
        print("| " + " | ".join([*cells, str(len(g)), *(_fmt(*stats[m]) for m in metrics)]) + " |")
    for k, key in enumerate(keys):  # monotone along key k, other keys fixed
        for m in metrics:
            if not m.startswith("spectra."):
                continue
            lines: dict[tuple, list[tuple]] = {}
            for point, vals in means.items():
                lines.setdefault(point[:k] + point[k + 1 :], []).append((point[k], vals[m]))
            ok = all(
                all(b[1] <= a[1] + 1e-12 for a, b in zip(sorted(v), sorted(v)[1:]))
                for v in lines.values()
            )
            print(f"{m} non-increasing in {key} (other keys fixed): {'yes' if ok else 'no'}")


if __name__ == "__main__":
    main()
