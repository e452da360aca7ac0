"""difforge's samplers on the exact score: every registered sampler on every sigma grid.

The samplers come from the registry (``difforge.diffusion.samplers.SAMPLERS``) and the grids
from ``difforge.diffusion.sigma_grids.GRIDS``, so a newly registered sampler or grid is
benchmarked without touching this file. A configuration is a sampler, a grid (None: the
sampler's default for the schedule), ``final_sigma`` and the values of the options that pick
a variant of the method (``VARIANT_OPTIONS``, e.g. the order of a multistep solver); every
other option keeps its default.

NFE: a run at a budget of ``nfe`` uses the largest step count whose ``Sampler.nfe(schedule)``
is at most ``nfe`` and reports the calls ``Sampler`` counted.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from difforge.diffusion.gaussian_mixture import GaussianMixtureOracle
from difforge.diffusion.samplers import SAMPLERS, Sampler
from difforge.diffusion.schedules import NoiseSchedule
from difforge.diffusion.sigma_grids import GRIDS

FINAL_SIGMAS = ("zero", "min")
# Options that select a variant of the method, tried at these values. Options not listed
# (eta, S_churn, ...) keep the function's default.
VARIANT_OPTIONS: dict[str, tuple[Any, ...]] = {
    "order": (2, 3),  # order 1 is DDIM
    "solver_type": ("midpoint", "heun", "bh1", "bh2"),  # DPM-Solver++'s, UniPC's
    "variance": ("small", "large"),  # DDPM's posterior variance
}
# The grids that are a discrete schedule's own timestep table (diffusers' timestep_spacing).
TABLE_GRIDS = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class DifforgeConfig:
    """One difforge sampler configuration; None (grid, final_sigma) and options left out are
    the sampler's defaults for the schedule."""

    sampler: str
    grid: str | None = None
    final_sigma: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        parts = [self.grid or "default", f"final={self.final_sigma or 'default'}"]
        parts += [f"{k}={v}" for k, v in self.options]
        return " ".join(parts)

    def sampler_for(self, steps: int) -> Sampler:
        return Sampler(
            self.sampler,
            steps,
            grid=self.grid,
            final_sigma=self.final_sigma,
            **dict(self.options),
        )


def _option_default(sampler: str, option: str) -> Any:
    return inspect.signature(SAMPLERS[sampler].fn).parameters[option].default


def variant_options(sampler: str) -> list[tuple[tuple[str, Any], ...]]:
    """Every combination of the sampler's variant options (``VARIANT_OPTIONS``), defaults kept
    for values the solver refuses (e.g. order 3 for a second-order method)."""
    names = [name for name in SAMPLERS[sampler].options if name in VARIANT_OPTIONS]
    combos = []
    for values in itertools.product(*(VARIANT_OPTIONS[name] for name in names)):
        options = tuple(zip(names, values, strict=True))
        try:
            Sampler(sampler, 8, **dict(options))
        except ValueError:
            continue  # a value outside this solver's range
        combos.append(options)
    return combos or [()]


def schedule_grids(schedule: NoiseSchedule) -> tuple[str, ...]:
    """The grids that apply to ``schedule``: the timestep tables only on discrete schedules."""
    if schedule.is_discrete:
        return GRIDS
    return tuple(grid for grid in GRIDS if grid not in TABLE_GRIDS)


def grid_configs(
    schedule: NoiseSchedule, samplers: tuple[str, ...] | None = None
) -> Iterator[DifforgeConfig]:
    """Every sampler x grid x final_sigma x variant on ``schedule``."""
    for name in tuple(SAMPLERS) if samplers is None else samplers:
        for grid, final, options in itertools.product(
            schedule_grids(schedule), FINAL_SIGMAS, variant_options(name)
        ):
            yield DifforgeConfig(name, grid, final, options)


def explicit_default(sampler: str, schedule: NoiseSchedule) -> DifforgeConfig:
    """The sampler's defaults on ``schedule`` spelt out as a search configuration (its default
    grid, final_sigma and variant options)."""
    built = Sampler(sampler, 8)
    options = built.options_for(schedule)
    chosen = tuple(
        (name, options.get(name, _option_default(sampler, name)))
        for name in SAMPLERS[sampler].options
        if name in VARIANT_OPTIONS
    )
    return DifforgeConfig(
        sampler, built.grid_for(schedule), built.final_sigma_for(schedule), chosen
    )


def default_config(sampler: str) -> DifforgeConfig:
    """The sampler at its default settings (``Sampler(sampler, steps)``)."""
    return DifforgeConfig(sampler)


def steps_for_nfe(config: DifforgeConfig, nfe: int, schedule: NoiseSchedule) -> int:
    """The largest step count whose NFE on ``schedule`` is at most ``nfe`` (ValueError if even
    1 step is more)."""
    return config.sampler_for(1).steps_for_nfe(nfe, schedule)


def grid_of(config: DifforgeConfig, schedule: NoiseSchedule, nfe: int) -> Tensor:
    """The sigma grid the configuration walks at a budget of ``nfe``."""
    return config.sampler_for(steps_for_nfe(config, nfe, schedule)).sigmas(schedule)


def run_difforge(
    config: DifforgeConfig,
    schedule: NoiseSchedule,
    oracle: GaussianMixtureOracle,
    nfe: int,
    noise: Tensor,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """Sample with one configuration from the unit-variance latent ``noise`` (N, D), float64.

    Returns the samples and the NFE ``Sampler`` counted (<= ``nfe``).
    """
    sampler = config.sampler_for(steps_for_nfe(config, nfe, schedule))
    result = sampler(
        oracle, schedule, tuple(noise.shape), dtype=noise.dtype, generator=generator, noise=noise
    )
    if result.nfe > nfe:
        raise RuntimeError(f"{config.sampler} {config.label}: {result.nfe} NFE > budget {nfe}")
    return result.samples, result.nfe


def grid_label(config: DifforgeConfig, schedule: NoiseSchedule) -> str:
    """The grid and final level a configuration walks on ``schedule``, defaults resolved."""
    built = config.sampler_for(8)
    return f"{built.grid_for(schedule)}, final {built.final_sigma_for(schedule)}"
