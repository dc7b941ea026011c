"""Round trip: does streaming build the meta model from a *saved* directory, and plan from it?

``checkpoint_plan_survey.py`` merges the name-based plans with those of the surveyed model itself.
Streaming builds its own model from the directory (``AutoConfig.from_pretrained`` of the saved
config.json, the ``architectures`` class or AutoModel, after the layer-count and size checks of
``meta_plan.build_meta_model``). Here, for each model type at its default size, the config is
saved with ``save_pretrained`` (``architectures``: the surveyed class, as a saved model's config
has it) and a header-only safetensors file with the model's state_dict
names and shapes is written (a sparse file: no data, no memory); then the streaming entry
``stream._chosen_plans`` and the dry run on the header shapes are run on that directory, and the
modules it plans are compared with the live extraction by name. One JSON line per type goes to
``--out``; a summary is printed. (Checkpoint key renamings that ``save_pretrained`` applies for a
few legacy families are not reproduced: the header holds the model's own names.)

    python benchmarks/meta_plan_roundtrip.py --out /tmp/meta_roundtrip.jsonl   # ≈ 8 min, 1 core
    python benchmarks/meta_plan_roundtrip.py umt5 swin                          # some types only
"""

from __future__ import annotations

import argparse
import json
import signal
import struct
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch


class _Timeout(Exception):
    pass


def _write_header_only(model: torch.nn.Module, path: Path) -> None:
    """model.safetensors with the state_dict's names and shapes (bf16) and no data (sparse)."""
    header: dict[str, Any] = {}
    offset = 0
    for name, tensor in model.state_dict().items():
        size = tensor.numel() * 2
        header[name] = {
            "dtype": "BF16",
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        f.truncate(8 + len(blob) + offset)


def roundtrip_one(model_type: str) -> dict[str, Any]:
    import transformers
    from transformers import CONFIG_MAPPING
    from transformers.models.auto import modeling_auto as auto

    from rankdecay.checkpoint import CheckpointIndex, read_model_config
    from rankdecay.heads import attention_heads
    from rankdecay.stream import _chosen_plans, _dry_run

    name = auto.MODEL_MAPPING_NAMES.get(model_type) or auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(
        model_type
    )
    name = name[0] if isinstance(name, (list, tuple)) else name
    config = CONFIG_MAPPING[model_type]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            model = getattr(transformers, name)(config)
        live = [lh.name for lh in attention_heads(model, strict=False)]
    if not live:
        return {"type": model_type, "status": "no-live"}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        directory = Path(tmp)
        config.architectures = [name]  # as model.save_pretrained writes it
        config.save_pretrained(directory)
        _write_header_only(model, directory / "model.safetensors")
        cfg = read_model_config(directory)
        index = CheckpointIndex.open(directory)
        chosen, meta = _chosen_plans(directory, cfg, index)
        kept = [c for c in chosen if not c.dropped]
        misfits: list[str] = []
        planned = _dry_run([c.plan for c in kept], index, misfits)
    names = [c.module or str(c.plan.name) for c in kept if any(p.plan is c.plan for p in planned)]
    rec: dict[str, Any] = {
        "type": model_type,
        "built": meta is not None,
        "live": len(live),
        "streamed": len(names),
        "from_meta": sum(c.from_meta for c in kept),
        "missing": sorted(set(live) - set(names))[:3],
        "extra": sorted(set(names) - set(live))[:3],
        "order": names == [n for n in live if n in set(names)],
    }
    ok = not rec["missing"] and not rec["extra"] and rec["order"]
    rec["status"] = "ok" if ok else ("missing" if rec["missing"] else "differs")
    return rec


def main() -> None:
    from transformers.models.auto import modeling_auto as auto

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("types", nargs="*", help="model types (default: all)")
    parser.add_argument("--out", default="/tmp/meta_roundtrip.jsonl")
    parser.add_argument("--timeout", type=int, default=60, help="seconds per model type")
    args = parser.parse_args()
    types = args.types or sorted(
        set(auto.MODEL_MAPPING_NAMES) | set(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    )

    def alarm(*_: Any) -> None:
        raise _Timeout

    signal.signal(signal.SIGALRM, alarm)
    counts: Counter[str] = Counter()
    built = 0
    with open(args.out, "w", encoding="utf-8") as out:
        for model_type in types:
            signal.alarm(args.timeout)
            try:
                rec = roundtrip_one(model_type)
            except _Timeout:
                rec = {"type": model_type, "status": "error", "error": "timeout"}
            except Exception as exc:  # noqa: BLE001 - a survey reports every failure
                rec = {
                    "type": model_type,
                    "status": "error",
                    "error": f"{type(exc).__name__}: {str(exc)[:200]}",
                }
            finally:
                signal.alarm(0)
            counts[rec["status"]] += 1
            built += bool(rec.get("built"))
            out.write(json.dumps(rec) + "\n")
            out.flush()
            if rec["status"] not in ("ok", "no-live"):
                print(
                    f"{model_type:32s} {rec['status']:8s} built={rec.get('built')} {rec.get('missing') or rec.get('extra') or rec.get('error', '')}"[
                        :160
                    ]
                )
    print(
        f"{len(types)} model types: "
        + ", ".join(f"{k} {v}" for k, v in counts.most_common())
        + f"; meta model built for {built}"
    )


if __name__ == "__main__":
    main()
