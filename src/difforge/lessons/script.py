"""What the lesson scripts (``scripts/lesson_*.py``, ``scripts/nfe_sweep.py``) share around their
lesson: how it runs, and the Gaussian mixtures of their data configs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import torch

from difforge.diffusion.gaussian_mixture import GaussianMixture

if TYPE_CHECKING:
    from omegaconf import DictConfig

T = TypeVar("T")


def run_lesson(lesson: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """``lesson(cfg)`` on one CPU thread, after printing the config (``print_config: true``); an
    error caused by bad input ends the script with a one-line message (``run_command``)."""
    from difforge.cli.common import print_config, run_command

    def command(cfg: DictConfig) -> T:
        torch.set_num_threads(1)
        print_config(cfg)
        return lesson(cfg)

    return run_command(command, cfg)


def config_mixture(cfg: DictConfig, key: str, dim: int | None = None) -> GaussianMixture:
    """The law of the mixture data config ``cfg[key]`` (gmm1d, gmm2d), which must be ``dim``-D
    when ``dim`` is given."""
    from hydra.utils import instantiate

    mixture = instantiate(cfg[key]).mixture
    if dim is not None and mixture.dim != dim:
        raise ValueError(
            f"{key} must be a {dim}-D mixture (gmm{dim}d), got dimension {mixture.dim}"
        )
    return mixture
