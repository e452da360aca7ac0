"""DPS: diffusion posterior sampling (Chung et al. 2023, "Diffusion Posterior Sampling for
General Noisy Inverse Problems", ICLR 2023, algorithm 1).

Each step denoises ``x0 = D(x_i, sigma_i)``, takes DDPM's ancestral step ``x'_{i-1}`` to
``sigma_{i-1}`` and then a gradient step on the measurement's residual through the denoiser:

    x_{i-1} = x'_{i-1} - zeta_i grad_{x_i} ||y - A x0(x_i)||_2^2,
    zeta_i = zeta' / ||y - A x0(x_i)||_2,

the step size of Chung et al. (sec. 4, app. C): the update is ``2 zeta'`` times the gradient of
the residual's norm, a step of bounded length as the residual vanishes.

The algorithm is written for VP latents ``z = sqrt(abar) x``; in the VE frame the same update
moves ``x`` by ``zeta_i / sqrt(abar_i abar_{i-1})`` times the VE gradient
(``abar = 1 / (1 + sigma^2)``), which is what runs here.

DPS approximates ``p(y | x_t)`` by ``p(y | x0 = D(x_t))`` (Chung et al., eq. 13) and absorbs
``sigma_y`` and the approximation into ``zeta'``: it is biased, even on a Gaussian prior (the
covariance of ``x0 | x_t`` is dropped; the step size is a heuristic).
One network evaluation and one backward pass per step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from difforge.checks import check_real
from difforge.diffusion.samplers.common import DenoiserFn, StepCallback, report
from difforge.posterior.operators.base import LinearOperator
from difforge.posterior.samplers.common import ddim_step, denoise_and_pullback


def check_dps_options(zeta: float = 1.0) -> None:
    """``zeta`` (zeta' of Chung et al.) > 0."""
    check_real("posterior.zeta", zeta, 0.0, low_open=True)


def sample_dps(
    denoiser: DenoiserFn,
    y: Tensor,
    operator: LinearOperator,
    sigma_y: float,
    x: Tensor,
    sigmas: Tensor,
    *,
    zeta: float = 1.0,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    class_labels: Tensor | None = None,
) -> Tensor:
    """x: ``(N, *x_shape)`` at ``sigmas[0]``; y: ``(N, d_y)``; returns ``(N, *x_shape)``.

    ``zeta``: zeta', the step scale (default 1). ``sigma_y`` does not enter DPS's update.
    """
    check_dps_options(zeta)
    tiny = torch.finfo(y.dtype).tiny

    def unit_residual(x0: Tensor) -> Tensor:
        """A^T (A x0 - y) / ||A x0 - y||: the cotangent of the residual norm."""
        residual = operator.forward(x0) - y
        return operator.adjoint(residual / residual.norm(dim=1, keepdim=True).clamp_min(tiny))

    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x0, grad = denoise_and_pullback(denoiser, x, sigma, class_labels, unit_residual)
        report(callback, i, x, sigma, x0)
        vp_to_ve = math.sqrt((1 + sigma**2) * (1 + sigma_next**2))
        x = ddim_step(x, x0, sigma, sigma_next, 1.0, generator)
        # grad of ||r||^2 = 2 ||r|| grad ||r||; times zeta' / ||r||.
        x = x - (2 * zeta * vp_to_ve) * grad
    return x
