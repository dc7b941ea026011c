"""SpectralMonitor against an independent dense float64 SVD of the materialized circuits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rankdecay.models import ModelConfig, TinyTransformer
from rankdecay.monitor import SpectralMonitor, summarize_records
from rankdecay.runio import read_jsonl


def _model(**kw: object) -> TinyTransformer:
    cfg = ModelConfig(
        n_layers=2, d_model=24, n_heads=3, d_mlp=16, vocab_size=11, max_len=8, init_std=None
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return TinyTransformer(cfg)


def _dense_metrics(M: np.ndarray, rtol: float) -> dict[str, float]:
    s = np.linalg.svd(M, compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return {
        "rank": int((s > rtol * s[0]).sum()),
        "effective_rank": float(np.exp(-(p * np.log(p)).sum())),
        "stable_rank": float((s**2).sum() / s[0] ** 2),
        "nuclear_norm": float(s.sum()),
        "frobenius_norm": float(np.sqrt((s**2).sum())),
        "spectral_norm": float(s[0]),
    }


def test_circuit_records_match_dense_svd() -> None:
    torch.manual_seed(1)
    model = _model()
    # make some heads low-rank so the rank metric is not trivially full
    with torch.no_grad():
        model.blocks[0].attn.q.weight[:8, 5:] = 0.0
    rtol = 1e-2
    records = SpectralMonitor(model, every=5, rtol=rtol).force_step(10)
    H, dh = 3, 8
    by_key = {(r["layer"], r["head"], r["circuit"]): r for r in records if r["kind"] == "circuit"}
    assert len(by_key) == 2 * H * 2
    for i, block in enumerate(model.blocks):
        a = block.attn
        q = a.q.weight.detach().double().numpy()  # (H·dh, d): x ↦ W x
        k = a.k.weight.detach().double().numpy()
        v = a.v.weight.detach().double().numpy()
        o = a.o.weight.detach().double().numpy()  # (d, H·dh)
        for h in range(H):
            sl = slice(h * dh, (h + 1) * dh)
            WQ, WK, WV, WO = q[sl].T, k[sl].T, v[sl].T, o[:, sl].T  # (d, dh), (dh, d)
            for circuit, (A, B) in {"qk": (WQ, WK), "ov": (WV, WO.T)}.items():
                rec = by_key[(i, h, circuit)]
                M = A @ B.T  # the materialized d×d circuit
                dense = _dense_metrics(M, rtol)
                for name, value in dense.items():
                    assert rec[name] == pytest.approx(value, rel=1e-9, abs=1e-12), (
                        i,
                        h,
                        circuit,
                        name,
                    )
                s = np.linalg.svd(M, compute_uv=False)[:dh]
                np.testing.assert_allclose(rec["singular_values"], s, rtol=1e-9, atol=1e-12)
                bal = np.linalg.norm(A.T @ A - B.T @ B)
                gap = 0.5 * ((A**2).sum() + (B**2).sum()) - s.sum()
                assert rec["balance"] == pytest.approx(bal, rel=1e-9)
                assert rec["norm_gap"] == pytest.approx(gap, rel=1e-9, abs=1e-12)
                assert rec["norm_gap"] >= -1e-12
                assert rec["step"] == 10 and rec["rtol"] == rtol
    # the zeroed block makes head 0 of layer 0 rank ≤ 5 in QK
    assert by_key[(0, 0, "qk")]["rank"] <= 5


def test_matrix_records_match_dense_svd() -> None:
    model = _model()
    records = [r for r in SpectralMonitor(model, every=1).force_step(0) if r["kind"] == "matrix"]
    assert {(r["layer"], r["matrix"]) for r in records} == {
        (i, m) for i in range(2) for m in ("W_Q", "W_K")
    }
    for r in records:
        lin = getattr(model.blocks[r["layer"]].attn, "q" if r["matrix"] == "W_Q" else "k")
        dense = _dense_metrics(lin.weight.detach().double().numpy().T, r["rtol"])
        for name, value in dense.items():
            assert r[name] == pytest.approx(value, rel=1e-9)


def test_step_schedule_writer_and_summary(tmp_path) -> None:
    model = _model()
    seen: list[int] = []
    path = tmp_path / "spectra.jsonl"
    mon = SpectralMonitor(
        model,
        every=3,
        circuits=("qk",),
        matrices=False,
        keep_singular_values=False,
        writer=path,
        callback=lambda recs: seen.append(recs[0]["step"]),
    )
    out = [mon.step(s) for s in range(7)]
    assert [s for s, o in enumerate(out) if o is not None] == [0, 3, 6]
    assert seen == [0, 3, 6]
    rows = list(read_jsonl(path))
    assert len(rows) == 3 * 2 * 3 and all(r["circuit"] == "qk" for r in rows)
    assert "singular_values" not in rows[0]
    assert len(mon.records) == len(rows)
    assert mon.latest() == rows[-6:]
    summ = mon.summary()
    assert summ["qk_rank"] == pytest.approx(np.mean([r["rank"] for r in rows[-6:]]))
    assert not any(k.startswith("ov_") for k in summ)
    assert SpectralMonitor(model, every=0).step(0) is None


def test_summary_includes_matrix_means() -> None:
    model = _model()
    recs = SpectralMonitor(model, every=1).force_step(0)
    summ = summarize_records(recs)
    sr = [r["stable_rank"] for r in recs if r["kind"] == "matrix"]
    assert summ["wqk_stable_rank"] == pytest.approx(sum(sr) / len(sr))
    assert math.isfinite(summ["ov_norm_gap"])


def test_monitor_does_not_touch_gradients_or_weights() -> None:
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    SpectralMonitor(model, every=1).force_step(0)
    assert all(p.grad is None for p in model.parameters())
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])


def test_bad_arguments() -> None:
    model = _model()
    with pytest.raises(ValueError, match="circuit"):
        SpectralMonitor(model, circuits=("qv",))
    with pytest.raises(ValueError, match="rtol"):
        SpectralMonitor(model, rtol=-1)


def test_hf_trainer_callback(tmp_path) -> None:
    """A real (tiny, random) GPT-2 trained 3 steps by the Hugging Face Trainer with the callback:
    means land in log_history, records in spectra.jsonl, and the last records equal a dense SVD
    of the trained c_attn weights."""
    transformers = pytest.importorskip("transformers")
    from rankdecay.integrations.transformers import SpectralMonitorCallback

    cfg = transformers.GPT2Config(
        vocab_size=37,
        n_positions=16,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = transformers.GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(37, (16, 12), generator=g)

    class DS(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(ids)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": ids[i], "labels": ids[i]}

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        logging_steps=100,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    cb = SpectralMonitorCallback(every=2)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=DS(), callbacks=[cb])
    trainer.train()

    logged = [h for h in trainer.state.log_history if "rankdecay/qk/rank/mean" in h]
    assert [h["step"] for h in logged] == [2]
    assert "loss" in logged[0]  # the callback made the Trainer log at that step
    rows = list(read_jsonl(tmp_path / "spectra.jsonl"))
    assert sorted({r["step"] for r in rows}) == [0, 2]
    # the monitor (through the GPT-2 adapter) against a dense SVD of the trained fused c_attn
    recs = cb.monitor.force_step(3)
    d, H = 32, 4
    dh = d // H
    for r in recs:
        if r["kind"] != "circuit" or r["circuit"] != "qk":
            continue
        W = model.transformer.h[r["layer"]].attn.c_attn.weight.detach().double().numpy()  # (d, 3d)
        WQ = W[:, r["head"] * dh : (r["head"] + 1) * dh]
        WK = W[:, d + r["head"] * dh : d + (r["head"] + 1) * dh]
        s = np.linalg.svd(WQ @ WK.T, compute_uv=False)[:dh]
        np.testing.assert_allclose(r["singular_values"], s, rtol=1e-9, atol=1e-12)
        assert r["rank"] == int((s > 1e-2 * s[0]).sum())
    mean_rank = np.mean(
        [
            r["rank"]
            for r in rows
            if r["step"] == 2 and r["kind"] == "circuit" and r["circuit"] == "qk"
        ]
    )
    assert logged[0]["rankdecay/qk/rank/mean"] == pytest.approx(mean_rank)
