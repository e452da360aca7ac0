"""Figures of samples: image grids and sample-versus-density plots (matplotlib, no display)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from difforge.diffusion.gaussian_mixture import GaussianMixture


def to_uint8_images(x: Tensor) -> np.ndarray:
    """``(N, C, H, W)`` in [-1, 1] -> ``(N, H, W, C)`` uint8, as guided-diffusion's evaluator reads."""
    scaled = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).numpy()


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile ``(N, H, W, C)`` uint8 images into one ``(rows*(H+pad)+pad, cols*(W+pad)+pad, C)`` image."""
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        grid[
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + col * (w + pad) : pad + col * (w + pad) + w,
        ] = images[i]
    return grid


def save_image_grid(
    x: Tensor, path: str | Path, upscale: int = 4, columns: int | None = None
) -> np.ndarray:
    """Save images ``(N, C, H, W)`` in [-1, 1] as one PNG grid (nearest-neighbour upscaled),
    ``columns`` wide (None: square)."""
    from PIL import Image

    grid = image_grid(to_uint8_images(x), columns)
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    picture = picture.resize(
        (picture.width * upscale, picture.height * upscale), Image.Resampling.NEAREST
    )
    picture.save(path)
    return grid


def save_vector_plot(
    x: Tensor,
    path: str | Path,
    mixture: GaussianMixture | None = None,
    title: str = "",
    reference: Tensor | None = None,
    truth: Tensor | None = None,
) -> None:
    """1-D: histogram against the true density; 2-D: scatter (over true-density contours); the
    first two coordinates of longer vectors. ``reference``: samples of the law ``x`` should
    follow (an exact posterior), drawn beside them; ``truth``: one point ``(D,)`` marked (the
    clean signal of a restoration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = x.detach().double().cpu().reshape(x.shape[0], -1)
    ref = None if reference is None else reference.detach().double().cpu().reshape(-1, x.shape[1])
    fig, ax = plt.subplots(figsize=(6, 4) if x.shape[1] == 1 else (5, 5))
    if x.shape[1] == 1:
        ax.hist(x[:, 0].numpy(), bins=200, density=True, alpha=0.6, label="samples")
        if ref is not None:
            ax.hist(ref[:, 0].numpy(), bins=200, density=True, histtype="step", label="reference")
        if truth is not None:
            ax.axvline(float(truth.flatten()[0]), color="r", lw=1, label="truth")
        if mixture is not None:
            grid = torch.linspace(float(x.min()) - 1, float(x.max()) + 1, 1000, dtype=torch.float64)
            ax.plot(
                grid.numpy(),
                mixture.log_prob(grid[:, None]).exp().numpy(),
                "k",
                lw=1.5,
                label="true density",
            )
        ax.set_xlabel("x")
        ax.set_ylabel("density")
        ax.legend()
    else:
        if mixture is not None and mixture.dim == 2:
            both = x if ref is None else torch.cat([x, ref])
            lo, hi = both.min(0).values - 1, both.max(0).values + 1
            gx, gy = torch.meshgrid(
                torch.linspace(float(lo[0]), float(hi[0]), 200, dtype=torch.float64),
                torch.linspace(float(lo[1]), float(hi[1]), 200, dtype=torch.float64),
                indexing="ij",
            )
            density = (
                mixture.log_prob(torch.stack([gx.flatten(), gy.flatten()], 1))
                .exp()
                .reshape(200, 200)
            )
            ax.contour(
                gx.numpy(), gy.numpy(), density.numpy(), levels=8, colors="k", linewidths=0.7
            )
        ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=2, alpha=0.4, label="samples")
        if ref is not None:
            ax.scatter(ref[:, 0].numpy(), ref[:, 1].numpy(), s=2, alpha=0.3, label="reference")
        if truth is not None:
            t = truth.detach().double().cpu().flatten()
            ax.scatter([float(t[0])], [float(t[1])], marker="x", c="r", s=40, label="truth")
        if ref is not None or truth is not None:
            ax.legend()
        ax.set_aspect("equal")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_samples_figure(
    x: Tensor, path: str | Path, mixture: GaussianMixture | None = None, title: str = ""
) -> None:
    """The picture of a batch of samples: a grid for images, a plot for vectors."""
    if x.ndim == 4:
        save_image_grid(x, path)
    else:
        save_vector_plot(x, path, mixture, title)
