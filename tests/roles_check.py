"""Shared check: each layer's listed parameters are exactly those its factors depend on."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from rankdecay.heads import attention_heads


def assert_params_are_the_factors(model: nn.Module, roles: Mapping[str, str]) -> None:
    """qk_params/ov_params are exactly the parameters the circuits' factors depend on
    (autograd), and param_roles gives them attn_qk / attn_ov (a parameter in both: attn_qk)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for lh in attention_heads(model):
        for circuit, listed in (("qk", lh.qk_params), ("ov", lh.ov_params)):
            A, B = lh.factors(circuit)
            grads = torch.autograd.grad(A.sum() + B.sum(), list(params.values()), allow_unused=True)
            touched = {n for n, g in zip(params, grads) if g is not None and g.abs().sum() > 0}
            assert touched == set(listed), (circuit, touched, listed)
        for n in lh.qk_params:
            assert roles[n] == "attn_qk", n
        for n in lh.ov_params:
            assert roles[n] == ("attn_qk" if n in lh.qk_params else "attn_ov"), n
