"""Hadamard matrices and the fast transform against dense float64 references."""

from __future__ import annotations

import math

import pytest
import torch

from spinquant.hadamard import (
    base_hadamard,
    hadamard_decomposition,
    hadamard_matrix,
    hadamard_transform,
    is_hadamard_size,
    random_hadamard,
    random_orthogonal,
)

REQUIRED_K = [12, 20, 28, 36, 40, 44, 52, 60, 76, 92, 100, 108, 116, 140, 156, 172, 188, 236, 244, 428]


def _eye(n: int) -> torch.Tensor:
    return torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize("n", [1, 2, 4, 64, 256, *REQUIRED_K])
def test_matrix_is_hadamard(n: int) -> None:
    h = hadamard_matrix(n)
    assert h.dtype == torch.float64 and h.shape == (n, n)
    assert set(h.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(h @ h.T, n * _eye(n))


def test_sylvester_natural_order() -> None:
    # H[i, j] = (-1)^popcount(i & j) is the natural (Sylvester) order the kernels assume
    n = 32
    idx = torch.arange(n)
    expected = (1 - 2 * _popparity(idx)).double()
    assert torch.equal(hadamard_matrix(n), expected)


def _popparity(idx: torch.Tensor) -> torch.Tensor:
    """popcount(i & j) mod 2 for all pairs."""
    a = idx[:, None] & idx[None, :]
    bits = torch.zeros_like(a)
    for b in range(8):
        bits ^= (a >> b) & 1
    return bits


@pytest.mark.parametrize(
    ("n", "k", "m"),
    [
        (576, 36, 16),
        (1536, 12, 128),
        (4864, 76, 64),
        (11008, 172, 64),
        (3072, 12, 256),
        (2560, 20, 128),
        (5120, 20, 256),
        (640, 20, 32),
        (896, 28, 32),
        (4096, 1, 4096),
        (1, 1, 1),
        (40, 20, 2),
    ],
)
def test_decomposition(n: int, k: int, m: int) -> None:
    assert hadamard_decomposition(n) == (k, m)
    kk, hk = base_hadamard(n)
    assert kk == k and hk.dtype == torch.int8 and hk.shape == (k, k)
    assert torch.equal(hk.long() @ hk.long().T, k * torch.eye(k, dtype=torch.long))


def test_matrix_is_kron_of_base_and_sylvester() -> None:
    k, hk = base_hadamard(1536)
    assert torch.equal(hadamard_matrix(1536), torch.kron(hk.double(), hadamard_matrix(128)))


@pytest.mark.parametrize("n", [6, 9, 668, 0, -4])
def test_unsupported_sizes_raise(n: int) -> None:
    assert not is_hadamard_size(n)
    with pytest.raises(ValueError, match=f"size {n}" if n > 0 else "positive"):
        hadamard_matrix(n)
    if n > 0:
        with pytest.raises(ValueError, match=f"size {n}"):
            hadamard_transform(torch.zeros(2, n))


def test_error_names_nearest_sizes() -> None:
    with pytest.raises(ValueError, match=r"nearest supported sizes: \[660, 664, 672, 676\]"):
        hadamard_decomposition(668)


@pytest.mark.parametrize("n", [1, 2, 8, 64, 128, 1024, 12, 24, 576, 1536, 76 * 4, 40, 172 * 2])
def test_fast_transform_matches_dense(n: int) -> None:
    x = torch.randn(3, 5, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    expected = x @ hadamard_matrix(n).T / math.sqrt(n)
    torch.testing.assert_close(hadamard_transform(x), expected, rtol=0, atol=1e-12)
    x32 = x.float()
    torch.testing.assert_close(hadamard_transform(x32), expected.float(), rtol=1e-5, atol=1e-5)


def test_transform_other_dim_and_involution() -> None:
    x = torch.randn(64, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = hadamard_transform(x, dim=0)
    torch.testing.assert_close(y, (x.T @ hadamard_matrix(64).T / 8).T)
    # Sylvester matrices are symmetric: the orthonormal transform is its own inverse
    torch.testing.assert_close(hadamard_transform(y, dim=0), x)


def test_transform_is_orthonormal_and_differentiable() -> None:
    x = torch.randn(4, 1536, dtype=torch.float64, requires_grad=True)
    y = hadamard_transform(x)
    torch.testing.assert_close(y.norm(dim=-1), x.detach().norm(dim=-1))
    g = torch.randn_like(y)
    (y * g).sum().backward()
    torch.testing.assert_close(x.grad, g @ hadamard_matrix(1536) / math.sqrt(1536))


def test_transform_rejects_integers() -> None:
    with pytest.raises(ValueError, match="floating-point"):
        hadamard_transform(torch.ones(4, dtype=torch.int32))


@pytest.mark.parametrize("n", [64, 576, 12])
def test_random_hadamard(n: int) -> None:
    r = random_hadamard(n, torch.Generator().manual_seed(3))
    assert r.dtype == torch.float64
    torch.testing.assert_close(r.T @ r, _eye(n), rtol=0, atol=1e-12)
    assert torch.equal(r, random_hadamard(n, torch.Generator().manual_seed(3)))
    assert not torch.equal(r, random_hadamard(n, torch.Generator().manual_seed(4)))
    # documented form: x @ R == hadamard_transform(x * s), s = +-1 on R's row signs
    s = torch.sign(r[:, 0]) * torch.sign(hadamard_matrix(n)[0, :])
    x = torch.randn(2, n, dtype=torch.float64)
    torch.testing.assert_close(x @ r, hadamard_transform(x * s))


def test_random_orthogonal() -> None:
    q = random_orthogonal(50, torch.Generator().manual_seed(0))
    torch.testing.assert_close(q.T @ q, _eye(50), rtol=0, atol=1e-12)
    assert torch.equal(q, random_orthogonal(50, torch.Generator().manual_seed(0)))
