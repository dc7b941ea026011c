"""Experiment presets: the grids and sizes that docs/reproductions.md and REPRODUCTIONS.md name."""

from __future__ import annotations

import pytest

from rankdecay.experiments import get_experiment, list_experiments
from rankdecay.sweep import plan_sweep


def _runs(experiment: str, preset: str) -> list[tuple[dict, int]]:
    _, _, spec = plan_sweep(experiment, preset)
    return [(p, s) for p in spec.points() for s in spec.seeds]


@pytest.mark.parametrize("name", list_experiments())
def test_every_experiment_has_quick_and_paper(name: str) -> None:
    exp = get_experiment(name)
    assert {"quick", "paper"} <= set(exp.presets) and exp.reproduces.startswith("R")
    for preset in exp.presets:
        exp.config(preset)  # every preset builds a valid config
        if exp.grids.get(preset):  # a sweep preset plans its grid × seeds
            assert len(_runs(name, preset)) >= len(exp.grids[preset]) * exp.seeds.get(preset, 1)


def test_grokking_paper_grid_is_the_published_point_and_phase_the_diagram() -> None:
    runs = _runs("grokking", "paper")  # f = 0.5, both arms at their published strengths, 3 seeds
    assert len(runs) == 6 and {p["arm"] for p, _ in runs} == {"l2", "lrd"}
    assert {p["task.train_fraction"] for p, _ in runs} == {0.5}
    cfg = get_experiment("grokking").config("paper")
    assert cfg.strength is None and cfg.train.steps == 4000 and cfg.model.d_model == 128
    phase = _runs("grokking", "phase")  # 6 fractions × 6 strengths × 2 arms × 1 seed (published)
    assert len(phase) == 72
    assert sorted({p["task.train_fraction"] for p, _ in phase}) == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert sorted({p["strength"] for p, _ in phase}) == [1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2]


def test_lm_paper_is_cpu_sized_and_gpu_is_the_large_model() -> None:
    exp = get_experiment("lm")
    quick, paper, gpu = (exp.config(p) for p in ("quick", "paper", "gpu"))
    assert (paper.model.d_model, paper.model.n_layers, paper.task.seq_len) == (
        quick.model.d_model,
        quick.model.n_layers,
        quick.task.seq_len,
    )
    assert paper.train.steps == 10 * quick.train.steps
    assert (gpu.model.d_model, gpu.model.n_layers, gpu.task.seq_len) == (128, 4, 128)
    assert len(_runs("lm", "paper")) == 27 and len(_runs("lm", "gpu")) == 48


def test_grokking_paper_is_the_public_code_row_by_row() -> None:
    """R4 `paper` = Chunjiang-Intelligence/low-rank-decay experiment.py (REPRODUCTIONS.md R4)."""
    exp = get_experiment("grokking")
    cfg = exp.config("paper")
    t, m, o, lrd, tr = cfg.task, cfg.model, cfg.optim, cfg.lrd, cfg.train
    assert (t.p, t.op, t.train_fraction) == (113, "+", 0.5)
    assert (t.split, t.split_seed, t.last_batch, t.out_classes) == (
        "python",
        42,
        "partial",
        "vocab",
    )
    assert (m.n_layers, m.d_model, m.n_heads, m.head_dim, m.d_mlp) == (2, 128, 4, 32, 512)
    assert (m.norm, m.qk_norm, m.final_norm, m.pos, m.readout) == (
        "rms",
        "rms",
        True,
        "learned",
        "last",
    )
    assert (m.mlp, m.bias, m.causal, m.tie_embeddings) == ("silu", False, False, False)
    assert m.norm_eps == m.qk_norm_eps == 1e-12
    assert m.init_stds() == {"embed": None, "pos": 0.02, "linear": None}  # torch defaults
    assert (o.name, o.lr, tuple(o.betas), o.eps) == ("adamw", 1e-3, (0.9, 0.999), 1e-8)
    assert (o.warmup_steps, o.schedule, o.grad_clip) == (0, "constant", 0.0)
    assert (lrd.target, lrd.granularity, lrd.polar, lrd.polar_steps) == (
        "qk",
        "matrix",
        "newton_schulz_fixed",
        5,
    )
    assert (lrd.mode, lrd.scale_by_lr) == ("subtract", False)
    assert (tr.steps, tr.batch_size, tr.eval_every) == (4000, 512, 200)
    assert (tr.early_stop_above, tr.early_stop_key, tr.early_stop_patience) == (0.99, "val_acc", 2)
    l2, lrd_arm = exp.config("paper", {"arm": "l2"}), exp.config("paper", {"arm": "lrd"})
    opt_l2, lrd_l2 = l2.optimizer_settings()
    assert opt_l2.weight_decay == 0.1 and not opt_l2.weight_decay_by_role and lrd_l2.strength == 0
    opt_lrd, lrd_lrd = lrd_arm.optimizer_settings()
    assert opt_lrd.weight_decay == 0.1 and opt_lrd.weight_decay_by_role == {"attn_qk": 0.0}
    assert lrd_lrd.strength == 5e-3
    phase = exp.config("phase", {"arm": "l2", "strength": 1e-3})
    assert phase.train.steps == 2500 and phase.optimizer_settings()[
        0
    ].weight_decay == pytest.approx(1e-2)
    assert (
        exp.config("phase", {"arm": "lrd", "strength": 1e-3}).optimizer_settings()[1].strength
        == 1e-3
    )
    old = exp.config("paper-v1")  # our earlier setting stays available
    assert (old.model.mlp, old.model.causal, tuple(old.optim.betas), old.lrd.polar) == (
        "gelu",
        True,
        (0.9, 0.98),
        "svd",
    )


def _public_forward(model, x):
    """The public code's Transformer.forward written out independently, on our weights:
    RMSNorm = F.normalize(x)·√d·g; QK-norm on the full q, k before the head split; scale 1/√32;
    no mask; SiLU MLP; final norm; readout at the last position."""
    import torch.nn.functional as F

    d, H = 128, 4

    def rms(h, g):
        return F.normalize(h, dim=-1) * d**0.5 * g

    h = model.embed.weight[x] + model.pos_embed.weight[: x.shape[1]]
    B, T = x.shape
    for blk in model.blocks:
        a = blk.attn
        z = rms(h, blk.ln1.weight)
        q = rms(z @ a.q.weight.T, a.q_norm.weight).view(B, T, H, 32).transpose(1, 2)
        k = rms(z @ a.k.weight.T, a.k_norm.weight).view(B, T, H, 32).transpose(1, 2)
        v = (z @ a.v.weight.T).view(B, T, H, 32).transpose(1, 2)
        att = ((q @ k.transpose(-2, -1)) * 32**-0.5).softmax(-1)
        h = h + (att @ v).transpose(1, 2).reshape(B, T, d) @ a.o.weight.T
        z = rms(h, blk.ln2.weight)
        h = h + F.silu(z @ blk.mlp.fc_in.weight.T) @ blk.mlp.fc_out.weight.T
    return rms(h, model.ln_f.weight)[:, -1] @ model.unembed.weight.T


def test_grokking_paper_model_computes_the_public_forward() -> None:
    import torch

    from rankdecay.train import build_model

    cfg = get_experiment("grokking").config("paper")
    task = cfg.task.build(0)
    torch.manual_seed(0)
    model = build_model(cfg.model, task)
    with torch.no_grad():  # non-trivial gains, as after training
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or ".ln" in n or n.startswith("ln_f"):
                p.uniform_(0.5, 1.5)
    x = task.val_x[:64]
    ours, ref = model(x), _public_forward(model, x)
    assert ours.shape == (64, 114)
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert sorted(n for n, _ in model.named_parameters() if n.endswith(".bias")) == []
