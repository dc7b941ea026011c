"""The config dataclasses of the built-in tasks, importable without torch.

An experiment nests one of these as its ``task`` section, so ``rankdecay list`` and config checks
read them without importing torch (as :mod:`rankdecay.run_config` does for the run sections). Each
task module re-exports its config under the old name (``from rankdecay.tasks.modular import
ModularConfig`` is this class), and ``cfg.build(seed)`` imports the task module only then.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:  # pragma: no cover
    from .base import Task

__all__ = ["ImagesConfig", "ModularConfig", "RecallConfig", "TextConfig"]


class _TaskConfig:
    """What every task config shares: ``build(seed)``, the task it describes.

    ``_builds`` names the task class, (module of :mod:`rankdecay.tasks`, class name); the module is
    looked up by name (as :func:`rankdecay.tasks.task_config_class` does) because it imports torch
    and re-exports this config, so it must not be imported here.
    """

    _builds: ClassVar[tuple[str, str]]
    data_seed: int | None

    def build(self, seed: int = 0) -> Task:
        """The task, its data seeded by ``data_seed`` or, when that is None, by ``seed``."""
        module, name = self._builds
        task_cls = getattr(importlib.import_module(f"{__package__}.{module}"), name)
        return task_cls(self, seed if self.data_seed is None else self.data_seed)  # type: ignore[no-any-return]


@dataclass
class RecallConfig(_TaskConfig):
    """Associative recall (:mod:`rankdecay.tasks.recall` describes the sequences)."""

    _builds: ClassVar[tuple[str, str]] = ("recall", "RecallTask")

    n_keys: int = 16
    n_values: int = 16
    n_pairs: int = 8
    #: None → 2·n_pairs + 1; a larger value left-pads with a pad token
    seq_len: int | None = None
    #: fresh samples every step (True) or a fixed training set of n_train sequences (False)
    online: bool = True
    n_train: int = 10000
    n_eval: int = 1000
    #: None → the run seed
    data_seed: int | None = None


@dataclass
class ModularConfig(_TaskConfig):
    """(a ∘ b) mod p (:mod:`rankdecay.tasks.modular` describes the splits)."""

    _builds: ClassVar[tuple[str, str]] = ("modular", "ModularTask")

    p: int = 113
    op: Literal["+", "-", "*", "/"] = "+"
    train_fraction: float = 0.5
    split: Literal["ordered", "unordered", "python"] = "ordered"
    #: split="python" only: the seed of random.Random(split_seed).shuffle (public code: 42)
    split_seed: int = 42
    #: always train on the whole training set (else the trainer's batch_size decides)
    full_batch: bool = False
    #: "wrap": equal batches across epoch boundaries; "partial": per-epoch batches, last one smaller
    last_batch: Literal["wrap", "partial"] = "wrap"
    #: readout width: "answers" → p classes; "vocab" → p + 1 (the "=" token included)
    out_classes: Literal["answers", "vocab"] = "answers"
    #: None → the run seed
    data_seed: int | None = None


@dataclass
class TextConfig(_TaskConfig):
    """Language modelling (:mod:`rankdecay.tasks.text` describes corpus and tokenizers)."""

    _builds: ClassVar[tuple[str, str]] = ("text", "TextTask")

    #: UTF-8 text file; None → Python's pydoc_data.topics
    path: str | None = None
    tokenizer: Literal["char", "gpt2"] = "char"
    seq_len: int = 128
    val_fraction: float = 0.1
    #: gpt2 only: renumber the token ids the corpus uses to 0 … V−1
    compact_vocab: bool = True
    n_eval_windows: int = 64
    #: None → the run seed
    data_seed: int | None = None


@dataclass
class ImagesConfig(_TaskConfig):
    """Image classification (:mod:`rankdecay.tasks.images` describes the datasets)."""

    _builds: ClassVar[tuple[str, str]] = ("images", "ImagesTask")

    dataset: Literal["mnist5k", "digits"] = "mnist5k"
    val_fraction: float = 0.2
    #: size of the fixed "train" evaluation subset (0 → the whole training set)
    n_eval_train: int = 1000
    #: None → the run seed
    data_seed: int | None = None
