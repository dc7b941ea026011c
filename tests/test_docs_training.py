"""docs/training.md, "Use it where you train": every snippet runs as written, and does what it says.

The code blocks of each subsection are taken from the markdown: ``python`` blocks are executed,
``bash`` blocks' ``rankdecay …`` lines go through the CLI in-process. They run in a temporary
folder with W&B offline; afterwards the files the snippets promise are read back.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from tracker_files import offline_trackers, read_tensorboard, read_wandb_history  # noqa: F401

from rankdecay.cli import main

pytestmark = pytest.mark.usefixtures("offline_trackers")

DOC = Path(__file__).resolve().parents[1] / "docs" / "training.md"
SECTIONS = ("Use it in your loop", "TensorBoard", "W&B", "Hugging Face Trainer", "Lightning")


def snippets() -> dict[str, list[tuple[str, str]]]:
    """Subsection title → [(language, code)] of the "Use it where you train" section."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index("\n## Use it where you train\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end >= 0 else len(text)]
    out: dict[str, list[tuple[str, str]]] = {}
    for part in re.split(r"\n### ", section)[1:]:
        title, _, body = part.partition("\n")
        out[title.strip()] = re.findall(r"```(python|bash)\n(.*?)```", body, flags=re.S)
    return out


def test_every_section_has_a_runnable_snippet() -> None:
    found = snippets()
    for title in SECTIONS:
        assert any(lang == "python" for lang, _ in found.get(title, [])), title


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run every snippet of the section once, in order, in one folder."""
    root = tmp_path_factory.mktemp("docs")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for title, blocks in snippets().items():
            for lang, code in blocks:
                if lang == "python":
                    exec(compile(code, f"{DOC.name}: {title}", "exec"), {"__name__": "__doc__"})
                    continue
                for line in code.splitlines():
                    if not line.strip() or line.lstrip().startswith("#"):
                        continue
                    argv = shlex.split(line, comments=True)
                    assert argv[0] == "rankdecay", line
                    assert main(argv[1:]) == 0, line
    return root


def test_loop_snippet(ran: Path) -> None:
    events = read_tensorboard(ran / "loop" / "tensorboard")
    assert set(events["rankdecay/qk/effective_rank/layer1"]) == {0, 10, 20, 30}
    assert (ran / "loop" / "spectra.jsonl").stat().st_size > 0


def test_tensorboard_snippets(ran: Path) -> None:
    events = read_tensorboard(ran / "runs" / "recall-tb" / "tensorboard")
    assert set(events["rankdecay/ov/stable_rank/mean"]) == {0, 10, 20}
    assert {"train/loss", "val/accuracy"} <= set(events)
    own = read_tensorboard(ran / "tb-own")
    assert "rankdecay/qk/rank/layer0/head1" in own and "my/metric" in own


def test_wandb_snippets(ran: Path) -> None:
    rows = read_wandb_history(ran / "runs" / "recall-wandb" / "wandb")
    steps = {r["_step"] for r in rows if "rankdecay/qk/rank/layer0" in r}
    assert steps == {0, 10, 20}
    assert any("val/loss" in r for r in rows)
    own = read_wandb_history(ran / "wandb-own")
    assert any("rankdecay/wqk/stable_rank/mean" in r for r in own)


def test_hf_trainer_snippet(ran: Path) -> None:
    events = read_tensorboard(ran / "hf-run" / "runs")
    assert set(events["train/rankdecay/qk/effective_rank/layer1"]) == {10, 20}
    assert (ran / "hf-run" / "spectra.jsonl").stat().st_size > 0


def test_lightning_snippet(ran: Path) -> None:
    events = read_tensorboard(ran / "lightning-logs")
    assert set(events["rankdecay/qk/effective_rank/layer0"]) == {0, 2, 4, 6, 8}
