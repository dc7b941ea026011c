"""The spectral report: what :func:`rankdecay.analyze` returns, and how its records are computed.

One record per (layer, query head, circuit) holds the singular values σ of the circuit
W_c^{ℓ,h} = A·Bᵀ (factors from :class:`~rankdecay.heads.LayerHeads`; "qk" → (W_Q, W_K),
"ov" → (W_V, W_Oᵀ)) computed in float64 from the factors — the r×r Grams AᵀA, BᵀB and one
r×r eigenvalue problem per product, or where that cannot vouch for every σ to 1e-10·σ₁, thin QR
of each side, σ(A·Bᵀ) = σ(R_A R_Bᵀ) (:mod:`rankdecay.spectra`), never the d×d product — and the
metrics of :data:`METRICS`. Products of equal factor shapes (typically every head of every layer,
both circuits) are stacked into one batched call, split into chunks only to bound memory.

This module is shared by the in-memory analysis (:mod:`rankdecay.analyze`), the streaming one
(:mod:`rankdecay.stream`) and LoRA adapters (:mod:`rankdecay.lora`); it imports none of them.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ._version import __version__
from .errors import MissingExtraError, RankdecayFileNotFoundError, RankdecayValueError
from .heads import LayerHeads
from .layer_heads import select_heads
from .progress import ProgressBar
from .runio import atomic_write_json, atomic_write_text, read_json
from .spectra import (
    DEFAULT_RTOL,
    QR_BATCH_ELEMENTS,
    FactoredSpectrum,
    chain_r,
    gram,
    r_factor,
    require_finite,
    require_finite_gram,
    spectral_metrics,
    spectrum_from_grams,
    spectrum_from_r,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["CIRCUITS", "METRICS", "RECORD_FIELDS", "SpectralReport"]

CIRCUITS: tuple[str, ...] = ("qk", "ov")
#: per-record scalar metrics, in display order
METRICS: tuple[str, ...] = (
    "rank",
    "effective_rank",
    "stable_rank",
    "nuclear_norm",
    "frobenius_norm",
    "spectral_norm",
    "balance",
    "norm_gap",
)
#: fields of one record, in CSV column order
RECORD_FIELDS: tuple[str, ...] = (
    "layer",
    "name",
    "head",
    "circuit",
    "kv_head",
    "rtol",
    *METRICS,
    "singular_values",
)
#: elements of A and B (together) per batched SVD call; bounds the float64 working memory
_CHUNK_ELEMENTS = 1 << 25
#: float64 elements per batched QR call (8 MiB): the cast copy stays in cache for the QR
_QR_BATCH_ELEMENTS = QR_BATCH_ELEMENTS


@dataclass
class SpectralReport:
    """Result of :func:`rankdecay.analyze`.

    ``records``: one dict per (layer, head, circuit) with the fields of :data:`RECORD_FIELDS`
    (``singular_values`` is the list of the min(d, r) singular values, descending; ``kv_head``
    is the key/value head the query head reads, equal to ``head`` without GQA).
    ``model``: model-level information (class, adapter, layer names, heads, widths, rotary and
    GQA flags, scales, notes, rtol, circuits, fold_norm).
    """

    records: list[dict[str, Any]] = field(repr=False)
    model: dict[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        """One line: the model, its size, circuits, rtol and the record count (not the records)."""
        m = self.model
        layers = len({r.get("layer") for r in self.records})
        pairs = {(r.get("layer"), r.get("head")) for r in self.records}
        heads = m.get("n_heads", len(pairs) // max(1, layers))
        what = m.get("source") or m.get("model_class") or "model"
        return (
            f"SpectralReport({what!r}: {layers} layers × {heads} heads, "
            f"circuits={','.join(self.circuits)}, rtol={self.rtol:g}, {len(self.records)} records)"
        )

    @property
    def rtol(self) -> float:
        return float(self.model.get("rtol", DEFAULT_RTOL))

    @property
    def circuits(self) -> tuple[str, ...]:
        return tuple(self.model.get("circuits", CIRCUITS))

    def summary(self) -> list[dict[str, Any]]:
        """Per (layer, circuit): the mean over heads of every metric, plus the rank range.

        Returns a list of dicts with keys layer, name, circuit, n_heads, rtol, rank_min,
        rank_max and one mean per metric of :data:`METRICS`.
        """
        groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for rec in self.records:
            groups.setdefault((int(rec["layer"]), str(rec["circuit"])), []).append(rec)
        order = {c: i for i, c in enumerate(CIRCUITS)}
        rows = []
        for (layer, circuit), recs in sorted(
            groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9))
        ):
            row: dict[str, Any] = {
                "layer": layer,
                "name": recs[0]["name"],
                "circuit": circuit,
                "n_heads": len(recs),
                "rtol": recs[0]["rtol"],
                "rank_min": min(int(r["rank"]) for r in recs),
                "rank_max": max(int(r["rank"]) for r in recs),
            }
            for metric in METRICS:
                row[metric] = sum(float(r[metric]) for r in recs) / len(recs)
            rows.append(row)
        return rows

    # -- serialization ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "rankdecay.spectral_report",
            "version": 1,
            "model": self.model,
            "records": self.records,
        }

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the whole report (model info + records) as JSON, atomically."""
        path = Path(path)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> SpectralReport:
        data = read_json(path, "spectral report")
        if not isinstance(data, dict) or data.get("format") != "rankdecay.spectral_report":
            raise RankdecayValueError(
                f"{path} is not a rankdecay spectral report; write one with "
                "rankdecay.analyze(...).to_json(path)."
            )
        return cls(records=list(data["records"]), model=dict(data.get("model", {})))

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """One row per record; ``singular_values`` as a space-separated list (full precision)."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(RECORD_FIELDS), lineterminator="\n")
        writer.writeheader()
        for rec in self.records:
            row = {k: rec.get(k) for k in RECORD_FIELDS}
            row["singular_values"] = " ".join(repr(float(s)) for s in rec["singular_values"])
            row = {k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()}
            writer.writerow(row)
        path = Path(path)
        atomic_write_text(path, buf.getvalue())
        return path

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> SpectralReport:
        """Read records written by :meth:`to_csv` (model info is not part of the CSV)."""
        try:
            with open(path, encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f))
        except FileNotFoundError:
            raise RankdecayFileNotFoundError(f"{path} does not exist; check the path.") from None
        ints = {"layer", "head", "kv_head", "rank"}
        records = []
        for row in rows:
            rec: dict[str, Any] = {}
            for k in RECORD_FIELDS:
                value = row.get(k)
                if k == "singular_values":
                    rec[k] = [float(s) for s in (value or "").split()]
                elif k in ("name", "circuit"):
                    rec[k] = value
                elif k in ints:
                    rec[k] = int(value) if value not in (None, "") else None
                else:
                    rec[k] = float(value) if value not in (None, "") else None
            records.append(rec)
        return cls(records=records, model={})

    def to_pandas(self) -> pd.DataFrame:
        """The records as a DataFrame (one row per layer × head × circuit)."""
        try:
            import pandas as pd
        except ImportError:
            raise MissingExtraError(
                "to_pandas() needs pandas; install it with `pip install pandas`."
            ) from None
        return pd.DataFrame.from_records(self.records, columns=list(RECORD_FIELDS))


@dataclass
class _Side:
    """One side (A or B) of a circuit in one layer, as :func:`_spectra_records` decomposes it.

    Either ``factor`` (n, d, r) — the distinct factors, one per head, or one per key/value head
    when query heads share it (``index`` then maps query head → row) — or ``chain``, the factors
    A₁, A₂, … of a product (MLA, LoRA) decomposed by a QR cascade.
    """

    factor: Tensor | None = None
    index: tuple[int, ...] | None = None
    chain: tuple[Tensor, ...] | None = None


def _sides(lh: LayerHeads, circuit: str) -> tuple[_Side, _Side]:
    """(A side, B side) of ``circuit``; a key/value factor shared by g query heads (GQA/MQA)
    appears once, so its QR is computed once and reused by index."""
    if lh.chains and circuit in lh.chains:
        a_chain, b_chain = lh.chains[circuit]
        return _Side(chain=tuple(a_chain)), _Side(chain=tuple(b_chain))
    A, B = lh.factors(circuit)
    kv = lh.head_index(circuit)  # key heads (qk) or value heads (ov): they may differ
    if kv is None:
        return _Side(A), _Side(B)
    distinct = list(dict.fromkeys(kv))  # key/value heads in order of first use
    first = [kv.index(j) for j in distinct]
    row = {j: i for i, j in enumerate(distinct)}
    index = tuple(row[j] for j in kv)
    if circuit == "qk":  # B = W_K is the shared one
        return _Side(A), _Side(_heads(B, first), index)
    return _Side(_heads(A, first), index), _Side(B)  # ov: A = W_V is shared


def _heads(X: Tensor, heads: list[int]) -> Tensor:
    """X[heads] for a head stack X (H, a, b): a view where ``heads`` are evenly spaced (grouped
    query attention's first head of each group), else a copy (:func:`select_heads`)."""
    if not heads:
        return X[:0]
    step = heads[1] - heads[0] if len(heads) > 1 else 1
    if step > 0 and heads == list(range(heads[0], heads[0] + step * len(heads), step)):
        return X[heads[0] :: step][: len(heads)]
    return select_heads(X, torch.tensor(heads, device=X.device))


def _stack_float64(pieces: list[Tensor], buffer: Tensor | None = None) -> Tensor:
    """Stack (nᵢ, d, r) factors of any float dtype into one float64 (N, d, r) tensor: one copy
    pass, cast included, in the pieces' own memory order (row-major per matrix when their rows
    are contiguous, else column-major), so the copy reads memory in order. ``buffer`` (flat
    float64, at least N·d·r elements, on the pieces' device) is reused instead of a new tensor."""
    n = sum(p.shape[0] for p in pieces)
    d, r = pieces[0].shape[-2:]
    row_major = pieces[0].stride(-1) == 1
    shape = (n, d, r) if row_major else (n, r, d)
    if buffer is not None:
        out = buffer[: n * d * r].view(shape)
    else:
        out = torch.empty(shape, dtype=torch.float64, device=pieces[0].device)
    start = 0
    for p in pieces:
        out[start : start + p.shape[0]].copy_(p if row_major else p.mT)
        start += p.shape[0]
    return out if row_major else out.mT


def _batched_grams(pieces: list[tuple[Any, Tensor]], matrix_elements: int) -> dict[Any, Tensor]:
    """Grams XᵀX (n, r, r) of equal-shape factor stacks X (n, d, r), keyed like ``pieces``.

    In cache-sized batches (:data:`_QR_BATCH_ELEMENTS`): cast and stack a few MiB of factors in
    float64, one batched Gram product, keep only the small r×r results; the float64 copy of the
    whole model is never held. The cast factors' finiteness is checked for free: tr(XᵀX) = ‖X‖_F².
    """
    per_batch = max(1, _QR_BATCH_ELEMENTS // max(1, matrix_elements))
    parts: dict[Any, list[Tensor]] = {key: [] for key, _ in pieces}
    batch: list[tuple[Any, Tensor]] = []
    # one cast buffer for every batch: a fresh 8 MiB tensor per batch, freed between small
    # allocations, fragmented glibc's heap (peak RSS of a 70B-shaped layer 0.87 → 1.4 GB)
    buffer = torch.empty(
        per_batch * matrix_elements, dtype=torch.float64, device=pieces[0][1].device
    )

    def flush() -> None:
        X = _stack_float64([t for _, t in batch], buffer)
        G_all = gram(X)  # new memory (the buffer is overwritten by the next batch)
        require_finite_gram(X, G_all)
        start = 0
        for key, t in batch:
            parts[key].append(G_all[start : start + t.shape[0]])
            start += t.shape[0]
        batch.clear()

    for key, factor in pieces:
        for h in range(0, factor.shape[0], per_batch):
            part = factor[h : h + per_batch]
            if sum(t.shape[0] for _, t in batch) + part.shape[0] > per_batch:
                flush()
            batch.append((key, part))
    if batch:
        flush()
    return {key: p[0] if len(p) == 1 else torch.cat(p) for key, p in parts.items()}


def _side_elements(side: _Side) -> int:
    if side.factor is not None:
        return side.factor.numel()
    return sum(t.numel() for t in side.chain or ())


def _indexed(X: Tensor, side: _Side) -> Tensor:
    return X if side.index is None else X[list(side.index)]


def _side_r(side: _Side, n_heads: int, j: int, heads: Tensor | None = None) -> Tensor:
    """R (h, k, r) of one side for query heads ``heads`` (all H when None): Householder/Cholesky
    R of the float64 factor (:func:`r_factor`; only the rows those heads read are cast) or the
    chain's QR cascade (:func:`chain_r`)."""
    if side.factor is not None:
        if heads is None:  # every distinct factor once (a shared K/V head too), then per head
            X = _stack_float64([side.factor])
        else:
            rows = heads if side.index is None else torch.tensor(side.index)[heads]
            X = _stack_float64([side.factor[rows.to(side.factor.device)]])
        require_finite(X)
        R = r_factor(X)
        return _indexed(R, side) if heads is None else R
    R = chain_r(side.chain or (), side="A" if j == 0 else "B")
    if heads is None:
        return R.expand(n_heads, *R.shape[-2:]) if R.dim() == 2 else R
    return R.expand(len(heads), *R.shape[-2:]) if R.dim() == 2 else R[heads.to(R.device)]


def _chunk_spectra(
    layers: list[LayerHeads], chunk: list[tuple[int, str]]
) -> dict[tuple[int, str], FactoredSpectrum]:
    """σ, balance and norm gap (per query head) of every item of a chunk.

    Factor sides with d ≥ r: every distinct factor of equal shape in one batched Gram product
    (:func:`_batched_grams`; a key/value factor shared by g query heads once), then each item's
    products in one Gram eigenvalue call (:func:`spectrum_from_grams`). The products that route
    cannot vouch for to 1e-10·σ₁ (ill-conditioned, rank-collapsed), and every item with a side of
    fewer than r rows or a chain (MLA, LoRA), take the R route: σ(R_A R_Bᵀ) with R by
    :func:`r_factor` or the chain's QR cascade (:func:`spectrum_from_r`).
    """
    sides = {item: _sides(layers[item[0]], item[1]) for item in chunk}

    def gram_side(side: _Side) -> bool:
        return side.factor is not None and side.factor.shape[-2] >= side.factor.shape[-1]

    on_gram = [item for item, pair in sides.items() if all(map(gram_side, pair))]
    groups: dict[tuple[int, ...], list[tuple[tuple[int, str], int]]] = {}
    for item in on_gram:
        for j, side in enumerate(sides[item]):
            assert side.factor is not None
            groups.setdefault(tuple(side.factor.shape[1:]), []).append((item, j))
    grams: dict[tuple[tuple[int, str], int], Tensor] = {}
    for (d, r), members in groups.items():
        pieces = [(key, sides[key[0]][key[1]].factor) for key in members]
        grams.update(_batched_grams(pieces, d * r))  # type: ignore[arg-type]

    def r_route(item: tuple[int, str], heads: Tensor | None = None) -> FactoredSpectrum:
        """The R route for query heads ``heads`` (indices; all when None) of one item."""
        n = layers[item[0]].n_heads
        R_A, R_B = (_side_r(side, n, j, heads) for j, side in enumerate(sides[item]))
        return spectrum_from_r(R_A, R_B)

    out: dict[tuple[int, str], FactoredSpectrum] = {}
    for item in on_gram:  # per item: its Grams are slices of the batches, nothing is copied
        spec, ok = spectrum_from_grams(
            *(_indexed(grams[(item, j)], sides[item][j]) for j in (0, 1))
        )
        bad = ~ok
        if bool(bad.any()):
            fixed = r_route(item, bad.nonzero().flatten().cpu())
            for t, f in zip(spec, fixed):
                t[bad] = f
        out[item] = spec
    for item in sides:
        if item not in out:
            out[item] = r_route(item)
    return out


def _spectra_records(
    layers: list[LayerHeads], circuits: tuple[str, ...], rtol: float, progress: bool | None
) -> list[dict[str, Any]]:
    """One record per (layer, query head, circuit).

    Work per chunk of (layer, circuit) items (:func:`_chunk_spectra`): the Gram of every
    *distinct* factor (a key/value head shared by g query heads once), all factors of equal shape
    in one batched product after one float64 cast-and-stack pass; then σ, balance and gap of each
    item's products in one batched call; the R route where the Gram route cannot vouch
    for the σ, and for MLA/LoRA chains.
    """
    items = [(li, c) for li in range(len(layers)) for c in circuits]
    # Chunks: consecutive items whose distinct factor elements stay under the budget.
    chunks: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] = []
    budget = 0
    for item in items:
        size = sum(_side_elements(side) for side in _sides(layers[item[0]], item[1]))
        if current and budget + size > _CHUNK_ELEMENTS:
            chunks.append(current)
            current, budget = [], 0
        current.append(item)
        budget += size
    if current:
        chunks.append(current)
    n_products = sum(layers[li].n_heads for li, _ in items)
    show = (
        progress
        if progress is not None
        else (n_products >= 512 and len(chunks) > 1 and sys.stderr.isatty())
    )
    bar = ProgressBar(bool(show), len(chunks), "spectra", transient=True)
    results: dict[tuple[int, str], dict[str, Tensor]] = {}
    try:
        for chunk in chunks:
            spectra = _chunk_spectra(layers, chunk)
            shapes: dict[int, list[tuple[int, str]]] = {}
            for item, spec in spectra.items():
                shapes.setdefault(spec.singular_values.shape[-1], []).append(item)
            for members in shapes.values():  # metrics of equal-length spectra in one call
                s = torch.cat([spectra[item].singular_values for item in members])
                metrics = spectral_metrics(s, rtol)
                metrics["balance"] = torch.cat([spectra[item].balance for item in members])
                metrics["norm_gap"] = torch.cat([spectra[item].norm_gap for item in members])
                metrics["singular_values"] = s
                start = 0
                for item in members:
                    n = layers[item[0]].n_heads
                    results[item] = {k: v[start : start + n] for k, v in metrics.items()}
                    start += n
            bar.update(advance=1)
    finally:
        bar.close()
    records: list[dict[str, Any]] = []
    for li, lh in enumerate(layers):
        for c in circuits:
            res = results[(li, c)]
            sv = res["singular_values"].tolist()
            ranks = res["rank"].tolist()
            floats = {m: res[m].tolist() for m in METRICS if m != "rank"}
            for h in range(lh.n_heads):
                rec: dict[str, Any] = {
                    "layer": lh.layer,
                    "name": lh.name,
                    "head": h,
                    "circuit": c,
                    "kv_head": lh.shared_head(c, h),
                    "rtol": rtol,
                    "rank": int(ranks[h]),
                }
                for m in METRICS:
                    if m != "rank":
                        rec[m] = float(floats[m][h])
                rec["singular_values"] = sv[h]
                records.append(rec)
    return records


def _model_info(
    model_class: str,
    layers: list[LayerHeads],
    adapter: str,
    source: str | None,
    rtol: float,
    circuits: tuple[str, ...],
    fold_norm: bool,
) -> dict[str, Any]:
    def uniform(values: list[Any]) -> Any:
        return values[0] if len(set(values)) == 1 else values

    n_heads = [lh.n_heads for lh in layers]
    n_kv = [lh.n_kv_heads for lh in layers]
    d_head = [int(lh.W_Q.shape[2]) for lh in layers]
    d_v = [int(lh.W_V.shape[2]) for lh in layers]  # value heads of their own size (MiMo): d_v
    return {
        "source": source,
        "model_class": model_class,
        "adapter": adapter,
        "rankdecay_version": __version__,
        "n_layers": len(layers),
        "layer_names": [lh.name for lh in layers],
        "n_heads": uniform(n_heads),
        "n_kv_heads": uniform(n_kv),
        "d_model": uniform([int(lh.W_Q.shape[1]) for lh in layers]),
        "d_head": uniform(d_head),
        **({"d_v": uniform(d_v)} if d_v != d_head else {}),
        "d_kv": uniform([int(lh.W_K.shape[1]) for lh in layers]),
        "rotary": any(lh.rotary for lh in layers),
        "gqa": any(lh.kv_head_index is not None for lh in layers),
        "scale": uniform([lh.scale for lh in layers]),
        "parameter_dtype": str(layers[0].W_Q.dtype).replace("torch.", ""),
        "compute_dtype": "float64",
        "rtol": rtol,
        "circuits": list(circuits),
        "fold_norm": bool(fold_norm),
        "notes": {lh.name: list(lh.notes) for lh in layers if lh.notes},
        "flags": {lh.name: dict(lh.flags) for lh in layers if lh.flags},
        "attention_kinds": {lh.name: lh.kind for lh in layers if lh.kind != "self"},
    }
