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
  the curves above per grid point (mean over seeds); and the figures the sweep's experiment
  supplies (``Experiment.figures``, e.g. grokking's phase diagram, drawn by :func:`phase_diagram`:
  colour = best validation accuracy (mean over seeds), annotated with the median grokking step,
  the first evaluation with validation accuracy ≥ 0.99).

:func:`analysis_html` writes the same kind of page for a :class:`rankdecay.analyze.SpectralReport`
(``rankdecay analyze --html``): every head's singular-value spectrum, per-head heatmaps of rank /
effective rank / stable rank for QK and OV ("all N heads: v" where constant), the balance of the
factors per head, and a per-layer table with every metric. Its figures are embedded only (no
folder beside the page) unless ``figures_dir`` is given.

Figures are drawn so that they do not mislead: a linear axis spans at least
:data:`MIN_RELATIVE_SPAN` of its largest value (noise of 0.1 % does not look like a cliff; ranks get
whole-number ticks), tick labels are plain numbers, series of few points are marked at each
point, multi-panel figures share one legend, and a few lines get clearly distinct colours. Tables
wrap rather than scroll sideways. ``rankdecay report`` refuses a saved model's directory (use
``rankdecay analyze DIR --html FILE`` for that).
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import statistics
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RankdecayError, RankdecayFileNotFoundError, RankdecayValueError
from .experiments import ReportFigure, SweepData
from .results import Run, flatten_dict, is_run_dir, load_run, load_sweep
from .runio import atomic_write_text, read_json

__all__ = [
    "ReportFigure",
    "SweepData",
    "analysis_html",
    "build_report",
    "phase_data",
    "phase_diagram",
]

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


#: distinct colours for a few lines (matplotlib's tab10 without its red, which marks rtol lines)
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf",
)  # fmt: skip
#: a linear y axis spans at least this fraction of the largest |value| it shows (see _tame_axis)
MIN_RELATIVE_SPAN = 0.2
#: series with at most this many points get a marker at each point
MARKER_POINTS = 25


def _colors(n: int) -> list[Any]:
    """``n`` colours that are easy to tell apart: the palette for ≤ 9, else viridis steps."""
    if n <= len(_PALETTE):
        return list(_PALETTE[:n])
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    return [cmap(0.9 * i / max(1, n - 1)) for i in range(n)]


def _marker(n_points: int) -> dict[str, Any]:
    """Plot keywords marking every point of a short series (two points must not look like data)."""
    return {"marker": "o", "ms": 3.5} if n_points <= MARKER_POINTS else {}


def _plain(value: float, _pos: Any = None) -> str:
    """A tick label without scientific notation's ×10ⁿ: 0.001, 2.5, 1.2e+05."""
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-4:
        return f"{value:.3g}"
    return f"{value:.6g}"


def _tame_axis(ax: Any, values: Iterable[float], integer: bool = False) -> None:
    """Axis ticks and limits that neither magnify noise nor hide a change.

    Linear axis: when the values vary by less than :data:`MIN_RELATIVE_SPAN` of their largest
    magnitude (a constant, or 13.405 → 13.385), the axis is widened to that span around the data
    so a flat series looks flat. Log axis: likewise when max/min < 1 + MIN_RELATIVE_SPAN; labels
    are plain numbers (0.01, 2, 50), minor ticks are labelled only inside one decade. ``integer``: ticks at whole numbers only (ranks). Every axis:
    no offset ("+1.34e1") and no ×10ⁿ multiplier.
    """
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if ax.get_yscale() == "log":
        ax.yaxis.set_major_formatter(FuncFormatter(_plain))
        positive = [v for v in vals if v > 0]
        one_decade = bool(positive) and max(positive) / min(positive) < 10
        ax.yaxis.set_minor_formatter(FuncFormatter(_plain) if one_decade else NullFormatter())
        if positive and max(positive) < (1 + MIN_RELATIVE_SPAN) * min(positive):
            mid = math.sqrt(max(positive) * min(positive))
            factor = math.sqrt(1 + MIN_RELATIVE_SPAN)
            ax.set_ylim(mid / factor, mid * factor)
        return
    ax.yaxis.set_major_formatter(FuncFormatter(_plain))
    if integer:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if not vals:
        return
    lo, hi = min(vals), max(vals)
    scale = max(abs(lo), abs(hi))
    if scale == 0 or hi - lo >= MIN_RELATIVE_SPAN * scale:
        return
    mid, half = (lo + hi) / 2, MIN_RELATIVE_SPAN * scale / 2
    if integer:
        half = max(half, 1.0)  # at least two whole-number ticks
    ax.set_ylim(mid - half, mid + half)


def _x_plain(ax: Any, integer: bool = False) -> None:
    """Plain x tick labels (steps: 5000, not 5×10³) on linear and log x axes; ``integer``: ticks
    at whole numbers only (singular-value indices)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    if integer:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ax.get_xscale() == "log":
        ax.xaxis.set_minor_formatter(NullFormatter())


def _figure_legend(fig: Any, axes: Sequence[Any], title: str | None = None) -> None:
    """One legend for the whole figure, under it, with each label once (from every panel)."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label and not label.startswith("_") and label not in seen:
                seen[label] = handle
    if not seen:
        return
    fig.legend(
        list(seen.values()),
        list(seen),
        loc="outside lower center",
        ncol=min(len(seen), 4),
        fontsize=8,
        title=title,
        title_fontsize=8,
        frameon=False,
    )


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
        for k, color in zip(keys, _colors(len(keys))):
            pts = run.series(k)
            ax.plot(
                [p[0] for p in pts], [p[1] for p in pts], label=k, lw=1.4, color=color,
                **_marker(len(pts)),
            )  # fmt: skip
        values = [v for k in keys for _, v in run.series(k)]
        if what == "loss" and _log_ok(values):
            ax.set_yscale("log")
        _tame_axis(ax, values)
        _x_plain(ax)
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
    fig = Figure(figsize=(13, 2.9 * len(groups) + 0.5), layout="constrained")
    axes = fig.subplots(len(groups), 3, squeeze=False)
    n_layers = max(len(series[g].get(m, {})) for g in groups for m in _RANK_METRICS)
    colors = _colors(n_layers)
    for r, group in enumerate(groups):
        for c, metric in enumerate(_RANK_METRICS):
            ax = axes[r][c]
            values: list[float] = []
            for color, (layer, pts) in zip(colors, sorted(series[group].get(metric, {}).items())):
                ax.plot(
                    [p[0] for p in pts], [p[1] for p in pts], color=color,
                    label=f"layer {layer}", **_marker(len(pts)),
                )  # fmt: skip
                values += [p[1] for p in pts]
            _tame_axis(ax, values, integer=metric == "rank")
            _x_plain(ax)
            ax.set_title(f"{_label(group)} — {_METRIC_LABEL[metric]}", fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    _figure_legend(fig, axes.ravel())
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
        fig = Figure(figsize=(10, 2.9 * len(groups) + 0.5), layout="constrained")
        axes = fig.subplots(len(groups), 2, squeeze=False)
        n_layers = max(len(series[g].get(m, {})) for g in groups for m in ("balance", "norm_gap"))
        colors = _colors(n_layers)
        for r, group in enumerate(groups):
            for c, metric in enumerate(("balance", "norm_gap")):
                ax = axes[r][c]
                values: list[float] = []
                for color, (layer, pts) in zip(
                    colors, sorted(series[group].get(metric, {}).items())
                ):
                    ax.plot(
                        [p[0] for p in pts], [p[1] for p in pts], color=color,
                        label=f"layer {layer}", **_marker(len(pts)),
                    )  # fmt: skip
                    values += [p[1] for p in pts]
                if _log_ok(values):
                    ax.set_yscale("log")
                _tame_axis(ax, values)
                _x_plain(ax)
                ax.set_title(f"{_label(group)} — {_METRIC_LABEL[metric]}", fontsize=10)
                ax.set_xlabel("step")
                ax.grid(alpha=0.3)
        _figure_legend(fig, axes.ravel())
    else:  # a factorization run logs them as plain metrics
        keys = [k for k in ("balance", "norm_gap") if run.series(k)]
        if not keys:
            return
        fig = Figure(figsize=(5 * len(keys), 3.4))
        axes = fig.subplots(1, len(keys), squeeze=False)[0]
        for ax, k in zip(axes, keys):
            pts = run.series(k)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], **_marker(len(pts)))
            if _log_ok(p[1] for p in pts):
                ax.set_yscale("log")
            _tame_axis(ax, [p[1] for p in pts])
            _x_plain(ax)
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
    _tame_axis(ax, [v for k in keys for _, v in run.series(k)])
    _x_plain(ax)
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
    colors = _colors(len(chosen))
    ncol = min(len(groups), 2 if len(groups) == 4 else 3)
    nrow = math.ceil(len(groups) / ncol)
    fig = Figure(figsize=(5.2 * ncol, 3.6 * nrow + 0.4), layout="constrained")
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
                ax.plot(xs, ys, color=colors[i], alpha=0.8, lw=1, label=f"step {step}")
        ax.axhline(float(rtol), color="crimson", ls="--", lw=0.9, label=f"rtol {float(rtol):g}")
        ax.set_yscale("log")
        _tame_axis(ax, [1.0, float(rtol)])
        _x_plain(ax, integer=True)
        ax.set_xlabel("index i")
        ax.set_ylabel("σᵢ / σ₁")
        ax.set_title(_label(group), fontsize=10)
        ax.grid(alpha=0.3)
    _figure_legend(fig, axes[: len(groups)])
    page.add(
        fig,
        f"{prefix}spectra",
        "Singular-value spectra at chosen steps",
        f"Normalized singular values σᵢ/σ₁ of every head's circuit at steps {', '.join(map(str, chosen))} "
        "(one line per layer × head, one colour per step). Values below the dashed rtol line do not count "
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
        fig = Figure(figsize=(4.6 * ncol, 3.3 * nrow + 0.4), layout="constrained")
        axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
        combos = (
            list(dict.fromkeys(tuple(r) for r in finished[others].itertuples(index=False)))
            if others
            else [()]
        )
        colors = _colors(len(combos))
        for ax, (col, label) in zip(axes, metrics):
            shown: list[float] = []
            for combo, color in zip(combos, colors):
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
                        ms=4,
                        capsize=3,
                        lw=1.4,
                        color=color,
                        label=_point_label(dict(zip(others, combo))) if others else None,
                    )
                    shown += [m - s for m, s in zip(means, stds)] + [
                        m + s for m, s in zip(means, stds)
                    ]
            if numeric:
                _set_xscale(ax, values)
                _x_plain(ax)
            else:
                ax.set_xticks(range(len(values)), [str(v) for v in values])
            _tame_axis(ax, shown, integer=col.endswith(".rank"))
            ax.set_xlabel(key)
            ax.set_title(label, fontsize=10)
            ax.grid(alpha=0.3)
        if others and len(combos) <= 12:
            _figure_legend(fig, axes[: len(metrics)])
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

    Figure = _mpl()
    colors = _colors(len(points))
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
        fig = Figure(figsize=(4.2 * ncol, 3.0 * nrow + 0.4), layout="constrained")
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
                        **_marker(len(mean)),
                    )
                    values += [p[1] for p in mean]
            if metric in ("balance", "norm_gap") and _log_ok(values):
                ax.set_yscale("log")
            _tame_axis(ax, values, integer=metric == "rank")
            _x_plain(ax)
            ax.set_title(
                f"{_label(group) + ' — ' if group else ''}{_METRIC_LABEL[metric]}", fontsize=10
            )
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        _figure_legend(fig, axes[: len(panels)])
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
        fig = Figure(figsize=(5.2 * len(keys), 3.9), layout="constrained")
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
                        **_marker(len(mean)),
                    )
                    values += [p[1] for p in mean]
            if "loss" in key and _log_ok(values):
                ax.set_yscale("log")
            _tame_axis(ax, values)
            _x_plain(ax)
            ax.set_title(key, fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        _figure_legend(fig, axes)
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

    Figure = _mpl()
    colors = _colors(len(points))
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
    fig = Figure(figsize=(5 * len(by_group), 4.0), layout="constrained")
    axes = fig.subplots(1, len(by_group), squeeze=False)[0]
    for ax, (group, lines) in zip(axes, by_group.items()):
        for i, y in lines:
            ax.plot(
                range(1, len(y) + 1),
                [max(v, 1e-12) for v in y],
                color=colors[i],
                label=_point_label(points[i]),
                **_marker(len(y)),
            )
        ax.axhline(1e-2, color="crimson", ls="--", lw=0.9)
        ax.set_yscale("log")
        _tame_axis(ax, [1.0, 1e-2])
        _x_plain(ax, integer=True)
        ax.set_xlabel("index i")
        ax.set_ylabel("mean σᵢ / σ₁")
        ax.set_title(_label(group), fontsize=10)
        ax.grid(alpha=0.3)
    _figure_legend(fig, axes)
    page.add(
        fig,
        "sweep_final_spectra",
        "Final spectra per grid point",
        "Normalized singular values σᵢ/σ₁ at the last logged step, averaged over layers and heads, "
        "for the first seed of each grid point; dashed: rtol = 1e-2.",
    )


def _measured_text(values: Sequence[Any]) -> str:
    """The measured values of one claim at one grid point: a number, a mean ± std [min–max] over
    seeds, or the distinct texts."""
    nums: list[float] = []
    for v in values:
        try:
            nums.append(float(v))
        except (TypeError, ValueError):
            break
    else:
        if len(nums) == 1:
            return _fmt(nums[0])
        if nums:
            lo, hi = min(nums), max(nums)
            if lo == hi:
                return f"{_fmt(lo)} (all {len(nums)})"
            return (
                f"{_fmt(statistics.fmean(nums))} ± {_fmt(statistics.stdev(nums))} "
                f"[{_fmt(lo)}–{_fmt(hi)}, {len(nums)} runs]"
            )
    texts = list(dict.fromkeys(str(v) for v in values))
    shown = "; ".join(texts[:3])
    return shown + (f"; … {len(texts) - 3} more" if len(texts) > 3 else "")


def verdict_summary(df: Any, runs: Mapping[str, Run], grid: Sequence[str]) -> list[dict[str, Any]]:
    """The sweep's verdicts per claim, with their values.

    One dict per claim (in first-seen order): ``claim``; ``target`` (the distinct targets, joined);
    ``measured``: a list of ``(grid point label, text)`` — the measured value of each grid point
    whose runs report the claim (a mean ± std [min–max] over seeds when numeric); ``met`` and
    ``judged`` (counts of runs meeting a target, of runs with a target); ``runs``.
    """
    claims: dict[str, dict[str, Any]] = {}
    varying = [k for k in grid if df[k].nunique(dropna=False) > 1]
    for point in _grid_points(df, grid):
        label = _point_label({k: point[k] for k in varying}) if varying else ""
        for run in _runs_of(df, runs, point):
            for v in run.verdict:
                entry = claims.setdefault(
                    str(v.get("claim", "")),
                    {"targets": [], "points": {}, "met": 0, "judged": 0, "runs": 0},
                )
                target = str(v.get("target", ""))
                if target and target not in entry["targets"]:
                    entry["targets"].append(target)
                entry["points"].setdefault(label, []).append(v.get("measured"))
                entry["runs"] += 1
                if v.get("met") is not None:
                    entry["judged"] += 1
                    entry["met"] += bool(v.get("met"))
    out = []
    for claim, e in claims.items():
        targets = e["targets"]
        out.append(
            {
                "claim": claim,
                "target": targets[0]
                if len(targets) == 1
                else f"{targets[0]} (varies by run)"
                if targets
                else "",
                "measured": [(label, _measured_text(vals)) for label, vals in e["points"].items()],
                "met": e["met"],
                "judged": e["judged"],
                "runs": e["runs"],
            }
        )
    return out


def _verdict_summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    body = []
    for r in rows:
        measured = "<br>".join(
            (f'<span class="pt">{_e(label)}:</span> ' if label else "") + _e(text)
            for label, text in r["measured"]
        )
        if r["judged"]:
            ok = r["met"] == r["judged"]
            verdict = f'<td class="{"met" if ok else "missed"}">{r["met"]}/{r["judged"]} met</td>'
        else:
            verdict = f'<td class="na">reported ({r["runs"]} runs)</td>'
        body.append(
            f"<tr><td>{_e(r['claim'])}</td><td>{_e(r['target'])}</td><td>{measured}</td>{verdict}</tr>"
        )
    return (
        '<table class="fit"><thead><tr><th>claim</th><th>target</th><th>measured</th>'
        f"<th>verdict</th></tr></thead><tbody>{''.join(body)}</tbody></table>"
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


def _phase_keys(
    grid: Sequence[str], fraction_key: str | None, strength_key: str | None
) -> tuple[str, str, list[str]] | None:
    """(fraction key, strength key, the other grid keys), or None when the grid lacks either."""
    if fraction_key is None and strength_key is None and len(grid) >= 2:
        fraction_key, strength_key = grid[0], grid[1]
    if fraction_key not in grid or strength_key not in grid or fraction_key == strength_key:
        return None
    assert fraction_key is not None and strength_key is not None
    return fraction_key, strength_key, [k for k in grid if k not in (fraction_key, strength_key)]


def phase_data(
    df: Any,
    runs: Mapping[str, Run],
    grid: Sequence[str],
    fraction_key: str | None = None,
    strength_key: str | None = None,
) -> list[dict[str, Any]]:
    """The grokking phase diagram as numbers, one dict per arm (the other grid keys).

    ``fraction_key`` × ``strength_key`` are two keys of ``grid`` (default: its first two). Each
    dict: ``arm`` (point of the other keys), ``fraction_key``, ``strength_key``, ``fractions``,
    ``strengths`` and (fractions × strengths) lists ``best`` (mean over seeds of the best
    validation accuracy; NaN without data), ``grok_step`` (median over the seeds that grokked of the
    first step with validation accuracy ≥ 0.99; None if none did), ``grokked`` and ``n`` (seed
    counts). Empty when the grid lacks either key.
    """
    keys = _phase_keys(grid, fraction_key, strength_key)
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


def phase_diagram(sweep: SweepData, fraction_key: str, strength_key: str) -> list[ReportFigure]:
    """The grokking phase diagram of a sweep over ``fraction_key`` × ``strength_key``: one heatmap
    panel per point of the other grid keys, colour = best validation accuracy (mean over seeds),
    text = median grokking step (:func:`phase_data`). Empty when the grid lacks either key.

    An experiment whose sweeps have such a grid returns this from its ``figures`` hook
    (:mod:`rankdecay.experiments.grokking`).
    """
    grid = sweep.grid
    panels = phase_data(sweep.df, sweep.runs, grid, fraction_key, strength_key)
    if not panels:
        return []
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
    caption = (
        f"Colour: best validation accuracy (mean over seeds) for each {frac} × {strength}"
        + (f", one panel per {', '.join(arms)}" if arms else "")
        + f". Text: median grokking step (first evaluation with validation accuracy ≥ {GROK_THRESHOLD}) "
        "over the seeds that grokked, with their count when not all did; – : none grokked."
    )
    return [ReportFigure(fig, "phase_diagram", "Grokking phase diagram", caption)]


def _experiment_figures(
    df: Any, runs: Mapping[str, Run], grid: Sequence[str]
) -> list[ReportFigure]:
    """The figures the sweep's experiment supplies (``Experiment.figures``); none without a hook.

    An experiment that cannot be loaded here (a module no longer on the path) is named in a
    warning and its figures are left out; the generic figures are drawn all the same.
    """
    name = df.attrs.get("experiment")
    if not name:
        return []
    from .sweep import resolve_experiment

    try:
        exp, _ = resolve_experiment(str(name))
    except (RankdecayError, ImportError) as exc:
        warnings.warn(
            f"the sweep's experiment {name!r} cannot be loaded ({exc}); the report leaves out the "
            "figures it supplies — put its module on PYTHONPATH to include them.",
            stacklevel=3,
        )
        return []
    if exp.figures is None:
        return []
    return list(exp.figures(SweepData(df, runs, grid)))


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
th, td { text-align:left; padding:6px 8px; border-bottom:1px solid var(--line); vertical-align:top;
         overflow-wrap:anywhere; }
th { background:#f1f3f8; font-weight:600; position:sticky; top:0; overflow-wrap:normal; }
.nowrap { white-space:nowrap; overflow-wrap:normal; }
.nowrap-ish { overflow-wrap:normal; font-size:12.5px; }
td.num { text-align:right; font-variant-numeric:tabular-nums; overflow-wrap:normal;
         white-space:nowrap; }
.pt { color:var(--muted); }
.met { color:var(--ok); font-weight:600; } .missed { color:var(--bad); font-weight:600; }
.na { color:var(--na); }
.status-finished { color:var(--ok); } .status-failed { color:var(--bad); font-weight:600; }
.status-running, .status-interrupted, .status-pending { color:var(--na); }
figure { margin:0 0 26px; } figure img { max-width:100%; height:auto; border:1px solid var(--line);
         border-radius:6px; background:#fff; }
figcaption { color:var(--muted); font-size:13.5px; margin-top:6px; }
figcaption b { color:var(--fg); }
.scroll { max-height:520px; overflow-y:auto; border:1px solid var(--line); border-radius:6px; }
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


def _column_label(column: str) -> str:
    """A short header for a summary column: ``spectra.qk.effective_rank`` → ``W_QK eff. rank``,
    ``final.val_acc`` → ``val_acc``, ``verdict.met`` → ``targets met``."""
    m = re.fullmatch(r"spectra\.(\w+)\.(\w+)", column)
    if m:
        short = {"effective_rank": "eff. rank", "stable_rank": "stable rank"}
        return f"{_label(m.group(1))} {short.get(m.group(2), m.group(2))}"
    special = {"verdict.met": "targets met", "verdict.total": "claims", "wall_s": "wall s"}
    return special.get(column, column.removeprefix("final."))


def _header_html(label: str) -> str:
    """A header cell's text that may break after '.', '_' and '=' (and nowhere else)."""
    return re.sub(r"([._=])", r"\1<wbr>", _e(label))


def _table(
    records: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    scroll: bool = False,
    labels: Mapping[str, str] | None = None,
) -> str:
    labels = labels or {}
    head = "".join(f"<th>{_header_html(labels.get(c, c))}</th>" for c in columns)
    rows = []
    for rec in records:
        cells = []
        for c in columns:
            v = rec.get(c)
            if c == "status":
                cells.append(f'<td class="status-{_e(v)} nowrap">{_e(v)}</td>')
            elif c == "run":
                cells.append(f'<td class="nowrap-ish">{_header_html(str(v))}</td>')
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
    present = [c for c in cols if c in df.columns]
    # a column with nothing in it (e.g. no run has an error) only takes room
    return list(dict.fromkeys(c for c in present if df[c].notna().any() or c in ("run", "status")))


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
        raise RankdecayFileNotFoundError(
            f"{directory} does not exist; give the directory of a run or a sweep."
        )
    is_sweep = (directory / "sweep.json").exists()
    if not is_sweep and _is_model_dir(directory):
        raise RankdecayValueError(
            f"{directory} is a Hugging Face model directory, not a run or sweep; for its per-head "
            f"spectra analyze it instead (rankdecay.analyze({str(directory)!r}) or "
            f"`rankdecay analyze {directory}`)."
        )
    if not is_sweep and not is_run_dir(directory):
        if not any(is_run_dir(p) for p in directory.iterdir() if p.is_dir()):
            raise RankdecayValueError(
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


#: files that mark a directory as a saved model (Hugging Face ``save_pretrained`` and friends)
_MODEL_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "tf_model.h5",
    "flax_model.msgpack",
)


def _is_model_dir(directory: Path) -> bool:
    """A saved model rather than a run: weights files, or a ``config.json`` of a model
    (``model_type`` / ``architectures``) without the ``summary.json`` or ``metrics.jsonl`` of a run."""
    if (directory / "summary.json").exists() or (directory / "metrics.jsonl").exists():
        return False
    if any((directory / name).exists() for name in _MODEL_FILES):
        return True
    try:
        config = read_json(directory / "config.json", "config")
    except (RankdecayError, OSError, ValueError):
        return False
    return isinstance(config, dict) and ("model_type" in config or "architectures" in config)


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
    if run.gaps:
        chips.append("history has gaps: " + "; ".join(run.gaps)[:200])
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
    for extra in _experiment_figures(df, runs, grid):
        page.add(extra.figure, extra.name, extra.title, extra.caption)
    _fig_final_vs_param(page, df, grid)
    _fig_sweep_curves(page, df, runs, grid)
    _fig_sweep_spectra(page, df, runs, grid)
    agg_rows = verdict_summary(df, runs, grid)
    per_run = "".join(
        f"<details><summary>{_e(name)} — {_e(run.status)}{' — history has gaps' if run.gaps else ''}</summary>{_verdict_table(run.verdict)}</details>"
        for name, run in runs.items()
    )
    verdict_html = (
        _verdict_summary_table(agg_rows) if agg_rows else "<p>No run recorded a verdict.</p>"
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
            _table(records, columns, scroll=True, labels={c: _column_label(c) for c in columns})
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


def _heatmap(ax: Any, fig: Any, grid: list[list[float]], metric: str, title: str) -> None:
    """One layer × head heatmap; a constant grid is said in words ("all 32") instead.

    Cell labels (when the cells are big enough) are black on light and white on dark colours.
    """
    values = [v for row in grid for v in row if v == v]
    ax.set_title(title, fontsize=10)
    if values and max(values) - min(values) <= 1e-9 * max(1.0, abs(max(values))):
        text = f"{values[0]:.0f}" if metric == "rank" else f"{values[0]:.3g}"
        ax.text(0.5, 0.5, f"all {len(values)} heads:\n{text}", ha="center", va="center",
                fontsize=13, transform=ax.transAxes)  # fmt: skip
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_alpha(0.3)
        return
    n_rows, n_cols = len(grid), len(grid[0]) if grid else 0
    im = ax.imshow(grid, aspect="auto", cmap="viridis", origin="upper")
    fig.colorbar(im, ax=ax, shrink=0.85)
    if n_rows * n_cols <= 400 and n_cols <= 24:
        lo, hi = min(values), max(values)
        size = 7 if n_cols <= 16 else 6
        for i in range(n_rows):
            for j in range(n_cols):
                v = grid[i][j]
                if v != v:
                    continue
                dark = (v - lo) / (hi - lo) < 0.6  # viridis is dark below ~60 %
                ax.text(j, i, f"{v:.0f}" if metric == "rank" else f"{v:.1f}", ha="center",
                        va="center", fontsize=size, color="white" if dark else "black")  # fmt: skip
    step = max(1, math.ceil(n_cols / 16))
    ax.set_xticks(range(0, n_cols, step), [str(h) for h in range(0, n_cols, step)], fontsize=7)
    ax.set_yticks(range(n_rows), [str(r) for r in range(n_rows)], fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")


def _fig_head_spectra(page: _Page, records: Sequence[Mapping[str, Any]], rtol: float) -> None:
    """Per circuit: every head's singular values σᵢ (log scale) and σᵢ/σ₁, colour = layer."""
    circuits = [c for c in ("qk", "ov") if any(r["circuit"] == c for r in records)]
    recs = [r for r in records if isinstance(r.get("singular_values"), list)]
    if not circuits or not recs:
        return
    import matplotlib

    Figure = _mpl()
    layers = sorted({int(r["layer"]) for r in recs})
    cmap = matplotlib.colormaps["viridis"]
    norm = matplotlib.colors.Normalize(vmin=min(layers), vmax=max(max(layers), min(layers) + 1))
    fig = Figure(figsize=(11, 3.7 * len(circuits)), layout="constrained")
    axes = fig.subplots(len(circuits), 2, squeeze=False)
    for row, circuit in enumerate(circuits):
        for col, normalized in enumerate((False, True)):
            ax = axes[row][col]
            for layer in layers:
                xs: list[float] = []
                ys: list[float] = []
                for r in recs:
                    if r["circuit"] != circuit or int(r["layer"]) != layer:
                        continue
                    s = [float(x) for x in r["singular_values"]]
                    if not s or s[0] <= 0:
                        continue
                    scale = s[0] if normalized else 1.0
                    xs += [*range(1, len(s) + 1), math.nan]
                    ys += [max(x / scale, 1e-300) for x in s] + [math.nan]
                ax.plot(xs, ys, color=cmap(norm(layer)), lw=0.9, alpha=0.75)
            if normalized:
                ax.axhline(rtol, color="crimson", ls="--", lw=0.9, label=f"rtol {rtol:g}")
                ax.legend(fontsize=8, loc="lower left")
            ax.set_yscale("log")
            _tame_axis(ax, [y for line in ax.get_lines() for y in line.get_ydata() if y == y])
            _x_plain(ax, integer=True)
            ax.set_xlabel("index i")
            ax.set_ylabel("σᵢ / σ₁" if normalized else "σᵢ")
            what = "normalized σᵢ / σ₁" if normalized else "singular values σᵢ"
            ax.set_title(f"{_label(circuit)} — {what}", fontsize=10)
            ax.grid(alpha=0.3)
        mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(mappable, ax=list(axes[row]), label="layer", shrink=0.9)
    page.add(
        fig,
        "heads_spectra",
        "Singular-value spectrum of every head",
        "One line per head: the singular values σ₁ ≥ σ₂ ≥ … of its W_QK = W_Q W_Kᵀ and "
        "W_OV = W_V W_O (left, log scale) and the same divided by σ₁ (right), coloured by layer. "
        f"Values under the dashed line (rtol = {rtol:g}) do not count towards the rank.",
    )


def analysis_html(report: Any, path: str | Path, figures_dir: str | Path | None = None) -> Path:
    """Write a self-contained HTML page for a :class:`rankdecay.analyze.SpectralReport`.

    Figures (embedded as PNG; nothing is written beside the page unless ``figures_dir`` is given,
    then each figure also goes there as PNG and SVG): every head's singular-value spectrum, raw
    and normalized by σ₁; per circuit (QK, OV) and metric (rank, effective rank, stable rank) a
    layer × head heatmap, or the words "all N heads: v" when every head has the same value;
    ½(‖A‖²+‖B‖²) against ‖ABᵀ‖_* per head (points on the diagonal are balanced factorizations).
    Then the per-layer table of means over heads with every metric.
    """
    path = Path(path)
    Figure = _mpl()
    records = list(report.records)
    if not records:
        raise RankdecayValueError(
            "the spectral report has no records; analyze a model with attention layers."
        )
    model = dict(getattr(report, "model", {}) or {})
    rtol = float(model.get("rtol", records[0].get("rtol", 1e-2)))
    circuits = [c for c in ("qk", "ov") if any(r["circuit"] == c for r in records)]
    layers = sorted({int(r["layer"]) for r in records})
    heads = sorted({int(r["head"]) for r in records})
    page = _Page(Path(figures_dir) if figures_dir is not None else None)
    _fig_head_spectra(page, records, rtol)
    fig = Figure(
        figsize=(4.4 * 3, 0.32 * len(layers) * len(circuits) + 2.4 * len(circuits)),
        layout="constrained",
    )
    axes = fig.subplots(len(circuits), 3, squeeze=False)
    for r, circuit in enumerate(circuits):
        for c, metric in enumerate(_RANK_METRICS):
            grid = [[math.nan] * len(heads) for _ in layers]
            for rec in records:
                if rec["circuit"] == circuit:
                    grid[layers.index(int(rec["layer"]))][heads.index(int(rec["head"]))] = float(
                        rec[metric]
                    )
            _heatmap(axes[r][c], fig, grid, metric, f"{_label(circuit)} — {_METRIC_LABEL[metric]}")
    page.add(
        fig,
        "heads_rank",
        "Rank per head",
        f"Per layer (rows) and head (columns): numerical rank #{{σᵢ > {rtol:g}·σ₁}}, effective rank "
        "exp(−Σ pᵢ log pᵢ) and stable rank Σσᵢ²/σ₁² of W_QK = W_Q W_Kᵀ and W_OV = W_V W_O. "
        "A panel whose value is the same for every head says so instead of drawing a heatmap.",
    )
    if all("norm_gap" in r and "nuclear_norm" in r for r in records):
        fig = Figure(figsize=(5.2 * len(circuits), 4.2), layout="constrained")
        axes = fig.subplots(1, len(circuits), squeeze=False)[0]
        for ax, circuit in zip(axes, circuits):
            recs = [r for r in records if r["circuit"] == circuit]
            x = [float(r["nuclear_norm"]) for r in recs]
            y = [float(r["nuclear_norm"]) + float(r["norm_gap"]) for r in recs]
            sc = ax.scatter(x, y, c=[int(r["layer"]) for r in recs], cmap="viridis", s=18)
            hi = max(x + y) if x else 1.0
            ax.plot([0, hi], [0, hi], color="0.4", ls="--", lw=1, label="balanced: equal")
            _x_plain(ax)
            _tame_axis(ax, [0.0, *y])
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
    table_rows = [
        {
            "layer": s["layer"],
            "name": s.get("name", ""),
            "circuit": str(s["circuit"]).upper(),
            "heads": s.get("n_heads"),
            f"rank@{rtol:g} mean [min–max]": (
                f"{s['rank']:.1f} [{s['rank_min']}–{s['rank_max']}]"
                if s["rank_min"] != s["rank_max"]
                else str(s["rank_min"])
            ),
            **{
                _SUMMARY_LABEL[m]: s[m]
                for m in _SUMMARY_LABEL
                if m in s and isinstance(s[m], (int, float))
            },
        }
        for s in summary_rows
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
    if model.get("fold_norm"):
        chips.append("norm gains folded")
    notes = model.get("notes") or []
    if isinstance(notes, Mapping):
        notes = list(dict.fromkeys(n for ns in notes.values() for n in ns))
    note_html = "".join(f"<li>{_e(n)}</li>" for n in notes) if isinstance(notes, list) else ""
    columns = list(table_rows[0]) if table_rows else []
    sections = [
        (
            "Per layer (mean over heads)",
            _table(table_rows, columns, scroll=True) if columns else "",
        ),
        (
            "Figures",
            _figures_html(page, _relpath(Path(figures_dir), path.parent) if figures_dir else None),
        ),
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


#: per-layer table columns of the model report: summary key → header
_SUMMARY_LABEL = {
    "effective_rank": "eff. rank",
    "stable_rank": "stable rank",
    "nuclear_norm": "nuclear",
    "frobenius_norm": "Frobenius",
    "spectral_norm": "σ₁",
    "balance": "balance",
    "norm_gap": "norm gap",
}
