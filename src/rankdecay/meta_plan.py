"""Streaming plans from the model built on the meta device: the live-module rules for a checkpoint.

``analyze(DIR)`` streams a checkpoint by plans of its attention modules. The name-based plan
(:func:`rankdecay.attention_spec.plan_from_checkpoint`) reads them from tensor names and
``config.json``; for a model type without a table row its config reading is a guess (head counts
from generic keys, a scale of 1/√r), and modules whose tensors it does not recognise are missed.
When transformers knows the directory's model type, the model class of ``config.json`` is built
here on the meta device (no memory, no download, no remote code) and its attention modules are
planned by the rules ``analyze(model)`` uses (:func:`rankdecay.heads.attention_modules`: the
module's own head counts and scale). A plan is kept only if every tensor it reads is in the
checkpoint with the shape the meta module has, under the name the model's own loading maps it
from (``base_model_prefix``, transformers' checkpoint renamings — as :func:`load_model` loads).
:func:`combine` then merges these plans with the name-based ones (see there).

Anything that fails here (no transformers, an unknown type, a config that does not build, remote
code) leaves streaming as it was: :func:`build_meta_model` returns None.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from .attention_spec import GENERIC, AttentionPlan, tower_config
from .checkpoint import (
    CheckpointIndex,
    CorruptCheckpointError,
    config_size_doubt,
)
from .heads import UnsupportedModelError, _covers, attention_modules, layer_heads_from_tensors
from .mla import MLAPlan, is_mla_attention, mla_plan_from_module

__all__ = ["Chosen", "MetaPlans", "build_meta_model", "combine", "meta_plans"]

_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------------
# Building the model of config.json (shared with analyze.load_model)
# ---------------------------------------------------------------------------------------------


def _renamings(mapping: Iterable[Any], kind: type) -> list[Any]:
    """The pure renamings (``kind``: transformers' WeightRenaming) of a conversion mapping."""
    return [t for t in mapping if type(t) is kind]


def _hf_renamed(model: nn.Module, state: dict[str, _T]) -> dict[str, _T]:
    """``state`` with transformers' checkpoint key renamings for this model applied.

    transformers ≥ 5 loads some families from their original key names (DeepSeek-V4's
    ``layers.N.attn.wq_a`` → ``layers.N.self_attn.q_a_proj``, ...) and ``save_pretrained`` writes
    them back that way (``transformers.conversion_mapping``). Only the pure renamings are applied;
    converters that merge or split tensors (MoE experts, fused qkv chunks) are not, so a tensor
    that needs one stays unmatched and is reported missing. Unchanged when transformers has no
    mapping (or no such API).
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming

        renames = _renamings(get_model_conversion_mapping(model), WeightRenaming)
    except Exception:  # older transformers, or a model the mapping code does not handle
        return state
    if not renames:
        return state
    out: dict[str, _T] = {}
    for key, value in state.items():
        new = key
        for rename in renames:
            new = rename.rename_source_key(new)[0]
        out[new] = value
    return out


def _match_prefix(model: nn.Module, state: dict[str, _T]) -> dict[str, _T]:
    """Add or strip the model's ``base_model_prefix`` (e.g. "bert.") so checkpoint keys match."""
    keys = set(model.state_dict())
    prefix = getattr(model, "base_model_prefix", "") or ""
    candidates = [state]
    if prefix:
        p = prefix + "."
        candidates.append({k[len(p) :]: v for k, v in state.items() if k.startswith(p)})
        candidates.append({p + k: v for k, v in state.items()})
    return max(candidates, key=lambda sd: len(keys.intersection(sd)))


def _build_hf_model(config: Any, directory: Path) -> nn.Module:
    """The config's first ``architectures`` class transformers has, else ``AutoModel`` (no remote code)."""
    import transformers
    from transformers import AutoModel

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, str(arch), None)
        if isinstance(cls, type) and hasattr(cls, "_from_config"):
            try:
                return cls._from_config(config)
            except Exception:
                pass
    try:
        return AutoModel.from_config(config, trust_remote_code=False)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(
            f"transformers cannot build the architecture of {directory} "
            f"(model_type {getattr(config, 'model_type', '?')!r}: {reason[:120]}); "
            "load the model yourself and pass the nn.Module to rankdecay.analyze."
        ) from None


def build_meta_model(
    directory: Path, config: Mapping[str, Any], index: CheckpointIndex
) -> tuple[nn.Module, bool] | None:
    """The model of ``directory``'s config.json built on the meta device (nothing allocated, no
    download: ``local_files_only``, no pretrained backbone; no remote code: a config with an
    ``auto_map`` is not built), the class :func:`rankdecay.analyze.load_model` builds, and whether
    the config's layer counts fit the numbered tensor names (``checkpoint.check_config_sizes``;
    ALBERT's one shared layer group, for one, does not: the caller then trusts the model only if
    the checkpoint holds every tensor its attention reads). None when transformers is missing or
    cannot build it, or when the config does not belong to the weights ``index`` holds: a layer
    count beyond :data:`~rankdecay.checkpoint.MAX_SUB_LAYERS` (refused before building, so a lying
    config costs no time) or more than twice the elements; streaming's own checks then name it."""
    if "auto_map" in config:
        return None
    try:
        checked = config_size_doubt(config, index) is None
    except CorruptCheckpointError:  # an absurd layer count: not built
        return None
    try:
        import transformers
        from transformers import AutoConfig
    except ImportError:
        return None
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = AutoConfig.from_pretrained(
                str(directory), local_files_only=True, trust_remote_code=False
            )
            if getattr(cfg, "use_pretrained_backbone", False):  # weights only, not the layout
                cfg.use_pretrained_backbone = False
            with torch.device("meta"):
                model = _build_hf_model(cfg, directory)
        numel = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
        return (model, checked) if numel <= 2 * index.total_numel + (1 << 24) else None
    except Exception:  # an unknown type, a config that fails: streaming as before
        return None
    finally:
        transformers.logging.set_verbosity(verbosity)


# ---------------------------------------------------------------------------------------------
# Plans of the meta model's attention modules, under the checkpoint's tensor names
# ---------------------------------------------------------------------------------------------

Plan = AttentionPlan | MLAPlan


@dataclass
class MetaPlans:
    """The plans of a model built on the meta device, checked against a checkpoint.

    ``plans``: (plan with the checkpoint's tensor names, the module's name in the model), in the
    model's registration order; ``order``: module name → position in ``named_modules()``;
    ``to_model``: checkpoint tensor name → the model's name for it; ``unplanned``: modules a
    rule of the in-memory scan claims that no plan here reads (a protocol, DeepSeek-V4, a plan
    whose tensors are absent or of other shapes); ``tied``: modules whose plan reads tensors of
    a tied twin (the checkpoint holds them once, under the twin's name); ``claimed``: every
    module a rule claims; ``not_extracted``: those the in-memory scan fails on too; ``absent``:
    those whose plan reads a tensor the checkpoint does not hold (also in ``unplanned``)."""

    plans: list[tuple[Plan, str]] = field(default_factory=list)
    order: dict[str, int] = field(default_factory=dict)
    to_model: dict[str, str] = field(default_factory=dict)
    unplanned: list[str] = field(default_factory=list)
    tied: set[str] = field(default_factory=set)
    claimed: list[str] = field(default_factory=list)
    not_extracted: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)

    def extracts(self, module: str | None) -> bool:
        """Whether ``analyze(model)`` would extract ``module`` (a name-based plan's module): not
        when a rule refuses it (MiniMax's lightning attention, a gated delta net: no softmax
        q·kᵀ) or no rule claims it, nor anything around it (BigBird's block-sparse attention).
        True for a module the model does not name (nothing known)."""
        if module is None or module not in self.order:
            return True
        if module in self.not_extracted:
            return False
        return _covers(self.claimed, module)

    def module_of(self, plan: Plan) -> str | None:
        """The model's module name for a checkpoint plan (by its output projection), or None."""
        ckpt_o = _o_tensor(plan)
        model_o = self.to_model.get(ckpt_o)
        rel = ckpt_o[len(plan.name) + 1 :] if ckpt_o.startswith(plan.name + ".") else None
        if model_o is None or not rel or not model_o.endswith("." + rel):
            return None
        module = model_o[: -len(rel) - 1]
        return module if module in self.order else None


def _o_tensor(plan: Plan) -> str:
    return plan.weight("o_proj") if isinstance(plan, MLAPlan) else plan.o


def _checkpoint_keys(model: nn.Module, names: Iterable[str]) -> dict[str, str]:
    """The model's tensor name → the checkpoint's, as :func:`load_model` matches them (the
    renamed or plain keys, with the ``base_model_prefix`` added or stripped, whichever matches
    more of the model's keys)."""
    plain = {n: n for n in names}
    own = model.state_dict().keys()
    candidates = (_match_prefix(model, plain), _match_prefix(model, _hf_renamed(model, plain)))
    return max(candidates, key=lambda sd: len(own & sd.keys()))


def _module_plan(model: nn.Module, name: str, module: nn.Module, rule: str, payload: Any) -> Any:
    """The plan of one claimed module with the model's tensor names, or None (not simple)."""
    if rule in ("mha", "plan"):
        return payload
    if rule == "rule" and payload[0] is is_mla_attention:
        return mla_plan_from_module(name, module, tower_config(model, name), 0)[0]
    return None


def _to_checkpoint(
    plan: Plan, used: Sequence[str], keys: Mapping[str, str], shapes: Mapping[str, Any]
) -> Plan | None:
    """``plan`` with the checkpoint's tensor names (its ``name``: the checkpoint's prefix of the
    module), or None when a tensor it reads is absent or of another shape than the model's."""
    for n in used:
        ckpt = keys.get(n)
        if ckpt is None or ckpt not in shapes:
            return None
    o = _o_tensor(plan)
    rel = o[len(plan.name) + 1 :]
    ckpt_o = keys[o]
    prefix = ckpt_o[: -len(rel) - 1] if ckpt_o.endswith("." + rel) else None
    if isinstance(plan, MLAPlan):  # names derive from the prefix: every one must follow it
        if prefix is None or any(keys[n] != prefix + n[len(plan.name) :] for n in used):
            return None
        return dataclasses.replace(plan, name=prefix)
    fields = {f: keys.get(getattr(plan, f)) for f in ("q", "k", "v", "o", "fused")}
    renamed = {f: v for f, v in fields.items() if getattr(plan, f) is not None}
    return dataclasses.replace(plan, name=prefix or plan.name, **renamed)


def meta_plans(model: nn.Module, shapes: Mapping[str, Sequence[int]]) -> MetaPlans:
    """The plans of ``model``'s attention modules (built on the meta device) for a checkpoint
    whose tensors have ``shapes`` (name → shape): each dry-run on the model's meta tensors, kept
    when every tensor it reads is in the checkpoint with the model's shape (renamed to the
    checkpoint's names), else the module is listed in ``unplanned``."""
    out = MetaPlans()
    out.order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    keys = _checkpoint_keys(model, shapes)
    out.to_model = {ckpt: own for own, ckpt in keys.items()}
    tensors = _tensors_with_twins(model, keys, shapes)
    for name, module, rule, payload in attention_modules(model, errors=(Exception,)):
        out.claimed.append(name)
        if rule == "failed":  # a rule's own refusal fails in memory too: not extracted there
            is_own = isinstance(payload, UnsupportedModelError)
            (out.not_extracted if is_own else out.unplanned).append(name)
            continue
        used: list[str] = []

        def get(n: str, used: list[str] = used) -> Tensor:
            used.append(n)
            return tensors[n]

        try:
            plan = _module_plan(model, name, module, rule, payload)
            if plan is not None:
                layer_heads_from_tensors(plan, get, materialize=False)
        except UnsupportedModelError:  # the module's own tensors do not split: so in memory
            out.not_extracted.append(name)
            continue
        except Exception:  # a rule that needs data the meta device does not hold
            plan = None
        if plan is not None and any(keys.get(n) not in shapes for n in used):
            out.absent.append(name)
        wrong = plan is not None and any(
            tuple(shapes.get(keys.get(n, ""), ())) != tuple(tensors[n].shape) for n in used
        )
        ckpt = _to_checkpoint(plan, used, keys, shapes) if plan is not None and not wrong else None
        if ckpt is None:
            out.unplanned.append(name)
            continue
        out.plans.append((ckpt, name))
        if any(out.to_model.get(keys[n]) != n for n in used):  # reads a tied twin's tensors
            out.tied.add(name)
    return out


def _tensors_with_twins(
    model: nn.Module, keys: dict[str, str], shapes: Mapping[str, Sequence[int]]
) -> dict[str, Tensor]:
    """The model's parameters and buffers by every name they have (a module shared or tied
    under several names: Zamba's shared transformer block); a name the checkpoint does not hold
    is mapped in ``keys`` to the checkpoint name of a tied twin (``save_pretrained`` keeps one
    copy of tied tensors, and loading ties them again)."""
    named = [
        *model.named_buffers(remove_duplicate=False),
        *model.named_parameters(remove_duplicate=False),
    ]
    twins: dict[int, list[str]] = {}
    for name, tensor in named:
        twins.setdefault(id(tensor), []).append(name)
    for group in twins.values():
        held = [keys[n] for n in group if keys.get(n) in shapes]
        for n in group if held else ():
            if keys.get(n) not in shapes:
                keys[n] = held[0]
    return dict(named)


# ---------------------------------------------------------------------------------------------
# Merging with the name-based plans
# ---------------------------------------------------------------------------------------------


def _splits(plan: Plan, shapes: Mapping[str, Sequence[int]]) -> bool:
    """The plan splits meta tensors of the checkpoint's shapes (no data read)."""

    def get(name: str) -> Tensor:
        return torch.empty(tuple(shapes[name]), device="meta")

    try:
        layer_heads_from_tensors(plan, get, materialize=False)
    except Exception:
        return False
    return True


def _reads(plan: Plan) -> set[str]:
    """The tensors that identify a plan's module: its output projection and query (or fused)."""
    if isinstance(plan, MLAPlan):
        return {_o_tensor(plan), plan.q_params[-1]}
    return {n for n in (plan.o, plan.q, plan.fused) if n}


@dataclass
class Chosen:
    """A plan streaming uses: ``module``, the model's name for its module (None: not known);
    ``from_meta``: planned from the model built on the meta device (its shapes already checked
    against the checkpoint)."""

    plan: Plan
    module: str | None
    from_meta: bool
    dropped: bool = False  # a module analyze(model) does not extract: named, not streamed


def combine(
    named: Sequence[Plan], meta: MetaPlans, shapes: Mapping[str, Sequence[int]]
) -> list[Chosen]:
    """The plans streaming uses: the name-based ones merged with the meta model's.

    A name-based plan is kept for a family with a table row (tested there: quantized and FP8
    checkpoints, MLA chains, KV sharing), unless it does not split the checkpoint's tensors and
    the meta plan of its module does; for a model type without a row (generic keys, a guessed
    1/√r) the meta plan of its module replaces it, since that reads the module's own head counts
    and scale. Meta plans of modules no name-based plan reads (today's "missing") are added. A
    name-based plan of a module ``analyze(model)`` does not extract (:meth:`MetaPlans.extracts`)
    is marked ``dropped``: the caller names it instead of streaming it."""
    by_o: dict[str, list[tuple[Plan, str]]] = {}
    for p, m in meta.plans:
        by_o.setdefault(_o_tensor(p), []).append((p, m))
    seen = {n for p in named for n in _reads(p)}
    out: list[Chosen] = []
    taken: set[str] = set()
    for plan in named:
        module = meta.module_of(plan)
        if not meta.extracts(module):  # analyze(model) leaves it out (and names it): so here
            out.append(Chosen(plan, module, False, dropped=True))
            taken.add(module or "")
            continue
        twins = by_o.get(_o_tensor(plan), [])
        own = [pm for pm in twins if pm[1] == module] or (twins[:1] if module is None else [])
        if own and (plan.family == GENERIC.family or not _splits(plan, shapes)):
            out.append(Chosen(own[0][0], own[0][1], True))
        else:
            out.append(Chosen(plan, module, False))
        taken.add(out[-1].module or "")
    for plan, module in meta.plans:
        if module in taken or (_reads(plan) & seen and module not in meta.tied):
            continue
        out.append(Chosen(plan, module, True))
    return out
