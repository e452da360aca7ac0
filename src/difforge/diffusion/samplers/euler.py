"""Euler's method on the probability-flow ODE, with EDM's optional stochastic churn.

The ODE in the VE frame (Karras et al. 2022, eq. 4 with s(t) = 1, sigma(t) = t):

    dx / dsigma = (x - D(x, sigma)) / sigma.

Churn (EDM algorithm 2, lines 4-6): before step i, when ``S_tmin <= sigma_i <= S_tmax``, raise the
noise level to ``sigma_hat = sigma_i (1 + gamma)``, gamma = min(S_churn / N, sqrt(2) - 1), by adding
fresh noise of variance ``sigma_hat^2 - sigma_i^2`` (times ``S_noise^2``). ``S_churn = 0`` is the
deterministic ODE solver.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from difforge.diffusion.samplers.common import (
    DenoiseAt,
    DenoiserFn,
    StepCallback,
    StepUpdate,
    denoise,
    noise_like,
    report,
)


def churn(
    x: Tensor,
    sigma: float,
    num_steps: int,
    S_churn: float,
    S_tmin: float,
    S_tmax: float,
    S_noise: float,
    generator: torch.Generator | None,
) -> tuple[Tensor, float]:
    """EDM algorithm 2, lines 4-6: returns ``(x_hat, sigma_hat)``."""
    gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_tmin <= sigma <= S_tmax else 0.0
    if gamma == 0:
        return x, sigma
    sigma_hat = sigma * (1 + gamma)
    return x + math.sqrt(sigma_hat**2 - sigma**2) * S_noise * noise_like(x, generator), sigma_hat


def check_churn(
    S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = float("inf"), S_noise: float = 1.0
) -> None:
    """Raises ValueError for churn settings outside EDM algorithm 2's domain."""
    if S_churn < 0 or S_tmin < 0 or S_tmax < S_tmin or S_noise <= 0:
        raise ValueError(
            f"need S_churn >= 0, 0 <= S_tmin <= S_tmax, S_noise > 0; got S_churn={S_churn}, "
            f"S_tmin={S_tmin}, S_tmax={S_tmax}, S_noise={S_noise}"
        )


def churn_sampler(update: StepUpdate, name: str) -> Callable[..., Tensor]:
    """EDM algorithm 2's loop as a sampler: churn to sigma_hat, one NFE there, then ``update``
    from sigma_hat to sigma_{i+1} (Euler here, Heun in ``heun.py``)."""

    @torch.no_grad()
    def sample(
        denoiser: DenoiserFn,
        x: Tensor,
        sigmas: Tensor,
        *,
        S_churn: float = 0.0,
        S_tmin: float = 0.0,
        S_tmax: float = float("inf"),
        S_noise: float = 1.0,
        generator: torch.Generator | None = None,
        callback: StepCallback | None = None,
        class_labels: Tensor | None = None,
    ) -> Tensor:
        """x: ``sigmas[0] * N(0, I)``; sigmas: decreasing, ending in 0."""
        check_churn(S_churn, S_tmin, S_tmax, S_noise)

        def D(x: Tensor, sigma: float) -> Tensor:
            return denoise(denoiser, x, sigma, class_labels)

        num_steps = len(sigmas) - 1
        for i in range(num_steps):
            sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
            x, sigma_hat = churn(x, sigma, num_steps, S_churn, S_tmin, S_tmax, S_noise, generator)
            x0 = D(x, sigma_hat)
            report(callback, i, x, sigma_hat, x0)
            x = update(x, x0, sigma_hat, sigma_next, D)
        return x

    sample.__name__ = sample.__qualname__ = name
    return sample


def euler_step(x: Tensor, x0: Tensor, sigma: float, sigma_next: float, D: DenoiseAt) -> Tensor:
    """Euler on ``dx / dsigma = (x - x0) / sigma`` from ``sigma`` to ``sigma_next``; no NFE."""
    return x + (sigma_next - sigma) * (x - x0) / sigma


sample_euler = churn_sampler(euler_step, "sample_euler")
