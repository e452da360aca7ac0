"""The lessons' figures (matplotlib with the Agg backend, no display).

Every function takes plain arrays, writes one PNG of exactly ``figsize * dpi`` pixels (constrained
layout, no tight bounding box, so tests can check the size) and returns its path.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DPI = 100
MODE_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
SAMPLER_STYLES = {
    "ddpm": ("tab:blue", "o"),
    "ddim": ("tab:orange", "s"),
    "euler": ("tab:green", "^"),
    "heun": ("tab:red", "D"),
    "dpmpp_2m": ("tab:purple", "v"),
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path, dpi: int = DPI) -> Path:
    """Save as a 256-colour PNG (heat maps compress badly in full colour; the docs keep each
    figure under 300 KB)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    _pyplot().close(fig)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
            path, optimize=True
        )
    return path


def figure_size(figsize: tuple[float, float], dpi: int = DPI) -> tuple[int, int]:
    """The pixel size ``(width, height)`` of a saved figure."""
    return round(figsize[0] * dpi), round(figsize[1] * dpi)


def mode_colour(k: int) -> str:
    return MODE_COLOURS[k % len(MODE_COLOURS)]


# ------------------------------------------------------------------------------- lesson 1: blurring
BLURRING_1D_SIZE = (15.0, 9.0)


def plot_blurring_1d(
    panels: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = ""
) -> Path:
    """Per schedule (one column each): a ridge plot of q(x_t) at a few t (top) and a heat map of
    q(x_t) over (x, t) with the modes' positions and the merge time (bottom).

    ``panels[name]`` holds ``x (G,)``, ``ridge_t (R,)``, ``ridge_density (R, G)``,
    ``ridge_modes (R,)``, ``heat_t (H,)``, ``heat_density (H, G)``, ``mode_t``/``mode_x``
    (positions of the local maxima), ``merge_t`` (or None) and ``T``.
    """
    plt = _pyplot()
    names = list(panels)
    fig, axes = plt.subplots(
        2,
        len(names),
        figsize=BLURRING_1D_SIZE,
        layout="constrained",
        squeeze=False,
        height_ratios=[1.15, 1],
    )
    for column, name in enumerate(names):
        p = panels[name]
        x = np.asarray(p["x"])
        ax = axes[0, column]
        density = np.asarray(p["ridge_density"])
        offset = 0.9 * float(density.max())
        for row, (t, curve, modes) in enumerate(
            zip(p["ridge_t"], density, p["ridge_modes"], strict=True)
        ):
            base = offset * (len(density) - 1 - row)
            merged = p["merge_t"] is not None and int(t) >= int(p["merge_t"])
            colour = "tab:red" if merged else "tab:blue"
            ax.fill_between(x, base, base + curve, color=colour, alpha=0.25, lw=0)
            ax.plot(x, base + curve, color=colour, lw=1.2)
            ax.text(
                x[0], base + 0.08 * offset, f"t={int(t)}  ({int(modes)} mode{'s' * (modes != 1)})"
            )
        ax.set_yticks([])
        ax.set_xlim(x[0], x[-1])
        merge = p["merge_t"]
        ax.set_title(f"{name}: peaks merged at t = {merge}" if merge else f"{name}: never merged")
        ax.set_xlabel("$x_t$")

        ax = axes[1, column]
        heat_t = np.asarray(p["heat_t"])
        ax.imshow(
            np.asarray(p["heat_density"]),
            extent=(x[0], x[-1], heat_t[0], heat_t[-1]),
            origin="lower",
            aspect="auto",
            cmap="magma",
            interpolation="nearest",
        )
        ax.plot(p["mode_x"], p["mode_t"], ".", color="cyan", ms=1.5, label="modes of $q(x_t)$")
        if merge:
            ax.axhline(merge, color="white", ls="--", lw=1, label=f"merge t = {merge}")
        ax.set_xlabel("$x_t$")
        ax.set_ylabel("t")
        ax.legend(loc="upper right", fontsize=8, markerscale=5)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


COUNTS_SIZE = (12.0, 4.5)


def plot_mode_counts(
    curves: Mapping[str, Mapping[str, Any]],
    critical_sigma: float | None,
    path: str | Path,
) -> Path:
    """Left: number of modes of q(x_t) against t per schedule. Right: sigma_t against t, with the
    critical noise level sigma* at which the peaks merge (the same for every schedule).

    ``curves[name]`` holds ``t (T+1,)``, ``modes (T+1,)``, ``sigma (T+1,)``, ``merge_t``.
    """
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=COUNTS_SIZE, layout="constrained")
    for k, (name, c) in enumerate(curves.items()):
        colour = f"C{k}"
        left.step(c["t"], c["modes"], where="post", color=colour, label=name)
        t, sigma = np.asarray(c["t"])[1:], np.asarray(c["sigma"])[1:]
        right.semilogy(t, sigma, color=colour, label=name)
        if c["merge_t"]:
            left.axvline(c["merge_t"], color=colour, ls=":", lw=1)
            right.plot([c["merge_t"]], [critical_sigma or sigma[c["merge_t"] - 1]], "o", color=colour)
    left.set_xlabel("t")
    left.set_ylabel("number of modes of $q(x_t)$")
    left.set_yticks(range(int(max(max(c["modes"]) for c in curves.values())) + 1))
    left.legend()
    left.set_title("modes of the exact marginal (dotted: merge time)")
    if critical_sigma:
        right.axhline(critical_sigma, color="k", ls="--", lw=1, label=f"$\\sigma^*$ = {critical_sigma:.4f}")
    right.set_xlabel("t")
    right.set_ylabel("$\\sigma_t = \\sqrt{(1-\\bar\\alpha_t)/\\bar\\alpha_t}$")
    right.legend()
    right.set_title("the peaks merge where $\\sigma_t$ crosses $\\sigma^*$")
    return _save(fig, path)


def image_rows_size(rows: int, columns: int, cell: float = 1.6) -> tuple[float, float]:
    return (1.2 + cell * columns, 0.5 + cell * rows)


def plot_density_images(
    images: Mapping[str, Sequence[np.ndarray]],
    timesteps: Sequence[int],
    bounds: Sequence[Sequence[float]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Rows of 2-D density images (one row per schedule, one column per t), each normalised to
    its own maximum (the peak height is printed)."""
    plt = _pyplot()
    names = list(images)
    size = image_rows_size(len(names), len(timesteps))
    fig, axes = plt.subplots(
        len(names), len(timesteps), figsize=size, layout="constrained", squeeze=False
    )
    extent = (bounds[0][0], bounds[0][1], bounds[1][0], bounds[1][1])
    for row, name in enumerate(names):
        for column, (t, image) in enumerate(zip(timesteps, images[name], strict=True)):
            ax = axes[row, column]
            ax.imshow(image / image.max(), origin="lower", extent=extent, cmap="magma")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"t={t}, max {image.max():.2g}", fontsize=8)
            if column == 0:
                ax.set_ylabel(name)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_image_rows(
    rows: Mapping[str, Sequence[np.ndarray]],
    timesteps: Sequence[int],
    path: str | Path,
    title: str = "",
) -> Path:
    """Rows of grayscale images ``(H, W)`` in ``[-1, 1]`` (one row per schedule, one column per
    t); values outside are clipped."""
    plt = _pyplot()
    names = list(rows)
    size = image_rows_size(len(names), len(timesteps), cell=1.3)
    fig, axes = plt.subplots(
        len(names), len(timesteps), figsize=size, layout="constrained", squeeze=False
    )
    for row, name in enumerate(names):
        for column, (t, image) in enumerate(zip(timesteps, rows[name], strict=True)):
            ax = axes[row, column]
            ax.imshow(np.clip(image, -1, 1), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"t={t}", fontsize=8)
            if column == 0:
                ax.set_ylabel(name)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# ----------------------------------------------------------------------------- lesson 2: reverse flow
REVERSE_FLOW_SIZE = (15.0, 8.5)


def plot_reverse_flow(
    rows: Mapping[str, Mapping[str, Any]],
    background: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Particle paths over the exact density of q(x_t): one row per model, one column per
    sampler, and a last column with the histograms of the final samples against the data law.

    ``rows[model][sampler]`` holds ``t (S+1,)``, ``x (S+1, N)`` (variance-preserving frame),
    ``colour_index (N,)`` (the mode each path ends in), ``samples (M,)`` (for the histogram)
    and ``label``; ``background[model]`` holds ``t (H,)``, ``x (G,)``, ``density (H, G)`` and
    ``data_density (G,)`` (the law of x_0 on ``x``).
    """
    plt = _pyplot()
    models = list(rows)
    samplers = list(next(iter(rows.values())))
    fig, axes = plt.subplots(
        len(models),
        len(samplers) + 1,
        figsize=REVERSE_FLOW_SIZE,
        layout="constrained",
        squeeze=False,
        width_ratios=[3] * len(samplers) + [1],
        sharey=True,
    )
    for r, model in enumerate(models):
        bg = background[model]
        x_grid, t_grid = np.asarray(bg["x"]), np.asarray(bg["t"])
        for c, name in enumerate(samplers):
            panel = rows[model][name]
            ax = axes[r, c]
            ax.imshow(
                np.asarray(bg["density"]).T,
                extent=(t_grid[0], t_grid[-1], x_grid[0], x_grid[-1]),
                origin="lower",
                aspect="auto",
                cmap="Greys",
                interpolation="nearest",
            )
            t, x = np.asarray(panel["t"]), np.asarray(panel["x"])
            for j in range(x.shape[1]):
                ax.plot(t, x[:, j], color=mode_colour(int(panel["colour_index"][j])), lw=0.7)
            ax.set_xlim(t_grid[-1], t_grid[0])  # reverse time runs left to right: T -> 0
            ax.set_ylim(x_grid[0], x_grid[-1])
            ax.set_title(f"{model} - {panel['label']}", fontsize=10)
            ax.set_xlabel("t (reverse time: noise on the left, data on the right)")
            if c == 0:
                ax.set_ylabel("$x_t$")
        ax = axes[r, -1]
        for k, name in enumerate(samplers):
            ax.hist(
                np.asarray(rows[model][name]["samples"]),
                bins=120,
                range=(x_grid[0], x_grid[-1]),
                density=True,
                orientation="horizontal",
                histtype="step",
                color=f"C{k}",
                label=name,
            )
        ax.plot(np.asarray(bg["data_density"]), x_grid, "k", lw=1.2, label="data law")
        ax.set_xlabel("density of $x_0$")
        ax.legend(fontsize=8, loc="upper right")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
