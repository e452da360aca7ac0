"""Sigma grids: endpoints, monotonicity, the published formulas, diffusers' timestep spacings,
zero terminal SNR, and the one-line errors."""

import math

import pytest
import torch

from difforge.diffusion.gaussian_mixture import GaussianMixture, GaussianMixtureOracle
from difforge.diffusion.parameterization import (
    PARAMETERIZATIONS,
    Denoiser,
    noisy_input,
)
from difforge.diffusion.samplers import SAMPLERS, Sampler
from difforge.diffusion.schedules import CosineSchedule, EDMSchedule, LinearSchedule
from difforge.diffusion.sigma_grids import (
    CONTINUOUS_GRIDS,
    GRIDS,
    TIMESTEP_SPACINGS,
    sigma_grid,
)
from difforge.metrics.mixture import mixture_metrics

SCHEDULES = [
    LinearSchedule(),
    CosineSchedule(),
    EDMSchedule(),
    LinearSchedule(rescale_zero_terminal_snr=True),
]


def _id(schedule):
    return schedule.name + ("_zsnr" if getattr(schedule, "rescale_zero_terminal_snr", 0) else "")


@pytest.mark.parametrize("final_sigma", ["zero", "min"])
@pytest.mark.parametrize("steps", [1, 2, 5, 18])
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("schedule", SCHEDULES, ids=_id)
def test_grid_endpoints_and_monotonicity(schedule, grid, steps, final_sigma):
    if grid in TIMESTEP_SPACINGS and not schedule.is_discrete:
        with pytest.raises(ValueError, match="needs a discrete schedule"):
            sigma_grid(schedule, steps, grid)
        return
    sigmas = sigma_grid(schedule, steps, grid, final_sigma=final_sigma)
    assert sigmas.dtype == torch.float64
    assert (sigmas[1:] < sigmas[:-1]).all(), sigmas
    final = 0.0 if final_sigma == "zero" else schedule.sigma_min
    assert sigmas[-1] == pytest.approx(final, rel=1e-12, abs=0)
    assert len(sigmas) == steps + 1  # one level per step
    if grid in ("trailing", "karras", "log_snr", "exponential", "polynomial"):
        assert sigmas[0] == pytest.approx(schedule.sigma_max, rel=1e-12)  # inf under zero SNR


@pytest.mark.parametrize("spacing", list(TIMESTEP_SPACINGS))
@pytest.mark.parametrize("steps", [5, 10, 20, 50])
def test_timestep_spacings_equal_diffusers(spacing, steps):
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", timestep_spacing=spacing
    )
    scheduler.set_timesteps(steps)
    ours = TIMESTEP_SPACINGS[spacing](1000, steps)
    assert ours.tolist() == scheduler.timesteps.tolist()
    torch.testing.assert_close(
        LinearSchedule().alphas_cumprod, scheduler.alphas_cumprod.double(), rtol=1e-6, atol=0
    )


def test_continuous_grids_follow_their_formulas():
    lo, hi, n = 0.002, 80.0, 10
    i = torch.arange(n, dtype=torch.float64)
    karras = (hi ** (1 / 7) + i / (n - 1) * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
    log_uniform = hi * (lo / hi) ** (i / (n - 1))
    polynomial = (1 - i / (n - 1)) ** 3 * (hi - lo) + lo
    schedule = EDMSchedule(sigma_min=lo, sigma_max=hi)
    torch.testing.assert_close(sigma_grid(schedule, n, "karras")[:-1], karras)
    for name in ("log_snr", "exponential"):
        torch.testing.assert_close(sigma_grid(schedule, n, name)[:-1], log_uniform)
    torch.testing.assert_close(sigma_grid(schedule, n, "polynomial", rho=3.0)[:-1], polynomial)
    assert set(CONTINUOUS_GRIDS) == {"karras", "log_snr", "exponential", "polynomial", "flow"}


def test_a_clipped_top_is_never_a_grid_level():
    cosine = CosineSchedule()
    for grid in GRIDS:
        top = sigma_grid(cosine, 10, grid)[0]
        assert top <= cosine.sigmas[-2]  # 642, not 2.0e4
        assert grid == "leading" or top == pytest.approx(float(cosine.sigmas[-2]), rel=1e-12)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            {"grid": "cosine"},
            r"unknown sampler.grid 'cosine'; allowed: linspace, leading, trailing, karras",
        ),
        ({"final_sigma": "none"}, r"unknown sampler.final_sigma 'none'; allowed: zero, min"),
        ({"final_sigma": 0}, r"unknown sampler.final_sigma 0; allowed: zero, min"),
        ({"final_sigma": False}, r"unknown sampler.final_sigma False; allowed: zero, min"),
        ({"rho": 0.0}, r"sampler.rho must be > 0, got 0.0"),
        ({"S_chrun": 1.0}, r"unknown option 'S_chrun' for sampler 'ddim'; its options: eta$"),
        ({"etaa": 1.0}, r"its options: eta; did you mean 'eta'\?$"),
        ({"eta": -1.0}, r"sampler.eta must be >= 0, got -1.0"),
    ],
)
def test_bad_options_are_refused_when_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sampler("ddim", 5, **kwargs)


def test_a_sigma_range_on_a_timestep_spacing_is_refused():
    with pytest.raises(ValueError, match="sigma_min/sigma_max apply only to karras"):
        Sampler("ddim", 5, grid="trailing", sigma_max=10.0).sigmas(LinearSchedule())


# ----- zero terminal SNR (Lin et al. 2024)
class _PerfectNetwork(torch.nn.Module):
    """The network output that makes ``Denoiser`` equal the oracle: F* = (x0 - c_skip x) / c_out
    computed from the oracle's x0 at the VE point the Denoiser reconstructs."""

    def __init__(self, oracle, schedule, parameterization):
        super().__init__()
        self.oracle, self.schedule, self.parameterization = oracle, schedule, parameterization

    def forward(self, net_input, noise_labels, class_labels=None):
        sigma = self.schedule.sigmas[noise_labels.round().long()]
        c_skip, c_out, c_in = self.parameterization.coefficients(sigma)
        at_inf = sigma.isinf()[:, None]
        x = torch.where(at_inf, net_input, net_input / c_in[:, None])
        x0 = self.oracle(x, sigma)
        skip_limit = self.parameterization.skip_at_infinity * x
        skip = torch.where(at_inf, skip_limit, c_skip[:, None] * x)
        return (x0 - skip) / c_out[:, None]


@pytest.mark.parametrize("name", ["v", "x0", "edm", "flow"])
def test_perfect_network_denoises_pure_noise(name, oracle1d, gmm1d):
    schedule = LinearSchedule(rescale_zero_terminal_snr=True)
    param = PARAMETERIZATIONS[name]()
    denoiser = Denoiser(_PerfectNetwork(oracle1d, schedule, param), schedule, param)
    z = torch.randn(6, 1, dtype=torch.float64)
    sigma = schedule.sigmas[[999, 999, 998, 500, 10, 0]]
    x = noisy_input(torch.zeros_like(z), z, sigma)
    torch.testing.assert_close(denoiser(x, sigma), oracle1d(x, sigma), rtol=1e-6, atol=1e-6)
    mean = float((gmm1d.weights * gmm1d.means[:, 0]).sum())
    torch.testing.assert_close(oracle1d(x, sigma)[:2], torch.full((2, 1), mean).double())


def test_eps_prediction_is_refused_under_zero_terminal_snr():
    schedule = LinearSchedule(rescale_zero_terminal_snr=True)
    with pytest.raises(ValueError, match="parameterization=eps cannot predict x0 from pure noise"):
        Denoiser(torch.nn.Identity(), schedule, PARAMETERIZATIONS["eps"]())


@pytest.mark.parametrize("name", ["v", "x0", "edm", "flow"])
def test_targets_are_finite_at_infinite_sigma(name):
    x0, noise = torch.randn(4, 3), torch.randn(4, 3)
    sigma = torch.tensor([math.inf, 1e3, 1.0, 1e-3])
    target = PARAMETERIZATIONS[name]().target(x0, noise, sigma)
    assert torch.isfinite(target).all()
    if name == "v":  # v = alpha eps - sigma_vp x0 -> -x0 as abar -> 0
        torch.testing.assert_close(target[0], -x0[0])


@pytest.mark.parametrize("algorithm", list(SAMPLERS))
def test_every_sampler_starts_from_pure_noise(algorithm, gmm1d, oracle1d):
    """With abar_T = 0 the first step is exact (x0 = E[x0], then x0 + sigma_1 n): finite, and the
    mixture comes out at about 100 NFE."""
    spec = SAMPLERS[algorithm]
    n = 20_000
    schedule = LinearSchedule(rescale_zero_terminal_snr=True)
    sampler = Sampler(algorithm, 1, grid="trailing")
    sampler = sampler.replace(steps=sampler.steps_for_nfe(100, schedule))
    final_zero = sampler.final_sigma_for(schedule) == "zero"
    result = sampler(
        oracle1d,
        schedule,
        (n, 1),
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(0),
    )
    assert math.isinf(result.sigmas[0]) and torch.isfinite(result.samples).all()
    assert result.nfe == sampler.nfe(schedule) == spec.nfe(sampler.steps, final_zero, True)
    metrics = mixture_metrics(result.samples, gmm1d)
    assert metrics["w1"] < 0.06 and metrics["mode_mass_error"] < 0.02, metrics


@pytest.mark.parametrize(
    "final_sigma,budgets",
    # Heun: 2 evaluations per step, one for a last step to sigma = 0 (EDM alg. 2).
    [("zero", {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 50: 25}), ("min", {2: 1, 3: 1, 4: 2, 5: 2, 50: 25})],
)
def test_steps_for_nfe_is_the_most_steps_within_the_budget(final_sigma, budgets):
    schedule = LinearSchedule()
    heun = Sampler("heun", 7, final_sigma=final_sigma)
    for nfe, steps in budgets.items():
        assert heun.steps_for_nfe(nfe, schedule) == steps
        assert heun.replace(steps=steps).nfe(schedule) <= nfe
    assert Sampler("ddim", 3).steps_for_nfe(10, schedule) == 10
    with pytest.raises(ValueError, match="heun needs more than 1 evaluations for one step"):
        Sampler("heun", 1, final_sigma="min").steps_for_nfe(1, schedule)


def test_one_step_from_pure_noise_returns_the_mean(oracle1d, gmm1d):
    result = Sampler("ddim", 1, grid="trailing")(
        oracle1d, LinearSchedule(rescale_zero_terminal_snr=True), (3, 1), dtype=torch.float64
    )
    mean = float((gmm1d.weights * gmm1d.means[:, 0]).sum())
    torch.testing.assert_close(result.samples, torch.full((3, 1), mean).double())
    assert result.nfe == 1


def test_noise_argument_reproduces_the_generator(oracle1d):
    schedule = LinearSchedule()
    sampler = Sampler("dpmpp_2m", 8)
    drawn = sampler(oracle1d, schedule, (5, 1), generator=torch.Generator().manual_seed(4))
    noise = torch.randn(5, 1, generator=torch.Generator().manual_seed(4))
    given = sampler(oracle1d, schedule, (5, 1), noise=noise)
    torch.testing.assert_close(given.samples, drawn.samples)
    with pytest.raises(ValueError, match=r"noise has shape \(4, 1\), the samples need \(5, 1\)"):
        sampler(oracle1d, schedule, (5, 1), noise=noise[:4])


def test_start_is_the_vp_prior(oracle1d):
    """The starting draw of a VP schedule is sqrt(1 + sigma_T^2) n, of EDM's sigma_max n."""
    starts = {}
    for schedule in (LinearSchedule(), EDMSchedule()):

        def grab(info, schedule=schedule):
            if info["i"] == 0:
                starts[schedule.name] = info["x"].clone()

        noise = torch.ones(2, 1, dtype=torch.float64)
        Sampler("euler", 3)(
            oracle1d, schedule, (2, 1), noise=noise, callback=grab, dtype=torch.float64
        )
    assert starts["linear"][0, 0] == pytest.approx(math.sqrt(1 + LinearSchedule().sigma_max ** 2))
    assert starts["edm"][0, 0] == pytest.approx(80.0)


def test_guidance_counts_both_halves(oracle1d):
    class Doubled(GaussianMixtureOracle):
        evals_per_call = 2

    doubled = Doubled(GaussianMixture([1.0], [0.0], [1.0]))
    heun = Sampler("heun", 5, final_sigma="zero")
    assert heun(doubled, LinearSchedule(), (2, 1)).nfe == 2 * 9
    assert heun.replace(final_sigma="min")(doubled, LinearSchedule(), (2, 1)).nfe == 2 * 10


def test_every_registered_sampler_has_its_config():
    from omegaconf import OmegaConf

    from helpers import ROOT

    configs = {p.stem: p for p in (ROOT / "configs" / "sampler").glob("*.yaml")}
    assert set(configs) == set(SAMPLERS)
    for name, path in configs.items():
        cfg = OmegaConf.to_container(OmegaConf.load(path))
        del cfg["_target_"]
        sampler = Sampler(**cfg)
        settings = {"algorithm", "steps", "grid", "final_sigma", "sigma_min", "sigma_max", "rho"}
        assert sampler.algorithm == name and set(cfg) - settings == set(SAMPLERS[name].options)
