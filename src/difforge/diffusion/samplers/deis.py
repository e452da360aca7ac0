"""DEIS: the multistep exponential integrator of the probability-flow ODE in the rescaled time
rho = sigma_vp / alpha (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential
Integrator", AB-DEIS: the noise prediction extrapolated by a polynomial through its last values),
as diffusers' DEISMultistepScheduler(algorithm_type="deis"), whose polynomial is in log rho.

In rho the ODE is dx/drho = eps(x, rho) with x in the VE frame and rho = sigma (so any sigma grid
works as it is). Step i integrates the Lagrange polynomial in log rho through the last p noise
predictions eps_k = (x_k - x0_k) / sigma_k, at nodes v_k = log(sigma_{i-k} / sigma_i):

    x_{i+1} = x_i + sum_{k<p} c_k eps_k,
    c_k = int_{sigma_i}^{sigma_{i+1}} L_k(log(rho / sigma_i)) drho
        = sigma_i [e^v Q_k(v)]_{v=0}^{log(sigma_{i+1} / sigma_i)},   Q_k = L_k - L_k' + L_k'' - ...,

L_k the Lagrange basis polynomial of node k (p = 1 is Euler's method, i.e. DDIM). The order warms
up and, with ``lower_order_final``, drops at the last two steps (see
``multistep.py``); a step to sigma = 0 returns x0. Deterministic, one NFE per step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from difforge.diffusion.samplers.common import DenoiserFn, StepCallback, denoise, report
from difforge.diffusion.samplers.multistep import (
    check_flag,
    check_order,
    multistep_order,
)


def check_deis_options(*, order: int = 2, lower_order_final: bool = True) -> None:
    check_order(order, 3)
    check_flag("lower_order_final", lower_order_final)


def _lagrange_basis(nodes: list[float], k: int) -> list[float]:
    """Coefficients (ascending powers of v) of ``prod_{m != k} (v - v_m) / (v_k - v_m)``."""
    coefficients = [1.0]
    for m, node in enumerate(nodes):
        if m != k:
            scale = nodes[k] - node
            padded = [*coefficients, 0.0]
            coefficients = [
                ((padded[j - 1] if j > 0 else 0.0) - node * padded[j]) / scale
                for j in range(len(padded))
            ]
    return coefficients


def lagrange_exp_integrals(nodes: list[float], end: float) -> list[float]:
    """``int_0^end e^v L_k(v) dv`` for each Lagrange basis polynomial ``L_k`` on ``nodes``."""
    integrals = []
    for k in range(len(nodes)):
        # Q = L - L' + L'' - ... satisfies (e^v Q)' = e^v L.
        derivative, q = _lagrange_basis(nodes, k), [0.0] * len(nodes)
        for order in range(len(nodes)):
            for j, c in enumerate(derivative):
                q[j] += (-1) ** order * c
            derivative = [j * derivative[j] for j in range(1, len(derivative))]
        q_end = sum(c * end**j for j, c in enumerate(q))
        # e^end Q(end) - Q(0), written to keep precision when end is small.
        integrals.append(math.expm1(end) * q_end + q_end - q[0])
    return integrals


@torch.no_grad()
def sample_deis(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    order: int = 2,
    lower_order_final: bool = True,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    class_labels: Tensor | None = None,
) -> Tensor:
    """x: at ``sigmas[0]`` in the VE frame; sigmas: decreasing, ending at 0 or sigma_min > 0.
    ``order`` in 1..3 is lowered where there are too few outputs or steps."""
    check_deis_options(order=order, lower_order_final=lower_order_final)
    steps = len(sigmas) - 1
    eps_history: list[Tensor] = []  # newest first
    log_sigmas: list[float] = []
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(denoiser, x, sigma, class_labels)
        report(callback, i, x, sigma, x0)
        if sigma_next == 0:
            return x0
        eps_history = [(x - x0) / sigma, *eps_history[:2]]
        log_sigmas = [math.log(sigma), *log_sigmas[:2]]
        p = multistep_order(order, i, steps, lower_order_final)
        nodes = [log_sigma - log_sigmas[0] for log_sigma in log_sigmas[:p]]
        coefficients = lagrange_exp_integrals(nodes, math.log(sigma_next / sigma))
        x = x + sigma * sum(c * eps for c, eps in zip(coefficients, eps_history, strict=False))
    return x
