"""Samplers: one function per algorithm with one signature (registered in ``registry.py``), and
``Sampler``, the configured front door that checks the options, builds the sigma grid, draws the
starting point from the schedule's prior and counts network evaluations.

Every algorithm is ``sample_<name>(denoiser, x, sigmas, *, generator, callback, class_labels,
**options) -> x`` with ``x`` at noise level ``sigmas[0]`` in the VE frame and ``sigmas``
decreasing to 0 or to sigma_min (the k-diffusion convention), so any sampler runs on any model
and any schedule.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from difforge.checks import check_real
from difforge.diffusion.samplers.common import DenoiserFn, StepCallback, denoise, noise_like, report
from difforge.diffusion.samplers.registry import SAMPLERS, SamplerSpec, get_sampler_spec
from difforge.diffusion.schedules import NoiseSchedule
from difforge.diffusion.sigma_grids import check_grid, check_steps, sigma_grid

__all__ = ["SAMPLERS", "CountingDenoiser", "SampleResult", "Sampler", "SamplerSpec"]


class CountingDenoiser:
    """Wraps a denoiser and counts network evaluations per sample (NFE): a wrapper that runs the
    network on a doubled batch (classifier-free guidance) declares ``evals_per_call = 2``."""

    def __init__(self, denoiser: DenoiserFn) -> None:
        self.denoiser = denoiser
        self.nfe = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.denoiser, name)

    def _count(self) -> None:
        self.nfe += int(getattr(self.denoiser, "evals_per_call", 1))

    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        self._count()
        return self.denoiser(x, sigma, class_labels)

    def predict(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Any:
        self._count()
        return self.denoiser.predict(x, sigma, class_labels)  # type: ignore[attr-defined]


@dataclass
class SampleResult:
    """``samples``: ``shape``; ``nfe``: network evaluations per sample; ``sigmas``: the grid."""

    samples: Tensor
    nfe: int
    sigmas: Tensor


class Sampler:
    """A sampling algorithm with its step count, grid and options, checked when built.

    Args:
        algorithm: a name in ``SAMPLERS`` (``sampler=<name>``).
        steps: number of steps (grid intervals); NFE: ``Sampler.nfe(schedule)``.
        grid: a name in ``sigma_grids.GRIDS``; None picks the algorithm's default for the kind
            of schedule (``SamplerSpec.defaults``, chosen by benchmark).
        final_sigma: ``zero`` (the last step returns the denoised estimate) or ``min`` (the
            last step ends at the schedule's smallest sigma); None: the algorithm's default.
        sigma_min, sigma_max: range of continuous grids; None uses the schedule's.
        rho: exponent of the ``karras`` and ``polynomial`` grids (None: 7).
        **options: the algorithm's own options (``eta`` for ddim, ``variance`` for ddpm,
            ``S_churn``... for euler/heun), checked against its signature and values; an
            option set to None takes the algorithm's default for the kind of schedule
            (``SamplerSpec.defaults``) or else its signature's.

    Raises:
        ValueError: one line naming the bad value and what is allowed.
    """

    def __init__(
        self,
        algorithm: str,
        steps: int,
        grid: str | None = None,
        final_sigma: str | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float | None = None,
        **options: Any,
    ) -> None:
        self.spec = get_sampler_spec(algorithm)
        check_steps(steps)
        check_grid(grid, "zero" if final_sigma is None else final_sigma, rho)
        for name, sigma in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
            if sigma is not None:
                check_real(f"sampler.{name}", sigma, 0, low_open=True)
        if sigma_min is not None and sigma_max is not None and sigma_min >= sigma_max:
            raise ValueError(
                f"sampler.sigma_min={sigma_min} must be below sampler.sigma_max={sigma_max}"
            )
        unknown = sorted(set(options) - set(self.spec.options))
        if unknown:
            allowed = ", ".join(self.spec.options) or "none"
            close = difflib.get_close_matches(unknown[0], self.spec.options, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown option {unknown[0]!r} for sampler {algorithm!r}; its options: "
                f"{allowed}{hint}"
            )
        options = {name: value for name, value in options.items() if value is not None}
        self.spec.check(**options)
        self.algorithm = algorithm
        self.steps = steps
        self.grid = grid
        self.final_sigma = final_sigma
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.rho = rho
        self.options = options

    def replace(self, **changes: Any) -> Sampler:
        """A copy with some settings changed, e.g. ``sampler.replace(steps=10)``."""
        settings = {
            "algorithm": self.algorithm,
            "steps": self.steps,
            "grid": self.grid,
            "final_sigma": self.final_sigma,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "rho": self.rho,
            **self.options,
        }
        return Sampler(**{**settings, **changes})

    @property
    def stochastic(self) -> bool:
        return self.spec.is_stochastic(self.options)

    def grid_for(self, schedule: NoiseSchedule) -> str:
        return self.grid or self.spec.default_grid(schedule)

    def final_sigma_for(self, schedule: NoiseSchedule) -> str:
        if self.final_sigma is not None:
            return self.final_sigma
        return str(self.spec.defaults_for(schedule)["final_sigma"])

    def options_for(self, schedule: NoiseSchedule) -> dict[str, Any]:
        """The options the solver runs with on ``schedule``: the ones set, then the defaults
        of the kind of schedule (``SamplerSpec.defaults``)."""
        defaults = self.spec.defaults_for(schedule)
        chosen = {name: defaults[name] for name in self.spec.options if name in defaults}
        return {**chosen, **self.options}

    def nfe(self, schedule: NoiseSchedule) -> int:
        """Network evaluations per sample on ``schedule`` (the grid's final level and a start
        at sigma = inf change it; ``SamplerSpec.nfe``)."""
        grid = self.sigmas(schedule)
        steps = len(grid) - 1
        return self.spec.nfe(steps, float(grid[-1]) == 0, math.isinf(float(grid[0])))

    def steps_for_nfe(self, nfe: int, schedule: NoiseSchedule) -> int:
        """The most steps whose NFE on ``schedule`` (``Sampler.nfe``, with this sampler's other
        settings) is at most ``nfe``.

        Raises:
            ValueError: even one step needs more than ``nfe`` evaluations.
        """
        fits = [s for s in range(1, nfe + 1) if self.replace(steps=s).nfe(schedule) <= nfe]
        if not fits:
            raise ValueError(f"{self.algorithm} needs more than {nfe} evaluations for one step")
        return max(fits)

    def sigmas(self, schedule: NoiseSchedule) -> Tensor:
        """The decreasing float64 grid for ``schedule``; it starts at inf under zero terminal SNR."""
        return sigma_grid(
            schedule,
            self.steps,
            self.grid_for(schedule),
            self.sigma_min,
            self.sigma_max,
            self.rho,
            self.final_sigma_for(schedule),
            self.spec.multistep_spacing,
        )

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
        noise: Tensor | None = None,
    ) -> SampleResult:
        """Draw ``shape[0]`` samples of shape ``shape[1:]``.

        ``noise``: standard-normal draws of ``shape`` to start from (as the ``latents`` of a
        diffusers pipeline: the unit-variance VP latent); None draws them with ``generator``.
        The start is ``schedule.prior_scale(sigma_0) * noise``: ``sqrt(1 + sigma^2)`` for VP
        schedules, ``sigma`` for VE ones. A grid starting at sigma = inf (zero terminal SNR)
        takes its first step here, exactly: the denoiser is called on the unit noise itself
        (the limit of ``x / sigma``), and the step to sigma_1 is ``x0 + sigma_1 n``, with ``n``
        the starting noise for deterministic samplers (DDIM's step) and fresh noise for
        stochastic ones (the ancestral step from abar = 0).
        """
        grid = sigmas = self.sigmas(schedule)
        if noise is None:
            gen_device = generator.device if generator is not None else device
            noise = torch.randn(shape, generator=generator, device=gen_device, dtype=dtype)
        elif tuple(noise.shape) != tuple(shape):
            raise ValueError(
                f"noise has shape {tuple(noise.shape)}, the samples need {tuple(shape)}"
            )
        noise = noise.to(device=device, dtype=dtype)
        counter = CountingDenoiser(denoiser)
        top = float(sigmas[0])
        offset = 0
        if math.isinf(top):
            x0 = denoise(counter, noise, top, class_labels)
            report(callback, 0, noise, top, x0)
            sigmas, offset = sigmas[1:], 1
            if float(sigmas[0]) == 0:
                return SampleResult(x0, counter.nfe, grid)
            step_noise = noise_like(noise, generator) if self.stochastic else noise
            x = x0 + float(sigmas[0]) * step_noise
        else:
            x = noise * schedule.prior_scale(top)
        if callback is not None and offset:
            outer = callback
            callback = lambda info: outer({**info, "i": info["i"] + offset})  # noqa: E731
        samples = self.spec.fn(
            counter,
            x,
            sigmas,
            generator=generator,
            callback=callback,
            class_labels=class_labels,
            **self.options_for(schedule),
        )
        return SampleResult(samples, counter.nfe, grid)

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"Sampler({self.algorithm!r}, steps={self.steps}, grid={self.grid!r}{options})"
