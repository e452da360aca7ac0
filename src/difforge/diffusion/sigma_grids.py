"""Decreasing grids of noise levels for samplers, each ending in sigma = 0.

- ``karras_sigmas``: Karras et al. 2022, eq. 5,
  sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.
- ``discrete_sigmas``: a subset of a discrete schedule's own sigmas, evenly spaced in t
  ("respacing", Nichol & Dhariwal 2021, sec. 4), always including t = T and t = 1.
- ``flow_sigmas``: rectified flow's grid, t uniform from t(sigma_max) to 0 with SD3's shift
  (Esser et al. 2024, sec. 5.3.2), i.e. ``sigma_i = shift * t_i / (1 - t_i)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from difforge.diffusion.schedules import (
    DiscreteSchedule,
    NoiseSchedule,
    RectifiedFlowSchedule,
    flow_sigma,
    flow_time,
)


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"sampler.steps must be a positive integer, got {steps!r}")


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """``steps + 1`` float64 values: eq. 5's ``steps`` levels from sigma_max to sigma_min, then 0."""
    _check_steps(steps)
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(
            f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )
    if steps == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    inv_rho_min, inv_rho_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (inv_rho_max + ramp * (inv_rho_min - inv_rho_max)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def discrete_timestep_indices(num_timesteps: int, steps: int) -> Tensor:
    """``steps`` distinct indices ``t - 1`` from T - 1 down to 0, evenly spaced (rounded)."""
    _check_steps(steps)
    if steps > num_timesteps:
        raise ValueError(
            f"sampler.steps={steps} exceeds the schedule's num_timesteps={num_timesteps}"
        )
    return torch.linspace(num_timesteps - 1, 0, steps, dtype=torch.float64).round().long()


def discrete_sigmas(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """``steps + 1`` float64 values: the schedule's sigmas at respaced timesteps, then 0."""
    indices = discrete_timestep_indices(schedule.num_timesteps, steps)
    return torch.cat([schedule.sigmas[indices], torch.zeros(1, dtype=torch.float64)])


def flow_sigmas(steps: int, sigma_max: float, shift: float = 1.0) -> Tensor:
    """``steps + 1`` float64 values: ``t_i`` uniform from ``t(sigma_max / shift)`` down to 0, each
    mapped to ``shift * t_i / (1 - t_i)`` (the last is 0)."""
    _check_steps(steps)
    if not 0 < sigma_max < float("inf") or not shift > 0:
        raise ValueError(f"need 0 < sigma_max < inf and shift > 0, got {sigma_max}, {shift}")
    t_max = flow_time(torch.tensor(sigma_max / shift, dtype=torch.float64))
    return shift * flow_sigma(torch.linspace(1, 0, steps + 1, dtype=torch.float64) * t_max)


GRIDS = ("karras", "discrete", "flow")


def sigma_grid(
    schedule: NoiseSchedule,
    steps: int,
    grid: str,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float = 7.0,
) -> Tensor:
    """The grid named ``grid`` for ``schedule``; ``sigma_min``/``sigma_max`` default to the schedule's."""
    if grid == "discrete":
        if not isinstance(schedule, DiscreteSchedule):
            raise ValueError(
                f"sampler.grid='discrete' needs a discrete schedule (linear, cosine, sigmoid), got {schedule.name!r}; "
                "use sampler.grid=karras"
            )
        return discrete_sigmas(schedule, steps)
    if grid == "karras":
        lo = schedule.sigma_min if sigma_min is None else sigma_min
        hi = schedule.sigma_max if sigma_max is None else sigma_max
        return karras_sigmas(steps, lo, hi, rho)
    if grid == "flow":
        shift = schedule.shift if isinstance(schedule, RectifiedFlowSchedule) else 1.0
        return flow_sigmas(steps, schedule.sigma_max if sigma_max is None else sigma_max, shift)
    raise ValueError(f"unknown sampler.grid {grid!r}; allowed: {', '.join(GRIDS)}")
