"""Multistep DPM-Solver++ of order 1..3, as an ODE solver (eta = 0) or an SDE solver (eta > 0):
the one update behind ``dpmpp_3m``, ``dpmpp_2m_sde`` and ``dpmpp_3m_sde``.

With lambda = -log sigma (VE frame; equal to log(alpha / sigma_vp)), h = lambda_{i+1} - lambda_i
and H = (1 + eta) h, one step from sigma_i to sigma_{i+1} is

    x_{i+1} = (sigma_{i+1} / sigma_i) e^{-eta h} x_i + phi_1(H) D0 [+ c_1 D1] [- phi_3(H) D2]
              + s_noise sigma_{i+1} sqrt(1 - e^{-2 eta h}) z,          z ~ N(0, I),
    phi_1(H) = 1 - e^{-H},   phi_2(H) = 1 - phi_1(H) / H,   phi_3(H) = phi_2(H) / H - 1/2,

the exponential integrator of the data-prediction ODE (eta = 0; Lu et al. 2022, "DPM-Solver++",
eq. 8 and algorithm 2) or of the reverse SDE (eta = 1, their SDE-DPM-Solver++; 0 < eta < 1
interpolates, as k-diffusion's ``sample_dpmpp_2m_sde``) with the denoised estimate x0(lambda) replaced by its
Taylor polynomial D0 + D1 u / h + D2 u^2 / (2 h^2), u = lambda - lambda_i, built from the last
outputs x0_i, x0_{i-1}, x0_{i-2} by divided differences (r0 = h_{i-1} / h, r1 = h_{i-2} / h):

    D0 = x0_i,   D1_0 = (x0_i - x0_{i-1}) / r0,   D1_1 = (x0_{i-1} - x0_{i-2}) / r1,
    order 2: D1 = D1_0, with c_1 = phi_1(H) / 2 ("midpoint") or phi_2(H) ("heun");
    order 3: D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),  D2 = (D1_0 - D1_1) / (r0 + r1),  c_1 = phi_2(H)

(the third-order multistep of the authors' reference code, used by diffusers' and k-diffusion's
3M). A step to sigma = 0 returns x0_i (the limit of the first-order update). The order warms up
and, with ``lower_order_final``, drops at the last steps (see
``multistep.py``). One NFE per step.

Note: diffusers 0.42's third-order "sde-dpmsolver++" update weights D2 by -(phi_3(2h) + 1), not
-phi_3(2h) (its ODE branch and k-diffusion's ``sample_dpmpp_3m_sde`` use -phi_3); this module
follows the derivation above.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from difforge.diffusion.samplers.common import DenoiserFn, StepCallback, denoise, noise_like, report
from difforge.diffusion.samplers.multistep import (
    check_choice,
    check_flag,
    check_noise,
    multistep_order,
)

SOLVER_TYPES = ("midpoint", "heun")


def check_dpmpp_multistep_options(
    *,
    eta: float = 0.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
    lower_order_final: bool = True,
) -> None:
    check_noise(eta, s_noise)
    check_choice("solver_type", solver_type, SOLVER_TYPES)
    check_flag("lower_order_final", lower_order_final)


@torch.no_grad()
def dpmpp_multistep(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    order: int,
    eta: float,
    s_noise: float,
    solver_type: str,
    lower_order_final: bool,
    generator: torch.Generator | None,
    callback: StepCallback | None,
    class_labels: Tensor | None,
) -> Tensor:
    """x: at ``sigmas[0]`` in the VE frame; sigmas: decreasing, ending at 0 or sigma_min > 0."""
    check_dpmpp_multistep_options(
        eta=eta, s_noise=s_noise, solver_type=solver_type, lower_order_final=lower_order_final
    )
    steps = len(sigmas) - 1
    x0s: list[Tensor] = []  # newest first
    hs: list[float] = []  # h of the previous steps, newest first
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(denoiser, x, sigma, class_labels)
        report(callback, i, x, sigma, x0)
        x0s = [x0, *x0s[:2]]
        if sigma_next == 0:
            return x0
        h = math.log(sigma / sigma_next)
        big_h = (1 + eta) * h
        phi_1 = -math.expm1(-big_h)
        phi_2 = 1 - phi_1 / big_h
        p = multistep_order(order, i, steps, lower_order_final)
        x = (sigma_next / sigma) * math.exp(-eta * h) * x + phi_1 * x0
        if p >= 2:
            r0 = hs[0] / h
            d1_0 = (x0 - x0s[1]) / r0
        if p == 2:
            x = x + (0.5 * phi_1 if solver_type == "midpoint" else phi_2) * d1_0
        elif p == 3:
            r1 = hs[1] / h
            d1_1 = (x0s[1] - x0s[2]) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = x + phi_2 * d1 - (phi_2 / big_h - 0.5) * d2
        if eta > 0:
            amplitude = s_noise * sigma_next * math.sqrt(-math.expm1(-2 * eta * h))
            x = x + amplitude * noise_like(x, generator)
        hs = [h, *hs[:1]]
    return x


def ode_solver(order: int) -> Callable[..., Tensor]:
    """The update of ``order`` with eta = 0 as a sampler (DPM-Solver++(2M), (3M))."""

    def sample(
        denoiser: DenoiserFn,
        x: Tensor,
        sigmas: Tensor,
        *,
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        generator: torch.Generator | None = None,
        callback: StepCallback | None = None,
        class_labels: Tensor | None = None,
    ) -> Tensor:
        """x: at ``sigmas[0]`` in the VE frame; sigmas: decreasing, ending at 0 or sigma_min > 0."""
        return sde_sample(
            denoiser,
            x,
            sigmas,
            eta=0.0,
            solver_type=solver_type,
            lower_order_final=lower_order_final,
            generator=generator,
            callback=callback,
            class_labels=class_labels,
        )

    sde_sample = sde_solver(order)
    sample.__name__ = sample.__qualname__ = f"sample_dpmpp_{order}m"
    return sample


def sde_solver(order: int) -> Callable[..., Tensor]:
    """The update of ``order`` as a sampler with its noise options (SDE-DPM-Solver++(2M), (3M))."""

    def sample(
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
            order=order,
            eta=eta,
            s_noise=s_noise,
            solver_type=solver_type,
            lower_order_final=lower_order_final,
            generator=generator,
            callback=callback,
            class_labels=class_labels,
        )

    sample.__name__ = sample.__qualname__ = f"sample_dpmpp_{order}m_sde"
    return sample
