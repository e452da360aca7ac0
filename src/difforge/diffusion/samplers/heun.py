"""Heun's second-order method on the probability-flow ODE (Karras et al. 2022, algorithm 2).

An Euler step from ``sigma_hat`` to ``sigma_{i+1}`` (after optional churn, see ``euler.py``),
corrected with the average of the slopes at both ends; the last step, to sigma = 0, stays Euler
(the slope at 0 is undefined). NFE = 2 * steps - 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from difforge.diffusion.samplers.common import DenoiserFn, StepCallback, denoise, report
from difforge.diffusion.samplers.euler import check_churn, churn


@torch.no_grad()
def sample_heun(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = float("inf"),
    S_noise: float = 1.0,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    class_labels: Tensor | None = None,
) -> Tensor:
    """x: ``sigmas[0] * N(0, I)``; sigmas: decreasing, ending in 0."""
    check_churn(S_churn, S_tmin, S_tmax, S_noise)
    num_steps = len(sigmas) - 1
    for i in range(num_steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x, sigma_hat = churn(x, sigma, num_steps, S_churn, S_tmin, S_tmax, S_noise, generator)
        x0 = denoise(denoiser, x, sigma_hat, class_labels)
        report(callback, i, x, sigma_hat, x0)
        slope = (x - x0) / sigma_hat
        x_euler = x + (sigma_next - sigma_hat) * slope
        if sigma_next == 0:
            x = x_euler
            continue
        slope_next = (x_euler - denoise(denoiser, x_euler, sigma_next, class_labels)) / sigma_next
        x = x + (sigma_next - sigma_hat) * (slope + slope_next) / 2
    return x
