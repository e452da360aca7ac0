"""Samplers with the exact denoiser of the seed's mixture: discretisation error measured alone."""

import pytest
import torch

from difforge.diffusion.gaussian_mixture import GaussianMixture, GaussianMixtureOracle
from difforge.diffusion.guidance import ClassifierFreeGuidance
from difforge.diffusion.samplers import SAMPLERS, Sampler
from difforge.diffusion.samplers.ddim import sample_ddim
from difforge.diffusion.samplers.euler import sample_euler
from difforge.diffusion.schedules import CosineSchedule, EDMSchedule, LinearSchedule
from difforge.diffusion.sigma_grids import discrete_sigmas, karras_sigmas
from helpers import assert_reproduces_mixture, gaussian_ode_solution, mixture_w1_floor

N = 20_000
# Each sampler at a stated step count (discretisation allowance: tests/helpers.py).
STATED_STEPS = {"ddpm": 250, "ddim": 100, "euler": 100, "heun": 50, "dpmpp_2m": 50}


@pytest.fixture(scope="module")
def w1_floor(gmm1d) -> float:
    return mixture_w1_floor(gmm1d, N)


@pytest.mark.parametrize(
    "schedule", [LinearSchedule(), CosineSchedule(), EDMSchedule()], ids=lambda s: s.name
)
@pytest.mark.parametrize("algorithm", list(STATED_STEPS))
def test_sampler_reproduces_the_mixture(algorithm, schedule, gmm1d, oracle1d, w1_floor):
    sampler = Sampler(algorithm, STATED_STEPS[algorithm])
    result = sampler(
        oracle1d, schedule, (N, 1), dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    assert_reproduces_mixture(result.samples, gmm1d, w1_floor)


@pytest.mark.parametrize(
    "schedule", [LinearSchedule(), CosineSchedule(), EDMSchedule()], ids=lambda s: s.name
)
@pytest.mark.parametrize("algorithm", list(SAMPLERS))
def test_defaults_reach_the_floor_at_100_nfe(algorithm, schedule, gmm1d, oracle1d, w1_floor):
    """The defaults are chosen at 5-20 NFE (docs/benchmarks.md, section 3); they must not leave
    an error that more steps cannot remove (a grid starting below the top does)."""
    sampler = Sampler(algorithm, 1)
    sampler = sampler.replace(steps=sampler.steps_for_nfe(100, schedule))
    result = sampler(
        oracle1d, schedule, (N, 1), dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    assert result.nfe <= 100
    assert_reproduces_mixture(result.samples, gmm1d, w1_floor)


@pytest.mark.parametrize("final_sigma", ["zero", "min"])
@pytest.mark.parametrize(
    "algorithm,steps,expected",
    [("ddpm", 10, 10), ("ddim", 10, 10), ("euler", 7, 7), ("heun", 10, 19), ("dpmpp_2m", 12, 12)],
)
def test_nfe_is_counted(algorithm, steps, expected, final_sigma, oracle1d):
    """Heun's step to sigma = 0 takes one evaluation, its step to sigma_min two."""
    schedule = LinearSchedule()
    sampler = Sampler(algorithm, steps, final_sigma=final_sigma)
    result = sampler(oracle1d, schedule, (8, 1), dtype=torch.float64)
    expected += algorithm == "heun" and final_sigma == "min"
    assert result.nfe == expected == sampler.nfe(schedule)
    final = 0.0 if final_sigma == "zero" else schedule.sigma_min
    assert len(result.sigmas) == steps + 1 and float(result.sigmas[-1]) == pytest.approx(final)


@pytest.mark.parametrize(
    "algorithm,order", [("euler", 1), ("ddim", 1), ("heun", 2), ("dpmpp_2m", 2)]
)
def test_ode_solvers_converge_at_their_order(algorithm, order):
    """On Gaussian data the ODE's solution is known in closed form; halving the step size divides
    the error by about 2^order."""
    mean, std, sigma_max = 0.5, 0.8, 20.0
    oracle = GaussianMixtureOracle(GaussianMixture([1.0], [mean], [std]))
    x_T = torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None] * sigma_max
    exact = gaussian_ode_solution(x_T, sigma_max, 0.0, mean, std)
    errors = []
    for steps in (8, 16, 32, 64):
        sigmas = karras_sigmas(steps, 0.002, sigma_max)
        sampler = Sampler(algorithm, steps, grid="karras", sigma_max=sigma_max, sigma_min=0.002)
        x = sampler.spec.fn(oracle, x_T.clone(), sigmas)
        errors.append((x - exact).abs().max().item())
    ratios = [errors[i] / errors[i + 1] for i in range(3)]
    assert all(r > 2**order * 0.75 for r in ratios[1:]), (errors, ratios)
    assert all(r < 2**order * 1.6 for r in ratios[1:]), (errors, ratios)


def test_ddim_eta0_is_deterministic_and_equals_euler(oracle1d):
    sigmas = discrete_sigmas(LinearSchedule(), 30)
    x = (
        torch.randn(100, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        * sigmas[0]
    )
    first = sample_ddim(oracle1d, x.clone(), sigmas, generator=torch.Generator().manual_seed(1))
    second = sample_ddim(oracle1d, x.clone(), sigmas, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, second)
    torch.testing.assert_close(
        first, sample_euler(oracle1d, x.clone(), sigmas), rtol=1e-9, atol=1e-9
    )


def test_ddim_eta1_is_stochastic(oracle1d):
    sampler = Sampler("ddim", 20, eta=1.0)
    a = sampler(oracle1d, LinearSchedule(), (50, 1), generator=torch.Generator().manual_seed(0))
    noise_only = Sampler("ddim", 20, eta=0.0)(
        oracle1d, LinearSchedule(), (50, 1), generator=torch.Generator().manual_seed(0)
    )
    assert not torch.allclose(a.samples, noise_only.samples)


def test_ddim_inversion_returns_the_data(gmm1d, oracle1d):
    """Encode x0 with DDIM (eta = 0) up the noise levels, decode back down: x0 comes back, with the
    round-trip error of a first-order method (halved when the steps double)."""
    x0, _ = gmm1d.sample(1000, torch.Generator().manual_seed(3))
    medians = []
    for steps in (200, 400):
        up = karras_sigmas(steps, 0.002, 80.0)[:-1].flip(0)
        latent = sample_ddim(oracle1d, x0.clone(), up)
        back = sample_ddim(
            oracle1d, latent, torch.cat([up.flip(0), torch.zeros(1, dtype=torch.float64)])
        )
        medians.append((back - x0).abs().median().item())
    assert medians[1] < 0.02, medians
    assert 1.7 < medians[0] / medians[1] < 2.3, medians


def test_discrete_grid_respacing():
    schedule = LinearSchedule(1000)
    sigmas = discrete_sigmas(schedule, 10)
    assert sigmas[0] == schedule.sigmas[-1] and sigmas[-2] == schedule.sigmas[0] and sigmas[-1] == 0
    assert (sigmas[1:] < sigmas[:-1]).all()
    with pytest.raises(
        ValueError, match=r"sampler.steps=1001 exceeds the schedule's num_timesteps=1000"
    ):
        discrete_sigmas(schedule, 1001)


def test_karras_grid_follows_edm_eq5():
    sigmas = karras_sigmas(18, 0.002, 80.0, 7.0)
    i = torch.arange(18, dtype=torch.float64)
    expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(sigmas[:-1], expected)
    assert sigmas[-1] == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            {"algorithm": "plms", "steps": 10},
            "unknown sampler algorithm 'plms'; allowed: ddpm, ddim, euler, heun, dpmpp_2m",
        ),
        ({"algorithm": "ddim", "steps": 0}, "sampler.steps must be a positive integer, got 0"),
        ({"algorithm": "ddim", "steps": -3}, "got -3"),
        ({"algorithm": "euler", "steps": 10, "grid": "cosine"}, "unknown sampler.grid 'cosine'"),
    ],
)
def test_bad_sampler_settings_are_refused(kwargs, match, oracle1d):
    with pytest.raises(ValueError, match=match):
        Sampler(**kwargs)(oracle1d, LinearSchedule(), (4, 1))


def test_learned_variance_needs_a_learned_variance_model(oracle1d):
    with pytest.raises(ValueError, match="needs a model trained with a learned variance"):
        Sampler("ddpm", 10, variance="learned")(oracle1d, LinearSchedule(), (4, 1))


class _LabelledDenoiser(torch.nn.Module):
    """x0 = class label (null label 2 -> 0.5): a conditional model with known outputs."""

    num_classes = 2

    def forward(self, x, sigma, class_labels=None):
        value = torch.where(class_labels == 2, 0.5, class_labels.to(x.dtype))
        return value[:, None].expand_as(x).clone()


def test_classifier_free_guidance_combines_conditional_and_unconditional():
    x, sigma, labels = torch.zeros(3, 1), torch.ones(3), torch.tensor([0, 1, 1])
    for w in (0.0, 1.0, 3.0):
        guided = ClassifierFreeGuidance(_LabelledDenoiser(), w)(x, sigma, labels)
        torch.testing.assert_close(guided[:, 0], 0.5 + w * (labels.float() - 0.5))


def test_guidance_on_an_unconditional_model_is_refused(oracle1d):
    with pytest.raises(ValueError, match=r"guidance_scale=3.0 needs a class-conditional model"):
        ClassifierFreeGuidance(oracle1d, 3.0)


class _LearnedVarianceDenoiser(torch.nn.Module):
    """A conditional denoiser with a learned variance: x0 = label, variance value = label / 10."""

    num_classes = 2
    learned_variance = True

    def predict(self, x, sigma, class_labels=None):
        from difforge.diffusion.parameterization import NetworkOutput

        value = class_labels.to(x.dtype)[:, None].expand_as(x).clone()
        return NetworkOutput(value, value, value / 10)

    def forward(self, x, sigma, class_labels=None):
        return self.predict(x, sigma, class_labels).x0


def test_guidance_guides_the_mean_and_takes_the_conditional_variance():
    """GLIDE / improved-diffusion: the mean is guided, the variance is the conditional branch's."""
    x, sigma, labels = torch.zeros(2, 1), torch.ones(2), torch.tensor([0, 1])
    guided = ClassifierFreeGuidance(_LearnedVarianceDenoiser(), 3.0)
    output = guided.predict(x, sigma, labels)
    # null label 2: x0_u = 2, x0_c = label; guided = 2 + 3 (label - 2)
    torch.testing.assert_close(output.x0[:, 0], 2 + 3 * (labels.float() - 2))
    torch.testing.assert_close(output.variance_value[:, 0], labels.float() / 10)
    assert guided.learned_variance and guided.num_classes == 2


def test_every_wrapper_forwards_the_denoiser_interface_and_counts_evaluations():
    from difforge.diffusion.parameterization import ClippedDenoiser

    inner = _LearnedVarianceDenoiser()
    guided = ClippedDenoiser(ClassifierFreeGuidance(inner, 3.0))
    assert guided.evals_per_call == 2 and guided.learned_variance and guided.num_classes == 2
    assert ClippedDenoiser(ClassifierFreeGuidance(inner, 1.0)).evals_per_call == 1
    x, sigma, labels = torch.zeros(2, 1), torch.ones(2), torch.tensor([0, 1])
    assert guided.predict(x, sigma, labels).variance_value is not None
    # ancestral sampling with the learned variance runs through both wrappers
    Sampler("ddpm", 4, variance="learned")(guided, LinearSchedule(), (2, 1), class_labels=labels)
