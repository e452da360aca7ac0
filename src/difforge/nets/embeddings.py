"""Shared by the networks: the noise/class conditioning, GroupNorm, input checks.

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

import torch
import torch.nn.functional as F
from torch import nn

from difforge.checks import check_int


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


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """:func:`check_int` for a network's constructor argument ``name``, named by
    the key a user sets (``model.<name>``)."""
    return check_int(f"model.{name}", value, minimum)


class NoiseConditioned(nn.Module):
    """Base of the networks: one conditioning vector per sample from its noise and class labels,

        emb = SiLU(Linear(SiLU(Linear(sinusoidal(noise_labels)))) + label_embed[class_labels])

    (DDPM's time embedding, Ho et al. 2020, appendix B; the class embedding added to it as in
    ADM, Dhariwal & Nichol 2021; DiT's ``c``). The label table has ``num_classes + 1`` rows, the
    last the null label used for ``class_labels=None`` (classifier-free guidance).
    """

    num_classes: int
    check_inputs: bool
    label_embed: nn.Embedding | None

    def _build_conditioning(self, frequency_dim: int, emb_dim: int, num_classes: int) -> None:
        """The sinusoidal embedding of width ``frequency_dim``, the MLP to ``emb_dim`` and the
        label table (none when ``num_classes`` is 0)."""
        self.num_classes = num_classes
        self.check_inputs = True  # the eager-mode class-label range check
        self.noise_embed = SinusoidalEmbedding(frequency_dim)
        self.time_mlp = nn.Sequential(
            nn.Linear(frequency_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.label_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None

    def condition(
        self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None, batch: int
    ) -> torch.Tensor:
        """``noise_labels``: ``()`` or ``(batch,)``; ``class_labels``: ``(batch,)`` integer or
        None. Returns ``SiLU(emb)``: ``(batch, emb_dim)``.

        Raises:
            ValueError: labels of another shape, or (eager mode) class labels out of range.
        """
        if noise_labels.ndim == 0:
            noise_labels = noise_labels.expand(batch)
        elif noise_labels.shape != (batch,):
            raise ValueError(
                f"noise_labels must have shape ({batch},) to match the batch, "
                f"got {tuple(noise_labels.shape)}"
            )
        emb = self.time_mlp(self.noise_embed(noise_labels).to(self.time_mlp[0].weight.dtype))
        if self.label_embed is not None:
            if class_labels is None:
                emb = emb + self.label_embed.weight[self.num_classes]
            else:
                check_class_labels(class_labels, batch, self.num_classes, self.check_inputs)
                emb = emb + self.label_embed(class_labels)
        return F.silu(emb)


def check_image_input(owner: str, x: torch.Tensor, channels: int, image_size: int) -> None:
    """Raise a one-line ValueError unless ``x`` is ``(B, channels, image_size, image_size)``."""
    if x.ndim != 4 or x.shape[1:] != (channels, image_size, image_size):
        raise ValueError(
            f"{owner} was built for {channels} input channel(s) at {image_size}x{image_size}, "
            f"got input of shape {tuple(x.shape)}"
        )
