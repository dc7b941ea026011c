"""Streaming plans from the model built on the meta device (``rankdecay.meta_plan``).

Ground truth is the in-memory analysis: for model types whose name-based plan misses modules
(Swin, Qwen2-Audio's audio tower, MiniCPM3's MLA), misreads their scale (UMT5: scores not
scaled) or does not split them (MobileBERT, Qwen2-VL: tests/test_stream.py), for hybrids
whose attention sits in some layers only (Jamba; Zamba with a tied shared block) and for ALBERT
(its layers share one group: fewer numbered names than layers), ``analyze(DIR)``
streams and equals ``analyze(model)`` in names, order, scale, flags and singular values. The
negative controls take the meta model away (as when transformers cannot build it) and see the
old gaps; a model type transformers does not know still streams by tensor names.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from rankdecay.analyze import SpectralReport, analyze, load_model
from rankdecay.checkpoint import CheckpointIndex
from rankdecay.errors import RankdecayError
from rankdecay.heads import UnrecognizedAttentionWarning
from rankdecay.stream import StreamingFallbackWarning

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

NO_META = "rankdecay.stream.build_meta_model"  # monkeypatched to None: no model on meta


def _umt5() -> nn.Module:
    cfg = transformers.UMT5Config(
        d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=8, vocab_size=50
    )
    return transformers.UMT5Model(cfg)


def _swin() -> nn.Module:
    cfg = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4
    )
    return transformers.SwinModel(cfg)


def _qwen2_audio() -> nn.Module:
    audio = dict(
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=64,
        num_mel_bins=16,
        max_source_positions=20,
    )
    text = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=60,
    )
    cfg = transformers.Qwen2AudioConfig(audio_config=audio, text_config=text)
    return transformers.Qwen2AudioForConditionalGeneration(cfg)


def _minicpm3() -> nn.Module:
    cfg = transformers.MiniCPM3Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=16,
        kv_lora_rank=8,
        qk_nope_head_dim=6,
        qk_rope_head_dim=4,
        v_head_dim=5,
        intermediate_size=40,
        vocab_size=50,
    )
    return transformers.MiniCPM3ForCausalLM(cfg)


def _jamba() -> nn.Module:
    cfg = transformers.JambaConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=50,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        num_experts=2,
        mamba_d_state=4,
        mamba_expand=2,
        use_mamba_kernels=False,
    )
    return transformers.JambaModel(cfg)


def _zamba() -> nn.Module:
    cfg = transformers.ZambaConfig(
        hidden_size=32,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=4,
        attention_hidden_size=64,
        attention_head_dim=16,
        intermediate_size=64,
        vocab_size=50,
        mamba_d_state=4,
        mamba_expand=2,
        n_mamba_heads=2,
        attn_layer_period=3,
        attn_layer_offset=2,
    )
    return transformers.ZambaModel(cfg)


def _albert() -> nn.Module:
    cfg = transformers.AlbertConfig(
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=50,
    )
    return transformers.AlbertModel(cfg)


#: model type → (tiny model, what the name-based plan alone gets wrong)
CASES: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "umt5": (_umt5, "scale"),  # T5 attention does not scale its scores; no row: 1/√r assumed
    "swin": (_swin, "memory"),  # hierarchical vision backbone: per-stage heads, no row
    "qwen2_audio": (_qwen2_audio, "missing"),  # Whisper-like audio tower under audio_tower.
    "minicpm3": (_minicpm3, "memory"),  # MLA of a type the name-based plan does not read: none
    # hybrids: attention in 2 of 4 (6) layers, refused as "declares 4 layers" by the layer count;
    # Zamba's shared block is tied, saved once (layers.2.…) and read for layers.5 too
    "jamba": (_jamba, "refused"),
    # 4 layers share one layer group (names numbered up to 0): "declares 4 layers", refused
    "albert": (_albert, "refused"),
    "zamba": (_zamba, "refused"),
}


def _model(kind: str) -> nn.Module:
    torch.manual_seed(7)
    return CASES[kind][0]().eval()


def _same(a: SpectralReport, b: SpectralReport, tol: float = 1e-12) -> None:
    """Equal records (order, names, heads, singular values) and the same module facts."""
    assert len(a.records) == len(b.records) > 0
    for ra, rb in zip(a.records, b.records):
        key = ("layer", "name", "head", "circuit", "kv_head")
        assert [ra[k] for k in key] == [rb[k] for k in key]
        sa, sb = np.asarray(ra["singular_values"]), np.asarray(rb["singular_values"])
        assert np.abs(sa - sb).max() <= tol * sa.max()
    for k in ("layer_names", "scale", "n_heads", "n_kv_heads", "d_head", "flags", "notes"):
        assert a.model[k] == b.model[k], k


def _stream(path: Path) -> SpectralReport:
    """analyze(path), which must stream with no warning at all."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = analyze(path)
    assert report.model.get("streamed") is True
    return report


@pytest.mark.parametrize("kind", sorted(CASES))
def test_meta_plans_stream_what_the_names_miss(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each type streams, equal to analyze(model); without the meta model (negative control)
    the name-based plan alone leaves modules out and names them, finds none (the whole model is
    built in memory), or streams the wrong scale."""
    model = _model(kind)
    model.save_pretrained(tmp_path / kind)
    streamed = _stream(tmp_path / kind)
    in_memory = analyze(model)
    _same(streamed, in_memory)
    assert "model built on the meta device" in streamed.model["adapter"]

    monkeypatch.setattr(NO_META, lambda *args: None)
    if CASES[kind][1] == "missing":
        with pytest.warns(UnrecognizedAttentionWarning, match="not covered by the streaming plan"):
            old = analyze(tmp_path / kind)
        assert old.model["n_layers"] < in_memory.model["n_layers"]
    elif CASES[kind][1] == "refused":  # a valid checkpoint called corrupt
        with pytest.raises(RankdecayError), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analyze(tmp_path / kind)
    elif CASES[kind][1] == "memory":  # nothing planned: the whole model built in memory
        with pytest.warns(StreamingFallbackWarning, match="not covered"):
            old = analyze(tmp_path / kind)
        assert not old.model.get("streamed")
    else:  # the plan splits, but with the scale 1/√r where the module uses 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            old = analyze(tmp_path / kind)
        assert in_memory.model["scale"] == 1.0
        assert old.model["scale"] == pytest.approx(8**-0.5)
        assert old.model["layer_names"] == in_memory.model["layer_names"]


def test_meta_plans_read_one_module_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planning by the meta model reads no tensor data; streaming then reads each module's
    attention tensors once, one module per read (bounded memory, as for the name-based plan)."""
    model = _model("swin")
    model.save_pretrained(tmp_path / "s")
    calls: list[list[str]] = []
    original = CheckpointIndex.read

    def spy(self: CheckpointIndex, names: Any) -> Any:
        calls.append(list(names))
        return original(self, calls[-1])

    monkeypatch.setattr(CheckpointIndex, "read", spy)
    report = _stream(tmp_path / "s")
    assert len(calls) == report.model["n_layers"] == 2
    for call, name in zip(calls, report.model["layer_names"]):
        assert all(n.startswith(name + ".") and "attention" in n for n in call), call
    assert len({n for c in calls for n in c}) == sum(map(len, calls))  # each tensor once


def test_meta_names_follow_the_class_load_model_builds(tmp_path: Path) -> None:
    """Weights saved from the base model under a config whose class is the task model: the
    checkpoint lacks the ``swin.`` prefix the loaded model's modules have; the streamed report
    names modules as analyze(load_model(DIR)) does."""
    model = _model("swin")
    model.save_pretrained(tmp_path / "s")
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    config.update(architectures=["SwinForImageClassification"], num_labels=3)
    (tmp_path / "s" / "config.json").write_text(json.dumps(config))
    streamed = _stream(tmp_path / "s")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the classifier's weights are newly initialised
        loaded = analyze(load_model(tmp_path / "s"))
    assert streamed.model["layer_names"][0] == "swin.encoder.layers.0.blocks.0.attention"
    _same(streamed, loaded)


def test_a_type_transformers_cannot_build_streams_by_names(tmp_path: Path) -> None:
    """config.json with a model_type transformers does not know but Llama's tensor names and
    keys: no meta model (nothing raised, nothing said), the name-based plan streams it as
    before (generic keys), equal to the Llama model's in-memory analysis."""
    torch.manual_seed(1)
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=50,
    )
    model = transformers.LlamaModel(cfg).eval()
    model.save_pretrained(tmp_path / "l")
    config = json.loads((tmp_path / "l" / "config.json").read_text())
    config.update(model_type="not_a_transformers_type", architectures=["NotAModel"])
    (tmp_path / "l" / "config.json").write_text(json.dumps(config))
    streamed = _stream(tmp_path / "l")
    assert "meta device" not in streamed.model["adapter"]
    in_memory = analyze(model)
    assert streamed.model["layer_names"] == in_memory.model["layer_names"]
    assert streamed.model["scale"] == in_memory.model["scale"]
    for ra, rb in zip(streamed.records, in_memory.records, strict=True):
        sa, sb = np.asarray(ra["singular_values"]), np.asarray(rb["singular_values"])
        assert ra["name"] == rb["name"] and np.abs(sa - sb).max() <= 1e-12 * sa.max()


def test_a_module_analyze_model_does_not_extract_is_named_not_streamed(tmp_path: Path) -> None:
    """MiniMax's lightning attention has q/k/v/o projections but no softmax q·kᵀ: analyze(model)
    leaves it out (its rule refuses the widths) and names it. With the meta model the name-based
    plan of that module is dropped as analyze(model) drops it (at the default size the name-based
    plan alone splits and streams it: the survey's "extra"), and the warning says so."""
    cfg = transformers.MiniMaxConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=64,
        vocab_size=50,
        num_local_experts=2,
        num_experts_per_tok=1,
        layer_types=["linear_attention", "full_attention"],
    )
    torch.manual_seed(0)
    model = transformers.MiniMaxModel(cfg).eval()
    model.save_pretrained(tmp_path / "mm")
    with pytest.warns(UnrecognizedAttentionWarning, match="layers.0.self_attn"):
        in_memory = analyze(model)
    with pytest.warns(UnrecognizedAttentionWarning, match="does not extract either"):
        streamed = analyze(tmp_path / "mm")
    assert streamed.model.get("streamed") and streamed.model["layer_names"] == [
        "layers.1.self_attn"
    ]
    _same(streamed, in_memory)


def test_a_config_with_more_layers_than_the_names_is_still_refused(tmp_path: Path) -> None:
    """A config whose layer count exceeds the numbered tensor names is trusted (ALBERT's shared
    layer group) only if the checkpoint holds every attention tensor of the model it builds: a
    Llama config claiming 5 layers over 3 layers' weights is refused as before, in one sentence."""
    from rankdecay.checkpoint import CorruptCheckpointError

    torch.manual_seed(2)
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=50,
    )
    transformers.LlamaModel(cfg).save_pretrained(tmp_path / "l")
    config = json.loads((tmp_path / "l" / "config.json").read_text())
    config["num_hidden_layers"] = 5
    (tmp_path / "l" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptCheckpointError, match="declares 5 layers"):
        analyze(tmp_path / "l")


def test_load_model_trusts_more_layers_than_names_only_with_every_attention_tensor(
    tmp_path: Path,
) -> None:
    """load_model (the in-memory path) takes ALBERT's config (4 layers, one shared numbered group)
    and analyze(load_model(DIR)) equals analyze(model); the Llama config claiming 5 layers over 3
    layers' weights is still refused, with the layer-count sentence (it lacks layers 3 and 4)."""
    from rankdecay.checkpoint import CorruptCheckpointError

    model = _model("albert")
    model.save_pretrained(tmp_path / "a")
    _same(analyze(load_model(tmp_path / "a")), analyze(model))
    torch.manual_seed(2)
    cfg = transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        vocab_size=50,
    )  # fmt: skip
    transformers.LlamaModel(cfg).save_pretrained(tmp_path / "l")
    config = json.loads((tmp_path / "l" / "config.json").read_text())
    config["num_hidden_layers"] = 5
    (tmp_path / "l" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptCheckpointError, match="num_hidden_layers = 5, but the weights"):
        load_model(tmp_path / "l")


def test_a_module_whose_tensors_are_missing_is_still_refused(tmp_path: Path) -> None:
    """The meta model's module whose tensors the checkpoint lacks (layer 1's q_proj deleted) is
    not counted as held: the directory is refused in one sentence, as by names alone and as
    load_model refuses it, not streamed with a hole."""
    from safetensors.torch import save_file

    from rankdecay.checkpoint import CorruptCheckpointError

    torch.manual_seed(3)
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=50,
    )
    model = transformers.LlamaModel(cfg).eval()
    model.save_pretrained(tmp_path / "l")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    del state["layers.1.self_attn.q_proj.weight"]
    save_file(state, str(tmp_path / "l" / "model.safetensors"), metadata={"format": "pt"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnrecognizedAttentionWarning)  # it is named, too
        with pytest.raises(CorruptCheckpointError, match="3 attention modules"):
            analyze(tmp_path / "l")
