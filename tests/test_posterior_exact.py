"""The exact posterior of a Gaussian-mixture prior, the sliced Wasserstein metrics and the
mixture test bed of Cardoso et al. 2024."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from difforge.data.mixtures import known_mixture
from difforge.data.options import DataConfigError
from difforge.diffusion.gaussian_mixture import GaussianMixture
from difforge.posterior.exact import FullCovMixture, mixture_posterior
from difforge.posterior.metrics import (
    component_weights,
    exact_floor,
    mean_and_interval,
    sliced_wasserstein,
)
from difforge.posterior.operators.registry import build_operator
from difforge.posterior.testbed import cardoso_mixture, cardoso_problem
from helpers import ROOT, assert_ok, run_cli


def three_component_problem() -> tuple[GaussianMixture, torch.Tensor, torch.Tensor]:
    """A 3-D prior of three anisotropic components and a 2-D measurement that reweights them."""
    mixture = GaussianMixture(
        [0.3, 0.5, 0.2],
        [[-2.0, 0.0, 1.0], [2.0, 0.5, -1.0], [0.0, 3.0, 0.0]],
        [[0.7, 1.0, 0.5], [1.0, 0.6, 0.8], [0.5, 0.5, 1.2]],
    )
    A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([0.0, 1.0], dtype=torch.float64)
    return mixture, A, y


def test_one_component_is_the_textbook_gaussian_posterior():
    """N(m, S) prior: posterior precision S^-1 + A^T A / sigma^2, mean
    Sigma (S^-1 m + A^T y / sigma^2) (Bishop 2006, eqs. 2.116-2.117), weight 1."""
    m = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    s = torch.tensor([0.5, 2.0, 1.0, 1.5], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    A = torch.randn(2, 4, dtype=torch.float64, generator=g)
    y = torch.tensor([0.3, -1.0], dtype=torch.float64)
    sigma_y = 0.4
    post = mixture_posterior(GaussianMixture([1.0], m[None], s[None]), A, y, sigma_y)
    precision = torch.diag(s**-2) + A.T @ A / sigma_y**2
    cov = torch.linalg.inv(precision)
    mean = cov @ (m / s**2 + A.T @ y / sigma_y**2)
    torch.testing.assert_close(post.weights, torch.ones(1, dtype=torch.float64))
    torch.testing.assert_close(post.means[0], mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(post.covs[0], cov, rtol=1e-12, atol=1e-12)


def test_the_density_is_bayes_rule():
    """log p(x | y) - log p(x' | y) = [log p(x) + log N(y; A x, sigma^2)] - [same at x']: the
    posterior's density is the prior times the likelihood, to rounding."""
    mixture, A, y = three_component_problem()
    sigma_y = 0.5
    post = mixture_posterior(mixture, A, y, sigma_y)
    x = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    unnormalised = mixture.log_prob(x) - 0.5 * ((x @ A.T - y) ** 2).sum(-1) / sigma_y**2
    difference = post.log_prob(x) - unnormalised
    torch.testing.assert_close(difference, difference[0].expand(50), rtol=0, atol=1e-10)


def test_against_self_normalised_importance_sampling():
    """Prior draws weighted by the likelihood estimate the posterior's weights, mean and
    covariance; the exact values agree within 4 standard errors (effective sample size)."""
    mixture, A, y = three_component_problem()
    sigma_y = 0.5
    post = mixture_posterior(mixture, A, y, sigma_y)
    assert (post.weights - mixture.weights).abs().max() > 0.05  # the evidence reweights
    g = torch.Generator().manual_seed(2)
    x, component = mixture.sample(400_000, g)
    w = torch.softmax(-0.5 * ((x @ A.T - y) ** 2).sum(-1) / sigma_y**2, dim=0)
    ess = 1 / (w**2).sum()
    assert ess > 20_000
    weights = torch.stack([w[component == k].sum() for k in range(3)])
    se = (post.weights * (1 - post.weights) / ess).sqrt()
    assert ((weights - post.weights).abs() < 4 * se + 1e-4).all(), (weights, post.weights)
    mean = w @ x
    cov = post.covariance()
    se_mean = (cov.diagonal() / ess).sqrt()
    assert ((mean - post.mean()).abs() < 4 * se_mean).all(), (mean, post.mean())
    centred = x - mean
    estimate = (w[:, None] * centred).T @ centred
    se_cov = (cov.diagonal()[:, None] * cov.diagonal()[None, :] * 2 / ess).sqrt()
    assert ((estimate - cov).abs() < 4 * se_cov).all(), (estimate, cov)


def test_sampling_follows_the_mixture():
    """FullCovMixture.sample: component frequencies and moments of the draws."""
    mixture, A, y = three_component_problem()
    post = mixture_posterior(mixture, A, y, 0.5)
    x = post.sample(200_000, torch.Generator().manual_seed(3))
    assert x.shape == (200_000, 3) and x.dtype == torch.float64
    cov = post.covariance()
    se = (cov.diagonal() / 200_000).sqrt()
    assert ((x.mean(0) - post.mean()).abs() < 4 * se).all()
    torch.testing.assert_close(torch.cov(x.T), cov, rtol=0, atol=0.03)


def test_noiseless_measurement_is_an_exact_constraint():
    """sigma_y = 0: every draw satisfies A x = y; the posterior is the limit sigma_y -> 0."""
    mixture, A, y = three_component_problem()
    exact = mixture_posterior(mixture, A, y, 0.0)
    x = exact.sample(1000, torch.Generator().manual_seed(4))
    torch.testing.assert_close(x @ A.T, y.expand(1000, 2), rtol=0, atol=1e-10)
    near = mixture_posterior(mixture, A, y, 1e-5)
    torch.testing.assert_close(exact.weights, near.weights, rtol=0, atol=1e-8)
    torch.testing.assert_close(exact.means, near.means, rtol=0, atol=1e-8)
    torch.testing.assert_close(exact.covs, near.covs, rtol=0, atol=1e-8)
    # The density on the constraint: Bayes' rule restricted to {A x = y} is the prior there.
    difference = exact.log_prob(x) - mixture.log_prob(x)
    torch.testing.assert_close(difference, difference[0].expand(1000), rtol=0, atol=1e-8)


def test_an_operator_gives_the_same_posterior_as_its_matrix():
    mixture, _, _ = three_component_problem()
    op = build_operator("inpaint_half", (3,), side="right")
    y = torch.tensor([0.5], dtype=torch.float64)
    a, b = mixture_posterior(mixture, op, y, 0.1), mixture_posterior(mixture, op.matrix(), y, 0.1)
    assert torch.equal(a.means, b.means) and torch.equal(a.weights, b.weights)


@pytest.mark.parametrize(
    "A,y,sigma_y,message",
    [
        (torch.eye(3)[:2], torch.zeros(2), -1.0, r"^sigma_y must be >= 0, got -1\.0$"),
        (torch.eye(2), torch.zeros(2), 0.1, r"^A must be \(d_y, d_x\) = \(2, 3\)"),
        (torch.ones(2, 3), torch.zeros(2), 0.0, r"singular .* sigma_y = 0 needs A of full row"),
    ],
)
def test_posterior_errors(A, y, sigma_y, message):
    mixture, _, _ = three_component_problem()
    with pytest.raises(ValueError, match=message):
        mixture_posterior(mixture, A, y, sigma_y)


@pytest.mark.parametrize("sigma_y", [0.3, 0.0])
def test_the_low_rank_posterior_is_its_dense_mixture(sigma_y):
    """The posterior's O(n d_x d_y) densities equal those of the FullCovMixture of its weights,
    means and dense covariances (eigendecomposition; on the support when sigma_y = 0), and its
    Matheron draws have the dense mixture's moments."""
    mixture, A, y = three_component_problem()
    post = mixture_posterior(mixture, A, y, sigma_y)
    dense = FullCovMixture(post.weights, post.means, post.covs)
    x = dense.sample(2000, torch.Generator().manual_seed(8))
    torch.testing.assert_close(post.log_prob(x), dense.log_prob(x), rtol=0, atol=1e-9)
    draws = post.sample(100_000, torch.Generator().manual_seed(9))
    torch.testing.assert_close(draws.mean(0), dense.mean(), rtol=0, atol=0.02)
    torch.testing.assert_close(torch.cov(draws.T), dense.covariance(), rtol=0, atol=0.03)


def test_full_cov_mixture_log_prob_is_normalised_in_1d():
    """A 1-D FullCovMixture's density integrates to 1 (trapezoid on a fine grid)."""
    f64 = torch.float64
    mix = FullCovMixture(
        torch.tensor([0.4, 0.6], dtype=f64),
        torch.tensor([[-1.0], [2.0]], dtype=f64),
        torch.tensor([[[0.25]], [[1.0]]], dtype=f64),
    )
    grid = torch.linspace(-10, 12, 20001, dtype=torch.float64)
    total = torch.trapezoid(mix.log_prob(grid[:, None]).exp(), grid)
    assert math.isclose(total.item(), 1.0, abs_tol=1e-8)


# ------------------------------------------------------------------------------------- metrics
def gaussian_cloud(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_sliced_wasserstein_of_the_same_law_is_zero():
    a = gaussian_cloud(300, 5, 0)
    assert sliced_wasserstein(a, a) == 0.0
    assert sliced_wasserstein(a, a[torch.randperm(300)]) == pytest.approx(0.0, abs=1e-12)
    assert sliced_wasserstein(a, torch.cat([a, a])) == pytest.approx(0.0, abs=1e-12)
    b = gaussian_cloud(200, 5, 1)
    assert sliced_wasserstein(a, b) == pytest.approx(sliced_wasserstein(b, a), abs=1e-12)


def test_sliced_wasserstein_of_a_shift_is_its_length_over_sqrt_d():
    """W_2 of a shifted copy along theta is |theta . delta|; E (theta . delta)^2 = |delta|^2 / d
    for theta uniform on the sphere."""
    d = 6
    a = gaussian_cloud(100, d, 2)
    delta = torch.tensor([3.0, -1.0, 0.0, 2.0, 0.5, 0.0], dtype=torch.float64)
    distance = sliced_wasserstein(a, a + delta, num_projections=10_000)
    assert distance == pytest.approx(delta.norm().item() / math.sqrt(d), rel=0.03)


def test_sliced_wasserstein_of_scaled_gaussians_is_the_scale_gap():
    """N(0, I) against N(0, 4 I): every projection is N(0, 1) against N(0, 4), W_2 = 1."""
    a, b = gaussian_cloud(30_000, 3, 3), 2 * gaussian_cloud(30_000, 3, 4)
    assert sliced_wasserstein(a, b, num_projections=50) == pytest.approx(1.0, abs=0.03)


def test_sliced_wasserstein_with_unequal_sizes_is_the_exact_coupling():
    """{0, 1} against {0, 1/2, 1} in 1-D: the quantile coupling gives W_2^2 = 1/12."""
    a = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    b = torch.tensor([[0.5], [1.0], [0.0]], dtype=torch.float64)
    assert sliced_wasserstein(a, b, num_projections=3) == pytest.approx(
        math.sqrt(1 / 12), abs=1e-12
    )


def test_sliced_wasserstein_errors():
    with pytest.raises(ValueError, match=r"same dimension, got \(3, 2\) and \(3, 4\)"):
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"num_projections must be an integer >= 1, got 0"):
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 2), num_projections=0)


def test_floor_and_component_weights_on_the_test_bed():
    """Exact samples: the floor shrinks with the sample size, the prior (the measurement
    ignored) is far above it, and the samples' component weights are the posterior's."""
    problem = cardoso_problem(8, 1, 0)
    post = problem.posterior()
    assert problem.operator().matrix().equal(problem.A) and problem.operator().name == "matrix"
    g = torch.Generator().manual_seed(5)
    small, large = exact_floor(post, 200, generator=g), exact_floor(post, 2000, generator=g)
    assert large < small / 2
    prior_draws = problem.mixture.sample(2000, g)[0]
    assert sliced_wasserstein(prior_draws, post.sample(2000, g)) > 5 * large
    n = 20_000
    weights = component_weights(post.sample(n, g), post)
    assert weights.shape == (25,) and math.isclose(weights.sum().item(), 1.0, rel_tol=1e-12)
    se = (post.weights * (1 - post.weights) / n).sqrt()
    assert ((weights - post.weights).abs() < 4 * se + 1e-3).all()
    # points at one component's mean: that component takes (about) all the weight
    k = int(post.weights.argmax())
    assert component_weights(post.means[k].expand(10, -1), post)[k] > 0.99


def test_mean_and_interval():
    mean, half = mean_and_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and half == pytest.approx(1.96 * math.sqrt(5 / 3) / 2, rel=1e-12)
    assert mean_and_interval([0.7]) == (0.7, 0.0)
    with pytest.raises(ValueError, match="at least one value"):
        mean_and_interval([])


# ------------------------------------------------------------------------------------ test bed
def test_cardoso_problem_follows_the_recipe():
    """25 unit-variance components on the 5x5 grid repeated along x; A with the given number of
    singular values, in (0, 1), decreasing; sigma_y below the largest; y measured from x_true."""
    mixture, A, sigma_y, y, x_true = cardoso_problem(80, 4, 7)
    assert mixture.num_components == 25 and mixture.dim == 80
    assert torch.equal(mixture.stds, torch.ones(25, 80, dtype=torch.float64))
    grid = {(a, b) for a in (-8.0, -4.0, 0.0, 4.0, 8.0) for b in (-8.0, -4.0, 0.0, 4.0, 8.0)}
    assert {tuple(m[:2].tolist()) for m in mixture.means} == grid
    assert torch.equal(mixture.means, mixture.means[:, :2].repeat(1, 40))
    s = torch.linalg.svdvals(A)
    assert A.shape == (4, 80) and ((s > 0) & (s < 1)).all()
    assert 0 <= sigma_y <= s.max()
    assert y.shape == (4,) and x_true.shape == (80,)
    assert (y - A @ x_true).norm() < 6 * sigma_y  # the noise is sigma_y n
    again = cardoso_problem(80, 4, 7)
    assert torch.equal(again.A, A) and torch.equal(again.y, y) and again.sigma_y == sigma_y
    assert not torch.equal(cardoso_problem(80, 4, 8).A, A)
    torch.testing.assert_close(cardoso_mixture(80, 7).weights, mixture.weights, rtol=0, atol=0)


@pytest.mark.parametrize(
    "d_x,d_y,message",
    [(7, 1, r"^d_x must be even"), (8, 9, r"^d_y must be an integer in \[1, d_x=8\], got 9$")],
)
def test_cardoso_problem_errors(d_x, d_y, message):
    with pytest.raises(ValueError, match=message):
        cardoso_problem(d_x, d_y, 0)


def test_the_data_config_is_the_test_beds_prior():
    """data=gmm_grid25 data.dim=80 data.mixture_seed=3 samples the prior of
    cardoso_problem(80, d_y, 3), and model=gmm_oracle finds its law (KNOWN_LAWS)."""
    cfg = OmegaConf.load(ROOT / "configs" / "data" / "gmm_grid25.yaml")
    cfg.dim, cfg.mixture_seed, cfg.num_train, cfg.num_val, cfg.num_test = 80, 3, 1000, 10, 10
    datamodule = instantiate(cfg)
    law = known_mixture(cfg)
    expected = cardoso_mixture(80, 3)
    for field in ("weights", "means", "stds"):
        assert torch.equal(getattr(datamodule.mixture, field), getattr(expected, field))
        assert torch.equal(getattr(law, field), getattr(expected, field))
    datamodule.setup("fit")
    x, labels = next(iter(datamodule.train_dataloader()))
    assert x.shape == (512, 80) and labels.max() < 25
    cfg.dim = 7
    with pytest.raises(DataConfigError, match=r"data\.dim must be even"):
        known_mixture(cfg)


@pytest.mark.slow
def test_the_exact_model_samples_the_test_beds_prior(tmp_path):
    """python src/sample.py model=gmm_oracle data=gmm_grid25 data.dim=8: the samples' component
    weights are the prior's (the exact denoiser of the test bed's mixture, no checkpoint)."""
    assert_ok(
        run_cli(
            "sample",
            "model=gmm_oracle",
            "data=gmm_grid25",
            "data.dim=8",
            "data.mixture_seed=2",
            "sampler=heun",
            "sampler.steps=30",
            "num_samples=4000",
            f"hydra.run.dir={tmp_path}",
        )
    )
    samples = torch.from_numpy(np.load(tmp_path / "samples.npz")["arr_0"]).double()
    mixture = cardoso_mixture(8, 2)
    assert samples.shape == (4000, 8)
    weights = mixture.responsibilities(samples).mean(0)
    se = (mixture.weights * (1 - mixture.weights) / 4000).sqrt()
    assert ((weights - mixture.weights).abs() < 4 * se + 0.01).all()
