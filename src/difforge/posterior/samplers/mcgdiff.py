"""MCGdiff: Monte Carlo guided diffusion (Cardoso, Janati El Idrissi, Le Corff & Moulines 2024,
"Monte Carlo guided Diffusion for Bayesian linear inverse problems", ICLR 2024, sec. 3,
algorithm 1), a sequential Monte Carlo sampler exact as the particles grow.

In the SVD's coordinates ``x_bar = V^T x`` the seen coordinates carry ``y_bar_i = x0_bar_i +
c_i n`` (``c_i = sigma_y / s_i``). The backward chain of the model, DDPM's step from ``x_k`` at
``sigma_k`` to ``sigma_{k+1}`` with ``x0 = D(x_k)`` (``p(x_{k+1} | x_k) = N(mu_k, v_k I)``,
``mu_k = x0 + (sigma_{k+1} / sigma_k)^2 (x_k - x0)``, ``v_k = sigma_{k+1}^2 (sigma_k^2 -
sigma_{k+1}^2) / sigma_k^2``), is twisted by the potentials

    g_k(x_k) = prod_{i seen} N(y_bar_i; x_bar_{k,i}, sigma_k^2 + c_i^2),

MCGdiff's potentials (``y_bar`` as a noisy copy of ``x_k``'s seen coordinates) with the
measurement's own noise added, so that the last one, at sigma = 0, is the exact likelihood
``p(y | x0)`` (up to a constant): no final reweighting is needed and any ``sigma_y >= 0`` is
handled alike (Cardoso et al. treat ``sigma_y > 0`` by identifying ``y_bar_i`` with the chain at
the level ``c_i``; this is the same Feynman-Kac model with a different, exact-at-the-end twist).
Each step is fully adapted (the paper's proposal): particle ``k`` is weighted by

    w = integral p(x_{k+1} | x_k) g_{k+1}(x_{k+1}) dx_{k+1} / g_k(x_k)
      = prod_i N(y_bar_i; mu_bar_i, v_k + sigma_{k+1}^2 + c_i^2) / N(y_bar_i; x_bar_{k,i}, sigma_k^2 + c_i^2),

resampled when the effective sample size falls below ``ess_threshold * K`` (``smc.resample``),
and moved by the Gaussian proposal ``p(x_{k+1} | x_k) g_{k+1}(x_{k+1})`` (a Kalman update on the
seen coordinates, the model's step on the others). With ``sigma_y = 0`` the last step sets the
seen coordinates to ``y_bar`` (the constraint), keeping the weights of the last level above 0
(exact as that level goes to 0). One sample per row of ``y`` is drawn from its cloud's final
weights.

The Feynman-Kac target is ``p_model(x0) p(y | x0)``: the exact posterior of the model's own
prior, so the sampler is exact as ``num_particles -> inf`` up to the model's discretisation
error (DDPM steps with the exact denoiser), for any ``sigma_y >= 0``. Network evaluations:
``num_particles`` per step and sample.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from difforge.checks import check_choice, check_int, check_real
from difforge.diffusion.samplers.common import DenoiserFn, StepCallback, denoise, noise_like, report
from difforge.posterior.operators.base import LinearOperator
from difforge.posterior.samplers.common import spectral
from difforge.posterior.samplers.smc import RESAMPLINGS, effective_sample_size, resample


def check_mcgdiff_options(
    num_particles: int = 64, resampling: str = "systematic", ess_threshold: float = 0.5
) -> None:
    """``num_particles >= 1``; ``resampling`` in ``smc.RESAMPLINGS``; ``0 <= ess_threshold <= 1``
    (0: never resample but at the end, 1: at every step)."""
    check_int("posterior.num_particles", num_particles, 1)
    check_choice("posterior.resampling", resampling, RESAMPLINGS)
    check_real("posterior.ess_threshold", ess_threshold, 0.0, 1.0)


def mcgdiff_nfe(steps: int, options: dict[str, int]) -> int:
    """Every particle is denoised at every step."""
    return steps * options["num_particles"]


def _log_normal(value: Tensor, mean: Tensor, var: Tensor, mask: Tensor) -> Tensor:
    """``sum_{i in mask} log N(value_i; mean_i, var_i)`` over the last axis; ``var > 0`` on mask."""
    var = torch.where(mask, var, torch.ones_like(var))
    terms = -0.5 * ((value - mean) ** 2 / var + torch.log(2 * math.pi * var))
    return torch.where(mask, terms, torch.zeros_like(terms)).sum(-1)


def mcgdiff_particles(
    denoiser: DenoiserFn,
    y: Tensor,
    operator: LinearOperator,
    sigma_y: float,
    sigmas: Tensor,
    *,
    num_particles: int,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    class_labels: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The final weighted clouds: ``(particles: (N, K, *x_shape), log_weights: (N, K))`` for
    ``y: (N, d_y)``, K = ``num_particles`` started at ``sigmas[0] * N(0, I)``. Weighted averages
    over a cloud estimate posterior expectations (consistently as K grows). The callback sees
    all ``N * K`` particles."""
    svd = operator.svd()
    n, k = y.shape[0], num_particles
    view = spectral(operator, y, sigma_y)
    seen = view.seen
    c2 = torch.where(seen, view.c, torch.zeros_like(view.c)) ** 2
    y_bar = view.y_bar.repeat_interleave(k, 0)  # (N K, d_x), the clouds one after the other
    labels = None if class_labels is None else class_labels.repeat_interleave(k, 0)
    sigma = float(sigmas[0])
    shape = (n * k, *operator.x_shape)
    particles = sigma * noise_like(y.new_empty(shape), generator)
    x_bar = svd.Vt(particles)
    # The start: the model's N(0, sigma_0^2 I) weighted by g_0.
    log_w = _log_normal(y_bar, x_bar, sigma**2 + c2, seen).reshape(n, k)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(denoiser, particles, sigma, labels)
        report(callback, i, particles, sigma, x0)
        x0_bar = svd.Vt(x0)
        mu = x0_bar + (sigma_next / sigma) ** 2 * (x_bar - x0_bar)
        v = sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2
        w_next = sigma_next**2 + c2  # the next potential's variance per coordinate
        twisted = seen & (v + w_next > 0)  # elsewhere the step is deterministic onto y_bar
        # Coordinates pinned to y_bar at the last step (sigma_y = 0) keep their weight from
        # g_k: the target there is p_model(x_k) g_k(x_k) projected onto the constraint.
        increment = _log_normal(y_bar, mu, v + w_next, twisted) - _log_normal(
            y_bar, x_bar, sigma**2 + c2, twisted
        )
        log_w = log_w + increment.reshape(n, k)
        low = effective_sample_size(log_w) < ess_threshold * k
        if bool(low.any()):
            ancestors = torch.arange(k, device=y.device).expand(n, k).clone()
            ancestors[low] = resample(log_w[low], resampling, generator)
            flat = (ancestors + k * torch.arange(n, device=y.device)[:, None]).flatten()
            mu = mu[flat]
            log_w = torch.where(low[:, None], torch.zeros_like(log_w), log_w)
        gain = torch.where(twisted, v / (v + w_next).clamp_min(1e-300), torch.ones_like(c2))
        gain = torch.where(seen, gain, torch.zeros_like(gain))
        mean = mu + gain * (y_bar - mu)
        spread = ((1 - gain) * v).clamp_min(0).sqrt()
        x_bar = mean + spread * noise_like(mean, generator)
        particles = svd.V(x_bar)
    return particles.reshape(n, k, *operator.x_shape), log_w


def sample_mcgdiff(
    denoiser: DenoiserFn,
    y: Tensor,
    operator: LinearOperator,
    sigma_y: float,
    x: Tensor,
    sigmas: Tensor,
    *,
    num_particles: int = 64,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    class_labels: Tensor | None = None,
) -> Tensor:
    """y: ``(N, d_y)``; returns ``(N, *x_shape)``, one draw per row from the final weights of its
    own cloud (``mcgdiff_particles``); ``x`` gives only the shape."""
    check_mcgdiff_options(num_particles, resampling, ess_threshold)
    particles, log_w = mcgdiff_particles(
        denoiser,
        y,
        operator,
        sigma_y,
        sigmas,
        num_particles=num_particles,
        resampling=resampling,
        ess_threshold=ess_threshold,
        generator=generator,
        callback=callback,
        class_labels=class_labels,
    )
    pick = resample(log_w, "multinomial", generator)[:, 0]
    return particles[torch.arange(y.shape[0], device=y.device), pick]
