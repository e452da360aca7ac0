"""Singlestep DPM-Solver++ of order 1-3: the data-prediction solver of the probability-flow ODE
whose higher-order steps restart from the start of their group (Lu et al. 2022, "DPM-Solver++",
sec. 4 and appendix; "DPM-Solver", algorithms 1-2), as diffusers' DPMSolverSinglestepScheduler
with ``algorithm_type="dpmsolver++"``.

The grid's levels are the intermediate points. The steps go in groups of orders 1, 2, ..., p
(``singlestep_orders``): a group starts at x_s with the denoised estimate m_s; its step of
order k goes from x_s to the next level t using the k estimates taken so far in the group
(at s and at the levels after it). With lambda = -log sigma, h = lambda_t - lambda_s and
r_j = (lambda_{s_j} - lambda_s) / h for the group's later points s_j:

    order 1: x_t = (sigma_t / sigma_s) x_s + (1 - e^{-h}) m_s
    order 2: ... + c (m_{s_1} - m_s) / r_1,   c = (1 - e^{-h}) / 2 ("midpoint") or
             phi_2(h) = (e^{-h} - 1) / h + 1 ("heun")
    order 3: D1_1 = (m_{s_2} - m_s) / r_2,  D1_0 = (m_{s_1} - m_s) / r_1,
             "midpoint": ... + phi_2(h) D1_1;
             "heun": ... + phi_2(h) D1 - phi_3(h) D2,  phi_3(h) = (e^{-h} - 1 + h) / h^2 - 1/2,
             D1 = (r_2 D1_0 - r_1 D1_1) / (r_2 - r_1),  D2 = 2 (D1_1 - D1_0) / (r_2 - r_1)

(VE frame: the papers' alpha_t is 1). A step to sigma = 0 is first order and returns m. One NFE
per step; deterministic.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from difforge.diffusion.samplers.common import DenoiserFn, StepCallback, denoise, report
from difforge.diffusion.samplers.dpmpp_multistep import SOLVER_TYPES
from difforge.diffusion.samplers.multistep import check_choice, check_flag, check_order


def check_dpmpp_singlestep_options(
    *, order: int = 3, solver_type: str = "midpoint", lower_order_final: bool = True
) -> None:
    check_order(order, 3)
    check_choice("solver_type", solver_type, SOLVER_TYPES)
    check_flag("lower_order_final", lower_order_final)


def singlestep_orders(
    steps: int, order: int, lower_order_final: bool, final_zero: bool
) -> list[int]:
    """The order of each of ``steps`` steps: groups 1, 2, ..., ``order``; with
    ``lower_order_final`` the last group is cut short instead of dropping steps, and a final
    step to sigma = 0 is first order (diffusers' ``get_order_list``)."""
    group = list(range(1, order + 1))
    if lower_order_final:
        full, rest = divmod(steps, order)
        if rest == 0 and full > 0:
            full, rest = full - 1, order  # a last full group ends with its own first steps
            orders = group * full + list(range(1, order)) + [1]
        else:
            orders = group * full + list(range(1, rest + 1))
    else:
        orders = (group * steps)[:steps]
    if final_zero:
        orders[-1] = 1
    return orders


@torch.no_grad()
def sample_dpmpp_singlestep(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    order: int = 3,
    solver_type: str = "midpoint",
    lower_order_final: bool = True,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    class_labels: Tensor | None = None,
) -> Tensor:
    """x: at ``sigmas[0]`` in the VE frame; sigmas: decreasing, ending at 0 or sigma_min > 0."""
    check_dpmpp_singlestep_options(
        order=order, solver_type=solver_type, lower_order_final=lower_order_final
    )
    steps = len(sigmas) - 1
    orders = singlestep_orders(steps, order, lower_order_final, float(sigmas[-1]) == 0)
    x_start, sigma_start = x, float(sigmas[0])
    estimates: list[Tensor] = []  # the group's denoised estimates, oldest first
    lambdas: list[float] = []
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        if orders[i] == 1:
            x_start, sigma_start, estimates, lambdas = x, sigma, [], []
        m = denoise(denoiser, x, sigma, class_labels)
        report(callback, i, x, sigma, m)
        estimates.append(m)
        lambdas.append(-math.log(sigma))
        if sigma_next == 0:
            return m
        h = math.log(sigma_start / sigma_next)
        phi_1 = -math.expm1(-h)
        phi_2 = 1 - phi_1 / h
        x = (sigma_next / sigma_start) * x_start + phi_1 * estimates[0]
        if orders[i] == 2:
            r1 = (lambdas[1] - lambdas[0]) / h
            d1 = (estimates[1] - estimates[0]) / r1
            x = x + (0.5 * phi_1 if solver_type == "midpoint" else phi_2) * d1
        elif orders[i] == 3:
            r1, r2 = ((lam - lambdas[0]) / h for lam in lambdas[1:])
            d1_0 = (estimates[1] - estimates[0]) / r1
            d1_1 = (estimates[2] - estimates[0]) / r2
            if solver_type == "midpoint":
                x = x + phi_2 * d1_1
            else:
                d1 = (r2 * d1_0 - r1 * d1_1) / (r2 - r1)
                d2 = 2 * (d1_1 - d1_0) / (r2 - r1)
                phi_3 = phi_2 / h - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
    return x
