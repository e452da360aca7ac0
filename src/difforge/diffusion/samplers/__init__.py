"""Samplers: one function per algorithm with one signature, and ``Sampler``, the configured front
door that builds the sigma grid, draws the starting noise and counts function evaluations.

Every algorithm is ``sample_<name>(denoiser, x, sigmas, *, generator, callback, class_labels,
**options) -> x0`` with ``x = sigmas[0] * N(0, I)`` and ``sigmas`` decreasing to 0 (the
k-diffusion convention), so any sampler runs on any model and any schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from difforge.diffusion.samplers.common import DenoiserFn, StepCallback
from difforge.diffusion.samplers.ddim import sample_ddim
from difforge.diffusion.samplers.ddpm import sample_ddpm
from difforge.diffusion.samplers.dpmpp_2m import sample_dpmpp_2m
from difforge.diffusion.samplers.euler import sample_euler
from difforge.diffusion.samplers.heun import sample_heun
from difforge.diffusion.schedules import NoiseSchedule
from difforge.diffusion.sigma_grids import GRIDS, sigma_grid

ALGORITHMS: dict[str, Callable[..., Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
}
# Samplers of discrete-time models default to the model's own timesteps; ODE solvers to EDM's grid.
DEFAULT_GRIDS = {
    "ddpm": "discrete",
    "ddim": "discrete",
    "euler": "karras",
    "heun": "karras",
    "dpmpp_2m": "karras",
}
# EDM's sigma_max (Karras et al. 2022, sec. 5): enough to reach noise for data of unit scale. Karras
# grids start no higher by default, since a schedule's own top (about 2e4 for cosine with clipped
# betas) would spend most steps where the sample barely changes.
KARRAS_SIGMA_MAX = 80.0


class CountingDenoiser:
    """Wraps a denoiser and counts its calls: the number of function evaluations (NFE)."""

    def __init__(self, denoiser: DenoiserFn) -> None:
        self.denoiser = denoiser
        self.nfe = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.denoiser, name)

    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        self.nfe += 1
        return self.denoiser(x, sigma, class_labels)

    def predict(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Any:
        self.nfe += 1
        return self.denoiser.predict(x, sigma, class_labels)  # type: ignore[attr-defined]


@dataclass
class SampleResult:
    samples: Tensor
    nfe: int
    sigmas: Tensor


class Sampler:
    """A sampling algorithm with its step count, grid and options.

    Args:
        algorithm: one of ``ddpm``, ``ddim``, ``euler``, ``heun``, ``dpmpp_2m``.
        steps: number of steps (grid intervals); NFE equals steps except for ``heun``
            (2 steps - 1).
        grid: ``discrete`` (the schedule's own timesteps, respaced), ``karras`` (EDM eq. 5) or
            ``flow`` (t uniform, with the rectified-flow schedule's shift); None picks the
            algorithm's default.
        sigma_min, sigma_max: grid range for ``karras``; None uses the schedule's (sigma_max capped
            at ``KARRAS_SIGMA_MAX``).
        rho: Karras grid exponent.
        **options: the algorithm's own options (``eta`` for ddim, ``variance`` for ddpm,
            ``S_churn``... for euler/heun).
    """

    def __init__(
        self,
        algorithm: str,
        steps: int,
        grid: str | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float = 7.0,
        **options: Any,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(
                f"unknown sampler algorithm {algorithm!r}; allowed: {', '.join(ALGORITHMS)}"
            )
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"sampler.steps must be a positive integer, got {steps!r}")
        self.algorithm = algorithm
        self.steps = steps
        self.grid = grid or DEFAULT_GRIDS[algorithm]
        if self.grid not in GRIDS:
            raise ValueError(f"unknown sampler.grid {self.grid!r}; allowed: {', '.join(GRIDS)}")
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.rho = rho
        self.options = options

    def sigmas(self, schedule: NoiseSchedule) -> Tensor:
        grid = self.grid
        if grid == "discrete" and not schedule.is_discrete:
            grid = "karras"  # continuous schedules have no timestep table
        sigma_max = self.sigma_max
        if grid == "karras" and sigma_max is None:
            sigma_max = min(schedule.sigma_max, KARRAS_SIGMA_MAX)
        return sigma_grid(schedule, self.steps, grid, self.sigma_min, sigma_max, self.rho)

    def __call__(
        self,
        denoiser: DenoiserFn,
        schedule: NoiseSchedule,
        shape: tuple[int, ...],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
        class_labels: Tensor | None = None,
        callback: StepCallback | None = None,
    ) -> SampleResult:
        """Draw ``shape[0]`` samples of shape ``shape[1:]``."""
        sigmas = self.sigmas(schedule)
        gen_device = generator.device if generator is not None else device
        noise = torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)
        counter = CountingDenoiser(denoiser)
        samples = ALGORITHMS[self.algorithm](
            counter,
            noise * sigmas[0].item(),
            sigmas,
            generator=generator,
            callback=callback,
            class_labels=class_labels,
            **self.options,
        )
        return SampleResult(samples, counter.nfe, sigmas)

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"Sampler({self.algorithm!r}, steps={self.steps}, grid={self.grid!r}{options})"
