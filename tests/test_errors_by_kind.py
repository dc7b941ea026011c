"""Every public function that validates its arguments raises an error of the kind its nature says.

A bad argument raises something ``except ValueError`` (out of range, not one of the choices, a
corrupt file), ``except TypeError`` (the wrong type) or ``except FileNotFoundError`` (a path that
does not exist) catches — the way numpy and torch errors are caught — and that is *also* a
:class:`~rankdecay.errors.RankdecayError`, so the CLI still prints one sentence and exits 2.

:data:`CASES` must cover ``rankdecay.__all__``: a new public name fails
:func:`test_table_covers_the_public_api` until it gets a bad-argument case here, or an entry in
:data:`NO_USER_ARGUMENTS` saying why it has none. :data:`MODULE_CASES` adds the documented
entry points of the library modules that take user input (config files, run directories,
loggers, devices, threads, sweeps, experiments).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import rankdecay as rd
from rankdecay.errors import RankdecayError

V, T, F = ValueError, TypeError, FileNotFoundError
MISSING = "/nonexistent/rankdecay-test/no-such-path"

#: public names that take no user argument to validate, each with the reason
NO_USER_ARGUMENTS: dict[str, str] = {
    "RankdecayError": "the error class itself",
    "UnsupportedModelError": "an error class (raised, not called by users)",
    "UnrecognizedAttentionWarning": "a warning class (issued, not called by users)",
    "__version__": "a string",
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    cfg = rd.ModelConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=1, d_mlp=0, max_len=4)
    return rd.TinyTransformer(cfg)


def _heads() -> Any:
    A = torch.zeros(2, 4, 2)
    return rd.LayerHeads(layer=0, name="attn", W_Q=A, W_K=A, W_V=A, W_O=A.mT)


def _not_a_report(tmp: Path) -> Path:
    path = tmp / "not_a_report.json"
    path.write_text('{"format": "something else"}')
    return path


def _register_restoring(predicate: Any, extractor: Any) -> None:
    """register_adapter, leaving the registry as it was even if the bad adapter got in."""
    from rankdecay import heads

    saved = list(heads._ADAPTERS)
    try:
        rd.register_adapter(predicate, extractor)
    finally:
        heads._ADAPTERS[:] = saved


A34, B35 = torch.randn(4, 3), torch.randn(5, 4)

#: public name → bad calls; each call gets a fresh temporary directory and returns nothing
Case = tuple[Callable[[Path], object], type[Exception] | tuple[type[Exception], ...]]
CASES: dict[str, list[Case]] = {
    "factored_svdvals": [
        (lambda _: rd.factored_svdvals([[1.0]], A34), T),
        (lambda _: rd.factored_svdvals(A34, B35), V),  # inner widths 3 ≠ 4
        (lambda _: rd.factored_svdvals(A34, torch.full((4, 3), math.nan)), V),
    ],
    "factored_svdvals_chain": [
        (lambda _: rd.factored_svdvals_chain([], [A34]), V),
        (lambda _: rd.factored_svdvals_chain(["W"], [A34]), T),
    ],
    "factored_spectrum": [(lambda _: rd.factored_spectrum(A34, torch.randn(4)), V)],
    "rank": [
        (lambda _: rd.rank(torch.ones(3), rtol=-1.0), V),
        (lambda _: rd.rank([3.0, 1.0]), T),
        (lambda _: rd.rank(torch.ones(3), rtol="0.01"), T),
    ],
    "effective_rank": [(lambda _: rd.effective_rank([3.0, 1.0]), T)],
    "stable_rank": [(lambda _: rd.stable_rank((3.0, 1.0)), T)],
    "nuclear_norm": [(lambda _: rd.nuclear_norm([3.0]), T)],
    "frobenius_norm": [(lambda _: rd.frobenius_norm([3.0]), T)],
    "spectral_norm": [(lambda _: rd.spectral_norm([3.0]), T)],
    "balance": [(lambda _: rd.balance(A34, B35), V), (lambda _: rd.balance(A34, None), T)],
    "norm_gap": [(lambda _: rd.norm_gap(A34, B35), V)],
    "spectral_metrics": [(lambda _: rd.spectral_metrics(torch.ones(3), rtol=-1.0), V)],
    "LayerHeads": [(lambda _: _heads().factors("vo"), V)],
    "attention_heads": [
        (lambda _: rd.attention_heads("gpt2"), T),
        (lambda _: rd.attention_heads(nn.Linear(3, 3)), V),  # no attention: unsupported
    ],
    "register_adapter": [(lambda _: _register_restoring("gpt2", lambda m: []), T)],
    "analyze": [
        (lambda _: rd.analyze(MISSING), F),
        (lambda _: rd.analyze(_model(), rtol=-1.0), V),
        (lambda _: rd.analyze(_model(), rtol="tight"), T),
        (lambda _: rd.analyze(_model(), circuits=("vo",)), V),
        (lambda _: rd.analyze(3), T),
        (lambda tmp: rd.analyze(tmp, adapters=True), V),  # exists, holds no adapter
        (lambda _: rd.analyze(MISSING, adapters=True), F),
    ],
    "SpectralReport": [
        (lambda _: rd.SpectralReport.from_json(MISSING), F),
        (lambda tmp: rd.SpectralReport.from_json(_not_a_report(tmp)), V),
        (lambda _: rd.SpectralReport.from_csv(MISSING), F),
    ],
    # an existing directory without config.json: the file the path implies is missing
    "load_model": [(lambda _: rd.load_model(MISSING), F), (lambda tmp: rd.load_model(tmp), F)],
    "polar": [
        (lambda _: rd.polar(A34, method="qr"), V),
        (lambda _: rd.polar(A34, tol=0.0), V),
        (lambda _: rd.polar(torch.ones(3), method="svd"), V),
        (lambda _: rd.polar(torch.ones(3, 3, dtype=torch.int64)), T),
    ],
    # decay.py: converted by helper 16a (fails on branch issue-16d until merged)
    "param_roles": [(lambda _: rd.param_roles("gpt2"), T)],
    "param_groups": [
        (lambda _: rd.param_groups(_model(), weight_decay={"not_a_role": 0.1}), V),
        (lambda _: rd.param_groups(_model(), weight_decay=-1.0), V),
        (lambda _: rd.param_groups(_model(), weight_decay="big"), (V, T)),
    ],
    "describe_groups": [(lambda _: rd.describe_groups([{"weight_decay": 0.1}]), V)],
    "LowRankDecay": [
        (lambda _: rd.LowRankDecay(_model(), strength=-1.0), V),
        (lambda _: rd.LowRankDecay(_model(), strength=0.1, target="everything"), V),
        (lambda _: rd.LowRankDecay(_model(), strength=0.1, polar="qr"), V),
    ],
    "SpectralMonitor": [
        (lambda _: rd.SpectralMonitor("gpt2"), T),
        (lambda _: rd.SpectralMonitor(_model(), every="often"), T),
        (lambda _: rd.SpectralMonitor(_model(), circuits=("vo",)), V),
        (lambda _: rd.SpectralMonitor(_model(), rtol=-1.0), V),
    ],
    # models.py: helper 16a
    "TinyTransformer": [
        (lambda _: rd.TinyTransformer(rd.ModelConfig(d_model=-1)), V),
        (lambda _: rd.TinyTransformer("gpt2"), T),
    ],
    "ModelConfig": [(lambda _: rd.ModelConfig(n_heads=0).validate(), V)],
    "load_run": [(lambda _: rd.load_run(MISSING), F), (lambda tmp: rd.load_run(tmp), V)],
    "load_sweep": [(lambda _: rd.load_sweep(MISSING), F), (lambda tmp: rd.load_sweep(tmp), V)],
}


def _mod(name: str) -> Any:
    import importlib

    return importlib.import_module(f"rankdecay.{name}")


def _bad_json(tmp: Path) -> str:
    path = tmp / "bad.json"
    path.write_text("{not json")
    return str(path)


def _recall_cfg(**overrides: Any) -> Any:
    return _mod("experiments").get_experiment("recall").config("quick", overrides)


#: documented entry points of the library modules (beyond ``rankdecay.__all__``)
MODULE_CASES: dict[str, list[Case]] = {
    "config.apply_overrides": [
        (lambda _: _mod("config").apply_overrides(rd.ModelConfig(), {"no_such_key": 1}), V),
        (lambda _: _mod("config").apply_overrides(rd.ModelConfig(), {"d_model": "wide"}), T),
        (lambda _: _mod("config").apply_overrides(rd.ModelConfig(), {"norm": "batch"}), V),
    ],
    "config.parse_assignment": [(lambda _: _mod("config").parse_assignment("optim.lr"), V)],
    "config.load_config_file": [
        (lambda _: _mod("config").load_config_file(MISSING + ".json"), F),
        (lambda tmp: _mod("config").load_config_file(_bad_json(tmp)), V),
    ],
    "config.from_dict": [(lambda _: _mod("config").from_dict(rd.ModelConfig, {"dmodel": 8}), V)],
    "runio.read_json": [
        (lambda _: _mod("runio").read_json(MISSING), F),
        (lambda tmp: _mod("runio").read_json(_bad_json(tmp)), V),
    ],
    "checkpoint.read_model_config": [
        (lambda _: _mod("checkpoint").read_model_config(Path(MISSING)), F)
    ],
    "lora.lora_factors_from_dir": [(lambda tmp: _mod("lora").lora_factors_from_dir(tmp), (V, F))],
    "sinks.parse_loggers": [(lambda _: _mod("sinks").parse_loggers("tensorbored"), V)],
    "sinks.as_sink": [(lambda _: _mod("sinks").as_sink(42), T)],
    "threads.set_threads": [(lambda _: _mod("threads").set_threads(0), V)],
    "device.resolve_device": [(lambda _: _mod("device").resolve_device("tpu"), V)],
    "device.param_dtype": [(lambda _: _mod("device").param_dtype("float13"), V)],
    "tasks.task_config_class": [(lambda _: _mod("tasks").task_config_class("chess"), V)],
    "stopping.EarlyStop": [(lambda _: _mod("stopping").EarlyStop(above=math.nan), V)],
    "integrations.common.SpectralCallbackBase": [
        (lambda _: _mod("integrations.common").SpectralCallbackBase(every=0), V)
    ],
    "sweep.get_executor": [(lambda _: _mod("sweep").get_executor("slurm"), V)],
    "sweep.plan_sweep": [
        (lambda _: _mod("sweep").plan_sweep("recall", seeds=0), V),
        (lambda _: _mod("sweep").plan_sweep("recall", preset="huge"), V),
        (lambda _: _mod("sweep").plan_sweep("recall", grid=["optim.lr"]), V),
    ],
    # experiments/__init__.py: helper 16c; train.py: helper 16b
    "experiments.get_experiment": [(lambda _: _mod("experiments").get_experiment("chess"), V)],
    "train.train": [
        (lambda tmp: _mod("train").train(_recall_cfg(**{"optim.lr": -1.0}), tmp / "run"), V),
        (lambda tmp: _mod("train").train(_recall_cfg(**{"train.device": "tpu"}), tmp / "run"), V),
        (lambda tmp: _mod("train").train("recall", tmp / "run"), T),
    ],
    "distributed.train_distributed": [
        (lambda tmp: _mod("distributed").train_distributed("recall", tmp / "run"), T),
    ],
}


def test_table_covers_the_public_api() -> None:
    public = set(rd.__all__)
    missing = sorted(public - set(CASES) - set(NO_USER_ARGUMENTS))
    assert not missing, (
        f"public names without a bad-argument case in tests/test_errors_by_kind.py: {missing}; "
        "add one to CASES (or, if it takes no user argument, to NO_USER_ARGUMENTS with the reason)"
    )
    stale = sorted((set(CASES) | set(NO_USER_ARGUMENTS)) - public)
    assert not stale, f"CASES / NO_USER_ARGUMENTS name things no longer public: {stale}"
    assert all(CASES[name] for name in CASES), "every case list needs at least one bad call"


def _check(call: Callable[[Path], object], kind: Any, tmp_path: Path) -> None:
    with pytest.raises(Exception) as info:  # noqa: PT011 - the kind is asserted below
        call(tmp_path)
    exc = info.value
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = " or ".join(k.__name__ for k in kinds)
    assert isinstance(exc, kinds), f"raised {type(exc).__name__} ({exc}), not a {names}"
    assert isinstance(exc, RankdecayError), (
        f"raised {type(exc).__name__} ({exc}): a {names} but not a RankdecayError, so the CLI "
        "would print a traceback instead of one sentence with exit code 2"
    )
    message = str(exc)
    assert message and "\n" not in message.strip(), f"not one sentence: {message!r}"


@pytest.mark.parametrize(
    ("name", "index"), [(n, i) for n, calls in CASES.items() for i in range(len(calls))]
)
def test_public_api_bad_arguments(name: str, index: int, tmp_path: Path) -> None:
    call, kind = CASES[name][index]
    _check(call, kind, tmp_path)


@pytest.mark.parametrize(
    ("name", "index"), [(n, i) for n, calls in MODULE_CASES.items() for i in range(len(calls))]
)
def test_module_entry_points_bad_arguments(name: str, index: int, tmp_path: Path) -> None:
    module, _, attr = name.rpartition(".")
    assert hasattr(_mod(module), attr), f"rankdecay.{name} no longer exists; update MODULE_CASES"
    call, kind = MODULE_CASES[name][index]
    _check(call, kind, tmp_path)


def test_rankdecay_error_kinds_are_builtin_kinds() -> None:
    from rankdecay import errors

    assert issubclass(errors.RankdecayValueError, ValueError)
    assert issubclass(errors.RankdecayTypeError, TypeError)
    assert issubclass(errors.RankdecayFileNotFoundError, FileNotFoundError)
    assert issubclass(errors.RankdecayFileExistsError, FileExistsError)
    assert issubclass(errors.MissingExtraError, ImportError)
    for cls in (
        errors.RankdecayValueError,
        errors.RankdecayTypeError,
        errors.RankdecayFileNotFoundError,
        errors.RankdecayFileExistsError,
        errors.MissingExtraError,
    ):
        assert issubclass(cls, RankdecayError) and cls.exit_code == 2


def test_output_that_exists_is_a_file_exists_error(tmp_path: Path) -> None:
    """A run directory already holding a run, given as a fresh output, is refused as a
    FileExistsError (and a RankdecayError), before anything is overwritten."""
    from rankdecay.runfiles import RunWriter

    run = RunWriter(tmp_path)
    (tmp_path / run.CONFIG).write_text("{}")
    (tmp_path / "summary.json").write_text('{"status": "finished", "step": 0}')
    with pytest.raises(FileExistsError) as info:
        run.start({}, resume=False)
    assert isinstance(info.value, RankdecayError)


def test_cli_exits_2_with_one_sentence_for_a_value_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The CLI's rule holds for the new kinds: a ValueError-kind error ends in one line on stderr,
    naming the flag, exit code 2, no traceback."""
    from rankdecay.cli import main

    code = main(["analyze", MISSING, "--rtol", "-1"])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rankdecay: error: rtol must be"), err
    assert "[--rtol]" in lines[0] and "Traceback" not in err
