"""Per-head attention factors of a model, one adapter per architecture family.

Conventions (see docs/metrics.md): for head h, W_Q^h, W_K^h, W_V^h ∈ ℝ^{d_model×d_head} map the
residual stream into the head (x ↦ xᵀW) and W_O^h ∈ ℝ^{d_head×d_model} maps it back.

- QK circuit W_QK^h = W_Q^h (W_K^h)ᵀ, factor pair (A, B) = (W_Q^h, W_K^h).
- OV circuit W_OV^h = W_V^h W_O^h,    factor pair (A, B) = (W_V^h, (W_O^h)ᵀ).

Biases are not part of the circuits. Weights are raw by default; every transform (e.g. folding a
norm's gain) is opt-in and named.

Extractors must build the per-head tensors from the parameters with differentiable reshapes,
slices and transposes only (no ``.detach()``/``.data``), so that autograd can map a per-head
quantity back onto the parameters (``LowRankDecay(granularity="product")`` relies on this).
Callers that only read spectra wrap the call in ``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor, nn

from .errors import RankdecayError

__all__ = [
    "AttentionAdapter",
    "LayerHeads",
    "UnsupportedModelError",
    "attention_heads",
    "find_adapter",
    "register_adapter",
]


@dataclass
class LayerHeads:
    """The attention factors of one layer, per **query** head.

    Shapes: ``W_Q`` (H, d_model, d_head), ``W_K`` (H, d_kv, d_head), ``W_V`` (H, d_kv, d_head),
    ``W_O`` (H, d_head, d_model); H is the number of query heads. d_kv = d_model unless the
    layer attends to a memory of another width (``nn.MultiheadAttention`` with ``kdim``/``vdim``).
    """

    layer: int
    name: str  # module path of the attention block, e.g. "transformer.h.3.attn"
    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    W_O: Tensor
    #: GQA/MQA: index of the key/value head each query head uses (None = one K/V head per query head).
    kv_head_index: tuple[int, ...] | None = None
    #: the model applies rotary embeddings to q, k; the QK circuit is then the one at offset 0.
    rotary: bool = False
    #: factor multiplying q·k in the model (e.g. 1/√d_head); scores = scale · xᵀ W_QK y.
    scale: float | None = None
    #: fully qualified parameter names (relative to the model passed in) holding W_Q / W_K ...
    qk_params: tuple[str, ...] = ()
    #: ... and W_V / W_O. A fused q,k,v tensor is listed in both.
    ov_params: tuple[str, ...] = ()
    #: free-form notes the report shows (e.g. "gain of ln_1 folded into W_Q, W_K, W_V").
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def n_heads(self) -> int:
        return int(self.W_Q.shape[0])

    @property
    def n_kv_heads(self) -> int:
        return self.n_heads if self.kv_head_index is None else len(set(self.kv_head_index))

    def factors(self, circuit: str) -> tuple[Tensor, Tensor]:
        """(A, B) with the circuit = A·Bᵀ, each (H, d, d_head): "qk" → (W_Q, W_K), "ov" → (W_V, W_Oᵀ)."""
        if circuit == "qk":
            return self.W_Q, self.W_K
        if circuit == "ov":
            return self.W_V, self.W_O.mT
        raise ValueError(f"unknown circuit {circuit!r}; choose 'qk' or 'ov'.")


Extractor = Callable[..., list[LayerHeads]]
Predicate = Callable[[nn.Module], bool]


@dataclass
class AttentionAdapter:
    name: str  # family name shown to users, e.g. "Hugging Face GPT-2"
    predicate: Predicate
    extractor: Extractor


_ADAPTERS: list[AttentionAdapter] = []


class UnsupportedModelError(RankdecayError):
    """No adapter recognises the model."""


def register_adapter(predicate: Predicate, extractor: Extractor, name: str | None = None) -> None:
    """Teach rankdecay a new architecture.

    ``predicate(model) -> bool`` says whether the adapter applies; ``extractor(model, **options)``
    returns one :class:`LayerHeads` per attention layer. Adapters registered later take priority
    over earlier ones (so users can override a built-in).
    """
    _ADAPTERS.insert(0, AttentionAdapter(name or getattr(extractor, "__name__", "custom"), predicate, extractor))


def _protocol_predicate(model: nn.Module) -> bool:
    return callable(getattr(model, "rankdecay_attention_heads", None))


def _protocol_extractor(model: nn.Module, **options: object) -> list[LayerHeads]:
    return model.rankdecay_attention_heads(**options)  # type: ignore[operator]


def _builtin_adapters() -> list[AttentionAdapter]:
    """Adapters defined in this module, after the protocol one (lowest priority last)."""
    return [AttentionAdapter("models defining rankdecay_attention_heads()", _protocol_predicate, _protocol_extractor)]


def find_adapter(model: nn.Module) -> AttentionAdapter:
    for adapter in [*_ADAPTERS, *_builtin_adapters()]:
        if adapter.predicate(model):
            return adapter
    families = ", ".join(a.name for a in [*_ADAPTERS, *_builtin_adapters()])
    raise UnsupportedModelError(
        f"rankdecay has no adapter for {type(model).__name__}; supported families: {families} — "
        "teach it yours with rankdecay.register_adapter(predicate, extractor)."
    )


def attention_heads(model: nn.Module, **options: object) -> list[LayerHeads]:
    """Per-layer attention factors of ``model`` (see :class:`LayerHeads`), raw weights by default.

    Options are passed to the adapter (e.g. ``fold_norm=True``).
    """
    layers = find_adapter(model).extractor(model, **options)
    if not layers:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no attention layers rankdecay can read; "
            "check the model or register an adapter with rankdecay.register_adapter."
        )
    return layers
