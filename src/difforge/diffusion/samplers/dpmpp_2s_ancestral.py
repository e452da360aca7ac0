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

from torch import Tensor

from difforge.diffusion.samplers.common import DenoiseAt
from difforge.diffusion.samplers.euler_ancestral import ancestral_sampler


def dpmpp_2s_step(x: Tensor, x0: Tensor, sigma: float, sigma_down: float, D: DenoiseAt) -> Tensor:
    """DPM-Solver++(2S) from ``sigma`` to ``sigma_down`` (one NFE at the midpoint), x0 at 0."""
    if sigma_down == 0:
        return x0
    h = math.log(sigma / sigma_down)
    sigma_mid = math.sqrt(sigma * sigma_down)
    u = (sigma_mid / sigma) * x - math.expm1(-h / 2) * x0
    return (sigma_down / sigma) * x - math.expm1(-h) * D(u, sigma_mid)


sample_dpmpp_2s_ancestral = ancestral_sampler(dpmpp_2s_step, "sample_dpmpp_2s_ancestral")
