"""Lesson 1, the forward process and mode blurring (docs/guide.md, section 1).

For the three-peaked mixture (``cfg.data``: gmm1d) and each schedule under ``cfg.schedules``:
the exact density of q(x_t), its number of modes at every t, and the first t at which the peaks
have merged into one (``difforge.lessons.blurring``). Then density images of a 2-D mixture
(``cfg.data2d``) and one digit (``cfg.image_data``) noised along each schedule.

``run(cfg)`` writes mode_blurring_gmm1d.png, mode_blurring_counts.png, mode_blurring_gmm2d.png,
mode_blurring_digits.png and mode_blurring.json to ``cfg.out_dir`` and returns the summary.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from difforge.diffusion.forward import q_sample
from difforge.diffusion.gaussian_mixture import GaussianMixture
from difforge.diffusion.schedules import DiscreteSchedule, require_discrete
from difforge.lessons import blurring
from difforge.lessons.script import config_mixture

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("difforge")


def run(cfg: DictConfig) -> dict[str, Any]:
    """The lesson: figures and mode_blurring.json in ``cfg.out_dir``; returns the summary
    (``critical_sigma`` and, per schedule, its mode counts and merge times)."""
    from hydra.utils import instantiate

    from difforge.lessons import plots

    out = Path(cfg.out_dir)
    mixture = config_mixture(cfg, "data", dim=1)
    schedules = {
        name: require_discrete(instantiate(c), "this lesson") for name, c in cfg.schedules.items()
    }
    sigma_star = blurring.critical_sigma(mixture, 1, cfg.grid_points)
    summary: dict[str, Any] = {"critical_sigma": sigma_star, "schedules": {}}
    panels, curves = {}, {}
    for name, schedule in schedules.items():
        panels[name], curves[name], summary["schedules"][name] = schedule_panel(
            name, mixture, schedule, sigma_star, cfg
        )
    title = "the exact $q(x_t)$ of " + mixture_label(mixture)
    plots.plot_blurring_1d(panels, out / "mode_blurring_gmm1d.png", title=title)
    plots.plot_mode_counts(curves, sigma_star, out / "mode_blurring_counts.png")

    # The 2-D mixture and the digit, at the timesteps every schedule has.
    shortest = min(schedule.num_timesteps for schedule in schedules.values())
    ts = [int(t) for t in cfg.image_timesteps if int(t) <= shortest]
    mixture2d = config_mixture(cfg, "data2d", dim=2)
    bounds = blurring.extent(mixture2d, 1.0, margin=4.0).tolist()
    images = {
        name: [
            blurring.density_image(
                mixture2d, blurring.abar_at(schedule, t), bounds, cfg.image_points
            ).numpy()
            for t in ts
        ]
        for name, schedule in schedules.items()
    }
    plots.plot_density_images(
        images, ts, bounds, out / "mode_blurring_gmm2d.png", title="the exact $q(x_t)$, 2-D"
    )
    datamodule = instantiate(cfg.image_data)
    datamodule.setup("test")
    x0 = datamodule.reference_samples("test")[int(cfg.digit_index)][None].double()
    rows = digit_rows(x0, schedules, ts, int(cfg.seed))
    plots.plot_image_rows(rows, ts, out / "mode_blurring_digits.png", title="$x_t$ of one digit")

    (out / "mode_blurring.json").write_text(json.dumps(summary, indent=2))
    log.info("critical sigma (VE) = %.5f; wrote figures to %s", sigma_star, out)
    return summary


def schedule_panel(
    name: str,
    mixture: GaussianMixture,
    schedule: DiscreteSchedule,
    sigma_star: float,
    cfg: DictConfig,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """One schedule's ridge and heat-map panel, its mode-count curve and its summary."""
    T = schedule.num_timesteps
    counts = blurring.mode_counts(mixture, schedule, points=cfg.grid_points)
    merges = {
        k: next((t for t in range(1, T + 1) if counts[t] <= k), None)
        for k in range(counts[0] - 1, 0, -1)
    }
    merge = merges.get(1)
    x = blurring.grid_1d(mixture, 1.0, 1001, margin=5.0)
    ridge_t = [int(t) for t in cfg.ridge_timesteps if int(t) <= T]
    heat_t = list(range(0, T + 1, int(cfg.heat_stride)))
    mode_t, mode_x = [], []
    for t in heat_t:
        positions = blurring.mode_positions(mixture, blurring.abar_at(schedule, t), cfg.grid_points)
        mode_t += [t] * len(positions)
        mode_x += positions.tolist()

    def density(ts: list[int]) -> Any:
        return torch.stack(
            [
                blurring.marginal_density(mixture, x[:, None], blurring.abar_at(schedule, t))
                for t in ts
            ]
        ).numpy()

    panel = {
        "x": x.numpy(),
        "ridge_t": ridge_t,
        "ridge_density": density(ridge_t),
        "ridge_modes": [counts[t] for t in ridge_t],
        "heat_t": heat_t,
        "heat_density": density(heat_t),
        "mode_t": mode_t,
        "mode_x": mode_x,
        "merge_t": merge,
        "T": T,
    }
    curve = {
        "t": list(counts),
        "modes": list(counts.values()),
        "sigma": [blurring.sigma_at(schedule, t) for t in counts],
        "merge_t": merge,
    }
    summary = {
        "num_timesteps": T,
        "modes_at_0": counts[0],
        "modes_at_T": counts[T],
        "first_t_with_at_most_k_modes": merges,
        "merge_t": merge,
        "merge_t_from_critical_sigma": blurring.first_timestep_above(schedule, sigma_star),
        "sigma_T": blurring.sigma_at(schedule, T),
        "abar_T": blurring.abar_at(schedule, T),
    }
    log.info(
        "%-8s T=%d: %d modes at t=0, %d at t=T; first t with <=k modes %s; merged at t=%s",
        name,
        T,
        counts[0],
        counts[T],
        merges,
        merge,
    )
    return panel, curve, summary


def digit_rows(
    x0: torch.Tensor, schedules: dict[str, DiscreteSchedule], ts: list[int], seed: int
) -> dict[str, list[Any]]:
    """``x_t`` of one image ``x0: (1, C, H, W)`` at each t of ``ts``, per schedule, with the same
    eps everywhere (seeded by ``seed``)."""
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=x0.dtype)
    return {
        name: [
            (x0 if t == 0 else q_sample(schedule, x0, torch.tensor([t - 1]), eps))[0, 0].numpy()
            for t in ts
        ]
        for name, schedule in schedules.items()
    }


def mixture_label(mixture: GaussianMixture) -> str:
    weights = ", ".join(f"{w:g}" for w in mixture.weights.tolist())
    means = ", ".join(f"{m:g}" for m in mixture.means[:, 0].tolist())
    return f"a mixture with weights ({weights}) at ({means})"
