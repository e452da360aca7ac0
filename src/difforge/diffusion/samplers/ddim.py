"""DDIM (Song, Meng & Ermon 2021, eq. 12) on any sigma grid.

    z_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - s_eta^2) eps^ + s_eta * noise,
    s_eta = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)     (eq. 16)

with ``eps^ = (x_t - x0) / sigma_t`` and ``abar = 1 / (1 + sigma^2)``. In the VE frame and with
``eta = 0`` this is exactly Euler's method on the probability-flow ODE (Karras et al. 2022, sec. 3):
``x_s = x0 + sigma_s eps^``. ``eta = 1`` matches DDPM's ancestral noise level. With ``eta = 0`` an increasing grid (starting
above 0) runs the same map upwards: DDIM inversion, which encodes data into noise (Song et al.
2021, sec. 4.3).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from difforge.diffusion.forward import alpha_bar_from_sigma
from difforge.diffusion.samplers.common import DenoiserFn, StepCallback, denoise, noise_like, report


def check_ddim_options(eta: float = 0.0) -> None:
    """Raises ValueError for eta < 0."""
    if eta < 0:
        raise ValueError(f"sampler.eta must be >= 0, got {eta}")


@torch.no_grad()
def sample_ddim(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    class_labels: Tensor | None = None,
) -> Tensor:
    """x: ``sigmas[0] * N(0, I)`` in the VE frame; sigmas: decreasing, ending in 0."""
    check_ddim_options(eta)
    if eta > 0 and sigmas[-1] > sigmas[0]:
        raise ValueError("DDIM inversion (an increasing sigma grid) needs eta = 0")
    sigmas64 = sigmas.to(torch.float64)
    for i in range(len(sigmas64) - 1):
        sigma_t = float(sigmas64[i])
        x0 = denoise(denoiser, x, sigma_t, class_labels)
        report(callback, i, x, sigma_t, x0)
        eps = (x - x0) / sigma_t
        abar_t, abar_s = (
            float(alpha_bar_from_sigma(sigmas64[i])),
            float(alpha_bar_from_sigma(sigmas64[i + 1])),
        )
        s_eta = (
            eta * math.sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)) if eta > 0 else 0.0
        )
        direction = math.sqrt(max(1 - abar_s - s_eta**2, 0.0))
        # Divide the VP update by sqrt(abar_s) to stay in the VE frame.
        x = x0 + (direction * eps) / math.sqrt(abar_s)
        if s_eta > 0:
            x = x + (s_eta / math.sqrt(abar_s)) * noise_like(x, generator)
    return x
