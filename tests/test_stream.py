"""Streaming ``analyze(path)``: equal to the in-memory path, reads only attention tensors one
layer at a time, and treats a model directory as hostile data (no code, no escapes, no hangs,
no allocation from lying sizes)."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import struct
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from rankdecay.analyze import SpectralReport, analyze, load_model
from rankdecay.checkpoint import (
    CheckpointIndex,
    CorruptCheckpointError,
    MissingWeightsError,
    ModelNotFoundError,
    RemoteCodeError,
    UnsafePathError,
    read_safetensors_header,
)
from rankdecay.cli import main
from rankdecay.errors import RankdecayError
from rankdecay.stream import StreamingFallbackWarning

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _llama(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=96,
        vocab_size=60,
    )
    return transformers.LlamaForCausalLM(cfg).to(dtype).eval()


def _gpt2() -> nn.Module:
    torch.manual_seed(1)
    cfg = transformers.GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=4,
        vocab_size=50,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2Model(cfg).eval()


def _bert() -> nn.Module:
    torch.manual_seed(2)
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    return transformers.BertForSequenceClassification(cfg).eval()


def _same(a: SpectralReport, b: SpectralReport, tol: float = 1e-12) -> None:
    assert len(a.records) == len(b.records) > 0
    for ra, rb in zip(a.records, b.records):
        assert (ra["layer"], ra["name"], ra["head"], ra["circuit"], ra["kv_head"]) == (
            rb["layer"],
            rb["name"],
            rb["head"],
            rb["circuit"],
            rb["kv_head"],
        )
        sa, sb = np.asarray(ra["singular_values"]), np.asarray(rb["singular_values"])
        assert np.abs(sa - sb).max() <= tol * sa.max()
        for m in ("nuclear_norm", "balance", "norm_gap", "effective_rank"):
            assert abs(ra[m] - rb[m]) <= tol * max(1.0, abs(ra[m]), sa.max() ** 2)
        assert ra["rank"] == rb["rank"]


def _within(seconds: float, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a daemon thread; fail if it does not finish in ``seconds`` (a hang)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (a hang)"
    if "error" in box:
        raise box["error"]
    return box.get("value")


# ---------------------------------------------------------------------------------------------
# Streaming equals the in-memory path
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,dtype,shard",
    [
        (_llama, torch.float32, None),
        (_llama, torch.float32, "30KB"),
        (_llama, torch.bfloat16, "30KB"),
        (_llama, torch.float16, None),
        (_gpt2, torch.float32, "20KB"),
        (_bert, torch.bfloat16, None),
    ],
)
def test_streaming_equals_in_memory(
    make: Callable[[], nn.Module], dtype: torch.dtype, shard: str | None, tmp_path: Path
) -> None:
    model = make().to(dtype)
    path = tmp_path / "m"
    model.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    assert (path / "model.safetensors.index.json").is_file() == (shard is not None)
    streamed = analyze(path)
    assert streamed.model["streamed"] is True
    assert streamed.model["parameter_dtype"] == str(dtype).replace("torch.", "")
    reloaded = type(model).from_pretrained(path, local_files_only=True, dtype=dtype)
    _same(analyze(reloaded), streamed)
    _same(analyze(model), streamed)
    _same(analyze(load_model(path)), streamed)
    assert streamed.model["n_layers"] == len(analyze(model).model["layer_names"])


def test_bin_checkpoint_streams_the_same(tmp_path: Path) -> None:
    model = _llama()
    model.save_pretrained(tmp_path / "bin")
    (tmp_path / "bin" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    _same(analyze(model), analyze(tmp_path / "bin"))


def test_reader_requests_only_attention_tensors_one_layer_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _llama(torch.bfloat16)
    model.save_pretrained(tmp_path / "m", max_shard_size="30KB")
    calls: list[list[str]] = []
    original = CheckpointIndex.read

    def spy(self: CheckpointIndex, names: Any) -> Any:
        names = list(names)
        calls.append(names)
        return original(self, names)

    monkeypatch.setattr(CheckpointIndex, "read", spy)
    report = analyze(tmp_path / "m")
    all_names = set(model.state_dict())
    attention = {n for n in all_names if ".self_attn." in n and n.endswith("proj.weight")}
    requested = [n for call in calls for n in call]
    assert set(requested) == attention and len(requested) == len(attention)  # each once
    assert len(calls) == report.model["n_layers"] == 3
    for i, call in enumerate(calls):  # one layer per read: peak memory ≈ one (two) layers
        assert {n.split(".self_attn.")[0] for n in call} == {f"model.layers.{i}"}
        assert len(call) == 4


def test_streamed_report_has_model_info_of_the_in_memory_one(tmp_path: Path) -> None:
    model = _llama()
    model.save_pretrained(tmp_path / "m")
    a, b = analyze(model).model, analyze(tmp_path / "m").model
    for key in ("n_layers", "n_heads", "n_kv_heads", "d_model", "d_head", "gqa", "rotary", "scale"):
        assert a[key] == b[key], key
    assert b["model_class"] == "LlamaForCausalLM" and b["source"] == str(tmp_path / "m")


def test_uncovered_architecture_falls_back_with_a_warning(tmp_path: Path) -> None:
    cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], num_channels=3)
    transformers.ResNetModel(cfg).save_pretrained(tmp_path / "r")
    with pytest.warns(StreamingFallbackWarning, match="in memory"):
        with pytest.raises(RankdecayError, match="no adapter|no attention"):
            analyze(tmp_path / "r")


def test_fold_norm_uses_the_in_memory_path(tmp_path: Path) -> None:
    """fold_norm needs the norm layers, so the whole model is built: said, with its size (it was
    silent, which on a 70B directory meant an unannounced ~280 GB load)."""
    model = _gpt2()
    model.save_pretrained(tmp_path / "g")
    with pytest.warns(StreamingFallbackWarning, match="fold_norm needs the norm layers.*GiB"):
        report = analyze(tmp_path / "g", fold_norm=True)
    assert "streamed" not in report.model and report.model["fold_norm"] is True
    _same(analyze(model, fold_norm=True), report)


# ---------------------------------------------------------------------------------------------
# Run directories
# ---------------------------------------------------------------------------------------------


def _run_dir(tmp_path: Path, **model_options: Any) -> tuple[Path, nn.Module]:
    from safetensors.torch import save_model

    from rankdecay.models import ModelConfig, TinyTransformer

    torch.manual_seed(3)
    cfg = ModelConfig(
        n_layers=2, d_model=32, n_heads=4, d_mlp=0, vocab_size=17, max_len=9, **model_options
    )
    model = TinyTransformer(cfg).eval()
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    save_model(model, str(run / "checkpoint" / "model.safetensors"))
    stored = dataclasses.asdict(cfg) | {"vocab_size": 0}  # as runs store it: the task fills it
    meta = {"experiment": "recall", "preset": "quick", "seed": 0, "config": {"model": stored}}
    (run / "config.json").write_text(json.dumps(meta))
    return run, model


@pytest.mark.parametrize("options", [{}, {"pos": "rotary", "qk_norm": "l2", "norm": "rms"}])
def test_run_directory(tmp_path: Path, options: dict[str, Any]) -> None:
    run, model = _run_dir(tmp_path, **options)
    _same(analyze(model), analyze(run))
    _same(analyze(model), analyze(run / "checkpoint"))
    assert analyze(run).model["model_class"] == "TinyTransformer"


def test_run_directory_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = _run_dir(tmp_path)
    meta = json.loads((run / "config.json").read_text())
    meta["config"]["model"]["n_layers"] = 10**6
    (run / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CorruptCheckpointError, match="declares 1000000 layers"):
        _within(30, lambda: analyze(run))
    (run / "checkpoint" / "model.safetensors").unlink()
    assert main(["analyze", str(run)]) == 2
    assert "no checkpoint" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Hostile and damaged directories
# ---------------------------------------------------------------------------------------------


def _rewrite_header(path: Path, mutate: Callable[[dict[str, Any]], None]) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    mutate(header)
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def _first_attention(header: dict[str, Any]) -> str:
    return next(k for k in header if k.endswith("q_proj.weight"))


def _saved(tmp_path: Path) -> Path:
    path = tmp_path / "m"
    _llama().save_pretrained(path)
    return path


def test_remote_code_is_refused_and_never_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _saved(tmp_path)
    marker = tmp_path / "CODE_RAN"
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    for name in ("evil.py", "configuration_evil.py", "modeling_evil.py", "__init__.py"):
        (path / name).write_text(code)
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModel": "modeling_evil.EvilModel",
    }
    (path / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(path)  # even `import evil` from the working directory would find it
    with pytest.raises(RemoteCodeError, match="auto_map") as info:
        _within(30, lambda: analyze(path))
    assert isinstance(info.value, ValueError)
    with pytest.raises(RemoteCodeError):
        load_model(path)
    config.pop("auto_map")
    config["text_config"] = {"auto_map": {"AutoConfig": "evil.X"}}  # nested, too
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RemoteCodeError):
        analyze(path)
    assert not marker.exists()


def test_remote_code_cli_in_a_real_process_never_prompts(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    marker = tmp_path / "CODE_RAN"
    (path / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (path / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "rankdecay.cli", "analyze", str(path)],
        input="y\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2 and "auto_map" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def _sharded(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    path = tmp_path / "s"
    _llama().save_pretrained(path, max_shard_size="30KB")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    return path, index


def _point_first_shard(path: Path, index: dict[str, Any], target: str) -> str:
    first = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"] = {k: (target if v == first else v) for k, v in index["weight_map"].items()}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return first


@pytest.mark.parametrize("where", ["parent", "absolute", "nested-dotdot"])
def test_shard_paths_outside_the_directory_are_refused(tmp_path: Path, where: str) -> None:
    path, index = _sharded(tmp_path)
    first = sorted(set(index["weight_map"].values()))[0]
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((path / first).read_bytes())  # a valid file: only the check stops it
    target = {
        "parent": "../outside.safetensors",
        "absolute": str(outside),
        "nested-dotdot": "sub/../../outside.safetensors",
    }[where]
    _point_first_shard(path, index, target)
    with pytest.raises(UnsafePathError, match="outside the model directory") as info:
        analyze(path)
    assert isinstance(info.value, ValueError)


def test_fifo_shard_does_not_hang(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, index = _sharded(tmp_path)
    os.mkfifo(path / "pipe.safetensors")
    _point_first_shard(path, index, "pipe.safetensors")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        _within(20, lambda: analyze(path))
    assert _within(20, lambda: main(["analyze", str(path)])) == 2
    assert "not a regular file" in capsys.readouterr().err
    single = _saved(tmp_path / "single")  # the single-file name as a FIFO
    (single / "model.safetensors").unlink()
    os.mkfifo(single / "model.safetensors")
    with pytest.raises(UnsafePathError):
        _within(20, lambda: analyze(single))
    os.unlink(single / "config.json")
    os.mkfifo(single / "config.json")
    with pytest.raises(UnsafePathError):
        _within(20, lambda: analyze(single))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("family", ["llama", "neox"])
def test_config_sizes_beyond_the_files_fail_fast_without_allocating(
    tmp_path: Path, family: str
) -> None:
    path = tmp_path / family
    if family == "llama":  # streamed
        _llama().save_pretrained(path)
    else:  # not covered by the name-based plan: the in-memory path's checks
        cfg = transformers.GPTNeoXConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=50,
        )
        transformers.GPTNeoXModel(cfg).save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config["num_hidden_layers"] = 10**6
    (path / "config.json").write_text(json.dumps(config))
    before, start = _rss_mb(), time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StreamingFallbackWarning)
        with pytest.raises(CorruptCheckpointError, match="1000000"):
            _within(30, lambda: analyze(path))
    assert time.perf_counter() - start < 30 and _rss_mb() - before < 200
    # widths far beyond the tensors: refused before allocating, too
    config["num_hidden_layers"] = 2
    config["hidden_size"] = config["intermediate_size"] = 10**6
    (path / "config.json").write_text(json.dumps(config))
    before = _rss_mb()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StreamingFallbackWarning)
        with pytest.raises(CorruptCheckpointError):
            _within(60, lambda: analyze(path))
    assert _rss_mb() - before < 200


def test_sub_config_of_a_tower_the_weights_do_not_hold(tmp_path: Path) -> None:
    """A standalone MoshiModel keeps its depth decoder's config (8 layers) but not its weights:
    analysed like any model (it was refused as "the config does not belong to these weights");
    an absurd sub-config count is still refused at once."""
    model = transformers.MoshiModel(
        transformers.MoshiConfig(
            vocab_size=50,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            head_dim=8,
            ffn_dim=64,
            audio_vocab_size=50,
        )
    )
    path = tmp_path / "moshi"
    model.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    assert config["depth_decoder_config"]["num_hidden_layers"] > 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StreamingFallbackWarning)
        report = analyze(path)
    assert len({r["layer"] for r in report.records}) == 2
    config["depth_decoder_config"]["num_hidden_layers"] = 10**6
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptCheckpointError, match="1000000"):
        _within(30, lambda: analyze(path))


def test_heads_from_config_that_do_not_fit_the_tensors(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["num_attention_heads"] = 7  # 64 = 8·8 does not split into 7 heads
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptCheckpointError, match="do not fit"):
        analyze(path)


def test_truncated_shard(tmp_path: Path) -> None:
    path, index = _sharded(tmp_path)
    shard = path / sorted(set(index["weight_map"].values()))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CorruptCheckpointError, match="truncated") as info:
        analyze(path)
    assert isinstance(info.value, ValueError)
    shard.write_bytes(b"\x01\x00")
    with pytest.raises(CorruptCheckpointError, match="shorter than"):
        analyze(path)


def _lie_shape(h: dict[str, Any]) -> None:
    h[_first_attention(h)]["shape"][0] *= 2


def _lie_offsets_beyond_end(h: dict[str, Any]) -> None:
    e = h[_first_attention(h)]
    e["data_offsets"] = [e["data_offsets"][0] + 10**9, e["data_offsets"][1] + 10**9]


def _lie_overlap(h: dict[str, Any]) -> None:
    entries = sorted((v["data_offsets"], k) for k, v in h.items() if k != "__metadata__")
    (b0, e0), _ = entries[0]
    (b1, e1), k1 = entries[1]
    h[k1]["data_offsets"] = [b0, b0 + (e1 - b1)] if e1 - b1 <= e0 - b0 else [b1 - 4, e1 - 4]


def _lie_dtype(h: dict[str, Any]) -> None:
    h[_first_attention(h)]["dtype"] = "F64"  # bytes are float32: the size no longer matches


def _lie_unknown_dtype(h: dict[str, Any]) -> None:
    h[_first_attention(h)]["dtype"] = "Q4_K"


def _lie_negative_shape(h: dict[str, Any]) -> None:
    h[_first_attention(h)]["shape"] = [-64, -64]


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (_lie_shape, "needs"),
        (_lie_offsets_beyond_end, "truncated"),
        (_lie_overlap, "overlap|needs"),
        (_lie_dtype, "needs"),
        (_lie_unknown_dtype, "unknown dtype"),
        (_lie_negative_shape, "no valid shape"),
    ],
)
def test_lying_safetensors_headers(
    tmp_path: Path,
    mutate: Callable[[dict[str, Any]], None],
    expected: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _saved(tmp_path)
    _rewrite_header(path / "model.safetensors", mutate)
    with pytest.raises(CorruptCheckpointError, match=expected):
        read_safetensors_header(path / "model.safetensors")
    capsys.readouterr()
    assert main(["analyze", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rankdecay: error: ") and "\n" not in err and "Traceback" not in err


def test_header_length_bomb_and_garbage_json(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(struct.pack("<Q", 2**63) + data[8:])
    with pytest.raises(CorruptCheckpointError, match="exceeds"):
        analyze(path)
    weights.write_bytes(struct.pack("<Q", 20_000) + b"[" * 20_000)
    with pytest.raises(CorruptCheckpointError, match="JSON"):
        analyze(path)


def test_quantized_attention_weights_are_named(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = _llama()
    path = tmp_path / "q"
    model.save_pretrained(path)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    key = "model.layers.0.self_attn.q_proj.weight"
    state[key] = state[key].to(torch.int8)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CorruptCheckpointError, match="quantized"):
        analyze(path)


def test_missing_weights_and_missing_shard(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(MissingWeightsError, match="no model.safetensors") as info:
        analyze(path)
    assert isinstance(info.value, FileNotFoundError)
    spath, index = _sharded(tmp_path)
    (spath / sorted(set(index["weight_map"].values()))[0]).unlink()
    with pytest.raises(MissingWeightsError, match="does not exist"):
        analyze(spath)
    index["weight_map"] = "nope"
    (spath / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CorruptCheckpointError, match="weight_map"):
        analyze(spath)


def test_hub_id_gets_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match="only local directories") as info:
        analyze("meta-llama/Llama-3-8B")
    assert isinstance(info.value, FileNotFoundError)
    assert main(["analyze", "meta-llama/Llama-3-8B"]) == 2
    err = capsys.readouterr().err.strip()
    assert "only local directories" in err and "\n" not in err
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        analyze(tmp_path / "no" / "such" / "dir")


def test_progress_bar_and_hub_cache_symlinks(tmp_path: Path) -> None:
    """The Hugging Face cache links snapshot files to its blob store: links are followed, while
    the names in the index stay inside the directory."""
    model = _llama()
    model.save_pretrained(tmp_path / "m", max_shard_size="30KB")
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snap.mkdir(parents=True)
    for f in (tmp_path / "m").iterdir():
        (f.rename(blobs / f.name))
        (snap / f.name).symlink_to(Path("../..") / "blobs" / f.name)
    _same(analyze(model), analyze(snap, progress=True))


def test_sharded_bin_checkpoint(tmp_path: Path) -> None:
    model = _llama()
    path = tmp_path / "b"
    model.save_pretrained(path)
    (path / "model.safetensors").unlink()
    state = model.state_dict()
    names = sorted(state)
    halves = {
        "pytorch_model-00001-of-00002.bin": names[::2],
        "pytorch_model-00002-of-00002.bin": names[1::2],
    }
    weight_map = {}
    for fname, part in halves.items():
        torch.save({k: state[k] for k in part}, path / fname)
        weight_map.update({k: fname for k in part})
    index = path / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    _same(analyze(model), analyze(path))
    weight_map[names[0]] = "../escape.bin"
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(UnsafePathError):
        analyze(path)


def test_attention_the_plan_misses_is_named_in_a_warning(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from rankdecay.heads import UnrecognizedAttentionWarning

    model = _llama()
    path = tmp_path / "m"
    model.save_pretrained(path)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    state["adapter_tower.blocks.0.attn.qkv.weight"] = torch.zeros(3 * 64, 64)  # no output proj
    save_file(state, str(path / "model.safetensors"))
    with pytest.warns(UnrecognizedAttentionWarning, match="adapter_tower.blocks.0.attn"):
        report = analyze(path)
    assert report.model["n_layers"] == 3  # the covered layers are still reported

    # strict=True (CLI --strict): the same miss is an error, in the library and on the CLI
    from rankdecay.cli import main
    from rankdecay.heads import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="adapter_tower.blocks.0.attn"):
        analyze(path, strict=True)
    assert main(["analyze", str(path), "--strict", "--no-progress"]) == 2


_FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "gpt_neox": lambda: transformers.GPTNeoXModel(
        transformers.GPTNeoXConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=50,
        )
    ),
    "falcon": lambda: transformers.FalconModel(
        transformers.FalconConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_kv_heads=2,
            new_decoder_architecture=True,
            vocab_size=50,
        )
    ),
    "t5": lambda: transformers.T5Model(
        transformers.T5Config(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8, vocab_size=50)
    ),
    "bart": lambda: transformers.BartModel(
        transformers.BartConfig(
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            vocab_size=50,
        )
    ),
    "clip": lambda: transformers.CLIPModel(
        transformers.CLIPConfig(
            text_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                "vocab_size": 50,
            },
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                "image_size": 32,
                "patch_size": 8,
            },
        )
    ),
    "phi3": lambda: transformers.Phi3Model(
        transformers.Phi3Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=50,
            pad_token_id=0,
        )
    ),
}


_FAMILIES.update(  # value heads of their own size (MiMo: r_v = 8 ≠ r = 12) or count (k 2, v 4)
    {
        "mimo_v2_flash": lambda: transformers.MiMoV2FlashModel(
            transformers.MiMoV2FlashConfig(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=1,
                head_dim=12,
                v_head_dim=8,
                intermediate_size=64,
                vocab_size=50,
                layer_types=["full_attention", "sliding_attention"],
                mlp_layer_types=["dense", "dense"],
            )
        ),
        "nemotron3_diarization_kv2": lambda: transformers.Nemotron3DiarizationAudioModel(
            transformers.Nemotron3DiarizationAudioConfig(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
            )
        ),
    }
)


@pytest.mark.parametrize("family", sorted(_FAMILIES))
def test_streaming_equals_in_memory_across_layouts(family: str, tmp_path: Path) -> None:
    """Fused [H,3,r] / grouped / [3,H,r] splits, cross-attention and two towers, sharded."""
    torch.manual_seed(4)
    model = _FAMILIES[family]().eval()
    model.save_pretrained(tmp_path / family, max_shard_size="40KB")
    with warnings.catch_warnings():
        warnings.simplefilter("error", StreamingFallbackWarning)
        streamed = analyze(tmp_path / family)
    assert streamed.model["streamed"] is True
    _same(analyze(model), streamed)  # same order, names, heads and values


_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 16,
}
_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "vocab_size": 100,
}
_VISION_LANGUAGE: dict[str, Callable[[], nn.Module]] = {
    "llava": lambda: transformers.LlavaForConditionalGeneration(
        transformers.LlavaConfig(
            vision_config=transformers.CLIPVisionConfig(**_VISION),
            text_config=transformers.LlamaConfig(**_TEXT),
        )
    ),
    "mistral3": lambda: transformers.Mistral3ForConditionalGeneration(
        transformers.Mistral3Config(
            vision_config=transformers.PixtralVisionConfig(**_VISION, head_dim=16),
            text_config=transformers.MistralConfig(**_TEXT),
        )
    ),
    # its config.json keeps a top-level hidden_size of 2048 whatever the text tower's width
    "paligemma": lambda: transformers.PaliGemmaForConditionalGeneration(
        transformers.PaliGemmaConfig(
            vision_config=transformers.SiglipVisionConfig(**_VISION),
            text_config=transformers.GemmaConfig(**_TEXT),
        )
    ),
    # SigLIP's pooling head is a torch.nn.MultiheadAttention (P.in_proj_weight, P.out_proj)
    "gemma3": lambda: transformers.Gemma3ForConditionalGeneration(
        transformers.Gemma3Config(
            vision_config=transformers.SiglipVisionConfig(**_VISION),
            text_config=transformers.Gemma3TextConfig(**_TEXT),
            mm_tokens_per_image=4,
        )
    ),
}


@pytest.mark.parametrize("family", sorted(_VISION_LANGUAGE))
def test_vision_language_checkpoints_stream_as_the_model_reports(
    family: str, tmp_path: Path
) -> None:
    """LLaVA-style checkpoints: every attention module, the vision tower's first as the model
    registers it, with the model's values and names — saved with the legacy keys
    ``language_model.model.layers.N``, named ``model.language_model.layers.N`` as the loaded
    model names them (transformers' renamings, from the model built on the meta device)."""
    torch.manual_seed(6)
    model = _VISION_LANGUAGE[family]().eval()
    model.save_pretrained(tmp_path / family)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        streamed = analyze(tmp_path / family)
    assert streamed.model["streamed"] is True
    live = analyze(model)
    _same(live, streamed)  # same order, names, heads and values
    assert streamed.model["layer_names"] == live.model["layer_names"]
    assert "vision" in streamed.records[0]["name"]


def test_an_unplanned_multihead_attention_is_named(tmp_path: Path) -> None:
    """A fused ``P.in_proj_weight`` whose module the plan cannot read (no head count for it in
    the config) is named in a warning, not skipped in silence."""
    from safetensors.torch import save_file

    from rankdecay.heads import UnrecognizedAttentionWarning

    model = _llama()
    path = tmp_path / "m"
    model.save_pretrained(path)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    state["pool.attention.in_proj_weight"] = torch.zeros(3 * 64, 64)  # no out_proj beside it
    save_file(state, str(path / "model.safetensors"))
    with pytest.warns(UnrecognizedAttentionWarning, match="pool.attention"):
        analyze(path)


# ---------------------------------------------------------------------------------------------
# Multi-head latent attention (DeepSeek-V2/V3): planned from tensor names + config.json
# ---------------------------------------------------------------------------------------------


def _deepseek(version: str, q_lora: int | None, **options: Any) -> nn.Module:
    torch.manual_seed(5)
    config = getattr(transformers, f"Deepseek{version}Config")(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=q_lora,
        kv_lora_rank=8,
        qk_nope_head_dim=6,
        qk_rope_head_dim=4,
        v_head_dim=5,
        intermediate_size=40,
        moe_intermediate_size=20,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=1,
        vocab_size=50,
        **options,
    )
    return getattr(transformers, f"Deepseek{version}Model")(config).eval()


_YARN = {
    "rope_type": "yarn",
    "factor": 4.0,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "original_max_position_embeddings": 1024,
}


@pytest.mark.parametrize(
    "version,q_lora,shard,options",
    [
        ("V3", 16, "20KB", {}),
        ("V2", None, "20KB", {}),  # V2-Lite: one q_proj, no query LoRA
        ("V2", 12, None, {}),
        ("V3", 16, None, {"rope_scaling": _YARN}),  # scale × mscale²
    ],
)
def test_mla_streams_and_equals_in_memory(
    version: str, q_lora: int | None, shard: str | None, options: dict[str, Any], tmp_path: Path
) -> None:
    model = _deepseek(version, q_lora, **options)
    path = tmp_path / "ds"
    model.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    assert (path / "model.safetensors.index.json").is_file() == (shard is not None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StreamingFallbackWarning)
        streamed = analyze(path)
    assert streamed.model["streamed"] is True
    in_memory = analyze(model)
    _same(in_memory, streamed)
    for key in ("layer_names", "scale", "notes", "flags", "n_heads", "d_head", "d_v", "rotary"):
        assert streamed.model[key] == in_memory.model[key], key
    assert streamed.model["flags"]["layers.0.self_attn"]["mla"] is True
    if options:
        assert streamed.model["scale"] != pytest.approx(10**-0.5)


def test_mla_negative_control_permuted_heads_differ(tmp_path: Path) -> None:
    """The equality above can fail: heads 0 and 1 of kv_b_proj swapped on disk change the
    streamed records of every layer (and only the head labels of kv_b_proj's rows move)."""
    from safetensors.torch import save_file

    model = _deepseek("V3", 16)
    path = tmp_path / "ds"
    model.save_pretrained(path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    for i in range(2):
        w = state[f"layers.{i}.self_attn.kv_b_proj.weight"].reshape(4, 11, 8)
        state[f"layers.{i}.self_attn.kv_b_proj.weight"] = w[[1, 0, 2, 3]].reshape(44, 8)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(AssertionError):
        _same(analyze(model), analyze(path))


def test_mla_missing_or_misfit_tensor_is_one_sentence_before_any_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import save_file

    model = _deepseek("V3", 16)
    path = tmp_path / "ds"
    model.save_pretrained(path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    del state["layers.1.self_attn.kv_b_proj.weight"]
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    reads: list[Any] = []
    monkeypatch.setattr(CheckpointIndex, "read", lambda self, names: reads.append(names))
    with pytest.raises(CorruptCheckpointError, match=r"lack 'layers\.1\.self_attn\.kv_b_proj") as e:
        analyze(path)
    assert isinstance(e.value, RankdecayError) and "save_pretrained" in str(e.value)
    assert main(["analyze", str(path), "--no-progress"]) == 2
    assert "kv_b_proj" in capsys.readouterr().err
    config = json.loads((path / "config.json").read_text())
    config["kv_lora_rank"] = 6  # the widths of kv_a_proj_with_mqa / kv_b_proj no longer fit
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptCheckpointError, match="do not fit.*kv_a_proj_with_mqa"):
        analyze(path)
    assert reads == []  # nothing was read: the dry run on the headers refused both


def test_mla_reads_one_layer_of_attention_tensors_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import save_file

    model = _deepseek("V3", 16)
    path = tmp_path / "ds"
    model.save_pretrained(path, max_shard_size="20KB")
    calls: list[list[str]] = []
    original = CheckpointIndex.read

    def spy(self: CheckpointIndex, names: Any) -> Any:
        calls.append(list(names))
        return original(self, names)

    monkeypatch.setattr(CheckpointIndex, "read", spy)
    analyze(path)
    parts = {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"}
    assert [sorted(c) for c in calls] == [
        sorted(f"layers.{i}.self_attn.{p}.weight" for p in parts) for i in range(2)
    ]  # one layer per read, its five projections, no norm, MLP or embedding tensor

    # DeepSeek-V3's multi-token-prediction layer (layers.<num_hidden_layers>, which
    # transformers does not load) is not planned either
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    for k in list(state):
        if k.startswith("layers.0."):
            state["layers.2." + k[len("layers.0.") :]] = state[k].clone()
    single = tmp_path / "mtp"
    model.save_pretrained(single)
    save_file(state, str(single / "model.safetensors"), metadata={"format": "pt"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither planned nor reported as missed
        report = analyze(single)
    assert report.model["layer_names"] == ["layers.0.self_attn", "layers.1.self_attn"]


def test_mla_fold_norm_uses_the_in_memory_rule(tmp_path: Path) -> None:
    model = _deepseek("V3", 16)
    with torch.no_grad():  # gains ≠ 1, so folding them changes the spectra
        for name, p in model.named_parameters():
            if name.endswith("_layernorm.weight"):
                p.uniform_(0.5, 2.0)
    model.save_pretrained(tmp_path / "ds")
    report = analyze(tmp_path / "ds", fold_norm=True)
    assert "streamed" not in report.model and report.model["fold_norm"] is True
    _same(analyze(model, fold_norm=True), report)
    with pytest.raises(AssertionError):
        _same(analyze(model), report)


def test_mla_module_the_plan_does_not_cover_is_named(tmp_path: Path) -> None:
    """An MLA module (``kv_a_proj_with_mqa``, ``q_a_proj``) in a model type the plan does not
    read as MLA is named in the warning, not silently left out of the streamed report."""
    from safetensors.torch import save_file

    from rankdecay.heads import UnrecognizedAttentionWarning

    model = _llama()
    path = tmp_path / "m"
    model.save_pretrained(path)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    for part, shape in (("q_a_proj", (16, 64)), ("kv_a_proj_with_mqa", (12, 64))):
        state[f"extra.0.self_attn.{part}.weight"] = torch.zeros(shape)
    state["extra.0.self_attn.o_proj.weight"] = torch.zeros(64, 64)
    save_file(state, str(path / "model.safetensors"))
    with pytest.warns(UnrecognizedAttentionWarning, match="extra.0.self_attn"):
        assert analyze(path).model["n_layers"] == 3


@pytest.mark.parametrize("q_lora", [16, None])
def test_mla_checkpoint_plan_builds_the_live_layer_heads(q_lora: int | None) -> None:
    """plan_from_checkpoint(config.json, names) + layer_heads_from_tensors(state_dict) gives the
    live rule's LayerHeads bit for bit (factors, chains, flags, notes, scale, params); with
    materialize=False (what streaming uses) the chains are the same and W_Q, W_K, W_V stay meta."""
    from rankdecay.heads import attention_heads, layer_heads_from_tensors, plan_from_checkpoint

    model = _deepseek("V2", q_lora)
    live = {lh.name: lh for lh in attention_heads(model)}
    state = model.state_dict()
    plans = plan_from_checkpoint(json.loads(model.config.to_json_string()), list(state))
    assert [p.name for p in plans] == list(live)
    for plan in plans:
        ref = live[plan.name]
        for materialize in (True, False):
            disk = layer_heads_from_tensors(plan, state.__getitem__, materialize=materialize)
            for f in (
                "layer",
                "name",
                "flags",
                "notes",
                "scale",
                "qk_params",
                "ov_params",
                "family",
            ):
                assert getattr(disk, f) == getattr(ref, f), f
            assert disk.W_O.equal(ref.W_O)
            for circuit in ("qk", "ov"):
                for got, want in zip(disk.chains[circuit], ref.chains[circuit], strict=True):  # type: ignore[index]
                    assert all(g.equal(w) for g, w in zip(got, want, strict=True))
            for f in ("W_Q", "W_K", "W_V"):  # products: torch.matmul of a (d, ·) by a batch
                got, want = getattr(disk, f), getattr(ref, f)  # rounds differently for tensors
                assert (got.shape, got.dtype) == (want.shape, want.dtype)  # with requires_grad
                if materialize or (f == "W_Q" and q_lora is None):
                    atol = 1e-6 * float(want.abs().max())  # float32 rounding of the sums
                    torch.testing.assert_close(got, want, rtol=1e-6, atol=atol)
                else:
                    assert got.is_meta


def test_mla_legacy_rope_scaling_in_config_json(tmp_path: Path) -> None:
    """A hub config.json that still says rope_scaling {"type": "yarn", …} (DeepSeek-V2-Lite,
    V3) gives the scale transformers gives it."""
    model = _deepseek("V2", None, rope_scaling=_YARN)
    model.save_pretrained(tmp_path / "ds")
    config = json.loads((tmp_path / "ds" / "config.json").read_text())
    params = config.pop("rope_parameters")
    params["type"] = params.pop("rope_type")
    config["rope_scaling"] = params
    (tmp_path / "ds" / "config.json").write_text(json.dumps(config))
    streamed = analyze(tmp_path / "ds")
    assert streamed.model["streamed"] is True
    assert streamed.model["scale"] == pytest.approx(analyze(model).model["scale"], rel=1e-15)
    assert streamed.model["scale"] == pytest.approx(
        analyze(load_model(tmp_path / "ds")).model["scale"], rel=1e-15
    )
    assert streamed.model["scale"] != pytest.approx(10**-0.5)


def _fp8_checkpoint(tmp_path: Path, block: tuple[int, int]) -> tuple[Path, nn.Module]:
    """A DeepSeek-V3 directory whose attention projections are stored as FP8 with per-block
    ``weight_scale_inv`` (DeepSeek's own format), and the model holding the dequantized weights."""
    from safetensors.torch import load_file, save_file

    model = _deepseek("V3", 12)
    directory = tmp_path / "fp8"
    model.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "weight_block_size": list(block)}
    (directory / "config.json").write_text(json.dumps(config))
    state = load_file(directory / "model.safetensors")
    projections = ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
    params = dict(model.named_parameters())
    for name in [n for n in state if n.split(".")[-2] in projections and n.endswith("weight")]:
        W = state[name].float()
        rows, cols = W.shape
        pad = torch.zeros(-(-rows // block[0]) * block[0], -(-cols // block[1]) * block[1])
        pad[:rows, :cols] = W.abs()
        amax = pad.unflatten(0, (-1, block[0])).unflatten(2, (-1, block[1])).amax((1, 3))
        scale = (amax / 448.0).clamp_min(1e-12)  # e4m3's largest value
        wide = scale.repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
        state[name] = (W / wide).to(torch.float8_e4m3fn)
        state[name + "_scale_inv"] = scale
        with torch.no_grad():  # the model the FP8 file stands for: W_fp8 · s
            params[name].copy_(state[name].float() * wide)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    return directory, model


def test_fp8_block_scaled_checkpoint_streams_dequantized(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DeepSeek-V3-style FP8 weights with per-block weight_scale_inv (blocks 8×16, not dividing
    every shape) stream as W·s in float32: equal to analyze() of the dequantized model. Negative
    controls: reading the FP8 values without their scales differs; a scale tensor that does not
    tile its weight is refused before any read."""
    directory, model = _fp8_checkpoint(tmp_path, (8, 16))
    _same(analyze(model), analyze(directory))
    import rankdecay.checkpoint as checkpoint_mod

    with monkeypatch.context() as patch:  # the scales dropped
        patch.setattr(checkpoint_mod, "dequantize_block_fp8", lambda W, s, block: W.float())
        with pytest.raises(AssertionError):
            _same(analyze(model), analyze(directory))
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"]["weight_block_size"] = [4, 16]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptCheckpointError, match="weight_scale_inv.*blocks"):
        analyze(directory)


def test_fp8_checkpoint_in_memory_dequantized_and_unscaled_refused(tmp_path: Path) -> None:
    """The in-memory loader (fold_norm, or a family the plan does not cover) dequantizes FP8
    weights with their block scales too; an FP8 weight without scales is refused in one sentence
    instead of being cast to float as if the 8-bit values were the weights."""
    from safetensors.torch import load_file, save_file

    directory, model = _fp8_checkpoint(tmp_path, (8, 16))
    loaded = load_model(directory)
    _same(analyze(model), analyze(loaded))
    state = load_file(directory / "model.safetensors")
    for name in [n for n in state if n.endswith("_scale_inv")]:
        del state[name]
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CorruptCheckpointError, match="float8_e4m3fn without scales"):
        load_model(directory)


def test_kv_shared_layers_stream_like_in_memory(tmp_path: Path) -> None:
    """Gemma-4's KV-shared layers (num_kv_shared_layers) hold q and o but no k, v of their own:
    both paths take W_K, W_V from the layer whose keys and values they reuse (the streamed plan
    from config.json alone), with no warning, and the records are equal (streaming once refused
    the directory as 'the config or the shards do not belong together', then warned). The
    full-attention layers have heads of their own size and count (``per_layer_config``, read
    per layer from config.json) and values from the keys (``attention_k_eq_v``)."""
    from rankdecay.heads import UnrecognizedAttentionWarning

    transformers_ = pytest.importorskip("transformers")
    config = transformers_.Gemma4TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        global_head_dim=16,  # full-attention layers: per_layer_config
        num_global_key_value_heads=1,
        attention_k_eq_v=True,
        hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=64,
        layer_types=["sliding_attention", "full_attention"] * 2,
        num_kv_shared_layers=2,
    )
    torch.manual_seed(0)
    model = transformers_.Gemma4TextModel(config).eval()
    model.save_pretrained(tmp_path / "g4")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnrecognizedAttentionWarning)
        streamed = analyze(tmp_path / "g4")
        in_memory = analyze(model)
    assert streamed.model["layer_names"] == [f"layers.{i}.self_attn" for i in range(4)]
    _same(streamed, in_memory)
    for report in (streamed, in_memory):
        shared = {n: f.get("kv_shared") for n, f in report.model["flags"].items()}
        assert shared == {
            "layers.0.self_attn": None,
            "layers.1.self_attn": None,
            "layers.2.self_attn": "layers.0.self_attn",
            "layers.3.self_attn": "layers.1.self_attn",
        }


def test_a_family_without_a_row_that_the_config_misleads_is_analysed_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MobileBERT's attention is true_hidden_size wide, not hidden_size: the generic keys of its
    config.json split it wrongly. The model built on the meta device reads the module's own
    widths, so the directory streams, equal to analyze(model). Without that model (transformers
    cannot build it) the plan's guess failing is not a corrupt checkpoint: analyze(DIR) says so
    in a StreamingFallbackWarning and builds the model, with the in-memory report (it had raised
    CorruptCheckpointError on a valid directory)."""
    transformers_ = pytest.importorskip("transformers")
    config = transformers_.MobileBertConfig(
        vocab_size=64,
        hidden_size=64,
        true_hidden_size=32,
        intra_bottleneck_size=32,
        embedding_size=32,
        num_attention_heads=4,
        num_hidden_layers=2,
        intermediate_size=64,
        num_feedforward_networks=1,
    )
    torch.manual_seed(0)
    model = transformers_.MobileBertModel(config).eval()
    model.save_pretrained(tmp_path / "mb")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        streamed = analyze(tmp_path / "mb")
    assert streamed.model.get("streamed")
    _same(streamed, analyze(model))
    monkeypatch.setattr("rankdecay.stream.build_meta_model", lambda *args: None)
    with pytest.warns(StreamingFallbackWarning, match="not in rankdecay's table"):
        report = analyze(tmp_path / "mb")
    assert not report.model.get("streamed")
    _same(report, analyze(model))


def test_checkpoint_plan_survey_runs_and_sees_a_misfit() -> None:
    """benchmarks/checkpoint_plan_survey.py at tiny scale: Llama at its default size (32
    layers) plans like the live model, MobileBERT's name-based plan does not split but the plans
    streaming uses (merged with the meta model's) do, both built on the meta device."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        import checkpoint_plan_survey as survey
    finally:
        sys.path.pop(0)
    ok = survey.survey_one("llama")
    assert ok["status"] == "ok" and ok["live"] == ok["planned"] == 32, ok
    misfit = survey.survey_one("mobilebert")
    assert misfit["status"] == "split" and "do not split" in misfit["found"][0], misfit
    # what streaming uses: the meta model's plan (the module's own widths) replaces the misfit
    assert misfit["stream_status"] == "ok" and misfit["from_meta"] == misfit["live"], misfit


def _qwen_vl(kind: str) -> nn.Module:
    """A tiny Qwen3-VL (vision width in ``hidden_size``) or Qwen2-VL (vision width in
    ``embed_dim``, ``hidden_size`` the text width its merger maps to)."""
    transformers_ = pytest.importorskip("transformers")
    text = dict(
        vocab_size=64,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
    )
    if kind == "qwen3_vl":
        vision = dict(depth=2, hidden_size=32, num_heads=4, intermediate_size=64)
        vision.update(out_hidden_size=48, patch_size=4, deepstack_visual_indexes=[0])
        text["rope_parameters"] = {"rope_type": "default", "mrope_section": [2, 2, 2]}
        config = transformers_.Qwen3VLConfig(vision_config=vision, text_config=text)
        model_cls = transformers_.Qwen3VLModel
    else:
        vision = dict(depth=2, embed_dim=32, hidden_size=48, num_heads=4, patch_size=4)
        text["rope_parameters"] = {"rope_type": "default", "mrope_section": [2, 2, 2]}
        config = transformers_.Qwen2VLConfig(vision_config=vision, text_config=text)
        model_cls = transformers_.Qwen2VLModel
    torch.manual_seed(0)
    return model_cls(config).eval()


def test_qwen_vl_checkpoints_stream_their_visual_tower(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Qwen-VL / GLM-4V-style checkpoints keep the vision encoder under ``visual.`` with its heads
    in ``vision_config``: Qwen3-VL streams both towers, in the model's order (visual first), equal
    to analyze(model) in names and values (the visual tower had been left out with a warning).
    A *ForConditionalGeneration checkpoint (towers under ``model.``) keeps that order.
    Qwen2-VL's vision config names its width ``embed_dim`` (``hidden_size`` is the text width),
    which the generic keys misread: the model built on the meta device reads the module's own
    widths and both towers stream; without it that tower is named in a warning and the text
    tower still streams — memory stays bounded, nothing is called corrupt."""
    from rankdecay.heads import UnrecognizedAttentionWarning

    model = _qwen_vl("qwen3_vl")
    model.save_pretrained(tmp_path / "q3")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnrecognizedAttentionWarning)
        streamed = analyze(tmp_path / "q3")
    assert streamed.model.get("streamed")
    in_memory = analyze(model)
    assert streamed.model["layer_names"] == in_memory.model["layer_names"]
    assert streamed.model["layer_names"][0] == "visual.blocks.0.attn"
    _same(streamed, in_memory)
    # saved from the *ForConditionalGeneration class the towers sit under model.: same order
    torch.manual_seed(0)
    full = type(model).__name__.replace("Model", "ForConditionalGeneration")
    full_model = getattr(pytest.importorskip("transformers"), full)(model.config).eval()
    full_model.save_pretrained(tmp_path / "q3_full")
    names = analyze(tmp_path / "q3_full").model["layer_names"]
    assert names == analyze(full_model).model["layer_names"]
    assert names[0] == "model.visual.blocks.0.attn"

    model = _qwen_vl("qwen2_vl")
    model.save_pretrained(tmp_path / "q2")
    with warnings.catch_warnings():  # the module's own widths, from the model on the meta device
        warnings.simplefilter("error")
        whole = analyze(tmp_path / "q2")
    assert whole.model.get("streamed") and whole.model["layer_names"][0] == "visual.blocks.0.attn"
    _same(whole, analyze(model))
    monkeypatch.setattr("rankdecay.stream.build_meta_model", lambda *args: None)  # names only
    with pytest.warns(UnrecognizedAttentionWarning, match=r"2 attention-like .*visual\.blocks\.0"):
        partial = analyze(tmp_path / "q2")
    assert partial.model.get("streamed")
    assert partial.model["layer_names"] == [f"language_model.layers.{i}.self_attn" for i in (0, 1)]
