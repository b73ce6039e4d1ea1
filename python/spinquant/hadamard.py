"""Hadamard matrices of size K * 2^k and the orthonormal fast Hadamard transform.

H_n = kron(H_K, H_m) with m = 2^k in Sylvester's natural order (H_2m = [[H_m, H_m], [H_m, -H_m]]) and
H_K from Paley's constructions I (K = q + 1, q prime, q = 3 mod 4) and II (K = 2(q + 1), q prime,
q = 1 mod 4) or from the sign tables shipped by exllamav2. The decomposition is deterministic: the largest
power of two whose cofactor K has a known matrix (K = 1 for powers of two).

`hadamard_transform` is the definition shared with the native kernels: x viewed as [..., K, m]
(index i = a*m + b), a Walsh-Hadamard transform over b, then y[a', b] = sum_a H_K[a', a] x[a, b], then
a division by sqrt(n); i.e. y = x @ H_n^T / sqrt(n).
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
from torch import Tensor

from spinquant.assets import MissingAssetError, hadamard_table_dir

__all__ = [
    "base_hadamard",
    "hadamard_decomposition",
    "hadamard_matrix",
    "hadamard_transform",
    "is_hadamard_size",
    "random_hadamard",
    "random_orthogonal",
]


def _is_prime(q: int) -> bool:
    """Trial-division primality test (q is at most a few thousand here)."""
    if q < 2:
        return False
    return all(q % d for d in range(2, math.isqrt(q) + 1))


def _quadratic_characters(q: int) -> list[int]:
    """chi(x) for x in GF(q), q prime: 0 at 0, +1 on nonzero squares, -1 otherwise."""
    squares = {(x * x) % q for x in range(1, q)}
    return [0] + [1 if x in squares else -1 for x in range(1, q)]


def _jacobsthal(q: int) -> Tensor:
    """Jacobsthal matrix Q[i, j] = chi(j - i) over GF(q), q prime."""
    chi = torch.tensor(_quadratic_characters(q), dtype=torch.int64)
    idx = torch.arange(q)
    return chi[(idx[None, :] - idx[:, None]) % q]


def _conference(q: int) -> Tensor:
    """The (q+1)x(q+1) Paley conference matrix [[0, 1^T], [+-1, Q]] (skew for q = 3 mod 4, else symmetric)."""
    c = torch.zeros(q + 1, q + 1, dtype=torch.int64)
    c[0, 1:] = 1
    c[1:, 0] = -1 if q % 4 == 3 else 1
    c[1:, 1:] = _jacobsthal(q)
    return c


def _paley1(k: int) -> Tensor:
    """Paley I: H = I + S with S the skew conference matrix of q = k - 1."""
    return torch.eye(k, dtype=torch.int64) + _conference(k - 1)


def _paley2(k: int) -> Tensor:
    """Paley II: each 0 of the symmetric conference matrix -> [[1,-1],[-1,-1]], each +-1 -> +-[[1,1],[1,-1]]."""
    c = _conference(k // 2 - 1)
    one = torch.tensor([[1, 1], [1, -1]], dtype=torch.int64)
    zero = torch.tensor([[1, -1], [-1, -1]], dtype=torch.int64)
    return torch.kron(c, one) + torch.kron(torch.eye(c.shape[0], dtype=torch.int64), zero)


def _paley1_ok(k: int) -> bool:
    return k > 2 and (k - 1) % 4 == 3 and _is_prime(k - 1)


def _paley2_ok(k: int) -> bool:
    return k % 2 == 0 and (k // 2 - 1) % 4 == 1 and _is_prime(k // 2 - 1)


@functools.lru_cache(maxsize=1)
def _table_sizes() -> frozenset[int]:
    """Sizes K of the hadamard_<K>.txt sign tables that are installed (empty without exllamav2)."""
    try:
        folder = hadamard_table_dir()
    except MissingAssetError:
        return frozenset()
    if not folder.is_dir():
        return frozenset()
    sizes = set()
    for path in folder.glob("hadamard_*.txt"):
        suffix = path.stem.removeprefix("hadamard_")
        if suffix.isdigit() and int(suffix) > 2:
            sizes.add(int(suffix))
    return frozenset(sizes)


def _read_table(k: int) -> Tensor:
    """Parse hadamard_<k>.txt (k rows of '+'/'-') into a +-1 matrix."""
    path = hadamard_table_dir() / f"hadamard_{k}.txt"
    rows = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(rows) != k or any(len(r) != k or set(r) - {"+", "-"} for r in rows):
        raise ValueError(f"{path} is not a {k}x{k} table of '+'/'-'; reinstall exllamav2==0.3.2")
    return torch.tensor([[1 if c == "+" else -1 for c in r] for r in rows], dtype=torch.int64)


def _has_base(k: int) -> bool:
    """Whether a K x K Hadamard matrix is available as a base (K = 1 is the trivial one)."""
    return k == 1 or _paley1_ok(k) or _paley2_ok(k) or k in _table_sizes()


@functools.cache
def _base_matrix(k: int) -> Tensor:
    """The K x K base matrix (int64 +-1), checked to satisfy H H^T = K I."""
    if k == 1:
        h = torch.ones(1, 1, dtype=torch.int64)
    elif _paley1_ok(k):
        h = _paley1(k)
    elif _paley2_ok(k):
        h = _paley2(k)
    else:
        h = _read_table(k)
    if not torch.equal(h @ h.T, k * torch.eye(k, dtype=torch.int64)):
        raise ValueError(f"the {k}x{k} base matrix is not Hadamard (H H^T != {k} I)")
    return h


def _decompose(n: int) -> tuple[int, int] | None:
    """(K, m) with n = K * m, m the largest power of two whose cofactor has a base matrix; None if none."""
    if n < 1:
        return None
    m = n & -n
    while m >= 1:
        if _has_base(n // m):
            return n // m, m
        m //= 2
    return None


def _nearest_sizes(n: int, count: int = 2) -> list[int]:
    """Supported sizes closest to n (below and above), for error messages."""
    below = itertools.islice((s for s in range(n - 1, 0, -1) if _decompose(s)), count)
    above = itertools.islice((s for s in itertools.count(n + 1) if _decompose(s)), count)
    return sorted([*below, *above])


def is_hadamard_size(n: int) -> bool:
    """Whether hadamard_matrix(n) exists here."""
    return _decompose(n) is not None


def hadamard_decomposition(n: int) -> tuple[int, int]:
    """(K, m): n = K * m, m = 2^k, H_n = kron(H_K, H_m). Raises ValueError for unsupported n."""
    if n < 1:
        raise ValueError(f"Hadamard size must be a positive integer, got {n}")
    dec = _decompose(n)
    if dec is None:
        hint = "" if _table_sizes() else " (the sign tables need `pip install --no-deps exllamav2==0.3.2`)"
        raise ValueError(
            f"no Hadamard matrix of size {n}: sizes are K * 2^k with K in 1, 12, 20, 28, 36, 44, 52, 60, "
            f"76, 108, 140, 156, 172, ... (Paley I/II or a shipped table){hint}; "
            f"nearest supported sizes: {_nearest_sizes(n)}"
        )
    return dec


def base_hadamard(n: int) -> tuple[int, Tensor]:
    """(K, H_K as an int8 [K, K] tensor) of n's decomposition, for the native kernels."""
    k, _ = hadamard_decomposition(n)
    return k, _base_matrix(k).to(torch.int8)


def _sylvester(m: int) -> Tensor:
    """Sylvester's H_m (natural order), int64."""
    h = torch.ones(1, 1, dtype=torch.int64)
    h2 = torch.tensor([[1, 1], [1, -1]], dtype=torch.int64)
    while h.shape[0] < m:
        h = torch.kron(h2, h)
    return h


@functools.lru_cache(maxsize=64)
def _cached_matrix(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    k, m = hadamard_decomposition(n)
    return torch.kron(_base_matrix(k), _sylvester(m)).to(dtype=dtype, device=device)


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> Tensor:
    """The unnormalized n x n Hadamard matrix H_n = kron(H_K, H_m) (+-1 entries, H H^T = n I)."""
    return _cached_matrix(n, dtype, torch.device(device)).clone()


_RADIX_BITS = 6  # the power-of-two part is applied as radix-(<=64) butterflies: dense 2^r x 2^r matmuls


def _factor_sizes(k: int, m: int) -> list[int]:
    """Factors of n = K * m applied in turn: K (if > 1), then m split into balanced powers of two <= 64."""
    bits = m.bit_length() - 1
    parts = -(-bits // _RADIX_BITS)
    split = [bits // parts + (i < bits % parts) for i in range(parts)] if parts else []
    return ([k] if k > 1 else []) + [1 << b for b in split]


@functools.lru_cache(maxsize=64)
def _factor_matrix(f: int, is_base: bool, dtype: torch.dtype, device: torch.device) -> Tensor:
    h = _base_matrix(f) if is_base else _sylvester(f)
    return h.to(dtype=dtype, device=device)


def hadamard_transform(x: Tensor, dim: int = -1) -> Tensor:
    """Orthonormal Hadamard transform over `dim`: y = x @ H_n^T / sqrt(n) (differentiable).

    H_n = kron(H_K, H_f1, H_f2, ...) with H_m = kron(H_f1, H_f2, ...) (Sylvester), so each factor is one
    small matmul over its axis of x viewed as [..., K, f1, f2, ...]: O(n log n) for powers of two.
    """
    if not x.is_floating_point():
        raise ValueError(f"hadamard_transform needs a floating-point tensor, got {x.dtype}")
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    k, m = hadamard_decomposition(n)
    rows = x.numel() // n
    y = x.reshape(rows, n)
    pre = 1
    for i, f in enumerate(_factor_sizes(k, m)):
        h = _factor_matrix(f, i == 0 and k > 1, x.dtype, x.device)
        post = n // (pre * f)
        y = y.reshape(-1, f) @ h.T if post == 1 else h @ y.reshape(rows * pre, f, post)
        pre *= f
    return (y.reshape(x.shape) * (1.0 / math.sqrt(n))).movedim(-1, dim)


def random_hadamard(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Random orthonormal Hadamard rotation R = diag(s) @ H_n^T / sqrt(n), s uniform +-1 (float64).

    So x @ R == hadamard_transform(x * s).
    """
    s = torch.randint(0, 2, (n,), generator=generator, dtype=torch.int64).to(torch.float64) * 2 - 1
    return s[:, None] * hadamard_matrix(n).T / math.sqrt(n)


def random_orthogonal(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Haar-random orthogonal n x n matrix (float64): QR of a Gaussian with the signs of diag(R) fixed."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]
