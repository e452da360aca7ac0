"""Rectified flow: the schedule, the ``flow`` parameterization, the flow grid and the noise laws."""

from __future__ import annotations

import math

import pytest
import torch

from difforge.diffusion.losses import DenoisingLoss
from difforge.diffusion.noise_laws import (
    NOISE_LAWS,
    DiscreteTLaw,
    LogitNormalLaw,
    LogNormalLaw,
    ScheduleLaw,
    UniformTLaw,
)
from difforge.diffusion.parameterization import Denoiser, FlowParameterization, eps_from_x0
from difforge.diffusion.samplers.euler import sample_euler
from difforge.diffusion.schedules import (
    CosineSchedule,
    EDMSchedule,
    RectifiedFlowSchedule,
    flow_sigma,
    flow_time,
)
from difforge.diffusion.sigma_grids import sigma_grid


def test_flow_point_is_the_ve_point_scaled():
    """x_t = (1 - t) x0 + t eps equals x / (1 + sigma) for x = x0 + sigma eps, sigma = t / (1 - t)."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 100, dtype=torch.float64, generator=g)
    t = torch.rand(100, dtype=torch.float64, generator=g)
    sigma = flow_sigma(t)
    torch.testing.assert_close((1 - t) * x0 + t * eps, (x0 + sigma * eps) / (1 + sigma))
    torch.testing.assert_close(flow_time(sigma), t)


def test_flow_target_is_the_velocity_of_the_straight_path():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 64, 3, dtype=torch.float64, generator=g)
    t = torch.rand(64, dtype=torch.float64, generator=g)
    h = 1e-6
    x_t = lambda s: (1 - s[:, None]) * x0 + s[:, None] * eps  # noqa: E731
    velocity = (x_t(t + h) - x_t(t - h)) / (2 * h)
    target = FlowParameterization().target(x0, eps, flow_sigma(t))
    torch.testing.assert_close(target, velocity, rtol=1e-7, atol=1e-7)


def test_perfect_velocity_network_under_rectified_flow_schedule_is_the_oracle(oracle1d):
    """The network sees c_in x = x_t and c_noise = 1000 t, returns the exact velocity
    E[eps - x0 | x_t] = (x_t - E[x0 | x]) / t; the Denoiser must return the oracle E[x0 | x]."""
    schedule, param = RectifiedFlowSchedule(), FlowParameterization()

    class PerfectVelocity(torch.nn.Module):
        def forward(self, x_t, noise_labels, class_labels=None):
            t = noise_labels.double() / 1000
            x = x_t / (1 - t[:, None])
            return (x_t - oracle1d(x, flow_sigma(t))) / t[:, None]

    denoiser = Denoiser(PerfectVelocity(), schedule, param)
    x = torch.linspace(-6, 6, 50, dtype=torch.float64)[:, None]
    sigma = torch.logspace(-1.5, 1.5, 50, dtype=torch.float64)
    torch.testing.assert_close(
        denoiser(x, sigma).double(), oracle1d(x, sigma), rtol=1e-4, atol=1e-4
    )


def test_rectified_flow_euler_step_equals_difforge_euler_step():
    """x_{t'} = x_t + (t' - t) v with v = (x_t - D) / t (the velocity from the denoised estimate)
    is difforge's VE Euler step x' = x + (sigma' - sigma)(x - D) / sigma, mapped by x_t = x / (1 + sigma)."""
    g = torch.Generator().manual_seed(2)
    x0_hat = torch.randn(16, 4, dtype=torch.float64, generator=g)

    def denoiser(x, sigma, class_labels=None):
        return x0_hat + 0.1 * torch.tanh(x)  # any function of x

    t = torch.tensor([0.9, 0.55], dtype=torch.float64)
    sigmas = flow_sigma(t)
    x = sigmas[0] * torch.randn(16, 4, dtype=torch.float64, generator=g)
    ve = sample_euler(denoiser, x, sigmas)
    x_t = x / (1 + sigmas[0])
    velocity = (x_t - denoiser(x, sigmas[0])) / t[0]
    torch.testing.assert_close(ve / (1 + sigmas[1]), x_t + (t[1] - t[0]) * velocity)


def test_shift_is_sd3_formula_and_scales_sigma():
    """SD3 eq. 23: t' = shift t / (1 + (shift - 1) t); in the VE frame sigma' = shift sigma."""
    steps, shift = 10, 3.0
    plain = sigma_grid(RectifiedFlowSchedule(), steps, "flow")
    shifted = sigma_grid(RectifiedFlowSchedule(shift=shift), steps, "flow")
    t = flow_time(plain)
    torch.testing.assert_close(flow_time(shifted), shift * t / (1 + (shift - 1) * t))
    torch.testing.assert_close(shifted, shift * plain)
    # diffusers' FlowMatchEulerDiscreteScheduler: t uniform from t_max to t_min, then 0
    torch.testing.assert_close(flow_time(plain[:-1]), torch.linspace(0.999, 1e-3, 10).double())
    assert shifted[-1] == 0


def test_rectified_flow_training_law_is_uniform_t_and_quantile_is_its_cdf():
    schedule = RectifiedFlowSchedule(shift=2.0, t_min=0.01, t_max=0.99)
    sigma = schedule.sample_training_sigmas(20000, generator=torch.Generator().manual_seed(0))
    q = schedule.training_quantile(sigma)
    # The quantiles of draws are uniform: KS distance against U(0, 1).
    ks = (q.sort().values.double() - (torch.arange(20000) + 0.5) / 20000).abs().max()
    assert ks < 1.63 / math.sqrt(20000)  # 1% level
    assert sigma.min() >= schedule.sigma_min * (1 - 1e-6)
    assert sigma.max() <= schedule.sigma_max * (1 + 1e-6)
    torch.testing.assert_close(schedule.noise_labels(torch.tensor([1.0])), torch.tensor([500.0]))


@pytest.mark.parametrize("kwargs", [{"shift": 0.0}, {"t_min": 0.5, "t_max": 0.4}, {"t_max": 1.0}])
def test_rectified_flow_schedule_refuses_bad_values(kwargs):
    with pytest.raises(ValueError, match=r"shift|t_min"):
        RectifiedFlowSchedule(**kwargs)


# --- noise laws ------------------------------------------------------------------------------


def test_schedule_law_draws_bitwise_the_schedules_own_sigmas():
    for schedule in (CosineSchedule(), EDMSchedule(), RectifiedFlowSchedule()):
        a = ScheduleLaw().sample(schedule, 64, generator=torch.Generator().manual_seed(3))
        b = schedule.sample_training_sigmas(64, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a, b)


def _ks_against(cdf_values: torch.Tensor) -> float:
    n = len(cdf_values)
    return float((cdf_values.sort().values - (torch.arange(n) + 0.5) / n).abs().max())


def test_logit_normal_law_has_sd3_density_in_t():
    """SD3 eq. 19: pi_ln(t; m, s) = exp(-(logit t - m)^2 / (2 s^2)) / (s sqrt(2 pi) t (1 - t)):
    the law's CDF, as a function of t, has this derivative, and its draws follow that CDF."""
    m, s = 0.3, 0.8
    law = LogitNormalLaw(m, s)
    t = torch.linspace(0.02, 0.98, 97, dtype=torch.float64)
    h = 1e-6
    density = (law.cdf(flow_sigma(t + h)) - law.cdf(flow_sigma(t - h))) / (2 * h)
    logit = torch.log(t / (1 - t))
    pi_ln = torch.exp(-((logit - m) ** 2) / (2 * s**2)) / (s * math.sqrt(2 * math.pi) * t * (1 - t))
    torch.testing.assert_close(density, pi_ln, rtol=1e-6, atol=1e-8)
    wide = EDMSchedule(sigma_min=1e-8, sigma_max=1e8)  # truncation negligible
    draws = law.sample(wide, 20000, generator=torch.Generator().manual_seed(4)).double()
    reference = torch.distributions.Normal(m, s).cdf(torch.log(draws))
    assert _ks_against(reference) < 1.63 / math.sqrt(20000)


def test_log_normal_law_is_edm_law_within_the_range():
    schedule = EDMSchedule()
    law = LogNormalLaw(-1.2, 1.2)
    sigma = law.sample(schedule, 20000, generator=torch.Generator().manual_seed(5))
    assert sigma.min() >= schedule.sigma_min and sigma.max() <= schedule.sigma_max
    assert _ks_against(law.quantile(schedule, sigma).double()) < 1.63 / math.sqrt(20000)
    # The EDM range holds all but ~3e-5 of the law: the truncated quantile is the schedule's own.
    torch.testing.assert_close(
        law.quantile(schedule, sigma), schedule.training_quantile(sigma), atol=1e-4, rtol=0
    )


def test_uniform_t_law_is_uniform_in_t_within_the_range():
    schedule = CosineSchedule()
    law = UniformTLaw()
    sigma = law.sample(schedule, 20000, generator=torch.Generator().manual_seed(6)).double()
    t = flow_time(sigma)
    lo, hi = flow_time(torch.tensor([schedule.sigma_min, schedule.sigma_max], dtype=torch.float64))
    assert _ks_against((t - lo) / (hi - lo)) < 1.63 / math.sqrt(20000)


def test_discrete_t_law_needs_a_discrete_schedule():
    schedule = CosineSchedule(100)
    sigma = DiscreteTLaw().sample(schedule, 1000, generator=torch.Generator().manual_seed(7))
    assert set(sigma.tolist()) <= set(schedule.sigmas.float().tolist())
    for continuous in (EDMSchedule(), RectifiedFlowSchedule()):
        with pytest.raises(ValueError, match="noise_law=discrete_t needs a discrete schedule"):
            DiscreteTLaw().check(continuous)


def test_every_law_is_registered_once():
    assert set(NOISE_LAWS) == {"schedule", "discrete_t", "uniform_t", "log_normal", "logit_normal"}


def test_flow_loss_with_logit_normal_law_is_sd3_weighting():
    """SD3 sec. 3.1: in the eps frame the conditional flow-matching loss is
    -1/2 w_t lambda'_t ||eps_theta - eps||^2 with lambda_t = log((1 - t)^2 / t^2) and the
    rectified-flow weight w_t^RF = t / (1 - t) (eq. 15), so the per-sample loss is
    ||eps_theta - eps||^2 / (1 - t)^2; drawing t from the logit-normal law makes the expected loss
    the uniform-t integral of pi_ln(t) w_t^RF (-lambda'_t / 2) ||eps_theta - eps||^2 (eq. 19)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 3).double()
    schedule, param = RectifiedFlowSchedule(t_min=1e-4, t_max=1 - 1e-4), FlowParameterization()

    class Net(torch.nn.Module):
        def forward(self, x, noise_labels, class_labels=None):
            return net(x) * torch.cos(noise_labels / 300)[:, None]

    denoiser = Denoiser(Net(), schedule, param)
    loss = DenoisingLoss()
    g = torch.Generator().manual_seed(8)
    x0, noise = torch.randn(2, 256, 3, dtype=torch.float64, generator=g)

    def per_sample_sd3(sigma: torch.Tensor) -> torch.Tensor:
        t = flow_time(sigma)
        x = x0 + sigma[:, None] * noise
        eps_theta = eps_from_x0(x, denoiser(x, sigma).double(), sigma)
        d_lambda = -2 / (t * (1 - t))  # d/dt log((1 - t)^2 / t^2)
        w_rf = t / (1 - t)
        return -0.5 * w_rf * d_lambda * ((eps_theta - noise) ** 2).mean(dim=1)

    sigma = flow_sigma(torch.rand(256, dtype=torch.float64, generator=g) * 0.98 + 0.01)
    ours = loss(denoiser, x0, sigma.float(), noise).double()
    torch.testing.assert_close(ours, per_sample_sd3(sigma.float().double()), rtol=2e-4, atol=1e-6)

    # Expectation under the law = quadrature over t with SD3's density pi_ln(t).
    law = LogitNormalLaw(0.0, 1.0)
    u = (torch.arange(256, dtype=torch.float64) + 0.5) / 256  # stratified: one draw per stratum
    sigma_law = law.icdf(u)
    expected_law = loss(denoiser, x0, sigma_law.float(), noise).double().mean()
    t_grid = flow_time(sigma_law)
    pi_ln = torch.exp(-(torch.log(t_grid / (1 - t_grid)) ** 2) / 2) / (
        math.sqrt(2 * math.pi) * t_grid * (1 - t_grid)
    )
    # Same points, importance weights 1 / pi_ln over the law's strata: integral of pi_ln * loss dt.
    widths = torch.diff(flow_time(law.icdf(torch.linspace(0, 1, 257, dtype=torch.float64))))
    quadrature = (pi_ln * widths * per_sample_sd3(sigma_law.float().double())).sum()
    torch.testing.assert_close(expected_law, quadrature, rtol=2e-3, atol=0)


def sd3_shifted_time(t: float, shift: float) -> float:
    """SD3's timestep shift (Esser et al. 2024, sec. 5.3.2): t' = shift t / (1 + (shift - 1) t)."""
    return shift * t / (1 + (shift - 1) * t)


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
@pytest.mark.parametrize(
    "law", [LogitNormalLaw(), UniformTLaw()], ids=["logit_normal", "uniform_t"]
)
def test_laws_over_t_take_the_schedules_shift_as_sd3_does(law, shift):
    """SD3 (sec. 3.1 and 5.3.2) and the trainers built on it (diffusers' train_dreambooth_sd3:
    ``compute_density_for_timestep_sampling``, then the shifted scheduler sigmas) draw t from the
    law and then shift it: the median of logit-normal(0, 1) (and of uniform t on a range symmetric
    about 1/2) moves from t = 1/2 to shift / (1 + shift)."""
    schedule = RectifiedFlowSchedule(shift=shift)
    median = sd3_shifted_time(0.5, shift)
    sigma_median = torch.tensor([flow_sigma(torch.tensor(median, dtype=torch.float64)).item()])
    assert law.quantile(schedule, sigma_median).item() == pytest.approx(0.5, abs=1e-6)
    n = 100_000
    t = flow_time(law.sample(schedule, n, generator=torch.Generator().manual_seed(8)).double())
    # The sample median's standard deviation is 1 / (2 f(median) sqrt(n)): below 1.3e-3 in t
    # for both laws (density in t >= 1/1.0 at the median for uniform, logit-normal's 1.6 / t(1-t)).
    assert t.median().item() == pytest.approx(median, abs=6e-3)
    # Every draw is the unshifted law's draw shifted: inside the schedule's shifted range.
    assert t.min() >= flow_time(torch.tensor(schedule.sigma_min)) - 1e-6
    assert t.max() <= flow_time(torch.tensor(schedule.sigma_max)) + 1e-6


def test_edm_log_normal_law_is_over_sigma_and_takes_no_shift():
    """EDM's law is over sigma itself, not over t: a flow schedule's shift does not move it."""
    law = LogNormalLaw(0.0, 1.0)
    plain, shifted = RectifiedFlowSchedule(), RectifiedFlowSchedule(shift=3.0)
    one = torch.tensor([1.0])
    assert law.quantile(plain, one).item() == pytest.approx(0.5, abs=1e-6)
    assert law.quantile(shifted, one).item() == pytest.approx(0.5, abs=1e-3)


@pytest.mark.slow
def test_flow_objective_with_shift_trains_under_the_shifted_logit_normal_law(tmp_path):
    """The command a user types: ``python src/train.py objective=flow schedule.shift=3``; the
    module rebuilt from its checkpoint draws training t with median 3 * 0.5 / (1 + 2 * 0.5)."""
    from difforge.training.build import module_from_checkpoint
    from helpers import QUICK_TRAIN, assert_ok, run_cli

    result = run_cli(
        "train",
        *QUICK_TRAIN,
        "objective=flow",
        "schedule.shift=3",
        "data=gmm1d",
        "model=mlp",
        f"hydra.run.dir={tmp_path}",
    )
    assert_ok(result)
    module, _ = module_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    sigma = module.noise_law.sample(
        module.schedule, 100_000, generator=torch.Generator().manual_seed(9)
    )
    t = flow_time(sigma.double())
    assert t.median().item() == pytest.approx(sd3_shifted_time(0.5, 3.0), abs=6e-3)
