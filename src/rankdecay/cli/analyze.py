"""``rankdecay analyze SOURCE``: per-head spectra of a model as a table (and JSON / CSV / HTML).

The analysis is :func:`rankdecay.analyze.analyze`; this module parses the arguments and draws the
rich tables: by default per layer × circuit (mean over heads) in at most 80 columns, ``--heads``
one row per head, ``--wide`` every metric of :data:`rankdecay.analyze.METRICS`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import RankdecayError
from . import show_warning, stdout_console

if TYPE_CHECKING:  # pragma: no cover
    from ..analyze import SpectralReport

__all__ = [
    "NARROW_METRICS",
    "configure_parser",
    "render_adapter_table",
    "render_table",
    "run_cli",
]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", metavar="SOURCE", help="Hugging Face model directory, or the alias 'minilm'"
    )
    parser.add_argument(
        "--heads", action="store_true", help="one row per head instead of per layer"
    )
    parser.add_argument(
        "--circuits", default="qk,ov", help="circuits to analyse: qk, ov or qk,ov (default)"
    )
    parser.add_argument(
        "--rtol", type=float, default=None, help="rank = #{σ > rtol·σ₁} (default 1e-2)"
    )
    parser.add_argument(
        "--fold-norm", action="store_true", help="fold the preceding norm's gain into W_Q, W_K, W_V"
    )
    parser.add_argument(
        "--json", metavar="FILE", help="write the full report (all singular values) as JSON"
    )
    parser.add_argument(
        "--csv", metavar="FILE", help="write one row per layer × head × circuit as CSV"
    )
    parser.add_argument(
        "--html", metavar="FILE", help="write an HTML report (needs rankdecay.report)"
    )
    parser.add_argument(
        "--wide",
        action="store_true",
        help="all columns (adds heads, nuclear, Frobenius, balance; ~120 columns wide)",
    )
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="an attention-like module that is not extracted is an error (default: a warning)",
    )
    parser.add_argument(
        "--lora",
        dest="adapters",
        action="store_true",
        help="report each LoRA adapter's ΔW = s·B·A (a PEFT adapter directory; no base model needed)",
    )
    from ..threads import add_threads_argument

    add_threads_argument(parser)


def _fmt(x: float, digits: int = 3) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.{digits + 1}g}"


def _header(report: SpectralReport, wide: bool = True) -> str:
    from rich.markup import escape

    m = report.model
    heads = m.get("n_heads")
    kv = m.get("n_kv_heads")
    parts = [
        f"{m.get('source') or m.get('model_class')}: {m.get('model_class')}",
        f"{m.get('n_layers')} layers × {heads} heads"
        + (f" ({kv} kv heads, GQA)" if m.get("gqa") else ""),
        f"d_model {m.get('d_model')}, d_head {m.get('d_head')}"
        + (f", d_v {m['d_v']}" if "d_v" in m else ""),
    ]
    flags = []
    if m.get("rotary"):
        flags.append("rotary (QK at offset 0)")
    if m.get("fold_norm"):
        flags.append("norm gains folded")
    seen = dict.fromkeys(
        k
        for f in (m.get("flags") or {}).values()
        for k in f
        if k not in ("rotary", "cross_attention")
    )
    flags += [k.replace("_", " ") for k in seen]
    if m.get("attention_kinds"):
        flags.append(f"{len(m['attention_kinds'])} cross-attention layers")
    lines = [" · ".join(parts + flags)] if wide else [parts[0], " · ".join(parts[1:] + flags)]
    if wide:
        lines.append(
            f"rank = #{{σ > rtol·σ₁}} at rtol = {report.rtol:g} · singular values in float64 from the factors · "
            "QK = W_Q W_Kᵀ, OV = W_V W_O"
        )
    else:
        lines.append(
            f"rank = #{{σ > rtol·σ₁}} at rtol = {report.rtol:g} · σ in float64 from the factors"
        )
        lines.append("QK = W_Q W_Kᵀ, OV = W_V W_O · more columns: --wide")
    return escape("\n".join(lines))


#: metrics of the narrow (80-column) table; ``--wide`` shows all of :data:`METRICS`
NARROW_METRICS: tuple[str, ...] = ("effective_rank", "stable_rank", "spectral_norm", "norm_gap")
_LABELS = {
    "effective_rank": "eff. rank",
    "stable_rank": "stable rank",
    "nuclear_norm": "nuclear",
    "frobenius_norm": "frobenius",
    "spectral_norm": "σ₁",
    "balance": "balance",
    "norm_gap": "norm gap",
}


def _narrow_table(report: SpectralReport, per_head: bool) -> Any:
    """The default table: at most 9 columns of at most 12 characters, so any report fits 80
    columns uncut (numbers are at most 9 characters, see :func:`_fmt`). The header lines go above
    the table (a rich Group), wrapped at the console's width rather than the table's."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from ..analyze import CIRCUITS

    table = Table(
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
        pad_edge=False,
    )
    gqa = bool(report.model.get("gqa"))
    cols = ["layer", "head", *(["kv"] if gqa else [])] if per_head else ["layer"]
    rank_col = f"rank\n@{report.rtol:g}" if per_head else f"rank@{report.rtol:g}"
    cols += ["circuit", rank_col, *(_LABELS[m] for m in NARROW_METRICS)]
    for col in cols:
        table.add_column(col, justify="left" if col == "circuit" else "right", no_wrap=False)
    if per_head:
        for rec in sorted(
            report.records, key=lambda r: (r["layer"], CIRCUITS.index(r["circuit"]), r["head"])
        ):
            row = [str(rec["layer"]), str(rec["head"]), *([str(rec["kv_head"])] if gqa else [])]
            row += [rec["circuit"].upper(), str(rec["rank"])]
            table.add_row(*row, *(_fmt(rec[m]) for m in NARROW_METRICS))
        return Group(Text.from_markup(_header(report, wide=False)), table)
    last_layer = None
    for row in report.summary():
        if last_layer is not None and row["layer"] != last_layer and len(report.circuits) > 1:
            table.add_section()
        last_layer = row["layer"]
        lo, hi = row["rank_min"], row["rank_max"]
        rank = str(lo) if lo == hi else f"{row['rank']:.1f} \\[{lo}–{hi}]"
        table.add_row(
            str(row["layer"]),
            row["circuit"].upper(),
            rank,
            *(_fmt(row[m]) for m in NARROW_METRICS),
        )
    return Group(Text.from_markup(_header(report, wide=False)), table)


def render_table(report: SpectralReport, per_head: bool = False, wide: bool = False) -> Any:
    """A rich renderable of the report: per layer × circuit means (default) or per head.

    The default (narrow) layout fits 80 columns: rank, effective rank, stable rank, σ₁ and norm
    gap; a layer's rank shows as one number when every head has it, else ``mean [min–max]``.
    ``wide=True`` adds the head count, nuclear and Frobenius norms and balance (~120 columns).
    """
    from rich.table import Table

    from ..analyze import CIRCUITS, METRICS

    if not wide:
        return _narrow_table(report, per_head)
    table = Table(title=_header(report), title_justify="left", header_style="bold")
    if per_head:
        cols = ["layer", "head"]
        if report.model.get("gqa"):
            cols.append("kv")
        cols += [
            "circuit",
            f"rank@{report.rtol:g}",
            "eff. rank",
            "stable rank",
            "nuclear",
            "frobenius",
            "σ₁",
            "balance",
            "norm gap",
        ]
        for col in cols:
            table.add_column(col, justify="left" if col == "circuit" else "right")
        for rec in sorted(
            report.records, key=lambda r: (r["layer"], CIRCUITS.index(r["circuit"]), r["head"])
        ):
            row = [str(rec["layer"]), str(rec["head"])]
            if report.model.get("gqa"):
                row.append(str(rec["kv_head"]))
            row += [rec["circuit"].upper(), str(rec["rank"])]
            row += [_fmt(rec[m]) for m in METRICS[1:]]
            table.add_row(*row)
        return table
    cols = [
        "layer",
        "circuit",
        "heads",
        f"rank@{report.rtol:g} mean \\[min–max]",
        "eff. rank",
        "stable rank",
        "nuclear",
        "frobenius",
        "σ₁",
        "balance",
        "norm gap",
    ]
    for col in cols:
        table.add_column(col, justify="left" if col == "circuit" else "right")
    last_layer = None
    for row in report.summary():
        if last_layer is not None and row["layer"] != last_layer and len(report.circuits) > 1:
            table.add_section()
        last_layer = row["layer"]
        table.add_row(
            str(row["layer"]),
            row["circuit"].upper(),
            str(row["n_heads"]),
            f"{row['rank']:.1f} \\[{row['rank_min']}–{row['rank_max']}]",
            *[_fmt(row[m]) for m in METRICS[1:]],
        )
    return table


def render_adapter_table(records: Iterable[dict[str, Any]], info: Mapping[str, Any]) -> Any:
    """A rich Table with one row per adapter and module."""
    from rich.markup import escape
    from rich.table import Table

    rtol = float(info.get("rtol", 1e-2))
    title = escape(
        f"{info.get('source') or info.get('model_class')}: LoRA adapters ΔW = s·B·A · "
        f"rank = #{{σ > rtol·σ₁}} at rtol = {rtol:g} · σ in float64 from the factors · "
        "balance ‖AAᵀ − BᵀB‖_F"
    )
    table = Table(title=title, title_justify="left", header_style="bold")
    cols = [
        "layer",
        "module",
        "adapter",
        "r",
        "s",
        f"rank@{rtol:g}",
        "eff. rank",
        "nuclear",
        "σ₁",
        "balance",
        "norm gap",
    ]
    for col in cols:
        table.add_column(col, justify="left" if col in ("module", "adapter") else "right")
    for rec in records:
        table.add_row(
            str(rec["layer"]),
            escape(str(rec["name"])),
            escape(str(rec["adapter"])),
            str(rec["lora_rank"]),
            _fmt(float(rec["scaling"])),
            str(rec["rank"]),
            *[
                _fmt(float(rec[m]))
                for m in ("effective_rank", "nuclear_norm", "spectral_norm", "balance", "norm_gap")
            ],
        )
    return table


def _write_html(report: SpectralReport, path: str) -> None:
    try:
        from ..report import analysis_html
    except ImportError as exc:
        raise RankdecayError(
            f"--html needs rankdecay's report extra, which is missing here ({exc}); "
            "install it with `pip install 'rankdecay[plot]'` or drop --html."
        ) from None
    analysis_html(report, path)


def run_cli(args: argparse.Namespace) -> int:

    from ..analyze import analyze
    from ..spectra import DEFAULT_RTOL

    progress = False if args.no_progress else None
    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        report = analyze(
            args.source,
            rtol=DEFAULT_RTOL if args.rtol is None else args.rtol,
            circuits=args.circuits,  # "qk,ov": analyze checks it before loading anything
            fold_norm=args.fold_norm,
            progress=progress,
            adapters=getattr(args, "adapters", False),
            strict=getattr(args, "strict", False),
        )
    console = stdout_console(width=None if sys.stdout.isatty() else 160, soft_wrap=False)
    if report.model.get("kind") == "lora_adapters":
        console.print(render_adapter_table(report.records, report.model))
    else:
        console.print(render_table(report, per_head=args.heads, wide=args.wide))
    notes = report.model.get("notes") or {}
    distinct = list(dict.fromkeys(n for ns in notes.values() for n in ns))
    for note in distinct[:6]:
        console.print(f"note: {note}", style="dim", highlight=False)
    if len(distinct) > 6:
        console.print(
            f"note: … {len(distinct) - 6} more notes in the --json report",
            style="dim",
            highlight=False,
        )
    if args.json:
        path = report.to_json(args.json)
        console.print(f"wrote {path}", highlight=False)
    if args.csv:
        path = report.to_csv(args.csv)
        console.print(f"wrote {path}", highlight=False)
    if args.html:
        _write_html(report, args.html)
        console.print(f"wrote {args.html}", highlight=False)
    return 0
