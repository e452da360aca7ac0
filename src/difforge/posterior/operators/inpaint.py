"""Inpainting masks: a centred box, a half, random pixels. Each builds a :class:`MaskOperator`
(``y = x[mask]``, closed-form SVD) that observes every channel of the kept pixels."""

from __future__ import annotations

import torch
from torch import Tensor

from difforge.checks import check_choice, check_int, check_real
from difforge.posterior.operators.base import LinearOperator, image_shape
from difforge.posterior.operators.mask import MaskOperator

SIDES = ("left", "right", "top", "bottom")


def _mask_operator(
    name: str, x_shape: tuple[int, ...], observed: Tensor, hint: str
) -> MaskOperator:
    """The mask operator of a per-pixel (per-coordinate, for vectors) mask ``observed``, shared
    by the channels of an image; a ValueError naming ``name`` and ``hint`` (the option to change)
    when it observes nothing."""
    if not observed.any():
        raise ValueError(f"operator {name} observes nothing on x_shape {tuple(x_shape)}: {hint}")
    if len(x_shape) == 3:
        return MaskOperator(observed.expand(*x_shape).clone())
    return MaskOperator(observed.reshape(x_shape))


def inpaint_box(x_shape: tuple[int, ...], size: float = 0.5) -> LinearOperator:
    """Hides a centred box of ``round(size * H) x round(size * W)`` pixels (DPS's box
    inpainting, Chung et al. 2023, sec. 4, centred here).

    Args:
        x_shape: ``(C, H, W)``.
        size: the box side as a fraction of the image side, in (0, 1).

    Raises:
        ValueError: a non-image shape, ``size`` outside (0, 1), or a box that hides no pixel.
    """
    _, h, w = image_shape("inpaint_box", x_shape)
    size = check_real("operator.size", size, 0.0, 1.0, low_open=True, high_open=True)
    bh, bw = round(size * h), round(size * w)
    if bh == 0 or bw == 0:
        raise ValueError(
            f"operator.size={size:g} hides no pixel of a {h}x{w} image: give a larger size"
        )
    observed = torch.ones(1, h, w, dtype=torch.bool)
    top, left = (h - bh) // 2, (w - bw) // 2
    observed[:, top : top + bh, left : left + bw] = False
    operator = _mask_operator("inpaint_box", x_shape, observed, "give a smaller operator.size")
    return operator.configured("inpaint_box", size=size)


def inpaint_half(x_shape: tuple[int, ...], side: str = "right") -> LinearOperator:
    """Hides one half of the image (``side``: left, right, top, bottom), or of a vector
    (``left``: its first ``D // 2`` coordinates, ``right``: the rest).

    Raises:
        ValueError: an unknown ``side``; top/bottom of a vector; a vector of one coordinate.
    """
    if len(x_shape) == 1:
        check_choice("operator.side", side, SIDES[:2])
        d = int(x_shape[0])
        if d < 2:
            raise ValueError(
                f"operator inpaint_half needs at least 2 coordinates, got x_shape {tuple(x_shape)}"
            )
        index = torch.arange(d)
        observed = index >= d // 2 if side == "left" else index < d // 2
        return _mask_operator("inpaint_half", x_shape, observed, "choose another side").configured(
            "inpaint_half", side=side
        )
    _, h, w = image_shape("inpaint_half", x_shape)
    check_choice("operator.side", side, SIDES)
    rows = torch.arange(h)[:, None].expand(h, w)
    cols = torch.arange(w)[None, :].expand(h, w)
    hidden = {
        "left": cols < w // 2,
        "right": cols >= w - w // 2,
        "top": rows < h // 2,
        "bottom": rows >= h - h // 2,
    }[side]
    return _mask_operator("inpaint_half", x_shape, ~hidden[None], "choose another side").configured(
        "inpaint_half", side=side
    )


def inpaint_random(x_shape: tuple[int, ...], p: float = 0.7, seed: int = 0) -> LinearOperator:
    """Hides each pixel (all its channels; each coordinate of a vector) independently with
    probability ``p`` (DPS's random inpainting hides 70 %, Chung et al. 2023, sec. 4), drawn
    with ``seed``.

    Raises:
        ValueError: ``p`` outside [0, 1), a negative seed, or a draw that hides every pixel.
    """
    if len(x_shape) not in (1, 3):
        raise ValueError(
            f"operator inpaint_random needs x_shape (C, H, W) or (D,), got {tuple(x_shape)}"
        )
    p = check_real("operator.p", p, 0.0, 1.0, high_open=True)
    seed = check_int("operator.seed", seed)
    pixels = (1, *x_shape[1:]) if len(x_shape) == 3 else tuple(x_shape)
    generator = torch.Generator().manual_seed(seed)
    observed = torch.rand(pixels, generator=generator) >= p
    hint = f"operator.p={p:g} hid every pixel; give a smaller p or another seed"
    operator = _mask_operator("inpaint_random", tuple(x_shape), observed, hint)
    return operator.configured("inpaint_random", p=p, seed=seed)


def denoise(x_shape: tuple[int, ...]) -> LinearOperator:
    """Denoising: ``A = I`` (``y = x + sigma_y n``), the mask that observes everything."""
    return MaskOperator(torch.ones(tuple(x_shape), dtype=torch.bool)).configured("denoise")
