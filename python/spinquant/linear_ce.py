"""Cross-entropy of a linear head without the [tokens, vocab] logits: chunks of tokens, gradients in forward.

`linear_cross_entropy(x, weight, bias, targets)` equals `F.cross_entropy(F.linear(x, weight, bias), targets)`
(mean over tokens). It computes the logits of `chunk` tokens at a time and, when a gradient is needed, the
gradients of x, weight and bias there too (softmax minus one-hot, times the chunk's input or weight), so
backward only scales them: the head's matmuls run twice instead of three times (no recomputation) and at most
one chunk of logits is alive. SmolLM2's 49152-wide logits of 16k tokens would be 3.2 GB in float32.

The matmuls run in `dtype` (bfloat16 for speed); log-sum-exp, softmax and gradient sums stay float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CE_CHUNK", "linear_cross_entropy"]

CE_CHUNK = 1024  # tokens per chunk: 1024 x 49152 float32 logits are 200 MB


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, x: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk: int, dtype: torch.dtype
    ) -> Tensor:
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        n = x.shape[0]
        w = weight.to(dtype)
        grad_x = torch.empty_like(x) if need_x else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        with torch.autocast(x.device.type, enabled=False):
            for start in range(0, n, chunk):
                xc, tc = x[start : start + chunk].to(dtype), targets[start : start + chunk]
                logits = (xc @ w.T).float()
                if bias is not None:
                    logits += bias.float()
                lse = torch.logsumexp(logits, -1)
                total += (lse - logits.gather(1, tc[:, None]).squeeze(1)).sum(dtype=torch.float64)
                if not (need_x or need_w or need_b):
                    continue
                g = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                g[torch.arange(len(tc), device=g.device), tc] -= 1.0
                g /= n
                if need_b:
                    grad_b += g.sum(0)
                g_low = g.to(dtype)
                if need_x:
                    grad_x[start : start + chunk] = g_low @ w
                if need_w:
                    grad_w += (g_low.T @ xc).float()
        ctx.save_for_backward(grad_x, grad_w, grad_b)
        ctx.weight_dtype = weight.dtype
        return (total / n).float()

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad_x, grad_w, grad_b = ctx.saved_tensors
        scale = lambda g: None if g is None else g * grad  # noqa: E731
        grad_w = scale(grad_w)
        return scale(grad_x), None if grad_w is None else grad_w.to(ctx.weight_dtype), scale(grad_b), None, None, None


def linear_cross_entropy(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    chunk: int = CE_CHUNK,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Mean cross-entropy of logits `x @ weight.T + bias` ([N, d] @ [V, d]^T) against `targets` [N]."""
    if x.dim() != 2 or targets.shape != x.shape[:1]:
        raise ValueError(f"expected x [N, d] and targets [N], got {tuple(x.shape)} and {tuple(targets.shape)}")
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of tokens, got {chunk}")
    return _LinearCrossEntropy.apply(x, weight, bias, targets, chunk, dtype)
