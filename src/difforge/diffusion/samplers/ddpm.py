"""Ancestral sampling of DDPM (Ho et al. 2020, algorithm 2) on any sigma grid.

Each step from ``sigma_t`` to ``sigma_s < sigma_t`` draws from the Gaussian posterior
q(z_s | z_t, x_0 = D(x_t, sigma_t)) of the VP chain (eqs. 6-7) with the step's own
``beta = 1 - abar_t / abar_s`` (respacing, Nichol & Dhariwal 2021, sec. 4), ``abar = 1/(1+sigma^2)``.
Variance choices (Ho et al. sec. 3.2; Nichol & Dhariwal eq. 15):

- ``small``: beta~ = (1 - abar_s) / (1 - abar_t) beta   (the posterior variance)
- ``large``: beta
- ``learned``: exp(f log beta + (1 - f) log beta~), f = (v + 1) / 2 from the network.

The last step (to sigma = 0) returns the denoised mean without noise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from difforge.diffusion.forward import alpha_bar_from_sigma, posterior_coefficients
from difforge.diffusion.samplers.common import DenoiserFn, StepCallback, noise_like, report

VARIANCES = ("small", "large", "learned")


def check_ddpm_options(variance: str = "small") -> None:
    """Raises ValueError for an unknown variance."""
    if variance not in VARIANCES:
        raise ValueError(f"unknown sampler.variance {variance!r}; allowed: {', '.join(VARIANCES)}")


@torch.no_grad()
def sample_ddpm(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    variance: str = "small",
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    class_labels: Tensor | None = None,
) -> Tensor:
    """x: ``sigmas[0] * N(0, I)`` in the VE frame; sigmas: decreasing, ending in 0."""
    check_ddpm_options(variance)
    if variance == "learned" and not getattr(denoiser, "learned_variance", False):
        raise ValueError(
            "sampler.variance='learned' needs a model trained with a learned variance (loss=hybrid)"
        )
    sigmas64 = sigmas.to(torch.float64)
    abars = alpha_bar_from_sigma(sigmas64)
    for i in range(len(sigmas64) - 1):
        sigma_t = sigmas64[i].expand(x.shape[0]).to(device=x.device, dtype=x.dtype)
        if variance == "learned":
            prediction = denoiser.predict(x, sigma_t, class_labels)  # type: ignore[attr-defined]
            x0, variance_value = prediction.x0, prediction.variance_value
        else:
            x0, variance_value = denoiser(x, sigma_t, class_labels), None
        report(callback, i, x, float(sigmas64[i]), x0)
        abar_t, abar_s = abars[i], abars[i + 1]
        coef_x0, coef_xt, posterior_var = posterior_coefficients(abar_t, abar_s)
        z_t = x * abar_t.sqrt().item()
        mean = coef_x0.item() * x0 + coef_xt.item() * z_t
        if sigmas64[i + 1] == 0:
            x = mean
            continue
        beta = 1 - abar_t / abar_s
        if variance == "small":
            log_var = posterior_var.log().item() * torch.ones_like(x)
        elif variance == "large":
            log_var = beta.log().item() * torch.ones_like(x)
        else:
            assert variance_value is not None
            frac = (variance_value.to(x.dtype) + 1) / 2
            log_var = frac * beta.log().item() + (1 - frac) * posterior_var.log().item()
        z_s = mean + (0.5 * log_var).exp() * noise_like(x, generator)
        x = z_s / abar_s.sqrt().item()
    return x
