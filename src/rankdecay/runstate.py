"""The state of a run that a checkpoint holds, and the errors a run ends with.

- :class:`RunState` — the step counter and the running training metrics (device tensors, no
  per-step host sync), saved in the checkpoint so a resumed run logs the same numbers;
- the RNG (python, numpy, torch, CUDA) and the optimizer state as (tensors for safetensors,
  JSON-able rest): a checkpoint never needs pickle;
- :func:`save_run_checkpoint` / :func:`load_run_checkpoint` — one run's checkpoint in the format
  every trainer writes (a DDP run and an ensemble member write the solo format);
- :func:`nonfinite_error`, :func:`write_failure` — the one-sentence errors of a NaN/Inf loss
  and of a failed write, naming what is on disk.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .errors import NonFiniteLossError, RankdecayError
from .run_config import RunConfig
from .runfiles import RunWriter, checkpoint_step
from .runio import FileWriteError, _jsonable

__all__ = [
    "RunResult",
    "RunState",
    "load_run_checkpoint",
    "nonfinite_error",
    "save_run_checkpoint",
    "write_failure",
]


@dataclass
class RunState:
    """Step counter and running training metrics of one run (or one ensemble member).

    ``accumulate`` adds a step's loss and accuracy on the device without syncing; ``pop`` returns
    their means since the last ``pop`` (one host sync per log event).
    """

    step: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    loss_sum: Tensor = field(init=False)
    acc_sum: Tensor = field(init=False)
    count: int = 0

    def __post_init__(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.acc_sum = torch.zeros_like(self.loss_sum)

    def accumulate(self, loss: Tensor, acc: Tensor) -> None:
        self.loss_sum.add_(loss.detach())
        self.acc_sum.add_(acc)
        self.count += 1

    def pending_finite(self) -> bool:
        return bool(torch.isfinite(self.loss_sum))

    def pop(self) -> dict[str, float]:
        if self.count == 0:
            return {}
        out = {"loss": float(self.loss_sum) / self.count, "acc": float(self.acc_sum) / self.count}
        self.loss_sum.zero_()
        self.acc_sum.zero_()
        self.count = 0
        return out

    def tensors(self) -> dict[str, Tensor]:
        return {
            "run.loss_sum": self.loss_sum.detach().cpu(),
            "run.acc_sum": self.acc_sum.detach().cpu(),
        }

    def load(self, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
        self.step = int(meta["step"])
        self.count = int(meta["count"])
        self.loss_sum = tensors["run.loss_sum"].to(self.device).clone()
        self.acc_sum = tensors["run.acc_sum"].to(self.device).clone()


@dataclass
class RunResult:
    """What a verdict function sees: the run's full metric history and its final values."""

    run_dir: Path
    config: RunConfig
    metrics: list[dict[str, Any]]
    final: dict[str, Any]

    def series(self, key: str) -> list[tuple[int, float]]:
        return [(r["step"], r[key]) for r in self.metrics if r.get(key) is not None]


def _rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    numpy = {
        "kind": kind,
        "keys": np.asarray(keys).tolist(),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }
    return {"python": [version, list(internal), gauss], "numpy": numpy}


def _rng_tensors() -> dict[str, Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def _set_rng(state: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    n = state["numpy"]
    keys = np.asarray(n["keys"], dtype=np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _optimizer_to_parts(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state dict → (tensors for safetensors, JSON-able rest)."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    meta = {"param_groups": _jsonable(sd["param_groups"]), "scalars": scalars}
    return tensors, meta


def _optimizer_from_parts(
    opt: torch.optim.Optimizer, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, rest in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(rest)
    groups = [dict(g) for g in meta["param_groups"]]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])  # JSON made the tuple a list
    opt.load_state_dict({"state": state, "param_groups": groups})


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _params_finite(model: nn.Module) -> bool:
    flags = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


def nonfinite_error(cause: str, writer: RunWriter) -> NonFiniteLossError:
    """The error for a NaN/Inf: ``cause`` and how to continue, stating only what is on disk."""
    step = checkpoint_step(writer.dir)
    if step is None:
        return NonFiniteLossError(
            f"{cause}; no checkpoint was written yet, so lower optim.lr or set optim.grad_clip and "
            f"start the run again (into the same directory {writer.dir} if you like).",
            param=("optim.lr", "optim.grad_clip"),
        )
    return NonFiniteLossError(
        f"{cause}; lower optim.lr or set optim.grad_clip and resume {writer.dir}, which continues "
        f"from its intact checkpoint at step {step}.",
        param=("resume", "optim.lr", "optim.grad_clip"),
    )


def write_failure(writer: RunWriter, exc: BaseException, step: int | None) -> RankdecayError | None:
    """After an OS error while writing (disk full), the one-sentence error to raise instead
    (None for other errors); the summary is updated only if that write still succeeds."""
    if not isinstance(exc, FileWriteError):
        return None
    fix = "free some space" if exc.os_errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
    ck = checkpoint_step(writer.dir)
    where = (
        f"its checkpoint at step {ck} is intact, so {fix} and resume {writer.dir}"
        if ck is not None
        else f"no checkpoint was written yet, so {fix} and start the run again"
    )
    at = f" at step {step}" if step is not None else ""
    return RankdecayError(
        f"the run stopped{at}: could not write {exc.path} ({exc.reason}); {where} "
        "(no half-written file was left behind).",
        param="resume" if ck is not None else None,
    )


def load_run_checkpoint(
    writer: RunWriter,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: RunState,
    max_step: int,
) -> None:
    """Load the run's newest intact checkpoint: weights, optimizer state, running sums, RNG."""

    def restore(tensors: dict[str, Tensor], ck: dict[str, Any]) -> None:
        _optimizer_from_parts(optimizer, tensors, ck["optimizer"])
        state.load(tensors, ck)
        _set_rng(ck["rng"], tensors)

    writer.load_checkpoint(model, restore, max_step=max_step)


def save_run_checkpoint(
    writer: RunWriter, model: nn.Module, optimizer: torch.optim.Optimizer, state: RunState
) -> None:
    """Checkpoint weights, optimizer state, running sums and RNG (refuses NaN/Inf weights)."""
    if not _params_finite(model):
        raise nonfinite_error(f"the weights became NaN/Inf by step {state.step}", writer)
    opt_tensors, opt_meta = _optimizer_to_parts(optimizer)
    tensors = {**opt_tensors, **state.tensors(), **_rng_tensors()}
    writer.save_checkpoint(
        model,
        tensors,
        {"step": state.step, "count": state.count, "optimizer": opt_meta, "rng": _rng_state()},
    )
