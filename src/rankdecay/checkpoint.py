"""Reading a model directory we did not write: data only, sizes checked, nothing executed.

A model directory (``config.json`` + ``model.safetensors`` | ``model.safetensors.index.json`` +
shards | ``pytorch_model.bin`` [+ index]) is treated as untrusted data:

- **No code.** ``config.json`` is parsed as JSON (size-capped); a config with an ``auto_map``
  (anywhere in it) asks for the directory's own Python and is refused with
  :class:`RemoteCodeError`. Nothing here imports transformers; callers that do pass
  ``trust_remote_code=False``. ``pytorch_model.bin`` is read with ``torch.load(weights_only=True)``.
- **Paths stay inside.** Shard names in an index must be relative paths without ``..`` and must
  name regular files (a FIFO or a device is refused before it is opened, and files are opened
  with ``O_NONBLOCK`` so nothing can hang). Symbolic links inside the directory are followed
  (the Hugging Face cache links snapshot files to its blob store).
- **Headers checked before data.** :func:`read_safetensors_header` parses the safetensors header
  itself — 8-byte little-endian length N (N ≤ :data:`MAX_HEADER_BYTES`, 8 + N ≤ file size), a
  JSON object, and for every tensor: a known dtype, a shape of non-negative integers, and
  ``data_offsets`` [b, e] with 0 ≤ b ≤ e ≤ file size − 8 − N, e − b = ∏shape · itemsize, and no
  two tensors overlapping — before the file is handed to ``safetensors.safe_open``. So a
  truncated shard or a header that lies about shapes or offsets ends in
  :class:`CorruptCheckpointError` without touching tensor data.

:class:`CheckpointIndex` gives every tensor's (shape, dtype) from the headers (no data read),
meta tensors of those shapes for dry runs, and :meth:`CheckpointIndex.read` returns real tensors
memory-mapped from their shard (zero-copy: their pages are read when first touched and released
when the tensors are dropped, so memory follows what the caller keeps alive).

Every error is a :class:`~rankdecay.errors.RankdecayError` that is also the built-in it is
(``ValueError`` for damaged or hostile content, ``FileNotFoundError`` for something missing),
with one sentence naming the cause and the fix.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import RankdecayError

__all__ = [
    "MAX_HEADER_BYTES",
    "CheckpointIndex",
    "CorruptCheckpointError",
    "MissingWeightsError",
    "ModelNotFoundError",
    "RemoteCodeError",
    "TensorSpec",
    "UnsafePathError",
    "check_config_sizes",
    "config_size_doubt",
    "dequantize_block_fp8",
    "exception_reason",
    "fp8_block_size",
    "hub_id_error",
    "looks_like_hub_id",
    "open_regular",
    "quantized_weight_error",
    "read_json_file",
    "read_model_config",
    "read_safetensors_header",
]

#: largest safetensors header accepted (safetensors allows 100 MB; real headers are kilobytes to a
#: few MB, and parsing 100 MB of JSON into Python objects could take ~1 GB)
MAX_HEADER_BYTES = 32 << 20
#: largest config.json / index JSON accepted (real ones: kilobytes; a 1000-shard index ~ 3 MB)
MAX_JSON_BYTES = 16 << 20

#: safetensors dtype → (torch dtype, bytes per element)
SAFETENSORS_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
}
#: dtypes whose attention weights rankdecay reads (cast to float64 for the spectra)
FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
#: 8-bit float weights that a checkpoint may store with per-block scales (DeepSeek-V3's FP8)
FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class CorruptCheckpointError(RankdecayError, ValueError):
    """A weights file or JSON file is damaged, truncated, or lies about its contents."""


class RemoteCodeError(RankdecayError, ValueError):
    """The model directory asks for its own Python code (``auto_map``); it is never run."""


class UnsafePathError(RankdecayError, ValueError):
    """An index names a file outside the directory or something that is not a regular file."""


class MissingWeightsError(RankdecayError, FileNotFoundError):
    """The directory holds no weights, or an index names a shard that is not there."""


class ModelNotFoundError(RankdecayError, FileNotFoundError):
    """The path does not exist (a hub id included: only local directories are read)."""


def exception_reason(exc: BaseException, limit: int = 160, last: bool = False) -> str:
    """One line of an exception's message for a sentence (its first, or ``last``), cut to
    ``limit`` characters; the exception's class name when the message is empty."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[-1] if last else lines[0])[:limit] if lines else type(exc).__name__


def looks_like_hub_id(text: str) -> bool:
    """``"org/name"`` that is not an existing path: a Hugging Face hub id, not a directory."""
    return (
        bool(_HUB_ID.match(text))
        and not Path(text).exists()
        and not Path(text.split("/")[0]).is_dir()
    )


def hub_id_error(text: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"{text} looks like a Hugging Face hub id, but rankdecay reads only local directories and "
        f"never downloads; fetch it first (e.g. `huggingface-cli download {text} --local-dir DIR`) "
        "and pass DIR."
    )


# ---------------------------------------------------------------------------------------------
# Files: regular files only, opened without blocking
# ---------------------------------------------------------------------------------------------


def open_regular(path: Path, what: str) -> int:
    """Open ``path`` read-only as a file descriptor, refusing anything but a regular file.

    ``stat`` first (a FIFO is never opened), then ``O_NONBLOCK`` + ``fstat`` on the descriptor
    (so a file swapped for a FIFO in between cannot block either). Returns the descriptor.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MissingWeightsError(
            f"{what} {path} does not exist; restore it or re-save the model with save_pretrained."
        ) from None
    except OSError as exc:
        raise CorruptCheckpointError(
            f"{what} {path} cannot be read ({exc.strerror}); check its permissions."
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(
            f"{what} {path} is not a regular file (a FIFO, device or directory); "
            "replace it with the real file."
        )
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise CorruptCheckpointError(
            f"{what} {path} cannot be opened ({exc.strerror}); check its permissions."
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # pragma: no cover - swapped after the stat
        os.close(fd)
        raise UnsafePathError(
            f"{what} {path} is not a regular file; replace it with the real file."
        )
    return fd


def _read_capped(path: Path, limit: int, what: str) -> bytes:
    fd = open_regular(path, what)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise CorruptCheckpointError(
                f"{what} {path} is {size} bytes, more than the {limit} a {what} can be; "
                "it is not a real one — re-save the model with save_pretrained."
            )
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_json_file(path: Path, what: str, limit: int = MAX_JSON_BYTES) -> Any:
    """Parse a JSON file we did not write: regular file, size-capped, any parse error a sentence."""
    data = _read_capped(path, limit, what)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = exception_reason(exc, 120)
        raise CorruptCheckpointError(
            f"{what} {path} is not valid JSON ({reason}); restore it or re-save the model with save_pretrained."
        ) from None


def _find_key(obj: Any, key: str, depth: int = 0) -> bool:
    if depth > 64:
        return False
    if isinstance(obj, dict):
        return key in obj or any(_find_key(v, key, depth + 1) for v in obj.values())
    if isinstance(obj, list):
        return any(_find_key(v, key, depth + 1) for v in obj)
    return False


def read_model_config(directory: Path) -> dict[str, Any]:
    """``config.json`` of a model directory as a dict; refuses ``auto_map`` (remote code)."""
    path = directory / "config.json"
    config = read_json_file(path, "config file")
    if not isinstance(config, dict):
        raise CorruptCheckpointError(
            f"{path} holds a JSON {type(config).__name__}, not an object; "
            "restore it or re-save the model with save_pretrained."
        )
    if _find_key(config, "auto_map"):
        raise RemoteCodeError(
            f"{path} has an auto_map, so the model needs Python code from its own directory, which "
            "rankdecay never runs; load the model yourself (after reading that code) and pass the "
            "nn.Module to rankdecay.analyze."
        )
    return config


# ---------------------------------------------------------------------------------------------
# safetensors headers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a checkpoint as its header describes it (no data read)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path
    #: byte range [begin, end) in the file (absolute, header included); None for a .bin entry
    span: tuple[int, int] | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def meta(self) -> Tensor:
        """A tensor of this shape and dtype on the meta device (allocates nothing)."""
        return torch.empty(self.shape, dtype=self.dtype, device="meta")


def _bad_header(path: Path, detail: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"the safetensors file {path} is damaged or lies about its contents ({detail}); "
        "restore it or re-save the model with save_pretrained."
    )


def _nonneg_ints(value: Any, n: int | None = None) -> tuple[int, ...] | None:
    if not isinstance(value, list) or (n is not None and len(value) != n):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return None
    return tuple(value)


def read_safetensors_header(path: Path) -> dict[str, TensorSpec]:
    """Parse and validate a safetensors header without reading tensor data.

    Layout: ``u64 N`` (little-endian) · N bytes of JSON ``{name: {"dtype", "shape",
    "data_offsets": [b, e]}, "__metadata__": {str: str}}`` · the data buffer; offsets are
    relative to the buffer. Checks N ≤ :data:`MAX_HEADER_BYTES` and 8 + N ≤ file size, then for
    every tensor the dtype, the shape, 0 ≤ b ≤ e ≤ buffer size, e − b = ∏shape · itemsize, and
    that no two byte ranges overlap. Raises :class:`CorruptCheckpointError` naming the first
    violation.
    """
    fd = open_regular(path, "weights file")
    try:
        size = os.fstat(fd).st_size
        if size < 8:
            raise _bad_header(path, f"{size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", os.pread(fd, 8, 0))
        if n > MAX_HEADER_BYTES:
            raise _bad_header(path, f"header length {n} exceeds {MAX_HEADER_BYTES}")
        if 8 + n > size:
            raise _bad_header(path, f"header of {n} bytes but the file has {size}: truncated")
        raw = b""
        while len(raw) < n:
            chunk = os.pread(fd, n - len(raw), 8 + len(raw))
            if not chunk:  # pragma: no cover - shrank while reading
                raise _bad_header(path, "truncated while reading the header")
            raw += chunk
    finally:
        os.close(fd)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad_header(path, "the header is not valid UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise _bad_header(path, "the header is not a JSON object")
    buffer = size - 8 - n
    specs: dict[str, TensorSpec] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            if entry is not None and not (
                isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values())
            ):
                raise _bad_header(path, "__metadata__ is not a string map")
            continue
        if not isinstance(entry, dict):
            raise _bad_header(path, f"entry {name!r} is not an object")
        dtype = SAFETENSORS_DTYPES.get(entry.get("dtype"))  # type: ignore[arg-type]
        if dtype is None:
            raise _bad_header(path, f"tensor {name!r} has unknown dtype {entry.get('dtype')!r}")
        shape = _nonneg_ints(entry.get("shape"))
        offsets = _nonneg_ints(entry.get("data_offsets"), 2)
        if shape is None:
            raise _bad_header(path, f"tensor {name!r} has no valid shape")
        if offsets is None or offsets[0] > offsets[1]:
            raise _bad_header(path, f"tensor {name!r} has no valid data_offsets")
        begin, end = offsets
        if end > buffer:
            raise _bad_header(
                path,
                f"tensor {name!r} ends at byte {end} of a {buffer}-byte data buffer: truncated",
            )
        if end - begin != math.prod(shape) * dtype[1]:
            raise _bad_header(
                path,
                f"tensor {name!r} spans {end - begin} bytes but shape {list(shape)} × "
                f"{entry['dtype']} needs {math.prod(shape) * dtype[1]}",
            )
        spans.append((begin, end, name))
        specs[name] = TensorSpec(shape, dtype[0], path, (8 + n + begin, 8 + n + end))
    spans.sort()
    for (_b0, e0, a), (b1, _e1, b) in zip(spans, spans[1:]):
        if b1 < e0:
            raise _bad_header(path, f"tensors {a!r} and {b!r} overlap")
    return specs


# ---------------------------------------------------------------------------------------------
# The weights of a directory: single file, sharded index, or pytorch_model.bin
# ---------------------------------------------------------------------------------------------


def _shard_path(directory: Path, name: object, index: Path) -> Path:
    """An index's shard name → a path inside ``directory`` (lexically; refuses ``..``, absolute)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CorruptCheckpointError(
            f"{index} names a shard {name!r} that is not a file name; re-save the model with save_pretrained."
        )
    parts = Path(name).parts
    if Path(name).is_absolute() or os.path.isabs(name) or ".." in parts or name.startswith("~"):
        raise UnsafePathError(
            f"{index} points at {name!r}, outside the model directory; rankdecay reads only files "
            "inside it — fix the index or move the shard into the directory."
        )
    return directory / name


def quantized_weight_error(name: str, where: Path, dtype: torch.dtype) -> CorruptCheckpointError:
    """The one sentence for a weight stored in a dtype rankdecay does not read (and no per-block
    scale to dequantize it with)."""
    return CorruptCheckpointError(
        f"{name} in {where} is stored as {str(dtype).replace('torch.', '')} without scales "
        "rankdecay can apply (a quantized checkpoint?); rankdecay reads float32, bfloat16, float16 "
        "or float64 weights — analyse the unquantized model."
    )


def fp8_block_size(config: Mapping[str, Any]) -> tuple[int, int]:
    """(rows, columns) of the weight blocks that share one scale in an FP8 checkpoint, from
    config.json's ``quantization_config.weight_block_size`` (DeepSeek-V3: [128, 128])."""
    quant = config.get("quantization_config")
    block = quant.get("weight_block_size") if isinstance(quant, Mapping) else None
    if (
        isinstance(block, (list, tuple))
        and len(block) == 2
        and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)
    ):
        return int(block[0]), int(block[1])
    return 128, 128


def dequantize_block_fp8(W: Tensor, scale_inv: Tensor, block: tuple[int, int]) -> Tensor:
    """float32 W·s of an FP8 weight W (out, in) with one scale per block (b₀, b₁):
    ``scale_inv`` (⌈out/b₀⌉, ⌈in/b₁⌉), as DeepSeek-V3's checkpoints store ``weight_scale_inv``."""
    rows, cols = W.shape
    s = scale_inv.float().repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)
    return W.float() * s[:, :cols]


class CheckpointIndex:
    """Every tensor of a model directory, from headers only; data read on demand.

    ``specs``: name → :class:`TensorSpec` (shape, dtype, file). ``kind``: "safetensors" or
    "bin". Construct with :meth:`open`.
    """

    def __init__(
        self,
        directory: Path,
        specs: dict[str, TensorSpec],
        kind: str,
        bin_state: Mapping[str, Tensor] | None = None,
    ) -> None:
        self.directory = directory
        self.specs = specs
        self.kind = kind
        self._bin_state = bin_state
        #: block size of FP8 weights with per-block scales (set from config.json by the reader)
        self.fp8_block: tuple[int, int] = (128, 128)

    def fp8_scale(self, name: str) -> str | None:
        """The name of the per-block scale of an FP8 weight ``name`` (``…weight_scale_inv``), or
        None when ``name`` is not such a weight."""
        spec = self.specs.get(name)
        scale = name + "_scale_inv"
        if spec is None or spec.dtype not in FP8_DTYPES or scale not in self.specs:
            return None
        return scale

    def check_fp8_scale(self, name: str) -> None:
        """Refuse, in one sentence, an FP8 weight whose scale tensor does not tile it in blocks of
        :attr:`fp8_block`."""
        scale = self.fp8_scale(name)
        assert scale is not None
        spec, sspec = self.specs[name], self.specs[scale]
        b0, b1 = self.fp8_block
        want = (-(-spec.shape[0] // b0), -(-spec.shape[1] // b1)) if len(spec.shape) == 2 else None
        if want is None or sspec.shape != want or sspec.dtype not in FLOAT_DTYPES:
            raise CorruptCheckpointError(
                f"{scale} in {sspec.file} is {sspec.shape} {str(sspec.dtype).replace('torch.', '')}, "
                f"not the float scales of {name} {spec.shape} in {b0}×{b1} blocks "
                "(quantization_config.weight_block_size); fix config.json or re-save the model."
            )

    @classmethod
    def open(cls, directory: Path) -> CheckpointIndex:
        """Find and validate the weights of ``directory`` (safetensors first, then .bin)."""
        single = directory / "model.safetensors"
        index = directory / "model.safetensors.index.json"
        if os.path.lexists(single):
            return cls(directory, read_safetensors_header(single), "safetensors")
        if os.path.lexists(index):
            specs: dict[str, TensorSpec] = {}
            for shard, names in _index_shards(directory, index).items():
                header = read_safetensors_header(shard)
                for name in names:
                    if name not in header:
                        raise CorruptCheckpointError(
                            f"{index} places {name!r} in {shard.name}, whose header has no such "
                            "tensor; re-save the model with save_pretrained."
                        )
                    specs[name] = header[name]
            return cls(directory, specs, "safetensors")
        bin_single = directory / "pytorch_model.bin"
        bin_index = directory / "pytorch_model.bin.index.json"
        if os.path.lexists(bin_single) or os.path.lexists(bin_index):
            files = (
                [bin_single]
                if os.path.lexists(bin_single)
                else list(_index_shards(directory, bin_index))
            )
            state: dict[str, Tensor] = {}
            specs = {}
            for file in files:
                part = _load_bin(file)
                state.update(part)
                specs.update(
                    {k: TensorSpec(tuple(v.shape), v.dtype, file) for k, v in part.items()}
                )
            return cls(directory, specs, "bin", state)
        raise MissingWeightsError(
            f"{directory} has no model.safetensors, model.safetensors.index.json or "
            "pytorch_model.bin; save the weights there with save_pretrained."
        )

    @property
    def total_bytes(self) -> int:
        return sum(s.numel * s.dtype.itemsize for s in self.specs.values())

    @property
    def total_numel(self) -> int:
        return sum(s.numel for s in self.specs.values())

    def read(self, names: Iterable[str]) -> dict[str, Tensor]:
        """The named tensors, memory-mapped from their shards (zero-copy; pages read on touch).

        Each shard is opened with ``safetensors.safe_open`` once per call; the mapping lives as
        long as the returned tensors do.
        """
        wanted = list(dict.fromkeys(names))
        missing = [n for n in wanted if n not in self.specs]
        if missing:
            raise KeyError(missing[0])
        if self._bin_state is not None:
            return {n: self._bin_state[n] for n in wanted}
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for n in wanted:
            by_file.setdefault(self.specs[n].file, []).append(n)
        out: dict[str, Tensor] = {}
        for file, file_names in by_file.items():
            try:
                with safe_open(str(file), framework="pt") as f:
                    for n in file_names:
                        out[n] = f.get_tensor(n)
            except Exception as exc:  # safetensors' own validation, IO errors
                raise _bad_header(file, exception_reason(exc)) from None
        for n, t in out.items():
            spec = self.specs[n]
            if (
                tuple(t.shape) != spec.shape or t.dtype != spec.dtype
            ):  # pragma: no cover - changed on disk
                raise _bad_header(spec.file, f"tensor {n!r} changed since its header was read")
        return out

    def read_dequantized(self, names: Iterable[str]) -> dict[str, Tensor]:
        """:meth:`read`, with every FP8 weight that has a per-block scale returned as float32
        W·s (:func:`dequantize_block_fp8`); the scales are read too but not returned."""
        wanted = list(dict.fromkeys(names))
        scales = {n: s for n in wanted if (s := self.fp8_scale(n)) is not None}
        out = self.read([*wanted, *scales.values()])
        for n, s in scales.items():
            out[n] = dequantize_block_fp8(out[n], out.pop(s), self.fp8_block)
        return out


def _index_shards(directory: Path, index: Path) -> dict[Path, list[str]]:
    """A sharded checkpoint's index → {shard path: tensor names}, every shard checked to be a
    regular file inside the directory."""
    meta = read_json_file(index, "weights index")
    weight_map = meta.get("weight_map") if isinstance(meta, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptCheckpointError(
            f"{index} has no weight_map of tensor names to shard files; re-save the model with save_pretrained."
        )
    shards: dict[Path, list[str]] = {}
    for name, shard in weight_map.items():
        shards.setdefault(_shard_path(directory, shard, index), []).append(str(name))
    for shard in shards:
        os.close(open_regular(shard, "shard"))
    return shards


def _load_bin(path: Path) -> dict[str, Tensor]:
    """``pytorch_model.bin`` with ``weights_only=True`` (never unpickles code), memory-mapped when
    the file is in torch's zip format (legacy files are read once, whole)."""
    os.close(open_regular(path, "weights file"))
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zip" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and IO errors, and the weights_only refusal
        raise CorruptCheckpointError(
            f"the weights in {path} cannot be read ({exception_reason(exc)}); the file is corrupt or not a weights "
            "file — re-save the model with save_pretrained(safe_serialization=True)."
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise CorruptCheckpointError(
            f"{path} does not hold a state dict of tensors; re-save the model with save_pretrained."
        )
    return state


# ---------------------------------------------------------------------------------------------
# Config sizes against the files
# ---------------------------------------------------------------------------------------------

#: config keys holding a number of layers (top level or inside a sub-config)
LAYER_KEYS = (
    "num_hidden_layers",
    "n_layer",
    "num_layers",
    "n_layers",
    "encoder_layers",
    "decoder_layers",
    "num_decoder_layers",
)


#: a sub-config's layer count above this is refused at once whatever the weights hold
MAX_SUB_LAYERS = 1024


def _layer_counts(config: Mapping[str, Any], depth: int = 0) -> Iterable[tuple[str, int]]:
    for key, value in config.items():
        if key in LAYER_KEYS and isinstance(value, int) and not isinstance(value, bool):
            yield key, value
        elif isinstance(value, dict) and depth < 2:
            yield from _layer_counts(value, depth + 1)


def check_config_sizes(config: Mapping[str, Any], index: CheckpointIndex) -> None:
    """Refuse a config whose layer counts exceed what the tensor names hold, before building.

    Layers are numbered path components of the tensor names (``layers.31.``, ``h.11.``): a config
    declaring n layers needs some name with index n − 1. Where the config has a top-level count,
    the counts of its sub-configs are held only to :data:`MAX_SUB_LAYERS` (a sub-config may
    describe a tower the weights do not hold). (Widths are checked by building the model on the
    meta device, or by the streaming plan's dry run on the header shapes.)
    """
    top = -1
    for name in index.specs:
        for part in name.split("."):
            if part.isdigit() and len(part) < 10:
                top = max(top, int(part))
    counts = list(_layer_counts(config))
    top_level = [(k, v) for k, v in counts if k in config and config[k] == v]
    for key, value in counts:
        # where the config has a top-level count, a sub-config may describe a tower these
        # weights do not hold (a standalone MoshiModel keeps its depth decoder's config): it is
        # refused here only when absurd; the meta-device size check sees the rest
        lenient = bool(top_level) and (key, value) not in top_level
        if value < 0 or value > (MAX_SUB_LAYERS if lenient else max(top + 1, 1)):
            raise CorruptCheckpointError(
                f"{index.directory / 'config.json'} sets {key} = {value}, but the weights hold "
                f"numbered blocks up to {top + 1}; the config does not belong to these weights — "
                "fix it or restore the missing shards."
            )


def config_size_doubt(
    config: Mapping[str, Any], index: CheckpointIndex
) -> CorruptCheckpointError | None:
    """:func:`check_config_sizes`, but a layer count beyond the numbered tensor names and within
    :data:`MAX_SUB_LAYERS` is *returned*, not raised: ALBERT's layers share one numbered group,
    so such a config may be honest. The caller builds the model (bounded by its meta-size check)
    and raises the returned error only if the model's attention tensors are not all in the
    checkpoint. None when the counts fit; an absurd count is raised at once."""
    try:
        check_config_sizes(config, index)
    except CorruptCheckpointError as exc:
        if any(n > MAX_SUB_LAYERS for _, n in _layer_counts(config)):
            raise
        return exc
    return None
