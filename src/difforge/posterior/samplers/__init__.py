"""Posterior samplers for ``y = A x0 + sigma_y n``: one function per method (registered in
``registry.py``), ``posterior_sample`` to run one on a given grid, and ``PosteriorSampler``, the
configured front door (``configs/posterior/<name>.yaml``) that checks the options when built,
lays the sigma grid of a model's schedule and counts network evaluations.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from difforge.diffusion.samplers import SampleResult
from difforge.diffusion.samplers.common import DenoiserFn, StepCallback
from difforge.diffusion.schedules import NoiseSchedule
from difforge.diffusion.sigma_grids import check_grid, check_steps, sigma_grid
from difforge.posterior.operators.base import LinearOperator
from difforge.posterior.samplers.registry import (
    POSTERIORS,
    PosteriorSpec,
    check_sigma_y,
    get_posterior_spec,
    posterior_sample,
)

__all__ = ["POSTERIORS", "PosteriorSampler", "PosteriorSpec", "posterior_sample"]

# The grid of a method left unset, per kind of schedule (as ``SamplerSpec.defaults``).
DEFAULT_GRIDS = {"discrete": "trailing", "continuous": "karras"}


class PosteriorSampler:
    """A posterior method with its step count, grid and options, checked when built.

    Args:
        method: a name in ``POSTERIORS`` (``posterior=<name>``).
        steps: grid steps; NFE per sample: ``PosteriorSampler.nfe``.
        grid: a name in ``sigma_grids.GRIDS``; None: ``trailing`` on discrete schedules,
            ``karras`` on continuous ones.
        final_sigma: ``zero`` (default) or ``min``.
        sigma_min, sigma_max, rho: the continuous grids' range and exponent (None: the
            schedule's, 7).
        **options: the method's options (``POSTERIORS[method].options``); None keeps the
            default of its signature (its paper's).

    Raises:
        ValueError: one line naming the bad value and what is allowed.
    """

    def __init__(
        self,
        method: str,
        steps: int,
        grid: str | None = None,
        final_sigma: str | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float | None = None,
        **options: Any,
    ) -> None:
        self.spec = get_posterior_spec(method)
        check_steps(steps)
        self.final_sigma = final_sigma or "zero"
        check_grid(grid, self.final_sigma, rho)
        self.options = {name: value for name, value in options.items() if value is not None}
        self.spec.check_options(self.options)
        self.method = method
        self.steps = steps
        self.grid = grid
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.rho = rho

    def sigmas(self, schedule: NoiseSchedule) -> Tensor:
        """The decreasing float64 grid for ``schedule``. A level at infinity (zero terminal SNR)
        is dropped: the methods start from a finite noise level."""
        kind = "discrete" if schedule.is_discrete else "continuous"
        grid = sigma_grid(
            schedule,
            self.steps,
            self.grid or DEFAULT_GRIDS[kind],
            self.sigma_min,
            self.sigma_max,
            self.rho,
            self.final_sigma,
        )
        return grid[1:] if math.isinf(float(grid[0])) else grid

    def nfe(self, schedule: NoiseSchedule) -> int:
        """Network evaluations per sample on ``schedule``."""
        return self.spec.nfe(len(self.sigmas(schedule)) - 1, **self.options)

    def __call__(
        self,
        denoiser: DenoiserFn,
        schedule: NoiseSchedule,
        y: Tensor,
        operator: LinearOperator,
        sigma_y: float,
        *,
        n: int = 1,
        generator: torch.Generator | None = None,
        class_labels: Tensor | None = None,
        callback: StepCallback | None = None,
    ) -> SampleResult:
        """``n`` draws of ``x0 | y_i`` for each row of ``y: (N, d_y)``.

        Returns a ``SampleResult`` whose ``samples`` are ``(N * n, *x_shape)``, the ``n`` draws
        of row 0 first (``y.repeat_interleave(n, 0)`` is their measurement), with ``nfe`` per
        sample. The start is ``schedule.prior_scale(sigma_0) * N(0, I)`` (``sqrt(1 + sigma^2)``
        for VP schedules, as the unconditional samplers start).
        """
        check_sigma_y(sigma_y)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n (samples per measurement) must be a positive integer, got {n!r}")
        sigmas = self.sigmas(schedule)
        y = y.repeat_interleave(n, 0)
        labels = None if class_labels is None else class_labels.repeat_interleave(n, 0)
        x_init = None
        if not self.spec.own_start:
            gen_device = generator.device if generator is not None else y.device
            shape = (y.shape[0], *operator.x_shape)
            noise = torch.randn(shape, generator=generator, device=gen_device, dtype=y.dtype)
            x_init = noise.to(y.device) * schedule.prior_scale(float(sigmas[0]))
        samples = posterior_sample(
            self.method,
            denoiser,
            y,
            operator,
            sigma_y,
            sigmas,
            x_init=x_init,
            generator=generator,
            class_labels=labels,
            callback=callback,
            **self.options,
        )
        return SampleResult(samples, self.spec.nfe(len(sigmas) - 1, **self.options), sigmas)

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"PosteriorSampler({self.method!r}, steps={self.steps}, grid={self.grid!r}{options})"
