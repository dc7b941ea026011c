"""R4 run tables for docs/reproductions.md: validation accuracy and W_Q/W_K stable rank at the
published read-out steps, grokking step, where a run stopped, best validation accuracy.

    python benchmarks/r4_runs.py results/r4/a_paper results/r4/c_ablation
    python benchmarks/r4_runs.py results/r4/d_phase --phase      # best val acc per (arm, f, strength)
    python benchmarks/r4_runs.py results/r4/a_paper --plot docs/figures/r4_public_f05.png
    python benchmarks/r4_runs.py results/r4/d_phase --phase-table   # ours beside published
    python benchmarks/r4_runs.py results/r4/d_phase --phase-plot docs/figures/r4_phase.png

Reads every run directory below the given paths (``metrics.jsonl`` + ``config.json``), also
unfinished ones (their last logged step is shown). A value at step s is the last evaluation at or
before s; "—" where the run had not reached s.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ACC_STEPS = (400, 1000, 1600, 2000, 2200, 2400, 3000, 4000)
#: the published mechanism figure (read from its pixels; R4 issue): LRD val acc, LRD stable rank
PUBLISHED_LRD_VAL = {400: 0.47, 1600: 0.60, 2200: 0.85, 2400: 0.94, 3000: 1.00}
PUBLISHED_LRD_RANK = {200: 11.2, 400: 5.2, 600: 3.2, 1000: 2.3, 1400: 1.2}
PUBLISHED_L2 = {"val": ((400, 0.50), (3800, 0.50)), "rank": ((400, 25.7), (3800, 25.0))}
RANK_STEPS = (0, 200, 400, 600, 1000, 1400, 4000)
#: the published phase diagram (R4 issue; max val acc within 2500 steps, 1 seed): arm → f → one
#: value per strength in PHASE_STRENGTHS (L2's AdamW weight decay is 10 × the strength)
PHASE_STRENGTHS = (1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2)
PHASE_FRACTIONS = (0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
PUBLISHED_PHASE = {
    "l2": {
        0.8: (0.80, 0.80, 0.84, 0.78, 0.82, 1.00),
        0.7: (0.68, 0.69, 0.71, 0.68, 0.71, 0.99),
        0.6: (0.60, 0.60, 0.60, 0.60, 0.60, 1.00),
        0.5: (0.50, 0.50, 0.50, 0.50, 0.50, 1.00),
        0.4: (0.40, 0.40, 0.40, 0.40, 0.40, 0.49),
        0.3: (0.30, 0.30, 0.30, 0.30, 0.30, 0.30),
    },
    "lrd": {
        0.8: (0.81, 1.00, 1.00, 1.00, 1.00, 1.00),
        0.7: (0.81, 0.70, 0.95, 1.00, 1.00, 1.00),
        0.6: (0.60, 0.60, 0.61, 1.00, 1.00, 1.00),
        0.5: (0.50, 0.50, 0.55, 0.99, 1.00, 1.00),
        0.4: (0.40, 0.40, 0.41, 0.94, 0.98, 0.92),
        0.3: (0.30, 0.30, 0.30, 0.31, 0.83, 0.31),
    },
}


def _rows(run: Path) -> list[dict[str, Any]]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line of a running run
    return out


def _at(rows: list[dict[str, Any]], key: str, step: int) -> float | None:
    vals = [(r["step"], r[key]) for r in rows if r.get(key) is not None and r["step"] <= step]
    last = max((r["step"] for r in rows), default=-1)
    if not vals or last < step:
        return None
    return vals[-1][1]


def summarize(run: Path) -> dict[str, Any]:
    """One run's numbers (see the module docstring)."""
    rows = _rows(run)
    cfg = json.loads((run / "config.json").read_text())["config"]
    summary = (
        json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    )
    evals = [(r["step"], r["val_acc"]) for r in rows if "val_acc" in r]
    grok = next((s for s, v in evals if v >= 0.99), None)
    return {
        "run": run.name,
        "arm": cfg["arm"],
        "f": cfg["task"]["train_fraction"],
        "strength": cfg["strength"],
        "seed": cfg["seed"],
        "status": summary.get("status", "?"),
        "last_step": max((r["step"] for r in rows), default=0),
        "stopped_early": (summary.get("stopped_early") or {}).get("step"),
        "grok": grok,
        "best_val": max((v for _, v in evals), default=None),
        "val": [_at(rows, "val_acc", s) for s in ACC_STEPS],
        "train": [_at(rows, "train_acc", s) for s in ACC_STEPS],
        "rank": [_at(rows, "wqk_stable_rank", s) for s in RANK_STEPS],
    }


def plot(runs: list[Path], out: str) -> None:
    """Validation accuracy and mean W_Q/W_K stable rank of each run, the published values as
    black markers (LRD: circles; L2: the flat segment)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        rows, s = _rows(run), summarize(run)
        color = "tab:red" if s["arm"] == "lrd" else "tab:blue"
        label = f"{s['arm']} seed {s['seed']}"
        ev = [(r["step"], r["val_acc"]) for r in rows if "val_acc" in r]
        sr = [(r["step"], r["wqk_stable_rank"]) for r in rows if "wqk_stable_rank" in r]
        ax1.plot(*zip(*ev), color=color, alpha=0.8, label=label)
        ax2.plot(*zip(*sr), color=color, alpha=0.8, label=label)
    ax1.plot(*zip(*PUBLISHED_LRD_VAL.items()), "ko", label="published LRD")
    ax1.plot(*zip(*PUBLISHED_L2["val"]), "k--", label="published L2")
    ax2.plot(*zip(*PUBLISHED_LRD_RANK.items()), "ko", label="published LRD")
    ax2.plot(*zip(*PUBLISHED_L2["rank"]), "k--", label="published L2")
    ax1.set(xlabel="step", ylabel="validation accuracy", ylim=(0, 1.02))
    ax2.set(xlabel="step", ylabel="mean stable rank of W_Q, W_K", yscale="log")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def phase_cells(stats: list[dict[str, Any]]) -> dict[tuple[str, float, float], dict[str, Any]]:
    """(arm, f, strength) → the seed-0 run's summary (the published diagram used 1 seed)."""
    cells = {}
    for s in stats:
        if s["seed"] == 0 and s["strength"] is not None:
            cells[(s["arm"], round(s["f"], 3), float(s["strength"]))] = s
    return cells


def _cell_text(s: dict[str, Any] | None) -> str:
    """Best val acc of a finished run, "(x@step)" of an unfinished one, "·" of one not started."""
    if s is None or s["best_val"] is None:
        return "·"
    v = f"{s['best_val']:.2f}"
    return v if s["status"] == "finished" else f"({v}@{s['last_step']})"


def phase_class(best: float, f: float) -> str:
    """M (memorization: best val acc ≤ f + 0.05), G (generalizes: ≥ 0.9) or P (between)."""
    return "G" if best >= 0.9 else "M" if best <= f + 0.05 else "P"


def phase_agreement(cells: dict[tuple[str, float, float], dict[str, Any]]) -> tuple[int, list[str]]:
    """How many finished cells have the published cell's :func:`phase_class`; the others, named."""
    agree, differ = 0, []
    for (arm, f, st), s in sorted(cells.items()):
        if s["status"] != "finished" or s["best_val"] is None or f not in PUBLISHED_PHASE[arm]:
            continue
        pub = PUBLISHED_PHASE[arm][f][PHASE_STRENGTHS.index(st)]
        ours, theirs = phase_class(s["best_val"], f), phase_class(pub, f)
        if ours == theirs:
            agree += 1
        else:
            differ.append(
                f"{arm.upper()} f={f} strength={st:g}: ours {s['best_val']:.2f} ({ours}), "
                f"published {pub:.2f} ({theirs})"
            )
    return agree, differ


def grokking_sets(
    cells: dict[tuple[str, float, float], dict[str, Any]],
) -> tuple[list[str], list[str], list[str]]:
    """Finished cells whose best val acc reaches 0.99: in both diagrams, ours only, published only."""
    both, ours_only, pub_only = [], [], []
    for (arm, f, st), s in sorted(cells.items()):
        if s["status"] != "finished" or s["best_val"] is None or f not in PUBLISHED_PHASE[arm]:
            continue
        name = f"{arm.upper()} f={f} {st:g}"
        ours, pub = (
            s["best_val"] >= 0.99,
            PUBLISHED_PHASE[arm][f][PHASE_STRENGTHS.index(st)] >= 0.99,
        )
        (both if ours and pub else ours_only if ours else pub_only if pub else []).append(name)
    return both, ours_only, pub_only


def phase_table(stats: list[dict[str, Any]]) -> str:
    """Markdown: per f and arm, our best val acc per strength beside the published row."""
    cells = phase_cells(stats)
    out = [
        "| f | arm | ours: 1e-4 / 5e-4 / 1e-3 / 5e-3 / 1e-2 / 5e-2 | published |",
        "|---|---|---|---|",
    ]
    for f in PHASE_FRACTIONS:
        for arm in ("l2", "lrd"):
            ours = " ".join(_cell_text(cells.get((arm, f, st))) for st in PHASE_STRENGTHS)
            pub = " ".join(f"{v:.2f}" for v in PUBLISHED_PHASE[arm][f])
            out.append(f"| {f} | {arm.upper()} | {ours} | {pub} |")
    done = sum(1 for s in cells.values() if s["status"] == "finished")
    agree, differ = phase_agreement(cells)
    out.append("")
    out.append(
        f"phase class (M: best ≤ f + 0.05, memorization; G: best ≥ 0.9, generalizes; P: between) "
        f"agrees with the published cell in {agree} of {agree + len(differ)} finished cells"
    )
    out.extend(f"- differs: {d}" for d in differ)
    both, ours_only, pub_only = grokking_sets(cells)
    out.append(
        f"groks (best ≥ 0.99): {len(both)} cells in both, ours only: {', '.join(ours_only) or '—'}; "
        f"published only: {', '.join(pub_only) or '—'}"
    )
    return (
        "\n".join(out)
        + f"\n\nfinished: {done} of {2 * len(PHASE_FRACTIONS) * len(PHASE_STRENGTHS)}"
    )


def phase_plot(stats: list[dict[str, Any]], out: str) -> None:
    """Four heat maps, best val acc over (strength, f): ours and published, L2 and LRD; every
    cell annotated, a run not finished hatched with its value in parentheses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cells = phase_cells(stats)
    fig, axes = plt.subplots(1, 4, figsize=(17, 5.0), sharey=True)
    panels = [(arm, src) for arm in ("l2", "lrd") for src in ("ours", "published")]
    for ax, (arm, src) in zip(axes, panels):
        grid = np.full((len(PHASE_FRACTIONS), len(PHASE_STRENGTHS)), np.nan)
        for i, f in enumerate(PHASE_FRACTIONS):
            for j, st in enumerate(PHASE_STRENGTHS):
                if src == "published":
                    grid[i, j] = PUBLISHED_PHASE[arm][f][j]
                    text = f"{grid[i, j]:.2f}"
                else:
                    s = cells.get((arm, f, st))
                    text = _cell_text(s)
                    if s is not None and s["best_val"] is not None:
                        grid[i, j] = s["best_val"]
                ax.text(j, i, text, ha="center", va="center", fontsize=7)
        ax.imshow(grid, vmin=0.3, vmax=1.0, cmap="viridis", alpha=0.85)
        ax.set_xticks(range(len(PHASE_STRENGTHS)), [f"{v:g}" for v in PHASE_STRENGTHS], fontsize=7)
        ax.set_yticks(range(len(PHASE_FRACTIONS)), [str(f) for f in PHASE_FRACTIONS])
        ax.set_title(f"{arm.upper()}, {src}", fontsize=10)
        ax.set_xlabel("strength (L2: AdamW wd = 10×)", fontsize=8)
    axes[0].set_ylabel("training fraction f")
    fig.suptitle("R4 phase diagram: max validation accuracy within 2500 steps (1 seed)")
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    fig.savefig(out, dpi=100)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+")
    p.add_argument("--phase", action="store_true", help="phase-diagram table (best val acc)")
    p.add_argument("--plot", default=None, help="write the accuracy / stable-rank figure here")
    p.add_argument("--phase-table", action="store_true", help="phase diagram beside the published")
    p.add_argument("--phase-plot", default=None, help="write the phase-diagram figure here")
    args = p.parse_args(argv)
    runs = sorted(
        {m.parent for path in args.paths for m in Path(path).rglob("metrics.jsonl")},
        key=lambda r: str(r),
    )
    stats = [summarize(r) for r in runs]
    if args.plot:
        plot(runs, args.plot)
    if args.phase_plot:
        phase_plot(stats, args.phase_plot)
    if args.phase_table:
        print(phase_table(stats))
        return
    if args.phase:
        print("| arm | f | strength | best val acc | grokking step | stopped at | status |")
        print("|---|---|---|---|---|---|---|")
        for s in sorted(stats, key=lambda s: (s["arm"], s["f"], s["strength"] or 0)):
            print(
                f"| {s['arm']} | {s['f']} | {_fmt(s['strength'])} | {_fmt(s['best_val'])} | "
                f"{_fmt(s['grok'])} | {s['last_step']} | {s['status']} |"
            )
        return
    head = " / ".join(map(str, ACC_STEPS))
    rk = " / ".join(map(str, RANK_STEPS))
    print(f"| run | arm | seed | status, last step | val acc @{head} | grok | stable rank @{rk} |")
    print("|---|---|---|---|---|---|---|")
    for s in stats:
        print(
            f"| {s['run'][:40]} | {s['arm']} | {s['seed']} | {s['status']}, {s['last_step']} | "
            + " / ".join(_fmt(v) for v in s["val"])
            + f" | {_fmt(s['grok'])} | "
            + " / ".join(_fmt(v) for v in s["rank"])
            + " |"
        )


if __name__ == "__main__":
    main()
