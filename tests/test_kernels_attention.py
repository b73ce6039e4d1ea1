"""Native quantized-KV attention (spinquant._kernels) against PyTorch: fake-quantized cache + softmax attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spinquant import _kernels, kernels
from spinquant.quant.quantizer import KVQuantizer


def randn(*shape: int, seed: int, std: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * std


def quantize_ref(x: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cache convention in float32 torch ops: codes [.., hd] uint8, scale, zero [.., hd // group]."""
    g = x.reshape(*x.shape[:-1], -1, group)
    xmax = g.amax(-1).clamp(min=0)
    xmin = g.amin(-1).clamp(max=0)
    scale = (xmax - xmin) / (2**bits - 1)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.round(-xmin / scale)
    q = torch.clamp(torch.round(g / scale[..., None]) + zero[..., None], 0, 2**bits - 1)
    return q.reshape(x.shape).to(torch.uint8), scale, zero


def unpack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Stored rows [.., row_bytes] -> one code per channel (4-bit: even channel in the low nibble)."""
    if bits == 8:
        return codes
    return torch.stack([codes & 0xF, codes >> 4], dim=-1).flatten(-2)


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
    """Causal GQA softmax attention in float64: q [T, H, d], k / v [L, Hkv, d] (already fake-quantized)."""
    t, h, d = q.shape
    rep = h // k.shape[1]
    kk = k.double().repeat_interleave(rep, dim=1).transpose(0, 1)  # [H, L, d]
    vv = v.double().repeat_interleave(rep, dim=1).transpose(0, 1)
    scores = q.double().transpose(0, 1) @ kk.transpose(1, 2) / d**0.5  # [H, T, L]
    pos = torch.arange(start, start + t)[:, None]
    scores = scores.masked_fill(torch.arange(k.shape[0])[None, :] > pos, float("-inf"))
    return (scores.softmax(-1) @ vv).transpose(0, 1)


def run(n_kv: int, ratio: int, hd: int, bits: int, group: int, rotate: bool, steps: list[int], seed: int) -> None:
    """Append chunks of `steps` tokens and compare every attention call and the stored cache to PyTorch."""
    n_heads, total = n_kv * ratio, sum(steps)
    cache = kernels.QuantKVCache(n_kv, hd, total + 3, bits, group, rotate_qk=rotate)
    had = kernels.FastHadamard(hd)  # R3 as the kernel applies it (checked against the definition elsewhere)
    fq = KVQuantizer(bits, group)
    keys, values, start = [], [], 0
    for i, t in enumerate(steps):
        k, v = randn(t, n_kv, hd, seed=seed + 3 * i), randn(t, n_kv, hd, seed=seed + 3 * i + 1)
        q = randn(t, n_heads, hd, seed=seed + 3 * i + 2, std=2.0)
        cache.append(k, v, start)
        keys.append(had(k) if rotate else k)
        values.append(v)
        kq, vq = fq(torch.cat(keys)), fq(torch.cat(values))
        want = attention_ref(had(q) if rotate else q, kq, vq, start)
        for isa in kernels.supported_isas():
            with kernels.use_isa(isa):
                got = cache.attention(q, start)
            torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5 * want.abs().max().item())
        start += t
    for which, x in (("k", torch.cat(keys)), ("v", torch.cat(values))):
        codes, scales, zeros = cache.storage(which)
        q_ref, s_ref, z_ref = quantize_ref(x.transpose(0, 1), bits, group)  # [Hkv, L, ..]
        assert torch.equal(unpack(codes[:, :total], bits), q_ref), which
        assert torch.equal(scales[:, :total], s_ref) and torch.equal(zeros[:, :total], z_ref), which
        deq = unpack(codes[:, :total], bits).float().reshape(n_kv, total, -1, group) - zeros[:, :total, :, None]
        deq = (deq * scales[:, :total, :, None]).reshape(n_kv, total, hd)
        assert torch.equal(deq, fq(x).transpose(0, 1)), which  # bit-identical to the fake quantizer
    assert cache.length == total


@pytest.mark.parametrize("hd", [64, 128])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("ratio", [1, 3, 4])
def test_decode_and_prefill(hd: int, bits: int, ratio: int) -> None:
    run(2, ratio, hd, bits, 32, rotate=False, steps=[1, 5, 1, 1, 9, 1], seed=hd + bits + ratio)


@pytest.mark.parametrize("bits", [4, 8])
def test_r3_rotation_and_whole_head_groups(bits: int) -> None:
    run(3, 3, 64, bits, 64, rotate=True, steps=[7, 1, 1], seed=bits)


@settings(max_examples=20, deadline=None)
@given(
    n_kv=st.integers(1, 3),
    ratio=st.sampled_from([1, 3, 4]),
    hd=st.sampled_from([64, 128]),
    bits=st.sampled_from([4, 8]),
    group=st.sampled_from([16, 32, 64, 128]),
    rotate=st.booleans(),
    steps=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    seed=st.integers(0, 2**20),
)
def test_random_shapes(
    n_kv: int, ratio: int, hd: int, bits: int, group: int, rotate: bool, steps: list[int], seed: int
) -> None:
    run(n_kv, ratio, hd, bits, min(group, hd), rotate, steps, seed)


def test_explicit_scale_and_threads() -> None:
    cache = kernels.QuantKVCache(2, 64, 40, bits=8)
    k, v, q = randn(33, 2, 64, seed=1), randn(33, 2, 64, seed=2), randn(33, 8, 64, seed=3)
    cache.append(k, v, 0)
    one = cache.attention(q, 0, scale=0.2, threads=1)
    two = cache.attention(q, 0, scale=0.2, threads=2)
    assert torch.equal(one, two)
    fq = KVQuantizer(8, 64)
    want = attention_ref(q * (0.2 * 8.0), fq(k), fq(v), 0)  # the reference divides by sqrt(64) = 8
    torch.testing.assert_close(one.double(), want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(
    "args, match",
    [
        ((2, 64, 16, 3, 64), "bits must be 4 or 8"),
        ((2, 64, 16, 4, 24), "must divide head_dim"),
        ((2, 63, 16, 4, 63), "head_dim must be even"),
        ((2, 48, 16, 4, 48, True), "power of two"),
        ((0, 64, 16, 4, 64), "positive"),
    ],
)
def test_bad_cache(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _kernels.QuantKVCache(*args)


def test_bad_calls() -> None:
    cache = kernels.QuantKVCache(2, 64, 4, bits=4)
    kv = torch.zeros(3, 2, 64)
    with pytest.raises(ValueError, match="exceed max_seq_len"):
        cache.append(torch.zeros(5, 2, 64), torch.zeros(5, 2, 64), 0)
    with pytest.raises(ValueError, match="without gaps"):
        cache.append(kv, kv, 1)
    with pytest.raises(ValueError, match=r"k must be float32 \[T, 2, 64\]"):
        cache.append(torch.zeros(3, 3, 64), kv, 0)
    with pytest.raises(ValueError, match="same number of tokens"):
        cache.append(kv, torch.zeros(2, 2, 64), 0)
    cache.append(kv, kv, 0)
    with pytest.raises(ValueError, match="append k/v first"):
        cache.attention(torch.zeros(1, 4, 64), 3)
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        cache.attention(torch.zeros(1, 3, 64), 0)
    with pytest.raises(ValueError, match="scale must be positive"):
        cache.attention(torch.zeros(1, 4, 64), 0, scale=-1.0)
    with pytest.raises(ValueError, match="NaN"):
        cache.append(torch.full((1, 2, 64), np.nan), kv[:1], 3)
    with pytest.raises(ValueError, match='"k" or "v"'):
        cache.storage("q")
