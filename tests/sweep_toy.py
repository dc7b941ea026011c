"""A tiny, real experiment for the sweep/report tests: L2-regularized matrix factorization.

Gradient descent on ½‖A·Bᵀ − D‖_F² + (λ/2)(‖A‖² + ‖B‖²) with A, B ∈ ℝ^{n×n}, D = diag(1/n … 1),
written in the run-directory format of :mod:`rankdecay.runio` (metrics, spectra via
:func:`rankdecay.spectra.factored_svdvals`, summary with a verdict, JSON checkpoint every step so a
killed run resumes exactly). ``mode="raise"`` raises inside the run, ``mode="crash"`` kills its process; ``sleep`` slows each step down
so tests can kill a sweep mid-way. Importable by spawned workers as ``sweep_toy:EXPERIMENT``.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rankdecay.config import to_dict
from rankdecay.experiments import Experiment, ReportFigure, SweepData
from rankdecay.report import phase_diagram
from rankdecay.runio import append_jsonl, atomic_write_json, read_json, read_jsonl, truncate_jsonl
from rankdecay.spectra import balance, factored_svdvals, norm_gap, spectral_metrics


@dataclass
class ToyConfig:
    seed: int = 0
    n: int = 5
    steps: int = 60
    lr: float = 0.2
    weight_decay: float = 0.1
    log_every: int = 10
    sleep: float = 0.0
    fraction: float = 1.0  # fraction of entries observed (the loss sees only those)
    mode: str = "ok"  # ok | raise | crash (the worker process dies)


def _target(n: int) -> torch.Tensor:
    return torch.diag(torch.arange(1, n + 1, dtype=torch.float64) / n)


def run(
    cfg: ToyConfig, run_dir: Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        run_dir / "config.json",
        {"experiment": "toy", "preset": "quick", "seed": cfg.seed, "config": to_dict(cfg)},
    )
    state_path = run_dir / "checkpoint" / "state.json"
    if resume and state_path.exists():
        state = read_json(state_path)
        start = state["step"]
        A = torch.tensor(state["A"], dtype=torch.float64)
        B = torch.tensor(state["B"], dtype=torch.float64)
        truncate_jsonl(run_dir / "metrics.jsonl", lambda r: r["step"] <= start)
        truncate_jsonl(run_dir / "spectra.jsonl", lambda r: r["step"] <= start)
        (run_dir / "resumed_from.txt").write_text(str(start))
    else:
        g = torch.Generator().manual_seed(cfg.seed)
        A = 0.5 * torch.randn(cfg.n, cfg.n, generator=g, dtype=torch.float64)
        B = 0.5 * torch.randn(cfg.n, cfg.n, generator=g, dtype=torch.float64)
        start = 0
    atomic_write_json(
        run_dir / "summary.json", {"status": "running", "error": None, "final": {}, "verdict": []}
    )
    D = _target(cfg.n)
    lam = cfg.weight_decay
    mask = (
        torch.rand(cfg.n, cfg.n, generator=torch.Generator().manual_seed(1000 + cfg.seed))
        < cfg.fraction
    ).double()
    held_out = (
        (1 - mask).bool() if mask.sum() < mask.numel() else torch.ones_like(mask, dtype=torch.bool)
    )

    def log(step: int) -> None:
        R = (A @ B.T - D) * mask
        loss = 0.5 * float((R**2).sum()) + 0.5 * lam * float((A**2).sum() + (B**2).sum())
        val_acc = float(((A @ B.T - D).abs()[held_out] < 0.25).double().mean())
        append_jsonl(
            run_dir / "metrics.jsonl",
            [
                {
                    "step": step,
                    "loss": loss,
                    "val_loss": 0.5 * float((R**2).sum()),
                    "accuracy": float((R.abs() < 0.05).double().mean()),
                    "val_acc": val_acc,
                }
            ],
        )
        s = factored_svdvals(A, B)
        rec = {k: float(v) for k, v in spectral_metrics(s).items()}
        rec.update(balance=float(balance(A, B)), norm_gap=float(norm_gap(A, B)))
        append_jsonl(
            run_dir / "spectra.jsonl",
            [
                {
                    "step": step,
                    "kind": "circuit",
                    "layer": 0,
                    "head": 0,
                    "circuit": c,
                    **rec,
                    "singular_values": s.tolist(),
                }
                for c in ("qk", "ov")
            ],
        )

    if start == 0:
        log(0)
    for step in range(start + 1, cfg.steps + 1):
        if cfg.mode == "raise" and step == 3:
            raise RuntimeError("toy failure requested by mode=raise")
        if cfg.mode == "crash" and step == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        R = (A @ B.T - D) * mask
        gA = R @ B + lam * A
        gB = R.T @ A + lam * B
        A, B = A - cfg.lr * gA, B - cfg.lr * gB
        if step % cfg.log_every == 0 or step == cfg.steps:
            log(step)
        atomic_write_json(state_path, {"step": step, "A": A.tolist(), "B": B.tolist()})
        if cfg.sleep:
            time.sleep(cfg.sleep)
    last = list(read_jsonl(run_dir / "spectra.jsonl"))[-1]
    final_metrics = list(read_jsonl(run_dir / "metrics.jsonl"))[-1]
    s = torch.tensor(last["singular_values"])
    expected = torch.clamp(torch.diagonal(D) - lam, min=0).sort(descending=True).values
    err = float((s - expected).abs().max())
    summary = {
        "status": "finished",
        "error": None,
        "final": {
            "loss": final_metrics["loss"],
            "accuracy": final_metrics["accuracy"],
            "rank": last["rank"],
            "sv_error": err,
        },
        "verdict": [
            {
                "claim": "σ(ABᵀ) = max(d − λ, 0)",
                "target": "error ≤ 0.05",
                "measured": f"{err:.3g}",
                "met": err <= 0.05,
            }
        ],
    }
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def exit_job(tasks: Any, threads: int | None) -> list[dict[str, Any]]:
    """A job function of ``LocalExecutor.run_jobs`` whose worker process dies at once (exit 7)."""
    os._exit(7)


def _figures(sweep: SweepData) -> list[ReportFigure]:
    """A fraction × weight-decay grid gets the grokking phase diagram (what report tests read)."""
    if {"fraction", "weight_decay"} <= set(sweep.grid):
        return phase_diagram(sweep, "fraction", "weight_decay")
    return []


EXPERIMENT = Experiment(
    name="toy",
    description="tiny matrix factorization for tests",
    config_cls=ToyConfig,
    run=run,
    presets={"quick": {}, "slow": {"sleep": 0.04, "steps": 20}, "nogrid": {}},
    grids={"quick": {"weight_decay": [0.1, 0.2]}, "slow": {"weight_decay": [0.1, 0.2]}},
    seeds={"quick": 2, "slow": 2},
    figures=_figures,
)
