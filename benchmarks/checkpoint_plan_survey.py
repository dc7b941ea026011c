"""Survey: the checkpoint plan against the live extraction, at every model type's default size.

For each ``model_type`` of transformers with a base model (``MODEL_MAPPING_NAMES``) or else a
causal-LM model, the model is built from its *default* config on the ``meta`` device (real
widths, depths and per-layer settings; no memory, no weights, no download). Then

- live: ``attention_heads(model, strict=False)`` — the per-module rules (module attributes);
- disk: ``plan_from_checkpoint(config.to_dict(), state_dict names)`` and
  ``layer_heads_from_tensors`` on the meta tensors — what ``analyze(DIR)`` streams;

and every module both find is compared: factor shapes, scale, key/value head index, kind,
rotary and parameter names. Then the same for what streaming uses
(``stream_status``): those plans merged with the plans of the model on the meta device
(:func:`rankdecay.meta_plan.combine`; here the surveyed model itself, its names the checkpoint's).
Categories per model type: ``ok`` (every live module planned, all
equal), ``missing`` (live modules the checkpoint plan does not cover: streaming names them in
an UnrecognizedAttentionWarning), ``split`` (a plan that does not split: streaming falls back to
memory for a type without a table row, else raises CorruptCheckpointError), ``scale`` / ``kv``
(a planned module that differs), ``extra`` (planned but not extracted live), ``no-live`` /
``error`` (nothing to compare: no attention, or the default config does not build — e.g. a
backend package is missing). One JSON line per type goes to ``--out``; a summary is printed.

    python benchmarks/checkpoint_plan_survey.py --out /tmp/plan_survey.jsonl   # ≈ 8 min, 1 core
    python benchmarks/checkpoint_plan_survey.py gemma4_text llama            # some types only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import warnings
from collections import Counter
from typing import Any

import torch


class _Timeout(Exception):
    pass


def _compare(live: dict[str, Any], plans: list[Any], state: dict[str, Any]) -> list[str]:
    from rankdecay.heads import layer_heads_from_tensors

    found: list[str] = []
    planned = {p.name for p in plans}
    if set(live) - planned:
        found.append(f"missing: {sorted(set(live) - planned)[0]} (+{len(set(live) - planned) - 1})")
    if planned - set(live):
        found.append(f"extra: {sorted(planned - set(live))[0]}")
    for plan in plans:
        ref = live.get(plan.name)
        if ref is None:
            continue
        try:
            disk = layer_heads_from_tensors(plan, state.__getitem__)
        except Exception as exc:  # noqa: BLE001 - a survey reports every failure
            found.append(f"split: {str(exc).split('; register')[0]}")
            continue
        shapes = [
            f
            for f in ("W_Q", "W_K", "W_V", "W_O")
            if getattr(disk, f).shape != getattr(ref, f).shape
        ]
        if shapes:
            found.append(f"shape: {plan.name} {shapes}")
        if ref.scale and disk.scale and abs(disk.scale - ref.scale) > 1e-9 * abs(ref.scale):
            found.append(f"scale: {plan.name} {disk.scale:.6g} vs live {ref.scale:.6g}")
        keys = ("kv_head_index", "kind", "rotary", "qk_params", "ov_params")
        if any(getattr(disk, k) != getattr(ref, k) for k in keys):
            found.append(f"kv: {plan.name} head index/kind/rotary/parameters differ")
    return found


def survey_one(model_type: str) -> dict[str, Any]:
    import transformers
    from transformers import CONFIG_MAPPING
    from transformers.models.auto import modeling_auto as auto

    from rankdecay.attention_spec import AttentionPlan
    from rankdecay.heads import attention_heads, plan_from_checkpoint
    from rankdecay.meta_plan import combine, meta_plans

    rec: dict[str, Any] = {"type": model_type}
    name = auto.MODEL_MAPPING_NAMES.get(model_type) or auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(
        model_type
    )
    name = name[0] if isinstance(name, (list, tuple)) else name
    config = CONFIG_MAPPING[model_type]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            model = getattr(transformers, name)(config)
        live = {lh.name: lh for lh in attention_heads(model, strict=False)}
    if not live:
        return {**rec, "status": "no-live"}
    state = model.state_dict()
    plans = plan_from_checkpoint(config.to_dict(), list(state))
    found = _compare(live, plans, state)
    rec.update(live=len(live), planned=len(plans), found=found[:5], status=_status(found))
    # what streaming uses: the name-based plans merged with those of the model on the meta device
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    chosen = combine(plans, meta_plans(model, shapes), shapes)
    streamed = [
        dataclasses.replace(c.plan, name=c.module)
        if c.module and isinstance(c.plan, AttentionPlan)
        else c.plan
        for c in chosen
        if not c.dropped  # a module analyze(model) does not extract: named, not streamed
    ]
    found = _compare(live, streamed, state)
    rec.update(streamed=len(streamed), stream_found=found[:5], stream_status=_status(found))
    rec["from_meta"] = sum(c.from_meta for c in chosen)
    return rec


def _status(found: list[str]) -> str:
    kinds = [f.split(":")[0] for f in found]
    order = ["split", "scale", "shape", "kv", "extra", "missing"]
    return "ok" if not kinds else min(kinds, key=order.index)


def main() -> None:
    from transformers.models.auto import modeling_auto as auto

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("types", nargs="*", help="model types (default: all)")
    parser.add_argument("--out", default="/tmp/plan_survey.jsonl")
    parser.add_argument("--timeout", type=int, default=60, help="seconds per model type")
    args = parser.parse_args()
    types = args.types or sorted(
        set(auto.MODEL_MAPPING_NAMES) | set(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    )

    def alarm(*_: Any) -> None:
        raise _Timeout

    signal.signal(signal.SIGALRM, alarm)
    counts: Counter[str] = Counter()
    stream_counts: Counter[str] = Counter()
    with open(args.out, "w", encoding="utf-8") as out:
        for model_type in types:
            signal.alarm(args.timeout)
            try:
                rec = survey_one(model_type)
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
            stream_counts[rec.get("stream_status", rec["status"])] += 1
            out.write(json.dumps(rec) + "\n")
            out.flush()
            if rec.get("stream_status", rec["status"]) not in ("ok", "no-live", "error"):
                found = (rec.get("stream_found") or rec["found"])[0][:100]
                print(f"{model_type:32s} {rec['status']:8s} → {rec['stream_status']:8s} {found}")
    print(f"{len(types)} model types, name-based plan: " + _summary(counts))
    print(f"{len(types)} model types, streamed (with the meta model): " + _summary(stream_counts))


def _summary(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.most_common())


if __name__ == "__main__":
    main()
