"""Bad config values through the real CLI: `rankdecay run EXP --preset quick --set K=V --out DIR`.

Every bad value of every experiment that has the key ends in exit code 2, exactly one line on
stderr that names the key (or, for a size, the estimate), no traceback, and no run directory.
The matrix runs ``rankdecay.cli.main`` in-process (the console script's own entry point; a
refused value costs milliseconds, a subprocess ~3 s of imports); one subprocess checks the
console script itself.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from rankdecay.cli import main
from rankdecay.config import flatten
from rankdecay.experiments import get_experiment, list_experiments
from rankdecay.validation import RULES, ConfigValueError, check_memory, validate_values

#: key → bad values (as typed after --set)
BAD: dict[str, list[str]] = {
    # the 5 that ended in tracebacks and the 7 that were accepted (issue 13), then their siblings
    "optim.betas": ["2,3", "0.9", "0.9,1.0", "-0.1,0.9"],
    "optim.eps": ["-1", "nan"],
    "seed": ["1e23", "-1"],
    "train.batch_size": ["1e9", "0"],
    "model.d_model": ["1000000", "0"],
    "lrd.strength": ["-1", "nan"],
    "train.steps": ["1e30", "0"],
    "optim.grad_clip": ["-1", "inf"],
    "optim.warmup_steps": ["-1"],
    "train.monitor_every": ["-1"],
    "task.p": ["100", "1", "1000000007"],
    "optim.lr": ["0", "-1e-3", "inf"],
    "optim.momentum": ["-0.1", "1.5"],
    "optim.weight_decay": ["-0.1"],
    "optim.min_lr": ["-1", "1"],  # 1 > lr: where the schedule is cosine
    "optim.weight_decay_by_role": ['{"attn_qq": 0.1}', '{"mlp": -1}'],
    "lrd.target": ["everything"],
    "lrd.mode": ["clip"],
    "train.eval_every": ["0"],
    "train.eval_batch_size": ["-5"],
    "train.monitor_rtol": ["-1", "2"],
    "train.keep_checkpoints": ["0"],
    "model.n_heads": ["0"],
    "model.n_layers": ["-1"],
    "model.norm_eps": ["-1"],
    "model.init_std": ["nan"],
    "task.train_fraction": ["0", "1.5"],
    "task.val_fraction": ["1"],
    "task.n_pairs": ["100"],
    "task.n_eval": ["1e12"],
    "task.seq_len": ["0"],
    "task.data_seed": ["-3"],
    "strength": ["-1"],
    "weight_decay": ["-1"],
    "weight_decay_attn": ["-0.5"],
    "weight_decay_mlp": ["nan"],
    "lr": ["-1"],
    "steps": ["1e30", "0"],
    "log_every": ["0"],
    "n_seeds": ["0"],
    "T": ["1"],
    "init_scale": ["-0.01"],
    "flow_lr": ["-1"],
    "sensing.rank": ["0"],
    "conservation_lr": ["0"],
}

#: keys whose bad value is refused for its size, with an estimate, rather than by a rule
SIZES = {("train.batch_size", "1e9"), ("model.d_model", "1000000"), ("task.p", "1000000007")}
SIZES |= {("task.n_eval", "1e12")}


def _keys(exp: str) -> set[str]:
    return set(flatten(get_experiment(exp).config("quick")))


#: (experiment, key, value) where the value is fine after all
FINE = {
    # a batch beyond a finite training set means the full set (tasks/__init__.py)
    ("grokking", "train.batch_size", "1e9"),
    ("vit", "train.batch_size", "1e9"),
    # min_lr > lr only contradicts a cosine schedule (lm and vit use one)
    ("recall", "optim.min_lr", "1"),
    ("grokking", "optim.min_lr", "1"),
}

CASES = [
    pytest.param(exp, key, value, id=f"{exp}-{key}={value}")
    for exp in list_experiments()
    for key, values in BAD.items()
    if key in _keys(exp)
    for value in values
    if (exp, key, value) not in FINE
]


def test_every_bad_key_is_tried_somewhere() -> None:
    tried = {c.values[1] for c in CASES}
    assert tried == set(BAD), set(BAD) - tried


@pytest.mark.parametrize(("exp", "key", "value"), CASES)
def test_bad_value_is_one_sentence_exit_2_and_no_run_directory(
    exp: str, key: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["run", exp, "--preset", "quick", "--set", f"{key}={value}", "--out", str(out)]
    code = main([*argv, "--no-progress"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("rankdecay: error: "), err
    assert "Traceback" not in err
    if (key, value) in SIZES:
        assert "needs about" in err or "need about" in err, err
        assert "free" in err and key.split(".")[-1] in err, err
    else:
        assert key in err, err
        assert "--set" in err, err
    assert not out.exists(), sorted(p.name for p in out.iterdir())


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    """The installed entry point, in a fresh process: one line, exit 2."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "rankdecay.cli", "run", "grokking", "--set", "optim.betas=2,3"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "rankdecay: error: config key 'optim.betas' must be two numbers in [0, 1), got 2.0,3.0; "
        "set optim.betas to e.g. 0.9,0.98. [--set optim.betas=…]"
    ]
    assert not out.exists()


@pytest.mark.parametrize("exp", list_experiments())
@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_every_shipped_preset_passes(exp: str, preset: str) -> None:
    e = get_experiment(exp)
    if preset in e.presets:
        validate_values(e.config(preset))


def _numeric(tp: typing.Any) -> bool:
    args = typing.get_args(tp)
    if tp in (int, float):
        return True
    return bool(args) and any(_numeric(a) for a in args if a is not type(None) and a is not ...)


def test_every_numeric_field_has_a_rule_and_every_rule_a_field() -> None:
    """A new number in a config gets a rule, or this fails (names the field)."""
    classes: dict[str, type] = {}

    def walk(cfg: typing.Any) -> None:
        classes[type(cfg).__name__] = type(cfg)
        for f in dataclasses.fields(cfg):
            v = getattr(cfg, f.name)
            if dataclasses.is_dataclass(v):
                walk(v)

    for exp in list_experiments():
        walk(get_experiment(exp).config("quick"))
    missing = []
    for name, cls in classes.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                continue
            if _numeric(hints[f.name]) and f.name not in RULES.get(name, {}):
                missing.append(f"{name}.{f.name}")
    assert missing == []
    for name, rules in RULES.items():
        assert name in classes, name
        assert set(rules) <= {f.name for f in dataclasses.fields(classes[name])}, name


def test_memory_check_states_the_estimate_and_passes_real_configs() -> None:
    import torch

    exp = get_experiment("grokking")
    cfg = exp.config("quick")
    task = cfg.task.build(0)
    assert 1e6 < check_memory(cfg, task, torch.device("cpu")) < 1e9  # R4: tens of MB
    # a batch far beyond the training set is the full training set: the same estimate
    full = exp.config("quick", [f"train.batch_size={task.n_train}"])
    big = exp.config("quick", ["train.batch_size=100000000"])
    cpu = torch.device("cpu")
    assert check_memory(big, task, cpu) == check_memory(full, task, cpu)
    huge = exp.config("quick", ["model.d_model=1000000"])
    with pytest.raises(
        ConfigValueError, match=r"needs about [\d.]+ [TP]iB .*model\.d_model=1000000"
    ):
        check_memory(huge, task, torch.device("cpu"))
    with pytest.raises(ValueError):  # also the built-in it is
        check_memory(huge, task, torch.device("cpu"))


@pytest.mark.parametrize("exp", ["recall", "grokking", "lm", "vit"])
def test_weight_count_is_within_5_percent_of_the_built_model(exp: str) -> None:
    """The closed form the memory check uses, against the model itself (norm gains, biases and
    the class token are what it leaves out)."""
    from rankdecay.models import TinyTransformer
    from rankdecay.validation import filled_model_config, weight_count

    cfg = get_experiment(exp).config("quick")
    for extra in ({}, {"mlp": "swiglu", "pos": "rotary", "bias": True, "qk_norm": "rms"}):
        m = dataclasses.replace(filled_model_config(cfg.model, cfg.task.build(0)), **extra)
        true = sum(p.numel() for p in TinyTransformer(m).parameters())
        assert weight_count(m) <= true <= 1.05 * weight_count(m), (exp, extra)


@pytest.mark.parametrize(
    "args",
    [
        ["--grid", "optim.lr=1e-3,-1"],
        ["--set", "optim.eps=-1"],
        ["--grid", "arm=lrd,l2", "--set", "lrd.strength=nan"],
    ],
)
def test_a_sweep_with_a_bad_value_starts_no_run(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    code = main(["sweep", "grokking", *args, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "config key '" in err, err
    assert not out.exists()
