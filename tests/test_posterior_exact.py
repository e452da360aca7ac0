"""The exact posterior of a Gaussian-mixture prior, the sliced Wasserstein metrics and the
mixture test bed of Cardoso et al. 2024."""

from __future__ import annotations

import math

import pytest
import torch

from difforge.diffusion.gaussian_mixture import GaussianMixture
from difforge.posterior.exact import FullCovMixture, mixture_posterior
from difforge.posterior.operators.registry import build_operator


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
