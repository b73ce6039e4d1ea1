"""Merge R1 (residual stream) and R2 (per-head value space) into the weights; fold R4 into down_proj.

The residual stream x becomes x @ R1. Linears reading it get W @ R1, linears writing it R1^T @ W (bias
b @ R1); the embedding E @ R1. Per layer, the value heads become v_h @ R2: v_proj rows R2^T @ W_h (bias
b_h @ R2), o_proj columns W_h @ R2. With `had`, down_proj's input u is rotated online by the Hadamard H
(u @ H^T) and its weight folded to W @ H^T; q and k get H after RoPE (R3), which needs no weight change.
`rotate_weights` is functional and differentiable: the trainer rotates on the fly with it and merging is
the same call in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..hadamard import hadamard_transform, random_hadamard, random_orthogonal
from ..model import ModelArgs, Transformer


def rotate_weights(
    weights: dict[str, Tensor], args: ModelArgs, R1: Tensor | None, R2: Tensor | None, had: bool
) -> dict[str, Tensor]:
    """A new dict with R1, R2 ([n_layers, head_dim, head_dim]) and the R4 fold applied; other entries as is."""
    out = dict(weights)
    if R1 is not None:
        out["embed_tokens.weight"] = out["embed_tokens.weight"] @ R1
        out["lm_head.weight"] = out["lm_head.weight"] @ R1
    for i in range(args.n_layers):
        p = f"layers.{i}."
        layer = {k.removeprefix(p): v for k, v in out.items() if k.startswith(p)}
        rotated = rotate_layer(layer, args, R1, None if R2 is None else R2[i], had)
        out.update({p + k: v for k, v in rotated.items()})
    return out


def rotate_layer(
    weights: dict[str, Tensor], args: ModelArgs, R1: Tensor | None, r2: Tensor | None, had: bool
) -> dict[str, Tensor]:
    """`rotate_weights` for one decoder layer: names relative to the layer, r2 [head_dim, head_dim]."""
    out = dict(weights)
    hd = args.head_dim
    if R1 is not None:
        for lin in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            out[lin + ".weight"] = out[lin + ".weight"] @ R1  # a linear reading the rotated stream: W @ R1
        for lin in ("self_attn.o_proj", "mlp.down_proj"):
            out[lin + ".weight"] = R1.T @ out[lin + ".weight"]  # writing it: R1^T @ W, bias b @ R1
            if lin + ".bias" in out:
                out[lin + ".bias"] = out[lin + ".bias"] @ R1
    if r2 is not None:
        wv = out["self_attn.v_proj.weight"]
        out["self_attn.v_proj.weight"] = torch.einsum("ji,hjd->hid", r2, wv.view(args.n_kv_heads, hd, -1)).reshape(
            wv.shape
        )
        if "self_attn.v_proj.bias" in out:
            bv = out["self_attn.v_proj.bias"]
            out["self_attn.v_proj.bias"] = (bv.view(args.n_kv_heads, hd) @ r2).reshape(bv.shape)
        wo = out["self_attn.o_proj.weight"]
        out["self_attn.o_proj.weight"] = (wo.view(wo.shape[0], args.n_heads, hd) @ r2).reshape(wo.shape)
    if had:
        out["mlp.down_proj.weight"] = hadamard_transform(out["mlp.down_proj.weight"])
    return out


def set_online_hadamards(model: Transformer, had: bool) -> None:
    """Switch R3 (q/k after RoPE) and R4 (down_proj input) on or off."""
    for layer in model.layers:
        layer.self_attn.r3 = had
        layer.mlp.down_proj.online_had = had


def random_rotations(args: ModelArgs, seed: int, kind: str = "hadamard") -> tuple[Tensor, Tensor]:
    """Seeded R1 [dim, dim] and R2 [n_layers, head_dim, head_dim] (float64): random Hadamard or orthogonal."""
    gen = torch.Generator().manual_seed(seed)
    make = {"hadamard": random_hadamard, "orthogonal": random_orthogonal}.get(kind)
    if make is None:
        raise ValueError(f"unknown rotation kind {kind!r}: use 'hadamard' or 'orthogonal'")
    R1 = make(args.dim, gen)
    R2 = torch.stack([make(args.head_dim, gen) for _ in range(args.n_layers)])
    return R1, R2


@torch.no_grad()
def apply_rotations(model: Transformer, R1: Tensor | None, R2: Tensor | None, had: bool) -> Transformer:
    """Merge the rotations into the weights in float64, in place; norms must be fused first."""
    if not getattr(model, "norms_fused", False):
        raise RuntimeError("fuse the RMSNorm scales first (spinquant.rotation.fuse_norms): R1 needs unit norms")
    if getattr(model, "rotated", False):
        raise RuntimeError("this model already has rotations merged; reload it to apply others")
    params = dict(model.named_parameters())
    weights = {k: v.detach().double() for k, v in params.items()}
    R1 = None if R1 is None else R1.detach().double()
    R2 = None if R2 is None else R2.detach().double()
    for name, value in rotate_weights(weights, model.args, R1, R2, had).items():
        params[name].data = value.to(params[name].dtype)
    set_online_hadamards(model, had)
    model.rotated = True
    return model
