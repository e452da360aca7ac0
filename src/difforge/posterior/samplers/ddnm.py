"""DDNM: the denoising diffusion null-space model (Wang, Yu & Zhang 2023, "Zero-Shot Image
Restoration Using Denoising Diffusion Null-Space Model", ICLR 2023), with DDNM+ for noisy
measurements (sec. 3.3).

DDNM (alg. 1, eq. 13) keeps the denoised estimate's null-space part and takes the range-space
part from ``y``: ``x0_hat = A^+ y + (I - A^+ A) D(x_t)``, then steps to ``x_{t-1}`` from
``q(x_{t-1} | x_t, x0_hat)``. With ``sigma_y > 0``, DDNM+ (eqs. 17-19) scales the correction,
``x0_hat = D(x_t) - Sigma_t A^+ (A D(x_t) - y)``, so that the measurement noise it carries into
``x_{t-1}`` stays within the step's own noise, which is reduced to make room:
``x_{t-1} = DDIM(x0_hat) + sqrt(Phi_t) z``. In the SVD's coordinates, where ``A^+ (sigma_y n)``
has standard deviation ``c_i = sigma_y / s_i`` and the step weighs ``x0_hat`` by
``a = 1 - sigma_down / sigma``:

    lambda_i = 1 if a c_i <= sigma_up else sigma_up / (a c_i),   Phi_i = sigma_up^2 - (a lambda_i c_i)^2,

with ``(sigma_down, sigma_up)`` DDIM's split of the step (``ddim_step``); ``sigma_y = 0`` gives
``lambda = 1``, DDNM. DDNM+'s "time travel" (back-and-forth resampling) is not implemented.
``eta = 0.85`` is the DDIM noise of the DDRM code base DDNM runs on. Exact (as the steps grow)
only where the posterior factorises in the SVD's coordinates, e.g. an isotropic Gaussian prior
with ``sigma_y = 0``; otherwise the range space is replaced, not conditioned on the prior's
correlation with the null space or on ``sigma_y``. One network evaluation per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from difforge.diffusion.samplers.common import DenoiserFn, StepCallback, denoise, noise_like, report
from difforge.diffusion.samplers.euler_ancestral import ancestral_step
from difforge.posterior.operators.base import LinearOperator
from difforge.posterior.samplers.common import check_eta, spectral


def check_ddnm_options(eta: float = 0.85) -> None:
    """``0 <= eta <= 1``."""
    check_eta(eta)


def sample_ddnm(
    denoiser: DenoiserFn,
    y: Tensor,
    operator: LinearOperator,
    sigma_y: float,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 0.85,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    class_labels: Tensor | None = None,
) -> Tensor:
    """x: ``(N, *x_shape)`` at ``sigmas[0]``; y: ``(N, d_y)``; returns ``(N, *x_shape)``."""
    check_ddnm_options(eta)
    svd = operator.svd()
    view = spectral(operator, y, sigma_y)
    seen, y_bar = view.seen, view.y_bar
    c = torch.where(seen, view.c, torch.zeros_like(view.c))
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(denoiser, x, sigma, class_labels)
        report(callback, i, x, sigma, x0)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        a = 1 - sigma_down / sigma
        carried = a * c
        lam = torch.where(carried <= sigma_up, torch.ones_like(c), sigma_up / carried)
        fresh = (sigma_up**2 - (lam * carried) ** 2).clamp_min(0).sqrt()
        x0_bar, x_bar = svd.Vt(x0), svd.Vt(x)
        x0_hat = torch.where(seen, x0_bar - lam * (x0_bar - y_bar), x0_bar)
        x_bar = x0_hat + (sigma_down / sigma) * (x_bar - x0_hat)
        x = svd.V(x_bar + fresh * noise_like(x_bar, generator))
    return x
