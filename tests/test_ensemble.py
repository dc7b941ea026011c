"""ensemble.py: batched forward vs each model's own forward, batched AdamW/Adam/SGD vs torch.optim,
batched LRD vs rankdecay.LowRankDecay, whole ensembles vs solo train() runs, resume, executor."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from rankdecay.decay import LowRankDecay
from rankdecay.ensemble import (
    BatchedLowRankDecay,
    EnsembleExecutor,
    EnsembleMember,
    _run_group,
    auto_members,
    batched_forward,
    ensemble_key,
    member_bytes,
    stack_models,
    train_ensemble,
    unsupported_reason,
    vmap_forward,
)
from rankdecay.errors import RankdecayError
from rankdecay.experiments import get_experiment
from rankdecay.models import ModelConfig, TinyTransformer
from rankdecay.runio import read_jsonl
from rankdecay.sweep import RunTask, run_sweep
from rankdecay.train import optimizer_settings, train

TOKENS = dict(vocab_size=11, n_out=7, max_len=5, n_layers=2, d_model=16, n_heads=2, d_mlp=24)
VARIANTS = [
    dict(norm="rms", qk_norm="rms", pos="learned", readout="last"),  # R4's model
    dict(norm="layer", bias=True, qk_norm="l2", pos="rotary", mlp="swiglu", readout="all"),
    dict(norm="layer", qk_norm="l2", qk_temperature=3.0, pos="none", causal=False, readout="last"),
    dict(norm="none", d_mlp=0, tie_embeddings=True, n_out=11, readout="all", mlp="relu"),
    dict(
        patch_size=2, image_size=4, in_channels=1, n_out=3, vocab_size=0, pool="cls", readout="last"
    ),
    dict(patch_size=2, image_size=4, in_channels=1, n_out=3, vocab_size=0, pool="mean"),
]


def _members(variant: dict, M: int = 3) -> list[TinyTransformer]:
    cfg = ModelConfig(**{**TOKENS, **variant})
    models = []
    for i in range(M):
        torch.manual_seed(100 + i)
        m = TinyTransformer(cfg)
        with torch.no_grad():  # non-trivial gains and biases
            for p in m.parameters():
                if p.dim() == 1:
                    p.add_(0.3 * torch.randn_like(p))
        models.append(m)
    return models


def _inputs(cfg: ModelConfig, M: int, B: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    if cfg.images:
        return torch.randn(M, B, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    return torch.randint(0, cfg.vocab_size, (M, B, cfg.max_len), generator=g)


@pytest.mark.parametrize(
    "variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in list(v)[:3])
)
def test_batched_forward_and_gradients_match_each_models_own(variant: dict) -> None:
    models = _members(variant)
    cfg = models[0].cfg
    x = _inputs(cfg, len(models))
    refs = [m(x[i]) for i, m in enumerate(models)]
    ref_grads = []
    for m, r in zip(models, refs):
        grads = torch.autograd.grad(r.square().sum(), list(m.parameters()))
        ref_grads.append(dict(zip([n for n, _ in m.named_parameters()], grads)))
    rope = (
        (models[0].blocks[0].attn.rope_cos, models[0].blocks[0].attn.rope_sin)
        if cfg.pos == "rotary"
        else None
    )
    base = _members(variant, 1)[0]  # functional_call replaces its weights by the stacked ones
    P = stack_models(models)
    for trick in (True, False):
        out = batched_forward(cfg, P, x, rope, last_trick=trick)
        for i, r in enumerate(refs):
            torch.testing.assert_close(out[i], r, rtol=1e-5, atol=1e-5)
        grads = torch.autograd.grad(out.square().sum(), list(P.values()))
        for name, g in zip(P, grads):
            for i in range(len(models)):
                torch.testing.assert_close(g[i], ref_grads[i][name], rtol=1e-4, atol=1e-5)
    # the member models now read the stacked weights: an in-place update shows through
    with torch.no_grad():
        P["blocks.0.attn.q.weight"].mul_(0.5)
    torch.testing.assert_close(
        batched_forward(cfg, P, x, rope)[1], models[1](x[1]), rtol=1e-5, atol=1e-5
    )
    if not cfg.images:
        torch.testing.assert_close(
            vmap_forward(base, P, x)[2], models[2](x[2]), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[1]], ids=["last", "all"])
@pytest.mark.parametrize("chunk", [3, 64])
def test_batched_evaluation_equals_each_members_evaluate(variant: dict, chunk: int) -> None:
    """Members whose eval sets differ in size (and total size: padding) and hold ignored targets:
    the batched evaluation gives each member what rankdecay.train.evaluate gives it."""
    from rankdecay.engine import evaluate_members
    from rankdecay.ensemble import _rope_tables
    from rankdecay.train import evaluate

    models = [m.double() for m in _members(variant)]  # float64: equal to rounding
    cfg = models[0].cfg
    g = torch.Generator().manual_seed(3)
    sets = []
    for sizes in [(10, 7), (5, 9), (4, 4)]:
        member = {}
        for name, n in zip(("train", "val"), sizes):
            x = torch.randint(0, cfg.vocab_size, (n, cfg.max_len), generator=g)
            shape = (n,) if cfg.readout == "last" else (n, cfg.max_len)
            y = torch.randint(0, cfg.n_out, shape, generator=g)
            y[torch.rand(shape, generator=g) < 0.2] = -100
            member[name] = (x, y)
        sets.append(member)
    P = stack_models(models)
    got = evaluate_members(
        lambda x: batched_forward(cfg, P, x, _rope_tables(models[0])), sets, chunk
    )
    for model, member, res in zip(models, sets, got):
        ref = evaluate(model, member, batch_size=chunk)
        assert res.keys() == ref.keys()
        for k in ref:
            assert res[k] == pytest.approx(ref[k], rel=1e-12, abs=1e-12), k
    x, y = sets[0]["val"]
    sets[0]["val"] = (x[:, :-1], y if y.dim() == 1 else y[:, :-1])  # shorter sequences
    with pytest.raises(RankdecayError, match="local executor"):
        evaluate_members(lambda x: batched_forward(cfg, P, x), sets, chunk)


@pytest.mark.parametrize(
    "target,granularity,mode,off",
    [
        ("qk", "matrix", "subtract", 1),
        ("attention", "head", "subtract", 1),
        ("attention", "head", "svt", None),  # every member decays: no row selection
        ("matrices", "matrix", "svt", 1),
    ],
)
def test_batched_lrd_matches_low_rank_decay(
    target: str, granularity: str, mode: str, off: int | None
) -> None:
    models = _members(VARIANTS[0])
    cfg = models[0].cfg
    strengths, scale, lrs = [0.05, 0.1, 0.2], [True, False, False], [0.5, 1.0, 0.1]
    if off is not None:
        strengths[off] = 0.0
    refs = []
    for m, s, sb, lr in zip(models, strengths, scale, lrs):
        ref = TinyTransformer(cfg)
        ref.load_state_dict(m.state_dict())
        if s > 0:
            LowRankDecay(
                ref, s, target=target, granularity=granularity, mode=mode, scale_by_lr=sb
            ).step(lr)
        refs.append(ref)
    P = stack_models(models)
    form = {"target": target, "granularity": granularity, "mode": mode}
    BatchedLowRankDecay(models[0], P, strengths, scale, **form).step(lrs)
    for i, ref in enumerate(refs):
        for n, p in ref.named_parameters():
            torch.testing.assert_close(P[n][i].detach(), p.detach(), rtol=1e-5, atol=1e-6)
    with pytest.raises(RankdecayError, match="granularity"):
        BatchedLowRankDecay(models[0], P, strengths, scale, granularity="product")


TINY = [
    "task.p=13",
    "model.d_model=16",
    "model.d_mlp=32",
    "train.batch_size=32",
    "train.log_every=5",
    "train.eval_every=10",
    "train.monitor_every=10",
    "train.checkpoint_every=10",
    "train.device=cpu",
]
POINTS = [  # seed, overrides: both arms, another fraction, strength and learning rate
    (0, ["arm=lrd"]),
    (1, ["arm=l2", "optim.lr=3e-3"]),
    (
        2,
        [
            "arm=lrd",
            "task.train_fraction=0.3",
            "strength=2e-2",
            "lrd.scale_by_lr=true",
            "optim.lr=2e-2",
        ],
    ),
]


def _cfgs(steps: int, dtype: str = "float32") -> list:
    exp = get_experiment("grokking")
    extra = [f"train.steps={steps}", f"train.dtype={dtype}"]
    return [exp.config("quick", [*TINY, *extra, *o], seed=s) for s, o in POINTS]


def _metrics(run: Path) -> list[dict]:
    return list(read_jsonl(run / "metrics.jsonl"))


def _assert_same_run(solo: Path, ens: Path) -> None:
    a, b = _metrics(solo), _metrics(ens)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb)
        for k in ("loss", "train_loss", "val_loss", "lr", "qk_nuclear_norm", "w_q_frobenius_norm"):
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], rel=1e-9, abs=1e-12), (ra["step"], k)
    sa, sb = list(read_jsonl(solo / "spectra.jsonl")), list(read_jsonl(ens / "spectra.jsonl"))
    assert [(r["step"], r["kind"], r["layer"], r["head"]) for r in sa] == [
        (r["step"], r["kind"], r["layer"], r["head"]) for r in sb
    ]
    from safetensors.torch import load_file

    wa = load_file(str(solo / "checkpoint" / "model.safetensors"))
    wb = load_file(str(ens / "checkpoint" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(w.dtype == torch.float64 for w in wa.values())
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-9, atol=1e-11)
    oa = load_file(str(solo / "checkpoint" / "optim.safetensors"))
    ob = load_file(str(ens / "checkpoint" / "optim.safetensors"))
    assert oa.keys() == ob.keys()  # the solo optimizer's state layout
    # the RNG state a member checkpoints is its solo run's (a member resumed alone goes on alike)
    assert torch.equal(oa["rng.torch"], ob["rng.torch"])
    ra, rb = (json.loads((run / "checkpoint" / "state.json").read_text()) for run in (solo, ens))
    assert ra["rng"] == rb["rng"]
    js, je = (
        json.loads((solo / "summary.json").read_text()),
        json.loads((ens / "summary.json").read_text()),
    )
    assert set(js) <= set(je) and je["status"] == "finished"
    assert [r["claim"] for r in js["verdict"]] == [r["claim"] for r in je["verdict"]]
    assert sorted(p.name for p in solo.iterdir()) == sorted(p.name for p in ens.iterdir())


@pytest.mark.rounding
def test_ensemble_matches_solo_runs_and_resumes_exactly(tmp_path: Path) -> None:
    """Three members (both arms, other fraction, strength, lr) trained 10 steps, stopped, resumed
    to 20, against three solo runs: every logged number and weight agrees to 1e-9. In float64,
    because exactness is the point: in float32 the two differ by the order of floating-point
    sums, which Adam amplifies differently on each CPU kernel set (1.16e-4 relative in the train
    loss by step 20 under ATEN_CPU_CAPABILITY=avx2 on an AMD EPYC, above the old 1e-4 bound),
    so no float32 tolerance is both tight enough to catch a bug and safe on every CPU."""
    exp = get_experiment("grokking")
    verdict = exp.verdict
    cfgs = _cfgs(20, "float64")
    assert len({ensemble_key(c) for c in cfgs}) == 1 and unsupported_reason(cfgs[0]) is None
    for i, c in enumerate(cfgs):
        train(
            c,
            tmp_path / f"solo{i}",
            progress=False,
            experiment="grokking",
            preset="quick",
            verdict=verdict,
        )
    # the ensemble trains 10 steps, stops (checkpoint at 10), then resumes to 20
    half = _cfgs(10, "float64")
    members = [
        EnsembleMember(c, tmp_path / f"ens{i}", "grokking", "quick", verdict)
        for i, c in enumerate(half)
    ]
    assert [s["status"] for s in train_ensemble(members)] == ["finished"] * 3
    for i in range(3):
        meta = json.loads((tmp_path / f"ens{i}" / "config.json").read_text())
        meta["config"]["train"]["steps"] = 20
        (tmp_path / f"ens{i}" / "config.json").write_text(json.dumps(meta))
    members = [
        EnsembleMember(c, tmp_path / f"ens{i}", "grokking", "quick", verdict, resume=True)
        for i, c in enumerate(cfgs)
    ]
    (tmp_path / "ens0" / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    (tmp_path / "ens1" / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    (tmp_path / "ens2" / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    sums = train_ensemble(members)
    assert [s["status"] for s in sums] == ["finished"] * 3
    assert sums[0]["resumed_from"] == 10 and sums[0]["ensemble_size"] == 3
    for i in range(3):
        _assert_same_run(tmp_path / f"solo{i}", tmp_path / f"ens{i}")


@pytest.mark.rounding
def test_a_diverging_member_fails_alone(tmp_path: Path) -> None:
    cfgs = _cfgs(10)
    exp = get_experiment("grokking")
    bad = exp.config("quick", [*TINY, "train.steps=10", "optim.lr=1e30", "arm=l2"], seed=5)
    members = [EnsembleMember(c, tmp_path / f"m{i}") for i, c in enumerate([cfgs[0], bad])]
    sums = train_ensemble(members)
    assert sums[0]["status"] == "finished"
    assert sums[1]["status"] == "failed" and "NaN" in sums[1]["error"]
    train(cfgs[0], tmp_path / "solo", progress=False)
    a, b = _metrics(tmp_path / "solo"), _metrics(tmp_path / "m0")
    assert [r["loss"] for r in a if "loss" in r] == pytest.approx(
        [r["loss"] for r in b if "loss" in r], rel=1e-4
    )


def test_ensemble_rejects_mixed_shapes_and_unsupported(tmp_path: Path) -> None:
    exp = get_experiment("grokking")
    a = exp.config("quick", TINY)
    b = exp.config("quick", [*TINY, "model.d_model=32"])
    assert ensemble_key(a) != ensemble_key(b)
    with pytest.raises(RankdecayError, match="share the model shape"):
        train_ensemble([EnsembleMember(a, tmp_path / "a"), EnsembleMember(b, tmp_path / "b")])
    c = exp.config("quick", [*TINY, "lrd.granularity=product"])
    assert "granularity" in str(unsupported_reason(c))
    compiled = exp.config("quick", [*TINY, "train.compile=true"])
    assert unsupported_reason(compiled) is None  # compiled runs batch with compiled runs only
    assert ensemble_key(compiled) != ensemble_key(a)


def test_compiled_ensemble_trains_through_torch_compile(tmp_path: Path, monkeypatch) -> None:
    """train.compile=true: the training forward is a torch.compile wrapper (here with the
    graph-capture-only "eager" backend, fast), and the members equal an uncompiled ensemble's."""
    import rankdecay.device as device

    calls = []
    real = torch.compile

    def spy(fn, **options):
        calls.append(fn)
        return real(fn, backend="eager", **options)

    monkeypatch.setattr(device.torch, "compile", spy)
    exp = get_experiment("grokking")
    over = [*TINY, "train.steps=20"]
    eager = [exp.config("quick", [*over, *o], seed=s) for s, o in POINTS[:2]]
    comp = [exp.config("quick", [*over, *o, "train.compile=true"], seed=s) for s, o in POINTS[:2]]
    a = train_ensemble([EnsembleMember(c, tmp_path / f"e{i}") for i, c in enumerate(eager)])
    assert not calls
    b = train_ensemble([EnsembleMember(c, tmp_path / f"c{i}") for i, c in enumerate(comp)])
    assert len(calls) == 1 and calls[0].__name__ == "fwd"
    for i in range(2):
        assert b[i]["status"] == "finished"
        assert b[i]["final"]["loss"] == pytest.approx(a[i]["final"]["loss"], rel=1e-6)
        assert b[i]["final"]["val_loss"] == pytest.approx(a[i]["final"]["val_loss"], rel=1e-6)


def test_memory_estimate_and_planning() -> None:
    exp = get_experiment("grokking")
    cfg = exp.config("quick", TINY)
    task = cfg.task.build(0)
    small = member_bytes(cfg, task)
    big = member_bytes(exp.config("quick", [*TINY, "train.batch_size=4096"]), task)
    n_params = sum(
        p.numel()
        for p in TinyTransformer(
            __import__("dataclasses").replace(cfg.model, **task.model_fields())
        ).parameters()
    )
    assert small >= 16 * n_params and big > small
    double = member_bytes(exp.config("quick", [*TINY, "train.dtype=float64"]), task)
    assert double == pytest.approx(2 * small, rel=1e-6)  # every float is 8 bytes instead of 4
    assert auto_members(cfg, task, torch.device("cpu")) >= 1


def test_cpu_ensembles_are_capped_by_the_activation_budget(monkeypatch) -> None:
    import rankdecay.device as device
    from rankdecay.ensemble import CPU_ACTIVATION_BUDGET, cpu_members

    exp = get_experiment("grokking")
    r4 = exp.config("paper", [])
    task = r4.task.build(0)
    per_member = 512 * 3 * 512 * 4  # batch · tokens · d_mlp (the widest) · float32
    assert cpu_members(r4, task) == CPU_ACTIVATION_BUDGET // per_member == 4
    half = exp.config("paper", ["train.batch_size=256"])
    assert cpu_members(half, task) == 8
    monkeypatch.setattr(device, "available_memory", lambda dev: 1 << 40)  # memory is no limit
    assert auto_members(r4, task, torch.device("cpu")) == 4
    assert auto_members(r4, task, torch.device("meta")) > 1000  # accelerators: memory only
    tasks = [
        RunTask(
            i,
            f"r{i}",
            "rankdecay.experiments.grokking:EXPERIMENT",
            "quick",
            {**dict(o.split("=", 1) for o in TINY), "model.d_model": d},
            i,
            f"/nonexistent/r{i}",
        )
        for i, d in enumerate([16, 16, 16, 32, 16])
    ]
    toy = RunTask(9, "toy", "sweep_toy:EXPERIMENT", "quick", {}, 0, "/nonexistent/toy")
    sys.path.insert(0, str(Path(__file__).parent))
    ensembles, solo = EnsembleExecutor(members=2).plan([*tasks, toy])
    assert sorted(len(g) for g in ensembles) == [1, 2, 2]
    assert [t.name for t in solo] == ["toy"]
    assert {t.index for g in ensembles for t in g} == {0, 1, 2, 3, 4}
    with pytest.raises(RankdecayError, match="members must be at least 1"):
        EnsembleExecutor(members=0)


def test_runs_the_ensemble_cannot_batch_are_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The ``phase`` preset keeps the public code's early stop and partial last batch, which the
    stack cannot batch: those runs train one at a time, and the executor says so and why; a
    group that fails anyway leaves its traceback in every member's error.txt, as a solo run."""
    grokking = "rankdecay.experiments.grokking:EXPERIMENT"
    tiny = dict(o.split("=", 1) for o in TINY)
    batchable = {**tiny, "train.early_stop_above": "none", "task.last_batch": "wrap"}
    tasks = [
        RunTask(i, f"r{i}", grokking, "phase", overrides, i, str(tmp_path / f"r{i}"))
        for i, overrides in enumerate([tiny, tiny, batchable, batchable])
    ]
    ensembles, solo = EnsembleExecutor(members=2).plan(tasks)
    assert [t.name for t in solo] == ["r0", "r1"]
    assert [[t.name for t in g] for g in ensembles] == [["r2", "r3"]]
    err = capsys.readouterr().err
    assert "2 of 4 run(s) train one at a time" in err and "train.early_stop_above" in err
    EnsembleExecutor(members=2).plan(tasks[2:])
    assert capsys.readouterr().err == ""  # nothing to say when every run batches
    # a group handed to a worker with a run that cannot join fails with the reason, not a crash
    (result,) = {r["error"] for r in _run_group(tasks[1:3], None)}
    assert result.startswith("RankdecayValueError: run r1 cannot join an ensemble: ")
    assert "train.early_stop_above" in result
    for run in ("r1", "r2"):
        text = (tmp_path / run / "error.txt").read_text()
        assert text.startswith("Traceback") and "cannot join an ensemble" in text


def test_sweep_with_the_ensemble_executor(tmp_path: Path) -> None:
    fixed = [*TINY, "train.steps=10"]
    result = run_sweep(
        "grokking",
        preset="quick",
        grid={"arm": ["l2", "lrd"], "task.train_fraction": [0.5]},
        fixed=fixed,
        seeds="0,1",
        out=tmp_path / "sweep",
        executor="ensemble",
        members=4,
    )
    assert result.counts["finished"] == 4 and result.exit_code == 0
    index = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert index["executor"].startswith("ensemble")
    for row in index["runs"]:
        run = tmp_path / "sweep" / row["run_dir"]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["ensemble_size"] == 4
        assert row["final"]["val_loss"] == pytest.approx(summary["final"]["val_loss"])
        assert math.isfinite(summary["final"]["wqk_stable_rank"])
    # re-running is idempotent: nothing left to do
    again = run_sweep(
        "grokking",
        preset="quick",
        grid={"arm": ["l2", "lrd"], "task.train_fraction": [0.5]},
        fixed=fixed,
        seeds="0,1",
        out=tmp_path / "sweep",
        executor="ensemble",
        members=4,
    )
    assert again.executed == []


def test_two_workers_train_the_ensembles_of_one_worker(tmp_path: Path) -> None:
    """workers=2: each ensemble is one job of the local executor's spawned pool; every run ends
    as in the in-process path (workers=1) with the same ensembles."""
    rows = {}
    for workers in (1, 2):
        result = run_sweep(
            "grokking",
            preset="quick",
            grid={"arm": ["l2", "lrd"], "task.train_fraction": [0.5]},
            fixed=[*TINY, "train.steps=10"],
            seeds="0,1",
            out=tmp_path / f"w{workers}",
            executor="ensemble",
            members=2,
            workers=workers,
            threads_per_worker=1,
        )
        assert result.counts["finished"] == 4 and result.exit_code == 0
        index = json.loads((tmp_path / f"w{workers}" / "sweep.json").read_text())
        rows[workers] = {row["name"]: row for row in index["runs"]}
    assert rows[1].keys() == rows[2].keys()
    for name, row in rows[2].items():
        one, two = (
            json.loads((tmp_path / f"w{w}" / rows[w][name]["run_dir"] / "summary.json").read_text())
            for w in (1, 2)
        )
        assert two["status"] == "finished" and two["ensemble_size"] == 2
        assert two["final"] == pytest.approx(one["final"], rel=1e-6, abs=1e-9)
        assert two["verdict"] == one["verdict"]
        assert row["final"] == pytest.approx(rows[1][name]["final"], rel=1e-6, abs=1e-9)


def test_a_worker_dying_in_an_ensemble_job_fails_only_that_jobs_runs(tmp_path: Path) -> None:
    """A job of two runs whose worker exits: both runs fail with the exit code, the other job
    (a solo toy run in the other worker) finishes."""
    import sweep_toy

    from rankdecay.sweep import _execute_one

    grokking = "rankdecay.experiments.grokking:EXPERIMENT"
    group = [RunTask(i, f"r{i}", grokking, "quick", {}, i, str(tmp_path / f"r{i}")) for i in (0, 1)]
    toy = RunTask(2, "toy", "sweep_toy:EXPERIMENT", "quick", {}, 0, str(tmp_path / "toy"))
    events = []
    jobs = [(sweep_toy.exit_job, group), (_execute_one, [toy])]
    EnsembleExecutor(workers=2, threads_per_worker=1).run_jobs(jobs, events.append)
    assert sorted(e.index for e in events if e.kind == "start") == [0, 1, 2]
    done = {e.index: e.result for e in events if e.kind == "done"}
    assert sorted(done) == [0, 1, 2] and done[2]["status"] == "finished"
    for i in (0, 1):
        assert done[i]["status"] == "failed"
        assert done[i]["error"] == "worker process died (exit code 7) while running this run"


def _float64_members_equal_solo_runs(tmp_path: Path, cfgs: list, keys: tuple[str, ...]) -> None:
    """Train each float64 config solo and all together as one ensemble: every logged ``keys``
    value and every checkpointed weight of member i equals its solo run's to 1e-9."""
    for i, c in enumerate(cfgs):
        train(c, tmp_path / f"solo{i}", progress=False)
    sums = train_ensemble([EnsembleMember(c, tmp_path / f"ens{i}") for i, c in enumerate(cfgs)])
    assert [s["status"] for s in sums] == ["finished"] * len(cfgs)
    from safetensors.torch import load_file

    for i in range(len(cfgs)):
        a, b = _metrics(tmp_path / f"solo{i}"), _metrics(tmp_path / f"ens{i}")
        assert [r["step"] for r in a] == [r["step"] for r in b]
        for ra, rb in zip(a, b):
            for k in keys:
                if k in ra:
                    assert rb[k] == pytest.approx(ra[k], rel=1e-9, abs=1e-12), (i, ra["step"], k)
        wa = load_file(str(tmp_path / f"solo{i}" / "checkpoint" / "model.safetensors"))
        wb = load_file(str(tmp_path / f"ens{i}" / "checkpoint" / "model.safetensors"))
        assert all(w.dtype == torch.float64 for w in wa.values())
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-9, atol=1e-11)


@pytest.mark.rounding
def test_float64_ensemble_equals_solo_runs_to_rounding(tmp_path: Path) -> None:
    """In float64 the only difference between an ensemble member and its solo run is the order of
    floating-point sums, so every logged number and every weight agrees to ~1e-13 after 30 steps
    — 1e5 times tighter than the float32 tolerance above, far below what a real difference (a
    wrong decay, a shifted batch, a missing LRD step: ≥ 1e-6 within a few steps) could hide in.
    (Later the difference grows exponentially even in float64 — ×10 per ~5 steps in the LRD arm,
    whose polar factor turns on as singular values approach 0 — so the horizon is kept short;
    benchmarks/ensemble_exactness.py prints the growth.)"""
    exp = get_experiment("grokking")
    cfgs = [
        exp.config("quick", [*TINY, "train.steps=30", "train.dtype=float64", *o], seed=s)
        for s, o in POINTS
    ]
    _float64_members_equal_solo_runs(
        tmp_path, cfgs, ("loss", "train_loss", "val_loss", "qk_nuclear_norm", "wqk_stable_rank")
    )


OWN_OPTIMIZERS = {  # per member: its own hyperparameters, a clipped member, an unclipped one
    "adam": [["optim.betas=[0.8,0.95]", "optim.eps=1e-6"], ["optim.grad_clip=0.05"], []],
    "sgd": [
        ["optim.momentum=0.9", "optim.lr=0.05"],
        ["optim.momentum=0.0", "optim.lr=0.1", "optim.grad_clip=0.05"],
        ["optim.momentum=0.5", "optim.lr=0.02", "optim.weight_decay=0.3"],
    ],
}


@pytest.mark.rounding
@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_members_step_their_own_optimizers_as_their_solo_runs(tmp_path: Path, name: str) -> None:
    """Each member steps with its own torch optimizer over its views of the stack (Adam with
    its own betas and eps, SGD with its own momentum — one without — and weight decay; a member
    clipped by its own gradient norm): in float64 every logged number and weight equals its solo
    run's to 1e-9 after 6 steps (a member given another's learning rate, clip or momentum
    differs by ≫ 1e-6 within a step)."""
    exp = get_experiment("grokking")
    cfgs = [
        exp.config(
            "quick",
            [
                *TINY,
                "train.steps=6",
                "train.monitor_every=0",
                "train.dtype=float64",
                f"optim.name={name}",
                *o,
            ],  # fmt: skip
            seed=s,
        )
        for s, o in enumerate(OWN_OPTIMIZERS[name])
    ]
    assert {optimizer_settings(c)[0].name for c in cfgs} == {name}
    assert len({ensemble_key(c) for c in cfgs}) == 1 and unsupported_reason(cfgs[0]) is None
    _float64_members_equal_solo_runs(tmp_path, cfgs, ("loss", "train_loss", "val_loss"))


def test_float64_cannot_be_combined_with_bf16(tmp_path: Path) -> None:
    exp = get_experiment("grokking")
    cfg = exp.config("quick", [*TINY, "train.steps=2", "train.dtype=float64", "train.amp=bf16"])
    with pytest.raises(RankdecayError, match="train.amp=none"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


def test_ensemble_time_benchmark_runs_at_tiny_scale() -> None:
    """benchmarks/ensemble_time.py (the whole-ensemble A/B timer of docs/benchmarks.md) trains
    its ensemble at tiny size; it raises unless every member finishes."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        import ensemble_time
    finally:
        sys.path.pop(0)
    assert ensemble_time.train_once(8, 2, 3, ["task.p=13", "train.batch_size=8"]) > 0


def test_gpu_phase_benchmark_runs_at_tiny_scale_and_counts_flops(tmp_path: Path) -> None:
    """benchmarks/gpu_phase.py (the H100 target's script) end to end on the CPU at tiny size, and
    its per-member FLOP count against the closed form for R4's model: every linear map costs
    2·rows·d_in·d_out forward and twice that backward; the last block runs q, o and the MLP on
    the last position only (readout "last")."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        import gpu_phase
    finally:
        sys.path.pop(0)
    cfg = get_experiment("grokking").config("phase", ["train.batch_size=8"], seed=0)
    step, per_example = gpu_phase.member_flops(cfg)
    m, B = cfg.model, 8
    T, d, f, V = 3, m.d_model, m.d_mlp, 114  # the public readout: 113 answers + "="
    full = T * (4 * d * d + 2 * d * f)  # block 1: q, k, v, o and the MLP at every position
    last = T * 2 * d * d + (2 * d * d + 2 * d * f)  # block 2: k, v everywhere; the rest once
    matmuls = 2 * B * (full + last + d * V)
    attention = 2 * 2 * B * m.n_heads * (T * T + T) * m.head_dim  # QKᵀ and AV, both blocks
    # FlopCounterMode counts attention only for the kernels it knows (the CUDA ones, not CPU flash)
    counted_attention = per_example * B - matmuls
    assert counted_attention in (0, attention)
    if counted_attention == 0:
        assert step == 3 * matmuls  # backward = 2 × forward for every matmul (inputs and weights)
    else:
        assert 3 * matmuls < step <= 3 * (matmuls + attention)
    report = gpu_phase.main(
        [
            "--steps=3",
            "--device=cpu",
            "--fractions=0.3,0.5",
            "--strengths=1e-3",
            "--seeds=1",
            "--set=train.batch_size=16",
            f"--out={tmp_path / 'sweep'}",
            f"--json={tmp_path / 'report.json'}",
        ]
    )
    assert report["runs"] == report["finished"] == 4 and report["ensemble_sizes"] == [4]
    assert report["achieved_tflops"] > 0 and report["fraction_of_peak"] is None  # CPU: no peak
    assert (
        json.loads((tmp_path / "report.json").read_text())["total_flops"] == report["total_flops"]
    )


def test_members_end_at_different_times_each_as_its_solo_run(tmp_path: Path) -> None:
    """The loop ends each run on its own: a float64 member that stops early (evaluations at 0
    and 10 above −1 with patience 2: it stops at step 10) finishes while the other trains on to
    20; both equal their solo runs (logs, spectra, checkpoint, summary) to 1e-9. The executor
    still runs early-stopping configs solo (unsupported_reason); this drives the loop directly."""
    from rankdecay.config import apply_overrides
    from rankdecay.ensemble import StackEngine
    from rankdecay.loop import RunSpec, train_runs

    cfgs = _cfgs(20, "float64")[:2]
    cfgs[0] = apply_overrides(cfgs[0], ["train.early_stop_above=-1", "train.early_stop_patience=2"])
    for i, c in enumerate(cfgs):
        train(c, tmp_path / f"solo{i}", progress=False)
    specs = [RunSpec(c, tmp_path / f"ens{i}") for i, c in enumerate(cfgs)]
    done: list[int] = []
    sums = train_runs(
        StackEngine(), specs, raise_failures=False, on_done=lambda i, s: done.append(i)
    )
    assert [s["step"] for s in sums] == [10, 20] and done == [0, 1]
    assert sums[0]["stopped_early"]["step"] == 10 and "stopped_early" not in sums[1]
    for i in range(2):
        _assert_same_run(tmp_path / f"solo{i}", tmp_path / f"ens{i}")


def test_vmap_forward_trains_like_the_batched_forward(tmp_path: Path) -> None:
    """train_ensemble(forward="vmap") — vmap(functional_call(model)) over the members — trains
    each member as forward="batched" does: in float64 the weights after 15 steps agree to 1e-9
    (rounding only), and a member trained with the other arm's decay would differ by far more."""
    from safetensors.torch import load_file

    exp = get_experiment("grokking")
    cfgs = [
        exp.config("quick", [*TINY, "train.steps=15", "train.dtype=float64", *o], seed=s)
        for s, o in POINTS[:2]
    ]
    for fwd in ("batched", "vmap"):
        members = [EnsembleMember(c, tmp_path / f"{fwd}{i}") for i, c in enumerate(cfgs)]
        sums = train_ensemble(members, forward=fwd)
        assert [s["status"] for s in sums] == ["finished"] * 2
    weights = {
        run: load_file(str(tmp_path / run / "checkpoint" / "model.safetensors"))
        for run in ("batched0", "vmap0", "batched1", "vmap1")
    }
    for i in (0, 1):
        a, b = weights[f"batched{i}"], weights[f"vmap{i}"]
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-9, atol=1e-11)
    gap = max(
        (weights["batched0"][k] - weights["batched1"][k]).abs().max() for k in weights["batched0"]
    )
    assert gap > 1e-4  # the two members really differ (other seed, arm, lr)
