import math

import pytest
import torch

from difforge.diffusion.schedules import (
    CosineSchedule,
    EDMSchedule,
    LinearSchedule,
    SigmoidSchedule,
)


def test_linear_alphas_cumprod_matches_ho_et_al():
    schedule = LinearSchedule(1000)
    assert schedule.alphas_cumprod.dtype == torch.float64 and schedule.alphas_cumprod.shape == (
        1000,
    )
    product = 1.0
    for t in range(1, 1001):
        beta_t = 1e-4 + (0.02 - 1e-4) * (t - 1) / 999
        product *= 1 - beta_t
        if t in (1, 2, 10, 500, 999, 1000):
            assert schedule.alphas_cumprod[t - 1].item() == pytest.approx(product, rel=1e-12)
    # Ho et al.'s schedule leaves abar_T of about 4e-5: x_T is nearly pure noise.
    assert 3e-5 < schedule.alphas_cumprod[-1].item() < 5e-5


def test_cosine_alphas_cumprod_matches_nichol_dhariwal():
    T, s = 1000, 0.008
    schedule = CosineSchedule(T, s=s)

    def f(t: int) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    unclipped = (schedule.betas < 0.999).nonzero().flatten()
    assert len(unclipped) >= T - 2  # clipping acts only at the very end
    for index in [0, 1, 100, 500, 900, int(unclipped[-1])]:
        t = index + 1
        assert schedule.alphas_cumprod[index].item() == pytest.approx(f(t) / f(0), rel=1e-10)
    assert schedule.betas.max().item() <= 0.999


def test_sigmoid_schedule_is_monotone_from_one_to_zero():
    abar = SigmoidSchedule(1000).alphas_cumprod
    assert (abar[1:] < abar[:-1]).all()
    assert abar[0] > 0.99 and abar[-1] < 1e-3


@pytest.mark.parametrize("schedule", [LinearSchedule(), CosineSchedule(), SigmoidSchedule()])
def test_sigma_table_and_timestep_inverse(schedule):
    abar = schedule.alphas_cumprod
    torch.testing.assert_close(schedule.sigmas**2, (1 - abar) / abar, rtol=1e-12, atol=0)
    exact = schedule.sigma_to_timestep(schedule.sigmas[[0, 10, 500, 999]].float())
    torch.testing.assert_close(exact, torch.tensor([0.0, 10.0, 500.0, 999.0]), atol=2e-3, rtol=0)
    between = schedule.sigma_to_timestep(
        torch.tensor([(schedule.sigmas[10] * schedule.sigmas[11]).sqrt().item()])
    )
    assert 10 < between.item() < 11
    drawn = schedule.sample_training_sigmas(4096, generator=torch.Generator().manual_seed(0))
    assert (
        drawn.dtype == torch.float32
        and schedule.sigma_min <= drawn.min()
        and drawn.max() <= schedule.sigmas[-1] * (1 + 1e-6)
    )


def test_edm_training_sigmas_are_lognormal():
    schedule = EDMSchedule()
    n = 100_000
    log_sigma = (
        schedule.sample_training_sigmas(n, generator=torch.Generator().manual_seed(0))
        .double()
        .log()
    )
    assert abs(log_sigma.mean().item() - schedule.P_mean) < 4 * schedule.P_std / math.sqrt(n)
    assert abs(log_sigma.std().item() - schedule.P_std) < 4 * schedule.P_std / math.sqrt(2 * n)
    torch.testing.assert_close(
        schedule.noise_labels(torch.tensor([1.0, math.e**4])), torch.tensor([0.0, 1.0])
    )


@pytest.mark.parametrize("bad", [0, 1, -5, 2.5, True])
def test_bad_num_timesteps_is_refused_with_its_value(bad):
    with pytest.raises(ValueError, match=f"num_timesteps must be an integer >= 2, got {bad!r}"):
        LinearSchedule(bad)


def test_bad_edm_range_is_refused():
    with pytest.raises(ValueError, match="sigma_min=5"):
        EDMSchedule(sigma_min=5, sigma_max=1)


@pytest.mark.parametrize("schedule", [CosineSchedule(), SigmoidSchedule()], ids=lambda s: s.name)
def test_sampling_top_is_never_a_clipped_beta(schedule):
    """Clipping beta_T at 0.999 puts sigma_T near 2e4 (cosine); samplers start one step below."""
    assert schedule.betas[-1] == 0.999 and schedule.betas[-2] < 0.999
    assert schedule.sigma_max == schedule.sigmas[-2] < schedule.sigmas[-1] / 10
    assert LinearSchedule().sigma_max == LinearSchedule().sigmas[-1]


@pytest.mark.parametrize(
    "schedule",
    [
        LinearSchedule(rescale_zero_terminal_snr=True),
        CosineSchedule(rescale_zero_terminal_snr=True),
        SigmoidSchedule(rescale_zero_terminal_snr=True),
    ],
    ids=lambda s: s.name,
)
def test_zero_terminal_snr_rescaling(schedule):
    """Lin et al. 2024, algorithm 1: sqrt(abar) shifted and scaled so abar_T = 0 exactly and
    abar_1 is kept; sqrt(abar) stays an affine map of the original one."""
    original = type(schedule)()
    abar, abar0 = schedule.alphas_cumprod, original.alphas_cumprod
    assert abar[-1] == 0 and schedule.betas[-1] == 1 and math.isinf(schedule.sigma_max)
    torch.testing.assert_close(abar[0], abar0[0], rtol=1e-12, atol=0)
    if isinstance(schedule, LinearSchedule):  # unclipped: the map is exactly affine
        slope = (abar.sqrt()[1:-1] - abar.sqrt()[-1]) / (abar0.sqrt()[1:-1] - abar0.sqrt()[-1])
        torch.testing.assert_close(slope, slope[0].expand_as(slope), rtol=1e-9, atol=0)
    assert (abar[1:] < abar[:-1]).all()
    labels = schedule.noise_labels(torch.tensor([math.inf, float(schedule.sigmas[-2])]))
    torch.testing.assert_close(labels, torch.tensor([999.0, 998.0]))


def test_linear_betas_scale_with_the_number_of_timesteps():
    """improved-diffusion's rule: DDPM's 1e-4..0.02 are for T = 1000, scaled by 1000 / T."""
    short = LinearSchedule(100)
    torch.testing.assert_close(short.betas[[0, -1]], torch.tensor([1e-3, 0.2], dtype=torch.float64))
    # abar_T = prod (1 - beta_t): the same order of magnitude as T = 1000's, near 0
    assert float(short.alphas_cumprod[-1]) < 1e-3
    assert LinearSchedule(20).betas.max() == pytest.approx(0.999)  # 0.02 x 50 = 1, clipped
    unscaled = LinearSchedule(100, scale_to_num_timesteps=False)
    torch.testing.assert_close(unscaled.betas, torch.linspace(1e-4, 0.02, 100, dtype=torch.float64))


def test_a_schedule_that_does_not_end_in_noise_is_reported_with_its_value():
    expected = float(torch.prod(1 - torch.linspace(1e-4, 0.02, 100, dtype=torch.float64)))
    with pytest.warns(UserWarning, match=rf"abar_T = {expected:.4g} > 0.001"):
        LinearSchedule(100, scale_to_num_timesteps=False)


def test_a_continuous_schedule_reports_a_small_sigma_max():
    from difforge.diffusion.schedules import EDMSchedule

    with pytest.warns(UserWarning, match=r"schedule edm: abar_T = 0.01 > 0.001"):
        EDMSchedule(sigma_max=float(99**0.5))


def test_per_sample_broadcasts_values_and_keeps_masks() -> None:
    from difforge.diffusion.broadcast import per_sample

    like = torch.zeros(3, 2, 4, dtype=torch.float64)
    scaled = per_sample(torch.tensor([1.0, 2.0, 3.0]), like) * (like + 1)
    assert scaled.dtype == torch.float64
    assert torch.equal(scaled[:, 1, 2], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    mask = per_sample(torch.tensor([True, False, True]), like)
    assert mask.dtype == torch.bool and mask.shape == (3, 1, 1)


def test_require_discrete_names_what_and_the_schedule() -> None:
    from difforge.diffusion.schedules import EDMSchedule, LinearSchedule, require_discrete

    linear = LinearSchedule()
    assert require_discrete(linear, "x") is linear
    with pytest.raises(
        ValueError, match=r"^loss=hybrid needs a discrete schedule .* got schedule='edm'; use y$"
    ):
        require_discrete(EDMSchedule(), "loss=hybrid", "use y")
