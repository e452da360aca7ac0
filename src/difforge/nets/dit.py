"""Diffusion Transformer (DiT, Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

Layout (``p = patch_size``, ``N = (image_size / p)^2`` tokens of width ``hidden_size``)::

    x (B, C, H, W) -> conv p x p, stride p (patchify) -> (B, N, hidden) + fixed 2-D sin-cos position
    c = MLP(sinusoidal_256(noise_labels)) + class embedding   (num_classes + 1 rows; row
                                                               num_classes = the null class for CFG)
    depth x adaLN-Zero block (sec. 3.2, fig. 3):
        shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c))         (zero-initialised)
        x = x + gate1 * Attention(LN(x) * (1 + scale1) + shift1)              (SDPA, num_heads)
        x = x + gate2 * MLP(LN(x) * (1 + scale2) + shift2)                    (GELU-tanh, 4x)
    final: shift, scale = Linear(SiLU(c)); Linear(LN(x) * (1 + scale) + shift) (both zero-initialised)
    -> (B, N, p * p * out_channels) -> unpatchify -> (B, out_channels, H, W)

LayerNorms have no affine parameters (eps 1e-6). Initialisation follows the paper's code:
xavier-uniform linear layers (the patch convolution as a linear map), N(0, 0.02) embeddings,
zero adaLN modulations and zero output layer, so every block is the identity at initialisation.

Presets (table 1; the paper's parameter counts at 32x32x4 latents, 1000 classes and a learned
variance, i.e. ``out_channels = 2 C``): S (hidden 384, depth 12, heads 6) 33 M, B (768, 12, 12)
130 M, L (1024, 24, 16) 458 M, XL (1152, 28, 16) 675 M, each with patch size 2 (4 and 8 change
the count only through the patch and output layers). The counts include the fixed position
embedding, as the paper's code (a frozen parameter there, a buffer here) does.

Interface as every difforge network: ``net(x, noise_labels, class_labels=None) -> out`` with
``x: (B, in_channels, image_size, image_size)``, ``noise_labels: (B,)`` float (``c_noise``),
``class_labels: (B,)`` long or None (None: the null class for a conditional network). The forward
pass has no data-dependent control flow, so it compiles with ``torch.compile`` without graph
breaks (the eager-only class-label range check is skipped while compiling).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from difforge.nets.embeddings import NoiseConditioned, check_image_input, check_positive_int

FREQUENCY_DIM = 256  # the sinusoidal embedding width of the paper's timestep embedder


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``(len(positions), dim)``: ``[sin(pos * w), cos(pos * w)]``, ``w_i = 10000^(-i / (dim/2))``."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding ``(grid_size^2, dim)`` float32, row-major tokens:
    the first half of the channels encode the column, the second half the row (MAE/DiT)."""
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    return torch.cat(
        [sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1
    ).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention over tokens ``(B, N, D)`` with ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).unbind(2)
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(h.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """One adaLN-Zero block (Peebles & Xie 2023, fig. 3): ``(B, N, D), (B, D) -> (B, N, D)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
        )
        self.modulation = nn.Linear(dim, 6 * dim)

    def forward(self, x: torch.Tensor, c_act: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c_act).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(NoiseConditioned):
    """Diffusion Transformer (see the module docstring).

    Args:
        in_channels, image_size: the input ``(in_channels, image_size, image_size)``.
        patch_size: side of a patch; must divide ``image_size``.
        hidden_size, depth, num_heads: token width, number of blocks, attention heads
            (``hidden_size`` divisible by ``num_heads`` and by 4 for the 2-D position embedding).
        mlp_ratio: MLP width over ``hidden_size``.
        num_classes: 0 = unconditional; else ``num_classes + 1`` label rows, the last the null class.
        learned_variance: twice the output channels (the paper's ``learn_sigma``).
        checkpointing: recompute each block's activations in the backward pass
            (``torch.utils.checkpoint``): less memory, about one more forward of compute.
    Raises:
        ValueError: on a patch size that does not divide the image size, or widths that do not
            divide as stated, naming the values.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        patch_size: int = 2,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        learned_variance: bool = False,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        in_channels = check_positive_int("in_channels", in_channels)
        image_size = check_positive_int("image_size", image_size)
        patch_size = check_positive_int("patch_size", patch_size)
        hidden_size = check_positive_int("hidden_size", hidden_size)
        depth = check_positive_int("depth", depth)
        num_heads = check_positive_int("num_heads", num_heads)
        num_classes = check_positive_int("num_classes", num_classes, minimum=0)
        if image_size % patch_size:
            divisors = [p for p in range(1, image_size + 1) if image_size % p == 0]
            raise ValueError(
                f"DiT image_size={image_size} is not divisible by patch_size={patch_size}; "
                f"allowed patch sizes for this image size: {divisors}"
            )
        if hidden_size % num_heads or hidden_size % 4:
            raise ValueError(
                f"DiT hidden_size={hidden_size} must be divisible by num_heads={num_heads} and by 4"
            )
        if not mlp_ratio > 0:
            raise ValueError(f"DiT mlp_ratio must be > 0, got {mlp_ratio}")
        self.in_channels = in_channels
        self.image_size = image_size
        self.patch_size = patch_size
        self.learned_variance = bool(learned_variance)
        self.out_channels = in_channels * (2 if learned_variance else 1)
        self.checkpointing = bool(checkpointing)
        self.grid_size = image_size // patch_size

        self.patch_embed = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.pos_embed: torch.Tensor
        self.register_buffer(
            "pos_embed", sincos_2d(hidden_size, self.grid_size)[None], persistent=False
        )
        self._build_conditioning(FREQUENCY_DIM, hidden_size, num_classes)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Linear(hidden_size, 2 * hidden_size)
        self.linear_out = nn.Linear(hidden_size, patch_size**2 * self.out_channels)
        self._initialise()

    def _initialise(self) -> None:
        linears = [m for m in self.modules() if isinstance(m, nn.Linear)]
        for layer in linears:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.out_channels, -1))
        nn.init.zeros_(cast(torch.Tensor, self.patch_embed.bias))
        for module in (self.time_mlp[0], self.time_mlp[2]):
            nn.init.normal_(cast(nn.Linear, module).weight, std=0.02)
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.weight, std=0.02)
        zeroed = [cast(DiTBlock, block).modulation for block in self.blocks]
        for linear in (*zeroed, self.modulation_out, self.linear_out):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, p * p * C) -> (B, C, H, W)``."""
        b, g, p, c = tokens.shape[0], self.grid_size, self.patch_size, self.out_channels
        x = tokens.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, g * p, g * p)

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_image_input("DiT", x, self.in_channels, self.image_size)
        c_act = self.condition(noise_labels, class_labels, x.shape[0])
        h = self.patch_embed(x).flatten(2).transpose(1, 2)
        # The residual stream keeps the patch embedding's dtype (bf16 under autocast), not the
        # float32 of the label embedding in c_act.
        h = h + self.pos_embed.to(h.dtype)
        for block in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, c_act, use_reentrant=False)
            else:
                h = block(h, c_act)
        shift, scale = self.modulation_out(c_act).chunk(2, dim=1)
        out = self.linear_out(modulate(self.norm_out(h), shift, scale))
        return self.unpatchify(out).to(x.dtype)
