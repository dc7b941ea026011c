"""README.md and docs/regularizers.md: every ``python`` block runs as written.

A new user's first contact is these pages, so their snippets must not rot: each block is cut from
the markdown and executed in a fresh namespace, in a temporary folder. (docs/training.md's blocks
are run by tests/test_docs_training.py, the register_adapter example of docs/metrics.md by
tests/test_architectures.py.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = (ROOT / "README.md", ROOT / "docs" / "regularizers.md")


def python_blocks() -> list[tuple[str, str]]:
    """(page:line, code) of every ```python block of PAGES."""
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"```python\n(.*?)```", text, flags=re.S):
            out.append((f"{page.name}:{text[: m.start()].count(chr(10)) + 1}", m.group(1)))
    return out


def test_the_pages_have_python_blocks() -> None:
    where = [w for w, _ in python_blocks()]
    assert sum(w.startswith("README") for w in where) >= 3 and len(where) >= 4, where


@pytest.mark.parametrize(("where", "code"), python_blocks(), ids=[w for w, _ in python_blocks()])
def test_python_block_runs_as_written(
    where: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    exec(compile(code, where, "exec"), {"__name__": "__doc__"})  # noqa: S102 - our own docs
