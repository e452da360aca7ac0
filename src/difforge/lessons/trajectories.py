"""The reverse flow: record the paths particles take from noise to data under any sampler.

A sampler walks a decreasing grid of noise levels in the variance-exploding frame
``x = x_0 + sigma eps`` (see ``docs/architecture.md``). Its ``callback`` receives
``{"i", "x", "sigma", "denoised"}`` at every step; ``record_trajectories`` keeps ``x`` and maps it
to DDPM's variance-preserving frame ``x_t = x / sqrt(1 + sigma^2)`` (``abar = 1 / (1 + sigma^2)``),
where particles start as N(0, I) and end on the data, and to the (fractional) timestep t of the
schedule, so paths can be drawn over the exact density of q(x_t).

The stochastic sampler (ancestral DDPM, Ho et al. 2020; or Euler with EDM's churn) simulates the
reverse-time SDE (Anderson 1982; Song et al. 2021): particles jitter and may change their mind
about which mode they end in until late. The probability-flow ODE (DDIM with eta = 0, Euler, Heun,
DPM-Solver++) moves the same marginals deterministically (Song et al. 2021, sec. 4.3): smooth
paths that never cross, so in 1-D the map from noise to data is monotone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from difforge.diffusion.samplers import Sampler
from difforge.diffusion.samplers.common import DenoiserFn
from difforge.diffusion.schedules import DiscreteSchedule, NoiseSchedule


@dataclass
class Trajectories:
    """Particle paths. ``sigma: (S + 1,)`` the noise level of each recorded point (after churn:
    the raised level), decreasing to 0; ``t: (S + 1,)`` the fractional timestep of the schedule
    (``sigma`` itself for a continuous schedule); ``x: (S + 1, N, D)`` in the variance-preserving
    frame; ``samples: (N, D)`` the final samples; ``nfe`` network evaluations per sample."""

    sigma: Tensor
    t: Tensor
    x: Tensor
    samples: Tensor
    nfe: int


def to_variance_preserving(x: Tensor, sigma: float | Tensor) -> Tensor:
    """``x / sqrt(1 + sigma^2)``: a variance-exploding point in DDPM's frame."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return x / (1 + sigma**2).sqrt().to(x.dtype)


def timestep_of(schedule: NoiseSchedule, sigma: Tensor) -> Tensor:
    """The fractional timestep t in ``[0, T]`` of noise levels ``sigma`` (t = 0 at sigma = 0), by
    log-linear interpolation of the schedule's table; ``sigma`` itself for continuous schedules."""
    sigma = sigma.to(torch.float64)
    if not isinstance(schedule, DiscreteSchedule):
        return sigma
    t = schedule.sigma_to_timestep(sigma.clamp(min=schedule.sigma_min)).to(torch.float64) + 1
    return torch.where(sigma > 0, t, torch.zeros_like(t))


@torch.no_grad()
def record_trajectories(
    denoiser: DenoiserFn,
    schedule: NoiseSchedule,
    sampler: Sampler,
    num_particles: int,
    dim: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> Trajectories:
    """Run ``sampler`` on ``num_particles`` particles and keep every intermediate state."""
    states: list[tuple[float, Tensor]] = []

    def keep(step: dict) -> None:
        states.append((float(step["sigma"]), step["x"].detach().to(torch.float64).cpu().clone()))

    generator = torch.Generator().manual_seed(seed)
    result = sampler(
        denoiser, schedule, (num_particles, dim), dtype=dtype, generator=generator, callback=keep
    )
    states.append((0.0, result.samples.detach().to(torch.float64).cpu()))
    sigma = torch.tensor([s for s, _ in states], dtype=torch.float64)
    x = torch.stack([to_variance_preserving(x, s) for s, x in states])
    return Trajectories(sigma, timestep_of(schedule, sigma), x, x[-1], result.nfe)


def crossings(trajectories: Trajectories, max_particles: int = 500) -> int:
    """How many pairs among the first ``max_particles`` 1-D particles end in the opposite order
    to the one they started in (0 for an exact ODE flow, which is monotone in 1-D)."""
    start = trajectories.x[0, :max_particles, 0]
    end = trajectories.x[-1, :max_particles, 0]
    return int(((start[:, None] < start[None, :]) & (end[:, None] > end[None, :])).sum())
