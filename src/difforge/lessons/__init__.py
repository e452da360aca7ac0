"""The lessons of diffusion made runnable: small plain-PyTorch functions behind the lesson scripts.

Each module backs one script in ``scripts/`` and one section of ``docs/guide.md``:

- ``blurring``      the exact density of q(x_t), its number of modes, and when the peaks merge
                    (``scripts/lesson_mode_blurring.py``);
- ``trajectories``  particle paths of the reverse process, stochastic and deterministic
                    (``scripts/lesson_reverse_flow.py``);
- ``collapse``      on-mode mass and coverage, and a tiny in-process trainer
                    (``scripts/lesson_mode_collapse.py``);
- ``efficiency``    sample quality versus the number of function evaluations
                    (``scripts/nfe_sweep.py``);
- ``plots``         the figures (matplotlib, no display);
- ``script``        what the scripts share: ``run_lesson`` (one thread, the config printed,
                    one-line errors) and ``config_mixture`` (the mixture of a data config).

Like ``difforge.diffusion`` these import torch and numpy only (matplotlib inside ``plots``, Hydra
inside the functions of ``script``).
"""

from difforge.lessons.blurring import (
    abar_at,
    count_local_maxima,
    critical_sigma,
    marginal_density,
    merge_timesteps,
    mode_counts,
    num_modes,
)

__all__ = [
    "abar_at",
    "count_local_maxima",
    "critical_sigma",
    "marginal_density",
    "merge_timesteps",
    "mode_counts",
    "num_modes",
]
