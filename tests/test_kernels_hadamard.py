"""Native fast Walsh-Hadamard transform (spinquant._kernels) against spinquant.hadamard in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spinquant import _kernels, kernels
from spinquant.hadamard import base_hadamard, hadamard_matrix, hadamard_transform

POW2 = [2**k for k in range(16)]
COMPOSITE = [k * m for k in (12, 20, 28, 36, 40, 44, 52, 60, 108, 140, 156, 172) for m in (1, 4, 32)]
COMPOSITE += [576, 1536, 14336]


def rand(rows: int, n: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, n, generator=torch.Generator().manual_seed(seed))


def reference(x: torch.Tensor) -> torch.Tensor:
    """x @ H_n^T / sqrt(n) in float64 with the dense matrix (independent of the factored torch transform)."""
    n = x.shape[-1]
    return x.double() @ hadamard_matrix(n).T / n**0.5


@pytest.mark.parametrize("n", POW2 + COMPOSITE)
def test_matches_definition_and_is_orthonormal(n: int) -> None:
    x = rand(3 if n <= 2048 else 1, n, n)
    y = kernels.FastHadamard(n)(x)
    want = reference(x) if n <= 2048 else hadamard_transform(x.double())
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    torch.testing.assert_close(y.double().norm(dim=-1), x.double().norm(dim=-1), rtol=1e-5, atol=0)


@pytest.mark.parametrize("n", [64, 1536, 14336])
def test_every_isa_bit_identical_to_scalar(n: int) -> None:
    x = rand(5, n, 1)
    t = kernels.FastHadamard(n)
    with kernels.use_isa("scalar"):
        want = t(x)
    for isa in kernels.supported_isas():
        with kernels.use_isa(isa):
            assert torch.equal(t(x), want), isa


def test_sylvester_is_an_involution() -> None:
    x = rand(4, 2048, 2)
    t = kernels.FastHadamard(2048)
    torch.testing.assert_close(t(t(x)), x, rtol=0, atol=1e-5)


def test_explicit_hk_threads_and_leading_dims() -> None:
    k, hk = base_hadamard(1536)
    x = rand(64, 1536, 3).reshape(4, 16, 1536)
    one = kernels.hadamard_transform_(x.clone(), hk, threads=1)
    two = kernels.hadamard_transform_(x.clone(), hk, threads=2)
    assert k == 12 and torch.equal(one, two)
    torch.testing.assert_close(one.double(), hadamard_transform(x.double()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [64, 1536, 14336])
def test_float16_storage_is_the_rounded_fp32_transform(n: int) -> None:
    x16 = (rand(3, n, 5) * 4).half()
    want = kernels.FastHadamard(n)(x16.float()).half()  # torch rounds to nearest even
    for isa in kernels.supported_isas():
        with kernels.use_isa(isa):
            assert torch.equal(kernels.FastHadamard(n).apply_(x16.clone()), want), isa
    k, hk = base_hadamard(n)
    got = kernels.hadamard_transform_(x16.clone(), hk if k > 1 else None)
    assert torch.equal(got, want)


@settings(max_examples=25, deadline=None)
@given(
    k=st.sampled_from([1, 12, 20, 28, 36, 44, 60]),
    log_m=st.integers(0, 9),
    rows=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_sizes(k: int, log_m: int, rows: int, seed: int) -> None:
    n = k * 2**log_m
    x = rand(rows, n, seed) * 10.0
    y = kernels.FastHadamard(n)(x)
    want = hadamard_transform(x.double())
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: _kernels.HadamardTransform(24), "not K \\* 2\\^k"),
        (lambda: _kernels.HadamardTransform(0), "positive"),
        (lambda: _kernels.HadamardTransform(1536, np.ones((12, 12), np.int8)), "not Hadamard"),
        (lambda: _kernels.HadamardTransform(1500, base_hadamard(1536)[1].numpy()), "not K \\* 2\\^k"),
        (lambda: _kernels.HadamardTransform(1536, np.ones((12, 6), np.int8)), "square"),
        (lambda: _kernels.HadamardTransform(1536, np.ones((12, 12), np.float32)), "int8"),
    ],
)
def test_bad_sizes_and_matrices(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_tensors() -> None:
    t = kernels.FastHadamard(64)
    with pytest.raises(ValueError, match="float32"):
        t.apply_(torch.zeros(2, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match="contiguous"):
        t.apply_(torch.zeros(64, 2).T)
    with pytest.raises(ValueError, match="length n=64"):
        t.apply_(torch.zeros(2, 32))
    with pytest.raises(ValueError, match="not K"):
        kernels.hadamard_transform_(torch.zeros(2, 48))
