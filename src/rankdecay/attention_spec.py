"""What an attention module looks like, as data: names, split specs, head counts, scale, flags.

One description serves two sources of weights:

- a live ``nn.Module`` (:func:`plan_from_module`), reading head counts from the module's
  attributes or its tower's config, and
- the tensor names of a checkpoint on disk plus its ``config.json`` (:func:`plan_from_checkpoint`),

and both produce :class:`AttentionPlan` s whose tensors :func:`split_heads` cuts into per-head
factors with the same rules (``rankdecay.heads.layer_heads_from_tensors`` wraps it).

Projections are found by a small name table (:data:`Q_NAMES`, :data:`K_NAMES`, :data:`V_NAMES`,
:data:`O_NAMES`, :data:`FUSED_NAMES`). A fused projection's output rows are described by a split
spec (:data:`LAYOUTS`), e.g. ``[3, H, r]``: rows ``(i·H + h)·r + j`` hold part i ∈ (q, k, v),
head h, coordinate j — with grouped-query widths ``[q: H·r | k: H_kv·r | v: H_kv·r]``. Every
spec is turned into row indices (:func:`fused_rows`) and the per-head factor is a gather of those
rows, so the factors stay differentiable views of the parameters. Rows whose tensors are not
nn.Linear weights (``Architecture.stored``: SqueezeBERT's grouped 1×1 convolutions, XLNet's raw
(d, H, r) parameters) are planned by :func:`stored_plan` and turned into nn.Linear matrices by
:func:`stored_matrix` (:data:`STORED`) before the same split.

Score scale rules (:data:`SCALE_RULES`) and flags (rotary, partial rotary, QK-norm, soft-cap,
relative position bias, sliding window, ALiBi, cross-attention) come from the module or config.
The families that have been checked against their models' own forward passes are listed in
:data:`ARCHITECTURES` (rendered as the table in docs/metrics.md by :func:`architectures_table`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .errors import RankdecayValueError
from .layer_heads import select_heads

__all__ = [
    "ARCHITECTURES",
    "FUSED_NAMES",
    "K_NAMES",
    "LAYOUTS",
    "O_NAMES",
    "Q_NAMES",
    "SCALE_RULES",
    "STORED",
    "V_NAMES",
    "Architecture",
    "AttentionPlan",
    "architectures_table",
    "fused_rows",
    "plan_from_checkpoint",
    "named_plan",
    "plan_from_module",
    "split_heads",
    "split_heads_v",
    "stored_matrix",
    "stored_plan",
]

# ------------------------------------------------------------------------------- name tables

#: query projection names, first match wins ("self.query": BERT's <attention>.self.query).
Q_NAMES = ("q_proj", "query", "q", "q_lin", "query_proj", "Wq", "wq", "to_q", "q_attn", "linear_q")
K_NAMES = ("k_proj", "key", "k", "k_lin", "key_proj", "Wk", "wk", "to_k", "linear_k")
V_NAMES = ("v_proj", "value", "v", "v_lin", "value_proj", "Wv", "wv", "to_v", "linear_v")
#: output projection names (relative to the attention module; "output.dense" is BERT's).
O_NAMES = (
    "o_proj",
    "out_proj",
    "o",
    "out_lin",
    "dense",
    "c_proj",
    "proj",
    "Wo",
    "wo",
    "to_out.0",
    "out",
    "output.dense",
    "linear_out",  # conformers (Wav2Vec2-Conformer/-BERT, FastSpeech2-Conformer)
    "projection",  # BLIP / BLIP-2 / InstructBLIP vision
    "projection_layer",  # InternVL vision
    "output",  # Pix2Struct / Kosmos-2.5 vision (after "output.dense": BERT's output is a block)
)
#: fused q,k,v projections and the split spec used when the family does not say otherwise
#: (``query_key_value`` has no default: GPT-NeoX/BLOOM and Falcon lay it out differently).
#: the fused [3, H, r] projection of torch.nn.MultiheadAttention, stored as ``P.in_proj_weight``
MHA_FUSED = "in_proj_weight"
FUSED_NAMES: dict[str, str | None] = {
    "qkv": "qkv",
    "Wqkv": "qkv",
    "qkv_proj": "qkv",
    "c_attn": "qkv",
    "att_proj": "qkv",  # Bark
    "query_key_value": None,
}
#: data-dependent gates on the attention output (AFMoE, Beam, Laguna, MuseSpark): flag only.
GATE_NAMES = ("gate_proj", "g_proj", "o_gate")
#: attribute names (in the parent) of cross-attention modules.
CROSS_NAMES = (
    "encoder_attn",
    "EncDecAttention",
    "crossattention",
    "cross_attn",
    "cross_attention",
    "multihead_attn",
    "visual_attention",  # LXMERT's cross-modal layer (language ↔ vision)
)

#: split specs of a fused projection's output rows (H query heads, H_kv key/value heads, r).
LAYOUTS: dict[str, str] = {
    "separate": "q, k, v, o each its own matrix; rows [H, r] (k, v: [H_kv, r])",
    "qkv": "[3, H, r] — rows [q: H·r | k: H_kv·r | v: H_kv·r] (GQA/MQA widths allowed)",
    "head_qkv": "[H, 3, r] — per head its q, k, v rows (H_kv = H)",
    "grouped": "[H_kv, g+2, r] — per key/value head its g = H/H_kv query heads, then k, then v",
    "codegen": "[4, 3, H/4, r] — 4 model-parallel blocks, each [q | v | k] of H/4 heads",
    "kv": "[2, H_kv, r] — fused k, v (cross-attention; q separate)",
    "moa": "mixture of attention heads: q [E, H_kv·r] and o [E, ·, H_kv·r] per expert "
    "(`experts.input_linear`, `experts.output_linear`), `kv_proj` [2, H_kv, r] shared; "
    "head e·H_kv + j = expert e on key/value head j",
}
#: JetMoE's per-expert projections (layout "moa"), relative to the attention module.
MOA_NAMES = {"q": "experts.input_linear.weight", "o": "experts.output_linear.weight"}


def fused_rows(layout: str, n_heads: int, n_kv_heads: int, head_dim: int) -> dict[str, Tensor]:
    """Row indices of q, k, v inside a fused projection's output: part → (H_part, r) int64.

    Head h's coordinate j of part p is output row ``rows[p][h, j]``; see :data:`LAYOUTS`.
    """
    H, Hkv, r = n_heads, n_kv_heads, head_dim
    if layout == "qkv":
        return {
            "q": torch.arange(H * r).view(H, r),
            "k": H * r + torch.arange(Hkv * r).view(Hkv, r),
            "v": (H + Hkv) * r + torch.arange(Hkv * r).view(Hkv, r),
        }
    if layout == "kv":
        return {
            "k": torch.arange(Hkv * r).view(Hkv, r),
            "v": Hkv * r + torch.arange(Hkv * r).view(Hkv, r),
        }
    if layout == "head_qkv":
        idx = torch.arange(3 * H * r).view(H, 3, r)
        return {"q": idx[:, 0], "k": idx[:, 1], "v": idx[:, 2]}
    if layout == "grouped":
        g = H // Hkv
        idx = torch.arange((H + 2 * Hkv) * r).view(Hkv, g + 2, r)
        return {"q": idx[:, :g].reshape(H, r), "k": idx[:, g], "v": idx[:, g + 1]}
    if layout == "codegen":
        blocks = 4
        idx = torch.arange(3 * H * r).view(blocks, 3, H // blocks, r)
        return {
            "q": idx[:, 0].reshape(H, r),
            "v": idx[:, 1].reshape(H, r),
            "k": idx[:, 2].reshape(H, r),
        }
    raise RankdecayValueError(
        f"unknown fused layout {layout!r}; choose one of {', '.join(LAYOUTS)}."
    )


def _fused_width(layout: str, H: int, Hkv: int, r: int) -> int:
    return {"kv": 2 * Hkv * r, "qkv": (H + 2 * Hkv) * r, "grouped": (H + 2 * Hkv) * r}.get(
        layout, 3 * H * r
    )


# ------------------------------------------------------------------------------- config access


def cfg_get(config: object, *keys: str) -> Any:
    """The first of ``keys`` set (not None) on a config object or mapping, else None."""
    if config is None:
        return None
    for key in keys:
        value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
        if value is not None:
            return value
    return None


def _pos_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# ------------------------------------------------------------------------------- scale rules

ScaleRule = Callable[[object, int, int], float]  # (config, head_dim, block index) -> scale


def _scale_inv_sqrt(config: object, r: int, block: int) -> float:
    return r**-0.5


def _scale_one(config: object, r: int, block: int) -> float:
    return 1.0


def _pos_att_types(config: object) -> list[str]:
    """DeBERTa's ``pos_att_type``: a list, or in a hub ``config.json`` a string "c2p|p2c"
    (which the config class splits; a raw checkpoint config does not)."""
    pos = cfg_get(config, "pos_att_type") or []
    if isinstance(pos, str):
        return [p.strip() for p in pos.lower().split("|") if p.strip()]
    return [str(p) for p in pos]


def _scale_deberta(config: object, r: int, block: int) -> float:
    pos = _pos_att_types(config)
    factor = 1 + sum(1 for p in ("c2p", "p2c") if p in pos)
    return (r * factor) ** -0.5


def _scale_deberta_v1(config: object, r: int, block: int) -> float:
    return (r * (1 + len(_pos_att_types(config)))) ** -0.5


def _scale_query_pre_attn(config: object, r: int, block: int) -> float:
    scalar = cfg_get(config, "query_pre_attn_scalar")
    return float(scalar) ** -0.5 if scalar else r**-0.5


def _scale_attention_multiplier(config: object, r: int, block: int) -> float:
    value = cfg_get(config, "attention_multiplier")
    return float(value) if isinstance(value, (int, float)) else r**-0.5


def _scale_qk_each(config: object, r: int, block: int) -> float:
    return r**-0.5  # q and k each multiplied by r^(-1/4) (the module's `scaling`)


def _scale_gemma4_audio(config: object, r: int, block: int) -> float:
    # Gemma4AudioAttention: q × r^(-1/2)/ln 2 (q_scale), k × ln(1+e)/ln 2 (k_scale); the learned
    # per-dimension factor softplus(per_dim_scale) on q is not a scalar (flag per_dim_scale)
    return (r**-0.5 / math.log(2)) * (math.log(1 + math.e) / math.log(2))  # the module's order


def _scale_gemma3n_audio(config: object, r: int, block: int) -> float:
    # Gemma3nAudioAttention: q × r^(-1/2)/softplus(0) = r^(-1/2)/ln 2 (q_scale), k unscaled
    return r**-0.5 / math.log(2)


def _scale_gpt2(config: object, r: int, block: int) -> float:
    scale = r**-0.5 if cfg_get(config, "scale_attn_weights") in (None, True) else 1.0
    if cfg_get(config, "scale_attn_by_inverse_layer_idx"):
        scale /= float(block + 1)
    return scale


def _scale_mla(config: object, r: int, block: int) -> float:
    from .mla import mla_scale  # r = n + p: the non-rotary and rotary dims of a query head

    return mla_scale(config, r)


#: score scale rules: name → (config, head_dim r, block index) ↦ scale (scores = scale·q·kᵀ).
SCALE_RULES: dict[str, tuple[str, ScaleRule]] = {
    "inv_sqrt": ("1/√r", _scale_inv_sqrt),
    "one": ("1 (no scaling)", _scale_one),
    "deberta": ("1/√(r·(1 + #{c2p, p2c}))", _scale_deberta),
    "deberta_v1": ("1/√(r·(1 + len(pos_att_type)))", _scale_deberta_v1),
    "query_pre_attn": ("1/√query_pre_attn_scalar", _scale_query_pre_attn),
    "gpt2": ("1/√r (÷ (layer+1) with scale_attn_by_inverse_layer_idx)", _scale_gpt2),
    "attention_multiplier": ("attention_multiplier (config)", _scale_attention_multiplier),
    "qk_each": ("1/√r (q and k each × r^(-1/4))", _scale_qk_each),
    "gemma4_audio": (
        "1/√r · ln(1+e)/(ln 2)² (q_scale·k_scale); q also × softplus(per_dim_scale) per dim "
        "(flag, not folded)",
        _scale_gemma4_audio,
    ),
    "gemma3n_audio": (
        "1/√r · 1/ln 2 (q_scale); q also × softplus(per_dim_scale) per dim (flag, not folded)",
        _scale_gemma3n_audio,
    ),
    "mla": ("1/√(n + p), × mscale² with YaRN mscale_all_dim", _scale_mla),
}

#: module attributes holding the model's own scale (live modules: preferred over the rule).
_SCALE_ATTRS = ("scaling", "scale", "inv_norm_factor", "softmax_scale")

# ------------------------------------------------------------------------------- families


@dataclass(frozen=True)
class Architecture:
    """One row of the supported-architectures table.

    ``classes``: attention-module class names it applies to (live models); ``model_types``:
    ``config.json`` ``model_type`` values (checkpoints on disk). ``layout``/``fused`` say how
    q, k, v are stored; ``scale`` names a :data:`SCALE_RULES` entry; ``flags`` and ``tested_by``
    are documentation (``tested_by``: the case ids of tests/test_architectures.py).
    ``q_gate``: the query projection's rows are [H, 2, r], each head's query followed by its
    output gate (gated attention: context_h ← context_h·sigmoid(gate_h) before W_O).
    ``o_parts``: the out-projection reads [o_parts, H, r] (ConvBERT: the H attention heads'
    contexts, then H span-convolution heads' outputs); W_O^h is head h of part 0.
    ``v_head``: the value heads have their own size (config ``v_head_dim``) and the key/value
    head count may change per layer (read from the key projection's width).
    ``o_names``: the out-projection's names for these classes, tried before :data:`O_NAMES`
    (Gemma-4 audio: ``post``, a name too generic for the shared table).
    ``value_norm``: values normalised without a tensor on disk; ``linear_wrapped``: projections
    stored as ``P.<proj>.linear.weight`` (see the fields).
    """

    family: str
    classes: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    layout: str = "separate"
    fused: str | None = None
    in_out: bool = False
    scale: str = "inv_sqrt"
    flags: str = ""
    tested_by: tuple[str, ...] = ()
    q_gate: bool = False
    o_parts: int = 1
    v_head: bool = False
    o_names: tuple[str, ...] = ()
    #: the module RMS-normalises its values with no gain (Gemma-4 vision's ``v_norm``): no tensor
    #: on disk tells it, so a checkpoint plan sets flag ``value_norm`` from the row
    value_norm: bool = False
    #: its projections sit behind a :data:`LINEAR_WRAPPERS` child (Gemma4ClippableLinear): a
    #: checkpoint plan reads ``P.<proj>.linear.weight`` for this row's model types only
    linear_wrapped: bool = False
    #: how q/k/v/o are stored when they are not nn.Linear weights (:data:`STORED`): "conv1x1"
    #: (SqueezeBERT's grouped 1×1 convolutions), "d_h_r" (XLNet's raw (d, H, r) parameters); such
    #: a row has its own plan builder (:func:`stored_plan`), live and from a checkpoint alike
    stored: str = "linear"
    #: the q, k, v, o nn.Linear children of these classes when the shared name tables do not
    #: hold them (Funnel's q_head, k_head, v_head, post_proj; CPM-Ant's project_q, project_k,
    #: project_v, attention_out); such a row is planned by :func:`named_plan`, live and from a
    #: checkpoint alike
    names: tuple[str, ...] = ()


#: Funnel's and CPM-Ant's q, k, v, o children (``Architecture.names``)
FUNNEL_NAMES = ("q_head", "k_head", "v_head", "post_proj")
CPMANT_NAMES = ("project_q", "project_k", "project_v", "attention_out")

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        "Llama / Mistral / Qwen2 (GQA, MQA)",
        ("LlamaAttention", "MistralAttention", "Qwen2Attention"),
        ("llama", "mistral", "qwen2"),
        flags="rotary, sliding window (Mistral)",
        tested_by=("llama_gqa", "mistral_mqa", "qwen2_gqa"),
    ),
    Architecture(
        "Gemma-2 / Gemma-3",
        ("Gemma2Attention", "Gemma3Attention"),
        ("gemma2", "gemma3", "gemma3_text"),
        scale="query_pre_attn",
        flags="rotary, logit soft-cap, sliding window; QK-norm per head (Gemma-3)",
        tested_by=("gemma2", "gemma3"),
    ),
    Architecture(
        "Gemma-4 text",
        ("Gemma4TextAttention",),
        ("gemma4_text",),
        scale="one",
        flags="rotary (partial on full-attention layers), QK-norm per head, value norm "
        "(value_norm), sliding window; KV-shared layers (q and o only: W_K, W_V of the layer "
        "they read, kv_shared), values from the key projection (values_from_keys)",
        tested_by=("gemma4_text", "gemma4_text_kv_shared"),
        value_norm=True,
    ),
    Architecture(
        "Gemma-3n text",
        ("Gemma3nTextAttention",),
        ("gemma3n_text",),
        scale="one",
        flags="rotary, QK-norm per head, value norm (value_norm), sliding window; KV-shared "
        "layers (q and o only: W_K, W_V of the layer they read, kv_shared)",
        tested_by=("gemma3n_text",),
        value_norm=True,
    ),
    Architecture(
        "Qwen3 / Qwen3-MoE",
        ("Qwen3Attention", "Qwen3MoeAttention"),
        ("qwen3", "qwen3_moe"),
        flags="rotary, QK-norm per head",
        tested_by=("qwen3", "qwen3_moe"),
    ),
    Architecture(
        "Qwen3-Next / Qwen3.5 (gated attention)",
        ("Qwen3NextAttention", "Qwen3_5Attention", "Qwen3_5MoeAttention"),
        ("qwen3_next", "qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text"),
        flags="rotary (partial), QK-norm per head, output gate: q_proj rows [H, 2, r]",
        tested_by=("qwen3_next", "qwen3_5_text"),
        q_gate=True,
    ),
    Architecture(
        "OLMo-2",
        ("Olmo2Attention",),
        ("olmo2",),
        flags="rotary, QK-norm full width (H·r)",
        tested_by=("olmo2",),
    ),
    Architecture(
        "Mixtral / Qwen2-MoE / Phi-3.5-MoE (MoE MLPs)",
        ("MixtralAttention", "Qwen2MoeAttention", "PhimoeAttention"),
        ("mixtral", "qwen2_moe", "phimoe"),
        flags="rotary, sliding window",
        tested_by=("mixtral", "qwen2_moe", "phimoe"),
    ),
    Architecture(
        "StableLM",
        ("StableLmAttention",),
        ("stablelm",),
        flags="rotary (partial: partial_rotary_factor), QK-norm per head (qk_layernorm)",
        tested_by=("stablelm",),
    ),
    Architecture(
        "Cohere (Command-R)",
        ("CohereAttention",),
        ("cohere",),
        flags="rotary (interleaved), QK-norm per head (use_qk_norm)",
        tested_by=("cohere",),
    ),
    Architecture(
        "Granite / Granite-MoE",
        ("GraniteAttention", "GraniteMoeAttention"),
        ("granite", "granitemoe"),
        scale="attention_multiplier",
        flags="rotary",
        tested_by=("granite",),
    ),
    Architecture(
        "GPT-OSS",
        ("GptOssAttention",),
        ("gpt_oss",),
        flags="rotary (YaRN: cos/sin × m, m² in the scale), attention sinks, sliding window",
        tested_by=("gpt_oss",),
    ),
    Architecture(
        "Llama-4 (text)",
        ("Llama4TextAttention",),
        ("llama4_text", "llama4"),
        flags="rotary on RoPE layers, none on NoPE layers; weightless L2 QK-norm (RoPE layers)",
        tested_by=("llama4_text",),
    ),
    Architecture(
        "GPT-2",
        ("GPT2Attention",),
        ("gpt2",),
        "qkv",
        "c_attn",
        in_out=True,
        scale="gpt2",
        flags="cross-attention (q_attn + fused [k | v] c_attn)",
        tested_by=("gpt2", "vision_encoder_decoder"),
    ),
    Architecture(
        "GPT-BigCode (MQA)",
        ("GPTBigCodeAttention",),
        ("gpt_bigcode",),
        "qkv",
        "c_attn",
        tested_by=("gpt_bigcode",),
    ),
    Architecture(
        "nanoGPT CausalSelfAttention",
        ("CausalSelfAttention",),
        ("nanogpt",),
        "qkv",
        "c_attn",
        tested_by=("nanogpt",),
    ),
    Architecture(
        "GPT-NeoX / Pythia",
        ("GPTNeoXAttention",),
        ("gpt_neox",),
        "head_qkv",
        "query_key_value",
        flags="rotary (partial: rotary_pct)",
        tested_by=("gpt_neox",),
    ),
    Architecture(
        "BLOOM",
        ("BloomAttention",),
        ("bloom",),
        "head_qkv",
        "query_key_value",
        flags="ALiBi",
        tested_by=("bloom",),
    ),
    Architecture(
        "Falcon (new decoder architecture)",
        ("FalconAttention",),
        ("falcon",),
        "grouped",
        "query_key_value",
        flags="rotary or ALiBi; [H, 3, r] without GQA, [q | k | v] with multi_query",
        tested_by=("falcon", "falcon_mq", "falcon_head_qkv"),
    ),
    Architecture(
        "CodeGen",
        ("CodeGenAttention",),
        ("codegen",),
        "codegen",
        "qkv_proj",
        flags="rotary (partial: rotary_dim)",
        tested_by=("codegen",),
    ),
    Architecture(
        "Phi-3",
        ("Phi3Attention",),
        ("phi3",),
        "qkv",
        "qkv_proj",
        flags="rotary (LongRoPE: cos/sin × m, m² in the scale)",
        tested_by=("phi3", "phi3_longrope"),
    ),
    Architecture(
        "Phi",
        ("PhiAttention",),
        ("phi",),
        flags="rotary (partial), QK-norm (qk_layernorm)",
        tested_by=("phi",),
    ),
    Architecture(
        "GPT-J",
        ("GPTJAttention",),
        ("gptj",),
        flags="rotary (partial: rotary_dim)",
        tested_by=("gptj",),
    ),
    Architecture(
        "Persimmon / Fuyu",
        ("PersimmonAttention",),
        ("persimmon", "fuyu"),
        "head_qkv",
        "query_key_value",
        flags="rotary (partial), QK-norm per head (qk_layernorm)",
        tested_by=("persimmon",),
    ),
    Architecture(
        "GPT-NeoX-Japanese",
        ("GPTNeoXJapaneseAttention",),
        ("gpt_neox_japanese",),
        "head_qkv",
        "query_key_value",
        flags="rotary (partial)",
        tested_by=("gpt_neox_japanese",),
    ),
    Architecture(
        "OpenAI GPT (live: by the name table; class Attention is shared with timm)",
        (),
        ("openai-gpt",),
        "qkv",
        "c_attn",
        in_out=True,
        tested_by=("openai_gpt",),
    ),
    Architecture(
        "Bark",
        ("BarkSelfAttention",),
        ("bark",),
        "qkv",
        "att_proj",
        tested_by=("bark_semantic",),
    ),
    Architecture(
        "Pix2Struct (vision, text)",
        ("Pix2StructVisionAttention", "Pix2StructTextAttention"),
        ("pix2struct", "pix2struct_vision_model", "pix2struct_text_model"),
        scale="one",
        flags="out-projection `output`; relative position bias (text)",
        tested_by=("pix2struct_vision",),
    ),
    Architecture(
        "GPT-Neo",
        ("GPTNeoSelfAttention",),
        ("gpt_neo",),
        scale="one",
        flags="sliding window (local layers: window_size)",
        tested_by=("gpt_neo",),
    ),
    Architecture(
        "OpenAI privacy filter",
        ("OpenAIPrivacyFilterAttention",),
        ("openai_privacy_filter",),
        scale="qk_each",
        flags="rotary (YaRN), attention sinks, bidirectional sliding window",
        tested_by=("openai_privacy_filter",),
    ),
    Architecture("OPT", ("OPTAttention",), ("opt",), tested_by=("opt",)),
    Architecture(
        "BART",
        ("BartAttention",),
        ("bart",),
        flags="cross-attention (decoder)",
        tested_by=("bart", "bart_uneven_heads"),
    ),
    Architecture(
        "Whisper",
        ("WhisperAttention",),
        ("whisper",),
        flags="cross-attention (decoder)",
        tested_by=("whisper",),
    ),
    Architecture(
        "T5",
        ("T5Attention",),
        ("t5", "mt5"),
        scale="one",
        flags="relative position bias, cross-attention (decoder)",
        tested_by=("t5",),
    ),
    Architecture(
        "CLIP (text and vision)",
        ("CLIPAttention",),
        ("clip", "clip_text_model", "clip_vision_model"),
        tested_by=("clip", "llava"),
    ),
    Architecture(
        "BERT / RoBERTa / MiniLM / ELECTRA",
        ("BertAttention", "RobertaAttention"),
        ("bert", "roberta"),
        flags="relative position bias (position_embedding_type relative_key*)",
        tested_by=("bert", "bert_decoder", "roberta", "minilm_real"),
    ),
    Architecture("ViT", ("ViTAttention",), ("vit",), tested_by=("vit", "vision_encoder_decoder")),
    Architecture(
        "BLIP / BLIP-2 / InstructBLIP (vision)",
        ("BlipAttention", "Blip2Attention", "InstructBlipAttention", "InstructBlipVideoAttention"),
        ("blip_vision_model", "blip_2_vision_model", "instructblip_vision_model"),
        "qkv",
        "qkv",
        tested_by=("blip2_vision",),
    ),
    Architecture(
        "Wav2Vec2-Conformer / Wav2Vec2-BERT / FastSpeech2-Conformer",
        (
            "Wav2Vec2ConformerSelfAttention",
            "Wav2Vec2BertSelfAttention",
            "FastSpeech2ConformerAttention",
        ),
        ("wav2vec2-conformer", "wav2vec2-bert"),
        flags="relative position scores (pos_bias_u/v, linear_pos) or rotary",
        tested_by=("wav2vec2_conformer",),
    ),
    Architecture(
        "DistilBERT", ("DistilBertSelfAttention",), ("distilbert",), tested_by=("distilbert",)
    ),
    Architecture("ALBERT", ("AlbertAttention",), ("albert",), tested_by=("albert",)),
    Architecture(
        "DeBERTa-v2",
        ("DebertaV2Attention",),
        ("deberta-v2",),
        scale="deberta",
        flags="relative position bias (disentangled c2p/p2c)",
        tested_by=("deberta_v2",),
    ),
    Architecture(
        "MPNet",
        ("MPNetSelfAttention",),
        ("mpnet",),
        flags="relative position bias",
        tested_by=("mpnet",),
    ),
    Architecture(
        "ModernBERT",
        ("ModernBertAttention",),
        ("modernbert",),
        "qkv",
        "Wqkv",
        flags="rotary, sliding window (local layers)",
        tested_by=("modernbert",),
    ),
    Architecture(
        "timm ViT",
        ("Attention",),
        (),
        "qkv",
        "qkv",
        flags="QK-norm (qk_norm=True)",
        tested_by=("timm_vit",),
    ),
    # -- value heads of their own size / count (gap helper vhead2) --
    Architecture(
        "MiMo-V2-Flash (value head size ≠ query/key head size)",
        ("MiMoV2FlashAttention",),
        ("mimo_v2_flash",),
        flags="rotary (partial), value scale, "
        "sliding-window layers with twice the K/V heads and attention sinks",
        tested_by=("mimo_v2_flash",),
        v_head=True,
    ),
    Architecture(
        "Nemotron 3.5 Transcribe / Nemotron 3 Diarization (audio encoders)",
        ("Nemotron3_5TranscribeAttention", "Nemotron3DiarizationAttention"),
        (
            "nemotron3_5_transcribe_asr_audio",
            "nemotron3_5_transcribe_word_timestamp",
            "nemotron3_diarization_audio",
        ),
        flags="rotary (partial in Transcribe), QK-norm per head (Transcribe); "
        "v keeps H heads when k has H_kv < H (value_heads)",
        tested_by=("nemotron3_5_transcribe", "nemotron3_diarization", "nemotron3_diarization_kv2"),
    ),
    Architecture(
        "Gemma-4 vision (projections wrapped in Gemma4ClippableLinear)",
        ("Gemma4VisionAttention",),
        ("gemma4_vision",),
        scale="one",
        flags="2-D rotary, QK-norm per head, value norm (value_norm), "
        "clipped projections (clipped_linears)",
        tested_by=("gemma4_vision",),
        value_norm=True,
        linear_wrapped=True,
    ),
    Architecture(
        "Gemma-4 audio (conformer; projections wrapped in Gemma4ClippableLinear)",
        ("Gemma4AudioAttention",),
        ("gemma4_audio",),
        scale="gemma4_audio",
        flags="per-dimension query scale softplus(per_dim_scale) (per_dim_scale: W_QK = "
        "W_Q·diag(s)·W_Kᵀ, raw W_Q reported), relative position scores (relative_k_proj), "
        "logit soft-cap, chunked local attention (sliding_window = past + 1 + future), "
        "clipped projections (clipped_linears)",
        tested_by=("gemma4_audio",),
        o_names=("post",),
        linear_wrapped=True,
    ),
    Architecture(
        "Gemma-3n audio (conformer; q/k/v in the child `attn`, out-projection `post` beside it)",
        ("Gemma3nAudioConformerAttention",),
        (),
        scale="gemma3n_audio",
        flags="per-dimension query scale softplus(per_dim_scale) (per_dim_scale, raw W_Q "
        "reported), relative position scores (relative_position_embedding), logit soft-cap, "
        "chunked local attention (sliding_window = past + 1 + future)",
        tested_by=("gemma3n_audio",),
        o_names=("post",),
    ),
    Architecture(
        "DeepSeek-V2/V3 (MLA)",
        ("DeepseekV2Attention", "DeepseekV3Attention"),
        ("deepseek_v2", "deepseek_v3"),
        "mla",
        scale="mla",
        flags="decoupled rotary part (reported, not in W_QK)",
        tested_by=("deepseek_v3",),
    ),
    Architecture(
        "DeepSeek-V4 (shared-KV MQA, low-rank q, grouped low-rank output)",
        ("DeepseekV4Attention",),
        (),
        "q_a_proj → q_b_proj [H, r]; kv_proj one head read as key and value; o_a_proj grouped "
        "[G, o_lora, H/G·r] → o_b_proj [d, G·o_lora] (W_O^h materialized)",
        flags="rotary (partial, trailing dims; QK and OV at relative offset 0), QK-norm per "
        "head (q_b_norm, no gain), attention sinks, sliding window; compressed KV of CSA/HCA "
        "layers (attention_form)",
        tested_by=("deepseek_v4",),
    ),
    Architecture(
        "PEFT LoRA (any family above)",
        ("LoraLayer",),
        (),
        "separate",
        flags="effective weights W + s·B·A",
        tested_by=("peft_lora_llama",),
    ),
    Architecture(
        "torch.nn.MultiheadAttention",
        ("MultiheadAttention",),
        (),
        "in_proj [3, H, r]",
        tested_by=("mha",),
    ),
    # gap helper "odd" (issue 14)
    Architecture(
        "JetMoE (mixture of attention heads)",
        ("JetMoeAttention",),
        ("jetmoe",),
        "moa",
        "kv_proj",
        flags="rotary; E·H_kv heads, one per (expert, key/value head) (flag attention_experts "
        "= E); per token num_experts_per_tok experts, gated",
        tested_by=("jetmoe",),
    ),
    Architecture(
        "ConvBERT (attention heads of a mixed attention/convolution block)",
        ("ConvBertAttention",),
        ("convbert",),
        scale="inv_sqrt",
        flags="H/head_ratio attention heads of size d/(2·H/head_ratio); the out-projection "
        "reads [2, H, r]: the attention heads, then span convolutions (flag span_convolution)",
        tested_by=("convbert",),
        o_parts=2,
    ),
    Architecture(
        "LXMERT (language, vision and cross-modal layers)",
        ("LxmertSelfAttentionLayer", "LxmertCrossAttentionLayer"),
        ("lxmert",),
        flags="cross-attention (visual_attention: one module, called language→vision and "
        "vision→language)",
        tested_by=("lxmert",),
    ),
    Architecture(
        "DeBERTa (v1)",
        ("DebertaAttention",),
        ("deberta",),
        "head_qkv",
        "self.in_proj",
        scale="deberta_v1",
        flags="relative position bias (disentangled c2p/p2c); talking heads flagged; "
        "out-projection in the parent's output.dense",
        tested_by=("deberta_v1",),
    ),
    Architecture(
        "TimeSformer (space and time attention)",
        ("TimeSformerAttention",),
        ("timesformer",),
        "qkv",
        "attention.qkv",
        flags="out-projection in the parent's output.dense; the time attention's output passes "
        "through the layer's temporal_dense (flag post_projection)",
        tested_by=("timesformer",),
    ),
    Architecture(
        "SqueezeBERT (1×1 convolutions, grouped)",
        ("SqueezeBertSelfAttention",),
        ("squeezebert",),
        flags="grouped projections (grouped_projections: q_groups, k_groups, v_groups, "
        "post_attention_groups; block-diagonal maps); out-projection in the block's "
        "post_attention.conv1d",
        tested_by=("squeezebert", "squeezebert_ungrouped"),
        stored="conv1x1",
    ),
    Architecture(
        "XLNet (relative attention)",
        ("XLNetRelativeAttention",),
        ("xlnet",),
        flags="relative position bias (r, r_r_bias), content bias (content_bias: r_w_bias), "
        "segment scores (segment_bias: seg_embed, r_s_bias); their parameters get role other",
        tested_by=("xlnet",),
        stored="d_h_r",
    ),
    Architecture(
        "Funnel Transformer (relative attention, pooled queries)",
        ("FunnelRelMultiheadAttention",),
        ("funnel",),
        flags="relative position bias (r_kernel, r_r_bias; attention_type relative_shift or "
        "factorized), content bias (content_bias: r_w_bias), segment scores (segment_bias: "
        "seg_embed, r_s_bias); their parameters get role other; pooled queries in the first "
        "layer of blocks 2… (X_q ≠ X_k)",
        tested_by=("funnel", "funnel_factorized"),
        names=FUNNEL_NAMES,
    ),
    Architecture(
        "CPM-Ant",
        ("CpmAntAttention",),
        ("cpmant",),
        flags="relative position bias (the model's position_bias.relative_attention_bias, one "
        "for all layers, buckets of relative position and segment pairs; role other)",
        tested_by=("cpmant",),
        names=CPMANT_NAMES,
    ),
    Architecture(
        "FSMT (live: by the name table; class Attention; activations (T, B, d))",
        (),
        ("fsmt",),
        flags="cross-attention (decoder)",
        tested_by=("fsmt",),
    ),
)

_BY_CLASS = {cls: arch for arch in ARCHITECTURES for cls in arch.classes}
_BY_MODEL_TYPE = {mt: arch for arch in ARCHITECTURES for mt in arch.model_types}
GENERIC = Architecture("q/k/v/o by name table", scale="inv_sqrt")


def architectures_table() -> str:
    """The supported-architectures table of docs/metrics.md (markdown), from :data:`ARCHITECTURES`."""
    lines = [
        "| family | layout / split spec | scale rule | flags |",
        "|---|---|---|---|",
    ]
    for arch in ARCHITECTURES:
        layout = LAYOUTS.get(arch.layout, arch.layout)
        if arch.q_gate:
            layout += "; q rows [H, 2, r]: query, then output gate"
        if arch.o_parts > 1:
            layout += f"; out-projection input [{arch.o_parts}, H, r], attention in part 0"
        if arch.v_head:
            layout += "; v rows [H_kv, r_v], o columns [H, r_v] (r_v = v_head_dim)"
        if arch.o_names:
            layout += "; out-projection " + " or ".join(f"`{n}`" for n in arch.o_names)
        if arch.stored != "linear":
            layout += f"; stored as {STORED[arch.stored]}"
        if arch.names:
            layout += "; q, k, v, o = " + ", ".join(f"`{n}`" for n in arch.names)
        where = f"`{arch.fused}` " if arch.fused else ""
        if arch.in_out:
            where += "(stored in×out) "
        scale = SCALE_RULES[arch.scale][0]
        lines.append(f"| {arch.family} | {where}{layout} | {scale} | {arch.flags or '—'} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- the plan


@dataclass
class AttentionPlan:
    """Where one attention module's tensors are and how to cut them into heads.

    Tensor names are full parameter names (relative to the model, or keys of a checkpoint):
    ``q``, ``k``, ``v``, ``o`` (separate) or ``fused`` (+ ``q`` for a fused [k | v]).
    ``in_out``: tensors stored (d_in, d_out) (GPT-2's Conv1D) instead of nn.Linear's (d_out, d_in).
    ``n_kv_heads`` None: read from the key projection's width. ``q_gate``: q's rows are
    [H, 2, r] (query, then an output gate per head; :class:`Architecture`). ``o_parts``: the
    out-projection's input is [o_parts, H, r], the heads' contexts are part 0 (:class:`Architecture`).
    """

    name: str
    layer: int
    family: str
    o: str
    n_heads: int
    head_dim: int
    scale: float
    q: str | None = None
    k: str | None = None
    v: str | None = None
    fused: str | None = None
    layout: str = "separate"
    in_out: bool = False
    n_kv_heads: int | None = None
    kind: str = "self"
    rotary: bool = False
    flags: dict[str, object] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    q_gate: bool = False
    o_parts: int = 1
    #: value head size r_v when it differs from the query/key head size r (MiMo-V2-Flash)
    v_head_dim: int | None = None
    #: how q/k/v/o are stored (:data:`STORED`); ``groups``: part ("q", "k", "v", "o") → number of
    #: groups of a grouped 1×1 convolution (absent: 1)
    stored: str = "linear"
    groups: dict[str, int] = field(default_factory=dict)
    #: parameters of the module that add score terms outside W_Q·W_Kᵀ (XLNet's positional key
    #: projection and its biases): named, so that ``decay.param_roles`` gives them a role on purpose
    score_params: tuple[str, ...] = ()

    @property
    def qk_params(self) -> tuple[str, ...]:
        if self.layout == "separate":
            return tuple(n for n in (self.q, self.k) if n)
        if self.layout in ("kv", "moa"):
            return tuple(n for n in (self.q, self.fused) if n)
        return (self.fused,) if self.fused else ()

    @property
    def ov_params(self) -> tuple[str, ...]:
        v = self.v if self.layout == "separate" else self.fused
        return tuple(n for n in (v, self.o) if n)


class PlanError(ValueError):
    """The tensors do not split as the plan says (widths, head counts)."""


def _affine(rows: Tensor) -> tuple[int, int, int] | None:
    """(a, s_h, s_j) if rows[h, j] = a + h·s_h + j·s_j for all h, j, else None."""
    Hp, r = rows.shape
    a = int(rows[0, 0])
    s_h = int(rows[1, 0]) - a if Hp > 1 else 0
    s_j = int(rows[0, 1]) - a if r > 1 else 1
    expected = a + torch.arange(Hp)[:, None] * s_h + torch.arange(r)[None, :] * s_j
    return (a, s_h, s_j) if torch.equal(rows, expected) else None


def _rows_of(weight: Tensor, rows: Tensor, in_out: bool) -> Tensor:
    """Per-head W (H, d_in, r) from the output rows ``rows`` (H, r) of a projection weight.

    A strided view of ``weight`` when the rows are an affine pattern (every split spec but the
    grouped and CodeGen ones), else a gather; differentiable either way.
    """
    Hp, r = rows.shape
    affine = _affine(rows)
    if affine is not None:
        a, s_h, s_j = affine
        st_out, st_in = (weight.stride(1), weight.stride(0)) if in_out else weight.stride()
        d_in = weight.shape[0] if in_out else weight.shape[1]
        return weight.as_strided(
            (Hp, d_in, r), (s_h * st_out, st_in, s_j * st_out), weight.storage_offset() + a * st_out
        )
    if in_out:  # (d_in, d_out): columns are outputs
        return weight[:, rows].permute(1, 0, 2)
    return weight[rows].mT  # (H, r, d_in) -> (H, d_in, r)


def _out_dim(weight: Tensor, in_out: bool) -> int:
    return int(weight.shape[1] if in_out else weight.shape[0])


#: how a plan's q/k/v/o tensors can be stored (``AttentionPlan.stored``); each is turned into the
#: nn.Linear layout (d_out, d_in) by :func:`stored_matrix` before the split.
STORED: dict[str, str] = {
    "linear": "nn.Linear weight (d_out, d_in), or (d_in, d_out) with in_out (GPT-2's Conv1D)",
    "conv1x1": "1×1 nn.Conv1d weight (d_out, d_in/G, 1) with G groups, activations (B, C, T): "
    "the block-diagonal (d_out, d_in) matrix whose block g maps input channels "
    "[g·d_in/G, (g+1)·d_in/G) to output channels [g·d_out/G, (g+1)·d_out/G)",
    "d_h_r": "raw parameter (d_model, H, r): q/k/v = einsum('ibh,hnd->ibnd', x, W), "
    "out = einsum('ibnd,hnd->ibh', ctx, W_o) (XLNet)",
}


def stored_matrix(stored: str, part: str, W: Tensor, groups: int = 1) -> Tensor:
    """The nn.Linear-layout matrix M (d_out, d_in) of a projection stored as ``stored``
    (:data:`STORED`), so that the projection is x ↦ M x; ``part`` is "q", "k", "v" or "o".

    - "linear": W itself.
    - "conv1x1": W (d_out, d_in/G, 1) → M = blockdiag(W₀, …, W_{G−1}), W_g = W[g·d_out/G …, :, 0]
      (a view of W when G = 1, else a differentiable copy with zeros off the blocks).
    - "d_h_r": W (d, H, r) → q/k/v: M = W.reshape(d, H·r)ᵀ (row h·r + j = head h, coordinate j),
      o: M = W.reshape(d, H·r) (column h·r + j); views of W.

    Raises :class:`PlanError` when W's shape does not fit.
    """
    if stored == "linear":
        return W
    if stored == "conv1x1":
        if W.dim() != 3 or W.shape[-1] != 1 or groups <= 0 or W.shape[0] % groups:
            raise PlanError(
                f"a 1×1 convolution weight (d_out, d_in/G, 1) with G = {groups} groups was "
                f"expected, got shape {tuple(W.shape)}"
            )
        M = W[..., 0]
        if groups == 1:
            return M
        blocks = M.reshape(groups, M.shape[0] // groups, M.shape[1]).unbind(0)
        return torch.block_diag(*blocks)
    if stored == "d_h_r":
        if W.dim() != 3:
            raise PlanError(f"a raw (d, H, r) parameter was expected, got shape {tuple(W.shape)}")
        M = W.reshape(W.shape[0], W.shape[1] * W.shape[2])
        return M if part == "o" else M.T
    raise RankdecayValueError(f"unknown storage {stored!r}; choose one of {', '.join(STORED)}.")


def _stored_get(plan: AttentionPlan, get: Callable[[str], Tensor]) -> Callable[[str], Tensor]:
    """``get`` with the plan's q/k/v/o tensors turned into nn.Linear matrices
    (:func:`stored_matrix`); for grouped 1×1 convolutions also checks that q, k, v read the
    width o writes (the residual stream: the group counts fit the tensors)."""
    parts = {n: p for p, n in (("q", plan.q), ("k", plan.k), ("v", plan.v), ("o", plan.o)) if n}

    def stored_get(name: str) -> Tensor:
        part = parts.get(name)
        if part is None:
            return get(name)
        try:
            M = stored_matrix(plan.stored, part, get(name), plan.groups.get(part, 1))
        except PlanError as err:
            raise PlanError(f"{plan.name}: {name}: {err}") from None
        if plan.stored == "conv1x1" and part != "o" and plan.o is not None:
            Wo = get(plan.o)
            if M.shape[1] != Wo.shape[0]:
                raise PlanError(
                    f"{plan.name}: {name} reads {M.shape[1]} channels with "
                    f"{plan.groups.get(part, 1)} group(s) but the output projection writes "
                    f"{Wo.shape[0]}; the group counts do not fit the tensors"
                )
        return M

    return stored_get


def split_heads(
    plan: AttentionPlan, get: Callable[[str], Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[int, ...] | None]:
    """(W_Q, W_K, W_V, W_O, kv_head_index) of one attention module, per query head.

    ``get(name)`` returns the tensor named in the plan (a parameter, or a checkpoint tensor).
    W_Q (H, d, r), W_K (H, d_kv, r), W_V (H, d_kv, r_v), W_O (H, r_v, d_model) with r_v =
    ``plan.v_head_dim`` or r — a key/value head shared by g query heads is repeated (query head
    h uses key/value head h // g). The value heads follow the key heads' grouping; where the
    value projection has its own head count H_v (:func:`split_heads_v`) query head h reads
    value head h // (H/H_v). Raises :class:`PlanError` if a width does not fit the head counts.
    """
    W_Q, W_K, W_V, W_O, kv_index, _ = split_heads_v(plan, get)
    return W_Q, W_K, W_V, W_O, kv_index


def _group_index(H: int, Hg: int, name: str, what: str) -> tuple[int, ...] | None:
    """Query head h → shared head h // (H/Hg); None when Hg = H."""
    if Hg == H:
        return None
    if Hg <= 0 or H % Hg:
        raise PlanError(f"{name}: {H} query heads cannot share {Hg} {what} heads")
    g = H // Hg
    return tuple(h // g for h in range(H))


def split_heads_v(
    plan: AttentionPlan, get: Callable[[str], Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[int, ...] | None, tuple[int, ...] | None]:
    """:func:`split_heads` plus the value-head index: (W_Q, W_K, W_V, W_O, kv_head_index,
    v_head_index), v_head_index None when the value heads follow ``kv_head_index``.

    Separate projections: H_kv = k width / r, H_v = v width / r_v (r_v = ``plan.v_head_dim`` or
    r), each dividing H; query head h reads key head h // (H/H_kv) and value head h // (H/H_v)
    (what SDPA's ``enable_gqa`` computes when k and v have different head counts).
    """
    H, r = plan.n_heads, plan.head_dim
    if plan.stored != "linear":
        get = _stored_get(plan, get)
    if plan.layout == "moa":
        return (*_split_moa(plan, get), None)
    rv = plan.v_head_dim or r
    v_index: tuple[int, ...] | None = None
    if plan.layout == "separate":
        assert plan.q and plan.k and plan.v
        Wq, Wk, Wv = get(plan.q), get(plan.k), get(plan.v)
        k_width, v_width = _out_dim(Wk, plan.in_out), _out_dim(Wv, plan.in_out)
        Hkv = plan.n_kv_heads or k_width // r
        Hv = v_width // rv if plan.v_head_dim else Hkv
        if plan.v_head_dim is None and v_width != Hkv * r and v_width % r == 0:
            Hv = v_width // r  # value projection with its own head count (Nemotron audio)
        per_head = 2 if plan.q_gate else 1  # gated: [query | gate] per head
        if (
            _out_dim(Wq, plan.in_out) != per_head * H * r
            or k_width != Hkv * r
            or v_width != Hv * rv
        ):
            raise PlanError(
                f"{plan.name}: q/k/v widths {_out_dim(Wq, plan.in_out)}/{k_width}/{v_width} "
                f"do not split into {H} query heads of size {r}"
                + (f" (values of size {rv})" if rv != r else "")
            )
        q_rows = torch.arange(per_head * H * r).view(H, per_head, r)[:, 0]  # (H, r)
        W_Q = _rows_of(Wq, q_rows, plan.in_out)
        W_K = _rows_of(Wk, torch.arange(Hkv * r).view(Hkv, r), plan.in_out)
        W_V = _rows_of(Wv, torch.arange(Hv * rv).view(Hv, rv), plan.in_out)
        if Hv != Hkv:
            v_index = _group_index(H, Hv, plan.name, "value") or tuple(range(H))
    else:
        assert plan.fused
        W = get(plan.fused)
        Hkv = plan.n_kv_heads or H
        width = _out_dim(W, plan.in_out)
        if (
            Hkv <= 0
            or H % Hkv
            or width != _fused_width(plan.layout, H, Hkv, r)
            or (plan.layout in ("head_qkv", "codegen") and Hkv != H)
            or (plan.layout == "codegen" and H % 4)
            or rv != r
        ):
            raise PlanError(
                f"{plan.name}: fused projection width {width} does not fit the {plan.layout} split "
                f"with {H} query heads, {Hkv} key/value heads of size {r}"
            )
        rows = fused_rows(plan.layout, H, Hkv, r)
        if plan.layout == "kv":
            assert plan.q
            W_Q = _rows_of(get(plan.q), torch.arange(H * r).view(H, r), plan.in_out)
        else:
            W_Q = _rows_of(W, rows["q"], plan.in_out)
        W_K = _rows_of(W, rows["k"], plan.in_out)
        W_V = _rows_of(W, rows["v"], plan.in_out)
    Wo = get(plan.o)
    in_width = int(Wo.shape[0] if plan.in_out else Wo.shape[1])
    parts = plan.o_parts  # [parts, H, r_v]: the heads' contexts are part 0
    if in_width != H * parts * rv:
        raise PlanError(
            f"{plan.name}: output projection input width {in_width} is not {H}·"
            + (f"{parts}·" if parts > 1 else "")
            + f"{rv}"
        )
    if plan.in_out:  # (parts·H·r_v, d_out)
        W_O = Wo.reshape(parts, H, rv, Wo.shape[-1])[0]
    else:  # (d_out, parts·H·r_v)
        W_O = Wo.reshape(Wo.shape[0], parts, H, rv)[:, 0].permute(1, 2, 0)
    kv_index = _group_index(H, Hkv, plan.name, "key/value")
    if kv_index is not None:
        W_K = select_heads(W_K, torch.tensor(kv_index, device=W_K.device))
    v_rep = kv_index if v_index is None else _group_index(H, len(set(v_index)), plan.name, "value")
    if v_rep is not None:
        W_V = select_heads(W_V, torch.tensor(v_rep, device=W_V.device))
    return W_Q, W_K, W_V, W_O, kv_index, v_index


def _split_moa(
    plan: AttentionPlan, get: Callable[[str], Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[int, ...] | None]:
    """:func:`split_heads` of a mixture of attention heads (JetMoE, layout "moa").

    q: (E, H_kv·r, d) per expert, fused [k | v]: (2·H_kv·r, d), o: (E, d, H_kv·r) per expert.
    Head h = e·H_kv + j: W_Q^h = q[e] rows j·r…, W_O^h = o[e] columns j·r… (transposed), and
    key/value head j (``kv_head_index[h] = h mod H_kv``) — the model's repeat of k, v over its
    top-k slots pairs slot s's query head j with key head j.
    """
    assert plan.q and plan.fused and plan.n_kv_heads
    Wq, Wkv, Wo = get(plan.q), get(plan.fused), get(plan.o)
    Hkv, r, H = plan.n_kv_heads, plan.head_dim, plan.n_heads
    E = int(Wq.shape[0]) if Wq.dim() == 3 else 0
    if (
        Wq.dim() != 3
        or Wo.dim() != 3
        or E * Hkv != H
        or Wq.shape[1] != Hkv * r
        or Wo.shape[0] != E
        or Wo.shape[2] != Hkv * r
        or Wkv.shape[0] != 2 * Hkv * r
    ):
        raise PlanError(
            f"{plan.name}: expert projections {tuple(Wq.shape)}, {tuple(Wo.shape)} and k/v "
            f"{tuple(Wkv.shape)} do not fit {H} heads = experts × {Hkv} key/value heads of size {r}"
        )
    W_Q = Wq.reshape(H, r, Wq.shape[-1]).mT  # (E·H_kv, d, r), a view
    rows = fused_rows("kv", Hkv, Hkv, r)
    kv_index = tuple(h % Hkv for h in range(H))
    idx = torch.tensor(kv_index, device=Wkv.device)
    W_K = select_heads(_rows_of(Wkv, rows["k"], False), idx)
    W_V = select_heads(_rows_of(Wkv, rows["v"], False), idx)
    W_O = Wo.reshape(E, Wo.shape[1], Hkv, r).permute(0, 2, 3, 1).reshape(H, r, Wo.shape[1])
    return W_Q, W_K, W_V, W_O, (kv_index if Hkv != H else None)


def _moa_plan(
    name: str, layer: int, arch: Architecture, config: object, block: int
) -> AttentionPlan | None:
    """The plan of a JetMoE attention module at ``name`` (live or checkpoint: both read the
    head counts from the config — num_local_experts E, num_key_value_heads, kv_channels)."""
    E = _first_int((config,), ("num_local_experts",))
    Hkv = _first_int((config,), ("num_key_value_heads",))
    r = _first_int((config,), ("kv_channels", "head_dim"))
    if E is None or Hkv is None or r is None or arch.fused is None:
        return None
    plan = AttentionPlan(
        name=name,
        layer=layer,
        family=arch.family,
        o=_join(name, MOA_NAMES["o"]),
        n_heads=E * Hkv,
        head_dim=r,
        scale=SCALE_RULES[arch.scale][1](config, r, block),
        q=_join(name, MOA_NAMES["q"]),
        fused=_join(name, f"{arch.fused}.weight"),
        layout="moa",
        n_kv_heads=Hkv,
    )
    plan.rotary, plan.flags = config_flags(config, r, block)
    plan.flags["attention_experts"] = E
    top_k = _first_int((config,), ("num_experts_per_tok",))
    plan.notes = (
        f"mixture of attention heads: head h is expert h // {Hkv}'s query and output projection "
        f"on key/value head h mod {Hkv}; each token uses {top_k} of the {E} experts, their "
        "outputs weighted by the router's gate (the OV circuit shown is ungated)",
    )
    return finish_notes(plan)


#: SqueezeBERT's out-projection, beside its attention module in the block (a 1×1 convolution)
SQUEEZEBERT_O = "post_attention.conv1d.weight"
#: SqueezeBERT's projections and the config keys of their group counts (with the config's defaults)
SQUEEZEBERT_GROUPS = (
    ("q", "query", "q_groups", 4),
    ("k", "key", "k_groups", 4),
    ("v", "value", "v_groups", 4),
)
#: XLNet's parameters that add score terms outside W_Q·W_Kᵀ: positional key projection W_R, the
#: positional, segment and content biases of the query, the segment embeddings
XLNET_SCORE_PARAMS = ("r", "r_r_bias", "r_s_bias", "r_w_bias", "seg_embed")


def _own_plan(
    name: str,
    layer: int,
    arch: Architecture,
    config: object,
    heads: tuple[int, int],
    qkvo: tuple[str, str, str, str],
    **extra: Any,
) -> AttentionPlan:
    """The plan of a row that names its own tensors (:func:`stored_plan`, :func:`named_plan`):
    H = ``heads[0]`` query and key/value heads of size r = ``heads[1]``, the row's scale rule,
    q/k/v/o tensor names ``qkvo``, stored as ``arch.stored``."""
    H, r = heads
    q, k, v, o = qkvo
    return AttentionPlan(
        name=name,
        layer=layer,
        family=arch.family,
        o=o,
        n_heads=H,
        head_dim=r,
        scale=SCALE_RULES[arch.scale][1](config, r, _block_index(name)),
        q=q,
        k=k,
        v=v,
        n_kv_heads=H,
        stored=arch.stored,
        **extra,
    )


def stored_plan(
    name: str,
    layer: int,
    arch: Architecture,
    config: object,
    has: Callable[[str], bool],
    groups: Mapping[str, int] | None = None,
) -> AttentionPlan | None:
    """The plan of an attention module at ``name`` whose row stores q/k/v/o other than as
    nn.Linear weights (``arch.stored``, :data:`STORED`), live or from a checkpoint: the head
    counts come from the config, ``has(tensor name)`` says which tensors exist.

    - "conv1x1" (SqueezeBERT): q, k, v = ``name.{query,key,value}.weight`` (d, d/G, 1),
      o = the block's ``post_attention.conv1d.weight``; H = num_attention_heads, r = d/H, scale
      1/√r; ``groups`` (part → G) from the live convolutions, else from the config (q_groups,
      k_groups, v_groups, post_attention_groups).
    - "d_h_r" (XLNet): q, k, v, o = ``name.{q,k,v,o}`` (d, H, r); H = n_head, r = d_head, scale
      1/√r; the content bias r_w_bias, the relative-position term (r, r_r_bias) and the segment
      term (seg_embed, r_s_bias) are flags and notes, their parameters ``score_params``.

    None when a tensor is missing or the config lacks the head counts.
    """
    if arch.stored == "conv1x1":
        H = _first_int((config,), ("num_attention_heads",))
        d = _first_int((config,), ("hidden_size",))
        if H is None or d is None or d % H:
            return None
        r = d // H
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        q, k, v = (_join(name, f"{child}.weight") for _, child, _, _ in SQUEEZEBERT_GROUPS)
        o = _join(parent, SQUEEZEBERT_O)
        if not all(has(n) for n in (q, k, v, o)):
            return None
        if groups is None:  # the config's counts (its class defaults where absent)
            read = {p: _pos_int(cfg_get(config, key)) or g0 for p, _, key, g0 in SQUEEZEBERT_GROUPS}
            read["o"] = _pos_int(cfg_get(config, "post_attention_groups")) or 1
            groups = read
        grouped = {p: g for p, g in groups.items() if g != 1}
        plan = _own_plan(name, layer, arch, config, (H, r), (q, k, v, o), groups=grouped)
        if plan.groups:
            plan.flags["grouped_projections"] = ", ".join(f"{p}: {g}" for p, g in groups.items())
        return finish_notes(plan)
    if arch.stored == "d_h_r":
        H = _first_int((config,), ("n_head",))
        r = _first_int((config,), ("d_head",))
        q, k, v, o = (_join(name, p) for p in "qkvo")
        if H is None or r is None or not all(has(n) for n in (q, k, v, o)):
            return None
        plan = _own_plan(name, layer, arch, config, (H, r), (q, k, v, o))
        plan.flags = {
            "relative_position_bias": True,
            "content_bias": _join(name, "r_w_bias"),
            "segment_bias": _join(name, "seg_embed"),
        }
        plan.score_params = tuple(n for n in (_join(name, p) for p in XLNET_SCORE_PARAMS) if has(n))
        plan.notes = (
            f"XLNet scores per head: scale·[(x_i W_Q + u)·(x_j W_K) + (x_i W_Q + b_r)·(e_{{i−j}} "
            f"W_R) + (x_i W_Q + b_s)·s_{{[i, j in different segments]}}] with u = {name}.r_w_bias, "
            f"W_R = {name}.r on the sinusoidal relative encodings e, b_r = r_r_bias, b_s = "
            "r_s_bias, s = seg_embed: only x_i W_Q·(x_j W_K)ᵀ is the QK circuit; with mems the "
            "keys and values also read the cached states, and the query stream (pretraining, "
            "target_mapping) applies the same W_Q, W_K, W_V, W_O to its own queries",
        )
        return finish_notes(plan)
    return None


#: Funnel's parameters that add score terms outside W_Q·W_Kᵀ: the content bias, the positional
#: kernel and its query bias, the segment bias and the segment embeddings
FUNNEL_SCORE_PARAMS = ("r_w_bias", "r_kernel", "r_r_bias", "r_s_bias", "seg_embed")
#: CPM-Ant's relative position (and segment pair) bias, one module of the model for all layers
CPMANT_POSITION_BIAS = "position_bias.relative_attention_bias"


def named_plan(
    name: str, layer: int, arch: Architecture, config: object, has: Callable[[str], bool]
) -> AttentionPlan | None:
    """The plan of an attention module at ``name`` whose row names its nn.Linear q, k, v, o
    children (``arch.names``), live or from a checkpoint: q, k, v, o = ``name.<names[i]>.weight``
    ((H·r, d) for q/k/v, (d, H·r) for o, rows/columns h·r + j = head h, coordinate j); H and r
    from the config (Funnel: n_head, d_head; CPM-Ant: num_attention_heads, dim_head), scale 1/√r
    (both modules divide q·kᵀ by √r). The score terms outside W_Q·W_Kᵀ are flags and notes, their
    parameters ``score_params`` (role other):

    - Funnel: scores = scale·[(x_i W_Q + u)·(x_j W_K) + (x_i W_Q + b_r)·(e W_R)_{ij}
      + (x_i W_Q + b_s)·s_{[same segment ij]}], u = r_w_bias, W_R = r_kernel, b_r = r_r_bias,
      b_s = r_s_bias, s = seg_embed (the last two times the cls mask).
    - CPM-Ant: scores = scale·(x_i W_Q)·(x_j W_K) + B[h, bucket(i, j, segments)], B = the model's
      ``position_bias.relative_attention_bias`` (found by ``has`` at the root of ``name``).

    None when a tensor is missing or the config lacks the head counts.
    """
    H = _first_int((config,), ("n_head", "num_attention_heads"))
    r = _first_int((config,), ("d_head", "dim_head"))
    q, k, v, o = (_join(name, f"{n}.weight") for n in arch.names)
    if H is None or r is None or not all(has(n) for n in (q, k, v, o)):
        return None
    plan = _own_plan(name, layer, arch, config, (H, r), (q, k, v, o))
    plan.flags = {"relative_position_bias": True}
    if arch.names == FUNNEL_NAMES:
        plan.flags["content_bias"] = _join(name, "r_w_bias")
        plan.flags["segment_bias"] = _join(name, "seg_embed")
        plan.score_params = tuple(
            n for n in (_join(name, p) for p in FUNNEL_SCORE_PARAMS) if has(n)
        )
        kind = cfg_get(config, "attention_type") or "relative_shift"
        plan.notes = (
            f"Funnel scores per head: scale·[(x_i W_Q + u)·(x_j W_K) + (x_i W_Q + b_r)·(e W_R)_ij "
            f"+ (x_i W_Q + b_s)·s_[i, j same segment]] with u = {name}.r_w_bias, W_R = "
            f"{name}.r_kernel on the block's position encodings e (attention_type {kind}), "
            "b_r = r_r_bias, b_s = r_s_bias, s = seg_embed (the positional and segment terms are "
            "zeroed on the <cls> row and column with separate_cls): only x_i W_Q·(x_j W_K)ᵀ is "
            "the QK circuit; in the first layer of each encoder block after the first the "
            "queries read the pooled states and the keys and values the unpooled ones (X_q ≠ "
            "X_k; pooled too with pool_q_only=False)",
        )
    else:
        root = name[: name.index("encoder.")] if "encoder." in name else ""
        bias = root + CPMANT_POSITION_BIAS
        plan.score_params = (bias,) if has(bias) else ()
        plan.notes = (
            f"CPM-Ant scores per head: scale·(x_i W_Q)·(x_j W_K) + B[h, bucket(i − j)] (or of the "
            f"segment pair when i, j are in different segments), B = {bias}, one table the model "
            "shares between its layers: only x_i W_Q·(x_j W_K)ᵀ is the QK circuit",
        )
    return finish_notes(plan)


# ------------------------------------------------------------------------------- flags


def rope_attention_factor(config: object, block: int) -> float:
    """The factor m by which the rotary embedding multiplies cos and sin (q and k each: m² on
    the rotated scores), as transformers' ``modeling_rope_utils`` computes it; 1 if none.

    YaRN: ``attention_factor``, else 0.1·μ·ln s + 1 (μ = mscale; the ratio of the two
    ``mscale``/``mscale_all_dim`` values when both are set), s = ``factor`` or
    max_position / original_max_position (s ≤ 1 → 1). LongRoPE: ``attention_factor``, else
    √(1 + ln s / ln original_max_position). Per-layer-type parameters (Gemma-3) follow
    ``layer_types[block]``.
    """
    params = cfg_get(config, "rope_parameters", "rope_scaling")
    if (
        isinstance(params, Mapping)
        and params
        and all(isinstance(v, Mapping) for v in params.values())
    ):
        layer_types = cfg_get(config, "layer_types")
        kind = (
            layer_types[block]
            if isinstance(layer_types, (list, tuple)) and block < len(layer_types)
            else None
        )
        params = params.get(kind) if kind is not None else None
    if not isinstance(params, Mapping):
        return 1.0
    rope_type = params.get("rope_type") or params.get("type")
    if rope_type not in ("yarn", "longrope"):
        return 1.0
    given = params.get("attention_factor")
    if isinstance(given, (int, float)):
        return float(given)
    original = params.get("original_max_position_embeddings") or cfg_get(
        config, "original_max_position_embeddings"
    )
    factor = params.get("factor")
    if factor is None and original:
        factor = cfg_get(config, "max_position_embeddings") / original
    if not isinstance(factor, (int, float)) or factor <= 1:
        return 1.0
    if rope_type == "longrope":
        return math.sqrt(1 + math.log(factor) / math.log(original)) if original else 1.0

    def mscale(value: float = 1.0) -> float:
        return 0.1 * value * math.log(factor) + 1.0

    mu, mu_all = params.get("mscale"), params.get("mscale_all_dim")
    return float(mscale(mu) / mscale(mu_all)) if mu and mu_all else mscale()


def config_flags(config: object, head_dim: int, block: int) -> tuple[bool, dict[str, object]]:
    """(rotary, flags) that a config alone tells: rotary / partial rotary, ALiBi, soft-cap,
    relative position bias, sliding window. ``block`` is the layer's index in its stack."""
    flags: dict[str, object] = {}
    alibi = (
        bool(cfg_get(config, "alibi"))
        or bool(cfg_get(cfg_get(config, "attn_config"), "alibi"))  # MPT
        or cfg_get(config, "model_type") == "bloom"
    )
    rotary = not alibi and any(
        cfg_get(config, key) is not None
        for key in (
            "rope_parameters",
            "rope_theta",
            "rope_scaling",
            "rotary_dim",
            "rotary_pct",
            "rotary_emb_base",
            "global_rope_theta",
            "rotary_value",  # RoFormer (rotary sinusoidal positions; True: values rotated too)
        )
    )
    no_rope = cfg_get(config, "no_rope_layers")  # Llama-4, SmolLM3: 0 marks a NoPE layer
    if (
        rotary
        and isinstance(no_rope, (list, tuple))
        and block < len(no_rope)
        and not no_rope[block]
    ):
        rotary = False
    if alibi:
        flags["alibi"] = True
    if rotary:
        flags["rotary"] = True
        fraction = cfg_get(config, "partial_rotary_factor", "rotary_pct")
        if fraction is None:  # transformers ≥ 5 keeps it inside rope_parameters
            params = cfg_get(config, "rope_parameters")
            layer_types = cfg_get(config, "layer_types")
            if (  # per layer type (MiMo-V2-Flash, Gemma-3): {layer_type: {...}}
                isinstance(params, Mapping)
                and isinstance(layer_types, (list, tuple))
                and block < len(layer_types)
                and isinstance(params.get(layer_types[block]), Mapping)
            ):
                params = params[layer_types[block]]
            fraction = cfg_get(params, "partial_rotary_factor")
        rdim = _pos_int(cfg_get(config, "rotary_dim"))
        if fraction is None and rdim is not None:
            fraction = rdim / head_dim
        if isinstance(fraction, (int, float)) and 0 < fraction < 1:
            flags["partial_rotary"] = float(fraction)
        factor = rope_attention_factor(config, block)
        if factor != 1.0:
            flags["rope_attention_factor"] = factor
    softcap = cfg_get(config, "attn_logit_softcapping")
    if isinstance(softcap, (int, float)) and softcap > 0:
        flags["softcap"] = float(softcap)
    if cfg_get(config, "talking_head"):  # DeBERTa v1: head_logits_proj / head_weights_proj
        flags["attention_form"] = TALKING_HEADS
    value_scale = cfg_get(config, "attention_value_scale")  # MiMo-V2-Flash: v ← c·v
    if isinstance(value_scale, (int, float)) and not isinstance(value_scale, bool):
        if value_scale != 1:
            flags["value_scale"] = float(value_scale)
    pos_type = cfg_get(config, "position_embedding_type", "position_embeddings_type")
    if pos_type == "rotary" and not alibi:  # Wav2Vec2-Conformer's position_embeddings_type
        rotary, flags["rotary"] = True, True
    if (
        cfg_get(config, "relative_attention_num_buckets") is not None
        or cfg_get(config, "relative_attention") is True
        or (isinstance(pos_type, str) and pos_type.startswith("relative"))
    ):
        flags["relative_position_bias"] = True
    window = _pos_int(cfg_get(config, "sliding_window"))
    layer_types = cfg_get(config, "layer_types")
    if window and cfg_get(config, "use_sliding_window") is not False:
        if not isinstance(layer_types, (list, tuple)) or (
            block < len(layer_types) and layer_types[block] == "sliding_attention"
        ):
            flags["sliding_window"] = window
    kinds = cfg_get(config, "attention_layers")  # GPT-Neo: "global" / "local" per layer
    if isinstance(kinds, (list, tuple)) and block < len(kinds) and kinds[block] == "local":
        flags["sliding_window"] = _pos_int(cfg_get(config, "window_size")) or True
    local = _pos_int(cfg_get(config, "local_attention"))
    every = _pos_int(cfg_get(config, "global_attn_every_n_layers"))
    if local and every and block % every:  # ModernBERT's local layers
        flags["sliding_window"] = local
    return rotary, flags


#: the attention_form of DeBERTa v1 with ``talking_head``
TALKING_HEADS = "talking heads: scores and probabilities are mixed across heads (H×H maps)"
#: attention modules (last name) whose output the parent passes through one more linear map
#: (TimeSformer: temporal_attention → temporal_dense): flag ``post_projection`` = its name.
POST_PROJECTIONS = {"temporal_attention": "temporal_dense"}


def _post_projection(name: str, has: Callable[[str], bool]) -> str | None:
    """The parent's extra linear map after ``name``'s W_O (:data:`POST_PROJECTIONS`), if any."""
    parent, _, last = name.rpartition(".")
    extra = POST_PROJECTIONS.get(last)
    return extra if extra is not None and has(_join(parent, extra)) else None


def gqa_note(H: int, Hkv: int) -> str:
    """The note of a layer whose H query heads share H_kv key/value heads."""
    return f"grouped-query attention: {Hkv} key/value heads shared by {H} query heads ({H // Hkv} each)"


def _notes_for(
    plan_flags: Mapping[str, object], kind: str, H: int, Hkv: int | None
) -> tuple[str, ...]:
    notes: list[str] = []
    if kind == "cross":
        notes.append(
            "cross-attention: keys/values read another sequence (an encoder's states, another modality)"
        )
    if Hkv is not None and Hkv != H:
        notes.append(gqa_note(H, Hkv))
    if plan_flags.get("rotary"):
        notes.append("rotary embeddings: QK circuit at relative offset 0")
        if "partial_rotary" in plan_flags:
            notes.append(
                f"rotary applies to a fraction {plan_flags['partial_rotary']} of each head"
            )
    if plan_flags.get("alibi"):
        notes.append("ALiBi: a per-head linear position bias is added to the QK scores")
    if "attention_form" in plan_flags:
        notes.append(
            f"not plain softmax attention ({plan_flags['attention_form']}): the spectra describe "
            "W_Q·W_Kᵀ and W_V·W_O, not the model's attention map alone"
        )
    if "qk_norm" in plan_flags:
        notes.append(
            f"QK-norm ({plan_flags['qk_norm']}): q and k are normalized before the product; W_QK is the raw W_Q W_Kᵀ"
        )
    if "rope_attention_factor" in plan_flags:
        m = plan_flags["rope_attention_factor"]
        notes.append(
            f"rotary cos/sin scaled by {m:.4g}: the rotated part of q·kᵀ by {m:.4g}²"
            + (
                " (not in the scale: partial rotary)"
                if "partial_rotary" in plan_flags
                else " (in the scale)"
            )
        )
    if "softcap" in plan_flags:
        notes.append(f"logit soft-cap {plan_flags['softcap']}: scores pass through c·tanh(s/c)")
    if plan_flags.get("attention_sinks"):
        notes.append(
            "attention sinks: a learned per-head logit joins each softmax (rows sum to < 1); not part of W_QK"
        )
    if plan_flags.get("output_gate"):
        notes.append(
            "output gate: each head's context is multiplied by a gate computed from the input "
            "before W_O; the OV circuit shown is the ungated one"
        )
    if "value_scale" in plan_flags:
        notes.append(
            f"values multiplied by {plan_flags['value_scale']:.4g}: the model's OV circuit is "
            "that multiple of the W_V·W_O shown"
        )
    if "per_dim_scale" in plan_flags:
        notes.append(
            f"per-dimension query scale: q is multiplied by softplus({plan_flags['per_dim_scale']}) "
            "before the product, so the model's QK circuit is W_Q·diag(s)·W_Kᵀ; W_Q is reported "
            "raw (folding diag(s) into W_Q would be exact — it is one fixed diagonal per layer)"
        )
    if plan_flags.get("relative_position_bias"):
        notes.append("relative position scores are added to the QK scores and are not part of W_QK")
    if "content_bias" in plan_flags:
        notes.append(
            f"content bias: a learned per-head vector ({plan_flags['content_bias']}) is added to "
            "every query before the product with the keys, so each key j gains the score "
            "u·(x_j W_K^h), outside W_Q·W_Kᵀ"
        )
    if "segment_bias" in plan_flags:
        notes.append(
            f"segment scores from {plan_flags['segment_bias']} (whether tokens i and j are in "
            "different segments) are added to the QK scores and are not part of W_QK"
        )
    if "grouped_projections" in plan_flags:
        notes.append(
            f"grouped 1×1 convolutions ({plan_flags['grouped_projections']} groups): each "
            "projection is block-diagonal, so a head's W_Q, W_K, W_V are zero outside the input "
            "channels of its group and the circuits are those of the block-diagonal maps"
        )
    if "sliding_window" in plan_flags:
        notes.append(f"sliding window of {plan_flags['sliding_window']} positions")
    if "span_convolution" in plan_flags:
        notes.append(
            f"mixed block: the out-projection also reads {plan_flags['span_convolution']} "
            "span-convolution heads (input columns [2, H, r][1]); they are not attention and "
            "not part of W_O"
        )
    if plan_flags.get("value_norm"):
        notes.append(
            "value norm: each head's values are RMS-normalised (per token) before the softmax "
            "average; the OV circuit shown is W_V·W_O without that normalisation"
        )
    if plan_flags.get("clipped_linears"):
        notes.append(
            "clipped projections: the model clamps the inputs and outputs of q/k/v/o to learned "
            "ranges; the factors are exact inside those ranges"
        )
    if "post_projection" in plan_flags:
        notes.append(
            f"the output passes through {plan_flags['post_projection']} (one more linear map) "
            "after W_O; the OV circuit shown ends at W_O"
        )
    if "kv_shared" in plan_flags:
        notes.append(
            f"KV-shared layer: its keys and values are those {plan_flags['kv_shared']} computed "
            "from that layer's input, so W_K and W_V are that layer's and the QK circuit maps "
            "between two points of the residual stream"
        )
    if plan_flags.get("values_from_keys"):
        notes.append("values are the key projection's output (attention_k_eq_v): W_V = W_K")
    return tuple(notes)


def finish_notes(plan: AttentionPlan) -> AttentionPlan:
    """Fill ``plan.notes`` from its flags (after ``n_kv_heads`` is known; a gated q adds the
    ``output_gate`` flag first); a rotary embedding
    that scales cos and sin by m (YaRN, LongRoPE: flag ``rope_attention_factor``) multiplies
    the whole head's scores by m² when it rotates the whole head, so the scale takes it."""
    if plan.q_gate:  # gated attention: the gate rows of q (live and checkpoint plans alike)
        plan.flags["output_gate"] = True
    if plan.o_parts > 1:  # ConvBERT: the out-projection also reads span-convolution heads
        plan.flags["span_convolution"] = plan.n_heads
    factor = plan.flags.get("rope_attention_factor")
    if plan.rotary and isinstance(factor, float) and "partial_rotary" not in plan.flags:
        plan.scale *= factor**2
    plan.notes = plan.notes + _notes_for(plan.flags, plan.kind, plan.n_heads, plan.n_kv_heads)
    if plan.v_head_dim is not None:  # MiMo-V2-Flash
        plan.notes += (
            f"value heads of size {plan.v_head_dim}, query/key heads of size {plan.head_dim}: "
            f"the OV circuit has rank ≤ {plan.v_head_dim}, the QK circuit ≤ {plan.head_dim}",
        )
    return plan


# ------------------------------------------------------------------------------- live modules


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _sub(module: nn.Module, path: str) -> nn.Module | None:
    """``module.get_submodule(path)``, or None where there is none: read from the registered
    children (``_modules``) without raising, as the name tables probe many absent names."""
    sub: nn.Module | None = module
    for part in path.split(".") if path else ():
        sub = sub._modules.get(part)  # type: ignore[union-attr]
        if sub is None:
            return None
    return sub


def is_lora_layer(module: nn.Module) -> bool:
    """A PEFT LoRA layer: a ``base_layer`` plus ``lora_A`` / ``lora_B`` dictionaries."""
    return (
        isinstance(getattr(module, "base_layer", None), nn.Module)
        and isinstance(getattr(module, "lora_A", None), nn.ModuleDict)
        and isinstance(getattr(module, "lora_B", None), nn.ModuleDict)
    )


#: child names under which a wrapper holds the linear layer that is its projection, as its only
#: child and with no parameters of its own (Gemma-4 vision: ``Gemma4ClippableLinear.linear``,
#: which may clamp its input and output: flag ``clipped_linears``; Moshi's ``MoshiLinear`` without
#: per-codebook weights). A wrapper with more inside (Inkling-2's query projection and its L2
#: clip) is not unwrapped.
LINEAR_WRAPPERS = ("linear",)


def _projection(module: nn.Module | None) -> tuple[str, nn.Module] | None:
    """(weight suffix, layer holding the weight) of a linear-like projection: ``nn.Linear``,
    transformers' ``Conv1D``, a PEFT LoRA layer around one (→ "base_layer.weight"), or a wrapper
    holding one under a :data:`LINEAR_WRAPPERS` name (→ "linear.weight")."""
    if module is None:
        return None
    if is_lora_layer(module):
        inner = _projection(module.base_layer)
        return None if inner is None else (_join("base_layer", inner[0]), inner[1])
    for child in LINEAR_WRAPPERS:  # only child, no parameters of its own: nothing else to do
        wrapped = getattr(module, child, None)
        if (
            isinstance(wrapped, nn.Linear)
            and list(module.children()) == [wrapped]
            and next(module.parameters(False), None) is None
        ):
            return _join(child, "weight"), wrapped
    weight = getattr(module, "weight", None)
    if isinstance(weight, Tensor) and weight.dim() == 2:
        return "weight", module
    return None


def _is_in_out(layer: nn.Module) -> bool:
    return type(layer).__name__ == "Conv1D"


def _find(module: nn.Module, names: Iterable[str]) -> tuple[str, nn.Module] | None:
    """(weight name relative to ``module``, layer) of the first projection named in ``names``."""
    for name in names:
        sub = _sub(module, name)
        found = _projection(sub) if sub is not module else None
        if found is not None:
            return _join(name, found[0]), found[1]
    return None


def _bert_self(module: nn.Module) -> str | None:
    """Name of the one child holding query/key/value (BERT's ``self``, DeBERTa's ``self``)."""
    for child_name, child in module.named_children():
        if all(_find(child, names) for names in (Q_NAMES, K_NAMES, V_NAMES)):
            return child_name
    return None


def tower_config(model: nn.Module, name: str) -> object:
    """The config of the nearest module at or above ``name`` that has one (the tower's)."""
    parts = name.split(".") if name else []
    for i in range(len(parts), -1, -1):
        sub = _sub(model, ".".join(parts[:i]))
        config = getattr(sub, "config", None)
        if config is not None and not isinstance(config, (int, float, str)):
            return config
    return None


_H_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "heads", "nhead")
_R_ATTRS = (
    "head_dim",
    "head_size",
    "attention_head_size",
    "key_value_proj_dim",
    "d_kv",
    "dim_per_head",
)
_KV_ATTRS = ("num_key_value_heads", "num_kv_heads", "kv_heads", "n_head_kv", "n_kv_heads")


def _first_int(objs: Iterable[object], names: Iterable[str]) -> int | None:
    names = tuple(names)
    for obj in objs:
        for attr in names:
            value = _pos_int(cfg_get(obj, attr))
            if value is not None:
                return value
    return None


def _is_cross(module: nn.Module, name: str, inner: nn.Module | None) -> bool:
    if any(bool(getattr(m, "is_cross_attention", False)) for m in (module, inner) if m is not None):
        return True
    if name.rsplit(".", 1)[-1] in CROSS_NAMES:
        return True
    return any("Cross" in type(m).__name__ for m in (module, inner) if m is not None)


#: attention modules whose q/k/v/o the name table finds but whose attention is not
#: softmax(scale·q·kᵀ + bias)·v then W_O, found by ``benchmarks/arch_survey.py --verify``: their
#: W_Q·W_Kᵀ and W_V·W_O spectra describe the weights, not the model's attention map alone.
#: Flag "attention_form" (and a note) = what differs.
ATTENTION_FORMS: dict[str, str] = {
    "DiffLlamaAttention": "differential attention, the difference of two softmax maps",
    "DogeAttention": "a dynamic mask bias computed from the values is added to the scores",
    "InklingAttention": "convolutions act on the keys and values",
    "BitNetAttention": "a norm sits between the heads and the output projection",
    "LongformerSelfAttention": "sliding-window attention plus global tokens with their own q/k/v",
    "PegasusXGlobalLocalAttention": "block-local attention plus global tokens",
    "NystromformerSelfAttention": "a Nyström approximation of the softmax",
    "YosoSelfAttention": "an LSH (YOSO) approximation of the softmax",
    "T5Gemma2MergedAttention": "self- and cross-attention share one softmax",
}


def _module_flags(module: nn.Module, H: int, r: int, config_window: bool) -> dict[str, object]:
    """Flags only a live module tells: QK-norm width, its own soft-cap / window / rotary dims,
    and an attention form other than softmax(scale·q·kᵀ) (:data:`ATTENTION_FORMS`)."""
    flags: dict[str, object] = {}
    form = ATTENTION_FORMS.get(type(module).__name__)
    if form is not None:
        flags["attention_form"] = form
    for qn in ("q_norm", "q_layernorm", "query_norm", "qk_norm"):  # qk_norm: Llama-4's L2 norm
        norm = getattr(module, qn, None)
        if isinstance(norm, nn.Module) and not isinstance(norm, nn.Identity):
            # "full" only when one norm spans all H·r features (OLMo-2's RMSNorm(H·r)); a
            # gain of shape (H, r) normalises each head on its own (Cohere's LayerNorm((H, r)))
            weight = getattr(norm, "weight", None)
            shape = getattr(norm, "normalized_shape", None)
            width = (
                (weight.numel() if weight.dim() == 1 else 0)
                if isinstance(weight, Tensor)
                else (
                    math.prod(shape)
                    if isinstance(shape, tuple) and len(shape) == 1
                    else (shape if isinstance(shape, int) else 0)
                )
            )
            flags["qk_norm"] = "full" if width == H * r and H > 1 else "per_head"
            break
    for attr in ("attn_logit_softcapping", "attention_logits_soft_cap"):  # Gemma-2, Gemma-4 audio
        softcap = getattr(module, attr, None)
        if isinstance(softcap, (int, float)) and not isinstance(softcap, bool) and softcap > 0:
            flags["softcap"] = float(softcap)
            break
    if isinstance(getattr(module, "sinks", None), Tensor):  # GPT-OSS: a logit per head
        flags["attention_sinks"] = True
    if any(isinstance(getattr(module, g, None), nn.Module) for g in GATE_NAMES):
        flags["output_gate"] = True
    if _has_value_norm(module):
        flags["value_norm"] = True
    if any(getattr(c, "use_clipped_linears", False) for c in module.children()):
        flags["clipped_linears"] = True
    chunk = _chunked_window(module)
    if chunk is not None:  # Gemma-4 audio: chunked local attention, past + 1 + future keys
        flags["sliding_window"] = chunk[1] + 1 + chunk[2]
    window = _pos_int(getattr(module, "sliding_window", None))
    if window and not config_window:  # the config's window wins (ModernBERT keeps window/2 + 1)
        flags["sliding_window"] = window
    if getattr(module, "has_relative_attention_bias", None) is not None or any(
        is_relative_position_param(n) for n, _ in module.named_parameters()
    ):
        flags["relative_position_bias"] = True
    return flags


def _has_value_norm(module: nn.Module) -> bool:
    """Gemma-4 / Gemma-3n: ``v_norm`` RMS-normalises each head's values (no gain)."""
    v_norm = getattr(module, "v_norm", None)
    return isinstance(v_norm, nn.Module) and not isinstance(v_norm, nn.Identity)


def is_relative_position_param(name: str) -> bool:
    """``name`` (relative to an attention module; a live parameter or a checkpoint tensor) is a
    relative-position parameter: T5/BERT-style biases, conformers', Gemma-4 / Gemma-3n audio's."""
    return (
        "relative_position_bias" in name
        or "relative_attention_bias" in name
        or name.split(".")[0]
        in (
            "pos_bias_u",
            "linear_pos",
            "distance_embedding",
            "relative_k_proj",
            "relative_position_embedding",
        )
    )


def _chunked_window(module: nn.Module) -> tuple[int, int, int, str] | None:
    """(chunk size, past, future, whose mask) of a chunked local attention, else None.

    Gemma-4 audio: blocks of ``chunk_size`` queries, each gathering a context of
    ``max_past_horizon`` = L − 1 earlier and ``max_future_horizon`` = R later positions around
    its block (L, R: ``attention_context_left`` / ``_right``); the encoder's mask
    (``sliding_window_mask_function((L − 1, R))``: 0 ≤ i − j < L − 1 or 0 < j − i < R) then keeps
    for query i the keys i − (L − 2) … i + (R − 1), one fewer on each side than the context.
    Gemma-3n audio masks inside the module (``local_causal_valid_mask``): keys i − (L − 1) …
    i + R, the whole context.
    """
    past, future = (getattr(module, a, None) for a in ("max_past_horizon", "max_future_horizon"))
    own_mask = isinstance(getattr(module, "local_causal_valid_mask", None), Tensor)
    return chunked_window(getattr(module, "chunk_size", None), past, future, own_mask)


def chunked_window(
    chunk: object, past: object, future: object, own_mask: bool
) -> tuple[int, int, int, str] | None:
    """:func:`_chunked_window` from the module's values: ``chunk_size``, ``max_past_horizon``,
    ``max_future_horizon`` and whether it masks inside (``local_causal_valid_mask``)."""
    size = _pos_int(chunk)
    if size is None or not all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (past, future)
    ):
        return None
    if own_mask:
        own = "the module's own mask over the block's gathered context"
        return size, int(past), int(future), own  # type: ignore[call-overload]
    encoder = "the encoder's mask; the block's gathered context is one wider on each side"
    return size, max(int(past) - 1, 0), max(int(future) - 1, 0), encoder  # type: ignore[call-overload]


def chunked_window_note(chunk: tuple[int, int, int, str]) -> str:
    """The note of a chunked local attention (:func:`chunked_window`)."""
    return (
        f"chunked local attention: blocks of {chunk[0]} queries; query i reads keys "
        f"i − {chunk[1]} … i + {chunk[2]} ({chunk[3]}), the positions counted by "
        "sliding_window"
    )


def _query_dim_scale(module: nn.Module, name: str) -> dict[str, object]:
    """Flag ``per_dim_scale``: the full name of a learned per-dimension query scale (Gemma-4
    audio: q ← q·softplus(per_dim_scale), a diagonal between W_Q and W_Kᵀ), left out of W_Q."""
    param = getattr(module, "per_dim_scale", None)
    return (
        {"per_dim_scale": _join(name, "per_dim_scale")} if isinstance(param, nn.Parameter) else {}
    )


def _rotary_in_tower(model: nn.Module, name: str) -> bool:
    parts = name.split(".") if name else []
    for i in range(len(parts), -1, -1):
        sub = _sub(model, ".".join(parts[:i]))
        if sub is not None and getattr(sub, "config", None) is not None:
            return any("Rotary" in type(m).__name__ for m in sub.modules())
    return any("Rotary" in type(m).__name__ for m in model.modules())


def _block_index(name: str) -> int:
    numbers = re.findall(r"\.(\d+)(?:\.|$)", f".{name}")
    return int(numbers[-1]) if numbers else 0


def kv_producers(config: object) -> dict[int, int]:
    """KV sharing (Gemma-3n, Gemma-4 text): consumer layer → the layer whose keys and values it
    reuses, as transformers' ``kv_sharing_modes``: the last ``num_kv_shared_layers`` of the
    ``num_hidden_layers`` layers compute no keys or values and read those of the last earlier
    layer with the same ``layer_types`` entry. Empty for a config without sharing."""
    n = _pos_int(cfg_get(config, "num_hidden_layers"))
    shared = _pos_int(cfg_get(config, "num_kv_shared_layers"))
    types = cfg_get(config, "layer_types")
    if n is None or shared is None or not isinstance(types, (list, tuple)) or len(types) < n:
        return {}
    first = n - shared
    out: dict[int, int] = {}
    for i in range(max(first, 0), n):
        earlier = [j for j in range(first) if types[j] == types[i]]
        if earlier:
            out[i] = earlier[-1]
    return out


def _with_block(name: str, block: int) -> str:
    """``name`` with its last numeric path component (the layer index) replaced by ``block``."""
    parts = name.split(".")
    last = max(i for i, p in enumerate(parts) if p.isdigit())
    return ".".join([*parts[:last], str(block), *parts[last + 1 :]])


def _kv_source(config: object, name: str, block: int) -> str | None:
    """The module whose keys and values the KV-shared layer ``name`` (layer ``block``) reads."""
    producer = kv_producers(config).get(block)
    if producer is None or not any(p.isdigit() for p in name.split(".")):
        return None
    return _with_block(name, producer)


Found = tuple[str, nn.Module] | None  # (relative name, module) of a projection, as _find


def _shared_kv(
    model: nn.Module, name: str, module: nn.Module, k: Found, v: Found
) -> tuple[str, Found, Found, dict[str, object]] | None:
    """(module holding k and v, k, v, flags) of the attention module ``name``: its own, or a
    KV-shared layer's producer's (flag ``kv_shared``; None when that layer is not found); under
    Gemma-4's ``attention_k_eq_v`` a layer without ``v_proj`` has v = k (``values_from_keys``)."""
    kv_name, flags = name, {}
    if getattr(module, "is_kv_shared_layer", False) is True:
        index = _first_int((module,), ("layer_idx",)) or _block_index(name)
        source = _kv_source(tower_config(model, name), name, index)
        producer = _sub(model, source) if source is not None else None
        if source is None or producer is None:
            return None
        kv_name, flags = source, {"kv_shared": source}
        k, v = _find(producer, K_NAMES), _find(producer, V_NAMES)
        if _has_value_norm(producer):  # the producer's norm acts on these values
            flags["value_norm"] = True
    if k and not v and getattr(_sub(model, kv_name), "use_alternative_attention", False) is True:
        v, flags["values_from_keys"] = k, True  # Gemma-4 attention_k_eq_v: V = K's output
    return kv_name, k, v, flags


def plan_from_module(
    model: nn.Module, name: str, module: nn.Module, layer: int
) -> AttentionPlan | None:
    """The plan of ``module`` (at ``name`` in ``model``) if it is an attention module with q, k,
    v, o projections the name table knows (or a fused one with a known split), else None.

    Head counts come from the module's attributes, then its tower's config; the key/value
    head count from the key projection's width (separate) or the attributes (fused).
    """
    arch = _BY_CLASS.get(type(module).__name__, GENERIC)
    if arch.stored != "linear":
        groups = _conv_groups(model, name, module) if arch.stored == "conv1x1" else None
        if arch.stored == "conv1x1" and groups is None:
            return None
        has = {n for n, _ in model.named_parameters()}.__contains__
        return stored_plan(name, layer, arch, tower_config(model, name), has, groups)
    if arch.names:  # Funnel, CPM-Ant: the row names q/k/v/o
        has = {n for n, _ in model.named_parameters()}.__contains__
        return named_plan(name, layer, arch, tower_config(model, name), has)
    if arch.layout == "moa":
        block = _first_int((module,), ("layer_idx",))
        block = block if block is not None else _block_index(name)
        return _moa_plan(name, layer, arch, tower_config(model, name), block)
    if arch.fused and _find(module, [arch.fused]) is None:  # a class name shared by families
        arch = GENERIC  # (timm's and OpenAI GPT's are both "Attention")
    o = _find(module, arch.o_names + O_NAMES)
    if o is None:
        return None
    q = _find(module, Q_NAMES)
    k = _find(module, K_NAMES)
    v = _find(module, V_NAMES)
    fused = _find(module, [arch.fused] if arch.fused else FUSED_NAMES)
    shared = _shared_kv(model, name, module, k, v) if q and fused is None else (name, k, v, {})
    if shared is None:
        return None
    kv_name, k, v, kv_flags = shared
    inner: nn.Module | None = None
    inner_name = ""
    if fused is not None and arch.fused and "." in arch.fused:  # fused inside a BERT-style child
        inner_name = arch.fused.rsplit(".", 1)[0]
        inner = module.get_submodule(inner_name)
    if not (q and k and v) and fused is None:
        self_name = _bert_self(module)
        bert_o = o[0] == "output.dense.weight" or o[0].startswith("output.dense.")
        own_o = o[0].split(".")[0] in arch.o_names  # Gemma-3n audio: attn.{q,k,v} + post
        if self_name is None or not (bert_o or own_o):
            return None
        inner, inner_name = module.get_submodule(self_name), self_name
        q, k, v = (_find(inner, names) for names in (Q_NAMES, K_NAMES, V_NAMES))
        assert q and k and v
        q, k, v = ((_join(self_name, t[0]), t[1]) for t in (q, k, v))  # type: ignore[assignment]
    elif o[0].startswith("output.") and o[0] != "output.weight" and inner is None:
        return None  # q/k/v here but the output projection two levels down: not this module
    config = tower_config(model, name)
    objs = (module, inner, config)
    H = _first_int(objs, _H_ATTRS)
    q_layer = (q or fused)[1]  # type: ignore[index]
    q_width = _out_dim(q_layer.weight, _is_in_out(q_layer))
    r = _head_size(module, inner, H, q_width if q and not arch.q_gate else None)
    if r is None:
        r = _first_int((config,), ("head_dim", "d_kv"))
        if r is not None and H is not None and H * r != (q_width if q else H * r):
            r = None
    if H is None and r is not None and q is not None:
        H = q_width // r
    if H is None:
        return None
    if r is None:  # the output projection reads H·r features
        r = int(o[1].weight.shape[0] if _is_in_out(o[1]) else o[1].weight.shape[1]) // H
    if r <= 0:
        return None
    block = _first_int((module,), ("layer_idx",))
    block = block if block is not None else _block_index(name)
    kind = "cross" if _is_cross(module, name, inner) else "self"
    in_out = _is_in_out((fused or q)[1])  # type: ignore[index]
    plan = AttentionPlan(
        name=name,
        layer=layer,
        family=arch.family,
        o=_join(name, o[0]),
        n_heads=H,
        head_dim=r,
        scale=0.0,
        in_out=in_out,
        kind=kind,
    )
    if fused is not None and not (q and k and v):
        layout = arch.layout if arch.fused else FUSED_NAMES.get(fused[0].split(".")[0])
        Hkv = _first_int(objs, _KV_ATTRS)
        if type(module).__name__ == "FalconAttention":
            layout, Hkv = _falcon_layout(module, H, Hkv)
        if layout is None:
            return None
        if kind == "cross" and q is not None:  # GPT-2 cross-attention: q_attn + fused [k | v]
            layout = "kv"
            plan.q = _join(name, q[0])
        elif bool(getattr(module, "multi_query", False)) and Hkv is None:
            Hkv = 1
        plan.fused, plan.layout, plan.n_kv_heads = _join(name, fused[0]), layout, Hkv or H
    else:
        assert q and k and v
        plan.q, plan.k, plan.v = _join(name, q[0]), _join(kv_name, k[0]), _join(kv_name, v[0])
        plan.n_kv_heads = _out_dim(k[1].weight, _is_in_out(k[1])) // r
        plan.q_gate = arch.q_gate
        rv = _pos_int(getattr(module, "v_head_dim", None))  # MiMo-V2-Flash: r_v ≠ r
        plan.v_head_dim = rv if rv is not None and rv != r else None
    plan.o_parts = arch.o_parts
    plan.scale = _live_scale(module, inner, arch, config, r, block)
    rotary, flags = config_flags(config, r, block)
    if not rotary and config is None and _rotary_in_tower(model, name):
        rotary, flags["rotary"] = True, True
    elif rotary is False and _rotary_in_tower(model, name) and not flags.get("alibi"):
        rotary, flags["rotary"] = True, True
    use_rope = getattr(module, "use_rope", None)  # Llama-4 / SmolLM3 NoPE layers: 0 or False
    if isinstance(use_rope, (bool, int)) and not use_rope:
        rotary = False
        for key in ("rotary", "partial_rotary", "rope_attention_factor"):
            flags.pop(key, None)
    for mod in (module, inner):
        if mod is None:
            continue
        flags.update(_module_flags(mod, H, r, "sliding_window" in flags))
        rdim = _pos_int(getattr(mod, "rotary_ndims", None) or getattr(mod, "rotary_dim", None))
        if rotary and rdim and rdim < r:
            flags["partial_rotary"] = rdim / r
    flags.update(_query_dim_scale(module, name))
    if inner is not None:
        flags.update(_query_dim_scale(inner, _join(name, inner_name)))
    chunk = _chunked_window(module) or (_chunked_window(inner) if inner is not None else None)
    if chunk is not None:
        plan.notes += (chunked_window_note(chunk),)
    clip = getattr(module, "gradient_clipping", None)  # Gemma-3n audio: clamp after `post`
    if isinstance(clip, Tensor) and clip.numel() == 1:
        plan.notes += (
            f"the module clamps its out-projection's output to ±{float(clip):.3g}; the factors "
            "are exact inside that range",
        )
    if kind == "cross":
        flags["cross_attention"] = True
        flags.pop("rotary", None)
        flags.pop("partial_rotary", None)
        rotary = False
    post = _post_projection(name, lambda n: _projection(_sub(model, n)) is not None)
    if post is not None:
        flags["post_projection"] = post
    flags.update(kv_flags)
    plan.rotary, plan.flags = rotary, flags
    return finish_notes(plan)


def _conv_groups(model: nn.Module, name: str, module: nn.Module) -> dict[str, int] | None:
    """Group counts of a live SqueezeBERT attention module's 1×1 convolutions (part → G): its
    query, key, value and its block's ``post_attention.conv1d``; None if one is not a Conv1d."""
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    convs = {p: _sub(module, child) for p, child, _, _ in SQUEEZEBERT_GROUPS}
    convs["o"] = _sub(model, _join(parent, SQUEEZEBERT_O.rsplit(".", 1)[0]))
    if not all(isinstance(c, nn.Conv1d) for c in convs.values()):
        return None
    return {p: int(c.groups) for p, c in convs.items()}  # type: ignore[union-attr]


def _head_size(
    module: nn.Module, inner: nn.Module | None, H: int | None, q_width: int | None
) -> int | None:
    """The head size from the module's attributes (:data:`_R_ATTRS`, first set wins), except
    that with a separate q of width ``q_width`` an attribute with H·r ≠ q_width is passed over
    (LXMERT's ``head_size`` is H·r; its ``attention_head_size`` is r)."""
    first = _first_int((module, inner), _R_ATTRS)
    if first is None or H is None or q_width is None or H * first == q_width:
        return first
    for attr in _R_ATTRS:
        value = _first_int((module, inner), (attr,))
        if value is not None and H * value == q_width:
            return value
    return first


def _falcon_layout(module: nn.Module, H: int, Hkv: int | None) -> tuple[str, int]:
    if getattr(module, "new_decoder_architecture", False):
        return "grouped", Hkv or H
    if getattr(module, "multi_query", False):
        return "qkv", 1
    return "head_qkv", H


def _live_scale(
    module: nn.Module,
    inner: nn.Module | None,
    arch: Architecture,
    config: object,
    r: int,
    block: int,
) -> float:
    if arch.scale == "qk_each":  # the module's `scaling` multiplies q and k each
        return _scale_qk_each(config, r, block)
    if arch.scale in ("gemma4_audio", "gemma3n_audio"):  # the module's own q_scale (· k_scale)
        for mod in (module, inner):
            qs = getattr(mod, "q_scale", None) if mod is not None else None
            ks = getattr(mod, "k_scale", 1.0)
            if isinstance(qs, Tensor) and qs.numel() == 1:  # Gemma-3n: a buffer
                qs = float(qs)
            if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (qs, ks)):
                return float(qs) * float(ks)  # type: ignore[arg-type]
        return SCALE_RULES[arch.scale][1](config, r, block)
    if arch.scale == "inv_sqrt":
        for mod in (module, inner):
            for attr in _SCALE_ATTRS:
                value = getattr(mod, attr, None) if mod is not None else None
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                    return float(value)
    if arch.scale == "gpt2":
        value = getattr(module, "scaling", None)
        if isinstance(value, (int, float)):
            return float(value)
        scale = r**-0.5 if getattr(module, "scale_attn_weights", True) else 1.0
        if getattr(module, "scale_attn_by_inverse_layer_idx", False):
            scale /= float(getattr(module, "layer_idx", 0) + 1)
        return scale
    if arch.scale in ("deberta", "deberta_v1"):
        pos = getattr(inner, "pos_att_type", None) or cfg_get(config, "pos_att_type") or []
        return SCALE_RULES[arch.scale][1]({"pos_att_type": list(pos)}, r, block)
    if arch.scale == "one":
        value = getattr(module, "scaling", None)
        return float(value) if isinstance(value, (int, float)) else 1.0
    for attr in ("scaling",):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return SCALE_RULES[arch.scale][1](config, r, block)


# ------------------------------------------------------------------------------- checkpoints


#: head sizes are a tower's own: a sub-config does not inherit them from the top-level config
#: (MusicFlamingo's top-level head_dim 1280 is not its Qwen2 text tower's; head counts are
#: inherited — BridgeTower's vision config takes num_attention_heads from the top level)
_TOWER_SHAPE_KEYS = ("head_dim", "d_kv")
#: path components (exact, or followed by "_…": ``vision_tower``, ``text_model``) that name a tower
_TOWER_WORDS = (
    ("vision_config", ("vision", "visual")),  # Qwen-VL / GLM-4V: model.visual.blocks.N
    ("text_config", ("language_model", "text")),
    ("encoder", ()),  # exact component only: a decoder's encoder_attn is the decoder's
    ("decoder", ()),
)


def _sub_config(config: Mapping[str, Any], prefix: str) -> Mapping[str, Any]:
    """The sub-config a tensor prefix belongs to (multi-tower configs: text/vision/encoder ...):
    ``<part>_config`` for a path component ``<part>`` (SAM-3's ``detr_decoder``), else by the
    words of the tower's name; the top-level config's other keys stay beneath it."""

    def tower(sub: Mapping[str, Any]) -> Mapping[str, Any]:
        below = {k: v for k, v in config.items() if k not in _TOWER_SHAPE_KEYS}
        return {**below, **sub}

    for part in prefix.split("."):
        sub = config.get(f"{part}_config")
        if part and isinstance(sub, Mapping) and part != "audio":  # audio: the rule below
            return tower(sub)
    parts = prefix.split(".")
    for key, words in _TOWER_WORDS:
        sub = config.get(key)
        named = (p == w or p.startswith(f"{w}_") for p in parts for w in words or (key,))
        if isinstance(sub, Mapping) and any(named):
            return tower(sub)
    sub = config.get("audio_config")  # only an audio tower a row plans (Gemma-4 audio)
    if (
        isinstance(sub, Mapping)
        and "audio" in prefix
        and str(sub.get("model_type", "")) in _BY_MODEL_TYPE
    ):
        return tower(sub)
    return config


def _layer_config(cfg: Mapping[str, Any], block: int) -> Mapping[str, Any]:
    """``cfg`` with one layer's own settings over it: Gemma-4's ``per_layer_config`` (keyed by
    layer index, saved as a string that may be zero-padded: "05") gives its full-attention
    layers their own ``head_dim`` (the config's ``global_head_dim``) and key/value head count."""
    per = cfg.get("per_layer_config")
    if not isinstance(per, Mapping):
        return cfg
    own = [v for k, v in per.items() if str(k).isdigit() and int(k) == block]
    return {**cfg, **own[0]} if own and isinstance(own[0], Mapping) else cfg


def _wrapped_weight(prefix: str, name: str, names: set[str], wrapped: bool) -> str | None:
    """``prefix.name.weight``, or with ``wrapped`` (:attr:`Architecture.linear_wrapped`) the
    same behind a :data:`LINEAR_WRAPPERS` child (``prefix.name.linear.weight``), if held."""
    wrappers = LINEAR_WRAPPERS if wrapped else ()
    for weight in ("weight", *(_join(w, "weight") for w in wrappers)):
        full = _join(_join(prefix, name), weight)
        if full in names:
            return full
    return None


def _checkpoint_module_flags(
    plan: AttentionPlan, arch: Architecture, cfg: Mapping[str, Any], names: set[str]
) -> None:
    """Flags and notes that the live rules (:func:`_module_flags`, :func:`_query_dim_scale`,
    :func:`_chunked_window`) read from a module, here from its tensor names and config: value
    norm (the row), clipped projections (``use_clipped_linears`` and wrapped weights), relative
    position parameters, a per-dimension query scale, and Gemma-4 audio's soft-cap and chunked
    window (the module attributes Gemma4AudioAttention sets from its config)."""
    prefix = plan.name
    own = [n[len(prefix) + 1 :] for n in names if n.startswith(prefix + ".")]
    flags = plan.flags
    if arch.value_norm:
        flags["value_norm"] = True
    wrapped = {n.rsplit(".", 2)[0] for n in own if n.rsplit(".", 2)[1:] == ["linear", "weight"]}
    if cfg.get("use_clipped_linears") is True and wrapped:
        flags["clipped_linears"] = True
    if any(is_relative_position_param(n) for n in own):
        flags["relative_position_bias"] = True
    if "per_dim_scale" in own:
        flags["per_dim_scale"] = _join(prefix, "per_dim_scale")
    if "gemma4_audio" not in arch.model_types:
        return
    softcap = cfg.get("attention_logit_cap")
    if isinstance(softcap, (int, float)) and not isinstance(softcap, bool) and softcap > 0:
        flags["softcap"] = float(softcap)
    left, right = cfg.get("attention_context_left"), cfg.get("attention_context_right")
    past = left - 1 if isinstance(left, int) and not isinstance(left, bool) else None
    chunk = chunked_window(cfg.get("attention_chunk_size"), past, right, False)
    if chunk is not None:
        flags["sliding_window"] = chunk[1] + 1 + chunk[2]
        plan.notes += (chunked_window_note(chunk),)


def _config_heads(
    cfg: Mapping[str, Any], prefix: str, arch: Architecture
) -> tuple[int, int] | None:
    """(H, r) of the attention module ``prefix`` from its (layer's) config, None if it has none."""
    H = _first_int(
        (cfg,), ("num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads")
    )
    if re.search(r"(^|\.)decoder\.", prefix):  # BART-style configs: the decoder's own count
        H = _first_int((cfg,), ("decoder_attention_heads", "num_decoder_attention_heads")) or H
    hidden = _first_int((cfg,), ("hidden_size", "n_embd", "d_model", "dim"))
    r = _first_int((cfg,), ("head_dim", "d_kv"))
    if H is None or (r is None and hidden is None):
        return None
    if arch.o_parts > 1:  # ConvBERT: H/head_ratio attention heads of d/(2·H/head_ratio)
        H = max(1, H // (_first_int((cfg,), ("head_ratio",)) or 1))
        r = r or hidden // H // arch.o_parts  # type: ignore[operator]
    return H, r or hidden // H  # type: ignore[operator]


def is_unloaded_mtp_layer(config: Mapping[str, Any], prefix: str) -> bool:
    """``prefix`` is in DeepSeek-V3's multi-token-prediction layer ``layers.<num_hidden_layers>``
    (an MLA model's block beyond the declared depth), which transformers does not load (its
    ``_keys_to_ignore_on_load_unexpected``): not planned, and not reported as missed."""
    cfg = _sub_config(config, prefix)
    arch = _BY_MODEL_TYPE.get(str(cfg.get("model_type", "")))
    declared = _pos_int(cfg.get("num_hidden_layers"))
    if arch is None or arch.layout != "mla" or declared is None:
        return False
    return re.search(r"(^|\.)\d+(\.|$)", prefix) is not None and _block_index(prefix) >= declared


def _checkpoint_prefixes(arch0: Architecture, names: set[str]) -> set[str]:
    """Candidate attention-module prefixes P of a checkpoint: ``P.<o>.weight`` for an output name
    (:data:`O_NAMES`, a row's ``o_names``; also behind a linear wrapper), JetMoE's expert output,
    and for the stored rows XLNet's ``P.{q,o}`` and SqueezeBERT's ``P.query.weight``; for a row
    with its own names (Funnel, CPM-Ant) ``P.<its q name>.weight``."""
    prefixes: set[str] = set()
    o_names = (*O_NAMES, *dict.fromkeys(n for a in _BY_MODEL_TYPE.values() for n in a.o_names))
    for full in names:
        if arch0.layout == "moa" and full.endswith("." + MOA_NAMES["o"]):
            prefixes.add(full[: -len(MOA_NAMES["o"]) - 1])
        if arch0.stored == "d_h_r" and full.endswith(".o") and full[:-2] + ".q" in names:
            prefixes.add(full[:-2])  # XLNet: P.q, P.k, P.v, P.o
        if arch0.stored == "conv1x1" and full.endswith(".query.weight"):
            prefixes.add(full[: -len(".query.weight")])  # SqueezeBERT: o in the block
        if arch0.names and full.endswith(f".{arch0.names[0]}.weight"):
            prefixes.add(full[: -len(f".{arch0.names[0]}.weight")])  # Funnel, CPM-Ant
        parts = full.split(".")
        if len(parts) > 2 and parts[-2] in LINEAR_WRAPPERS:  # P.o_proj.linear.weight
            full = ".".join(parts[:-2] + parts[-1:])
        for o_name in o_names:
            suffix = f"{o_name}.weight"
            if full == suffix or full.endswith("." + suffix):
                prefixes.add(full[: -len(suffix)].rstrip("."))
    return prefixes


def plan_from_checkpoint(
    config: Mapping[str, Any], tensor_names: Iterable[str]
) -> list[AttentionPlan]:
    """Plans of every attention module whose tensors are named in a checkpoint (no model built).

    ``config``: the parsed ``config.json``; ``tensor_names``: every tensor name in the checkpoint.
    A module is a prefix P with ``P.<o>.weight`` for an output name of :data:`O_NAMES` and either
    ``P.<q|k|v>.weight`` for names of the q/k/v tables (also under one child, BERT's ``self``)
    or a fused ``P.<fused>.weight``. Head counts, split spec, scale and flags come from the
    config (``model_type`` selects the family; see :data:`ARCHITECTURES`). Plans are ordered by
    their names with numbers compared as numbers.
    """
    names = set(tensor_names)
    arch0 = _BY_MODEL_TYPE.get(str(config.get("model_type", "")), GENERIC)
    prefixes = _checkpoint_prefixes(arch0, names)
    plans: list[AttentionPlan] = []

    def first(
        prefix: str, table: Iterable[str], under: str = "", wrapped: bool = False
    ) -> str | None:
        for n in table:
            full = _wrapped_weight(_join(prefix, under), n, names, wrapped)
            if full is not None:
                return full
        return None

    def natural(s: str) -> list[object]:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]

    for prefix in sorted(prefixes, key=natural):
        cfg = _layer_config(_sub_config(config, prefix), _block_index(prefix))
        arch = _BY_MODEL_TYPE.get(str(cfg.get("model_type", "")), arch0)
        if arch.layout == "mla":  # DeepSeek-V2/V3: rankdecay.mla, the rule of the live modules
            from .mla import mla_plan_from_checkpoint

            if is_unloaded_mtp_layer(config, prefix):
                continue
            mla = mla_plan_from_checkpoint(prefix, cfg, names, len(plans))
            plans.extend([mla] if mla is not None else [])  # type: ignore[list-item]
            continue
        if arch.stored != "linear":  # SqueezeBERT, XLNet: the rule of the live modules
            sp = stored_plan(prefix, len(plans), arch, cfg, names.__contains__)
            plans.extend([sp] if sp is not None else [])
            continue
        if arch.names:  # Funnel, CPM-Ant: the rule of the live modules
            npl = named_plan(prefix, len(plans), arch, cfg, names.__contains__)
            plans.extend([npl] if npl is not None else [])
            continue
        if arch.layout == "moa":
            if _join(prefix, MOA_NAMES["o"]) in names:
                moa = _moa_plan(prefix, len(plans), arch, cfg, _block_index(prefix))
                plans.extend([moa] if moa is not None else [])
            continue
        wrapped = arch.linear_wrapped
        o = first(prefix, (*arch.o_names, *O_NAMES), wrapped=wrapped)
        if o is None:  # a row's own out-projection name (`post`), or wrapped, under another row
            continue
        q, k, v = (first(prefix, t, wrapped=wrapped) for t in (Q_NAMES, K_NAMES, V_NAMES))
        fused = first(prefix, [arch.fused] if arch.fused else FUSED_NAMES)
        source = _kv_source(cfg, prefix, _block_index(prefix)) if q and fused is None else None
        if source is not None:  # a KV-shared layer (any k/v of its own on disk go unused)
            k, v = (first(source, t, wrapped=wrapped) for t in (K_NAMES, V_NAMES))
        if q and k and not v and cfg.get("attention_k_eq_v") is True:
            v = k  # Gemma-4 full-attention layers with attention_k_eq_v: no v_proj, V = K
        if fused is None and not (q and k and v) and _join(prefix, MHA_FUSED) in names:
            fused = _join(prefix, MHA_FUSED)  # torch.nn.MultiheadAttention inside a model
        if not (q and k and v) and fused is None:
            for under in ("self", "att"):  # BERT's self; LXMERT's cross-modal att
                q, k, v = (first(prefix, t, under) for t in (Q_NAMES, K_NAMES, V_NAMES))
                if q and k and v:
                    break
            if not (q and k and v):
                continue
        elif o.endswith("output.dense.weight") and o != _join(prefix, "output.dense.weight"):
            continue
        heads = _config_heads(cfg, prefix, arch)
        if heads is None:
            continue
        H, r = heads
        block = _block_index(prefix)
        kind = "cross" if prefix.rsplit(".", 1)[-1] in CROSS_NAMES else "self"
        plan = AttentionPlan(
            name=prefix,
            layer=len(plans),
            family=arch.family,
            o=o,
            n_heads=H,
            head_dim=r,
            scale=SCALE_RULES[arch.scale][1](cfg, r, block),
            in_out=arch.in_out,
            kind=kind,
            o_parts=arch.o_parts,
        )
        if q and k and v:
            plan.q, plan.k, plan.v, plan.q_gate = q, k, v, arch.q_gate
            Hkv = _first_int((cfg,), ("num_key_value_heads",))
            plan.n_kv_heads = Hkv if Hkv is not None and arch.layout == "separate" else None
            rv = _pos_int(cfg.get("v_head_dim")) if arch.v_head else None
            if arch.v_head:  # the key/value head count may change per layer: read the width
                plan.n_kv_heads = None
                plan.v_head_dim = rv if rv is not None and rv != r else None
        else:
            layout = arch.layout if arch.fused else FUSED_NAMES.get(fused.rsplit(".", 2)[-2])  # type: ignore[union-attr]
            layout = "qkv" if fused.endswith("." + MHA_FUSED) else layout  # type: ignore[union-attr]
            Hkv = _first_int((cfg,), ("num_key_value_heads", "num_kv_heads", "n_head_kv"))
            if cfg.get("model_type") == "falcon":
                if cfg.get("new_decoder_architecture"):
                    layout = "grouped"
                elif cfg.get("multi_query", True):
                    layout, Hkv = "qkv", 1
                else:
                    layout, Hkv = "head_qkv", H
            elif cfg.get("multi_query"):
                Hkv = 1
            if layout is None:
                continue
            if q is not None and kind == "cross":
                layout, plan.q = "kv", q
            plan.fused, plan.layout, plan.n_kv_heads = fused, layout, Hkv or H
        rotary, flags = config_flags(cfg, r, block)
        if kind == "cross":
            rotary = False
            flags = {k_: v_ for k_, v_ in flags.items() if "rotary" not in k_}
            flags["cross_attention"] = True
        plan.rotary, plan.flags = rotary, flags
        for qn in ("q_norm", "q_layernorm"):
            if _join(prefix, f"{qn}.weight") in names:
                plan.flags["qk_norm"] = "per_head"  # the width is checked when the tensor is read
        if _join(prefix, "sinks") in names:
            plan.flags["attention_sinks"] = True
        _checkpoint_module_flags(plan, arch, cfg, names)
        if source is not None:
            plan.flags["kv_shared"] = source
        if v is not None and v == k:
            plan.flags["values_from_keys"] = True
        post = _post_projection(prefix, lambda n: f"{n}.weight" in names)
        if post is not None:
            plan.flags["post_projection"] = post
        if arch is GENERIC:  # e.g. Gemma-4's text tower: its module scales by 1, not 1/√r
            plan.notes += (
                f"scale 1/√{r} assumed: model_type {str(cfg.get('model_type', '?'))!r} is not in "
                "rankdecay's table and a checkpoint does not say how its attention scales the "
                "scores (the module's own scale is read in memory: analyze(load_model(DIR)))",
            )
        plans.append(finish_notes(plan))
    return plans
