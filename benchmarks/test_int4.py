"""int4 GEMV (decode, one token) and GEMM (prefill) of the native kernels, beside torch fp32 and torchao 8da4w.

Group 32, symmetric, fp16 scales (0.5625 bytes a weight), prepacked once. W4A8 quantizes the activation row per
token inside the timed call; W4A16 keeps it fp32. Shapes: SmolLM2-135M's projections (q/o, k/v, gate/up, down,
lm_head), then 4096-wide matrices about the size of L3 and larger, which stream from DRAM (the bandwidth test).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bandwidth import record_bandwidth, record_gmacs
from spinquant import kernels

GROUP = 32
SMOLLM2 = [(576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576)]
LARGE = [(4096, 4096), (14336, 4096), (28672, 4096)]
PREFILL = [(1536, 576), (4096, 4096)]
PREFILL_TOKENS = 64


def shape_id(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def int4_layer(n: int, k: int, act_bits: int, threads: int) -> kernels.Int4Linear:
    """A prepacked int4 linear with seeded random codes and scales."""
    rng = np.random.default_rng(n * 7 + k)
    qweight = torch.from_numpy(rng.integers(0, 256, (n, (k + 1) // 2), dtype=np.uint8))
    scales = torch.from_numpy((rng.random((n, (k + GROUP - 1) // GROUP)) * 0.02 + 1e-3).astype(np.float16))
    return kernels.Int4Linear(qweight, scales, None, k, GROUP, act_bits=act_bits, threads=threads)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("act_bits", [8, 16], ids=["W4A8", "W4A16"])
@pytest.mark.parametrize("shape", SMOLLM2 + LARGE, ids=shape_id)
def test_gemv_spinquant(benchmark, shape, act_bits, threads):
    n, k = shape
    layer = int4_layer(n, k, act_bits, threads)
    x = np.random.default_rng(0).standard_normal((1, k), dtype=np.float32)
    benchmark.group = f"gemv {shape_id(shape)}"
    benchmark(layer.native.forward, x, act_bits, 1.0, None, threads)
    record_bandwidth(benchmark, layer.native.packed_bytes, threads)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", SMOLLM2 + LARGE, ids=shape_id)
def test_gemv_torch_fp32(benchmark, torch_threads, shape, threads):
    n, k = shape
    torch_threads(threads)
    x, weight = torch.randn(1, k), torch.randn(n, k) * 0.02
    benchmark.group = f"gemv {shape_id(shape)}"
    with torch.no_grad():
        benchmark(F.linear, x, weight)
    record_bandwidth(benchmark, weight.numel() * 4, threads)


# torchao's 8da4w runs on x86 only through its reference layout (dequantize, then matmul): its packed layouts need
# its kernel library or KleidiAI, which this wheel does not load here. One thread, the decoder's shapes only: it
# takes up to seconds a call on the larger ones.
@pytest.mark.parametrize("shape", SMOLLM2[:4], ids=shape_id)
def test_gemv_torchao_8da4w(benchmark, torch_threads, shape):
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    n, k = shape
    torch_threads(1)
    lin = torch.nn.Linear(k, n, bias=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchao notes that its kernel library is not loaded
        quantize_(
            lin, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(GROUP))
        )
    benchmark.group = f"gemv {shape_id(shape)}"
    benchmark.extra_info["layout"] = type(lin.weight).__name__
    with torch.no_grad():
        benchmark(lin, torch.randn(1, k))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("act_bits", [8, 16], ids=["W4A8", "W4A16"])
@pytest.mark.parametrize("shape", PREFILL, ids=shape_id)
def test_gemm_spinquant(benchmark, shape, act_bits, threads):
    n, k = shape
    layer = int4_layer(n, k, act_bits, threads)
    x = np.random.default_rng(0).standard_normal((PREFILL_TOKENS, k), dtype=np.float32)
    benchmark.group = f"gemm {shape_id(shape)} M={PREFILL_TOKENS}"
    benchmark(layer.native.forward, x, act_bits, 1.0, None, threads)
    record_gmacs(benchmark, n, k, PREFILL_TOKENS)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", PREFILL, ids=shape_id)
def test_gemm_torch_fp32(benchmark, torch_threads, shape, threads):
    n, k = shape
    torch_threads(threads)
    x, weight = torch.randn(PREFILL_TOKENS, k), torch.randn(n, k) * 0.02
    benchmark.group = f"gemm {shape_id(shape)} M={PREFILL_TOKENS}"
    with torch.no_grad():
        benchmark(F.linear, x, weight)
    record_gmacs(benchmark, n, k, PREFILL_TOKENS)
