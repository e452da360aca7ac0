"""DPM-Solver++(2M): the multistep second-order data-prediction solver of the probability-flow
ODE (Lu et al. 2022, "DPM-Solver++", algorithm 2).

With lambda = -log sigma (VE frame; equal to log(alpha / sigma_vp)) and h_i = lambda_{i+1} - lambda_i:

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - (exp(-h_i) - 1) D_i,
    D_i = (1 + 1 / (2 r_i)) x0_i - 1 / (2 r_i) x0_{i-1},   r_i = h_{i-1} / h_i,

first order (D_i = x0_i) at the first step and at the last step to sigma = 0, where the update
returns the denoised estimate. One NFE per step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from difforge.diffusion.samplers.common import DenoiserFn, StepCallback, denoise, report


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    class_labels: Tensor | None = None,
) -> Tensor:
    """x: ``sigmas[0] * N(0, I)``; sigmas: decreasing, ending in 0. Deterministic."""
    previous_x0: Tensor | None = None
    previous_h = 0.0
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(denoiser, x, sigma, class_labels)
        report(callback, i, x, sigma, x0)
        if sigma_next == 0:
            x = x0
            break
        h = math.log(sigma) - math.log(sigma_next)
        if previous_x0 is None:
            d = x0
        else:
            r = previous_h / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous_x0
        x = (sigma_next / sigma) * x - math.expm1(-h) * d
        previous_x0, previous_h = x0, h
    return x
