"""Fast Walsh-Hadamard transform of the native kernels, in place over float rows, beside a copy of the same bytes
and torch's references.

Two regimes: hot, a 256 KiB batch of rows that stays in L2, and stream, a 128 MiB batch far beyond L3. Each group
holds the transform, a copy (torch `copy_`) of the same bytes, and in the hot regime the transform on fp16 rows,
the factored torch transform (`spinquant.hadamard.hadamard_transform`) and a dense `x @ H.T` (n <= 4096). Sizes
with K > 1 (576 = 36 x 16, 1536 = 12 x 128, 14336 = 28 x 512) pay the K x K mixing, K multiply-adds an element.
"""

from __future__ import annotations

import math

import pytest
import torch

from bandwidth import record_bandwidth
from spinquant import kernels
from spinquant.hadamard import hadamard_matrix, hadamard_transform

SIZES = [64, 512, 576, 1536, 4096, 14336]
REGIMES = {"hot": 256 << 10, "stream": 128 << 20}
DENSE_MAX = 4096  # the dense reference needs an n x n matrix


def batch(n: int, regime: str) -> torch.Tensor:
    """Seeded float32 rows of size n, about REGIMES[regime] bytes."""
    rows = max(1, REGIMES[regime] // (4 * n))
    return torch.randn(rows, n, generator=torch.Generator().manual_seed(n))


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("n", SIZES)
def test_fwht_spinquant(benchmark, torch_threads, n, regime):
    torch_threads(1)
    x, t = batch(n, regime), kernels.FastHadamard(n, threads=1)
    benchmark.group = f"hadamard n={n} {regime}"
    benchmark(t.apply_, x)
    record_bandwidth(benchmark, 2 * x.numel() * 4, 1)  # in place: every byte read and written


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("n", SIZES)
def test_copy(benchmark, torch_threads, n, regime):
    torch_threads(1)
    x = batch(n, regime)
    y = torch.empty_like(x)
    benchmark.group = f"hadamard n={n} {regime}"
    benchmark(y.copy_, x)
    record_bandwidth(benchmark, 2 * x.numel() * 4, 1)


@pytest.mark.parametrize("n", SIZES)
def test_fwht_spinquant_fp16(benchmark, torch_threads, n):
    torch_threads(1)
    x, t = batch(n, "hot").half(), kernels.FastHadamard(n, threads=1)
    benchmark.group = f"hadamard n={n} hot"
    benchmark(t.apply_, x)


@pytest.mark.parametrize("n", SIZES)
def test_fwht_torch_factored(benchmark, torch_threads, n):
    torch_threads(1)
    x = batch(n, "hot")
    benchmark.group = f"hadamard n={n} hot"
    benchmark(hadamard_transform, x)


@pytest.mark.parametrize("n", [n for n in SIZES if n <= DENSE_MAX])
def test_fwht_torch_dense(benchmark, torch_threads, n):
    torch_threads(1)
    x, h = batch(n, "hot"), hadamard_matrix(n, dtype=torch.float32) / math.sqrt(n)
    benchmark.group = f"hadamard n={n} hot"
    benchmark(torch.matmul, x, h.T)
