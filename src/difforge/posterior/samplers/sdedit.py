"""SDEdit: guided image synthesis and editing with stochastic differential equations (Meng et
al. 2022, ICLR, sec. 3 and algorithm 1, with its masked variant for stroke editing).

The guide ``x_g = A^+ y`` (the image itself for the ``denoise`` operator, the observed pixels of
a mask) is noised to an intermediate level ``sigma(t0)`` and denoised from there with the
reverse SDE (here DDIM steps, ``eta = 1`` being DDPM's ancestral sampler):

    x(t0) = x_g + sigma(t0) z,   then the last ``round(strength * steps)`` steps of the grid,

``strength`` = t0 in (0, 1] (the share of the grid that runs, as diffusers' img2img; Meng et al.
use t0 in [0.3, 0.6]). A guide that is itself noisy (``sigma_y > 0``) is already at noise
level ``sigma_y``: only ``sqrt(sigma(t0)^2 - sigma_y^2)`` is added. With a mask that leaves
pixels unobserved, the observed ones are put back at each level (``impose_known``, the masked
variant), so only the unobserved region is synthesised.

SDEdit samples ``x0 | x(t0)`` for ``x(t0)`` drawn around the guide; on a Gaussian prior with the
``denoise`` operator that law is closed-form (the test checks it). It is the posterior
``p(x0 | y)`` only when ``sigma(t0) = sigma_y``. Network evaluations: ``round(strength * steps)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from difforge.checks import check_real
from difforge.diffusion.samplers.common import DenoiserFn, StepCallback, denoise, noise_like, report
from difforge.posterior.operators.base import LinearOperator
from difforge.posterior.samplers.common import check_eta, ddim_step, impose_known


def check_sdedit_options(strength: float = 0.5, eta: float = 1.0) -> None:
    """``0 < strength <= 1``, ``0 <= eta <= 1``."""
    check_real("posterior.strength", strength, 0.0, 1.0, low_open=True)
    check_eta(eta)


def sdedit_steps(steps: int, strength: float) -> int:
    """The grid steps SDEdit runs: ``round(strength * steps)``."""
    return round(strength * steps)


def sample_sdedit(
    denoiser: DenoiserFn,
    y: Tensor,
    operator: LinearOperator,
    sigma_y: float,
    x: Tensor,
    sigmas: Tensor,
    *,
    strength: float = 0.5,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    class_labels: Tensor | None = None,
) -> Tensor:
    """y: ``(N, d_y)``, the guide's measurement; returns ``(N, *x_shape)``. ``x`` gives only the
    shape: SDEdit starts from the noised guide.

    Raises:
        ValueError: ``strength`` runs no step of this grid, or ``sigma_y`` exceeds the start's
            noise level ``sigma(t0)``.
    """
    check_sdedit_options(strength, eta)
    steps = len(sigmas) - 1
    run = sdedit_steps(steps, strength)
    if run == 0:
        raise ValueError(
            f"posterior.strength={strength} runs no step of a {steps}-step grid; raise it"
        )
    first = steps - run
    sigma_t0 = float(sigmas[first])
    if sigma_y > sigma_t0:
        raise ValueError(
            f"sdedit starts at sigma(t0) = {sigma_t0:.4g}, below sigma_y = {sigma_y:g}: raise "
            "posterior.strength"
        )
    masked = operator.is_mask and operator.d_y < operator.d_x
    guide = operator.pinv(y).to(x)
    x = guide + (sigma_t0**2 - sigma_y**2) ** 0.5 * noise_like(guide, generator)
    for i in range(first, steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(denoiser, x, sigma, class_labels)
        report(callback, i - first, x, sigma, x0)
        x = ddim_step(x, x0, sigma, sigma_next, eta, generator)
        if masked:
            x = impose_known(x, y, operator, sigma_y, sigma_next, generator)
    return x
