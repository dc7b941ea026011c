"""R3 statistics over a ``rankdecay sweep recall`` directory (docs/reproductions.md, R3).

Usage::

    python benchmarks/r3_stats.py runs/r3-3000 [--early 500]

For every *finished* run (``rankdecay.load_sweep``; runs that did not finish are listed and
left out) it reads ``spectra.jsonl`` and takes, per circuit c ∈ {QK, OV}, the mean over the
L·H heads of

- rank (count of σᵢ > rtol·σ₁, rtol as recorded, 1e-2 by default) and effective rank
  exp(−Σ pᵢ log pᵢ), pᵢ = σᵢ/Σσ, at the final step T;
- σ_min/σ₁ at T (why the rtol rank can stay full while the effective rank falls);
- balance ‖AᵀA − BᵀB‖_F and norm gap ½(‖A‖² + ‖B‖²) − ‖ABᵀ‖_* at step 0, at ``--early`` and
  at T;
- the balance decay rate: slope of log(mean balance) against step by least squares over
  [early, T] (per step; printed ×10³), next to −2·lr·λ, the contraction rate that AdamW's
  decoupled decay alone would give (each factor shrinks by (1 − lr·λ) per step);

plus the final validation accuracy. Then mean ± sample std over seeds per λ (markdown tables),
and whether the per-λ means of rank / effective rank are non-increasing in λ.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

import rankdecay


def _per_step(run_dir: Path) -> dict[int, dict[str, dict[str, list[float]]]]:
    """step → circuit → metric → list over heads (circuit records of spectra.jsonl)."""
    out: dict[int, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    with open(run_dir / "spectra.jsonl") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a torn last line of a run that was cut off
                continue
            if rec.get("kind") != "circuit":
                continue
            c = out[rec["step"]][rec["circuit"]]
            sv = rec["singular_values"]
            for key in ("rank", "effective_rank", "balance", "norm_gap"):
                c[key].append(float(rec[key]))
            c["smin_ratio"].append(float(min(sv) / max(sv)) if max(sv) > 0 else 0.0)
    return out


def run_stats(run_dir: Path, early: int, lr: float) -> dict[str, float]:
    """The per-run numbers described in the module docstring."""
    steps = _per_step(run_dir)
    order = sorted(steps)
    T = order[-1]
    e = min(order, key=lambda s: abs(s - early))
    row: dict[str, float] = {"T": T, "early": e}
    for c in ("qk", "ov"):
        for key in ("rank", "effective_rank", "smin_ratio"):
            row[f"{c}_{key}"] = float(np.mean(steps[T][c][key]))
        for key in ("balance", "norm_gap"):
            for label, s in (("0", order[0]), ("early", e), ("T", T)):
                row[f"{c}_{key}@{label}"] = float(np.mean(steps[s][c][key]))
        xs = np.array([s for s in order if s >= e], dtype=float)
        ys = np.log([np.mean(steps[s][c]["balance"]) for s in order if s >= e])
        if len(xs) > 2:
            coef = np.polyfit(xs, ys, 1)
            resid = ys - np.polyval(coef, xs)
            ss = float(((ys - ys.mean()) ** 2).sum())
            row[f"{c}_bal_rate"] = float(coef[0])
            row[f"{c}_bal_r2"] = 1.0 - float((resid**2).sum()) / ss if ss > 0 else math.nan
        else:
            row[f"{c}_bal_rate"] = row[f"{c}_bal_r2"] = math.nan
    return row


def _fmt(a: np.ndarray, digits: int = 3) -> str:
    m = a.mean()
    s = a.std(ddof=1) if len(a) > 1 else 0.0
    return f"{m:.{digits}g} ± {s:.2g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", type=Path)
    p.add_argument("--early", type=int, default=500, help="early monitored step (default 500)")
    a = p.parse_args()

    df = rankdecay.load_sweep(a.sweep)
    done = df[df["status"] == "finished"]
    missing = df[df["status"] != "finished"]
    print(f"{len(done)}/{len(df)} runs finished; used:")
    for _, r in done.sort_values(["weight_decay_attn", "seed"]).iterrows():
        print(f"  λ={r['weight_decay_attn']:g} seed={r['seed']}  {r['run']}")
    if len(missing):
        print("left out (not finished): " + ", ".join(missing["run"]))

    by_lam: dict[float, list[dict[str, float]]] = defaultdict(list)
    for _, r in done.iterrows():
        run_dir = Path(r["run_dir"])
        if not run_dir.is_absolute() and not run_dir.exists():
            run_dir = a.sweep / run_dir
        st = run_stats(run_dir, a.early, float(r["optim.lr"]))
        st["val_acc"] = float(r["final.val_acc"])
        st["lr"] = float(r["optim.lr"])
        st["seed"] = int(r["seed"])
        by_lam[float(r["weight_decay_attn"])].append(st)

    lams = sorted(by_lam)
    T = {int(s["T"]) for v in by_lam.values() for s in v}
    E = {int(s["early"]) for v in by_lam.values() for s in v}
    print(f"\nfinal step(s) T = {sorted(T)}, early step = {sorted(E)}; mean ± std over seeds\n")

    def col(lam: float, key: str) -> np.ndarray:
        return np.array([s[key] for s in by_lam[lam]])

    print(
        "| λ_attn | n | val acc | QK rank | QK eff. rank | OV rank | OV eff. rank "
        "| QK σ_min/σ₁ | OV σ_min/σ₁ |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for lam in lams:
        cells = [
            _fmt(col(lam, k))
            for k in (
                "val_acc",
                "qk_rank",
                "qk_effective_rank",
                "ov_rank",
                "ov_effective_rank",
                "qk_smin_ratio",
                "ov_smin_ratio",
            )
        ]
        print(f"| {lam:g} | {len(by_lam[lam])} | " + " | ".join(cells) + " |")

    print(
        "\n| λ_attn | circuit | balance @0 | balance @early | balance @T | "
        "log-rate ×10³ /step (fit early..T) | −2·lr·λ ×10³ | fit R² | norm gap @0 | "
        "norm gap @early | norm gap @T |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for lam in lams:
        lr = by_lam[lam][0]["lr"]
        for c in ("qk", "ov"):
            cells = [
                _fmt(col(lam, f"{c}_balance@0")),
                _fmt(col(lam, f"{c}_balance@early")),
                _fmt(col(lam, f"{c}_balance@T")),
                _fmt(1e3 * col(lam, f"{c}_bal_rate")),
                f"{-2e3 * lr * lam + 0.0:.3g}",
                _fmt(col(lam, f"{c}_bal_r2")),
                _fmt(col(lam, f"{c}_norm_gap@0")),
                _fmt(col(lam, f"{c}_norm_gap@early")),
                _fmt(col(lam, f"{c}_norm_gap@T")),
            ]
            print(f"| {lam:g} | {c.upper()} | " + " | ".join(cells) + " |")

    print()
    for key in ("qk_rank", "qk_effective_rank", "ov_rank", "ov_effective_rank"):
        means = [col(lam, key).mean() for lam in lams]
        mono = all(b <= a_ + 1e-12 for a_, b in zip(means, means[1:]))
        strict = all(b < a_ for a_, b in zip(means, means[1:]))
        print(
            f"{key}: means {[round(float(m), 3) for m in means]} non-increasing={mono} "
            f"strictly decreasing={strict}"
        )
        seeds = sorted({int(s["seed"]) for v in by_lam.values() for s in v})
        for seed in seeds:
            vals = [
                next((s[key] for s in by_lam[lam] if s["seed"] == seed), math.nan) for lam in lams
            ]
            ok = all(b <= a_ + 1e-12 for a_, b in zip(vals, vals[1:]))
            print(f"  seed {seed}: {[round(float(v), 3) for v in vals]} non-increasing={ok}")


if __name__ == "__main__":
    main()
