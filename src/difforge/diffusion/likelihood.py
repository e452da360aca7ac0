"""Likelihoods: the variational bound of discrete-time models and the exact likelihood of the
probability-flow ODE.

**Variational bound** (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, eqs. 4-7), per data point:

    L_vlb = L_0 + L_1 + ... + L_{T-1} + L_T,
    L_T = KL(q(x_T | x_0) || N(0, I)),
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))   for t = 2..T,
    L_0 = -log p(x_0 | x_1),

with p(x_{t-1} | x_t) = N(mu~_t(x_t, D(x_t)), Sigma_t) and the decoder L_0 either the discretized
Gaussian of 8-bit data (Ho et al. eq. 13) or, for continuous data, the Gaussian density. Reported
in bits per dimension as improved-diffusion does.

**Probability-flow ODE** (Song et al. 2021, "Score-based generative modeling through SDEs",
appendix D.2): in the VE frame with u = ln sigma, dx/du = g(x, u) = x - D(x, e^u), and by the
instantaneous change of variables (Chen et al. 2018, theorem 1)

    log p_{sigma_min}(x(u_min)) = log p_{sigma_max}(x(u_max)) + int_{u_min}^{u_max} div g(x(u), u) du.

The divergence is exact (one backward pass per dimension) or Hutchinson's estimate
E[eps^T (dg/dx) eps] with Rademacher probes (Hutchinson 1989; Grathwohl et al. 2019). The ODE is
integrated with fixed-step RK4 in u. The prior at sigma_max is N(0, (1 + sigma_max^2) I), the VE
image of DDPM's N(0, I).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from difforge.diffusion.broadcast import per_sample
from difforge.diffusion.forward import posterior_coefficients, previous_alphas_cumprod
from difforge.diffusion.parameterization import Denoiser
from difforge.diffusion.samplers.common import DenoiserFn
from difforge.diffusion.schedules import DiscreteSchedule

VARIANCES = ("small", "large", "learned")
LN2 = math.log(2.0)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (
        logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
        - 1
    )


def gaussian_log_likelihood(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log N(x; mean, e^logvar) elementwise, in nats."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def _standard_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def discretized_gaussian_log_likelihood(
    x: Tensor, mean: Tensor, logvar: Tensor, bins: int = 256
) -> Tensor:
    """log P(x) of data quantised to ``bins`` levels in [-1, 1] under N(mean, e^logvar): the mass of
    the bin around x, with the edge bins extended to +-inf (Ho et al. 2020, eq. 13). Elementwise."""
    half_bin = 1.0 / (bins - 1)
    inv_std = torch.exp(-0.5 * logvar)
    cdf_plus = _standard_normal_cdf(inv_std * (x - mean + half_bin))
    cdf_minus = _standard_normal_cdf(inv_std * (x - mean - half_bin))
    tiny = 1e-12
    log_cdf_plus = cdf_plus.clamp(min=tiny).log()
    log_one_minus_cdf_minus = (1 - cdf_minus).clamp(min=tiny).log()
    log_mass = (cdf_plus - cdf_minus).clamp(min=tiny).log()
    return torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_mass)
    )


def _at(values: Tensor, index: Tensor, like: Tensor) -> Tensor:
    return per_sample(values.to(like.device)[index], like)


def reverse_step_log_variance(
    schedule: DiscreteSchedule,
    index: Tensor,
    like: Tensor,
    variance: str,
    variance_value: Tensor | None,
) -> Tensor:
    """log Sigma_t of p(x_{t-1} | x_t): ``small`` (posterior beta~_t, with beta~_1 replaced by beta~_2
    as improved-diffusion does, since beta~_1 = 0), ``large`` (beta_t, and beta~_2 at t = 1 as in
    Ho et al.'s code and improved-diffusion) or ``learned`` (eq. 15)."""
    abar_prev = previous_alphas_cumprod(schedule)
    posterior_var = posterior_coefficients(schedule.alphas_cumprod, abar_prev)[2]
    log_small = torch.cat([posterior_var[1:2], posterior_var[1:]]).log()
    log_large = schedule.betas.log()
    if variance == "small":
        return _at(log_small, index, like).expand_as(like)
    if variance == "large":
        # Ho et al.'s code and improved-diffusion ("fixedlarge"): beta~_2 in place of beta_1 at
        # t = 1, where the decoder L_0 uses it; the learned range below keeps log beta_t.
        log_fixed_large = torch.cat([posterior_var[1:2], schedule.betas[1:]]).log()
        return _at(log_fixed_large, index, like).expand_as(like)
    if variance == "learned":
        if variance_value is None:
            raise ValueError(
                "variance='learned' needs a network with a learned variance (loss=hybrid)"
            )
        frac = (variance_value + 1) / 2
        return frac * _at(log_large, index, like) + (1 - frac) * _at(log_small, index, like)
    raise ValueError(f"unknown variance {variance!r}; allowed: {', '.join(VARIANCES)}")


def vlb_term(
    schedule: DiscreteSchedule,
    x0: Tensor,
    z_t: Tensor,
    index: Tensor,
    predicted_x0: Tensor,
    model_log_variance: Tensor,
    discretized: bool,
) -> Tensor:
    """L_{t-1} in bits per dimension ``(B,)`` for VP latents ``z_t`` at ``index = t - 1``: the KL for
    t > 1, the decoder NLL for t = 1."""
    abar = schedule.alphas_cumprod
    coef_x0, coef_xt, posterior_var = posterior_coefficients(
        abar, previous_alphas_cumprod(schedule)
    )
    true_mean = _at(coef_x0, index, x0) * x0 + _at(coef_xt, index, x0) * z_t
    model_mean = _at(coef_x0, index, x0) * predicted_x0 + _at(coef_xt, index, x0) * z_t
    true_log_var = _at(posterior_var.clamp(min=1e-20).log(), index, x0)
    kl = normal_kl(true_mean, true_log_var, model_mean, model_log_variance)
    if discretized:
        decoder_nll = -discretized_gaussian_log_likelihood(x0, model_mean, model_log_variance)
    else:
        decoder_nll = -gaussian_log_likelihood(x0, model_mean, model_log_variance)
    is_decoder_step = per_sample(index == 0, x0)
    per_element = torch.where(is_decoder_step, decoder_nll, kl)
    return per_element.reshape(x0.shape[0], -1).mean(1) / LN2


def prior_bits_per_dim(schedule: DiscreteSchedule, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) in bits per dimension: ``(B,)``."""
    abar_T = float(schedule.alphas_cumprod[-1])
    mean = math.sqrt(abar_T) * x0
    log_var = torch.full_like(x0, math.log(1 - abar_T))
    kl = normal_kl(mean, log_var, torch.zeros_like(x0), torch.zeros_like(x0))
    return kl.reshape(x0.shape[0], -1).mean(1) / LN2


@torch.no_grad()
def vlb_bits_per_dim(
    denoiser: Denoiser | DenoiserFn,
    schedule: DiscreteSchedule,
    x0: Tensor,
    *,
    variance: str = "small",
    discretized: bool = True,
    class_labels: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The full bound, one term per timestep (T network evaluations), each with fresh noise.

    Returns ``total``, ``prior``, ``decoder`` ``(B,)`` and ``terms`` ``(B, T)``, in bits/dim.
    """
    terms = []
    abar = schedule.alphas_cumprod
    for t_index in range(schedule.num_timesteps):
        index = torch.full((x0.shape[0],), t_index, dtype=torch.long, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        sqrt_abar = math.sqrt(float(abar[t_index]))
        z_t = sqrt_abar * x0 + math.sqrt(1 - float(abar[t_index])) * noise
        sigma = schedule.sigmas[index.cpu()].to(device=x0.device, dtype=x0.dtype)
        if variance == "learned":
            prediction = denoiser.predict(z_t / sqrt_abar, sigma, class_labels)  # type: ignore[union-attr]
            predicted_x0, variance_value = prediction.x0, prediction.variance_value
        else:
            predicted_x0, variance_value = denoiser(z_t / sqrt_abar, sigma, class_labels), None
        log_var = reverse_step_log_variance(schedule, index, x0, variance, variance_value)
        terms.append(vlb_term(schedule, x0, z_t, index, predicted_x0, log_var, discretized))
    stacked = torch.stack(terms, dim=1)
    prior = prior_bits_per_dim(schedule, x0)
    return {
        "total": stacked.sum(1) + prior,
        "prior": prior,
        "decoder": stacked[:, 0],
        "terms": stacked,
    }


def _divergence(g: Tensor, x: Tensor, probes: Tensor | None) -> Tensor:
    """div_x g: exact (``probes=None``) or Hutchinson with ``probes: (P, B, ...)``."""
    if probes is None:
        flat_g = g.reshape(g.shape[0], -1)
        total = torch.zeros(g.shape[0], dtype=g.dtype, device=g.device)
        for d in range(flat_g.shape[1]):
            (grad,) = torch.autograd.grad(flat_g[:, d].sum(), x, retain_graph=True)
            total = total + grad.reshape(g.shape[0], -1)[:, d]
        return total
    estimates = []
    for probe in probes:
        (vjp,) = torch.autograd.grad(g, x, probe, retain_graph=True)
        estimates.append((vjp * probe).reshape(g.shape[0], -1).sum(1))
    return torch.stack(estimates).mean(0)


def ode_log_likelihood(
    denoiser: DenoiserFn,
    x0: Tensor,
    sigma_min: float,
    sigma_max: float,
    *,
    steps: int = 100,
    num_probes: int | None = 1,
    class_labels: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """log p(x0) in nats ``(B,)`` from the probability-flow ODE, RK4 with ``steps`` steps in ln sigma.

    ``num_probes=None`` computes the divergence exactly (for low-dimensional data); otherwise
    Hutchinson's estimator with that many Rademacher probes, fixed along the trajectory.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    probes = None
    if num_probes is not None:
        signs = torch.randint(0, 2, (num_probes, *x0.shape), generator=generator).to(
            x0.device, x0.dtype
        )
        probes = 2 * signs - 1

    def drift(x: Tensor, u: float) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            sigma = torch.full((x.shape[0],), math.exp(u), dtype=x.dtype, device=x.device)
            g = x - denoiser(x, sigma, class_labels)
            div = _divergence(g, x, probes)
        return g.detach(), div.detach()

    u_grid = torch.linspace(
        math.log(sigma_min), math.log(sigma_max), steps + 1, dtype=torch.float64
    ).tolist()
    x = x0
    delta = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
    for u, u_next in itertools.pairwise(u_grid):
        h = u_next - u
        k1, d1 = drift(x, u)
        k2, d2 = drift(x + h / 2 * k1, u + h / 2)
        k3, d3 = drift(x + h / 2 * k2, u + h / 2)
        k4, d4 = drift(x + h * k3, u_next)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        delta = delta + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    prior_var = 1 + sigma_max**2
    num_dims = x[0].numel()
    prior_log_prob = -0.5 * (x.reshape(x.shape[0], -1) ** 2).sum(
        1
    ) / prior_var - 0.5 * num_dims * math.log(2 * math.pi * prior_var)
    return prior_log_prob + delta


def dequantize(x: Tensor, bits: int = 8, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantisation of images in [-1, 1] stored with ``bits`` bits (score_sde; Theis et
    al. 2016, sec. 3.1): pixel ``k = round((x + 1) / 2 (2^bits - 1))`` becomes
    ``y = 2 (k + u) / 2^bits - 1`` with ``u ~ U[0, 1)``, so that ``-E_u log p(y)`` in
    ``bits_per_dim(..., data_bits=bits)`` bounds the discrete NLL from above: a continuous
    density evaluated at the bin centres alone can fall below the data's entropy.
    ``x: (B, ...)`` -> ``y`` of the same shape.
    """
    levels = 2**bits
    k = ((x + 1) / 2 * (levels - 1)).round()
    u = torch.rand(x.shape, generator=generator).to(x)
    return 2 * (k + u) / levels - 1


def bits_per_dim(log_prob: Tensor, num_dims: int, data_bits: int | None = None) -> Tensor:
    """-log p / (D ln 2); with ``data_bits`` (8 for images in [-1, 1]) add ``data_bits - 1``: the
    change of variables from [-1, 1] to [0, 2^bits) with uniform dequantisation (score_sde's
    convention)."""
    bpd = -log_prob / (num_dims * LN2)
    return bpd + (data_bits - 1) if data_bits is not None else bpd
