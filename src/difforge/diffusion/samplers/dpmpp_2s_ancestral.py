"""DPM-Solver++(2S) ancestral: a singlestep second-order data-prediction step of the
probability-flow ODE down to sigma_down, then fresh noise back up to sigma_{i+1} (k-diffusion's
``sample_dpmpp_2s_ancestral``; sigma_down, sigma_up as in ``euler_ancestral.py``).

DPM-Solver++(2S) with r = 1/2 (Lu et al. 2022, "DPM-Solver++", algorithm 1), lambda = -log sigma,
h = lambda(sigma_down) - lambda(sigma_i), midpoint s = sqrt(sigma_i sigma_down):

    u   = (s / sigma_i) x_i - (e^{-h/2} - 1) x0_i,
    x'  = (sigma_down / sigma_i) x_i - (e^{-h} - 1) D(u, s),
    x_{i+1} = x' + s_noise sigma_up z,   z ~ N(0, I).

eta = 0 is the deterministic DPM-Solver++(2S); 0 <= eta <= 1. A step to sigma = 0 returns x0
with one evaluation (sigma_down = 0), so NFE = 2 steps - 1 when the grid ends at 0, else 2 steps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from difforge.diffusion.samplers.common import DenoiserFn, StepCallback, denoise, noise_like, report
from difforge.diffusion.samplers.euler_ancestral import ancestral_step, check_ancestral_options


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
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
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(denoiser, x, sigma, class_labels)
        report(callback, i, x, sigma, x0)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = x0
        else:
            h = math.log(sigma / sigma_down)
            sigma_mid = math.sqrt(sigma * sigma_down)
            u = (sigma_mid / sigma) * x - math.expm1(-h / 2) * x0
            x0_mid = denoise(denoiser, u, sigma_mid, class_labels)
            x = (sigma_down / sigma) * x - math.expm1(-h) * x0_mid
        if sigma_up > 0:
            x = x + s_noise * sigma_up * noise_like(x, generator)
    return x
