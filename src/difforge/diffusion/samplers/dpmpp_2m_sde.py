"""DPM-Solver++(2M) SDE: the second-order multistep solver of the reverse SDE in data prediction
(Lu et al. 2022, "DPM-Solver++", SDE-DPM-Solver++(2M); k-diffusion's ``sample_dpmpp_2m_sde``).

With lambda = -log sigma, h = lambda_{i+1} - lambda_i, H = (1 + eta) h, r = h_{i-1} / h and
D1 = (x0_i - x0_{i-1}) / r:

    x_{i+1} = (sigma_{i+1} / sigma_i) e^{-eta h} x_i + (1 - e^{-H}) x0_i + c_1 D1
              + s_noise sigma_{i+1} sqrt(1 - e^{-2 eta h}) z,
    c_1 = (1 - e^{-H}) / 2 ("midpoint") or 1 - (1 - e^{-H}) / H ("heun"),

eta = 1 being diffusers' DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++") and
eta = 0 the ODE solver DPM-Solver++(2M). First order at the first step, at the last one with
``lower_order_final`` and fewer than 15 steps; a step to sigma = 0 returns x0 without noise.
Fresh i.i.d. noise per step (k-diffusion's default draws from a Brownian tree instead). One NFE
per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from difforge.diffusion.samplers.common import DenoiserFn, StepCallback
from difforge.diffusion.samplers.dpmpp_multistep import dpmpp_multistep


def sample_dpmpp_2m_sde(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
    lower_order_final: bool = True,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    class_labels: Tensor | None = None,
) -> Tensor:
    """x: at ``sigmas[0]`` in the VE frame; sigmas: decreasing, ending at 0 or sigma_min > 0."""
    return dpmpp_multistep(
        denoiser,
        x,
        sigmas,
        order=2,
        eta=eta,
        s_noise=s_noise,
        solver_type=solver_type,
        lower_order_final=lower_order_final,
        generator=generator,
        callback=callback,
        class_labels=class_labels,
    )
