"""Spectra of LoRA adapters ΔW = s·B·A from their factors (a PEFT model or an adapter directory).

A LoRA adapter on a linear layer with weight W (out×in, y = x Wᵀ) adds ΔW = s·B·A, with
A = ``lora_A.weight`` (r×in), B = ``lora_B.weight`` (out×r) and the scale s = α/r (``lora_alpha``
over the rank), or s = α/√r with ``use_rslora``; ``alpha_pattern`` / ``rank_pattern`` override
α and r per module (matched as PEFT does: the pattern is a suffix of the module name, as a regex).

Per adapter and module, :func:`adapter_report` records (the metrics of DESIGN.md):

- ``singular_values`` σ(ΔW) = |s|·σ(B·A) from the factors: B·A = B·(Aᵀ)ᵀ is the factored
  product of the pair (B, Aᵀ), both (·, r), so σ(ΔW) = ``factored_svdvals(s·B, Aᵀ)`` — never the
  out×in matrix; ``rank`` #{σ > rtol·σ₁}, effective/stable rank, nuclear/Frobenius/spectral norms of ΔW;
- ``balance`` ‖A·Aᵀ − BᵀB‖_F (r×r) of the trained factors themselves. Paper 1 writes a product
  as P·Qᵀ with balance ‖PᵀP − QᵀQ‖; here B·A = P·Qᵀ with P = B (out×r), Q = Aᵀ (in×r), so
  PᵀP − QᵀQ = BᵀB − A·Aᵀ. It is zero at every critical point of L(s·B·A) + (λ/2)(‖A‖² + ‖B‖²)
  (weight decay on the LoRA factors, the constant s does not change this) and conserved by
  gradient flow without decay;
- ``norm_gap`` ½(‖A‖_F² + ‖B‖_F²) − ‖B·A‖_* ≥ 0 of the factors (s excluded), zero iff balanced;
- ``lora_rank`` r, ``scaling`` s, ``adapter`` name, ``target`` (e.g. q_proj).

Sources: a live model holding PEFT LoRA layers (``PeftModel`` or a model after
``inject_adapter_in_model``; every adapter of every layer, active or not), or an adapter
directory as written by ``save_pretrained`` (``adapter_config.json`` +
``adapter_model.safetensors``, read with safetensors only; a legacy ``adapter_model.bin`` is read
with ``torch.load(weights_only=True)``) — no base model needed. Embedding adapters
(``lora_embedding_A/B``, ΔW = (B·A)ᵀ) and conv adapters (kernels flattened to matrices) are
included; DoRA's magnitude vector is not part of ΔW (noted).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import RankdecayError, RankdecayFileNotFoundError, RankdecayValueError
from .spectra import factored_spectrum, spectral_metrics
from .spectral_report import METRICS

__all__ = [
    "ADAPTER_CONFIG",
    "LoraFactor",
    "adapter_report",
    "is_adapter_dir",
    "lora_factors_from_dir",
    "lora_factors_from_model",
]

ADAPTER_CONFIG = "adapter_config.json"
_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_KEY = re.compile(r"^(?P<module>.+?)\.lora_(?P<emb>embedding_)?(?P<side>[AB])(?:\..*)?$")
_PEFT_PREFIX = "base_model.model."


@dataclass
class LoraFactor:
    """One adapter on one module: ΔW = scaling · B · A (A (r, in), B (out, r))."""

    module: str  # module name relative to the model (or as stored in the adapter file)
    adapter: str  # PEFT adapter name ("default" unless named)
    A: Tensor
    B: Tensor
    scaling: float
    notes: tuple[str, ...] = ()

    @property
    def layer(self) -> int:
        """The first integer component of the module name (the block index), −1 if none."""
        for part in self.module.split("."):
            if part.isdigit():
                return int(part)
        return -1


def _as_matrices(A: Tensor, B: Tensor, embedding: bool) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """A (r, in), B (out, r) as matrices: conv kernels flattened, embedding factors transposed
    so that ΔW = B·A in every case (σ of a transpose are the same)."""
    notes: tuple[str, ...] = ()
    if (
        embedding
    ):  # PEFT: lora_embedding_A (r, num_embeddings), lora_embedding_B (dim, r); ΔW = (B A)ᵀ
        return A, B, ("embedding adapter: ΔW = (B·A)ᵀ, same singular values",)
    if A.dim() > 2 or B.dim() > 2:
        notes = (f"conv adapter: kernels flattened (A {tuple(A.shape)}, B {tuple(B.shape)})",)
        A = A.reshape(A.shape[0], -1)
        B = B.reshape(B.shape[0], -1)
    return A, B, notes


def _is_lora_layer(module: nn.Module) -> bool:
    return isinstance(getattr(module, "lora_A", None), nn.ModuleDict) and isinstance(
        getattr(module, "lora_B", None), nn.ModuleDict
    )


def lora_factors_from_model(model: nn.Module) -> list[LoraFactor]:
    """Every adapter of every PEFT LoRA layer of ``model`` (active or not), in module order."""
    found: list[LoraFactor] = []
    for name, module in model.named_modules():
        if not _is_lora_layer(module):
            continue
        scaling = getattr(module, "scaling", {}) or {}
        use_dora = getattr(module, "use_dora", {}) or {}
        emb_A = getattr(module, "lora_embedding_A", None) or {}
        emb_B = getattr(module, "lora_embedding_B", None) or {}
        for adapter in list(module.lora_A.keys()) + [k for k in emb_A if k not in module.lora_A]:
            embedding = adapter not in module.lora_A
            if embedding:
                A, B = emb_A[adapter], emb_B[adapter]
            else:
                A, B = module.lora_A[adapter].weight, module.lora_B[adapter].weight
            A, B, notes = _as_matrices(A, B, embedding)
            if use_dora.get(adapter, False):
                notes += ("DoRA: the magnitude vector is not part of ΔW = s·B·A",)
            found.append(
                LoraFactor(name, adapter, A.detach(), B.detach(), float(scaling[adapter]), notes)
            )
    return found


def is_adapter_dir(path: str | os.PathLike[str]) -> bool:
    """A PEFT adapter directory: ``adapter_config.json`` beside adapter weights."""
    p = Path(path)
    return p.is_dir() and (p / ADAPTER_CONFIG).is_file()


def _pattern(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """PEFT's rule: the first pattern key k with module matching ``(.*\\.)?(k)$``."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _read_adapter_tensors(directory: Path) -> dict[str, Tensor]:
    single, legacy = (directory / w for w in _WEIGHTS)
    try:
        if single.is_file():
            from safetensors import safe_open

            from .checkpoint import read_safetensors_header

            specs = read_safetensors_header(single)  # header vs file size, offsets, dtypes
            out: dict[str, Tensor] = {}
            with safe_open(str(single), framework="pt") as f:  # type: ignore[no-untyped-call]
                for key in specs:
                    if ".lora_" in key:
                        out[key] = f.get_tensor(key)
            return out
        if legacy.is_file():
            state = torch.load(legacy, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise RankdecayValueError(
                    f"{legacy} does not hold a state dict; re-save the adapter with save_pretrained."
                )
            return {k: v for k, v in state.items() if ".lora_" in k and isinstance(v, Tensor)}
    except RankdecayError:
        raise
    except Exception as exc:  # corrupt or foreign files: safetensors, pickle and IO errors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RankdecayValueError(
            f"the adapter weights in {directory} cannot be read ({reason[:160]}); the file is "
            "corrupt or not an adapter — re-save it with save_pretrained(safe_serialization=True)."
        ) from None
    raise RankdecayFileNotFoundError(
        f"{directory} has {ADAPTER_CONFIG} but no adapter_model.safetensors; save the adapter "
        "there with model.save_pretrained(DIR)."
    )


def _read_adapter_config(directory: Path) -> dict[str, Any]:
    from .checkpoint import read_json_file

    config = read_json_file(directory / ADAPTER_CONFIG, "adapter config")
    if not isinstance(config, dict):
        raise RankdecayValueError(
            f"{directory / ADAPTER_CONFIG} is not a JSON object; re-save the adapter with save_pretrained."
        )
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise RankdecayValueError(
            f"{directory} holds a {peft_type} adapter; rankdecay reads LoRA adapters only "
            "(peft_type LORA)."
        )
    return config


def lora_factors_from_dir(
    directory: str | os.PathLike[str],
) -> tuple[list[LoraFactor], dict[str, Any]]:
    """The LoRA factors of an adapter directory and its config, without the base model.

    The scale of each module is α/r (α/√r with ``use_rslora``), α from ``alpha_pattern`` if a
    pattern matches the module, else ``lora_alpha``; r is the stored factor's rank (checked
    against ``rank_pattern`` / ``r``).
    """
    path = Path(directory)
    config = _read_adapter_config(path)
    tensors = _read_adapter_tensors(path)
    pairs: dict[tuple[str, bool], dict[str, Tensor]] = {}
    for key, value in tensors.items():
        m = _KEY.match(key)
        if m is None:
            continue
        module = m["module"]
        module = module[len(_PEFT_PREFIX) :] if module.startswith(_PEFT_PREFIX) else module
        pairs.setdefault((module, bool(m["emb"])), {})[m["side"]] = value
    if not pairs:
        raise RankdecayValueError(
            f"{path} has no lora_A/lora_B tensors; check that it is a LoRA adapter saved with save_pretrained."
        )
    alpha_default = float(config.get("lora_alpha", 8))
    r_default = int(config.get("r", 8))
    rslora = bool(config.get("use_rslora", False))
    dora = bool(config.get("use_dora", False))
    factors: list[LoraFactor] = []
    for (module, embedding), sides in pairs.items():
        if set(sides) != {"A", "B"}:
            raise RankdecayValueError(
                f"{path}: module {module} has lora_{''.join(sides)} but not both factors; the "
                "adapter file is incomplete — re-save it with save_pretrained."
            )
        A, B, notes = _as_matrices(sides["A"], sides["B"], embedding)
        r = int(A.shape[0])
        if B.shape[1] != r:
            raise RankdecayValueError(
                f"{path}: module {module} has lora_A of rank {r} but lora_B of width {B.shape[1]}; "
                "the adapter file is inconsistent — re-save it with save_pretrained."
            )
        expected_r = int(_pattern(config.get("rank_pattern") or {}, module, r_default))
        if expected_r != r:
            notes += (
                f"stored rank {r} differs from the config's {expected_r}; the stored rank is used",
            )
        alpha = float(_pattern(config.get("alpha_pattern") or {}, module, alpha_default))
        scaling = alpha / (math.sqrt(r) if rslora else r)
        if dora:
            notes += ("DoRA: the magnitude vector is not part of ΔW = s·B·A",)
        factors.append(LoraFactor(module, "default", A, B, scaling, notes))
    return factors, config


def adapter_report(
    source: nn.Module | str | os.PathLike[str], rtol: float, source_name: str | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(records, model info) for every LoRA adapter of ``source`` (see the module docstring).

    All adapters whose factors have equal shapes go through one batched factored spectrum
    (float64): σ of (B, Aᵀ) with balance and norm gap from the same QR, σ(ΔW) = |s|·σ.
    """
    info: dict[str, Any] = {"kind": "lora_adapters", "source": source_name}
    if isinstance(source, nn.Module):
        factors = lora_factors_from_model(source)
        info["model_class"] = type(source).__name__
        if not factors:
            raise RankdecayValueError(
                f"{type(source).__name__} has no PEFT LoRA layers; wrap it with peft.get_peft_model "
                "or analyze it without adapters=True.",
                param="adapters",
            )
    else:
        factors, config = lora_factors_from_dir(source)
        info["model_class"] = "LoRA adapter directory"
        info["base_model"] = config.get("base_model_name_or_path")
        info["use_rslora"] = bool(config.get("use_rslora", False))
    info["scaling_rule"] = "alpha/sqrt(r)" if info.get("use_rslora") else "alpha/r (or as stored)"
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, f in enumerate(factors):
        groups.setdefault((*f.A.shape, *f.B.shape), []).append(i)
    results: dict[int, dict[str, Any]] = {}
    with torch.no_grad():
        for members in groups.values():
            B = torch.stack([factors[i].B for i in members])  # (N, out, r)
            At = torch.stack([factors[i].A.mT for i in members])  # (N, in, r)
            s_raw, bal, gap = factored_spectrum(B, At)  # σ(B·A), ‖BᵀB − AAᵀ‖, gap
            scale = torch.tensor([abs(factors[i].scaling) for i in members], dtype=s_raw.dtype)
            s = s_raw * scale[:, None]  # σ(s·B·A)
            metrics = spectral_metrics(s, rtol)
            for j, i in enumerate(members):
                results[i] = {
                    "singular_values": s[j].tolist(),
                    "balance": float(bal[j]),
                    "norm_gap": float(gap[j]),
                    **{k: v[j].item() for k, v in metrics.items()},
                }
    records: list[dict[str, Any]] = []
    for i, f in enumerate(factors):
        res = results[i]
        records.append(
            {
                "layer": f.layer,
                "name": f.module,
                "head": None,
                "circuit": "lora",
                "kv_head": None,
                "rtol": rtol,
                "adapter": f.adapter,
                "target": f.module.rsplit(".", 1)[-1],
                "lora_rank": int(f.A.shape[0]),
                "scaling": f.scaling,
                "rank": int(res["rank"]),
                **{k: float(res[k]) for k in _FLOAT_METRICS},
                "singular_values": res["singular_values"],
            }
        )
    info["n_adapters"] = len(records)
    info["adapters"] = sorted({f.adapter for f in factors})
    info["rtol"] = rtol
    info["circuits"] = ["lora"]
    info["compute_dtype"] = "float64"
    info["notes"] = {f.module: list(f.notes) for f in factors if f.notes}
    return records, info


_FLOAT_METRICS = tuple(m for m in METRICS if m != "rank")
