"""UniPC: the unified predictor-corrector multistep solver of the probability-flow ODE in data
prediction (Zhao et al. 2023, "UniPC", algorithms 1-2 with B(h); diffusers'
UniPCMultistepScheduler(predict_x0=True)).

With lambda = -log sigma, h = lambda_t - lambda_s (s the current point, t the next), the last
outputs x0_s = m_0, m_1, ..., m_{p-1} at lambda_{s_k} and r_k = (lambda_{s_k} - lambda_s) / h:

    x_t = (sigma_t / sigma_s) x_s - (e^{-h} - 1) m_0 - B(h) sum_k a_k D_k,
    D_k = (m_k - m_0) / r_k,   B(h) = -h ("bh1") or e^{-h} - 1 ("bh2"),

where the weights a solve R a = g / B(h) with R_{jk} = r_k^j (rows j = 0..n-1) and
g_j = (j + 1)! z phi_{j+2}(z), z = -h, phi_1(z) = (e^z - 1) / z, phi_{k+1}(z) = (phi_k(z) - 1/k!) / z:

- UniP-p (predictor, order p): the n = p - 1 differences D_1..D_{p-1}; a = 1/2 when n = 1.
- UniC-p (corrector, applied to x_t once m_t = D(x_t, sigma_t) is known, from the same x_s):
  also D_p = m_t - m_0 with r_p = 1, n = p; a = 1/2 when n = 1. The corrected x_t is the next
  starting point; m_t stays the model output at the uncorrected x_t, so the corrector costs no
  evaluation and raises the order to p + 1 (ibid., sec. 3.1).

The order warms up and, with ``lower_order_final``, is at most steps - i at step i (diffusers,
at any number of steps). No corrector after the last step: NFE = steps. A step to sigma = 0
returns x0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from difforge.diffusion.samplers.common import DenoiserFn, StepCallback, denoise, report
from difforge.diffusion.samplers.multistep import (
    check_choice,
    check_flag,
    check_order,
    multistep_order,
)

SOLVER_TYPES = ("bh1", "bh2")


def check_unipc_options(
    *,
    order: int = 2,
    solver_type: str = "bh2",
    corrector: bool = True,
    lower_order_final: bool = True,
) -> None:
    check_order(order, 3)
    check_choice("solver_type", solver_type, SOLVER_TYPES)
    check_flag("corrector", corrector)
    check_flag("lower_order_final", lower_order_final)


def unipc_update(
    x: Tensor,
    sigma: float,
    sigma_next: float,
    x0s: list[Tensor],
    lambdas: list[float],
    order: int,
    solver_type: str,
    x0_next: Tensor | None = None,
) -> Tensor:
    """UniP-``order`` from ``x`` at ``sigma`` to ``sigma_next`` or, given ``x0_next``, UniC-``order``.

    x0s, lambdas: the denoised estimates and their lambdas, newest (at ``sigma``) first.
    """
    h = math.log(sigma / sigma_next)
    m0 = x0s[0]
    rks = [(lambdas[k] - lambdas[0]) / h for k in range(1, order)]
    diffs = [(x0s[k] - m0) / rks[k - 1] for k in range(1, order)]
    if x0_next is not None:
        rks.append(1.0)
        diffs.append(x0_next - m0)
    x = (sigma_next / sigma) * x - math.expm1(-h) * m0
    n = len(diffs)
    if n == 0:
        return x
    b_h = -h if solver_type == "bh1" else math.expm1(-h)
    if n == 1:
        weights = [0.5]
    else:
        # g_j / B(h), g_j = (j + 1)! z phi_{j+2}(z) by the recurrence of phi_k (z = -h).
        g, h_phi, factorial = [], math.expm1(-h) / -h - 1, 1
        for j in range(n):
            g.append(h_phi * factorial / b_h)
            factorial *= j + 2
            h_phi = h_phi / -h - 1 / factorial
        r = torch.tensor([[rk**j for rk in rks] for j in range(n)], dtype=torch.float64)
        weights = torch.linalg.solve(r, torch.tensor(g, dtype=torch.float64)).tolist()
    return x - b_h * sum(w * d for w, d in zip(weights, diffs, strict=True))


@torch.no_grad()
def sample_unipc(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    order: int = 2,
    solver_type: str = "bh2",
    corrector: bool = True,
    lower_order_final: bool = True,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    class_labels: Tensor | None = None,
) -> Tensor:
    """x: at ``sigmas[0]`` in the VE frame; sigmas: decreasing, ending at 0 or sigma_min > 0.
    Deterministic; ``order`` in 1..3 is lowered where there are too few outputs or steps."""
    check_unipc_options(
        order=order,
        solver_type=solver_type,
        corrector=corrector,
        lower_order_final=lower_order_final,
    )
    steps = len(sigmas) - 1
    x0s: list[Tensor] = []  # newest first
    lambdas: list[float] = []
    x_prev, p = x, 1  # the last predictor's starting point and order, for its corrector
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(denoiser, x, sigma, class_labels)
        report(callback, i, x, sigma, x0)
        if corrector and i > 0:
            x = unipc_update(
                x_prev, float(sigmas[i - 1]), sigma, x0s, lambdas, p, solver_type, x0_next=x0
            )
        x0s, lambdas = [x0, *x0s[:2]], [-math.log(sigma), *lambdas[:2]]
        if sigma_next == 0:
            return x0
        p = multistep_order(order, i, steps, lower_order_final)
        x_prev = x
        x = unipc_update(x, sigma, sigma_next, x0s, lambdas, p, solver_type)
    return x
