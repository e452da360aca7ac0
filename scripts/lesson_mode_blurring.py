"""Lesson 1, the forward process and mode blurring (docs/guide.md, section 1).

    python scripts/lesson_mode_blurring.py                      # figures in the Hydra run dir
    python scripts/lesson_mode_blurring.py out_dir=docs/figures # regenerate the guide's figures
    python scripts/lesson_mode_blurring.py schedules.linear.beta_end=0.01

For the three-peaked mixture (``data``: gmm1d) and each schedule under ``schedules``: the exact
density of q(x_t) (closed form), its number of modes at every t, and the first t at which the
peaks have merged into one. Then density images of a 2-D mixture (``data2d``: gmm2d) and one
digit (``image_data``) noised along each schedule. Writes mode_blurring_gmm1d.png,
mode_blurring_counts.png, mode_blurring_gmm2d.png, mode_blurring_digits.png and
mode_blurring.json to ``out_dir``. A few seconds on a CPU.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))
log = logging.getLogger("difforge")


def blurring(cfg: DictConfig) -> dict:
    import torch
    from hydra.utils import instantiate

    from difforge.diffusion.forward import q_sample
    from difforge.diffusion.schedules import require_discrete
    from difforge.lessons import blurring as lesson
    from difforge.lessons import plots
    from difforge.lessons.script import config_mixture

    out = Path(cfg.out_dir)
    mixture = config_mixture(cfg, "data", dim=1)
    schedules = {
        name: require_discrete(instantiate(c), "this lesson") for name, c in cfg.schedules.items()
    }
    sigma_star = lesson.critical_sigma(mixture, 1, cfg.grid_points)
    summary: dict = {"critical_sigma": sigma_star, "schedules": {}}

    panels, curves = {}, {}
    for name, schedule in schedules.items():
        T = schedule.num_timesteps
        counts = lesson.mode_counts(mixture, schedule, points=cfg.grid_points)
        merges = {
            k: next((t for t in range(1, T + 1) if counts[t] <= k), None)
            for k in range(counts[0] - 1, 0, -1)
        }
        merge = merges.get(1)
        x = lesson.grid_1d(mixture, 1.0, 1001, margin=5.0)
        ridge_t = [int(t) for t in cfg.ridge_timesteps if int(t) <= T]
        heat_t = list(range(0, T + 1, int(cfg.heat_stride)))
        mode_t, mode_x = [], []
        for t in heat_t:
            positions = lesson.mode_positions(mixture, lesson.abar_at(schedule, t), cfg.grid_points)
            mode_t += [t] * len(positions)
            mode_x += positions.tolist()

        def density(t: int, schedule=schedule, x=x) -> torch.Tensor:
            return lesson.marginal_density(mixture, x[:, None], lesson.abar_at(schedule, t))

        panels[name] = {
            "x": x.numpy(),
            "ridge_t": ridge_t,
            "ridge_density": torch.stack([density(t) for t in ridge_t]).numpy(),
            "ridge_modes": [counts[t] for t in ridge_t],
            "heat_t": heat_t,
            "heat_density": torch.stack([density(t) for t in heat_t]).numpy(),
            "mode_t": mode_t,
            "mode_x": mode_x,
            "merge_t": merge,
            "T": T,
        }
        curves[name] = {
            "t": list(counts),
            "modes": list(counts.values()),
            "sigma": [lesson.sigma_at(schedule, t) for t in counts],
            "merge_t": merge,
        }
        summary["schedules"][name] = {
            "num_timesteps": T,
            "modes_at_0": counts[0],
            "modes_at_T": counts[T],
            "first_t_with_at_most_k_modes": merges,
            "merge_t": merge,
            "merge_t_from_critical_sigma": lesson.first_timestep_above(schedule, sigma_star),
            "sigma_T": lesson.sigma_at(schedule, T),
            "abar_T": lesson.abar_at(schedule, T),
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
    title = "the exact $q(x_t)$ of " + mixture_label(mixture)
    plots.plot_blurring_1d(panels, out / "mode_blurring_gmm1d.png", title=title)
    plots.plot_mode_counts(curves, sigma_star, out / "mode_blurring_counts.png")

    # A 2-D mixture: density images at a few t.
    mixture2d = config_mixture(cfg, "data2d", dim=2)
    bounds = lesson.extent(mixture2d, 1.0, margin=4.0).tolist()
    shortest = min(schedule.num_timesteps for schedule in schedules.values())
    ts = [int(t) for t in cfg.image_timesteps if int(t) <= shortest]
    images, rows = {}, {}
    for name, schedule in schedules.items():
        images[name] = [
            lesson.density_image(
                mixture2d, lesson.abar_at(schedule, t), bounds, cfg.image_points
            ).numpy()
            for t in ts
        ]
    plots.plot_density_images(
        images, ts, bounds, out / "mode_blurring_gmm2d.png", title="the exact $q(x_t)$, 2-D"
    )

    # One digit, noised along each schedule with the same eps.
    datamodule = instantiate(cfg.image_data)
    datamodule.setup("test")
    x0 = datamodule.reference_samples("test")[int(cfg.digit_index)][None].double()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(cfg.seed), dtype=x0.dtype)
    for name, schedule in schedules.items():
        rows[name] = [
            (x0 if t == 0 else q_sample(schedule, x0, torch.tensor([t - 1]), eps))[0, 0].numpy()
            for t in ts
        ]
    plots.plot_image_rows(rows, ts, out / "mode_blurring_digits.png", title="$x_t$ of one digit")

    (out / "mode_blurring.json").write_text(json.dumps(summary, indent=2))
    log.info("critical sigma (VE) = %.5f; wrote figures to %s", sigma_star, out)
    print(json.dumps({name: s["merge_t"] for name, s in summary["schedules"].items()}))
    return summary


def mixture_label(mixture) -> str:
    weights = ", ".join(f"{w:g}" for w in mixture.weights.tolist())
    means = ", ".join(f"{m:g}" for m in mixture.means[:, 0].tolist())
    return f"a mixture with weights ({weights}) at ({means})"


@hydra.main(version_base="1.3", config_path="../configs/lessons", config_name="mode_blurring")
def main(cfg: DictConfig) -> None:
    from difforge.lessons.script import run_lesson

    run_lesson(blurring, cfg)


if __name__ == "__main__":
    main()
