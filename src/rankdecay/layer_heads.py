"""What an extraction yields: the per-head attention factors of one layer (:class:`LayerHeads`).

Shared by :mod:`rankdecay.heads` (the live-module and checkpoint rules) and :mod:`rankdecay.mla`
(multi-head latent attention), which both build it; neither imports the other for it. The error
and the warning of an extraction that does not cover a model live here as well. Conventions: see
:mod:`rankdecay.heads` — QK circuit W_Q·W_Kᵀ, OV circuit W_V·W_O, per **query** head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .errors import RankdecayError, RankdecayValueError

__all__ = ["LayerHeads", "UnrecognizedAttentionWarning", "UnsupportedModelError", "select_heads"]


@dataclass
class LayerHeads:
    """The attention factors of one layer, per **query** head.

    Shapes: ``W_Q`` (H, d_model, d_head), ``W_K`` (H, d_kv, d_head), ``W_V`` (H, d_kv, d_v),
    ``W_O`` (H, d_v, d_model); H is the number of query heads. d_kv = d_model unless the
    layer attends to a memory of another width (``nn.MultiheadAttention`` with ``kdim``/``vdim``).
    d_v = d_head unless the value heads have their own size (MiMo-V2-Flash's ``v_head_dim``): the
    QK circuit is then of rank ≤ d_head and the OV circuit of rank ≤ d_v.
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
    #: what changes how the spectra read, e.g. {"rotary": True, "partial_rotary": 0.5,
    #: "qk_norm": "per_head" | "full", "softcap": 50.0, "relative_position_bias": True,
    #: "sliding_window": 4096, "cross_attention": True} (``rotary`` above is kept as well).
    flags: dict[str, object] = field(default_factory=dict)
    #: "self" or "cross" (keys/values read another sequence: an encoder's states, an image ...).
    kind: str = "self"
    #: products of more than two factors (MLA, LoRA's W + s·BA): when a circuit ("qk"/"ov") has an
    #: entry ((A₁, A₂, ...), (B₁, B₂, ...)), that circuit is (A₁A₂⋯)(B₁B₂⋯)ᵀ, every factor batched
    #: over heads (leading dim H) or shared (no leading dim); analyze then uses the chain SVD.
    chains: dict[str, tuple[tuple[Tensor, ...], tuple[Tensor, ...]]] | None = None
    #: the row of rankdecay.attention_spec.ARCHITECTURES (or other rule) that extracted it.
    family: str = ""
    #: the value head each query head uses when the value projection has its own head count
    #: (key and value projections of different widths); None: the same as ``kv_head_index``.
    v_head_index: tuple[int, ...] | None = None
    #: parameters of the module that add score terms outside W_Q·W_Kᵀ (XLNet's positional key
    #: projection r, its biases and segment embeddings; Funnel's r_kernel and biases; CPM-Ant's
    #: shared position-bias table, outside the module); ``decay.param_roles`` gives them "other"
    score_params: tuple[str, ...] = ()

    def head_index(self, circuit: str) -> tuple[int, ...] | None:
        """The shared head each query head reads on the B side of "qk" (its key head) or the A
        side of "ov" (its value head); None when every query head has its own."""
        if circuit == "qk" or self.v_head_index is None:
            return self.kv_head_index
        index = self.v_head_index
        return None if index == tuple(range(len(index))) else index

    def shared_head(self, circuit: str, head: int) -> int:
        """The key head (qk) or value head (ov) query head ``head`` reads."""
        index = self.head_index(circuit)
        return head if index is None else index[head]

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
        raise RankdecayValueError(f"unknown circuit {circuit!r}; choose 'qk' or 'ov'.")


class UnsupportedModelError(RankdecayError, ValueError):
    """No adapter recognises the model (or, with ``strict=True``, one of its attention modules)."""


class UnrecognizedAttentionWarning(UserWarning):
    """A module that looks like attention (by its class name or its q/k/v-like children) was not
    extracted: its heads are missing from spectra and its weights get no attention role."""


def select_heads(W: Tensor, index: Tensor) -> Tensor:
    """``W.index_select(0, index)`` for a per-head stack W (H, a, b), copied in W's memory order.

    A head stack is often a transposed view of a projection weight (each head (a, b) stored
    column-major); selecting along the transposed view copies it in order, several times faster
    than a strided gather (a grouped-query K/V expansion of a Llama-3-8B layer: 71 → 20 ms).
    The result equals ``W.index_select(0, index)``; its heads keep W's per-head layout.
    """
    if W.dim() == 3 and W.stride(-2) == 1 and W.stride(-1) != 1:
        return W.mT.index_select(0, index).mT
    return W.index_select(0, index)
