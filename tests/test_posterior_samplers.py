"""Posterior samplers on a one-component (Gaussian) prior, where the posterior is Kalman's.

Which methods are exact there, and the tests that check it:
- PiGDM with ``sigma_data`` = the prior's (isotropic) standard deviation: its guidance is then the
  exact score of ``p(y | x_t)``, so it runs DDIM on the exact posterior score. The law its
  steps produce is linear-Gaussian and computed here in closed form: it converges to the
  Kalman posterior as the steps grow, and the sampler's moments match it.
- MCGdiff: its target is the exact posterior of the model's own prior (the DDPM chain's final
  law, Gaussian and computed here), for every ``sigma_y >= 0`` as the particles grow; that prior
  converges to the true one as the steps grow.
- SDEdit samples ``x0 | x(t0)`` around the guide: with the ``denoise`` operator its law is
  closed-form (the posterior itself when ``sigma(t0) = sigma_y``).
- DDNM, and DDRM at ``eta = 0``, where the posterior factorises in the SVD's coordinates: an
  isotropic prior with ``sigma_y = 0`` (the seen part is ``y``'s, the unseen part the prior's).
Not exact, and why (their errors are measured, not asserted; properties are tested instead):
- DPS: ``p(y | x_t)`` is replaced by ``p(y | D(x_t))`` and the step size is a heuristic (biased).
- DDRM: the seen coordinates ignore the prior while ``sigma >= c_i``, and its noise
  ``eta sigma_{t-1}`` does not shrink with the step (biased for ``eta > 0`` at any step count);
  DDNM(+): the range space is replaced, not conditioned on the prior's correlations or on
  ``sigma_y``; RePaint: the known pixels are noised independently of the unknown ones.
"""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from difforge.diffusion.gaussian_mixture import GaussianMixture, GaussianMixtureOracle
from difforge.diffusion.samplers import CountingDenoiser
from difforge.diffusion.samplers.euler_ancestral import ancestral_step
from difforge.diffusion.schedules import EDMSchedule
from difforge.diffusion.sigma_grids import karras_sigmas
from difforge.posterior.operators.base import DenseOperator, LinearOperator
from difforge.posterior.operators.mask import MaskOperator
from difforge.posterior.samplers import POSTERIORS, PosteriorSampler, posterior_sample
from difforge.posterior.samplers.mcgdiff import mcgdiff_particles
from difforge.posterior.samplers.repaint import repaint_schedule
from difforge.posterior.samplers.smc import effective_sample_size, normalized_weights, resample

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "posterior"
F64 = torch.float64
Tensor = torch.Tensor
SIGMA_Y = 0.3


def gaussian(mean: list[float], std: list[float] | float) -> tuple[GaussianMixture, Tensor, Tensor]:
    """A one-component mixture and its mean and (diagonal) covariance."""
    mixture = GaussianMixture([1.0], [mean], torch.tensor([std], dtype=F64))
    return mixture, mixture.means[0], torch.diag(mixture.stds[0] ** 2)


def kalman(m: Tensor, S: Tensor, A: Tensor, y: Tensor, sigma_y: float) -> tuple[Tensor, Tensor]:
    """The posterior of ``x ~ N(m, S)`` given ``y = A x + sigma_y n``: ``(mean, cov)``."""
    gain = S @ A.T @ torch.linalg.inv(A @ S @ A.T + sigma_y**2 * torch.eye(len(y), dtype=F64))
    return m + gain @ (y - A @ m), S - gain @ A @ S


def ddim_law(
    affine_x0, sigmas: Tensor, eta: float, mean: Tensor, cov: Tensor
) -> tuple[Tensor, Tensor]:
    """The exact law after DDIM(eta) steps whose estimate is affine, ``x0 = F x + f``
    (``affine_x0(sigma) -> (F, f)``), from ``N(mean, cov)``: a linear-Gaussian recursion."""
    eye = torch.eye(len(mean), dtype=F64)
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        F, f = affine_x0(sigma)
        if sigma_next == 0:
            G, h, noise = F, f, 0.0
        else:
            down, up = ancestral_step(sigma, sigma_next, eta)
            alpha = down / sigma
            G, h, noise = (1 - alpha) * F + alpha * eye, (1 - alpha) * f, up**2
        mean, cov = G @ mean + h, G @ cov @ G.T + noise * eye
    return mean, cov


def assert_moments(samples: Tensor, mean: Tensor, cov: Tensor, n_eff: float, z: float = 5.0):
    """Sample mean and covariance within ``z`` standard errors of ``(mean, cov)`` (Gaussian
    standard errors: ``sqrt(C_ii / n)`` and ``sqrt((C_ii C_jj + C_ij^2) / n)``)."""
    d = torch.diag(cov)
    assert ((samples.mean(0) - mean).abs() <= z * (d / n_eff).sqrt()).all(), (samples.mean(0), mean)
    se = ((d[:, None] * d[None, :] + cov**2) / n_eff).sqrt()
    assert ((torch.cov(samples.T) - cov).abs() <= z * se).all(), (torch.cov(samples.T), cov)


@pytest.fixture(scope="module")
def problem():
    """A random 2 x 3 operator and a measurement."""
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(2, 3, generator=generator, dtype=F64)
    return DenseOperator(A), A, torch.tensor([0.7, -0.4], dtype=F64)


def test_pigdm_is_exact_on_an_isotropic_gaussian_prior(problem):
    operator, A, y = problem
    s = 0.8
    mixture, m, S = gaussian([0.5, -1.0, 0.3], s)
    post_mean, post_cov = kalman(m, S, A, y, SIGMA_Y)

    def posterior_x0(sigma: float) -> tuple[Tensor, Tensor]:
        """E[x0 | x_sigma, y] = Lambda^-1 (S^-1 m + x / sigma^2 + A^T y / sigma_y^2)."""
        precision = torch.linalg.inv(S) + torch.eye(3, dtype=F64) / sigma**2 + A.T @ A / SIGMA_Y**2
        cov = torch.linalg.inv(precision)
        return cov / sigma**2, cov @ (torch.linalg.solve(S, m) + A.T @ y / SIGMA_Y**2)

    start = (torch.zeros(3, dtype=F64), 80.0**2 * torch.eye(3, dtype=F64))
    # The law of the steps converges to the posterior (discretisation only).
    errors = []
    for steps in (100, 2000):
        mean, cov = ddim_law(posterior_x0, karras_sigmas(steps, 0.002, 80.0), 1.0, *start)
        errors.append(max((mean - post_mean).abs().max(), (cov - post_cov).abs().max()))
    # First order: 20 times the steps divide the error by about 20 (0.040 -> 0.0022).
    assert errors[1] < 3e-3 and errors[1] < errors[0] / 15, errors
    # The sampler draws that law: its guidance is the exact score of p(y | x_t).
    steps, n = 40, 20_000
    sigmas = karras_sigmas(steps, 0.002, 80.0)
    mean, cov = ddim_law(posterior_x0, sigmas, 1.0, *start)
    samples = posterior_sample(
        "pigdm",
        GaussianMixtureOracle(mixture),
        y.expand(n, 2),
        operator,
        SIGMA_Y,
        sigmas,
        generator=torch.Generator().manual_seed(1),
        sigma_data=s,
    )
    assert_moments(samples, mean, cov, n)


def model_prior(mixture: GaussianMixture, sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """The final law of DDPM's chain (eta = 1) from N(0, sigma_0^2 I) with the exact denoiser of
    a diagonal Gaussian: MCGdiff's prior."""
    m, var = mixture.means[0], mixture.stds[0] ** 2

    def prior_x0(sigma: float) -> tuple[Tensor, Tensor]:
        shrink = var / (var + sigma**2)
        return torch.diag(shrink), (1 - shrink) * m

    start = (torch.zeros(len(m), dtype=F64), float(sigmas[0]) ** 2 * torch.eye(len(m), dtype=F64))
    return ddim_law(prior_x0, sigmas, 1.0, *start)


@pytest.mark.parametrize("sigma_y", [SIGMA_Y, 0.05])
def test_mcgdiff_targets_the_exact_posterior_of_its_prior(problem, sigma_y):
    """16 independent clouds of 2000 particles: the average of their weighted moments against
    Kalman's posterior of the model's prior, within 5 standard errors of that average (measured
    by the clouds' spread: the final ESS ignores the genealogy's correlations)."""
    operator, A, y = problem
    mixture, m, S = gaussian([0.5, -1.0, 0.3], [0.8, 0.5, 1.2])
    # The model's prior converges to the true one, at first order, as the steps grow.
    errors = []
    for steps in (200, 4000):
        prior_mean, prior_cov = model_prior(mixture, karras_sigmas(steps, 0.002, 80.0))
        errors.append(max((prior_mean - m).abs().max(), (prior_cov - S).abs().max()))
    assert errors[1] < 5e-3 and errors[1] < errors[0] / 15, errors
    sigmas = karras_sigmas(25, 0.002, 80.0)
    prior_mean, prior_cov = model_prior(mixture, sigmas)
    mean, cov = kalman(prior_mean, prior_cov, A, y, sigma_y)
    clouds = 16
    particles, log_w = mcgdiff_particles(
        GaussianMixtureOracle(mixture),
        y.expand(clouds, 2),
        operator,
        sigma_y,
        sigmas,
        num_particles=2000,
        generator=torch.Generator().manual_seed(2),
    )
    w = normalized_weights(log_w)[..., None]
    means = (w * particles).sum(1)
    centred = particles - means[:, None]
    covs = torch.einsum("nki,nkj->nij", w * centred, centred)
    for estimates, target in ((means, mean), (covs, cov)):
        se = estimates.std(0) / math.sqrt(clouds)
        assert ((estimates.mean(0) - target).abs() <= 5 * se).all(), (estimates.mean(0), target)


def test_mcgdiff_with_exact_measurements_meets_them(problem):
    operator, A, y = problem
    mixture, _, _ = gaussian([0.5, -1.0, 0.3], [0.8, 0.5, 1.2])
    samples = posterior_sample(
        "mcgdiff",
        GaussianMixtureOracle(mixture),
        y.expand(200, 2),
        operator,
        0.0,
        karras_sigmas(25, 0.002, 80.0),
        generator=torch.Generator().manual_seed(4),
        num_particles=32,
    )
    assert torch.allclose(samples @ A.T, y.expand(200, 2), atol=1e-10)


def test_sdedit_draws_x0_given_the_noised_guide(problem):
    """Identity operator, sigma_y = 0.2: ``x(t0) ~ N(y, sigma(t0)^2 - sigma_y^2)``, then the
    steps; in the continuous limit ``x0 ~ N(m + r (y - m), S sigma^2 / (S + sigma^2) + r^2
    (sigma(t0)^2 - sigma_y^2))``, ``r = S / (S + sigma(t0)^2)``."""
    sigma_y, steps, strength = 0.2, 40, 0.5
    mixture, m, S = gaussian([0.5, -1.0, 0.3], [0.8, 0.5, 1.2])
    y = torch.tensor([1.0, 0.0, -0.5], dtype=F64)
    var = torch.diag(S)

    def prior_x0(sigma: float) -> tuple[Tensor, Tensor]:
        shrink = var / (var + sigma**2)
        return torch.diag(shrink), (1 - shrink) * m

    def law(sigmas: Tensor) -> tuple[tuple[Tensor, Tensor], float]:
        """The steps' law and sigma(t0)."""
        tail = sigmas[len(sigmas) - 1 - round(strength * (len(sigmas) - 1)) :]
        start = float(tail[0]) ** 2 - sigma_y**2
        return ddim_law(prior_x0, tail, 1.0, y, start * torch.eye(3, dtype=F64)), float(tail[0])

    errors = []
    for fine in (200, 4000):  # the same sigma(t0): the middle of a karras grid
        (fine_mean, fine_cov), t0 = law(karras_sigmas(fine, 0.002, 80.0))
        r = var / (var + t0**2)
        limit_var = var * t0**2 / (var + t0**2) + r**2 * (t0**2 - sigma_y**2)
        errors.append(
            max(
                (fine_mean - m - r * (y - m)).abs().max(),
                (fine_cov - torch.diag(limit_var)).abs().max(),
            )
        )
    assert errors[1] < 5e-3 and errors[1] < errors[0] / 15, errors  # first order in the steps
    sigmas = karras_sigmas(steps, 0.002, 80.0)
    (mean, cov), _ = law(sigmas)
    n = 20_000
    samples = posterior_sample(
        "sdedit",
        GaussianMixtureOracle(mixture),
        y.expand(n, 3),
        DenseOperator(torch.eye(3, dtype=F64)),
        sigma_y,
        sigmas,
        generator=torch.Generator().manual_seed(5),
        strength=strength,
    )
    assert_moments(samples, mean, cov, n)


@pytest.mark.parametrize("method,eta", [("ddrm", 0.0), ("ddnm", 0.85)])
def test_spectral_methods_are_exact_on_an_isotropic_prior_with_exact_measurements(
    problem, method, eta
):
    """With ``sigma_y = 0`` and ``x0 ~ N(m, s^2 I)`` the posterior is ``y_bar`` on the seen
    coordinates and the prior ``N(m_bar, s^2)`` on the unseen ones, independent of them (an
    isotropic prior is isotropic in any orthonormal basis). DDRM and DDNM set the seen ones to
    ``y_bar`` and walk the unseen ones by their own chain (DDRM's eq. 8, DDIM's step), whose law
    is computed here: it converges to the prior's, and the samplers draw it. DDRM only at
    ``eta = 0``: its noise ``eta sigma_{t-1}`` does not shrink with the step, and at the paper's
    0.85 the unseen variance stays 0.18 / 0.15 below s^2 = 0.64 with 100 / 2000 steps (measured)."""
    operator, A, y = problem
    s = 0.8
    _, _, Vh = torch.linalg.svd(A)
    v = Vh[2]  # the unseen direction of the 2 x 3 operator
    # A prior mean with no unseen part: the ODE (eta = 0) keeps the start's mean 0 instead of
    # m_bar's, a bias of m_bar s / sigma_0 that no step count removes.
    m = torch.tensor([0.5, -1.0, 0.3], dtype=F64)
    m = m - (v @ m) * v
    mixture, m_bar = gaussian(m.tolist(), s)[0], 0.0

    def unseen_law(sigmas: Tensor) -> tuple[float, float]:
        mean, var = 0.0, float(sigmas[0]) ** 2
        for sigma, sigma_next in pairwise(sigmas.tolist()):
            r = s**2 / (s**2 + sigma**2)  # D's unseen coordinate: m_bar + r (x - m_bar)
            if method == "ddrm":
                keep, noise = (1 - eta**2) ** 0.5 * sigma_next / sigma, (eta * sigma_next) ** 2
            else:
                down, up = ancestral_step(sigma, sigma_next, eta)
                keep, noise = down / sigma, up**2
            mean = (1 - keep) * (m_bar + r * (mean - m_bar)) + keep * mean
            var = ((1 - keep) * r + keep) ** 2 * var + noise
        return mean, var

    errors = []
    for steps in (100, 2000):
        mean, var = unseen_law(karras_sigmas(steps, 0.002, 80.0))
        errors.append(max(abs(mean - m_bar), abs(var - s**2)))
    assert errors[1] < 5e-3 and errors[1] < errors[0] / 15, errors  # first order in the steps
    sigmas = karras_sigmas(20, 0.002, 80.0)
    mean, var = unseen_law(sigmas)
    n = 20_000
    samples = posterior_sample(
        method,
        GaussianMixtureOracle(mixture),
        y.expand(n, 2),
        operator,
        0.0,
        sigmas,
        generator=torch.Generator().manual_seed(11),
        eta=eta,
    )
    pinv = torch.linalg.pinv(A) @ y  # the seen part, exactly
    law_mean = pinv + mean * v
    assert_moments(samples, law_mean, var * torch.outer(v, v), n)


def test_ddrm_draws_the_law_of_its_steps_with_noisy_measurements(problem):
    """DDRM's eqs. 7-8 with ``sigma_y > 0`` as the authors' code runs them (bahjat-kawar/ddrm,
    ``functions/denoising.py``: the start ``y_bar + sqrt(sigma_T^2 - c^2) z`` on the seen
    coordinates; each step ``(1 - eta_b) x0 + eta_b y_bar + sqrt(sigma'^2 - c^2 eta_b^2) z`` while
    ``sigma' >= c``, ``x0 + sqrt(1 - eta^2) sigma' (y_bar - x0) / c + eta sigma' z`` below, DDIM's
    step with noise ``eta sigma'`` on the unseen one). On an isotropic Gaussian prior every
    spectral coordinate is an independent Gaussian chain whose law is computed here. ``eta_b``
    away from 0 and 1, ``c_i`` inside the grid so that both seen cases run, and ``eta`` near 1 so
    that the steps below ``c_i``, which pull to ``y_bar``, keep enough of what the steps above
    leave: each term of the three cases then changes the law beyond 5 standard errors (checked by
    altering them one at a time)."""
    operator, A, y = problem
    s0, sigma_y, eta, eta_b = 0.8, 0.2, 0.95, 0.5
    m = torch.tensor([0.5, -1.0, 0.3], dtype=F64)
    mixture = gaussian(m.tolist(), s0)[0]
    U, sv, Vh = torch.linalg.svd(A)
    m_bar, y_bar = Vh @ m, torch.zeros(3, dtype=F64)
    y_bar[:2] = (U.T @ y) / sv
    c = torch.tensor([*(sigma_y / sv).tolist(), math.inf], dtype=F64)
    sigmas = karras_sigmas(30, 0.002, 80.0)
    assert ((c[:2] > 0.002) & (c[:2] < 80)).all()
    sigma_0 = float(sigmas[0])
    seen = torch.tensor([True, True, False])
    mean = torch.where(seen, y_bar, torch.zeros_like(y_bar))
    var = torch.where(seen, sigma_0**2 - c**2, torch.full_like(c, sigma_0**2))  # c < sigma_0
    for sigma, sigma_next in pairwise(sigmas.tolist()):
        r = s0**2 / (s0**2 + sigma**2)  # D's coordinate: m_bar + r (x - m_bar)
        x0_mean, x0_gain = m_bar + r * (mean - m_bar), r
        keep = (1 - eta**2) ** 0.5 * sigma_next
        # Each case: x' = (1 - k) x0 + k target + noise.
        k_unseen, k_below = keep / sigma, keep / torch.where(seen, c, torch.ones_like(c))
        above = sigma_next >= c
        k = torch.where(seen, torch.where(above, eta_b, k_below), torch.full_like(c, k_unseen))
        noise = torch.where(
            seen & above,
            sigma_next**2 - (c * eta_b) ** 2,
            torch.full_like(c, (eta * sigma_next) ** 2),
        )
        # The unseen target is x_t itself (DDIM's eps), the seen ones y_bar.
        mean = torch.where(seen, (1 - k) * x0_mean + k * y_bar, (1 - k) * x0_mean + k * mean)
        gain = torch.where(seen, (1 - k) * x0_gain, (1 - k) * x0_gain + k)
        var = gain**2 * var + noise
    n = 20_000
    samples = posterior_sample(
        "ddrm",
        GaussianMixtureOracle(mixture),
        y.expand(n, 2),
        operator,
        sigma_y,
        sigmas,
        generator=torch.Generator().manual_seed(12),
        eta=eta,
        eta_b=eta_b,
    )
    assert_moments(samples, Vh.T @ mean, Vh.T @ torch.diag(var) @ Vh, n)


@pytest.mark.parametrize("method", ["ddrm", "ddnm"])
def test_spectral_methods_meet_exact_measurements(problem, method):
    operator, A, y = problem
    mixture, _, _ = gaussian([0.5, -1.0, 0.3], [0.8, 0.5, 1.2])
    samples = posterior_sample(
        method,
        GaussianMixtureOracle(mixture),
        y.expand(100, 2),
        operator,
        0.0,
        karras_sigmas(20, 0.002, 80.0),
        generator=torch.Generator().manual_seed(6),
    )
    assert torch.allclose(samples @ A.T, y.expand(100, 2), atol=1e-10)
    assert samples.std(0).min() > 0.05  # the null space is sampled, not collapsed


def flat(mixture: GaussianMixture):
    """The exact denoiser on (N, *x_shape) signals."""
    oracle = GaussianMixtureOracle(mixture)
    return lambda x, sigma, labels=None: oracle(x.reshape(len(x), -1), sigma).reshape(x.shape)


def test_repaint_keeps_the_observed_pixels_and_fills_the_rest():
    generator = torch.Generator().manual_seed(7)
    mask = torch.rand(1, 4, 4, generator=generator) > 0.5
    operator = MaskOperator(mask)
    mixture = GaussianMixture([1.0], torch.zeros(1, 16), [1.0])
    x_true = torch.randn(1, 1, 4, 4, generator=generator, dtype=F64)
    y = operator.forward(x_true).expand(300, -1)
    samples = posterior_sample(
        "repaint",
        flat(mixture),
        y,
        operator,
        0.0,
        karras_sigmas(20, 0.002, 80.0),
        generator=generator,
        jump_length=5,
        resamplings=3,
    )
    assert torch.equal(operator.forward(samples), y)
    # Independent N(0, 1) pixels: the unobserved ones follow RePaint's walk alone, down by
    # DDPM steps (x' = a x + noise) and up by the forward process; its law is computed here.
    var = 80.0**2
    sigmas = karras_sigmas(20, 0.002, 80.0).tolist()
    for i, j in pairwise(repaint_schedule(20, 5, 3)):
        if j < i:
            var += sigmas[j] ** 2 - sigmas[i] ** 2
            continue
        shrink, ratio = 1 / (1 + sigmas[i] ** 2), (sigmas[j] / sigmas[i]) ** 2
        a = shrink + ratio * (1 - shrink)
        var = a**2 * var + sigmas[j] ** 2 * (1 - ratio)
    unobserved = samples.reshape(300, -1)[:, ~mask.flatten()].flatten()
    n = len(unobserved)  # independent pixels and samples
    assert unobserved.mean().abs() < 5 * math.sqrt(var / n)
    assert (unobserved.var() - var).abs() < 5 * var * math.sqrt(2 / n)


def test_dps_pulls_samples_towards_the_measurement(problem):
    """DPS is biased (not tested against Kalman); its gradient step must still reduce the
    residual ``||y - A x||`` far below the prior's."""
    operator, A, y = problem
    mixture, _, _ = gaussian([0.5, -1.0, 0.3], [0.8, 0.5, 1.2])
    sigmas = karras_sigmas(100, 0.002, 80.0)
    generator = torch.Generator().manual_seed(8)
    samples = posterior_sample(
        "dps",
        GaussianMixtureOracle(mixture),
        y.expand(500, 2),
        operator,
        SIGMA_Y,
        sigmas,
        generator=generator,
        zeta=0.05,
    )
    prior = mixture.sample(500, generator)[0]
    residual = (samples @ A.T - y).norm(dim=1).mean()
    assert residual < 0.5 * (prior @ A.T - y).norm(dim=1).mean()


# ----- sequential Monte Carlo: weights, ESS, resampling


def test_one_smc_step_to_zero_weighs_by_the_exact_likelihood(problem):
    """From sigma_0 straight to 0 the cloud is ``D(x_0)`` weighted by ``p(y | D(x_0))``: the
    incremental ratio's numerator is the likelihood and its denominator cancels the start."""
    operator, A, y = problem
    mixture, _, _ = gaussian([0.5, -1.0, 0.3], [0.8, 0.5, 1.2])
    oracle = GaussianMixtureOracle(mixture)
    seen = {}
    particles, log_w = mcgdiff_particles(
        oracle,
        y[None],
        operator,
        SIGMA_Y,
        torch.tensor([2.0, 0.0], dtype=F64),
        num_particles=256,
        ess_threshold=0.0,
        generator=torch.Generator().manual_seed(9),
        callback=lambda info: seen.update(info),
    )
    x0 = seen["denoised"]
    assert torch.allclose(particles[0], x0)
    likelihood = -0.5 * ((y - x0 @ A.T) ** 2).sum(1) / SIGMA_Y**2
    gap = log_w[0] - likelihood
    assert gap.std() < 1e-10  # equal up to the constant of the change to spectral coordinates


def test_effective_sample_size():
    log_w = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -math.inf, -math.inf, -math.inf]])
    assert torch.allclose(effective_sample_size(log_w), torch.tensor([4.0, 1.0]))
    w = torch.tensor([0.5, 0.25, 0.25])
    assert torch.isclose(effective_sample_size(w.log()[None])[0], 1 / (w**2).sum())


@pytest.mark.parametrize("method", ["systematic", "multinomial"])
def test_resampling_preserves_the_weighted_mean(method):
    generator = torch.Generator().manual_seed(10)
    k, repeats = 50, 4000
    values = torch.randn(k, generator=generator, dtype=F64)
    log_w = torch.randn(k, generator=generator, dtype=F64) * 1.5
    w = normalized_weights(log_w[None])[0]
    ancestors = resample(log_w.expand(repeats, k), method, generator)
    means = values[ancestors].mean(1)
    spread = means.std() / math.sqrt(repeats)
    assert (means.mean() - (w * values).sum()).abs() < 5 * spread
    if method == "systematic":  # each particle gets floor(K w) or ceil(K w) offspring
        counts = torch.stack([torch.bincount(a, minlength=k) for a in ancestors[:100]])
        assert ((counts >= (k * w).floor() - 1e-9) & (counts <= (k * w).ceil() + 1e-9)).all()


# ----- registry, configs, NFE and bad input


def test_repaint_schedule_goes_back_up_by_jumps():
    visits = repaint_schedule(12, 5, 3)
    assert visits[0] == 0 and visits[-1] == 12
    steps = [b - a for a, b in pairwise(visits)]
    assert set(steps) == {1, -5} and steps.count(-5) == 2 * 2  # levels 6 and 11, twice each


@pytest.mark.parametrize("name", sorted(POSTERIORS))
def test_every_method_has_a_config_and_counts_its_evaluations(name, problem):
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    assert cfg.method == name and set(POSTERIORS[name].options) <= set(cfg)
    sampler: PosteriorSampler = instantiate(cfg, steps=12)
    mask = MaskOperator(torch.tensor([[True, False, True]]))
    mixture, _, _ = gaussian([0.5, -1.0, 0.3], [0.8, 0.5, 1.2])
    counter = CountingDenoiser(flat(mixture))
    y = torch.tensor([[0.3, -0.2]], dtype=F64)
    sigma_y = 0.0 if name == "repaint" else 0.1  # RePaint resamples exact measurements only
    result = sampler(counter, EDMSchedule(), y, mask, sigma_y, n=3)
    assert result.samples.shape == (3, 1, 3) and torch.isfinite(result.samples).all()
    particles = sampler.options.get("num_particles", cfg.get("num_particles", 1))
    assert (
        result.nfe
        == sampler.nfe(EDMSchedule())
        == counter.nfe * (particles if name == "mcgdiff" else 1)
    )


class Unfactored(LinearOperator):
    """The sum of the pixels of a 65 x 65 image: too large for the dense SVD."""

    name = "pixel_sum"

    def __init__(self) -> None:
        super().__init__((1, 65, 65), 1)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(len(x), -1).sum(1, keepdim=True)

    def adjoint(self, y: Tensor) -> Tensor:
        return y[:, :, None, None].expand(len(y), 1, 65, 65)


@pytest.mark.parametrize(
    "name,operator,sigma_y,options,message",
    [
        ("repaint", DenseOperator(torch.eye(2, 3)), 0.1, {}, "needs an inpainting mask"),
        ("ddrm", Unfactored(), 0.1, {}, "needs the operator's SVD"),
        ("dps", DenseOperator(torch.eye(2, 3)), -0.1, {}, "sigma_y must be >= 0"),
        (
            "ddrm",
            DenseOperator(torch.eye(2, 3)),
            0.1,
            {"eta": 1.5},
            r"posterior.eta must be in \[0, 1\]",
        ),
        (
            "mcgdiff",
            DenseOperator(torch.eye(2, 3)),
            0.1,
            {"particles": 4},
            "did you mean 'num_particles'",
        ),
        ("sdedit", DenseOperator(torch.eye(2, 3)), 0.1, {"strength": 0.01}, "runs no step"),
        ("repaint", MaskOperator(torch.tensor([True, False, True])), 0.1, {}, "resamplings=1"),
    ],
)
def test_bad_input_is_refused_in_one_line(name, operator, sigma_y, options, message):
    y = torch.zeros(1, operator.d_y, dtype=F64)
    with pytest.raises(ValueError, match=message) as error:
        posterior_sample(
            name,
            lambda x, s, c=None: x,
            y,
            operator,
            sigma_y,
            karras_sigmas(10, 0.002, 80.0),
            **options,
        )
    assert "\n" not in str(error.value)


def test_methods_that_start_from_their_own_points_refuse_x_init(problem):
    operator, _, y = problem
    with pytest.raises(ValueError, match="x_init must be None"):
        posterior_sample(
            "mcgdiff",
            lambda x, s, c=None: x,
            y[None],
            operator,
            0.1,
            karras_sigmas(5, 0.002, 80.0),
            x_init=torch.zeros(1, 3, dtype=F64),
        )


@pytest.mark.parametrize("rescale", [False, True], ids=["vp", "zero_terminal_snr"])
def test_the_front_door_runs_on_a_vp_schedule(problem, rescale):
    """The trailing grid of a discrete VP schedule; under zero terminal SNR its level at
    infinity is dropped, and the start is drawn at the first finite level."""
    from difforge.diffusion.schedules import LinearSchedule

    operator, A, y = problem
    schedule = LinearSchedule(rescale_zero_terminal_snr=rescale)
    sampler = PosteriorSampler("ddrm", steps=10)
    sigmas = sampler.sigmas(schedule)
    assert len(sigmas) == (10 if rescale else 11) and torch.isfinite(sigmas).all()
    mixture, _, _ = gaussian([0.5, -1.0, 0.3], [0.8, 0.5, 1.2])
    result = sampler(GaussianMixtureOracle(mixture), schedule, y[None], operator, 0.0, n=50)
    assert result.samples.shape == (50, 3) and result.nfe == len(sigmas) - 1
    assert torch.allclose(result.samples @ A.T, y.expand(50, 2), atol=1e-10)
