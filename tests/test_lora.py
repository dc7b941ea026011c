"""LoRA adapters: ΔW = s·B·A spectra from the factors (PEFT model and adapter directory)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from rankdecay.analyze import analyze  # noqa: E402
from rankdecay.cli import main  # noqa: E402
from rankdecay.errors import RankdecayError  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
LAYERS = 2


def _peft_model(**lora: object) -> nn.Module:
    cfg = transformers.LlamaConfig(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=LAYERS,
        intermediate_size=16, vocab_size=50,
    )  # fmt: skip
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(cfg)
    options: dict[str, object] = {"r": 4, "lora_alpha": 8, "target_modules": TARGETS, **lora}
    model = peft.get_peft_model(base, peft.LoraConfig(**options))
    with torch.no_grad():  # lora_B starts at zero; give it values (and A a spread of scales)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
            elif "lora_A" in name:
                p.mul_(torch.logspace(0, -2, p.shape[0])[:, None])
    return model


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {
        n.removeprefix("base_model.model."): m
        for n, m in model.named_modules()
        if isinstance(getattr(m, "lora_A", None), nn.ModuleDict)
    }


def _dense(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    A = layer.lora_A["default"].weight.detach().double()
    B = layer.lora_B["default"].weight.detach().double()
    s = float(layer.scaling["default"])
    return A, B, torch.linalg.svdvals(s * B @ A), s


def _check_against_dense(records: list[dict], layers: dict[str, nn.Module]) -> None:
    by_name = {r["name"].removeprefix("base_model.model."): r for r in records}
    assert set(by_name) == set(layers)  # a record for every adapted module
    for name, layer in layers.items():
        rec = by_name[name]
        A, B, dense, s = _dense(layer)
        r = A.shape[0]
        sv = torch.tensor(rec["singular_values"], dtype=torch.float64)
        assert sv.shape == (r,)
        assert (sv - dense[:r]).abs().max() <= 1e-12 * dense[0]
        assert rec["scaling"] == pytest.approx(s, rel=1e-12)
        assert rec["rank"] == int((dense > 1e-2 * dense[0]).sum())
        assert rec["nuclear_norm"] == pytest.approx(float(dense.sum()), rel=1e-12)
        # balance ‖AAᵀ − BᵀB‖_F and norm gap of the factors themselves (s excluded)
        bal = torch.linalg.matrix_norm(A @ A.T - B.T @ B)
        assert rec["balance"] == pytest.approx(float(bal), rel=1e-10)
        gap = 0.5 * (A.pow(2).sum() + B.pow(2).sum()) - torch.linalg.svdvals(B @ A).sum()
        assert rec["norm_gap"] == pytest.approx(float(gap), rel=1e-10, abs=1e-12)
        assert rec["norm_gap"] >= 0


def test_peft_model_adapters_match_dense_svd() -> None:
    model = _peft_model()
    report = analyze(model, adapters=True)
    layers = _lora_layers(model)
    assert len(layers) == LAYERS * len(TARGETS) == len(report.records)
    _check_against_dense(report.records, layers)
    assert {r["layer"] for r in report.records} == set(range(LAYERS))
    assert all(r["scaling"] == 2.0 for r in report.records)  # α/r = 8/4
    assert report.model["kind"] == "lora_adapters"


def test_negative_control_scaling_matters() -> None:
    model = _peft_model()
    rec = analyze(model, adapters=True).records[0]
    layer = _lora_layers(model)[rec["name"].removeprefix("base_model.model.")]
    A, B, _, _ = _dense(layer)
    unscaled = torch.linalg.svdvals(B @ A)[0]
    assert abs(rec["spectral_norm"] - float(unscaled)) > 0.1 * float(unscaled)


def test_rslora_and_patterns_respected_and_adapter_dir_equals_live(tmp_path: Path) -> None:
    model = _peft_model(
        use_rslora=True,
        alpha_pattern={"q_proj": 16},
        rank_pattern={r"layers\.1\.self_attn\.v_proj": 2},
    )
    layers = _lora_layers(model)
    live = analyze(model, adapters=True)
    _check_against_dense(live.records, layers)
    scales = {r["name"].removeprefix("base_model.model."): r["scaling"] for r in live.records}
    assert scales["model.layers.0.self_attn.q_proj"] == pytest.approx(
        16 / 2
    )  # α/√r, α from pattern
    assert scales["model.layers.0.self_attn.k_proj"] == pytest.approx(8 / 2)
    assert scales["model.layers.1.self_attn.v_proj"] == pytest.approx(8 / 2**0.5)  # r = 2
    model.save_pretrained(tmp_path / "adapter")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    on_disk = analyze(tmp_path / "adapter", adapters=True)
    _check_against_dense(on_disk.records, layers)  # scales from the config alone, no base model
    assert on_disk.model["model_class"] == "LoRA adapter directory"


def test_cli_lora_flag_and_adapter_dir_without_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _peft_model()
    model.save_pretrained(tmp_path / "adapter")
    out_json = tmp_path / "r.json"
    assert main(["analyze", str(tmp_path / "adapter"), "--lora", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "LoRA adapters" in text and "q_proj" in text
    data = json.loads(out_json.read_text())
    assert len(data["records"]) == LAYERS * len(TARGETS)
    assert main(["analyze", str(tmp_path / "adapter")]) == 2
    err = capsys.readouterr().err
    assert "--lora" in err and "Traceback" not in err
    assert main(["analyze", str(tmp_path), "--lora"]) == 2
    assert "not a LoRA adapter directory" in capsys.readouterr().err


def test_model_without_lora_and_corrupt_adapter_file(tmp_path: Path) -> None:
    with pytest.raises(RankdecayError, match="no PEFT LoRA layers"):
        analyze(nn.Linear(3, 3), adapters=True)
    d = tmp_path / "bad"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (d / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(RankdecayError, match="damaged|cannot be read"):
        analyze(d, adapters=True)
    # a real adapter file cut short: its header now lies about the offsets
    model = _peft_model()
    model.save_pretrained(tmp_path / "cut")
    weights = tmp_path / "cut" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(RankdecayError, match="damaged|cannot be read"):
        analyze(tmp_path / "cut", adapters=True)


def test_low_rank_decay_on_a_peft_model_names_the_adapters() -> None:
    """LowRankDecay's attention targets need one tensor per matrix; on a PEFT model W_Q is a
    frozen base weight plus s·B·A, so it refuses with a ValueError that says so and how to decay
    the adapters instead — and that callable target moves exactly the LoRA factors, each by
    c·polar(X) (subtract mode, lr-free): ‖ΔX‖_* = c·rank(X)."""
    from rankdecay.decay import LowRankDecay

    model = _peft_model()
    with pytest.raises(ValueError, match="LoRA-wrapped projection"):
        LowRankDecay(model, strength=0.1)
    lrd = LowRankDecay(model, strength=0.1, target=lambda name, p: ".lora_" in name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lrd.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n in before if ".lora_" in n}
    for n in changed:
        delta = (before[n] - dict(model.named_parameters())[n].detach()).double()
        rank = torch.linalg.matrix_rank(before[n].double()).item()
        assert abs(torch.linalg.matrix_norm(delta, "nuc").item() - 0.1 * rank) < 1e-4
