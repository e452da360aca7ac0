"""The lessons' figures (matplotlib with the Agg backend, no display).

Every function takes plain arrays, writes one PNG of exactly ``figsize * dpi`` pixels (constrained
layout, no tight bounding box, so tests can check the size) and returns its path.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DPI = 100
MODE_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
# (colour, marker, line style) per registered sampler; dashed: the ones that draw fresh noise
# (at their default options), in the colour of their deterministic relative where there is one.
SAMPLER_STYLES = {
    "ddpm": ("tab:orange", "o", "--"),
    "ddim": ("tab:orange", "s", "-"),
    "euler": ("tab:green", "^", "-"),
    "heun": ("tab:red", "D", "-"),
    "dpmpp_2m": ("tab:purple", "v", "-"),
    "dpmpp_3m": ("tab:brown", "P", "-"),
    "dpmpp_2m_sde": ("tab:purple", "v", "--"),
    "dpmpp_3m_sde": ("tab:brown", "P", "--"),
    "dpmpp_singlestep": ("tab:gray", "d", "-"),
    "euler_ancestral": ("tab:green", "^", "--"),
    "dpmpp_2s_ancestral": ("tab:blue", "X", "--"),
    "unipc": ("tab:olive", "*", "-"),
    "deis": ("tab:cyan", "h", "-"),
}
# Dotted lines are kept for samplers not in the table: none of its styles is dotted.
UNLISTED_MARKERS = "os<>p8"


def sampler_style(algorithm: str) -> tuple[str, str, str]:
    """(colour, marker, line style) of a sampler's line in the NFE figures: its entry in
    ``SAMPLER_STYLES``, else a dotted line whose colour and marker follow the sampler's place among
    the registered samplers the table does not list, so that a new sampler needs no entry and no
    two registered samplers share a style."""
    if algorithm in SAMPLER_STYLES:
        return SAMPLER_STYLES[algorithm]
    from difforge.diffusion.samplers import SAMPLERS

    unlisted = [name for name in SAMPLERS if name not in SAMPLER_STYLES]
    k = unlisted.index(algorithm) if algorithm in unlisted else len(unlisted)
    return f"C{k % 10}", UNLISTED_MARKERS[k // 10 % len(UNLISTED_MARKERS)], ":"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path, title: str = "", dpi: int = DPI) -> Path:
    """Give ``fig`` its ``title`` (if any) and save it as a 256-colour PNG (heat maps compress
    badly in full colour; the docs keep each figure under 300 KB)."""
    from PIL import Image

    if title:
        fig.suptitle(title)
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
    return _save(fig, path, title)


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
            right.plot(
                [c["merge_t"]], [critical_sigma or sigma[c["merge_t"] - 1]], "o", color=colour
            )
    left.set_xlabel("t")
    left.set_ylabel("number of modes of $q(x_t)$")
    left.set_yticks(range(int(max(max(c["modes"]) for c in curves.values())) + 1))
    left.legend()
    left.set_title("modes of the exact marginal (dotted: merge time)")
    if critical_sigma:
        right.axhline(
            critical_sigma, color="k", ls="--", lw=1, label=f"$\\sigma^*$ = {critical_sigma:.4f}"
        )
    right.set_xlabel("t")
    right.set_ylabel("$\\sigma_t = \\sqrt{(1-\\bar\\alpha_t)/\\bar\\alpha_t}$")
    right.legend()
    right.set_title("the peaks merge where $\\sigma_t$ crosses $\\sigma^*$")
    return _save(fig, path)


def image_rows_size(rows: int, columns: int, cell: float = 1.6) -> tuple[float, float]:
    return (1.2 + cell * columns, 0.5 + cell * rows)


def _image_rows(
    images: Mapping[str, Sequence[np.ndarray]],
    timesteps: Sequence[int],
    path: str | Path,
    title: str,
    draw: Callable[[Any, np.ndarray], str],
    cell: float = 1.6,
) -> Path:
    """Rows of images, one row per name and one column per t: ``draw(ax, image)`` shows an image
    and returns the text after ``t=<t>`` in its title."""
    plt = _pyplot()
    names = list(images)
    size = image_rows_size(len(names), len(timesteps), cell)
    fig, axes = plt.subplots(
        len(names), len(timesteps), figsize=size, layout="constrained", squeeze=False
    )
    for row, name in enumerate(names):
        for column, (t, image) in enumerate(zip(timesteps, images[name], strict=True)):
            ax = axes[row, column]
            ax.set_title(f"t={t}{draw(ax, image)}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 0:
                ax.set_ylabel(name)
    return _save(fig, path, title)


def plot_density_images(
    images: Mapping[str, Sequence[np.ndarray]],
    timesteps: Sequence[int],
    bounds: Sequence[Sequence[float]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Rows of 2-D density images (one row per schedule, one column per t), each normalised to
    its own maximum (the peak height is printed)."""
    extent = (bounds[0][0], bounds[0][1], bounds[1][0], bounds[1][1])

    def draw(ax: Any, image: np.ndarray) -> str:
        ax.imshow(image / image.max(), origin="lower", extent=extent, cmap="magma")
        return f", max {image.max():.2g}"

    return _image_rows(images, timesteps, path, title, draw)


def plot_image_rows(
    rows: Mapping[str, Sequence[np.ndarray]],
    timesteps: Sequence[int],
    path: str | Path,
    title: str = "",
) -> Path:
    """Rows of grayscale images ``(H, W)`` in ``[-1, 1]`` (one row per schedule, one column per
    t); values outside are clipped."""

    def draw(ax: Any, image: np.ndarray) -> str:
        ax.imshow(np.clip(image, -1, 1), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        return ""

    return _image_rows(rows, timesteps, path, title, draw, cell=1.3)


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
    ``colour_index (N,)`` (the mode each path ends in), ``samples (M,)`` (for the histogram),
    ``label`` (the panel title) and optionally ``short`` (the histogram legend); ``background[model]`` holds ``t (H,)``, ``x (G,)``, ``density (H, G)`` and
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
                label=rows[model][name].get("short", name),
            )
        ax.plot(np.asarray(bg["data_density"]), x_grid, "k", lw=1.2, label="data law")
        ax.set_xlabel("density of $x_0$")
        ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path, title)


# ---------------------------------------------------------------------------- lesson 4: efficiency
def nfe_sweep_size(columns: int) -> tuple[float, float]:
    return (6.5 * columns, 5.5)


def _plain_log_ticks(axis: Any, values: Sequence[float]) -> None:
    """Ticks 1, 2, 5 times a power of ten within the range of ``values``, as plain numbers."""
    from matplotlib.ticker import FixedLocator, NullFormatter, StrMethodFormatter

    lo, hi = min(values), max(values)
    decades = range(int(np.floor(np.log10(lo))), int(np.floor(np.log10(hi))) + 1)
    ticks = [m * 10.0**e for e in decades for m in (1, 2, 5) if lo <= m * 10.0**e <= hi]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_nfe_sweep(
    panels: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = ""
) -> Path:
    """Error against NFE (log-log), one line per sampler (``sampler_style``), one panel per
    experiment; ``nfe_sweep_size(len(panels))``.

    ``panels[title]`` holds ``records`` (dicts with ``algorithm``, ``nfe``, ``error``),
    ``ylabel``, optionally ``floor`` (mean, std: the error of exact samples, drawn as a band),
    ``threshold`` (a dashed line) and ``reached`` (``{algorithm: nfe}``, marked on the line).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(panels), figsize=nfe_sweep_size(len(panels)), layout="constrained", squeeze=False
    )
    for ax, (panel_title, panel) in zip(axes[0], panels.items(), strict=True):
        records = panel["records"]
        algorithms = list(dict.fromkeys(r["algorithm"] for r in records))
        for algorithm in algorithms:
            colour, marker, style = sampler_style(algorithm)
            points = sorted(
                (r["nfe"], r["error"])
                for r in records
                if r["algorithm"] == algorithm and np.isfinite(r["error"])
            )
            ax.loglog(
                *zip(*points, strict=True),
                marker=marker,
                ms=4,
                ls=style,
                lw=1.2,
                color=colour,
                label=algorithm,
            )
            reached = (panel.get("reached") or {}).get(algorithm)
            if reached is not None:
                ax.plot(
                    [reached["nfe"]],
                    [reached["error"]],
                    marker="*",
                    ms=14,
                    color=colour,
                    markeredgecolor="k",
                )
        floor = panel.get("floor")
        if floor is not None:
            mean, std = floor
            ax.axhspan(
                max(mean - 2 * std, 1e-6),
                mean + 2 * std,
                color="0.85",
                zorder=0,
                label=f"statistical floor {mean:.4f}",
            )
        threshold = panel.get("threshold")
        if threshold is not None:
            ax.axhline(threshold, color="k", ls="--", lw=1, label=f"W1 = {threshold:g}")
        finite = [r for r in records if np.isfinite(r["error"]) and r["error"] > 0]
        _plain_log_ticks(ax.xaxis, [r["nfe"] for r in finite])
        _plain_log_ticks(ax.yaxis, [r["error"] for r in finite])
        ax.set_xlabel("NFE (denoiser evaluations per sample)")
        ax.set_ylabel(panel.get("ylabel", "error"))
        ax.set_title(panel_title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncols=2)
    return _save(fig, path, title)


# ------------------------------------------------------------------------- lesson 3: mode collapse
def collapse_size(columns: int) -> tuple[float, float]:
    return (3.2 * columns, 6.6)


def plot_collapse_panels(
    rows: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, title: str = ""
) -> Path:
    """One row per data set, one panel per experiment: samples against the data law.

    Each panel holds ``samples (N, D)``, ``title`` and the law drawn behind them: 1-D ``x (G,)``
    and ``density (G,)``; 2-D ``bounds ((x0, x1), (y0, y1))`` and ``density (P, P)``.
    """
    plt = _pyplot()
    names = list(rows)
    columns = max(len(panels) for panels in rows.values())
    fig, axes = plt.subplots(
        len(names), columns, figsize=collapse_size(columns), layout="constrained", squeeze=False
    )
    for r, name in enumerate(names):
        for c in range(columns):
            ax = axes[r, c]
            if c >= len(rows[name]):
                ax.axis("off")
                continue
            panel = rows[name][c]
            samples = np.asarray(panel["samples"])
            if samples.shape[1] == 1:
                x = np.asarray(panel["x"])
                ax.hist(samples[:, 0], bins=120, range=(x[0], x[-1]), density=True, alpha=0.6)
                ax.plot(x, np.asarray(panel["density"]), "k", lw=1)
                ax.set_yticks([])
            else:
                (x0, x1), (y0, y1) = panel["bounds"]
                ax.contour(
                    np.linspace(x0, x1, panel["density"].shape[1]),
                    np.linspace(y0, y1, panel["density"].shape[0]),
                    np.asarray(panel["density"]),
                    levels=4,
                    colors="k",
                    linewidths=0.6,
                )
                ax.scatter(samples[:1500, 0], samples[:1500, 1], s=1.5, alpha=0.5)
                ax.set_xlim(x0, x1)
                ax.set_ylim(y0, y1)
                ax.set_aspect("equal")
                ax.set_xticks([])
                ax.set_yticks([])
            ax.set_title(panel["title"], fontsize=8.5)
            if c == 0:
                ax.set_ylabel(name)
    return _save(fig, path, title)


COLLAPSE_MASS_SIZE = (13.0, 4.5)


def plot_collapse_mass(
    panels: Mapping[str, Mapping[str, Any]], true_mass: Sequence[float], path: str | Path
) -> Path:
    """Per-mode on-mode mass (and the off-mode share) against a knob, one panel per knob.

    ``panels[title]`` holds ``x`` (the knob's values), ``mass (len(x), K)``, ``off_mode
    (len(x),)``, ``xlabel`` and optionally ``log`` (log x axis). Dashed: the true masses.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(panels), figsize=COLLAPSE_MASS_SIZE, layout="constrained", squeeze=False
    )
    for ax, (panel_title, panel) in zip(axes[0], panels.items(), strict=True):
        x, mass = np.asarray(panel["x"]), np.asarray(panel["mass"])
        for k in range(mass.shape[1]):
            ax.plot(x, mass[:, k], "o-", color=mode_colour(k), label=f"mode {k}")
            ax.axhline(true_mass[k], color=mode_colour(k), ls="--", lw=0.8)
        ax.plot(x, np.asarray(panel["off_mode"]), "x:", color="k", label="on no mode")
        if panel.get("log"):
            ax.set_xscale("log")
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel("share of samples (dashed: exact sampler)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(panel_title)
        ax.legend(fontsize=8)
    return _save(fig, path)
