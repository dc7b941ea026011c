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
    phase = _runs("grokking", "phase")  # 6 fractions × 6 strengths × 2 arms × 3 seeds
    assert len(phase) == 216
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
