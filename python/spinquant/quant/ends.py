"""The ends of the network at 8 bits, as the device recipe ships them: the embedding and lm_head as per-channel
(per-row) symmetric int8, absmax scales rounded to float16, codes in [-127, 127] (so re-quantizing the dequantized
table gives the same codes: checkpoints store it as float); lm_head's input quantized per token to 8 bits
(asymmetric, no clip), as the int8 kernel (kernels/include/spinquant/int8.h) does.

A model with tied embeddings keeps one table when lm_head's weight is the embedding's times a [dim, dim] matrix,
W_head = E X: rotation and norm fusion leave exactly that (R1 rotates both alike; the final norm's scale, fused into
lm_head, becomes X = R1^T diag(g) R1). lm_head then computes (h @ X^T) @ table^T: `QLinear.pre` holds X^T, and
the table is quantized once, from the embedding, for both.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from .config import QuantConfig
from .quantizer import ActQuantizer, QuantizedWeight, quantize_weight_rtn

BITS = 8
# Relative residual ||E X - W_head|| / ||W_head|| under which lm_head counts as the embedding times X.
TIE_TOLERANCE = 1e-4


def int8_rows(w: Tensor) -> QuantizedWeight:
    """Per-row symmetric int8 of a [rows, dim] table (absmax scale, float16)."""
    return quantize_weight_rtn(w, BITS, group=0, sym=True, clip_search=False)


def head_act_quantizer() -> ActQuantizer:
    """lm_head's input quantizer at lm_head_bits 8: per token, 8 bits, asymmetric, no clip."""
    return ActQuantizer(BITS, sym=False, clip=1.0)


def head_from_table(embed: Tensor, head: Tensor) -> Tensor | None:
    """X^T (float32 [dim, dim]) with head = embed @ X, or None when no such X fits within TIE_TOLERANCE."""
    e, h = embed.detach().double(), head.detach().double()
    rows = min(e.shape[0], 8 * e.shape[1])  # enough rows to pin X down; all rows check it
    x = torch.linalg.lstsq(e[:rows], h[:rows]).solution
    err = (e @ x - h).norm() / h.norm().clamp(min=1e-30)
    return x.T.float().contiguous() if float(err) < TIE_TOLERANCE else None


def _set(module: nn.Module, qw: QuantizedWeight) -> None:
    module.weight.data.copy_(qw.dequantize())
    module.wq = qw


@torch.no_grad()
def quantize_ends(model: nn.Module, cfg: QuantConfig) -> None:
    """In place: the 8-bit embedding and/or lm_head of `cfg` (weights and lm_head's input quantizer).

    Idempotent on a model whose ends it already quantized (checkpoints reload through it)."""
    embed, head = model.embed_tokens, model.lm_head
    if cfg.lm_head_bits == BITS:
        head.act_quant = head_act_quantizer()
    if cfg.embed_bits == BITS and cfg.lm_head_bits == BITS and model.args.tie_word_embeddings:
        effective = head.weight if head.pre is None else head.weight @ head.pre.T  # a tied head: table @ X
        pre = head_from_table(embed.weight, effective)
        if pre is not None:
            table = int8_rows(embed.weight)
            _set(embed, table)
            _set(head, table)
            head.pre = pre
            return
        warnings.warn(
            "the model ties its embeddings but lm_head is no longer the embedding times a matrix: "
            "the embedding and lm_head get a table each",
            stacklevel=2,
        )
    if cfg.embed_bits == BITS:
        _set(embed, int8_rows(embed.weight))
    if cfg.lm_head_bits == BITS:
        _set(head, int8_rows(head.weight))
