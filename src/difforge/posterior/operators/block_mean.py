"""Operators that average disjoint blocks of ``b`` entries of ``x`` (pooling, colourisation).

Each row of ``A`` is ``1/b`` on one block and 0 elsewhere; the rows are orthogonal with norm
``1/sqrt(b)``, so the SVD is closed-form (Kawar et al. 2022, app. D): ``U = I``, every singular
value is ``1/sqrt(b)``, and ``V`` holds, per block, an orthonormal basis of ``R^b`` whose first
vector is ``ones(b)/sqrt(b)`` (the seen direction). ``V^T x`` lists the blocks' first
coefficients (seen, in the order of ``y``) and then their other ``b - 1`` coefficients.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from difforge.posterior.operators.base import SVD, LinearOperator


def mean_first_basis(b: int) -> Tensor:
    """A ``(b, b)`` orthogonal float64 matrix whose first column is ``ones(b) / sqrt(b)``
    (Gram-Schmidt of ``[ones, e_2, ..., e_b]`` through QR)."""
    start = torch.eye(b, dtype=torch.float64)
    start[:, 0] = 1.0
    q, r = torch.linalg.qr(start)
    return q * torch.sign(torch.diagonal(r))  # first column +ones/sqrt(b), not its negative


class BlockMeanOperator(LinearOperator):
    """``y_k = mean of block k of x``; subclasses say how ``x`` splits into blocks.

    Args:
        x_shape: the signal's shape.
        block: ``b``, the entries per block; ``d_y = d_x / b``.
    """

    def __init__(self, x_shape: tuple[int, ...], block: int) -> None:
        super().__init__(x_shape, math.prod(x_shape) // block)
        self.block = block
        self.basis = mean_first_basis(block)

    def to_blocks(self, x: Tensor) -> Tensor:
        """``(N, *x_shape) -> (N, d_y, b)``, block ``k`` giving ``y_k``."""
        raise NotImplementedError

    def from_blocks(self, blocks: Tensor) -> Tensor:
        """The inverse of :meth:`to_blocks`: ``(N, d_y, b) -> (N, *x_shape)``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.to_blocks(x).mean(-1)

    def adjoint(self, y: Tensor) -> Tensor:
        return self.from_blocks((y / self.block)[..., None].expand(*y.shape, self.block))

    def svd(self) -> SVD:
        n_seen = self.d_y

        def Vt(x: Tensor) -> Tensor:
            coeffs = self.to_blocks(x) @ self.basis.to(x)
            return torch.cat([coeffs[..., 0], coeffs[..., 1:].flatten(1)], dim=1)

        def V(z: Tensor) -> Tensor:
            rest = z[:, n_seen:].reshape(z.shape[0], n_seen, self.block - 1)
            coeffs = torch.cat([z[:, :n_seen, None], rest], dim=-1)
            return self.from_blocks(coeffs @ self.basis.to(z).T)

        return SVD(
            s=torch.full((n_seen,), 1 / math.sqrt(self.block), dtype=torch.float64),
            V=V,
            Vt=Vt,
            U=lambda z: z,
            Ut=lambda y: y,
        )

    def pinv(self, y: Tensor) -> Tensor:
        """``A^T (A A^T)^{-1} y``, with ``A A^T = I / b``: each block set to its mean."""
        return self.from_blocks(y[..., None].expand(*y.shape, self.block))
