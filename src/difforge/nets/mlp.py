"""Residual MLP denoiser for vector data (1-D / 2-D toys, Gaussian mixtures).

Layout::

    noise_labels -> sinusoidal(embed_dim) -> Linear(embed_dim, hidden) -> SiLU
                 -> Linear(hidden, hidden)  (+ class embedding, num_classes + 1 rows)  = emb
    x -> Linear(dim, hidden)
      -> num_layers x ResidualBlock:  h + Linear(dropout(SiLU(Linear(LN(h)) + Linear(SiLU(emb)))))
      -> LN -> SiLU -> Linear(hidden, out_channels)                     (zero-initialised)

The second linear of every block and the output layer start at zero, so the net starts as the
zero function and each block as the identity (as the U-Net's zero-initialised convolutions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from difforge.nets.embeddings import NoiseConditioned, check_positive_int

__all__ = ["MLPDenoiser"]


class _ResidualBlock(nn.Module):
    def __init__(self, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim)
        self.fc1 = nn.Linear(hidden_dim, hidden_dim)
        self.emb_proj = nn.Linear(hidden_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor, emb_act: torch.Tensor) -> torch.Tensor:
        z = F.silu(self.fc1(self.norm(h)) + self.emb_proj(emb_act))
        return h + self.fc2(self.dropout(z))


class MLPDenoiser(NoiseConditioned):
    """Residual MLP: ``net(x, noise_labels, class_labels=None) -> out`` with ``x: (B, dim)``.

    Args:
        dim: data dimension ``D``.
        hidden_dim: width of the residual stream.
        num_layers: number of residual blocks.
        num_classes: 0 = unconditional; when > 0 the class embedding has ``num_classes + 1``
            rows, the label ``num_classes`` is the null label and ``class_labels=None`` means
            all-null. An unconditional net ignores ``class_labels``.
        learned_variance: output ``2 * dim`` values: the mean-parameterisation output, then the
            improved-DDPM variance interpolation ``v``.
        embed_dim: size of the sinusoidal noise-label embedding (see ``embeddings.py``).
        dropout: dropout rate inside the blocks.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int = 256,
        num_layers: int = 4,
        num_classes: int = 0,
        learned_variance: bool = False,
        embed_dim: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        dim = check_positive_int("dim", dim)
        hidden_dim = check_positive_int("hidden_dim", hidden_dim)
        num_layers = check_positive_int("num_layers", num_layers)
        embed_dim = check_positive_int("embed_dim", embed_dim, minimum=2)
        num_classes = check_positive_int("num_classes", num_classes, minimum=0)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLPDenoiser dropout must be in [0, 1), got dropout={dropout!r}")
        self.dim = int(dim)
        self.in_channels = self.dim
        self.out_channels = self.dim * (2 if learned_variance else 1)
        self.learned_variance = bool(learned_variance)

        self._build_conditioning(embed_dim, hidden_dim, num_classes)
        self.input = nn.Linear(dim, hidden_dim)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden_dim, dropout) for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(hidden_dim)
        self.output = nn.Linear(hidden_dim, self.out_channels)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"MLPDenoiser was built for inputs of shape (B, {self.dim}), "
                f"got input of shape {tuple(x.shape)}"
            )
        emb_act = self.condition(noise_labels, class_labels, x.shape[0])
        h = self.input(x)
        for blk in self.blocks:
            h = blk(h, emb_act)
        out = self.output(F.silu(self.norm_out(h)))
        return out.to(x.dtype)
