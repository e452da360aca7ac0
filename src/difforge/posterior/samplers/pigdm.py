"""PiGDM: pseudoinverse-guided diffusion (Song, Vahdat, Mardani & Kautz 2023, "Pseudoinverse-
Guided Diffusion Models for Inverse Problems", ICLR 2023, eqs. 7-8, algorithm 1).

``p(x0 | x_t)`` is approximated by ``N(D(x_t), r_t^2 I)`` (eq. 7), which makes
``p(y | x_t) = N(A D(x_t), r_t^2 A A^T + sigma_y^2 I)`` and its score, through the denoiser's
Jacobian ``J = dD/dx_t`` (eq. 8),

    g = J^T A^T (r_t^2 A A^T + sigma_y^2 I)^{-1} (y - A D(x_t)),

with ``(r_t^2 A A^T + sigma_y^2 I)^{-1} = U diag(1 / (r_t^2 s^2 + sigma_y^2)) U^T`` from the SVD
(the pseudo-inverse where ``sigma_y = 0``: ``A^T (A A^T)^+ = A^+``). Tweedie's formula for the
posterior, ``E[x0 | x_t, y] = D(x_t) + sigma_t^2 g``, is then the estimate of a DDIM step.
``r_t^2 = sigma_data^2 sigma_t^2 / (sigma_data^2 + sigma_t^2)`` is the variance of ``x0 | x_t``
for data of variance ``sigma_data^2`` per coordinate (Song et al., sec. 3.2, with
``sigma_data = 1``).

Exact on an isotropic Gaussian prior ``N(m, sigma_data^2 I)``: there ``x0 | x_t`` is Gaussian
with covariance ``r_t^2 I``, ``g`` is the exact score of ``p(y | x_t)``, and the sampler is DDIM
on the exact posterior score (exact as the steps grow). Otherwise approximate.
One network evaluation and one backward pass per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from difforge.checks import check_real
from difforge.diffusion.samplers.common import DenoiserFn, StepCallback, report
from difforge.posterior.operators.base import LinearOperator
from difforge.posterior.samplers.common import check_eta, ddim_step, denoise_and_pullback


def check_pigdm_options(eta: float = 1.0, sigma_data: float = 1.0) -> None:
    """``0 <= eta <= 1``, ``sigma_data > 0``."""
    check_eta(eta)
    check_real("posterior.sigma_data", sigma_data, 0.0, low_open=True)


def sample_pigdm(
    denoiser: DenoiserFn,
    y: Tensor,
    operator: LinearOperator,
    sigma_y: float,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 1.0,
    sigma_data: float = 1.0,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    class_labels: Tensor | None = None,
) -> Tensor:
    """x: ``(N, *x_shape)`` at ``sigmas[0]``; y: ``(N, d_y)``; returns ``(N, *x_shape)``.

    ``eta``: DDIM's noise (1: DDPM's); ``sigma_data``: the data's standard deviation in ``r_t``.
    """
    check_pigdm_options(eta, sigma_data)
    svd = operator.svd()
    s2 = torch.zeros(operator.d_y, dtype=y.dtype, device=y.device)
    s2[: svd.s.numel()] = svd.s.to(y.device, y.dtype) ** 2
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        r2 = sigma_data**2 * sigma**2 / (sigma_data**2 + sigma**2)
        precision = r2 * s2 + sigma_y**2
        inverse = torch.where(precision > 0, 1 / precision.clamp_min(1e-300), 0.0)

        def weighted_residual(x0: Tensor, inverse: Tensor = inverse) -> Tensor:
            """A^T (r^2 A A^T + sigma_y^2 I)^{-1} (y - A x0)."""
            return operator.adjoint(svd.U(inverse * svd.Ut(y - operator.forward(x0))))

        x0, g = denoise_and_pullback(denoiser, x, sigma, class_labels, weighted_residual)
        report(callback, i, x, sigma, x0)
        x = ddim_step(x, x0 + sigma**2 * g, sigma, sigma_next, eta, generator)
    return x
