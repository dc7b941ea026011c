"""device.py: device selection, bf16 autocast on CPU, torch.compile, spectra on CPU vs on the model's device."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from rankdecay.device import (
    CPUSpectralMonitor,
    autocast,
    available_memory,
    maybe_compile,
    resolve_device,
    spectra_monitor,
)
from rankdecay.errors import RankdecayError
from rankdecay.experiments import get_experiment
from rankdecay.models import ModelConfig, TinyTransformer
from rankdecay.monitor import SpectralMonitor
from rankdecay.runio import read_jsonl
from rankdecay.train import train


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(RankdecayError, match="unknown device"):
        resolve_device("gpu0")
    with pytest.raises(RankdecayError, match="not supported"):
        resolve_device("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RankdecayError, match="no CUDA device"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("CUDA:1") == torch.device("cuda", 1)
    with pytest.raises(RankdecayError, match="only 2 CUDA"):
        resolve_device("cuda:2")


def _model() -> TinyTransformer:
    torch.manual_seed(0)
    return TinyTransformer(
        ModelConfig(vocab_size=13, n_out=13, max_len=6, d_model=32, n_heads=4, d_mlp=64)
    )


def test_bf16_autocast_on_cpu_changes_only_the_matmul_precision() -> None:
    model = _model()
    x = torch.randint(0, 13, (8, 6))
    ref = model(x)
    with autocast(torch.device("cpu"), "bf16"):
        out = model(x)
        assert torch.is_autocast_enabled("cpu")
    assert out.dtype == torch.bfloat16  # the readout ran in bf16 …
    assert model.unembed.weight.dtype == torch.float32  # … on float32 weights
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert 0 < err < 5e-2  # bf16 has an 8-bit mantissa: close, not equal
    with autocast(torch.device("cpu"), "none"):
        assert not torch.is_autocast_enabled("cpu")
        torch.testing.assert_close(model(x), ref)
    with pytest.raises(RankdecayError, match="train.amp"):
        autocast(torch.device("cpu"), "fp16")


TINY = [
    "task.n_keys=4",
    "task.n_values=4",
    "task.n_pairs=2",
    "task.n_eval=64",
    "model.d_model=16",
    "model.n_heads=2",
    "train.batch_size=16",
    "train.steps=8",
    "train.log_every=4",
    "train.eval_every=8",
    "train.monitor_every=8",
    "train.checkpoint_every=8",
    "train.device=cpu",
]


def test_train_with_bf16_and_spectra_on_cpu(tmp_path: Path) -> None:
    exp = get_experiment("recall")
    ref = train(exp.config("quick", TINY), tmp_path / "fp32", progress=False)
    amp = train(
        exp.config("quick", [*TINY, "train.amp=bf16", "train.spectra_device=cpu"]),
        tmp_path / "bf16",
        progress=False,
    )
    assert ref["status"] == amp["status"] == "finished"
    a = [r["loss"] for r in read_jsonl(tmp_path / "fp32" / "metrics.jsonl") if "loss" in r]
    b = [r["loss"] for r in read_jsonl(tmp_path / "bf16" / "metrics.jsonl") if "loss" in r]
    assert a != b and b == pytest.approx(a, rel=5e-2)
    assert amp["final"]["qk_rank"] > 0
    with pytest.raises(RankdecayError, match="must be one of"):
        exp.config("quick", ["train.amp=fp8"])


def test_cpu_spectral_monitor_gives_the_same_records() -> None:
    model = _model()
    a = SpectralMonitor(model, every=1).force_step(3)
    b = CPUSpectralMonitor(model, every=1).force_step(3)
    assert len(a) == len(b) > 0
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if isinstance(ra[k], (str, type(None))):
                assert rb[k] == ra[k], k  # labels (kind, circuit, matrix, ...) are equal exactly
            else:
                assert rb[k] == pytest.approx(ra[k], rel=1e-12, abs=1e-12), k
    assert type(spectra_monitor(model, "model")) is SpectralMonitor
    assert (
        type(spectra_monitor(model, "cpu")) is SpectralMonitor
    )  # the weights are on the CPU already
    with pytest.raises(RankdecayError, match="spectra_device"):
        spectra_monitor(model, "gpu")


def test_maybe_compile_shares_parameters() -> None:
    model = _model()
    assert maybe_compile(model, False) is model
    compiled = maybe_compile(model, True, backend="eager")  # graph capture only: fast
    x = torch.randint(0, 13, (4, 6))
    torch.testing.assert_close(compiled(x), model(x))
    with torch.no_grad():
        model.unembed.weight.mul_(2.0)
    torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.skipif(
    os.environ.get("RANKDECAY_SLOW_TESTS") != "1",
    reason="inductor compiles C++ on the CPU (minutes on 2 shared cores); set RANKDECAY_SLOW_TESTS=1",
)
def test_train_with_torch_compile_inductor(tmp_path: Path) -> None:
    exp = get_experiment("recall")
    t0 = time.perf_counter()
    ref = train(exp.config("quick", TINY), tmp_path / "eager", progress=False)
    out = train(
        exp.config("quick", [*TINY, "train.compile=true"]), tmp_path / "compiled", progress=False
    )
    assert out["status"] == "finished", time.perf_counter() - t0
    assert out["final"]["loss"] == pytest.approx(ref["final"]["loss"], rel=1e-3)


def test_available_memory() -> None:
    free = available_memory(torch.device("cpu"))
    assert 1 << 20 < free < 1 << 50
