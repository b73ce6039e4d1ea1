"""CayleySGD: stays on the Stiefel manifold and solves orthogonal Procrustes."""

from __future__ import annotations

import pytest
import torch

from spinquant.cayley import CayleySGD, orthogonality_error, qr_retraction
from spinquant.hadamard import random_orthogonal


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("iterations", [None, 2])
def test_stays_orthonormal_under_random_gradients(dtype: torch.dtype, iterations: int | None) -> None:
    x = torch.nn.Parameter(random_orthogonal(32, _gen(0)).to(dtype))
    opt = CayleySGD([x], lr=1.5, momentum=0.9, iterations=iterations)
    g = _gen(1)
    for _ in range(200):
        x.grad = torch.randn(32, 32, generator=g, dtype=torch.float64).to(dtype)
        opt.step()
        assert orthogonality_error(x) < 1e-4
    assert x.dtype == dtype


def test_tall_matrix() -> None:
    x = torch.nn.Parameter(random_orthogonal(20, _gen(0))[:, :6].clone())
    opt = CayleySGD([x], lr=0.5)
    for i in range(20):
        x.grad = torch.randn(20, 6, generator=_gen(i), dtype=torch.float64)
        opt.step()
    assert orthogonality_error(x) < 1e-10


def _procrustes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A, B with B = A R* + noise, and the closed-form minimizer of ||A R - B||_F (from the SVD)."""
    g = _gen(seed)
    a = torch.randn(4 * n, n, generator=g, dtype=torch.float64)
    b = a @ random_orthogonal(n, g) + 0.1 * torch.randn(4 * n, n, generator=g, dtype=torch.float64)
    u, _, vh = torch.linalg.svd(a.T @ b)
    return a, b, u @ vh


@pytest.mark.parametrize(("momentum", "iterations", "lr"), [(0.0, None, 0.01), (0.9, None, 0.003), (0.5, 3, 0.003)])
def test_converges_to_procrustes_solution(momentum: float, iterations: int | None, lr: float) -> None:
    n = 12
    a, b, r_star = _procrustes(n, 0)
    optimum = torch.linalg.matrix_norm(a @ r_star - b).item() ** 2
    start = torch.eye(n, dtype=torch.float64)
    start[:, 0] *= torch.det(r_star)  # Cayley steps stay in one connected component of O(n)
    x = torch.nn.Parameter(start)
    opt = CayleySGD([x], lr=lr, momentum=momentum, iterations=iterations)
    losses = []
    for _ in range(250):
        opt.zero_grad()
        loss = torch.linalg.matrix_norm(a @ x - b) ** 2
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 100 * optimum
    assert losses[-1] == pytest.approx(optimum, rel=1e-6)
    torch.testing.assert_close(x.detach(), r_star, atol=1e-4, rtol=0)


def test_fixed_point_iterations_converge_to_exact_cayley() -> None:
    x0 = random_orthogonal(16, _gen(0))
    grad = torch.randn(16, 16, generator=_gen(1), dtype=torch.float64)
    results = []
    for iterations in (None, 60):
        x = torch.nn.Parameter(x0.clone())
        x.grad = grad.clone()
        CayleySGD([x], lr=0.3, iterations=iterations).step()
        results.append(x.detach())
    torch.testing.assert_close(results[0], results[1], atol=1e-12, rtol=0)


def test_first_step_matches_closed_form() -> None:
    # without momentum the first step is the Cayley transform of W = G X^T - X G^T - X (X^T G X^T - X G^T X)/2
    x0 = random_orthogonal(8, _gen(0))
    grad = torch.randn(8, 8, generator=_gen(1), dtype=torch.float64) * 1e-3
    m = -grad
    w_hat = m @ x0.T - 0.5 * x0 @ (x0.T @ m @ x0.T)
    w = w_hat - w_hat.T
    alpha = 0.1
    expected = torch.linalg.inv(torch.eye(8, dtype=torch.float64) - alpha / 2 * w) @ (
        torch.eye(8, dtype=torch.float64) + alpha / 2 * w
    )
    x = torch.nn.Parameter(x0.clone())
    x.grad = grad
    CayleySGD([x], lr=alpha).step()
    torch.testing.assert_close(x.detach(), expected @ x0)


def test_step_size_is_capped_by_norm() -> None:
    # a huge gradient with a huge lr: alpha = 1/||W||_1, so the step stays bounded and orthonormal
    x = torch.nn.Parameter(torch.eye(10, dtype=torch.float64))
    x.grad = 1e6 * torch.randn(10, 10, generator=_gen(2), dtype=torch.float64)
    CayleySGD([x], lr=1e3).step()
    assert orthogonality_error(x) < 1e-12
    assert torch.linalg.matrix_norm(x.detach() - torch.eye(10, dtype=torch.float64)).item() < 2.0


def test_state_dict_round_trip_resumes_identically() -> None:
    def run(x: torch.nn.Parameter, opt: CayleySGD, seeds: range) -> None:
        for s in seeds:
            x.grad = torch.randn(6, 6, generator=_gen(s), dtype=torch.float64)
            opt.step()

    x = torch.nn.Parameter(torch.eye(6, dtype=torch.float64))
    opt = CayleySGD([x], lr=0.2, momentum=0.8)
    run(x, opt, range(4))
    y = torch.nn.Parameter(torch.eye(6, dtype=torch.float64))
    opt_y = CayleySGD([y], lr=0.2, momentum=0.8)
    run(y, opt_y, range(2))
    z = torch.nn.Parameter(y.detach().clone())
    opt_z = CayleySGD([z], lr=0.2, momentum=0.8)
    opt_z.load_state_dict(opt_y.state_dict())
    run(z, opt_z, range(2, 4))
    assert torch.equal(x.detach(), z.detach())


def test_qr_retraction_and_bad_input() -> None:
    noisy = random_orthogonal(8, _gen(0)) + 1e-3 * torch.randn(8, 8, generator=_gen(1), dtype=torch.float64)
    assert orthogonality_error(qr_retraction(noisy)) < 1e-12
    with pytest.raises(ValueError, match="rows >= columns"):
        CayleySGD([torch.nn.Parameter(torch.zeros(2, 5))])
    with pytest.raises(ValueError, match="momentum"):
        CayleySGD([torch.nn.Parameter(torch.eye(2))], momentum=1.0)
