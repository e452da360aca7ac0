import math

import torch

from difforge.diffusion.forward import log_snr, q_posterior, q_sample, q_step, snr
from difforge.diffusion.schedules import CosineSchedule, LinearSchedule


def test_markov_chain_reproduces_closed_form_moments():
    """Run q(x_t | x_{t-1}) step by step; at each checkpoint t, the sample mean and variance match
    q(x_t | x_0) = N(sqrt(abar_t) x_0, 1 - abar_t) within 5 standard errors of the estimators."""
    schedule = LinearSchedule(1000)
    n = 20_000
    generator = torch.Generator().manual_seed(0)
    x0 = torch.tensor([2.0, -1.0], dtype=torch.float64).repeat(n // 2)
    x = x0.clone()
    checkpoints = {1, 10, 100, 400, 1000}
    for t in range(1, 1001):
        index = torch.full((n,), t - 1)
        x = q_step(schedule, x, index, torch.randn(n, generator=generator, dtype=torch.float64))
        if t in checkpoints:
            abar = schedule.alphas_cumprod[t - 1].item()
            residual = x - math.sqrt(abar) * x0
            variance = 1 - abar
            assert abs(residual.mean().item()) < 5 * math.sqrt(variance / n)
            assert abs(residual.var().item() - variance) < 5 * variance * math.sqrt(2 / (n - 1))
            closed = q_sample(
                schedule, x0, index, torch.randn(n, generator=generator, dtype=torch.float64)
            )
            assert abs(closed.mean().item() - x.mean().item()) < 5 * math.sqrt(
                2 * (variance + 2.25 * abar) / n
            )


def test_posterior_matches_direct_gaussian_conditioning():
    """q(x_{t-1} | x_t, x_0) from Bayes' rule on x_{t-1} ~ N(sqrt(abar_{t-1}) x_0, 1 - abar_{t-1}) and
    x_t | x_{t-1} ~ N(sqrt(alpha_t) x_{t-1}, beta_t): precision-weighted combination."""
    schedule = CosineSchedule(1000)
    x0 = torch.tensor([0.7, -0.3, 1.5], dtype=torch.float64)
    x_t = torch.tensor([0.1, 2.0, -0.4], dtype=torch.float64)
    for t in [2, 3, 50, 500, 999]:
        index = torch.full((3,), t - 1)
        abar_prev = schedule.alphas_cumprod[t - 2].item()
        alpha, beta = schedule.alphas[t - 1].item(), schedule.betas[t - 1].item()
        precision = 1 / (1 - abar_prev) + alpha / beta
        expected_var = 1 / precision
        expected_mean = expected_var * (
            math.sqrt(abar_prev) * x0 / (1 - abar_prev) + math.sqrt(alpha) * x_t / beta
        )
        mean, var = q_posterior(schedule, x0, x_t, index)
        torch.testing.assert_close(mean, expected_mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(
            var, torch.full((3,), expected_var, dtype=torch.float64), rtol=1e-10, atol=1e-14
        )
    # t = 1: the posterior is x_0 itself with zero variance.
    mean, var = q_posterior(schedule, x0, x_t, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(mean, x0)
    assert (var == 0).all()


def test_snr_is_one_over_sigma_squared():
    schedule = LinearSchedule(1000)
    torch.testing.assert_close(snr(schedule), 1 / schedule.sigmas**2, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        log_snr(schedule), -2 * schedule.sigmas.log(), rtol=1e-12, atol=1e-12
    )
    assert (snr(schedule)[1:] < snr(schedule)[:-1]).all()
