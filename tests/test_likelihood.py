import math

import pytest
import torch

from difforge.diffusion.likelihood import (
    bits_per_dim,
    discretized_gaussian_log_likelihood,
    normal_kl,
    ode_log_likelihood,
    vlb_bits_per_dim,
)
from difforge.diffusion.schedules import CosineSchedule, LinearSchedule


def test_normal_kl_matches_closed_form():
    m1, v1, m2, v2 = 0.3, 0.5, -0.2, 2.0
    expected = 0.5 * (math.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)
    value = normal_kl(
        *(torch.tensor(v, dtype=torch.float64) for v in (m1, math.log(v1), m2, math.log(v2)))
    )
    assert abs(value.item() - expected) < 1e-12


def test_discretized_gaussian_is_a_distribution_over_the_256_levels():
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_var in [(0.0, -2.0), (0.9, -6.0), (-1.0, 0.0)]:
        log_p = discretized_gaussian_log_likelihood(
            levels, torch.full_like(levels, mean), torch.full_like(levels, log_var)
        )
        assert abs(log_p.exp().sum().item() - 1) < 1e-6


def test_vlb_of_the_exact_model_bounds_the_true_nll_tightly(gmm1d, oracle1d):
    """With E[x0 | x_t] exact and DDPM's 'large' variance, the bound sits just above the true NLL:
    0 <= E[VLB - NLL] < 0.05 nats (measured: 0.011), within 4 standard errors."""
    x, _ = gmm1d.sample(1000, torch.Generator().manual_seed(3))
    bound = vlb_bits_per_dim(
        oracle1d,
        LinearSchedule(),
        x,
        variance="large",
        discretized=False,
        generator=torch.Generator().manual_seed(0),
    )
    gap = bound["total"] * math.log(2) + gmm1d.log_prob(x)  # VLB - NLL, nats, per point
    standard_error = gap.std().item() / math.sqrt(len(gap))
    assert -4 * standard_error < gap.mean().item() < 0.05 + 4 * standard_error, (
        gap.mean(),
        standard_error,
    )
    assert bound["terms"].shape == (1000, 1000)


def test_ode_likelihood_matches_the_exact_density(gmm1d, oracle1d):
    x, _ = gmm1d.sample(200, torch.Generator().manual_seed(4))
    exact_trace = ode_log_likelihood(oracle1d, x, 0.002, 80.0, steps=50, num_probes=None)
    assert (exact_trace - gmm1d.log_prob(x)).abs().max().item() < 0.02
    # Hutchinson's estimator is unbiased; in one dimension a Rademacher probe is exact.
    hutchinson = ode_log_likelihood(
        oracle1d, x, 0.002, 80.0, steps=50, num_probes=2, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(hutchinson, exact_trace)


def test_hutchinson_estimate_is_unbiased_in_two_dimensions():
    from difforge.diffusion.gaussian_mixture import GaussianMixture, GaussianMixtureOracle

    mixture = GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 1.0]], [[0.5, 0.8], [0.7, 0.4]])
    oracle = GaussianMixtureOracle(mixture)
    x, _ = mixture.sample(300, torch.Generator().manual_seed(5))
    exact = ode_log_likelihood(oracle, x, 0.002, 80.0, steps=30, num_probes=None)
    estimate = ode_log_likelihood(
        oracle, x, 0.002, 80.0, steps=30, num_probes=1, generator=torch.Generator().manual_seed(1)
    )
    difference = estimate - exact
    assert (
        abs(difference.mean().item())
        < 4 * difference.std().item() / math.sqrt(len(difference)) + 1e-3
    )
    assert (exact - mixture.log_prob(x)).abs().max() < 0.05


def test_bits_per_dim_of_8bit_images_adds_seven():
    log_prob = torch.tensor([-1000.0], dtype=torch.float64)
    assert abs(bits_per_dim(log_prob, 100).item() - 1000 / (100 * math.log(2))) < 1e-12
    assert (
        abs(bits_per_dim(log_prob, 100, data_bits=8).item() - (1000 / (100 * math.log(2)) + 7))
        < 1e-12
    )


def test_large_variance_at_t1_is_beta_tilde_2():
    """Ho et al.'s code and improved-diffusion ("fixedlarge"): beta~_2 at t = 1, beta_t after."""
    from difforge.diffusion.forward import posterior_coefficients
    from difforge.diffusion.likelihood import previous_alphas_cumprod, reverse_step_log_variance

    schedule = LinearSchedule()
    like = torch.zeros(3, 1, dtype=torch.float64)
    log_var = reverse_step_log_variance(schedule, torch.tensor([0, 1, 999]), like, "large", None)
    beta_tilde = posterior_coefficients(schedule.alphas_cumprod, previous_alphas_cumprod(schedule))[
        2
    ]
    expected = torch.stack([beta_tilde[1], schedule.betas[1], schedule.betas[999]]).log()
    torch.testing.assert_close(log_var[:, 0], expected)


def test_dequantised_bits_per_dim_bound_the_entropy_of_8_bit_data():
    """Two equally likely 8-bit values: entropy 1 bit/dim. A density uniform over their two bins
    scores exactly 1 bit on dequantised points; a density peaked at the bin centres scores below
    the entropy at the centres (the fault) and above it once dequantised."""
    from difforge.diffusion.gaussian_mixture import GaussianMixture
    from difforge.diffusion.likelihood import bits_per_dim, dequantize

    centres = torch.tensor([100.0, 200.0]) * 2 / 255 - 1
    x = centres[torch.arange(4000) % 2][:, None]
    y = dequantize(x, generator=torch.Generator().manual_seed(0))
    k = ((x + 1) / 2 * 255).round()
    assert ((y - (2 * k / 256 - 1)) >= 0).all() and ((y - (2 * k / 256 - 1)) < 2 / 256).all()
    uniform_in_bins = torch.full((len(y),), math.log(0.5 / (2 / 256)))
    torch.testing.assert_close(bits_per_dim(uniform_in_bins, 1, 8).mean(), torch.tensor(1.0))
    peaked = GaussianMixture([0.5, 0.5], centres[:, None].tolist(), [[1e-3], [1e-3]])
    assert bits_per_dim(peaked.log_prob(x.double()), 1, 8).mean() < 1
    assert bits_per_dim(peaked.log_prob(y.double()), 1, 8).mean() > 1


def eps_zero_vlb_closed_form(
    schedule, x0: torch.Tensor, discretized: bool
) -> dict[str, torch.Tensor]:
    """E_noise[VLB] in bits/dim ``(B,)`` (``total``, ``decoder``, ``prior``) of the model that predicts eps = 0 (x0_hat = x_t /
    sqrt(abar_t)) with the 'large' variance, from the schedule's betas in float64: for t >= 2,
    mu_model - mu_true = c_t sqrt((1 - abar_t) / abar_t) eps with c_t = sqrt(abar_{t-1}) beta_t /
    (1 - abar_t) (Ho et al. 2020, eq. 7), so E[KL] = KL of the variances + c_t^2 (1 - abar_t) /
    (2 abar_t beta_t); at t = 1 the decoder sees N(x0 + sqrt(beta_1 / abar_1) eps, beta~_2);
    L_T is the Gaussian KL to N(0, I). The discretized decoder's expectation over eps is taken
    by 80-point Gauss-Hermite quadrature."""
    import numpy as np

    betas = schedule.betas.double()
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    posterior_var = (1 - abar_prev) / (1 - abar) * betas
    c = abar_prev.sqrt() * betas / (1 - abar)
    t = slice(1, None)  # t = 2..T
    kl = 0.5 * (
        betas[t].log()
        - posterior_var[t].log()
        + posterior_var[t] / betas[t]
        - 1
        + c[t] ** 2 * (1 - abar[t]) / abar[t] / betas[t]
    )
    var1 = posterior_var[1]
    s = math.sqrt((1 - abar[0]) / abar[0])
    x = x0.double().reshape(x0.shape[0], -1)
    if discretized:
        nodes, weights = np.polynomial.hermite_e.hermegauss(80)
        weights = torch.from_numpy(weights / weights.sum())
        # Bin edges in standard units around the decoder mean x0 + s eps; edge bins reach +-inf.
        centre = -s * torch.from_numpy(nodes) / math.sqrt(var1)
        half = 1 / 255 / math.sqrt(var1)
        upper = torch.where(x[..., None] > 0.999, math.inf, centre + half)
        lower = torch.where(x[..., None] < -0.999, -math.inf, centre - half)
        # Phi(upper) - Phi(lower) through erfc on the side away from 0: no cancellation in the tails.
        mass = torch.where(
            lower > 0,
            0.5 * (torch.erfc(lower / math.sqrt(2)) - torch.erfc(upper / math.sqrt(2))),
            0.5 * (torch.erfc(-upper / math.sqrt(2)) - torch.erfc(-lower / math.sqrt(2))),
        )
        decoder = -(mass.log() * weights).sum(-1)
    else:
        decoder = 0.5 * (math.log(2 * math.pi) + var1.log() + s**2 / var1) * torch.ones_like(x)
    prior = 0.5 * (-(1 - abar[-1]).log() + (1 - abar[-1]) + abar[-1] * x**2 - 1)
    terms = {"decoder": decoder.mean(1), "prior": prior.mean(1)}
    terms["total"] = kl.sum() + terms["decoder"] + terms["prior"]
    return {name: nats / math.log(2) for name, nats in terms.items()}


@pytest.mark.parametrize("discretized", [False, True])
def test_vlb_of_the_eps_zero_model_matches_its_closed_form(discretized):
    """A model that predicts eps = 0 has a VLB in closed form: the Monte Carlo bound matches it
    within 4 standard errors (8-bit levels in [-1, 1] for the discretized decoder, Ho et al. 2020
    eq. 13). Its size (thousands of bits/dim on a cosine schedule) is what an untrained model
    scores: the small-t KL terms divide the x0 error by beta_t."""
    schedule = CosineSchedule()
    levels = torch.randint(0, 256, (256, 256), generator=torch.Generator().manual_seed(1))
    x0 = (levels.double() / 255 * 2 - 1).reshape(256, 1, 16, 16)
    bound = vlb_bits_per_dim(
        lambda x, sigma, labels: x,  # D(x_t / sqrt(abar)) = x_t / sqrt(abar): eps = 0
        schedule,
        x0,
        variance="large",
        discretized=discretized,
        generator=torch.Generator().manual_seed(0),
    )
    expected = eps_zero_vlb_closed_form(schedule, x0, discretized)
    torch.testing.assert_close(bound["prior"], expected["prior"], rtol=1e-9, atol=1e-12)
    for name, precision in (("total", 1e-2), ("decoder", 1e-2)):
        gap = bound[name] - expected[name]
        standard_error = gap.std().item() / math.sqrt(len(gap))
        assert standard_error < precision * abs(expected[name].mean().item()), name
        assert abs(gap.mean().item()) < 4 * standard_error, (name, gap.mean(), standard_error)


def test_the_image_vlb_is_that_of_the_model_as_it_samples_with_x0_clipped():
    """Ho et al.'s and improved-diffusion's bpd loops clamp x0 to [-1, 1] (``clip_denoised``), as
    sampling does. Before: eval.py bounded the unclipped model, where an eps error at t = T on the
    cosine schedule (abar_T = 2.4e-9) is multiplied by 2e4: the eps = 0 model scored ~700 bits/dim,
    a 20-step digits model 637. Clipped, the eps = 0 model scores about 9 bits/dim on uniform
    8-bit levels, the digits model 7.0."""
    from omegaconf import OmegaConf

    from difforge.cli.evaluate import likelihood_metrics

    class EpsZero(torch.nn.Module):
        def forward(self, x, sigma, class_labels=None):
            return x

    schedule = CosineSchedule()
    levels = torch.randint(0, 256, (8, 1, 4, 4), generator=torch.Generator().manual_seed(2))
    x0 = levels.float() / 255 * 2 - 1
    cfg = OmegaConf.create({"seed": 0, "nll": {"method": "vlb", "ode_steps": None}})

    def reference(denoiser) -> float:
        bound = vlb_bits_per_dim(
            denoiser, schedule, x0, variance="large", generator=torch.Generator().manual_seed(0)
        )
        return bound["total"].mean().item()

    clipped = likelihood_metrics(EpsZero(), schedule, x0, cfg, is_image=True, clip_denoised=True)
    raw = likelihood_metrics(EpsZero(), schedule, x0, cfg, is_image=True)
    assert clipped["nll_bpd_vlb"] == pytest.approx(reference(lambda x, s, c: x.clamp(-1, 1)))
    assert raw["nll_bpd_vlb"] == pytest.approx(reference(lambda x, s, c: x))
    assert clipped["nll_bpd_vlb"] < 10 and raw["nll_bpd_vlb"] > 100
