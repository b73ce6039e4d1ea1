"""Decode attention over the native quantized KV cache beside fp32 attention over an fp32 cache.

One decode step (one new token, one layer) over a cache of `context` positions, K and V quantized with one
group per head_dim row (asymmetric, fp32 scale and zero), one thread. Each group holds the quantized step at 4
and 8 bits and two fp32 references: torch SDPA (`enable_gqa=True`) and grouped `bmm` + softmax.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bandwidth import record_bandwidth
from spinquant import kernels

SHAPES = [(9, 3, 64), (32, 8, 128)]  # (heads, kv heads, head_dim): SmolLM2-135M and a LLaMA-like shape
CONTEXTS = [256, 1024, 2048]


def shape_id(shape: tuple[int, int, int]) -> str:
    return "h{}-kv{}-d{}".format(*shape)


def kv(shape: tuple[int, int, int], ctx: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded q [1, heads, hd], k and v [ctx, kv, hd]."""
    heads, n_kv, hd = shape
    g = torch.Generator().manual_seed(ctx)
    return (
        torch.randn(1, heads, hd, generator=g),
        torch.randn(ctx, n_kv, hd, generator=g),
        torch.randn(ctx, n_kv, hd, generator=g),
    )


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("ctx", CONTEXTS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_attention_quantized(benchmark, shape, ctx, bits):
    _, n_kv, hd = shape
    q, k, v = kv(shape, ctx)
    cache = kernels.QuantKVCache(n_kv, hd, ctx, bits, hd)
    cache.append(k, v, 0)
    benchmark.group = f"attention {shape_id(shape)} ctx={ctx}"
    benchmark(cache.attention, q, ctx - 1, threads=1)
    codes = 2 * ctx * n_kv * hd * bits // 8
    record_bandwidth(benchmark, codes + 2 * ctx * n_kv * 8, 1)  # codes, and a scale and a zero a row


@pytest.mark.parametrize("ctx", CONTEXTS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_attention_fp32_sdpa(benchmark, torch_threads, shape, ctx):
    torch_threads(1)
    q, k, v = kv(shape, ctx)
    q4, k4, v4 = (t.transpose(0, 1)[None].contiguous() for t in (q, k, v))  # [1, heads, L, hd]
    benchmark.group = f"attention {shape_id(shape)} ctx={ctx}"
    benchmark(F.scaled_dot_product_attention, q4, k4, v4, enable_gqa=True)
    record_bandwidth(benchmark, 2 * k.numel() * 4, 1)


@pytest.mark.parametrize("ctx", CONTEXTS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_attention_fp32_bmm(benchmark, torch_threads, shape, ctx):
    torch_threads(1)
    heads, n_kv, hd = shape
    q, k, v = kv(shape, ctx)
    kt, vb = k.permute(1, 2, 0).contiguous(), v.transpose(0, 1).contiguous()  # [kv, hd, L], [kv, L, hd]
    qg = q.reshape(n_kv, heads // n_kv, hd)  # query heads grouped by their KV head

    def step() -> torch.Tensor:
        return torch.softmax(torch.bmm(qg, kt) / hd**0.5, dim=-1).bmm(vb)

    benchmark.group = f"attention {shape_id(shape)} ctx={ctx}"
    benchmark(step)
    record_bandwidth(benchmark, 2 * k.numel() * 4, 1)
