"""Whole-model spectral analysis on a GPT-2-small-shaped model: factored vs dense vs TransformerLens.

Shape: 12 layers × 12 heads, d_model = 768, d_head = 64, both circuits → 288 products
A·Bᵀ with A, B ∈ ℝ^{768×64}, random weights, float64 compute.

Measured (medians over repeats, wall clock, this machine's torch thread count):
  1. ``rankdecay.analyze(model)`` on a real transformers ``GPT2Model`` (GPT2Config() defaults,
     random init) — the whole pipeline: adapter, float64 cast, one batched factored SVD, every
     metric, 288 records;
  2. the core call ``factored_svdvals`` on the stacked (288, 768, 64) factors;
  3. baseline: dense ``torch.linalg.svdvals`` of the materialized 768×768 float64 products
     (batched per layer, 24 batches of 12);
  4. baseline, if ``transformer_lens`` is importable: ``FactoredMatrix(A, Bᵀ).svd()`` on the same
     float64 stack (a fresh FactoredMatrix per repeat: it caches its SVD), and our
     ``factored_svd`` (U, S, V as well) for a like-for-like ratio.
Every method's singular values are checked against the dense ones (max relative error printed).

Hardware bound (printed first, interleaved repeats, medians): the work of the factored SVD counted
as Householder QR of every factor, Σ (2·d·r² − 2r³/3), plus per product the r×r core 2r³ and
its singular values (8/3)r³ — 3.9 GFLOP for the 288 products — timed against one float64 GEMM
of the same FLOPs (n×n with 2n³ equal to it) in the same run: ratio = time / GEMM time. The GEMM
is timed twice, through torch (its MKL) and through numpy (its OpenBLAS), each on the same
number of threads, and the bound is the faster of the two: on AMD CPUs torch's MKL runs float64
GEMM at only about 70 % of OpenBLAS's rate, so torch's own GEMM would understate the bound. The
previous kernel (``torch.linalg.qr(mode="r")`` + ``torch.cat(...).to(float64)``) is timed beside it.

Run:  python benchmarks/bench_spectra.py [--threads 1] [--repeats 7] [--dense-repeats 3] [--json FILE]
      python benchmarks/bench_spectra.py --bound-only     # just the kernel/analyze vs GEMM section
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

import rankdecay.spectra as spectra_mod
from rankdecay.analyze import analyze
from rankdecay.heads import attention_heads
from rankdecay.spectra import (
    factored_svd,
    factored_svdvals,
    gram,
    gram_kernel,
    gram_svdvals,
    r_factor,
)

LAYERS, HEADS, D_MODEL, D_HEAD = 12, 12, 768, 64


def _timeit(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float], Any]:
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def _limit_numpy_threads(n: int) -> str:
    """Give numpy's BLAS (OpenBLAS) ``n`` threads like torch, so both GEMMs use the same cores."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return "threads not set (install threadpoolctl)"
    threadpool_limits(limits=n, user_api="blas")
    info = [d for d in threadpool_info() if d["user_api"] == "blas"]
    return ", ".join(
        f"{d['internal_api']} {d.get('version')} {d['num_threads']} threads" for d in info
    )


def _gpt2_small() -> nn.Module:
    """A GPT-2-small-shaped model with random weights (transformers' GPT2Model if available)."""
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        cfg = transformers.GPT2Config(n_embd=D_MODEL, n_layer=LAYERS, n_head=HEADS)
        return transformers.GPT2Model(cfg).eval()
    except ImportError:  # pragma: no cover - fallback without the hf extra
        return nn.Transformer(D_MODEL, HEADS, LAYERS, 0, 4 * D_MODEL, batch_first=True)


def _rel_err(s: torch.Tensor, ref: torch.Tensor) -> float:
    """Max over the products checked against the dense SVD of max_i |σᵢ − σᵢ_dense| / σ₁_dense."""
    s = s[: ref.shape[0]]
    return float(((s - ref).abs().amax(-1) / ref[..., 0]).max())


def _kernel_flops(n_products: int, d: int, r: int) -> float:
    """Householder QR of both factors + r×r core product + its singular values, per product."""
    qr = 2 * d * r * r - 2 * r**3 / 3
    return n_products * (2 * qr + 2 * r**3 + 8 * r**3 / 3)


def _old_kernel(pieces_a: list[torch.Tensor], pieces_b: list[torch.Tensor]) -> torch.Tensor:
    """The kernel before issue 14: cat + cast, then torch.linalg.qr(mode="r") and svdvals."""
    A = torch.cat(pieces_a).to(torch.float64)
    B = torch.cat(pieces_b).to(torch.float64)
    R_A = torch.linalg.qr(A, mode="r")[1]
    R_B = torch.linalg.qr(B, mode="r")[1]
    return torch.linalg.svdvals(R_A @ R_B.mT)


def _cholesky_qr2_svdvals(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """CholeskyQR2 R factors (R₁ = chol(AᵀA)ᵀ, Q₁ = A R₁⁻¹, R = chol(Q₁ᵀQ₁)ᵀ R₁), timed as the
    alternative to Householder QR (not used by rankdecay: slower here, see docs/benchmarks.md)."""

    def r2(X: torch.Tensor) -> torch.Tensor:
        R1 = torch.linalg.cholesky(X.mT @ X).mT
        Q1 = torch.linalg.solve_triangular(R1, X, upper=True, left=False)
        return torch.linalg.cholesky(Q1.mT @ Q1).mT @ R1

    return torch.linalg.svdvals(r2(A) @ r2(B).mT)


def _r_route(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """The kernel before the Gram eigenvalue route: σ(R_A R_Bᵀ), R from ``r_factor``."""
    return torch.linalg.svdvals(r_factor(A) @ r_factor(B).mT)


def _householder_only(fn: Callable[[], Any]) -> Any:
    """``fn()`` with every σ by the R route and every R by Householder QR (the kernel before
    the Gram routes)."""
    saved = spectra_mod.CHOLESKY_MAX_COND, spectra_mod.GRAM_MAX_Q
    spectra_mod.CHOLESKY_MAX_COND = spectra_mod.GRAM_MAX_Q = 0.0
    try:
        return fn()
    finally:
        spectra_mod.CHOLESKY_MAX_COND, spectra_mod.GRAM_MAX_Q = saved


@contextlib.contextmanager
def _without_native() -> Iterator[None]:
    """The spectra as on a machine without the native kernel (no compiler, no AVX-512)."""
    saved, spectra_mod._native = spectra_mod._native, None
    try:
        yield
    finally:
        spectra_mod._native = saved


def _blas_grams(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AᵀA, BᵀB through numpy's BLAS (``syrk``), as :func:`gram` does without the native kernel."""
    with _without_native():
        return gram(A), gram(B)


def _blas_svdvals(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    with _without_native():
        return factored_svdvals(A, B, dtype=None)


def bound_section(model: nn.Module, repeats: int) -> dict[str, Any]:
    """factored_svdvals, analyze and the old kernel vs a GEMM of the same FLOPs, interleaved."""
    with torch.no_grad():
        layers = attention_heads(model)
        pieces = [lh.factors(c) for lh in layers for c in ("qk", "ov")]  # model dtype, views
        A = torch.cat([a for a, _ in pieces]).double().contiguous()
        B = torch.cat([b for _, b in pieces]).double().contiguous()
    n, d, r = A.shape
    flops = _kernel_flops(n, d, r)
    g = round((flops / 2) ** (1 / 3))
    R_A, R_B = r_factor(A), r_factor(B)
    G_A, G_B = gram(A), gram(B)
    ref = factored_svdvals(A, B, dtype=None)
    accepted = int(gram_svdvals(G_A, G_B)[1].sum())
    X = torch.randn(g, g, dtype=torch.float64)
    Y = torch.randn(g, g, dtype=torch.float64)
    Xn, Yn = X.numpy(), Y.numpy()
    fns: dict[str, Callable[[], Any]] = {
        "gemm_torch": lambda: X @ Y,
        "gemm_numpy": lambda: Xn @ Yn,
        "factored_svdvals": lambda: factored_svdvals(A, B, dtype=None),
        "factored_svdvals_blas": lambda: _blas_svdvals(A, B),  # without the native kernel
        "r_route": lambda: _r_route(A, B),
        "householder_only": lambda: _householder_only(lambda: factored_svdvals(A, B, dtype=None)),
        "old_kernel": lambda: _old_kernel([a for a, _ in pieces], [b for _, b in pieces]),
        "analyze": lambda: analyze(model),
        "analyze_householder": lambda: _householder_only(lambda: analyze(model)),
        "cholesky_qr2": lambda: _cholesky_qr2_svdvals(A, B),
        "gram_only": lambda: (gram(A), gram(B)),  # the one d-sized step of the Gram routes
        "gram_blas": lambda: _blas_grams(A, B),  # the same through numpy's syrk (the fallback)
        "gram_eig_only": lambda: gram_svdvals(G_A, G_B),  # Cholesky, Lᵀ G_A L, eigvalsh
        "qr_only": lambda: (r_factor(A), r_factor(B)),
        "core_svd_only": lambda: torch.linalg.svdvals(R_A @ R_B.mT),
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():  # warm-up
            fn()
        for _ in range(repeats):  # interleaved: load changes hit every method alike
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    med["gemm"] = min(med["gemm_torch"], med["gemm_numpy"])  # the CPU's rate: the faster library
    gemm_by = "numpy/OpenBLAS" if med["gemm_numpy"] < med["gemm_torch"] else "torch/MKL"
    out: dict[str, Any] = {
        "flops": flops,
        "gemm_n": g,
        "gemm_gflops_per_s": 2 * g**3 / med["gemm"] / 1e9,
        "gemm_library": gemm_by,
        "ratio_vs_torch_gemm": med["factored_svdvals"] / med["gemm_torch"],
        **{f"{k}_s": v for k, v in med.items()},
        **{f"{k}_all_s": v for k, v in times.items()},
        "ratio_factored_svdvals": med["factored_svdvals"] / med["gemm"],
        "ratio_factored_svdvals_blas": med["factored_svdvals_blas"] / med["gemm"],
        "ratio_old_kernel": med["old_kernel"] / med["gemm"],
        "ratio_householder_only": med["householder_only"] / med["gemm"],
        "ratio_analyze": med["analyze"] / med["gemm"],
        "ratio_analyze_householder": med["analyze_householder"] / med["gemm"],
        "ratio_cholesky_qr2": med["cholesky_qr2"] / med["gemm"],
        "ratio_qr_only": med["qr_only"] / med["gemm"],
        "ratio_core_svd_only": med["core_svd_only"] / med["gemm"],
        "ratio_gram_only": med["gram_only"] / med["gemm"],
        "ratio_gram_blas": med["gram_blas"] / med["gemm"],
        "gram_kernel": gram_kernel(r),
        "ratio_r_route": med["r_route"] / med["gemm"],
        "ratio_gram_eig_only": med["gram_eig_only"] / med["gemm"],
        "gram_route_products": accepted,
        "r_route_max_rel_diff": _rel_err(_r_route(A, B), ref),
    }
    print(
        f"bound: {flops / 1e9:.2f} GFLOP (Householder QR of {2 * n} factors {d}×{r} + cores); "
        f"GEMM {g}×{g} of the same FLOPs: {med['gemm'] * 1e3:.1f} ms = {out['gemm_gflops_per_s']:.1f} GFLOP/s "
        f"({gemm_by}; torch {med['gemm_torch'] * 1e3:.1f} ms, numpy {med['gemm_numpy'] * 1e3:.1f} ms)"
    )
    for k in (
        "factored_svdvals",
        "factored_svdvals_blas",
        "r_route",
        "householder_only",
        "old_kernel",
        "analyze",
        "analyze_householder",
        "cholesky_qr2",
        "gram_only",
        "gram_blas",
        "gram_eig_only",
        "qr_only",
        "core_svd_only",
    ):
        print(
            f"  {k:17s}: {med[k] * 1e3:8.1f} ms = {med[k] / med['gemm']:.2f}× the GEMM bound  (median of {repeats}, interleaved)"
        )
    print(
        f"  Grams by {gram_kernel(r)}; {accepted} of {n} products on the Gram eigenvalue route; the R route's σ differ by "
        f"{out['r_route_max_rel_diff']:.1e}·σ₁"
    )
    return out


def gqa_section(repeats: int) -> dict[str, Any]:
    """Grouped-query attention: analyze's spectra with each shared K/V factor decomposed once
    vs once per query head (the same layers with ``kv_head_index`` dropped), interleaved.

    A Llama-shaped layer with 16 query / 4 key-value heads (d_model 2048, head_dim 128): per
    layer 16 + 4 + 4 + 16 = 40 factor QRs instead of 4 × 16 = 64 (37.5 % fewer, as at 32/8).
    """
    import dataclasses

    import transformers

    from rankdecay.analyze import _spectra_records

    cfg = transformers.LlamaConfig(
        hidden_size=2048,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=128,
        num_hidden_layers=1,
        intermediate_size=64,
        vocab_size=64,
    )
    with torch.no_grad():
        model = transformers.LlamaModel(cfg).eval()
        shared = attention_heads(model)
        per_query = [dataclasses.replace(lh, kv_head_index=None) for lh in shared]
        fns = {
            "shared_once": lambda: _spectra_records(shared, ("qk", "ov"), 1e-2, False),
            "per_query_head": lambda: _spectra_records(per_query, ("qk", "ov"), 1e-2, False),
        }
        times: dict[str, list[float]] = {k: [] for k in fns}
        outs = {k: fn() for k, fn in fns.items()}  # warm-up
        for _ in range(repeats):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    same = all(
        a["singular_values"] == b["singular_values"]
        for a, b in zip(outs["shared_once"], outs["per_query_head"])
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"GQA 16/4 heads, d 2048, r 128: K/V decomposed once {med['shared_once'] * 1e3:.1f} ms vs per query head "
        f"{med['per_query_head'] * 1e3:.1f} ms ({med['per_query_head'] / med['shared_once']:.2f}×; identical σ: {same})"
    )
    return {f"gqa_{k}_s": v for k, v in med.items()} | {"gqa_identical": same}


def main(argv: list[str] | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=7, help="timed repeats of the fast methods (median)"
    )
    parser.add_argument(
        "--dense-repeats", type=int, default=3, help="timed repeats of the dense baseline"
    )
    parser.add_argument(
        "--dense-products",
        type=int,
        default=LAYERS * HEADS * 2,
        help="time the dense baseline on the first N products only, scaled linearly to all (default: all)",
    )
    parser.add_argument(
        "--tl-repeats", type=int, default=5, help="timed repeats of TransformerLens"
    )
    parser.add_argument("--json", help="also write the figures as JSON")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: the per-core bound)"
    )
    parser.add_argument(
        "--bound-only", action="store_true", help="only the kernel/analyze vs GEMM-bound section"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    blas = _limit_numpy_threads(args.threads)

    torch.manual_seed(0)
    print(
        f"# bench_spectra: GPT-2-small shape ({LAYERS} layers × {HEADS} heads, d={D_MODEL}, r={D_HEAD}, 2 circuits = {LAYERS * HEADS * 2} products), float64"
    )
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, python {platform.python_version()}, load avg {os.getloadavg()[0]:.1f}; numpy BLAS: {blas}"
    )
    model = _gpt2_small()
    print(f"# model: {type(model).__name__}, random init")
    bound = bound_section(model, args.repeats)
    bound.update(gqa_section(args.repeats))
    if args.bound_only:
        print("RESULT " + json.dumps({k: v for k, v in bound.items() if not k.endswith("all_s")}))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(bound, f, indent=2)
        return 0
    with torch.no_grad():
        layers = attention_heads(model)
        A = (
            torch.cat([lh.factors(c)[0] for lh in layers for c in ("qk", "ov")])
            .double()
            .contiguous()
        )
        B = (
            torch.cat([lh.factors(c)[1] for lh in layers for c in ("qk", "ov")])
            .double()
            .contiguous()
        )
    n = A.shape[0]
    assert A.shape == (LAYERS * HEADS * 2, D_MODEL, D_HEAD), A.shape

    results: dict[str, Any] = {
        "products": n,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "bound": bound,
    }

    with torch.no_grad():
        t_an, ts_an, report = _timeit(lambda: analyze(model), args.repeats)
        t_core, ts_core, s_fact = _timeit(lambda: factored_svdvals(A, B, dtype=None), args.repeats)

        m = max(1, min(args.dense_products, n))

        def dense() -> torch.Tensor:
            return torch.cat(
                [
                    torch.linalg.svdvals(A[i : min(i + HEADS, m)] @ B[i : min(i + HEADS, m)].mT)
                    for i in range(0, m, HEADS)
                ]
            )

        t_dense, ts_dense, s_dense = _timeit(dense, args.dense_repeats, warmup=0)
        t_dense, ts_dense = t_dense * n / m, [t * n / m for t in ts_dense]
    if m < n:
        print(
            f"# dense baseline timed on {m} of {n} products and scaled linearly by {n}/{m} (all products have the same shape)"
        )
    s_dense = s_dense[:, :D_HEAD]
    results["dense_products_timed"] = m
    s_report = torch.tensor(
        [
            r["singular_values"]
            for r in sorted(
                report.records,
                key=lambda r: (r["layer"], ("qk", "ov").index(r["circuit"]), r["head"]),
            )
        ],
        dtype=torch.float64,
    )
    results.update(
        analyze_s=t_an,
        analyze_all_s=ts_an,
        core_s=t_core,
        core_all_s=ts_core,
        dense_s=t_dense,
        dense_all_s=ts_dense,
        speedup_analyze_vs_dense=t_dense / t_an,
        speedup_core_vs_dense=t_dense / t_core,
        max_rel_err_core=_rel_err(s_fact, s_dense),
        max_rel_err_analyze=_rel_err(s_report, s_dense),
    )
    print(
        f"rankdecay.analyze(model), whole model : {t_an * 1e3:9.1f} ms  (median of {args.repeats}; target ≤ 250 ms)"
    )
    print(
        f"factored_svdvals, 288 products        : {t_core * 1e3:9.1f} ms  (max rel. error vs dense {results['max_rel_err_core']:.1e})"
    )
    print(
        f"dense svdvals of materialized products: {t_dense * 1e3:9.1f} ms  (median of {args.dense_repeats})"
    )
    print(
        f"speed-up vs dense: analyze {results['speedup_analyze_vs_dense']:.0f}×, core {results['speedup_core_vs_dense']:.0f}×  (target ≥ 50×)"
    )

    try:
        from transformer_lens import FactoredMatrix
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        results["transformer_lens"] = f"not importable ({type(exc).__name__}: {exc})"
        print(
            f"TransformerLens: not importable ({type(exc).__name__}); `pip install transformer-lens` to compare"
        )
    else:
        import transformer_lens

        with torch.no_grad():
            t_tl, ts_tl, (_, s_tl, _) = _timeit(
                lambda: FactoredMatrix(A, B.mT).svd(), args.tl_repeats
            )
            t_fsvd, ts_fsvd, (_, s_ours, _) = _timeit(
                lambda: factored_svd(A, B, dtype=None), args.repeats
            )
        results.update(
            transformer_lens=getattr(transformer_lens, "__version__", "installed"),
            tl_svd_s=t_tl,
            tl_svd_all_s=ts_tl,
            factored_svd_s=t_fsvd,
            factored_svd_all_s=ts_fsvd,
            speedup_analyze_vs_tl=t_tl / t_an,
            speedup_factored_svd_vs_tl=t_tl / t_fsvd,
            max_rel_err_tl=_rel_err(s_tl, s_dense),
            max_rel_err_factored_svd=_rel_err(s_ours, s_dense),
        )
        print(
            f"TransformerLens FactoredMatrix.svd()  : {t_tl * 1e3:9.1f} ms  (median of {args.tl_repeats}; max rel. error {results['max_rel_err_tl']:.1e})"
        )
        print(f"rankdecay factored_svd (U, S, V)      : {t_fsvd * 1e3:9.1f} ms")
        print(
            f"speed-up vs TransformerLens: analyze {results['speedup_analyze_vs_tl']:.1f}×, factored_svd {results['speedup_factored_svd_vs_tl']:.1f}×"
        )

    print("RESULT " + json.dumps({k: v for k, v in results.items() if not k.endswith("all_s")}))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
