"""Fold RMSNorm scales into the linears that read the normalized stream, so the residual can be rotated."""

from __future__ import annotations

import torch

from ..model import RMSNorm, Transformer


def _fold(norm: RMSNorm, linears) -> None:
    scale = norm.weight.detach().double()
    for lin in linears:
        lin.weight.data = (lin.weight.detach().double() * scale).to(lin.weight.dtype)
    norm.weight.data = torch.ones_like(norm.weight)


@torch.no_grad()
def fuse_norms(model: Transformer) -> Transformer:
    """In place: q/k/v take the attention norm's scale, gate/up the MLP norm's, lm_head the final norm's."""
    if getattr(model, "norms_fused", False):
        return model
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        _fold(layer.input_layernorm, (attn.q_proj, attn.k_proj, attn.v_proj))
        _fold(layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj))
    _fold(model.norm, (model.lm_head,))
    model.norms_fused = True
    return model
