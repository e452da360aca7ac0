"""Inpainting: ``A`` keeps the observed coordinates of ``x`` (a 0/1 mask)."""

from __future__ import annotations

import torch
from torch import Tensor

from difforge.posterior.operators.base import SVD, LinearOperator


class MaskOperator(LinearOperator):
    """``y = x[mask]``: the observed entries, in row-major order.

    Its SVD is closed-form (Kawar et al. 2022, app. D, inpainting): ``s = 1`` for every observed
    entry, ``V^T`` lists the observed entries first and the missing ones after, ``U = I``.

    Args:
        mask: bool tensor of shape ``x_shape``; True where ``x`` is observed.

    Raises:
        ValueError: a mask that observes nothing.
    """

    name = "mask"
    is_mask = True

    def __init__(self, mask: Tensor) -> None:
        mask = torch.as_tensor(mask, dtype=torch.bool)
        observed = int(mask.sum())
        if observed == 0:
            raise ValueError("operator mask observes nothing: at least one entry must be True")
        super().__init__(tuple(mask.shape), observed)
        self.mask = mask
        flat = mask.flatten()
        # Observed indices first, then missing: the permutation V^T.
        self._order = torch.cat([flat.nonzero().flatten(), (~flat).nonzero().flatten()])

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)[:, self.mask.flatten().to(x.device)]

    def adjoint(self, y: Tensor) -> Tensor:
        out = torch.zeros(y.shape[0], self.d_x, device=y.device, dtype=y.dtype)
        out[:, self.mask.flatten().to(y.device)] = y
        return out.reshape(y.shape[0], *self.x_shape)

    def svd(self) -> SVD:
        order = self._order

        def V(z: Tensor) -> Tensor:
            out = torch.empty_like(z)
            out[:, order.to(z.device)] = z
            return out.reshape(z.shape[0], *self.x_shape)

        def Vt(x: Tensor) -> Tensor:
            return x.reshape(x.shape[0], -1)[:, order.to(x.device)]

        return SVD(
            s=torch.ones(self.d_y, dtype=torch.float64),
            V=V,
            Vt=Vt,
            U=lambda z: z,
            Ut=lambda y: y,
        )

    def pinv(self, y: Tensor) -> Tensor:
        return self.adjoint(y)
