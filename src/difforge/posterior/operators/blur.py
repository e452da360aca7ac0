"""Gaussian deblurring: ``y`` is ``x`` convolved with a separable Gaussian kernel.

Each channel is blurred along its rows and columns by 1-D "same" convolutions with zero padding:
``Y = B_H X B_W^T`` with ``B_n`` the ``n x n`` banded matrix of the 1-D kernel. In row-major
order ``A = B_H (x) B_W`` (a Kronecker product), so its SVD is the Kronecker product of the two
1-D SVDs (Kawar et al. 2022, app. D, deblurring): singular values ``s_H[i] s_W[j]``, sorted here
in decreasing order over all channels and pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from difforge.checks import check_int, check_real
from difforge.posterior.operators.base import SVD, LinearOperator, image_shape


def gaussian_kernel(kernel_size: int, std: float) -> Tensor:
    """``(kernel_size,)`` float64 taps ``exp(-j^2 / (2 std^2))``, ``j = -k/2..k/2``, summing to 1."""
    j = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
    taps = torch.exp(-(j**2) / (2 * std**2))
    return taps / taps.sum()


def convolution_matrix(n: int, kernel: Tensor) -> Tensor:
    """The ``(n, n)`` matrix of the centred 1-D convolution with zero padding:
    ``B[i, j] = kernel[j - i + k//2]`` where that index exists."""
    half = kernel.numel() // 2
    offset = torch.arange(n)[None, :] - torch.arange(n)[:, None] + half
    inside = (offset >= 0) & (offset < kernel.numel())
    return torch.where(inside, kernel[offset.clamp(0, kernel.numel() - 1)], 0.0)


class SeparableBlur(LinearOperator):
    """``y = vec(B_H X_c B_W^T)`` per channel: ``(N, C, H, W) -> (N, C * H * W)``."""

    def __init__(self, x_shape: tuple[int, int, int], kernel: Tensor) -> None:
        super().__init__(x_shape, x_shape[0] * x_shape[1] * x_shape[2])
        _, h, w = x_shape
        self.rows = convolution_matrix(h, kernel)
        self.cols = convolution_matrix(w, kernel)
        self._svd: SVD | None = None

    def _apply(self, x: Tensor, left: Tensor, right: Tensor) -> Tensor:
        """``left X right^T`` for every channel of ``x: (N, C, H, W)``."""
        return left.to(x) @ x @ right.to(x).T

    def forward(self, x: Tensor) -> Tensor:
        return self._apply(x.reshape(x.shape[0], *self.x_shape), self.rows, self.cols).flatten(1)

    def adjoint(self, y: Tensor) -> Tensor:
        return self._apply(y.reshape(y.shape[0], *self.x_shape), self.rows.T, self.cols.T)

    def svd(self) -> SVD:
        if self._svd is None:
            u_h, s_h, vt_h = torch.linalg.svd(self.rows)
            u_w, s_w, vt_w = torch.linalg.svd(self.cols)
            c = self.x_shape[0]
            s = (s_h[:, None] * s_w[None, :]).flatten().repeat(c)
            s, order = torch.sort(s, descending=True, stable=True)
            shape = self.x_shape

            def spectral(x: Tensor, left: Tensor, right: Tensor) -> Tensor:
                # left^T X right per channel, listed in decreasing singular value
                return self._apply(x.reshape(x.shape[0], *shape), left.T, right.T).flatten(1)[
                    :, order.to(x.device)
                ]

            def spatial(z: Tensor, left: Tensor, right: Tensor) -> Tensor:
                coeffs = torch.empty_like(z)
                coeffs[:, order.to(z.device)] = z
                return self._apply(coeffs.reshape(z.shape[0], *shape), left, right)

            self._svd = SVD(
                s=s,
                V=lambda z: spatial(z, vt_h.T, vt_w.T),
                Vt=lambda x: spectral(x, vt_h.T, vt_w.T),
                U=lambda z: spatial(z, u_h, u_w).flatten(1),
                Ut=lambda y: spectral(y, u_h, u_w),
            )
        return self._svd


def blur(x_shape: tuple[int, ...], kernel_size: int = 5, std: float = 1.0) -> LinearOperator:
    """Gaussian blur of ``kernel_size`` taps (odd) and standard deviation ``std`` pixels.

    The defaults suit difforge's 8x8 and 32x32 images (DPS blurs 256x256 images with 61 taps
    of std 3, Chung et al. 2023, sec. 4).

    Raises:
        ValueError: a non-image shape, an even or non-positive ``kernel_size``, ``std <= 0``.
    """
    c, h, w = image_shape("blur", x_shape)
    kernel_size = check_int("operator.kernel_size", kernel_size, minimum=1)
    if kernel_size % 2 == 0:
        raise ValueError(f"operator.kernel_size must be odd, got {kernel_size}")
    std = check_real("operator.std", std, 0.0, low_open=True)
    operator = SeparableBlur((c, h, w), gaussian_kernel(kernel_size, std))
    return operator.configured("blur", kernel_size=kernel_size, std=std)
