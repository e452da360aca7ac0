"""Super-resolution: ``y`` is ``x`` average-pooled by ``factor`` (the block-averaging
super-resolution of DDRM, Kawar et al. 2022, app. D)."""

from __future__ import annotations

from torch import Tensor

from difforge.checks import check_int
from difforge.posterior.operators.base import LinearOperator, image_shape
from difforge.posterior.operators.block_mean import BlockMeanOperator


class AveragePooling(BlockMeanOperator):
    """``y = avgpool_f(x)``: ``(N, C, H, W) -> (N, C * H/f * W/f)``, in the pooled image's
    row-major order. Blocks are the ``f x f`` patches; singular values ``1/f``."""

    def __init__(self, x_shape: tuple[int, int, int], factor: int) -> None:
        super().__init__(x_shape, factor * factor)
        self.factor = factor

    def to_blocks(self, x: Tensor) -> Tensor:
        c, h, w = self.x_shape
        f = self.factor
        patches = x.reshape(x.shape[0], c, h // f, f, w // f, f).permute(0, 1, 2, 4, 3, 5)
        return patches.reshape(x.shape[0], self.d_y, f * f)

    def from_blocks(self, blocks: Tensor) -> Tensor:
        c, h, w = self.x_shape
        f = self.factor
        patches = blocks.reshape(blocks.shape[0], c, h // f, w // f, f, f).permute(0, 1, 2, 4, 3, 5)
        return patches.reshape(blocks.shape[0], c, h, w)


def super_resolution(x_shape: tuple[int, ...], factor: int = 2) -> LinearOperator:
    """Average pooling by ``factor`` (an integer >= 2 that divides the height and width).

    Raises:
        ValueError: a non-image shape, or a ``factor`` that is not an integer >= 2 dividing
            both sides.
    """
    c, h, w = image_shape("super_resolution", x_shape)
    factor = check_int("operator.factor", factor, minimum=2)
    if h % factor or w % factor:
        raise ValueError(
            f"operator.factor={factor} must divide the image size {h}x{w} (super_resolution)"
        )
    return AveragePooling((c, h, w), factor).configured("super_resolution", factor=factor)
