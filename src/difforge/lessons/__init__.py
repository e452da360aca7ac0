"""The lessons of diffusion made runnable: small plain-PyTorch functions behind the lesson scripts.

A lesson is ``run(cfg)`` in the module of its name, behind a thin script in ``scripts/`` and one
section of ``docs/guide.md``; it writes its figures to ``cfg.out_dir`` and returns its numbers:

- ``mode_blurring`` lesson 1 (``scripts/lesson_mode_blurring.py``), on ``blurring``: the exact
                    density of q(x_t), its number of modes, and when the peaks merge;
- ``reverse_flow``  lesson 2 (``scripts/lesson_reverse_flow.py``), on ``trajectories``: particle
                    paths of the reverse process, stochastic and deterministic;
- ``mode_collapse`` lesson 3 (``scripts/lesson_mode_collapse.py``), on ``collapse``: on-mode mass
                    and coverage, and a tiny in-process trainer;
- ``nfe_sweep``     lesson 4 (``scripts/nfe_sweep.py``), on ``efficiency``: sample quality versus
                    the number of function evaluations;
- ``plots``         the figures (matplotlib, no display);
- ``script``        what the scripts share: ``run_lesson`` (one thread, the config printed,
                    one-line errors) and ``config_mixture`` (the mixture of a data config).

Like ``difforge.diffusion`` these import torch and numpy only (matplotlib inside ``plots``, Hydra
inside functions: ``run`` and ``script``).
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
