"""Colourisation: ``y`` is the grey image, the per-pixel mean of the RGB channels (DDRM,
Kawar et al. 2022, app. D: singular value ``1/sqrt(3)`` per pixel)."""

from __future__ import annotations

from torch import Tensor

from difforge.posterior.operators.base import LinearOperator, image_shape
from difforge.posterior.operators.block_mean import BlockMeanOperator


class ChannelMean(BlockMeanOperator):
    """``y = mean_c x[c]``: ``(N, 3, H, W) -> (N, H * W)``; blocks are a pixel's channels."""

    def to_blocks(self, x: Tensor) -> Tensor:
        c = self.x_shape[0]
        return x.reshape(x.shape[0], c, self.d_y).transpose(1, 2)

    def from_blocks(self, blocks: Tensor) -> Tensor:
        return blocks.transpose(1, 2).reshape(blocks.shape[0], *self.x_shape)


def colorize(x_shape: tuple[int, ...]) -> LinearOperator:
    """The grey image of an RGB image.

    Raises:
        ValueError: a non-image shape or an image that does not have 3 channels.
    """
    c, h, w = image_shape("colorize", x_shape)
    if c != 3:
        raise ValueError(f"operator colorize needs RGB images (3 channels), got {c} channel(s)")
    return ChannelMean((c, h, w), block=3).configured("colorize")
