"""Heun's second-order method on the probability-flow ODE (Karras et al. 2022, algorithm 2).

An Euler step from ``sigma_hat`` to ``sigma_{i+1}`` (after optional churn, see ``euler.py``),
corrected with the average of the slopes at both ends; the last step, to sigma = 0, stays Euler
(the slope at 0 is undefined). NFE = 2 * steps - 1.
"""

from __future__ import annotations

from torch import Tensor

from difforge.diffusion.samplers.common import DenoiseAt
from difforge.diffusion.samplers.euler import churn_sampler


def heun_step(x: Tensor, x0: Tensor, sigma: float, sigma_next: float, D: DenoiseAt) -> Tensor:
    """The Euler step corrected by the mean of the slopes at both ends (one NFE), Euler alone
    to sigma = 0."""
    slope = (x - x0) / sigma
    x_euler = x + (sigma_next - sigma) * slope
    if sigma_next == 0:
        return x_euler
    slope_next = (x_euler - D(x_euler, sigma_next)) / sigma_next
    return x + (sigma_next - sigma) * (slope + slope_next) / 2


sample_heun = churn_sampler(heun_step, "sample_heun")
