"""The forward (noising) process of DDPM and its closed forms (Ho et al. 2020, sec. 2).

With ``alpha_t = 1 - beta_t`` and ``abar_t = prod_{s<=t} alpha_s`` (``t = 1..T``; tensors index
``t - 1``):

- one step, eq. 2:          q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I)
- closed form, eq. 4:       q(x_t | x_0)     = N(sqrt(abar_t) x_0, (1 - abar_t) I)
- posterior, eqs. 6-7:      q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I),
      mu~_t   = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
      beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t
- signal-to-noise ratio:    SNR(t) = abar_t / (1 - abar_t) = 1 / sigma_t^2 (Kingma et al. 2021, eq. 2)

These functions work in the variance-preserving frame of DDPM (``x_t`` here); the samplers work in
the variance-exploding frame ``x_t / sqrt(abar_t)``. They accept any abar, so they also serve
respaced chains (Nichol & Dhariwal 2021, sec. 4).
"""

from __future__ import annotations

import torch
from torch import Tensor

from difforge.diffusion.broadcast import per_sample
from difforge.diffusion.schedules import DiscreteSchedule


def q_step(schedule: DiscreteSchedule, x_prev: Tensor, index: Tensor, noise: Tensor) -> Tensor:
    """One forward step x_{t-1} -> x_t (eq. 2); ``index = t - 1``."""
    alpha = schedule.alphas.to(x_prev.device)[index]
    return (
        per_sample(alpha.sqrt(), x_prev) * x_prev + per_sample((1 - alpha).sqrt(), x_prev) * noise
    )


def q_sample(schedule: DiscreteSchedule, x0: Tensor, index: Tensor, noise: Tensor) -> Tensor:
    """Draw x_t ~ q(x_t | x_0) (eq. 4); ``index = t - 1``."""
    abar = schedule.alphas_cumprod.to(x0.device)[index]
    return per_sample(abar.sqrt(), x0) * x0 + per_sample((1 - abar).sqrt(), x0) * noise


def posterior_coefficients(abar_t: Tensor, abar_prev: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients of q(x_s | x_t, x_0) for any pair ``abar_t < abar_prev`` (eqs. 6-7).

    Returns ``(coef_x0, coef_xt, variance)`` with mean ``coef_x0 x_0 + coef_xt x_t``. The step's
    beta is ``1 - abar_t / abar_prev``; ``abar_prev = 1`` is the last step (to x_0).
    """
    beta = 1 - abar_t / abar_prev
    coef_x0 = abar_prev.sqrt() * beta / (1 - abar_t)
    coef_xt = (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar_t)
    variance = (1 - abar_prev) / (1 - abar_t) * beta
    return coef_x0, coef_xt, variance


def previous_alphas_cumprod(schedule: DiscreteSchedule) -> Tensor:
    """abar_{t-1} for t = 1..T, with abar_0 = 1: ``(T,)`` float64."""
    return torch.cat([torch.ones(1, dtype=torch.float64), schedule.alphas_cumprod[:-1]])


def q_posterior(
    schedule: DiscreteSchedule, x0: Tensor, x_t: Tensor, index: Tensor
) -> tuple[Tensor, Tensor]:
    """Mean ``(B, ...)`` and variance ``(B,)`` of q(x_{t-1} | x_t, x_0); ``index = t - 1``."""
    abar = schedule.alphas_cumprod.to(x0.device)[index]
    abar_prev = previous_alphas_cumprod(schedule).to(x0.device)[index]
    coef_x0, coef_xt, variance = posterior_coefficients(abar, abar_prev)
    return per_sample(coef_x0, x0) * x0 + per_sample(coef_xt, x_t) * x_t, variance


def snr(schedule: DiscreteSchedule) -> Tensor:
    """SNR(t) = abar_t / (1 - abar_t) for t = 1..T: ``(T,)`` float64."""
    abar = schedule.alphas_cumprod
    return abar / (1 - abar)


def log_snr(schedule: DiscreteSchedule) -> Tensor:
    """lambda(t) = log SNR(t) = -2 log sigma_t: ``(T,)`` float64."""
    return snr(schedule).log()


def alpha_bar_from_sigma(sigma: Tensor) -> Tensor:
    """abar = 1 / (1 + sigma^2): the VP signal level of a VE noise level."""
    return 1 / (1 + sigma**2)
