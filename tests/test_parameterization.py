import pytest
import torch

from difforge.diffusion.parameterization import (
    PARAMETERIZATIONS,
    Denoiser,
    EDMParameterization,
    eps_from_x0,
    score_from_x0,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_score,
    x0_from_v,
)
from difforge.diffusion.schedules import EDMSchedule

PARAMS = [cls() for cls in PARAMETERIZATIONS.values() if cls is not EDMParameterization] + [
    EDMParameterization(0.5)
]


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(64, 3, dtype=torch.float64, generator=g)
    eps = torch.randn(64, 3, dtype=torch.float64, generator=g)
    sigma = torch.logspace(-2, 2, 64, dtype=torch.float64)
    return x0, eps, sigma, x0 + sigma[:, None] * eps


def test_round_trips_are_exact_in_float64():
    x0, eps, sigma, x = _data()
    torch.testing.assert_close(eps_from_x0(x, x0, sigma), eps, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x0_from_eps(x, eps, sigma), x0, rtol=1e-12, atol=1e-12)
    v = v_from_x0_eps(x0, eps, sigma)
    torch.testing.assert_close(x0_from_v(x, v, sigma), x0, rtol=1e-10, atol=1e-10)
    score = score_from_x0(x, x0, sigma)
    torch.testing.assert_close(score, -eps / sigma[:, None], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x0_from_score(x, score, sigma), x0, rtol=1e-12, atol=1e-12)


def test_v_matches_salimans_ho_definition():
    """v = alpha_t eps - sigma_t x0 with alpha_t = sqrt(abar), sigma_t = sqrt(1 - abar) (VP frame)."""
    x0, eps, sigma, _ = _data(1)
    abar = (1 / (1 + sigma**2))[:, None]
    torch.testing.assert_close(
        v_from_x0_eps(x0, eps, sigma), abar.sqrt() * eps - (1 - abar).sqrt() * x0
    )


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_target_is_the_preconditioned_regression_target(param):
    """F* = (x0 - c_skip x) / c_out (EDM eq. 8), and D = c_skip x + c_out F* recovers x0."""
    x0, eps, sigma, x = _data(2)
    c_skip, c_out, _ = (c[:, None] for c in param.coefficients(sigma))
    target = param.target(x0, eps, sigma)
    torch.testing.assert_close(target, (x0 - c_skip * x) / c_out, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(c_skip * x + c_out * target, x0, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_denoiser_with_a_perfect_network_is_the_oracle(param, oracle1d):
    """A network that outputs the exact target, given only what the Denoiser feeds it (c_in x and
    c_noise), makes the Denoiser equal the exact E[x0 | x]: checks c_in, c_noise and the plumbing."""
    schedule = EDMSchedule()

    class PerfectNet(torch.nn.Module):
        def forward(self, scaled_x, noise_labels, class_labels=None):
            sigma = (4 * noise_labels.double()).exp()
            x = scaled_x / param.coefficients(sigma)[2][:, None]
            c_skip, c_out, _ = param.coefficients(sigma)
            return (oracle1d(x, sigma) - c_skip[:, None] * x) / c_out[:, None]

    denoiser = Denoiser(PerfectNet(), schedule, param)
    x = torch.linspace(-6, 6, 50, dtype=torch.float64)[:, None]
    sigma = torch.logspace(-1.5, 1.5, 50, dtype=torch.float64)
    torch.testing.assert_close(
        denoiser(x, sigma).double(), oracle1d(x, sigma), rtol=1e-5, atol=1e-5
    )


def test_oracle_denoiser_matches_tweedie_by_autograd(gmm1d, oracle1d):
    """D(x, sigma) = x + sigma^2 grad log p_sigma(x) (Tweedie) with the gradient from autograd."""
    x = torch.linspace(-5, 5, 41, dtype=torch.float64)[:, None].requires_grad_(True)
    for sigma in [0.05, 0.7, 3.0]:
        (grad,) = torch.autograd.grad(gmm1d.log_prob(x, sigma).sum(), x)
        torch.testing.assert_close(
            oracle1d(x.detach(), torch.full((41,), sigma, dtype=torch.float64)),
            x.detach() + sigma**2 * grad,
        )
        torch.testing.assert_close(gmm1d.score(x.detach(), sigma), grad)


def test_bad_sigma_data_is_refused():
    with pytest.raises(ValueError, match="sigma_data must be > 0, got -1"):
        EDMParameterization(-1)


def test_clipped_denoiser_clamps_estimates_and_keeps_the_variance_output(oracle1d):
    from difforge.diffusion.parameterization import ClippedDenoiser

    x = torch.linspace(-6, 6, 13, dtype=torch.float64)[:, None]
    clipped = ClippedDenoiser(oracle1d)(x, torch.full((13,), 0.1, dtype=torch.float64))
    assert clipped.min() == -1 and clipped.max() == 1
    torch.testing.assert_close(
        clipped, oracle1d(x, torch.full((13,), 0.1, dtype=torch.float64)).clamp(-1, 1)
    )
