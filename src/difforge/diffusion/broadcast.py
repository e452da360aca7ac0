"""Per-sample values against batched data: the one broadcast every formula here needs."""

from __future__ import annotations

from torch import Tensor


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Reshape ``values: (B,)`` to ``(B, 1, ...)`` so it broadcasts against ``like: (B, ...)``.

    Floating values take ``like``'s dtype (the data's precision decides the arithmetic); masks
    and integers keep theirs.
    """
    if values.is_floating_point():
        values = values.to(like.dtype)
    return values.reshape(-1, *([1] * (like.ndim - 1)))
