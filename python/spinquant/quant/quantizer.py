"""Fake quantizers (weights, activations, KV cache) with straight-through gradients.

Conventions, shared bit for bit with the C++ kernels (b bits, over one group x, round = half to even):

- asymmetric: `xmax = max(max(x), 0) * clip`, `xmin = min(min(x), 0) * clip`,
  `scale = (xmax - xmin) / (2^b - 1)`, `zero = round(-xmin / scale)`,
  `q = clamp(round(x / scale) + zero, 0, 2^b - 1)`, value `(q - zero) * scale`;
- symmetric: `scale = clip * max|x| / (2^(b-1) - 1)`, `q = clamp(round(x / scale), -2^(b-1), 2^(b-1) - 1)`,
  value `q * scale`; stored code `q + 2^(b-1)`.

A zero scale becomes 1. Weight scales are rounded to float16 before q is computed (docs/INT4_FORMAT.md), so
fake-quantized weights equal the packed model's; activation and KV scales stay float32. Groups run along
the last dim; a shorter last group is allowed (zero padding changes neither the scales nor the codes of 0).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import check_bits

FP16_MAX = 65504.0
# MSE clip search per row and group: clip ratios 1.0, 0.95, ..., 0.2, then steps of 0.01 within +-0.04 of
# the best of those; the ratio with the smallest squared error wins (1.0 included: never worse than none).
CLIP_MIN, CLIP_COARSE, CLIP_FINE = 0.2, 0.05, 0.01
_SEARCH_CHUNK = 1 << 16  # elements per clip-search chunk (stays in cache)


@dataclass
class QuantizedWeight:
    """A quantized [N, K] weight: unsigned codes (symmetric: q + 2^(bits-1)), fp16 scales [N, G], zero points.

    `group` is the actual group size (K for per-channel); G = ceil(K / group).
    """

    codes: Tensor
    scales: Tensor
    zeros: Tensor | None
    group: int
    bits: int
    sym: bool

    def __post_init__(self) -> None:
        if self.codes.dtype != torch.uint8 or self.codes.dim() != 2:
            raise ValueError(f"codes must be a 2-D uint8 tensor, got {self.codes.dtype} {tuple(self.shape)}")
        n, k = self.codes.shape
        groups = math.ceil(k / self.group) if self.group > 0 else -1
        if self.scales.dtype != torch.float16 or tuple(self.scales.shape) != (n, groups):
            raise ValueError(
                f"scales must be float16 [{n}, {groups}] for group {self.group}, "
                f"got {self.scales.dtype} {tuple(self.scales.shape)}"
            )
        if self.sym != (self.zeros is None):
            raise ValueError("zeros must be None if symmetric and uint8 [N, G] if asymmetric")
        zeros = self.zeros
        if zeros is not None and (zeros.dtype != torch.uint8 or zeros.shape != self.scales.shape):
            raise ValueError(f"zeros must be uint8 {tuple(self.scales.shape)}, got {self.zeros.dtype}")

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def dequantize(self) -> Tensor:
        """The float32 [N, K] weight these codes stand for."""
        k = self.codes.shape[1]
        cols = torch.arange(k) // self.group
        scales = self.scales.float()[:, cols]
        offset = float(2 ** (self.bits - 1)) if self.sym else self.zeros.float()[:, cols]
        return (self.codes.float() - offset) * scales


def _group_view(x: Tensor, group: int) -> Tensor:
    """[..., K] -> [..., G, group] (zero-padded); group <= 0 or >= K gives one group."""
    k = x.shape[-1]
    if group <= 0 or group >= k:
        return x.unsqueeze(-2)
    pad = -k % group
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], -1, group)


def _ungroup(xg: Tensor, k: int) -> Tensor:
    return xg.flatten(-2)[..., :k]


def quant_params(
    x: Tensor, bits: int, sym: bool, clip: float | Tensor = 1.0, fp16_scale: bool = False
) -> tuple[Tensor, Tensor | None]:
    """(scale, zero) over the last dim of x (keepdim); zero is None when symmetric."""
    if sym:
        scale = x.abs().amax(-1, keepdim=True) * clip / (2 ** (bits - 1) - 1)
    else:
        xmin, xmax = torch.aminmax(x, dim=-1, keepdim=True)
        xmax, xmin = xmax.clamp(min=0) * clip, xmin.clamp(max=0) * clip
        scale = (xmax - xmin) / (2**bits - 1)
    if fp16_scale:
        scale = scale.clamp(max=FP16_MAX).half().float()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    if sym:
        return scale, None
    return scale, torch.round(-xmin / scale).clamp(0, 2**bits - 1)


def quantize_codes(x: Tensor, scale: Tensor, zero: Tensor | None, bits: int) -> Tensor:
    """Integer q as floats: signed in [-2^(b-1), 2^(b-1)-1] if zero is None, else unsigned in [0, 2^b-1]."""
    if zero is None:
        return torch.clamp(torch.round(x / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return torch.clamp(torch.round(x / scale) + zero, 0, 2**bits - 1)


def dequantize_codes(q: Tensor, scale: Tensor, zero: Tensor | None) -> Tensor:
    return q * scale if zero is None else (q - zero) * scale


def _fake(x: Tensor, bits: int, sym: bool, clip: float | Tensor, fp16_scale: bool) -> Tensor:
    return _fake_(x.clone(), bits, sym, clip, fp16_scale)


def _fake_(x: Tensor, bits: int, sym: bool, clip: float | Tensor, fp16_scale: bool) -> Tensor:
    """`dequantize_codes(quantize_codes(x, ...))` computed in x's own memory (x is overwritten): the same
    values with one buffer instead of six (the activation quantizers are memory-bound)."""
    scale, zero = quant_params(x, bits, sym, clip, fp16_scale)
    x = x.div_(scale).round_()
    if zero is None:
        return x.clamp_(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1).mul_(scale)
    return x.add_(zero).clamp_(0, 2**bits - 1).sub_(zero).mul_(scale)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run many small ops on one intra-op thread: thread wake-ups cost more than they save (and far more
    when the cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _clip_candidates(best: Tensor, coarse: bool) -> list[Tensor]:
    if coarse:
        steps = round((1.0 - CLIP_MIN) / CLIP_COARSE)
        return [torch.full_like(best, 1.0 - i * CLIP_COARSE) for i in range(steps + 1)]
    fine = round(CLIP_COARSE / CLIP_FINE)
    deltas = [d * CLIP_FINE for d in range(1 - fine, fine) if d]
    return [(best + d).clamp(CLIP_MIN, 1.0) for d in deltas]


def _search_rows(x: Tensor, bits: int, sym: bool, fp16_scale: bool, norm: float) -> Tensor:
    """Per-row clip ratio [R, 1] minimising the quantization error sum |q(x) - x|^norm of x [R, g]."""
    best_err = torch.full((x.shape[0], 1), math.inf, device=x.device)
    best_clip = torch.ones(x.shape[0], 1, device=x.device)
    for coarse in (True, False):
        for clip in _clip_candidates(best_clip, coarse):
            diff = (_fake(x, bits, sym, clip, fp16_scale) - x).abs_()
            err = (diff.square_() if norm == 2 else diff.pow_(norm)).sum(-1, keepdim=True)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_clip = torch.where(better, clip, best_clip)
    return best_clip


def search_clip(x: Tensor, bits: int, sym: bool, fp16_scale: bool = True, norm: float = 2.0) -> Tensor:
    """The clip ratio of least error (p-norm `norm`) per row of the last dim, shape (*x.shape[:-1], 1).

    Grid: 0.05 steps from 1 down to CLIP_MIN, then 0.01 steps around the best (the official code tries
    every 0.01 step from 1 down to 0.21; the coarse-to-fine search reaches the same resolution)."""
    rows = x.detach().float().reshape(-1, x.shape[-1])
    chunk = max(1, _SEARCH_CHUNK // max(1, rows.shape[1]))
    with torch.no_grad(), one_thread():
        clip = torch.cat([_search_rows(part, bits, sym, fp16_scale, norm) for part in rows.split(chunk)])
    return clip.reshape(*x.shape[:-1], 1)


def search_params(
    x: Tensor, bits: int, sym: bool, fp16_scale: bool = True, norm: float = 2.0
) -> tuple[Tensor, Tensor | None]:
    """(scale, zero) over the last dim, with the clip ratio of least error per row (`search_clip`)."""
    rows = x.reshape(-1, x.shape[-1])
    clip = search_clip(rows, bits, sym, fp16_scale, norm)
    scale, zero = quant_params(rows, bits, sym, clip, fp16_scale)
    shape = (*x.shape[:-1], 1)
    return scale.reshape(shape), None if zero is None else zero.reshape(shape)


def check_weight_args(w: Tensor, bits: int) -> None:
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D [out, in] weight, got shape {tuple(w.shape)}")
    check_bits("bits", bits, allow_off=False)


def weight_group_size(k: int, group: int) -> int:
    """The effective group of a K-wide weight: `group`, or K for per-channel (group <= 0 or >= K)."""
    return k if group <= 0 or group >= k else group


def quantize_weight_rtn(
    w: Tensor, bits: int, group: int = 0, sym: bool = True, clip_search: bool = True, clip_norm: float = 2.0
) -> QuantizedWeight:
    """Round-to-nearest weight quantization per output row and group, optionally with a clip search that
    minimises the p-norm `clip_norm` of the error (2: MSE)."""
    check_weight_args(w, bits)
    with torch.no_grad():
        w = w.detach().float()
        k = w.shape[1]
        group = weight_group_size(k, group)
        wg = _group_view(w, group)
        if clip_search:
            scale, zero = search_params(wg, bits, sym, norm=clip_norm)
        else:
            scale, zero = quant_params(wg, bits, sym, 1.0, fp16_scale=True)
        q = quantize_codes(wg, scale, zero, bits)
        return make_quantized_weight(_ungroup(q, k), scale.squeeze(-1), zero, group, bits, sym)


def make_quantized_weight(
    q: Tensor, scale: Tensor, zero: Tensor | None, group: int, bits: int, sym: bool
) -> QuantizedWeight:
    """A QuantizedWeight from float integer q [N, K] (signed if sym) and per-group scale/zero [N, G]."""
    codes = (q + 2 ** (bits - 1)) if sym else q
    zeros = None if zero is None else zero.reshape(scale.shape).to(torch.uint8)
    return QuantizedWeight(codes.to(torch.uint8), scale.half(), zeros, group, bits, sym)


def set_weight(module: nn.Linear, qw: QuantizedWeight) -> None:
    """Attach `qw` as `module.wq` and replace the float weight by its dequantized value (in place)."""
    if tuple(qw.shape) != tuple(module.weight.shape):
        shape = tuple(module.weight.shape)
        raise ValueError(f"quantized weight {tuple(qw.shape)} does not fit a linear weight of shape {shape}")
    module.weight.data.copy_(qw.dequantize())
    module.wq = qw


class _StraightThrough(torch.autograd.Function):
    """Forward: fn(x); backward: identity (the rounding is skipped by the gradient)."""

    @staticmethod
    def forward(ctx, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        return fn(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def straight_through(x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """fn(x) with an identity gradient; plain fn(x) when no gradient is needed (export-friendly)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _StraightThrough.apply(x, fn)
    return fn(x)


def fake_quant(
    x: Tensor, bits: int, sym: bool, group: int = 0, clip: float | Tensor = 1.0, fp16_scale: bool = False
) -> Tensor:
    """Quantize-dequantize along the last dim in groups (0 = whole row), with an identity gradient.

    `clip` is one ratio or one per group, shaped [..., n_groups, 1] (see `search_clip`)."""
    if bits >= 16:
        return x

    def fn(t: Tensor) -> Tensor:
        tg = _group_view(t.to(torch.float32, copy=True), group)
        return _ungroup(_fake_(tg, bits, sym, clip, fp16_scale), t.shape[-1]).to(t.dtype)

    return straight_through(x, fn)


def fake_quant_weight(
    w: Tensor, bits: int, group: int = 0, sym: bool = True, clip: float | Tensor = 1.0, fp16_scale: bool = True
) -> Tensor:
    """Differentiable (straight-through) RTN fake quantization of a [N, K] weight, for rotation training."""
    check_weight_args(w, bits)
    return fake_quant(w, bits, sym, weight_group_size(w.shape[1], group), clip, fp16_scale)


def search_weight_clip(w: Tensor, bits: int, group: int = 0, sym: bool = True, norm: float = 2.0) -> Tensor:
    """Per-group clip ratios [N, G, 1] of a [N, K] weight (`search_clip`), for `fake_quant_weight(..., clip=...)`."""
    check_weight_args(w, bits)
    return search_clip(_group_view(w, weight_group_size(w.shape[1], group)), bits, sym, norm=norm)


class ActQuantizer(nn.Module):
    """Per-token fake quantizer of activations (last dim; `group` > 0 splits it), straight-through gradient.

    bits 16 is the identity. Scales are float32 (computed at run time by the kernels too).
    """

    def __init__(self, bits: int, sym: bool = False, clip: float = 1.0, group: int = 0):
        super().__init__()
        check_bits("bits", bits)
        if not 0.0 < clip <= 1.0:
            raise ValueError(f"clip={clip!r} is not supported: use a clip ratio in (0, 1]")
        self.bits, self.sym, self.clip, self.group = bits, sym, float(clip), group

    @property
    def key(self) -> tuple:
        """Its settings: two quantizers with equal keys quantize any input alike."""
        return type(self), self.bits, self.sym, self.clip, self.group

    def forward(self, x: Tensor) -> Tensor:
        return fake_quant(x, self.bits, self.sym, self.group, self.clip)

    def extra_repr(self) -> str:
        kind = "sym" if self.sym else "asym"
        group = f", group={self.group}" if self.group > 0 else ""
        return f"bits={self.bits}, {kind}, clip={self.clip:g}{group}"


class KVQuantizer(ActQuantizer):
    """Fake quantizer of K or V entries [B, H, T, head_dim]: groups of `group` along head_dim (0 = all)."""

    def __init__(self, bits: int, group: int = 0, sym: bool = False, clip: float = 1.0):
        super().__init__(bits, sym, clip, group)
