"""Figures and a self-contained HTML report of a run, a sweep, or a model analysis.

``rankdecay report DIR [--out FILE] [--steps S ...]`` writes, for a run or a sweep directory:

- ``report.html``: one self-contained page (figures embedded as base64 PNG, inline CSS, no
  JavaScript, nothing fetched from the network) — verdicts first, then figures with captions,
  then the per-run table and the configuration;
- ``figures/<name>.png`` and ``figures/<name>.svg``: every figure as files;
- ``summary.csv``: one row per run (the columns of :func:`rankdecay.results.load_sweep`).

By default these go to ``DIR/report/``; with ``--out FILE`` the page is ``FILE`` and the figures
and CSV go beside it. Figures (whichever the data allow):

- run: loss / accuracy over steps; per-layer mean over heads of rank (rtol as logged), effective
  rank exp(−Σpᵢ log pᵢ) and stable rank Σσᵢ²/σ₁² of each circuit (W_QK, W_OV; and W_Q / W_K
  matrices when logged) over steps; balance ‖AᵀA − BᵀB‖_F and norm gap
  ½(‖A‖²+‖B‖²) − ‖ABᵀ‖_* over steps (log scale); normalized spectra σᵢ/σ₁ at chosen steps;
- sweep: final rank (and accuracy / loss) against each swept parameter, mean ± std over seeds;
  the curves above per grid point (mean over seeds); for grokking-style grids (a data-fraction key
  × a strength key) the phase diagram: colour = best validation accuracy (mean over seeds),
  annotated with the median grokking step (first evaluation with validation accuracy ≥ 0.99).

:func:`analysis_html` writes the same kind of page for a :class:`rankdecay.analyze.SpectralReport`
(``rankdecay analyze --html``): per-head heatmaps of rank / effective rank / stable rank for QK
and OV, the balance of the factors per head, and a per-layer table.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
import re
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RankdecayError
from .results import Run, flatten_dict, is_run_dir, load_run, load_sweep
from .runio import atomic_write_text, read_json

__all__ = ["analysis_html", "build_report", "configure_parser", "phase_data", "run_cli"]

GROK_THRESHOLD = 0.99
_GROUP_LABEL = {"qk": "W_QK", "ov": "W_OV", "w_q": "W_Q", "w_k": "W_K"}
_RANK_METRICS = ("rank", "effective_rank", "stable_rank")
_METRIC_LABEL = {
    "rank": "rank",
    "effective_rank": "effective rank",
    "stable_rank": "stable rank",
    "balance": "balance ‖AᵀA − BᵀB‖_F",
    "norm_gap": "norm gap ½(‖A‖²+‖B‖²) − ‖ABᵀ‖_*",
}


def _mpl() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        from matplotlib.figure import Figure
    except ImportError:
        raise RankdecayError(
            "reports need matplotlib; install it with `pip install 'rankdecay[plot]'`."
        ) from None
    return Figure


# ---------------------------------------------------------------------------------------------
# figure collection
# ---------------------------------------------------------------------------------------------


@dataclass
class _Figure:
    name: str
    title: str
    caption: str
    png_b64: str


@dataclass
class _Page:
    fig_dir: Path | None
    figures: list[_Figure] = field(default_factory=list)

    def add(self, fig: Any, name: str, title: str, caption: str) -> None:
        if fig.get_layout_engine() is None:
            fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        png = buf.getvalue()
        if self.fig_dir is not None:
            self.fig_dir.mkdir(parents=True, exist_ok=True)
            (self.fig_dir / f"{name}.png").write_bytes(png)
            fig.savefig(self.fig_dir / f"{name}.svg", format="svg")
        self.figures.append(_Figure(name, title, caption, base64.b64encode(png).decode()))


def _label(group: str) -> str:
    return _GROUP_LABEL.get(group, group)


def _log_ok(values: Iterable[float]) -> bool:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return bool(values) and min(values) > 0


# ---------------------------------------------------------------------------------------------
# per-run series
# ---------------------------------------------------------------------------------------------


def _curve_keys(run: Run) -> tuple[list[str], list[str]]:
    keys: list[str] = []
    for row in run.metrics:
        for k, v in row.items():
            if (
                k != "step"
                and k not in keys
                and isinstance(v, (int, float))
                and not isinstance(v, bool)
            ):
                keys.append(k)
    loss = [k for k in keys if re.search(r"(^|_)loss$", k)]
    acc = [k for k in keys if re.search(r"(^|_)(acc|accuracy)$", k)]
    return loss, acc


def _val_acc_key(run: Run) -> str | None:
    _, acc = _curve_keys(run)
    for k in ("val_acc", "val_accuracy", "valid_acc", "test_acc"):
        if k in acc:
            return k
    others = [k for k in acc if "train" not in k]
    return others[0] if others else (acc[0] if acc else None)


def _spectra_series(run: Run) -> dict[str, dict[str, dict[int, list[tuple[int, float]]]]]:
    """group → metric → layer → [(step, mean over heads)]."""
    acc: dict[tuple[str, str, int, int], list[float]] = {}
    for rec in run.spectra:
        group = (
            str(rec.get("matrix", "matrix")).lower()
            if rec.get("kind") == "matrix"
            else str(rec.get("circuit", "")).lower()
        )
        if not group:
            continue
        for metric in (*_RANK_METRICS, "balance", "norm_gap"):
            value = rec.get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                key = (group, metric, int(rec.get("layer") or 0), int(rec["step"]))
                acc.setdefault(key, []).append(float(value))
    out: dict[str, dict[str, dict[int, list[tuple[int, float]]]]] = {}
    for (group, metric, layer, step), values in sorted(acc.items(), key=lambda kv: kv[0][3]):
        out.setdefault(group, {}).setdefault(metric, {}).setdefault(layer, []).append(
            (step, sum(values) / len(values))
        )
    return out


def _mean_series(run: Run, group: str, metric: str) -> list[tuple[int, float]]:
    """Mean over layers and heads of ``metric`` of ``group`` at each logged step."""
    acc: dict[int, list[float]] = {}
    for layer_series in _spectra_series(run).get(group, {}).get(metric, {}).values():
        for step, v in layer_series:
            acc.setdefault(step, []).append(v)
    return [(s, sum(v) / len(v)) for s, v in sorted(acc.items())]


def _chosen_steps(available: Sequence[int], wanted: Sequence[int] | None, k: int = 3) -> list[int]:
    steps = sorted(set(available))
    if not steps:
        return []
    if wanted:
        return sorted({min(steps, key=lambda s: abs(s - w)) for w in wanted})
    if len(steps) <= k:
        return steps
    idx = sorted({round(i * (len(steps) - 1) / (k - 1)) for i in range(k)})
    return [steps[i] for i in idx]


# ---------------------------------------------------------------------------------------------
# run figures
# ---------------------------------------------------------------------------------------------


def _fig_curves(page: _Page, run: Run, prefix: str = "") -> None:
    Figure = _mpl()
    loss, acc = _curve_keys(run)
    panels = [(k, "loss") for k in [loss] if k] + [(k, "accuracy") for k in [acc] if k]
    if not panels:
        return
    fig = Figure(figsize=(5.2 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (keys, what) in zip(axes, panels):
        for k in keys:
            pts = run.series(k)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, lw=1.4)
        if what == "loss" and _log_ok(v for k in keys for _, v in run.series(k)):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    page.add(
        fig,
        f"{prefix}curves",
        "Loss and accuracy",
        "Training and evaluation loss (log scale) and accuracy over training steps, as logged in "
        "metrics.jsonl.",
    )


def _fig_ranks(page: _Page, run: Run, prefix: str = "") -> None:
    series = _spectra_series(run)
    groups = [g for g in series if any(m in series[g] for m in _RANK_METRICS)]
    if not groups:
        return
    Figure = _mpl()
    fig = Figure(figsize=(13, 2.9 * len(groups)))
    axes = fig.subplots(len(groups), 3, squeeze=False)
    for r, group in enumerate(groups):
        for c, metric in enumerate(_RANK_METRICS):
            ax = axes[r][c]
            for layer, pts in sorted(series[group].get(metric, {}).items()):
                ax.plot(
                    [p[0] for p in pts], [p[1] for p in pts], marker=".", label=f"layer {layer}"
                )
            ax.set_title(f"{_label(group)} — {_METRIC_LABEL[metric]}", fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if r == 0 and c == 0:
                ax.legend(fontsize=8)
    rtol = next((rec.get("rtol") for rec in run.spectra if rec.get("rtol") is not None), None)
    page.add(
        fig,
        f"{prefix}ranks",
        "Rank of the attention circuits over training",
        "Per layer, mean over heads of the numerical rank #{σᵢ > rtol·σ₁}"
        + (f" (rtol = {rtol:g})" if rtol is not None else "")
        + ", the effective rank exp(−Σ pᵢ log pᵢ) with pᵢ = σᵢ/Σσ, and the stable rank Σσᵢ²/σ₁² "
        "of each circuit (W_QK = W_Q W_Kᵀ, W_OV = W_V W_O per head; W_Q, W_K as whole matrices "
        "where logged).",
    )


def _fig_balance(page: _Page, run: Run, prefix: str = "") -> None:
    series = _spectra_series(run)
    groups = [g for g in series if "balance" in series[g] or "norm_gap" in series[g]]
    Figure = _mpl()
    if groups:
        fig = Figure(figsize=(10, 2.9 * len(groups)))
        axes = fig.subplots(len(groups), 2, squeeze=False)
        for r, group in enumerate(groups):
            for c, metric in enumerate(("balance", "norm_gap")):
                ax = axes[r][c]
                values: list[float] = []
                for layer, pts in sorted(series[group].get(metric, {}).items()):
                    ax.plot(
                        [p[0] for p in pts], [p[1] for p in pts], marker=".", label=f"layer {layer}"
                    )
                    values += [p[1] for p in pts]
                if _log_ok(values):
                    ax.set_yscale("log")
                ax.set_title(f"{_label(group)} — {_METRIC_LABEL[metric]}", fontsize=10)
                ax.set_xlabel("step")
                ax.grid(alpha=0.3)
                if r == 0 and c == 0:
                    ax.legend(fontsize=8)
    else:  # a factorization run logs them as plain metrics
        keys = [k for k in ("balance", "norm_gap") if run.series(k)]
        if not keys:
            return
        fig = Figure(figsize=(5 * len(keys), 3.4))
        axes = fig.subplots(1, len(keys), squeeze=False)[0]
        for ax, k in zip(axes, keys):
            pts = run.series(k)
            ax.plot([p[0] for p in pts], [p[1] for p in pts])
            if _log_ok(p[1] for p in pts):
                ax.set_yscale("log")
            ax.set_title(_METRIC_LABEL[k], fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    page.add(
        fig,
        f"{prefix}balance",
        "Balance and norm gap over training",
        "Balance ‖AᵀA − BᵀB‖_F of each factor pair (A, B) and norm gap ½(‖A‖_F² + ‖B‖_F²) − ‖ABᵀ‖_* "
        "(mean over heads), log scale. Weight decay on the factors drives both to zero, after which "
        "L2 on the factors acts as a nuclear-norm penalty on the product.",
    )


def _fig_singular_trajectories(page: _Page, run: Run, prefix: str = "") -> None:
    """Singular values logged as plain metrics sv_0, sv_1, ... (factorization runs)."""
    keys = sorted(
        {k for row in run.metrics for k in row if re.fullmatch(r"sv_\d+", k)},
        key=lambda k: int(k[3:]),
    )
    if not keys:
        return
    Figure = _mpl()
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    for k in keys:
        pts = run.series(k)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"σ{int(k[3:]) + 1}")
    predicted = run.final.get("predicted_singular_values")
    if isinstance(predicted, list):
        for v in predicted:
            ax.axhline(float(v), color="0.5", ls=":", lw=0.9)
    ax.set_xlabel("step")
    ax.set_ylabel("singular value")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    page.add(
        fig,
        f"{prefix}singular_values",
        "Singular values of the product over training",
        "Each singular value of A·Bᵀ over steps; dotted lines: the predicted limits where the run "
        "records them (soft-thresholding max(dᵢ − λ, 0)).",
    )


def _fig_spectra(page: _Page, run: Run, steps: Sequence[int] | None, prefix: str = "") -> None:
    circuit_recs = [r for r in run.spectra if isinstance(r.get("singular_values"), list)]
    if not circuit_recs:
        return
    chosen = _chosen_steps([int(r["step"]) for r in circuit_recs], steps)
    groups: list[str] = []
    for r in circuit_recs:
        g = str(r.get("matrix") if r.get("kind") == "matrix" else r.get("circuit", "")).lower()
        if g and g not in groups:
            groups.append(g)
    Figure = _mpl()
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    ncol = min(len(groups), 2 if len(groups) == 4 else 3)
    nrow = math.ceil(len(groups) / ncol)
    fig = Figure(figsize=(5.2 * ncol, 3.6 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    rtol = next((r.get("rtol") for r in circuit_recs if r.get("rtol") is not None), 1e-2)
    for ax, group in zip(axes, groups):
        for i, step in enumerate(chosen):
            xs: list[float] = []
            ys: list[float] = []
            for rec in circuit_recs:
                g = str(
                    rec.get("matrix") if rec.get("kind") == "matrix" else rec.get("circuit", "")
                ).lower()
                if rec["step"] != step or g != group:
                    continue
                s = [float(x) for x in rec["singular_values"]]
                if not s or s[0] <= 0:
                    continue
                # all heads in one line object, separated by NaN (fast to draw)
                xs += [*range(1, len(s) + 1), math.nan]
                ys += [max(x / s[0], 1e-12) for x in s] + [math.nan]
            if xs:
                color = cmap(0.85 * i / max(1, len(chosen) - 1))
                ax.plot(xs, ys, color=color, alpha=0.55, lw=1, label=f"step {step}")
        ax.axhline(float(rtol), color="crimson", ls="--", lw=0.9, label=f"rtol {float(rtol):g}")
        ax.set_yscale("log")
        ax.set_xlabel("index i")
        ax.set_ylabel("σᵢ / σ₁")
        ax.set_title(_label(group), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    page.add(
        fig,
        f"{prefix}spectra",
        "Singular-value spectra at chosen steps",
        f"Normalized singular values σᵢ/σ₁ of every head's circuit at steps {', '.join(map(str, chosen))} "
        "(one line per layer × head, colour = step). Values below the dashed rtol line do not count "
        "towards the rank.",
    )


def run_figures(
    page: _Page, run: Run, steps: Sequence[int] | None = None, prefix: str = ""
) -> None:
    _fig_curves(page, run, prefix)
    _fig_ranks(page, run, prefix)
    _fig_balance(page, run, prefix)
    _fig_singular_trajectories(page, run, prefix)
    _fig_spectra(page, run, steps, prefix)


# ---------------------------------------------------------------------------------------------
# sweep figures
# ---------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e4 or abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.4g}"
    return str(value)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _point_label(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in point.items()) or "all runs"


def _set_xscale(ax: Any, values: Sequence[Any]) -> None:
    nums = [v for v in values if _is_num(v)]
    positive = [v for v in nums if v > 0]
    if len(positive) >= 2 and max(positive) / min(positive) >= 20:
        if len(positive) == len(nums):
            ax.set_xscale("log")
        else:
            ax.set_xscale("symlog", linthresh=min(positive))


def _sweep_metrics(df: Any) -> list[tuple[str, str]]:
    """(column, label) of the final quantities worth plotting against a swept parameter."""
    out: list[tuple[str, str]] = []
    for group in ("qk", "ov", "w_q", "w_k"):
        for metric in _RANK_METRICS:
            col = f"spectra.{group}.{metric}"
            if col in df.columns and df[col].notna().any():
                out.append((col, f"final {_label(group)} {_METRIC_LABEL[metric]}"))
    finals = [c for c in df.columns if c.startswith("final.") and df[c].notna().any()]
    for pattern in (r"val.*acc", r"acc", r"val.*loss", r"(^|\.)loss$"):
        hit = next(
            (c for c in finals if re.search(pattern, c) and c not in [o[0] for o in out]), None
        )
        if (
            hit
            and not (pattern == r"acc" and any("acc" in o[0] for o in out))
            and not (pattern.endswith("loss$") and any("loss" in o[0] for o in out))
        ):
            out.append((hit, hit.removeprefix("final.")))
    if not any(c.startswith("spectra.") for c, _ in out):
        for c in finals:
            if re.search(r"rank|norm_gap|balance|sv_error", c) and c not in [o[0] for o in out]:
                out.append((c, c.removeprefix("final.")))
    return out[:9]


def _fig_final_vs_param(page: _Page, df: Any, grid: Sequence[str]) -> None:
    finished = df[df["status"] == "finished"]
    metrics = _sweep_metrics(finished)
    if finished.empty or not metrics:
        return
    Figure = _mpl()
    n_seeds = (
        int(finished.groupby(list(grid), dropna=False).size().max()) if grid else len(finished)
    )
    for key in grid:
        others = [k for k in grid if k != key]
        values = list(dict.fromkeys(df[key].tolist()))
        if len(values) < 2:
            continue
        numeric = all(_is_num(v) for v in values)
        if numeric:
            values = sorted(values)
        ncol = min(3, len(metrics))
        nrow = math.ceil(len(metrics) / ncol)
        fig = Figure(figsize=(4.6 * ncol, 3.3 * nrow))
        axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
        combos = (
            list(dict.fromkeys(tuple(r) for r in finished[others].itertuples(index=False)))
            if others
            else [()]
        )
        for ax, (col, label) in zip(axes, metrics):
            for combo in combos:
                sub = finished
                for k, v in zip(others, combo):
                    sub = sub[sub[k] == v]
                xs, means, stds = [], [], []
                for i, v in enumerate(values):
                    vals = [float(x) for x in sub[sub[key] == v][col].tolist() if _is_num(x)]
                    if not vals:
                        continue
                    xs.append(v if numeric else i)
                    means.append(statistics.fmean(vals))
                    stds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
                if xs:
                    ax.errorbar(
                        xs,
                        means,
                        yerr=stds,
                        marker="o",
                        capsize=3,
                        lw=1.4,
                        label=_point_label(dict(zip(others, combo))) if others else None,
                    )
            if numeric:
                _set_xscale(ax, values)
            else:
                ax.set_xticks(range(len(values)), [str(v) for v in values])
            ax.set_xlabel(key)
            ax.set_title(label, fontsize=10)
            ax.grid(alpha=0.3)
            if others and len(combos) <= 8:
                ax.legend(fontsize=7)
        for ax in axes[len(metrics) :]:
            ax.set_visible(False)
        page.add(
            fig,
            f"final_vs_{re.sub(r'[^A-Za-z0-9]+', '_', key)}",
            f"Final values against {key}",
            f"Mean ± std over seeds (up to {n_seeds} per point) of each run's final value against "
            f"{key}"
            + (f"; one line per value of {', '.join(others)}" if others else "")
            + ". Spectral quantities are means over layers and heads at the last logged step.",
        )


def _grid_points(df: Any, grid: Sequence[str]) -> list[dict[str, Any]]:
    if not grid:
        return [{}]
    points = list(dict.fromkeys(tuple(r) for r in df[list(grid)].itertuples(index=False)))
    try:
        points.sort()
    except TypeError:
        pass
    return [dict(zip(grid, p)) for p in points]


def _runs_of(df: Any, runs: Mapping[str, Run], point: Mapping[str, Any]) -> list[Run]:
    sub = df
    for k, v in point.items():
        sub = sub[sub[k] == v]
    return [runs[name] for name in sub["run"] if name in runs]


def _mean_curves(series: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    acc: dict[int, list[float]] = {}
    for s in series:
        for step, v in s:
            acc.setdefault(step, []).append(v)
    return [(s, statistics.fmean(v)) for s, v in sorted(acc.items())]


def _fig_sweep_curves(page: _Page, df: Any, runs: Mapping[str, Run], grid: Sequence[str]) -> None:
    points = _grid_points(df, grid)
    if len(points) > 24 or not runs:
        return
    import matplotlib

    Figure = _mpl()
    cmap = matplotlib.colormaps["viridis"]
    colors = [cmap(0.85 * i / max(1, len(points) - 1)) for i in range(len(points))]
    sample = next(iter(runs.values()))
    # rank and balance over steps per grid point
    groups = [
        g
        for g in ("qk", "ov", "w_q", "w_k")
        if any(_mean_series(r, g, "rank") for r in runs.values())
    ]
    panels = [
        (g, m)
        for g in groups
        for m in (*_RANK_METRICS, "balance")
        if g in ("qk", "ov") or m != "balance"
    ]
    if not panels and any(r.series("balance") for r in runs.values()):
        panels = [("", "balance"), ("", "norm_gap")]
    if panels:
        ncol = 4 if len(panels) % 4 == 0 else 3
        nrow = math.ceil(len(panels) / ncol)
        fig = Figure(figsize=(4.2 * ncol, 3.0 * nrow))
        axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
        for ax, (group, metric) in zip(axes, panels):
            values: list[float] = []
            for point, color in zip(points, colors):
                prs = _runs_of(df, runs, point)
                curves = [
                    _mean_series(r, group, metric) if group else r.series(metric) for r in prs
                ]
                mean = _mean_curves([c for c in curves if c])
                if mean:
                    ax.plot(
                        [p[0] for p in mean],
                        [p[1] for p in mean],
                        color=color,
                        lw=1.4,
                        label=_point_label(point),
                    )
                    values += [p[1] for p in mean]
            if metric in ("balance", "norm_gap") and _log_ok(values):
                ax.set_yscale("log")
            ax.set_title(
                f"{_label(group) + ' — ' if group else ''}{_METRIC_LABEL[metric]}", fontsize=10
            )
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        page.add(
            fig,
            "sweep_spectra_over_steps",
            "Rank and balance over training, per grid point",
            "For each grid point (colour), the mean over seeds of the layer-and-head mean of each "
            "quantity over training steps; balance on a log scale.",
        )
    loss, acc = _curve_keys(sample)
    keys = [k for k in (loss[-1:] + acc[-1:]) if k]
    if keys:
        fig = Figure(figsize=(5.2 * len(keys), 3.5))
        axes = fig.subplots(1, len(keys), squeeze=False)[0]
        for ax, key in zip(axes, keys):
            values = []
            for point, color in zip(points, colors):
                mean = _mean_curves([r.series(key) for r in _runs_of(df, runs, point)])
                if mean:
                    ax.plot(
                        [p[0] for p in mean],
                        [p[1] for p in mean],
                        color=color,
                        lw=1.4,
                        label=_point_label(point),
                    )
                    values += [p[1] for p in mean]
            if "loss" in key and _log_ok(values):
                ax.set_yscale("log")
            ax.set_title(key, fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        page.add(
            fig,
            "sweep_curves",
            "Loss and accuracy per grid point",
            f"{' and '.join(keys)} over training steps, mean over seeds, one colour per grid point.",
        )


def _fig_sweep_spectra(page: _Page, df: Any, runs: Mapping[str, Run], grid: Sequence[str]) -> None:
    points = _grid_points(df, grid)
    if len(points) > 24:
        return
    import matplotlib

    Figure = _mpl()
    cmap = matplotlib.colormaps["viridis"]
    by_group: dict[str, list[tuple[int, list[float]]]] = {}
    for i, point in enumerate(points):
        prs = _runs_of(df, runs, point)
        if not prs:
            continue
        run = prs[0]
        recs = [
            r
            for r in run.spectra
            if isinstance(r.get("singular_values"), list) and r.get("kind", "circuit") == "circuit"
        ]
        if not recs:
            continue
        last = max(int(r["step"]) for r in recs)
        acc: dict[str, list[list[float]]] = {}
        for r in recs:
            s = [float(x) for x in r["singular_values"]]
            if r["step"] == last and s and s[0] > 0:
                acc.setdefault(str(r["circuit"]), []).append([x / s[0] for x in s])
        for g, rows in acc.items():
            n = min(len(x) for x in rows)
            by_group.setdefault(g, []).append(
                (i, [statistics.fmean(x[j] for x in rows) for j in range(n)])
            )
    if not by_group:
        return
    fig = Figure(figsize=(5 * len(by_group), 3.6))
    axes = fig.subplots(1, len(by_group), squeeze=False)[0]
    for ax, (group, lines) in zip(axes, by_group.items()):
        for i, y in lines:
            ax.plot(
                range(1, len(y) + 1),
                [max(v, 1e-12) for v in y],
                marker=".",
                color=cmap(0.85 * i / max(1, len(points) - 1)),
                label=_point_label(points[i]),
            )
        ax.axhline(1e-2, color="crimson", ls="--", lw=0.9)
        ax.set_yscale("log")
        ax.set_xlabel("index i")
        ax.set_ylabel("mean σᵢ / σ₁")
        ax.set_title(_label(group), fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    page.add(
        fig,
        "sweep_final_spectra",
        "Final spectra per grid point",
        "Normalized singular values σᵢ/σ₁ at the last logged step, averaged over layers and heads, "
        "for the first seed of each grid point; dashed: rtol = 1e-2.",
    )


def _grok_stats(run: Run) -> tuple[float | None, int | None]:
    key = _val_acc_key(run)
    if key is None:
        return None, None
    pts = run.series(key)
    if not pts:
        return None, None
    best = max(v for _, v in pts)
    grok = next((s for s, v in pts if v >= GROK_THRESHOLD), None)
    final = run.final
    if isinstance(final.get("grokking_step"), (int, float)):
        grok = int(final["grokking_step"])
    return best, grok


def _phase_keys(grid: Sequence[str]) -> tuple[str, str, list[str]] | None:
    frac = next((k for k in grid if re.search(r"frac", k)), None)
    strength = next((k for k in grid if k != frac and re.search(r"strength|lrd|decay", k)), None)
    if frac is None or strength is None:
        return None
    return frac, strength, [k for k in grid if k not in (frac, strength)]


def phase_data(df: Any, runs: Mapping[str, Run], grid: Sequence[str]) -> list[dict[str, Any]]:
    """The grokking phase diagram as numbers, one dict per arm (the other grid keys).

    Each dict: ``arm`` (point of the other keys), ``fraction_key``, ``strength_key``,
    ``fractions``, ``strengths`` and (fractions × strengths) lists ``best`` (mean over seeds of the
    best validation accuracy; NaN without data), ``grok_step`` (median over the seeds that grokked
    of the first step with validation accuracy ≥ 0.99; None if none did), ``grokked`` and ``n``
    (seed counts). Empty when the grid has no fraction × strength pair.
    """
    keys = _phase_keys(grid)
    if keys is None:
        return []
    frac, strength, arms = keys
    fracs = sorted(set(df[frac].tolist()))
    strengths = sorted(set(df[strength].tolist()))
    out = []
    for arm in _grid_points(df, arms):
        best = [[math.nan] * len(strengths) for _ in fracs]
        grok: list[list[int | None]] = [[None] * len(strengths) for _ in fracs]
        grokked = [[0] * len(strengths) for _ in fracs]
        n = [[0] * len(strengths) for _ in fracs]
        for i, f in enumerate(fracs):
            for j, s in enumerate(strengths):
                stats = [_grok_stats(r) for r in _runs_of(df, runs, {**arm, frac: f, strength: s})]
                bests = [b for b, _ in stats if b is not None]
                groks = [g for _, g in stats if g is not None]
                if bests:
                    best[i][j] = statistics.fmean(bests)
                if groks:
                    grok[i][j] = int(statistics.median(groks))
                grokked[i][j], n[i][j] = len(groks), len(stats)
        out.append(
            {
                "arm": arm,
                "fraction_key": frac,
                "strength_key": strength,
                "fractions": fracs,
                "strengths": strengths,
                "best": best,
                "grok_step": grok,
                "grokked": grokked,
                "n": n,
            }
        )
    return out


def _fig_phase(page: _Page, df: Any, runs: Mapping[str, Run], grid: Sequence[str]) -> None:
    panels = phase_data(df, runs, grid)
    if not panels:
        return
    frac, strength = panels[0]["fraction_key"], panels[0]["strength_key"]
    arms = [k for k in grid if k not in (frac, strength)]
    fracs, strengths = panels[0]["fractions"], panels[0]["strengths"]
    Figure = _mpl()
    fig = Figure(
        figsize=(
            0.9 * len(strengths) * len(panels) + 2.5 * len(panels),
            0.6 * len(fracs) + 2.2,
        ),
        layout="constrained",
    )
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, panel in zip(axes, panels):
        best = panel["best"]
        image = ax.imshow(best, vmin=0, vmax=1, cmap="magma", origin="lower", aspect="auto")
        for i in range(len(fracs)):
            for j in range(len(strengths)):
                if not panel["n"][i][j]:
                    continue
                step, k, n = panel["grok_step"][i][j], panel["grokked"][i][j], panel["n"][i][j]
                note = "–" if step is None else str(step) + (f"\n({k}/{n})" if k < n else "")
                v = best[i][j]
                color = "black" if (v == v and v > 0.6) else "white"
                ax.text(j, i, note, ha="center", va="center", fontsize=7, color=color)
        ax.set_xticks(range(len(strengths)), [_fmt(s) for s in strengths], rotation=45, fontsize=8)
        ax.set_yticks(range(len(fracs)), [_fmt(f) for f in fracs], fontsize=8)
        ax.set_xlabel(strength)
        ax.set_ylabel(frac)
        ax.set_title(_point_label(panel["arm"]), fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="best validation accuracy", shrink=0.9)
    page.add(
        fig,
        "phase_diagram",
        "Grokking phase diagram",
        f"Colour: best validation accuracy (mean over seeds) for each {frac} × {strength}"
        + (f", one panel per {', '.join(arms)}" if arms else "")
        + f". Text: median grokking step (first evaluation with validation accuracy ≥ {GROK_THRESHOLD}) "
        "over the seeds that grokked, with their count when not all did; – : none grokked.",
    )


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

_CSS = """
:root { --fg:#1d2330; --muted:#5b6577; --line:#e3e7ee; --accent:#3451b2; --ok:#17803d;
        --bad:#b42318; --na:#8a6d00; --bg:#f7f8fb; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
       color:var(--fg); background:var(--bg); }
header { background:linear-gradient(120deg,#1f2a48,#3451b2); color:#fff; padding:28px 40px 22px; }
header h1 { margin:0 0 6px; font-size:26px; font-weight:650; }
header .sub { opacity:.85; font-size:14px; }
header .chips { margin-top:12px; display:flex; flex-wrap:wrap; gap:8px; }
.chip { background:rgba(255,255,255,.14); border-radius:999px; padding:3px 12px; font-size:13px; }
main { max-width:1180px; margin:0 auto; padding:24px 32px 60px; }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:18px 24px;
          margin:0 0 22px; }
h2 { font-size:19px; margin:0 0 12px; }
h3 { font-size:15px; margin:14px 0 8px; }
table { border-collapse:collapse; width:100%; font-size:13.5px; }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#f1f3f8; font-weight:600; position:sticky; top:0; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
.met { color:var(--ok); font-weight:600; } .missed { color:var(--bad); font-weight:600; }
.na { color:var(--na); }
.status-finished { color:var(--ok); } .status-failed { color:var(--bad); font-weight:600; }
.status-running, .status-interrupted, .status-pending { color:var(--na); }
figure { margin:0 0 26px; } figure img { max-width:100%; height:auto; border:1px solid var(--line);
         border-radius:6px; background:#fff; }
figcaption { color:var(--muted); font-size:13.5px; margin-top:6px; }
figcaption b { color:var(--fg); }
.scroll { max-height:520px; overflow:auto; border:1px solid var(--line); border-radius:6px; }
details { margin:6px 0; } summary { cursor:pointer; color:var(--accent); }
.files a { color:var(--accent); margin-right:10px; font-size:13px; }
footer { color:var(--muted); font-size:12.5px; text-align:center; padding:10px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _met_cell(met: Any) -> str:
    if met is None:
        return '<td class="na">reported</td>'
    return '<td class="met">✓ met</td>' if met else '<td class="missed">✗ missed</td>'


def _verdict_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p>This run recorded no verdict.</p>"
    body = "".join(
        f"<tr><td>{_e(r.get('claim', ''))}</td><td>{_e(r.get('target', ''))}</td>"
        f"<td>{_e(r.get('measured', ''))}</td>{_met_cell(r.get('met'))}</tr>"
        for r in rows
    )
    return (
        "<table><thead><tr><th>claim</th><th>target</th><th>measured</th><th>verdict</th></tr>"
        f"</thead><tbody>{body}</tbody></table>"
    )


def _table(
    records: Sequence[Mapping[str, Any]], columns: Sequence[str], scroll: bool = False
) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    rows = []
    for rec in records:
        cells = []
        for c in columns:
            v = rec.get(c)
            if c == "status":
                cells.append(f'<td class="status-{_e(v)}">{_e(v)}</td>')
            elif _is_num(v):
                cells.append(
                    f'<td class="num">{_e(_fmt(float(v)) if isinstance(v, float) else v)}</td>'
                )
            else:
                cells.append(f"<td>{_e('' if v is None or v != v else v)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return f'<div class="scroll">{table}</div>' if scroll else table


def _figures_html(page: _Page, rel_dir: str | None) -> str:
    parts = []
    for n, f in enumerate(page.figures, 1):
        files = (
            f'<span class="files"><a href="{_e(rel_dir)}/{_e(f.name)}.png">PNG</a>'
            f'<a href="{_e(rel_dir)}/{_e(f.name)}.svg">SVG</a></span>'
            if rel_dir
            else ""
        )
        parts.append(
            f'<figure id="fig-{_e(f.name)}"><img alt="{_e(f.title)}" '
            f'src="data:image/png;base64,{f.png_b64}">'
            f"<figcaption><b>Figure {n}. {_e(f.title)}{'' if f.title[-1:] in '.?!' else '.'}</b> {_e(f.caption)} {files}</figcaption></figure>"
        )
    return "".join(parts) or "<p>No data to plot yet.</p>"


def _page_html(
    title: str, subtitle: str, chips: Sequence[str], sections: Sequence[tuple[str, str]]
) -> str:
    chips_html = "".join(f'<span class="chip">{_e(c)}</span>' for c in chips)
    body = "".join(
        f"<section><h2>{_e(h)}</h2>{content}</section>" for h, content in sections if content
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1>{_e(title)}</h1><div class="sub">{_e(subtitle)}</div>'
        f'<div class="chips">{chips_html}</div></header><main>{body}</main>'
        f"<footer>rankdecay report · generated {_e(time.strftime('%Y-%m-%d %H:%M'))}</footer>"
        "</body></html>\n"
    )


# ---------------------------------------------------------------------------------------------
# building reports
# ---------------------------------------------------------------------------------------------


def _outputs(directory: Path, out: str | Path | None) -> tuple[Path, Path, Path]:
    html_path = Path(out) if out is not None else directory / "report" / "report.html"
    if html_path.suffix.lower() not in (".html", ".htm"):
        html_path = html_path / "report.html"
    base = html_path.parent
    return html_path, base / "figures", base / "summary.csv"


def _summary_columns(df: Any, grid: Sequence[str]) -> list[str]:
    cols = ["run", "status", "seed", *grid]
    cols += [c for c, _ in _sweep_metrics(df)]
    cols += [c for c in ("verdict.met", "verdict.total", "wall_s", "error") if c in df.columns]
    return list(dict.fromkeys(c for c in cols if c in df.columns))


def _write_csv(df: Any, path: Path) -> None:
    scalar = [
        c for c in df.columns if not df[c].map(lambda v: isinstance(v, (list, dict, tuple))).any()
    ]
    buf = io.StringIO()
    df[scalar].to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())


def build_report(
    directory: str | Path, out: str | Path | None = None, steps: Sequence[int] | None = None
) -> Path:
    """Write the report of a run or sweep directory; return the path of report.html."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RankdecayError(
            f"{directory} does not exist; point `rankdecay report` to a run or sweep directory."
        )
    is_sweep = (directory / "sweep.json").exists()
    if not is_sweep and not is_run_dir(directory):
        if not any(is_run_dir(p) for p in directory.iterdir() if p.is_dir()):
            raise RankdecayError(
                f"{directory} is neither a run nor a sweep directory (no config.json, summary.json or "
                "sweep.json); point to a directory written by `rankdecay run` or `rankdecay sweep`."
            )
        is_sweep = True
    html_path, fig_dir, csv_path = _outputs(directory, out)
    page = _Page(fig_dir)
    df = load_sweep(directory)
    _write_csv(df, csv_path)
    rel = Path(_relpath(fig_dir, html_path.parent))
    if is_sweep:
        text = _sweep_page(directory, df, page, steps, rel)
    else:
        text = _run_page(load_run(directory), df, page, steps)
    text = text.replace("__FIGDIR__", str(rel))
    atomic_write_text(html_path, text)
    return html_path


def _relpath(target: Path, start: Path) -> str:
    import os

    return os.path.relpath(target, start)


def _run_page(run: Run, df: Any, page: _Page, steps: Sequence[int] | None) -> str:
    run_figures(page, run, steps)
    final = flatten_dict(run.final)
    final_rows = [{"quantity": k, "value": v if _is_num(v) else _e(v)} for k, v in final.items()]
    config_rows = [{"key": k, "value": v} for k, v in run.flat_config.items()]
    verdict = run.verdict
    met = sum(1 for v in verdict if v.get("met"))
    with_target = sum(1 for v in verdict if v.get("met") is not None)
    chips = [
        f"status: {run.status}",
        f"seed {run.seed}",
        f"preset {run.meta.get('preset') or '–'}",
        f"verdict: {met}/{with_target} targets met" if with_target else "verdict: no targets",
    ]
    if run.summary.get("step") is not None:
        chips.append(f"step {run.summary['step']}")
    if run.summary.get("error"):
        chips.append("error: " + str(run.summary["error"])[:120])
    sections = [
        ("Verdict", _verdict_table(verdict)),
        ("Figures", _figures_html(page, "__FIGDIR__")),
        (
            "Final values",
            _table(final_rows, ["quantity", "value"], scroll=True) if final_rows else "",
        ),
        ("Configuration", _table(config_rows, ["key", "value"], scroll=True)),
    ]
    return _page_html(
        f"{run.experiment or 'run'} — {run.name}",
        f"Run directory {run.path}",
        chips,
        sections,
    )


def _sweep_page(
    directory: Path, df: Any, page: _Page, steps: Sequence[int] | None, rel: Path
) -> str:
    grid = list(df.attrs.get("grid") or [])
    runs: dict[str, Run] = {}
    for _, row in df.iterrows():
        run_dir = Path(str(row["run_dir"]))
        if is_run_dir(run_dir):
            runs[str(row["run"])] = load_run(run_dir)
    index = (
        read_json(directory / "sweep.json", "sweep index")
        if (directory / "sweep.json").exists()
        else {}
    )
    _fig_phase(page, df, runs, grid)
    _fig_final_vs_param(page, df, grid)
    _fig_sweep_curves(page, df, runs, grid)
    _fig_sweep_spectra(page, df, runs, grid)
    # verdicts: aggregated per claim, then per run
    claims: dict[str, list[Any]] = {}
    for run in runs.values():
        for v in run.verdict:
            claims.setdefault(str(v.get("claim", "")), []).append(v.get("met"))
    agg_rows = []
    for claim, mets in claims.items():
        judged = [m for m in mets if m is not None]
        agg_rows.append(
            {
                "claim": claim,
                "runs": len(mets),
                "met": f"{sum(bool(m) for m in judged)}/{len(judged)}" if judged else "reported",
            }
        )
    per_run = "".join(
        f"<details><summary>{_e(name)} — {_e(run.status)}</summary>{_verdict_table(run.verdict)}</details>"
        for name, run in runs.items()
    )
    verdict_html = (
        _table(agg_rows, ["claim", "runs", "met"])
        if agg_rows
        else "<p>No run recorded a verdict.</p>"
    ) + (
        f"<details><summary>Verdict of each run ({len(runs)})</summary>{per_run}</details>"
        if per_run
        else ""
    )
    counts: dict[str, int] = {}
    for s in df["status"].tolist():
        counts[str(s)] = counts.get(str(s), 0) + 1
    chips = [f"{len(df)} runs"] + [f"{n} {s}" for s, n in sorted(counts.items())]
    if grid:
        chips.append("grid: " + " × ".join(f"{k} ({df[k].nunique()})" for k in grid))
    seeds = df.attrs.get("seeds") or sorted(set(df["seed"].dropna().tolist()))
    chips.append(f"seeds: {len(seeds)}")
    columns = _summary_columns(df, grid)
    records = df[columns].to_dict("records")
    fixed = index.get("fixed") or {}
    spec_rows = [
        {"key": k, "value": ", ".join(_fmt(x) for x in v)}
        for k, v in (index.get("grid") or {}).items()
    ]
    spec_rows += [{"key": f"{k} (fixed)", "value": v} for k, v in fixed.items()]
    unfinished = [r for r in df.to_dict("records") if r.get("status") != "finished"]
    problems = (
        _table(
            unfinished, [c for c in ("run", "status", "seed", *grid, "error") if c in df.columns]
        )
        + "<p>Repeat the <code>rankdecay sweep</code> command to resume interrupted runs and retry "
        "failed ones; a failed run's traceback is in its <code>error.txt</code>.</p>"
        if unfinished
        else ""
    )
    sections = [
        (f"Runs that did not finish ({len(unfinished)})", problems),
        ("Verdicts", verdict_html),
        ("Figures", _figures_html(page, "__FIGDIR__")),
        (
            "Runs",
            _table(records, columns, scroll=True)
            + f'<p class="files"><a href="{_e(rel.parent / "summary.csv")}">summary.csv</a></p>',
        ),
        ("Sweep", _table(spec_rows, ["key", "value"]) if spec_rows else ""),
    ]
    title = f"{df.attrs.get('experiment') or 'runs'} sweep"
    if df.attrs.get("preset"):
        title += f" — preset {df.attrs['preset']}"
    return _page_html(title, f"Sweep directory {directory}", chips, sections)


# ---------------------------------------------------------------------------------------------
# analyze --html
# ---------------------------------------------------------------------------------------------


def analysis_html(report: Any, path: str | Path) -> Path:
    """Write a self-contained HTML page for a :class:`rankdecay.analyze.SpectralReport`.

    Per circuit (QK, OV) and metric (rank, effective rank, stable rank): a layer × head heatmap;
    ½(‖A‖²+‖B‖²) against ‖ABᵀ‖_* per head (points on the diagonal are balanced factorizations);
    the per-layer table of means over heads. Figures are also written beside the page
    (``<stem>_figures/``).
    """
    path = Path(path)
    Figure = _mpl()
    records = list(report.records)
    if not records:
        raise RankdecayError(
            "the spectral report has no records; analyze a model with attention layers."
        )
    model = dict(getattr(report, "model", {}) or {})
    rtol = model.get("rtol", records[0].get("rtol", 1e-2))
    circuits = [c for c in ("qk", "ov") if any(r["circuit"] == c for r in records)]
    layers = sorted({int(r["layer"]) for r in records})
    heads = sorted({int(r["head"]) for r in records})
    fig_dir = path.parent / f"{path.stem}_figures"
    page = _Page(fig_dir)
    fig = Figure(figsize=(4.4 * 3, 0.32 * len(layers) * len(circuits) + 2.4 * len(circuits)))
    axes = fig.subplots(len(circuits), 3, squeeze=False)
    annotate = len(layers) * len(heads) <= 400
    for r, circuit in enumerate(circuits):
        for c, metric in enumerate(_RANK_METRICS):
            grid = [[math.nan] * len(heads) for _ in layers]
            for rec in records:
                if rec["circuit"] == circuit:
                    grid[layers.index(int(rec["layer"]))][heads.index(int(rec["head"]))] = float(
                        rec[metric]
                    )
            ax = axes[r][c]
            im = ax.imshow(grid, aspect="auto", cmap="viridis", origin="upper")
            fig.colorbar(im, ax=ax, shrink=0.85)
            if annotate:
                for i in range(len(layers)):
                    for j in range(len(heads)):
                        v = grid[i][j]
                        if v == v:
                            ax.text(
                                j,
                                i,
                                f"{v:.0f}" if metric == "rank" else f"{v:.1f}",
                                ha="center",
                                va="center",
                                fontsize=6,
                                color="white",
                            )
            ax.set_title(f"{_label(circuit)} — {_METRIC_LABEL[metric]}", fontsize=10)
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.set_xticks(range(len(heads)), [str(h) for h in heads], fontsize=7)
            ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=7)
    page.add(
        fig,
        "heads_rank",
        "Rank per head",
        f"Per layer (rows) and head (columns): numerical rank #{{σᵢ > {rtol:g}·σ₁}}, effective rank "
        "exp(−Σ pᵢ log pᵢ) and stable rank Σσᵢ²/σ₁² of W_QK = W_Q W_Kᵀ and W_OV = W_V W_O.",
    )
    if all("norm_gap" in r and "nuclear_norm" in r for r in records):
        fig = Figure(figsize=(5.2 * len(circuits), 4.2))
        axes = fig.subplots(1, len(circuits), squeeze=False)[0]
        for ax, circuit in zip(axes, circuits):
            recs = [r for r in records if r["circuit"] == circuit]
            x = [float(r["nuclear_norm"]) for r in recs]
            y = [float(r["nuclear_norm"]) + float(r["norm_gap"]) for r in recs]
            sc = ax.scatter(x, y, c=[int(r["layer"]) for r in recs], cmap="viridis", s=18)
            hi = max(x + y) if x else 1.0
            ax.plot([0, hi], [0, hi], color="0.4", ls="--", lw=1, label="balanced: equal")
            ax.set_xlabel("‖A·Bᵀ‖_* (nuclear norm)")
            ax.set_ylabel("½(‖A‖_F² + ‖B‖_F²)")
            ax.set_title(_label(circuit), fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.colorbar(sc, ax=ax, label="layer")
        page.add(
            fig,
            "heads_balance",
            "How balanced are the factors?",
            "Each point is one head: ½(‖A‖² + ‖B‖²) against the nuclear norm of the product. "
            "The two are equal (the dashed line) exactly when the factorization is balanced, which is "
            "where weight decay on the factors drives training.",
        )
    summary_rows = report.summary() if hasattr(report, "summary") else []
    cols = [
        c
        for c in (
            "layer",
            "name",
            "circuit",
            "n_heads",
            "rank_min",
            "rank_max",
            "rank",
            "effective_rank",
            "stable_rank",
            "nuclear_norm",
            "balance",
            "norm_gap",
        )
        if summary_rows and c in summary_rows[0]
    ]
    chips = [
        str(model.get("model_class") or "model"),
        f"{len(layers)} layers × {len(heads)} heads",
        f"rtol {rtol:g}",
    ]
    if model.get("gqa"):
        chips.append(f"GQA: {model.get('n_kv_heads')} kv heads")
    if model.get("rotary"):
        chips.append("rotary (QK at offset 0)")
    notes = model.get("notes") or []
    note_html = "".join(f"<li>{_e(n)}</li>" for n in notes) if isinstance(notes, list) else ""
    rel = _relpath(fig_dir, path.parent)
    sections = [
        ("Per layer (mean over heads)", _table(summary_rows, cols, scroll=True) if cols else ""),
        ("Figures", _figures_html(page, rel)),
        ("Notes", f"<ul>{note_html}</ul>" if note_html else ""),
    ]
    text = _page_html(
        f"Attention spectra — {model.get('source') or model.get('model_class') or 'model'}",
        "Per-head singular values of the query-key and value-output circuits",
        chips,
        sections,
    )
    atomic_write_text(path, text)
    return path


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="a run directory or a sweep directory")
    parser.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="report.html path (default DIR/report/report.html); figures/ and summary.csv go beside it",
    )
    parser.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=None,
        metavar="STEP",
        help="steps at which to plot singular-value spectra (nearest logged; default first/middle/last)",
    )
    from .threads import add_threads_argument

    add_threads_argument(parser)


def run_cli(args: argparse.Namespace) -> int:
    path = build_report(args.directory, args.out, args.steps)
    print(
        f"wrote {path} (figures in {path.parent / 'figures'}, table {path.parent / 'summary.csv'})"
    )
    return 0
