"""Seams between the parts: one record vocabulary (monitor = analyze), ``fold_norm`` everywhere,
a short repr, library errors in the library's words (the CLI adds the flag), ``rankdecay list``
showing the preset ``run`` uses."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

from rankdecay.analyze import RECORD_FIELDS, SpectralReport, analyze
from rankdecay.cli import main
from rankdecay.config import flatten
from rankdecay.errors import RankdecayError
from rankdecay.experiments import get_experiment
from rankdecay.monitor import SpectralMonitor, summarize_records

SCALARS = ("rank", "effective_rank", "stable_rank", "nuclear_norm", "spectral_norm", "norm_gap")


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        d_model=16, nhead=4, dim_feedforward=32, batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)


def _gqa_model() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
    )  # fmt: skip
    return transformers.LlamaModel(cfg)


def _key(rec: dict) -> tuple:
    return (rec["layer"], rec["circuit"], rec["head"])


@pytest.mark.parametrize("build", [_encoder, _gqa_model])
def test_monitor_records_speak_the_analyze_vocabulary(build) -> None:
    model = build()
    monitor = SpectralMonitor(model, every=1, matrices=True)
    records = monitor.force_step(7)
    circuits = [r for r in records if r["kind"] == "circuit"]
    reference = {_key(r): r for r in analyze(model).records}
    assert len(circuits) == len(reference)
    for rec in circuits:
        assert set(RECORD_FIELDS) <= set(rec) and rec["step"] == 7
        ref = reference[_key(rec)]
        assert (rec["name"], rec["kv_head"], rec["rtol"]) == (
            ref["name"],
            ref["kv_head"],
            ref["rtol"],
        )
        for m in SCALARS:
            assert rec[m] == pytest.approx(ref[m], rel=1e-9, abs=1e-9), m
    if build is _gqa_model:  # 4 query heads read 2 key/value heads
        assert {r["kv_head"] for r in circuits} == {0, 1}
    matrices = [r for r in records if r["kind"] == "matrix"]
    assert matrices and all(r["name"] == reference[(r["layer"], "qk", 0)]["name"] for r in matrices)
    # summaries skip the identifying fields, whatever their type
    summary = summarize_records(records)
    assert "qk_kv_head" not in summary and "qk_rank" in summary
    # the latest recording is an analyze report
    report = monitor.report()
    assert isinstance(report, SpectralReport) and report.model["step"] == 7
    assert [r["rank"] for r in report.summary()] == pytest.approx(
        [r["rank"] for r in analyze(model).summary()]
    )


def test_monitor_takes_fold_norm_like_analyze() -> None:
    model = _encoder()
    with torch.no_grad():  # a norm gain far from 1, so folding changes the spectra
        for mod in model.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.uniform_(0.2, 3.0)
    folded = {_key(r): r for r in analyze(model, fold_norm=True).records}
    raw = {_key(r): r for r in analyze(model).records}
    assert any(abs(folded[k]["nuclear_norm"] - raw[k]["nuclear_norm"]) > 1e-3 for k in raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spelling warns about nothing
        new = SpectralMonitor(model, matrices=False, fold_norm=True).force_step(0)
    with pytest.warns(DeprecationWarning, match="fold_norm"):
        old = SpectralMonitor(model, matrices=False, heads_options={"fold_norm": True})
    assert old.fold_norm and old.force_step(0) == new
    for rec in new:
        assert rec["nuclear_norm"] == pytest.approx(folded[_key(rec)]["nuclear_norm"], rel=1e-9)
    # the HF / Lightning callbacks take the same fold_norm= (and still forward heads_options)
    from rankdecay.integrations.common import SpectralCallbackBase

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        callback = SpectralCallbackBase(every=1, matrices=False, fold_norm=True)
        monitor = callback.ensure_monitor(model, None)
    assert monitor.fold_norm and monitor.force_step(0) == new
    with pytest.warns(DeprecationWarning, match="fold_norm"):
        old_cb = SpectralCallbackBase(matrices=False, heads_options={"fold_norm": True})
        assert old_cb.ensure_monitor(model, None).force_step(0) == new


def test_spectral_report_repr_is_one_short_line() -> None:
    report = analyze(_encoder())
    text = repr(report)
    assert "\n" not in text and len(text) < 160 and "singular_values" not in text
    assert "2 layers × 4 heads" in text and f"{len(report.records)} records" in text


def test_library_errors_name_parameters_and_cli_adds_the_flag(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _encoder()
    for kwargs, param in (({"rtol": -1.0}, "rtol"), ({"circuits": ("qk", "xy")}, "circuits")):
        with pytest.raises(RankdecayError) as info:
            analyze(model, **kwargs)
        assert "--" not in str(info.value) and info.value.param == param
    from rankdecay.sweep import run_sweep

    for kwargs in ({"seeds": "0,0"}, {"grid": ["weight_decay"]}, {"seeds": 0}):
        with pytest.raises(RankdecayError) as info:
            run_sweep("sweep_toy:EXPERIMENT", out=tmp_path / "sw", **kwargs)
        assert not re.search(r"--\w", str(info.value)), str(info.value)
    assert main(["sweep", "sweep_toy:EXPERIMENT", "--seeds", "0,0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith("[--seeds]")


def test_config_run_and_sweep_errors_cite_no_flags(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Representative library errors (bad config values, a resume of a non-run directory, a
    sweep into a run directory) name keys and parameters, never a flag; the CLI adds the flag."""
    from rankdecay.config import apply_overrides
    from rankdecay.sweep import run_sweep

    exp = get_experiment("recall")
    cfg = exp.config("quick")
    svm = get_experiment("attention-svm")
    empty = tmp_path / "empty"
    empty.mkdir()
    a_run = tmp_path / "a_run"
    a_run.mkdir()
    (a_run / "config.json").write_text("{}")
    cases = [
        (lambda: exp.run(apply_overrides(cfg, {"optim.eps": -1}), tmp_path / "a", progress=False),
         "optim.eps", "set optim.eps to"),
        (lambda: apply_overrides(cfg, {"train.steps": "many"}), "train.steps", "train.steps"),
        (lambda: apply_overrides(cfg, ["train.steps"]), "set", "key=value"),
        (lambda: exp.run(cfg, empty, resume=True, progress=False), "resume", "not a rankdecay run"),
        (lambda: run_sweep("sweep_toy:EXPERIMENT", out=a_run), "out", "choose another directory"),
        (lambda: svm.run(svm.config("quick", {"losses": ["nope"]}), tmp_path / "s", progress=False),
         "losses", "unknown loss 'nope'"),
    ]  # fmt: skip
    for call, param, words in cases:
        with pytest.raises(RankdecayError) as info:
            call()
        message = str(info.value)
        assert not re.search(r"--\w", message) and words in message, message
        assert info.value.param == param, (param, info.value.param)
    assert not (tmp_path / "a").exists() and not (tmp_path / "s").exists()
    # the same through the CLI: one line, the flag that sets the parameter appended
    for argv, hint in (
        (["run", "recall", "--set", "optim.eps=-1", "--out", str(tmp_path / "a")],
         "[--set optim.eps=…]"),
        (["run", "--resume", str(empty)], "[--resume]"),
        (["run", "attention-svm", "--set", "losses=nope", "--out", str(tmp_path / "s")],
         "[--set losses=…]"),
        (["sweep", "sweep_toy:EXPERIMENT", "--out", str(a_run)], "[--out]"),
    ):  # fmt: skip
        assert main([*argv, "--threads", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.endswith(hint), (argv, err)


def test_list_shows_the_values_run_uses(capsys: pytest.CaptureFixture[str]) -> None:
    exp = get_experiment("recall")
    quick, base = flatten(exp.config("quick")), flatten(exp.config_cls())
    assert quick["train.steps"] != base["train.steps"]  # the case the table must make plain
    assert main(["list", "recall"]) == 0
    out = capsys.readouterr().out
    assert "preset quick" in out and "rankdecay run recall" in out
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 4:
            rows[cells[0]] = cells
    for key in ("train.steps", "model.d_model", "seed"):
        _, _, value, default = rows[key]
        assert value == repr(quick[key])
        assert default == ("" if quick[key] == base[key] else repr(base[key]))


def test_config_key_errors_get_the_set_hint(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from rankdecay.device import resolve_device

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(RankdecayError) as info:
        resolve_device("cuda")
    assert "--" not in str(info.value) and info.value.param == "train.device"
    argv = ["run", "recall", "--set", "train.device=cuda", "--out", str(tmp_path / "r")]
    assert main([*argv, "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith("[--set train.device=…]")
