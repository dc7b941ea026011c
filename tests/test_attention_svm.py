"""R2 at test scale: softmax attention, its hand-written gradients and the attention SVMs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rankdecay.errors import RankdecayError
from rankdecay.experiments import get_experiment
from rankdecay.runio import read_jsonl
from rankdecay.tasks.attention_svm import (
    LOSSES,
    PARAMETERIZATIONS,
    SVMInfeasibleError,
    attention_loss,
    attention_svm,
    combine,
    conservation_drift,
    correlation,
    init_params,
    loss_and_grad,
    loss_and_grad_naive,
    make_data,
    param_grads,
    selected_tokens,
    solve_attention_svm,
    svm_constraints,
    train,
)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("param", PARAMETERIZATIONS)
def test_hand_gradients_equal_autograd(param: str, loss: str) -> None:
    data = make_data([3, 4, 5])
    params = init_params(param, data.seeds, 10, scale=0.7)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    attention_loss(data, combine(param, leaves), loss).sum().backward()
    lg = loss_and_grad(data, combine(param, params), loss)
    torch.testing.assert_close(lg.loss, attention_loss(data, combine(param, params), loss))
    ours = param_grads(param, params, lg.grad)
    naive = param_grads(param, params, loss_and_grad_naive(data, combine(param, params), loss).grad)
    for k, leaf in leaves.items():
        torch.testing.assert_close(ours[k], leaf.grad, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(naive[k], leaf.grad, rtol=1e-10, atol=1e-13)


def test_gradient_direction_is_exact_when_softmax_saturates() -> None:
    """At a scale where 1 − p_selected rounds to 1 in float64, compare the gradient direction with
    a 60-digit evaluation of the textbook formula (independent of our log-space bookkeeping)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    data = make_data([11])
    # W with prescribed score gaps (x_{iα} − x_{it})ᵀ W zᵢ ∈ [50, 100] for every i, t ≠ α: every
    # non-selected probability is below e^-50, so 1 − p_selected rounds to 0 in float64
    alpha = [0, 3, 5, 1, 7, 2]
    A = svm_constraints(data.X[0], data.z[0], alpha).reshape(-1, 100)
    gaps = 50.0 * (1.0 + np.random.default_rng(0).random(A.shape[0]))
    W = torch.from_numpy(np.linalg.lstsq(A, gaps, rcond=None)[0].reshape(1, 10, 10))
    lg = loss_and_grad(data, W, "logistic")
    X, z, v, y = (t[0].numpy() for t in (data.X, data.z, data.v, data.y))
    Wn = W[0].numpy()
    n, T, d = X.shape
    G = [[mpmath.mpf(0)] * d for _ in range(d)]
    for i in range(n):
        s = [
            mpmath.fsum(
                mpmath.mpf(X[i, t, a]) * mpmath.mpf(Wn[a, b]) * mpmath.mpf(z[i, b])
                for a in range(d)
                for b in range(d)
            )
            for t in range(T)
        ]
        e = [mpmath.exp(st - max(s)) for st in s]
        p = [et / mpmath.fsum(e) for et in e]
        h = [
            mpmath.fsum(mpmath.mpf(X[i, t, a]) * mpmath.mpf(v[a]) for a in range(d))
            for t in range(T)
        ]
        f = mpmath.fsum(pt * ht for pt, ht in zip(p, h))
        c = -y[i] / (1 + mpmath.exp(y[i] * f)) / n  # y ℓ'(y f) / n for the logistic loss
        for t in range(T):
            ds = c * p[t] * (h[t] - f)
            for a in range(d):
                for b in range(d):
                    G[a][b] += ds * mpmath.mpf(X[i, t, a]) * mpmath.mpf(z[i, b])
    norm = mpmath.sqrt(mpmath.fsum(g * g for row in G for g in row))
    ref = np.array([[float(g / norm) for g in row] for row in G])
    ours = lg.grad_scaled[0].numpy()
    ours = ours / np.linalg.norm(ours)
    assert np.abs(ours - ref).max() < 1e-9
    # the naive float64 gradient (autograd through softmax) is visibly wrong here
    Wl = W.clone().requires_grad_(True)
    attention_loss(data, Wl, "logistic").sum().backward()
    naive = Wl.grad[0].numpy()
    assert np.linalg.norm(naive) == 0 or np.abs(naive / np.linalg.norm(naive) - ref).max() > 1e-3


def test_problems_depend_only_on_their_own_seed() -> None:
    a = make_data([5])
    b = make_data([1, 5]).select([1])
    torch.testing.assert_close(a.X, b.X)
    torch.testing.assert_close(a.y, b.y)
    assert torch.allclose(a.X.norm(dim=-1), torch.ones(1, 6, 8, dtype=torch.float64))
    assert set(a.y.unique().tolist()) <= {-1.0, 1.0}


def _random_selection(data, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, data.shape[2], (data.shape[0], data.shape[1]), generator=g).tolist()


def test_frobenius_and_nuclear_svms_are_feasible_and_optimal() -> None:
    pytest.importorskip("cvxpy")
    data = make_data([21, 22])
    for b, alpha in enumerate(_random_selection(data, 0)):
        A = svm_constraints(data.X[b], data.z[b], alpha)
        fro = solve_attention_svm(data.X[b], data.z[b], alpha, "fro")
        nuc = solve_attention_svm(data.X[b], data.z[b], alpha, "nuc")
        assert fro.ok and nuc.ok
        for sol in (fro, nuc):
            margins = np.einsum("kde,de->k", A, sol.W)
            assert margins.min() >= 1 - 1e-6
        # Frobenius KKT: W = Σ λₖ Aₖ, λ ≥ 0, λₖ (marginₖ − 1) = 0
        lam = fro.duals
        assert lam is not None and lam.min() > -1e-8
        np.testing.assert_allclose(np.einsum("k,kde->de", lam, A), fro.W, atol=1e-6)
        margins = np.einsum("kde,de->k", A, fro.W)
        assert np.abs(lam * (margins - 1)).max() < 1e-6
        # nuclear: dual certificate ‖Σ λₖ Aₖ‖₂ ≤ 1 with Σ λₖ = ‖W‖_* (strong duality)
        mu = nuc.duals
        assert mu is not None
        assert np.linalg.norm(np.einsum("k,kde->de", mu, A), 2) <= 1 + 1e-5
        assert abs(mu.sum() - nuc.objective) <= 1e-5 * nuc.objective
        # each is optimal in its own norm and not in the other's (generic data)
        sv = lambda W: np.linalg.svd(W, compute_uv=False)  # noqa: E731
        assert sv(nuc.W).sum() <= sv(fro.W).sum() + 1e-6
        assert np.linalg.norm(fro.W) <= np.linalg.norm(nuc.W) + 1e-6
        assert correlation(torch.from_numpy(fro.W), torch.from_numpy(nuc.W)) < 0.999


def test_infeasible_svm_reports_status_and_strict_form_raises() -> None:
    pytest.importorskip("cvxpy")
    data = make_data([7])
    X = data.X[0].clone()
    X[0, 1] = X[0, 0]  # token 1 duplicates token 0: (x₀ − x₁)ᵀ W z = 0 ≥ 1 is impossible
    alpha = [0] * 6
    sol = solve_attention_svm(X, data.z[0], alpha, "fro")
    assert not sol.ok and "infeasible" in sol.status
    with pytest.raises(SVMInfeasibleError):
        attention_svm(X, data.z[0], alpha, "nuc")


def test_missing_cvxpy_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cvxpy", None)
    data = make_data([1])
    with pytest.raises(RankdecayError, match=r"pip install rankdecay\[svm\]"):
        solve_attention_svm(data.X[0], data.z[0], [0] * 6, "fro")


def _final_corrs(data, param: str, steps: int) -> dict[str, float]:
    res = train(data, param, "logistic", steps=steps, log_every=steps)
    alpha = selected_tokens(res.probs)
    norms = {"W": ("fro", "nuc"), "KQ": ("fro", "nuc"), "diag": ("diag_l1", "diag_l2")}[param]
    out: dict[str, float] = {}
    for norm in norms:
        cs = []
        for b in range(data.shape[0]):
            sol = solve_attention_svm(data.X[b], data.z[b], alpha[b].tolist(), norm)
            assert sol.ok, sol.status  # the trained model's selection is always separable
            assert sol.min_margin >= 1 - 1e-6
            cs.append(float(correlation(res.W[-1, b], torch.from_numpy(sol.W))))
        out[norm] = float(np.mean(cs))
    return out


def test_implicit_bias_of_each_parameterization() -> None:
    pytest.importorskip("cvxpy")
    data = make_data(range(100, 106))
    w = _final_corrs(data, "W", 600)
    assert w["fro"] > 0.97 and w["fro"] > w["nuc"] + 0.05
    kq = _final_corrs(data, "KQ", 600)
    assert kq["nuc"] > kq["fro"] + 0.05
    dg = _final_corrs(data, "diag", 600)
    assert dg["diag_l1"] > dg["diag_l2"]


def test_balance_conserved_by_small_step_gd_not_by_normalized_gd() -> None:
    data = make_data(range(4))
    small = conservation_drift(data, "exponential", steps=400, lr=0.01)
    half = conservation_drift(data, "exponential", steps=800, lr=0.005)
    assert small["moved"].min() > 0.05  # the factors really moved
    assert small["drift"].max() < 1e-3
    # the drift is O(η) at equal time: halving the step halves it
    ratio = small["drift"] / half["drift"]
    assert torch.allclose(ratio, torch.full_like(ratio, 2.0), rtol=0.1)
    normalized = conservation_drift(data, "exponential", steps=50, lr=0.1, normalized=True)
    assert normalized["drift"].min() > 1e-2


def test_experiment_tiny_run_writes_run_directory(tmp_path) -> None:
    pytest.importorskip("cvxpy")
    exp = get_experiment("attention-svm")
    assert exp.reproduces == "R2" and {"quick", "paper"} <= set(exp.presets)
    cfg = exp.config(
        "quick",
        {
            "n_seeds": 3,
            "steps": 120,
            "log_every": 40,
            "check_step": 80,
            "losses": "exponential",
            "conservation_steps": 50,
        },
    )
    summary = exp.run(cfg, tmp_path, progress=False, preset="quick")
    assert summary["status"] == "finished"
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["verdict"] == summary["verdict"]
    claims = [r["claim"] for r in summary["verdict"]]
    assert any("Frobenius SVM by iteration 80" in c for c in claims)
    assert any("conserved" in c for c in claims)
    rows = list(read_jsonl(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [0, 40, 80, 120]
    assert rows[-1]["W_exponential_corr_fro_n"] == 3
    assert -1 <= rows[-1]["KQ_exponential_corr_nuc_mean"] <= 1
    seeds = list(read_jsonl(tmp_path / "seeds.jsonl"))
    assert len(seeds) == 3 * 3
    assert json.loads((tmp_path / "config.json").read_text())["experiment"] == "attention-svm"
    # resume of a finished run returns it unchanged
    assert exp.run(cfg, tmp_path, resume=True, progress=False) == on_disk
    pytest.importorskip("matplotlib")
    from rankdecay.experiments.attention_svm import plot

    png = plot(tmp_path, tmp_path / "fig.png")
    assert png.stat().st_size > 1000


def test_bad_config_is_a_rankdecay_error(tmp_path) -> None:
    exp = get_experiment("attention-svm")
    cfg = exp.config("quick", {"parameterizations": "W,QK"})
    with pytest.raises(RankdecayError, match="parameterization"):
        exp.run(cfg, tmp_path, progress=False)
    with pytest.raises(RankdecayError):
        train(make_data([0]), "W", "hinge")


#: a 3-block run (3 parameterizations × 1 loss) of a few seconds
SMALL = {
    "n_seeds": 2,
    "steps": 400,
    "log_every": 100,
    "check_step": 200,
    "losses": "exponential",
    "conservation_steps": 50,
}


def test_sigterm_ends_with_interrupted_and_resume_continues_to_the_same_files(
    tmp_path: Path,
) -> None:
    """SIGTERM a CLI run once its first block is done: exit 130, summary "interrupted" naming
    `--resume`; resuming computes only the missing blocks and leaves exactly the files of an
    uninterrupted run (blocks depend on the config only; cvxpy problems are compiled before
    their first real solve)."""
    pytest.importorskip("cvxpy")
    run = tmp_path / "run"
    sets = [a for k, v in SMALL.items() for a in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "rankdecay.cli", "run", "attention-svm", "--no-progress", *sets]
    proc = subprocess.Popen(
        [*cmd, "--out", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ,
    )
    blocks = run / "blocks.jsonl"
    deadline = time.monotonic() + 300
    while not (blocks.exists() and blocks.read_text().endswith("\n")):
        assert proc.poll() is None, proc.communicate()
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no block finished within 300 s")
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted", summary
    assert f"resume {run} to continue" in summary["error"] and "--" not in summary["error"]
    assert err.strip().splitlines()[-1] == f"rankdecay: {summary['error']}"
    n_done = len(blocks.read_text().splitlines())
    assert 1 <= n_done < 3

    exp = get_experiment("attention-svm")
    cfg = exp.config("quick", SMALL)
    with pytest.raises(RankdecayError, match="already holds an attention-svm run .*resume it") as e:
        exp.run(cfg, run, progress=False)  # a new run does not overwrite it
    assert "--" not in str(e.value) and e.value.param == ("resume", "out")
    with pytest.raises(RankdecayError, match="differs in steps"):  # a changed config is refused
        exp.run(exp.config("quick", {**SMALL, "steps": 500}), run, resume=True, progress=False)
    resumed = exp.run(cfg, run, resume=True, progress=False)
    assert resumed["status"] == "finished" and resumed["resumed_blocks"] == n_done
    ref = exp.run(cfg, tmp_path / "ref", progress=False, preset="quick")
    for name in ("metrics.jsonl", "seeds.jsonl", "blocks.jsonl"):
        assert (run / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    assert resumed["final"] == ref["final"] and resumed["verdict"] == ref["verdict"]
