"""Cayley SGD with momentum on the Stiefel manifold (Li, Li & Todorovic, ICLR 2020), as SpinQuant uses it.

For a parameter X (n x p, n >= p, X^T X = I) with gradient G, one step is
    M <- beta M - G
    W_hat = M X^T - 1/2 X (X^T M X^T),   W = W_hat - W_hat^T          (skew-symmetric, n x n)
    M <- W X                                                          (momentum projected on the tangent)
    alpha = min(lr, 2q / (||W||_1 + eps))                             (q = 0.5: alpha <= 1 / ||W||_1)
    X <- (I - alpha/2 W)^-1 (I + alpha/2 W) X                         (Cayley transform)
The Cayley transform is solved exactly (a linear solve) by default, or approximated by the paper's
fixed-point iterations Y <- X + alpha/2 W (X + Y). The update runs in float64 whatever the parameter dtype;
X is re-orthonormalized by QR every `qr_every` steps or as soon as ||X^T X - I||_F exceeds `tol`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

__all__ = ["CayleySGD", "orthogonality_error", "qr_retraction"]


def orthogonality_error(x: Tensor) -> float:
    """||X^T X - I||_F in float64."""
    x64 = x.detach().to(torch.float64)
    eye = torch.eye(x.shape[1], dtype=torch.float64, device=x.device)
    return torch.linalg.matrix_norm(x64.T @ x64 - eye).item()


def qr_retraction(x: Tensor) -> Tensor:
    """The nearest-in-spirit orthonormal matrix: Q of X = QR with the signs of diag(R) made positive."""
    q, r = torch.linalg.qr(x)
    sign = torch.sign(torch.diagonal(r))
    return q * torch.where(sign == 0, torch.ones_like(sign), sign)[None, :]


class CayleySGD(torch.optim.Optimizer):
    """SGD with momentum that keeps each (n x p, n >= p) parameter orthonormal via Cayley steps."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1.5,
        momentum: float = 0.0,
        q: float = 0.5,
        eps: float = 1e-8,
        iterations: int | None = None,
        qr_every: int = 100,
        tol: float = 1e-5,
    ) -> None:
        if lr < 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if iterations is not None and iterations < 1:
            raise ValueError(f"iterations must be >= 1 (or None for the exact Cayley solve), got {iterations}")
        defaults = dict(lr=lr, momentum=momentum, q=q, eps=eps, iterations=iterations, qr_every=qr_every, tol=tol)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2 or p.shape[0] < p.shape[1]:
                    raise ValueError(
                        f"CayleySGD needs 2-D parameters with rows >= columns (n x p, n >= p), got {tuple(p.shape)}"
                    )

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One Cayley step for every parameter with a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: Tensor, group: dict) -> None:
        state = self.state[p]
        x = p.detach().to(torch.float64)
        g = p.grad.detach().to(torch.float64)
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(x)
            state["step"] = 0
        m = group["momentum"] * state["momentum_buffer"] - g
        w_hat = m @ x.T - 0.5 * x @ (x.T @ m @ x.T)
        w = w_hat - w_hat.T
        alpha = min(group["lr"], 2 * group["q"] / (torch.linalg.matrix_norm(w, ord=1).item() + group["eps"]))
        y = _cayley(x, w, alpha, group["iterations"])
        state["step"] += 1
        if state["step"] % group["qr_every"] == 0 or orthogonality_error(y) > group["tol"]:
            y = qr_retraction(y)
        state["momentum_buffer"] = w @ x
        p.copy_(y.to(p.dtype))


def _cayley(x: Tensor, w: Tensor, alpha: float, iterations: int | None) -> Tensor:
    """(I - alpha/2 W)^-1 (I + alpha/2 W) X, exactly or by fixed-point iterations from X + alpha W X."""
    half = 0.5 * alpha * w
    if iterations is None:
        eye = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
        return torch.linalg.solve(eye - half, x + half @ x)
    y = x + alpha * (w @ x)
    for _ in range(iterations):
        y = x + half @ (x + y)
    return y
