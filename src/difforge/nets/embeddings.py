"""Shared by the networks: the sinusoidal noise-label embedding, GroupNorm, label checks.

Noise-label embedding
---------------------
Networks receive ``noise_labels = c_noise(sigma)``: a fractional DDPM timestep in ``[0, 1000)``
for discrete schedules, or EDM's ``ln(sigma) / 4`` (about ``-1.6 .. 1.1`` for
``sigma in [0.002, 80]``). Both are embedded with the same fixed sinusoidal (positional)
embedding of Vaswani et al. as used by DDPM (Ho et al. 2020, ``get_timestep_embedding``) and by
EDM (Karras et al. 2022, ``PositionalEmbedding``, which feeds exactly ``ln(sigma) / 4`` to the
ADM and DDPM++ networks):

    freqs_i = max_period ** (-i / (half - 1)),  i = 0 .. half - 1     (1 down to 1 / max_period)
    emb(x)  = [sin(x * freqs), cos(x * freqs)]

Why one embedding serves both ranges: the frequencies span ``[1e-4, 1]`` geometrically. For
timesteps (a range of 1000) the low frequencies give an unambiguous coarse position and the high
ones the fine position. For ``ln(sigma) / 4`` (a range of ~2.7) the highest frequencies turn
through up to ~2.7 rad, so no two values alias, and the lower ones are nearly linear features
``sin(f x) ~ f x``. The embedding's speed ``|d emb / dx| = sqrt(sum_i f_i^2)`` is about 2 for
``dim = 128`` over the whole real line, so values 0.01 apart differ by ~0.02 in embedding space
for either convention (tested in ``tests/test_nets.py``). The embedding is always computed in
float32 (sin/cos of arguments near 1000 are meaningless in half precision) and then cast to the
dtype of the layer that consumes it.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """Fixed sinusoidal embedding of a batch of scalars: ``(B,) -> (B, dim)`` in float32."""

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"SinusoidalEmbedding dim must be >= 2, got dim={dim}")
        if max_period <= 1:
            raise ValueError(f"SinusoidalEmbedding max_period must be > 1, got {max_period}")
        self.dim = int(dim)
        self.max_period = float(max_period)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        # Frequencies are recomputed (not a buffer) so that model.half()/.to(bfloat16) cannot
        # round them; under torch.compile this is constant-folded.
        exponent = torch.arange(half, device=x.device, dtype=torch.float32) / max(half - 1, 1)
        freqs = torch.exp(exponent * -math.log(self.max_period))
        args = x.to(torch.float32)[:, None] * freqs[None, :]
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
        if self.dim % 2:
            emb = F.pad(emb, (0, 1))
        return emb

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period:g}"


def num_groups(channels: int, max_groups: int = 32) -> int:
    """The largest group count <= ``max_groups`` that divides ``channels`` (32 as in DDPM)."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with 32 groups, reduced (to a divisor of ``channels``) for narrow layers."""
    return nn.GroupNorm(num_groups(channels, max_groups), channels, eps=1e-6)


def check_class_labels(labels: torch.Tensor, batch: int, num_classes: int, check: bool) -> None:
    """Shape/dtype check always; value range (``num_classes`` = null allowed) in eager mode."""
    if labels.shape != (batch,):
        raise ValueError(f"class_labels must have shape ({batch},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"class_labels must be an integer tensor, got dtype {labels.dtype}")
    if check and labels.device.type != "meta" and not torch.compiler.is_compiling():
        bad = (labels < 0) | (labels > num_classes)
        if bool(bad.any()):
            raise ValueError(
                f"class_labels out of range: got {labels[bad].unique().tolist()}; allowed are "
                f"0..{num_classes - 1} and {num_classes} (the null label)"
            )


def check_positive_int(owner: str, name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise a one-line ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{owner} {name} must be an integer >= {minimum}, got {name}={value!r}")
    return int(value)
