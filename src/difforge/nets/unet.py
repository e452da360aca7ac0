"""DDPM / ADM U-Net.

Written from the papers: Ho et al. 2020 (DDPM, appendix B), Nichol & Dhariwal 2021 (improved
DDPM: learned variance, multi-head attention) and Dhariwal & Nichol 2021 (ADM: more heads,
scale-shift norm "AdaGN", class embedding added to the time embedding).

Layout (``L = len(channel_mult)`` levels, resolution halves between levels)::

    noise_labels -> sinusoidal(base) -> Linear(base, 4 base) -> SiLU -> Linear(4 base, 4 base)
                    (+ class embedding, num_classes + 1 rows, row num_classes = "no class")
    x -> conv3x3(in, base)
    down:   per level: num_res_blocks x [ResBlock (+ attention at attn_resolutions)],
            then a stride-2 conv (or 2x2 average pool) except at the last level
    middle: ResBlock, attention, ResBlock                  (DDPM has attention here)
    up:     per level, reversed: (num_res_blocks + 1) x [concat skip, ResBlock (+ attention)],
            then nearest x2 + conv3x3 (or nearest only) except at level 0
    out:    GroupNorm -> SiLU -> conv3x3(base, out_channels)            (zero-initialised)

    ResBlock(x, emb): h = conv3x3(SiLU(GN(x)))
                      h = GN(h + Linear(SiLU(emb)))              (DDPM)
                       or GN(h) * (1 + scale) + shift            (ADM scale_shift_norm)
                      h = conv3x3(dropout(SiLU(h)))              (zero-initialised)
                      return skip(x) + h                         (skip: 1x1 conv if widths differ)

With the DDPM CIFAR-10 settings (base 128, mult (1, 2, 2, 2), 2 blocks, attention at 16,
32x32x3) this has 35,746,307 parameters, the 35.7M of the paper.

The forward pass has no data-dependent Python control flow: the architecture is fixed at
construction, so the module compiles with ``torch.compile`` without graph breaks (the eager-only
class-label range check is skipped while compiling) and runs in channels_last.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from difforge.nets.embeddings import (
    NoiseConditioned,
    check_image_input,
    check_positive_int,
    group_norm,
)

__all__ = ["AttentionBlock", "Downsample", "ResBlock", "UNet", "Upsample"]


def _call(layer, h: torch.Tensor, emb_act: torch.Tensor) -> torch.Tensor:
    return layer(h, emb_act)


def _zero_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block conditioned on the (already SiLU-activated) embedding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        dropout: float = 0.0,
        scale_shift_norm: bool = False,
    ) -> None:
        super().__init__()
        self.scale_shift_norm = bool(scale_shift_norm)
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, out_channels * (2 if scale_shift_norm else 1))
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero_(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        if in_channels == out_channels:
            self.skip: nn.Module = nn.Identity()
        else:
            self.skip = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb_act: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb_proj(emb_act)[:, :, None, None]
        if self.scale_shift_norm:  # fixed at construction: no data-dependent branching
            scale, shift = e.chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm2(h), scale + 1)
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the ``H * W`` positions, residual, zero-initialised output.

    Uses ``F.scaled_dot_product_attention`` (scale ``1/sqrt(head_dim)``). The reshapes are views
    for channels_last activations; for contiguous ones SDPA receives strided q/k/v.
    """

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        self.channels = channels
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        heads = self.num_heads
        # (B, 3C, HW) -> (B, HW, 3C) with unit-stride channels (a no-op for channels_last input),
        # so that SDPA's CPU flash kernel applies instead of the math kernel, which materialises
        # the full attention matrix.
        qkv = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).contiguous()
        qkv = qkv.view(b, hh * ww, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, HW, head_dim)
        h = F.scaled_dot_product_attention(q, k, v)
        # (B, heads, HW, d) -> (B, HW, heads, d) -> (B, H, W, C) -> (B, C, H, W) [NHWC strides]
        h = h.transpose(1, 2).reshape(b, hh, ww, c).permute(0, 3, 1, 2)
        return x + self.proj(h)


class Downsample(nn.Module):
    """Halve the resolution: stride-2 3x3 conv, or 2x2 average pooling."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.op: nn.Module = (
            nn.Conv2d(channels, channels, 3, stride=2, padding=1) if with_conv else nn.AvgPool2d(2)
        )

    def forward(self, x: torch.Tensor, emb_act: torch.Tensor | None = None) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour, then a 3x3 conv if ``with_conv``."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv: nn.Module = (
            nn.Conv2d(channels, channels, 3, padding=1) if with_conv else nn.Identity()
        )

    def forward(self, x: torch.Tensor, emb_act: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One step of the down or up path: a ResBlock optionally followed by attention."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None) -> None:
        super().__init__()
        self.res = res
        self.attn = attn if attn is not None else nn.Identity()

    def forward(self, x: torch.Tensor, emb_act: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, emb_act))


def _as_int_tuple(name: str, values: Sequence[int] | int) -> tuple[int, ...]:
    if isinstance(values, int):
        values = (values,)
    try:
        values = tuple(values)
    except TypeError:
        raise ValueError(f"UNet {name} must be a sequence of integers, got {values!r}") from None
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
        raise ValueError(f"UNet {name} must be a sequence of integers, got {values!r}")
    return tuple(int(v) for v in values)


class UNet(NoiseConditioned):
    """DDPM/ADM U-Net: ``net(x, noise_labels, class_labels=None) -> out``.

    Args:
        in_channels: image channels ``C``.
        image_size: spatial size ``H = W``; divisible by ``2 ** (len(channel_mult) - 1)``.
        base_channels: width of the first level; the time embedding has ``4 * base_channels``.
        channel_mult: width multiplier per level (one level per resolution).
        num_res_blocks: residual blocks per level on the down path (one more on the up path).
        attn_resolutions: resolutions (in pixels) at which self-attention follows each block.
        dropout: dropout rate inside the residual blocks.
        num_heads: attention heads (ignored when ``head_channels`` is set).
        head_channels: channels per attention head (ADM's ``num_head_channels``); when set the
            number of heads at a level is ``width // head_channels``.
        num_classes: number of classes; 0 = unconditional. When > 0 the class embedding has
            ``num_classes + 1`` rows and the label ``num_classes`` means "no class" (the null
            label of classifier-free guidance); ``class_labels=None`` means all-null.
            An unconditional net ignores ``class_labels``.
        learned_variance: double the output channels: first half the mean-parameterisation
            output (eps, x0, v or F), second half the improved-DDPM variance interpolation ``v``.
        scale_shift_norm: ADM's adaptive group norm, ``GN(h) * (1 + scale) + shift``.
        resample_with_conv: stride-2 conv / conv after nearest upsampling (else pooling / plain
            nearest upsampling).
        checkpointing: activation checkpointing per block (each ResBlock with its attention,
            and the middle blocks) while training: their activations are recomputed in the
            backward pass instead of stored, trading about one more forward pass of compute
            for memory (Chen et al. 2016, "Training deep nets with sublinear memory cost").
            Outputs and gradients are unchanged (dropout masks are replayed).

    ``prefers_channels_last``: training modules default to channels_last on CUDA for this net.

    The attribute ``check_inputs`` (default True) enables the eager-mode class-label range
    check, which synchronises with the device; set it to False for benchmarks. Shape checks are
    always on (they cost nothing).
    """

    prefers_channels_last = True

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        base_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.0,
        num_heads: int = 1,
        head_channels: int | None = None,
        num_classes: int = 0,
        learned_variance: bool = False,
        scale_shift_norm: bool = False,
        resample_with_conv: bool = True,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        channel_mult = _as_int_tuple("channel_mult", channel_mult)
        attn_resolutions = _as_int_tuple("attn_resolutions", attn_resolutions)
        in_channels = check_positive_int("in_channels", in_channels)
        image_size = check_positive_int("image_size", image_size)
        base_channels = check_positive_int("base_channels", base_channels)
        num_res_blocks = check_positive_int("num_res_blocks", num_res_blocks)
        num_heads = check_positive_int("num_heads", num_heads)
        if head_channels is not None:
            head_channels = check_positive_int("head_channels", head_channels)
        num_classes = check_positive_int("num_classes", num_classes, minimum=0)
        if not channel_mult or any(m <= 0 for m in channel_mult):
            raise ValueError(
                f"UNet channel_mult must be a non-empty sequence of positive integers, "
                f"got {channel_mult}"
            )
        if any(r <= 0 for r in attn_resolutions):
            raise ValueError(
                f"UNet attn_resolutions must be positive resolutions, got {attn_resolutions}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"UNet dropout must be in [0, 1), got dropout={dropout!r}")
        factor = 2 ** (len(channel_mult) - 1)
        if image_size % factor:
            lower = image_size // factor * factor
            nearest = f"{lower} or {lower + factor}" if lower else f"{factor}"
            raise ValueError(
                f"UNet image_size={image_size} is not divisible by "
                f"2**(len(channel_mult)-1)={factor} (channel_mult={channel_mult}); "
                f"use a multiple of {factor} (nearest: {nearest}) or fewer levels"
            )
        resolutions = tuple(image_size // 2**i for i in range(len(channel_mult)))
        unreachable = sorted(set(attn_resolutions) - set(resolutions), reverse=True)
        if unreachable:
            raise ValueError(
                f"UNet attn_resolutions={attn_resolutions} contains {tuple(unreachable)}, not "
                f"reached by the down path; reachable resolutions for image_size={image_size} "
                f"and channel_mult={channel_mult} are {resolutions}"
            )

        def heads_for(width: int) -> int:
            if head_channels is not None:
                if width % head_channels:
                    raise ValueError(
                        f"UNet head_channels={head_channels} does not divide the attention "
                        f"width {width}; choose a divisor of {width}"
                    )
                return width // head_channels
            if width % num_heads:
                raise ValueError(
                    f"UNet num_heads={num_heads} does not divide the attention width {width}; "
                    f"choose a divisor of {width}"
                )
            return num_heads

        self.in_channels = int(in_channels)
        self.image_size = int(image_size)
        self.learned_variance = bool(learned_variance)
        self.out_channels = self.in_channels * (2 if learned_variance else 1)
        self.base_channels = int(base_channels)
        self.channel_mult = channel_mult
        self.num_res_blocks = int(num_res_blocks)
        self.attn_resolutions = attn_resolutions
        self.checkpointing = bool(checkpointing)

        emb_ch = 4 * base_channels
        self._build_conditioning(base_channels, emb_ch, num_classes)

        def block(cin: int, cout: int, res: int) -> _Level:
            attn = AttentionBlock(cout, heads_for(cout)) if res in attn_resolutions else None
            rb = ResBlock(cin, cout, emb_ch, dropout, scale_shift_norm)
            return _Level(rb, attn)

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        # Down path. ``skips`` records the width of every tensor pushed for the up path.
        self.down = nn.ModuleList()
        skips = [base_channels]
        ch = base_channels
        for level, mult in enumerate(channel_mult):
            res = resolutions[level]
            for _ in range(num_res_blocks):
                self.down.append(block(ch, base_channels * mult, res))
                ch = base_channels * mult
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(Downsample(ch, resample_with_conv))
                skips.append(ch)
        self.mid1 = ResBlock(ch, ch, emb_ch, dropout, scale_shift_norm)
        self.mid_attn = AttentionBlock(ch, heads_for(ch))
        self.mid2 = ResBlock(ch, ch, emb_ch, dropout, scale_shift_norm)
        # Up path: every _Level consumes one skip; Upsample consumes none.
        self.up = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            res = resolutions[level]
            for _ in range(num_res_blocks + 1):
                self.up.append(block(ch + skips.pop(), base_channels * channel_mult[level], res))
                ch = base_channels * channel_mult[level]
            if level != 0:
                self.up.append(Upsample(ch, resample_with_conv))
        assert not skips
        self.norm_out = group_norm(ch)
        self.conv_out = _zero_(nn.Conv2d(ch, self.out_channels, 3, padding=1))

    # -- forward -----------------------------------------------------------------------------

    def _mid_attention(self, h: torch.Tensor, emb_act: torch.Tensor) -> torch.Tensor:
        return self.mid_attn(h)

    @staticmethod
    def _checkpointed(layer, h: torch.Tensor, emb_act: torch.Tensor) -> torch.Tensor:
        # Non-reentrant: works under torch.compile and with inputs that need no gradient.
        return torch.utils.checkpoint.checkpoint(layer, h, emb_act, use_reentrant=False)

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_image_input("UNet", x, self.in_channels, self.image_size)
        emb_act = self.condition(noise_labels, class_labels, x.shape[0])

        block = self._checkpointed if self.checkpointing and self.training else _call
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = block(layer, h, emb_act) if isinstance(layer, _Level) else layer(h)
            hs.append(h)
        h = block(self.mid1, h, emb_act)
        h = block(self._mid_attention, h, emb_act)
        h = block(self.mid2, h, emb_act)
        for layer in self.up:
            if isinstance(layer, _Level):
                h = block(layer, torch.cat([h, hs.pop()], dim=1), emb_act)
            else:
                h = layer(h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out.to(x.dtype)
