"""Euler ancestral: an Euler step of the probability-flow ODE down to sigma_down, then fresh noise
back up to sigma_{i+1} (k-diffusion's ``sample_euler_ancestral``; diffusers'
EulerAncestralDiscreteScheduler is eta = 1).

The split of the DDPM posterior step from sigma to sigma' < sigma (Song et al. 2021, "Denoising
Diffusion Implicit Models", eq. 16 in the VE frame: the noise s_eta of DDIM with eta):

    sigma_up = eta sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2),   sigma_down = sqrt(sigma'^2 - sigma_up^2),
    x_{i+1} = x_i + (sigma_down - sigma) (x_i - x0_i) / sigma + s_noise sigma_up z,   z ~ N(0, I).

eta = 1 is ancestral (DDPM) sampling, eta = 0 the plain Euler ODE step; 0 <= eta <= 1 (above 1
the noise would exceed sigma'). A step to sigma = 0 returns x0 and draws no noise. One NFE per
step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from difforge.diffusion.samplers.common import (
    DenoiserFn,
    StepCallback,
    StepUpdate,
    denoise,
    noise_like,
    report,
)
from difforge.diffusion.samplers.euler import euler_step
from difforge.diffusion.samplers.multistep import check_noise


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` with ``sigma_down^2 + sigma_up^2 = sigma_next^2``."""
    sigma_up = eta * sigma_next * math.sqrt(1 - (sigma_next / sigma) ** 2)
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def check_ancestral_options(*, eta: float = 1.0, s_noise: float = 1.0) -> None:
    """The ancestral samplers' options: 0 <= eta <= 1 (above 1 the added noise would exceed the
    target sigma), s_noise >= 0."""
    check_noise(eta, s_noise, max_eta=1.0)


def ancestral_sampler(update: StepUpdate, name: str) -> Callable[..., Tensor]:
    """The ancestral loop as a sampler: one NFE at sigma_i, ``update`` down to sigma_down, then
    fresh noise ``s_noise sigma_up z`` back up to sigma_{i+1}."""

    @torch.no_grad()
    def sample(
        denoiser: DenoiserFn,
        x: Tensor,
        sigmas: Tensor,
        *,
        eta: float = 1.0,
        s_noise: float = 1.0,
        generator: torch.Generator | None = None,
        callback: StepCallback | None = None,
        class_labels: Tensor | None = None,
    ) -> Tensor:
        """x: at ``sigmas[0]`` in the VE frame; sigmas: decreasing, ending at 0 or sigma_min > 0."""
        check_ancestral_options(eta=eta, s_noise=s_noise)

        def D(x: Tensor, sigma: float) -> Tensor:
            return denoise(denoiser, x, sigma, class_labels)

        for i in range(len(sigmas) - 1):
            sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
            x0 = D(x, sigma)
            report(callback, i, x, sigma, x0)
            sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
            x = update(x, x0, sigma, sigma_down, D)
            if sigma_up > 0:
                x = x + s_noise * sigma_up * noise_like(x, generator)
        return x

    sample.__name__ = sample.__qualname__ = name
    return sample


sample_euler_ancestral = ancestral_sampler(euler_step, "sample_euler_ancestral")
