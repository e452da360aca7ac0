"""diffusers' schedulers on the exact score: every configuration that fits, one sampling loop.

Each scheduler gets the noise prediction a perfect eps-network would give,

    eps(x_vp, sigma) = (x_vp - sqrt(abar) D(x_vp / sqrt(abar), sigma)) / sqrt(1 - abar),
    abar = 1 / (1 + sigma^2),

with ``D`` the oracle (``GaussianMixtureOracle``, float64), ``x_vp`` the scaled model input
(``scheduler.scale_model_input``) and ``sigma`` the noise level the scheduler itself pairs with
that call (``call_sigma``). With Karras / exponential / beta / log-SNR sigmas the timestep a
network would receive is rounded; the oracle gets the unrounded sigma, diffusers' best case.

The configurations (``peer_configs``) cover DDPM, DDIM, Euler, Euler ancestral, Heun, LMS,
KDPM2 (and ancestral), DPM-Solver++ 2M/3M multistep (ODE and SDE), DPM-Solver++ singlestep
2S/3S, UniPC bh1/bh2 orders 2-3 and DEIS orders 2-3, each over ``timestep_spacing`` (leading,
trailing, linspace), sigma kinds (the table's own, Karras, exponential; log-SNR for
DPM-Solver) and ``final_sigmas_type`` where the scheduler has them; DPM-Solver++ (ODE) with
both ``solver_type`` (midpoint, heun), the SDE variants with diffusers' default (midpoint);
other options at diffusers' defaults (``lower_order_final``). ``use_beta_sigmas`` is left out
to keep the grid affordable on two shared cores. ``DPMSolverSDEScheduler``
needs ``torchsde`` (not a dependency) and is left out. ``clip_sample`` and thresholding are off
(they clip x0 to [-1, 1], meant for images; the mixtures live in about [-5, 5]).

NFE: each scheduler's sampling loop makes one network call per entry of ``scheduler.timesteps``
(Heun, KDPM2: 2 per step minus one), so a run at a budget of ``nfe`` uses the largest
``num_inference_steps`` whose ``len(timesteps) <= nfe``, and counts the calls it made.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from difforge.diffusion.gaussian_mixture import GaussianMixtureOracle
from difforge.diffusion.schedules import CosineSchedule, LinearSchedule, NoiseSchedule

SPACINGS = ("leading", "trailing", "linspace")
SIGMA_KINDS: dict[str, dict[str, bool]] = {
    "table": {},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
}
LOG_SNR = {"log_snr": {"use_lu_lambdas": True}}  # DPMSolverMultistep only
FINAL_SIGMAS = ("zero", "sigma_min")
# Schedulers whose latents live in sigma space (VE): scale_model_input divides by sqrt(1 + s^2).
VE_LATENT = {
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "LMSDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
}
# Schedulers that read abar at the integer timestep rather than keeping a sigma table.
ABAR_TABLE = {"DDPMScheduler", "DDIMScheduler"}
# diffusers' relative precision of alphas_cumprod (float32 betas, float32 cumprod over T terms).
ALPHAS_CUMPROD_RTOL = 1e-4


@dataclass(frozen=True)
class PeerConfig:
    """One diffusers scheduler configuration.

    ``family`` names the algorithm (``dpmpp_2m``, ``unipc_bh2`` ...) for the per-sampler table;
    ``kwargs`` go to the scheduler's constructor on top of the schedule's betas.
    """

    family: str
    scheduler: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    stochastic: bool = False

    @property
    def label(self) -> str:
        parts = [self.scheduler.removesuffix("Scheduler")]
        parts += [f"{k}={v}" for k, v in sorted(self.kwargs.items())]
        return " ".join(parts)


def _spaced(
    family: str,
    scheduler: str,
    base: dict[str, Any],
    sigma_kinds: dict[str, dict[str, bool]],
    finals: tuple[str, ...] = (),
    spacings: tuple[str, ...] = SPACINGS,
    stochastic: bool = False,
) -> Iterator[PeerConfig]:
    """The product of timestep spacings, sigma kinds and final sigmas for one scheduler."""
    for spacing, kind, final in itertools.product(spacings, sigma_kinds, finals or (None,)):
        kwargs = dict(base, **sigma_kinds[kind])
        if spacing is not None:
            kwargs["timestep_spacing"] = spacing
        if final is not None:
            kwargs["final_sigmas_type"] = final
        yield PeerConfig(family, scheduler, kwargs, stochastic)


def peer_configs() -> list[PeerConfig]:
    """Every diffusers configuration the benchmark tries (module docstring)."""
    table: dict[str, dict[str, bool]] = {"table": {}}
    dpm_sigmas = SIGMA_KINDS | LOG_SNR
    configs: list[PeerConfig] = []
    for variance in ("fixed_small", "fixed_large"):
        configs += _spaced(
            "ddpm",
            "DDPMScheduler",
            {"variance_type": variance, "clip_sample": False},
            table,
            stochastic=True,
        )
    for alpha_to_one in (True, False):
        configs += _spaced(
            "ddim", "DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": alpha_to_one}, table
        )
    configs += _spaced("euler", "EulerDiscreteScheduler", {}, SIGMA_KINDS)
    configs += _spaced(
        "euler_ancestral", "EulerAncestralDiscreteScheduler", {}, table, stochastic=True
    )
    configs += _spaced("heun", "HeunDiscreteScheduler", {}, SIGMA_KINDS)
    configs += _spaced("lms", "LMSDiscreteScheduler", {}, SIGMA_KINDS)
    configs += _spaced("dpm_2", "KDPM2DiscreteScheduler", {}, SIGMA_KINDS)
    configs += _spaced(
        "dpm_2_ancestral", "KDPM2AncestralDiscreteScheduler", {}, SIGMA_KINDS, stochastic=True
    )
    for order, name in ((2, "2m"), (3, "3m")):
        for algorithm, suffix, stochastic in (
            ("dpmsolver++", "", False),
            ("sde-dpmsolver++", "_sde", True),
        ):
            # The SDE variants keep diffusers' default solver type (midpoint).
            for solver_type in ("midpoint", "heun") if not stochastic else ("midpoint",):
                configs += _spaced(
                    f"dpmpp_{name}{suffix}",
                    "DPMSolverMultistepScheduler",
                    {
                        "solver_order": order,
                        "algorithm_type": algorithm,
                        "solver_type": solver_type,
                    },
                    dpm_sigmas,
                    FINAL_SIGMAS,
                    stochastic=stochastic,
                )
        configs += _spaced(
            f"dpmpp_{order}s",
            "DPMSolverSinglestepScheduler",
            {"solver_order": order},
            SIGMA_KINDS,
            FINAL_SIGMAS,
            spacings=(None,),  # type: ignore[arg-type]  # no timestep_spacing option
        )
        for variant in ("bh1", "bh2"):
            configs += _spaced(
                f"unipc_{variant}",
                "UniPCMultistepScheduler",
                {"solver_order": order, "solver_type": variant},
                SIGMA_KINDS,
                FINAL_SIGMAS,
            )
        configs += _spaced("deis", "DEISMultistepScheduler", {"solver_order": order}, SIGMA_KINDS)
    return configs


def schedule_kwargs(schedule: NoiseSchedule) -> dict[str, Any]:
    """diffusers' betas for a difforge schedule: ``linear`` (same beta_start, beta_end) and
    ``cosine`` (``squaredcos_cap_v2``: Nichol & Dhariwal's s = 0.008, betas clipped at 0.999).

    Raises:
        ValueError: for other schedules, or when diffusers' alphas_cumprod differ from the
            schedule's by more than float32 rounding (checked by ``check_alphas_cumprod``).
    """
    if isinstance(schedule, LinearSchedule):
        kwargs = {
            "beta_schedule": "linear",
            "beta_start": float(schedule.betas[0]),
            "beta_end": float(schedule.betas[-1]),
        }
    elif isinstance(schedule, CosineSchedule):
        kwargs = {"beta_schedule": "squaredcos_cap_v2"}
    else:
        raise ValueError(
            f"the diffusers comparison needs a linear or cosine schedule, got {schedule.name!r}"
        )
    return {"num_train_timesteps": schedule.num_timesteps, "prediction_type": "epsilon", **kwargs}


def check_alphas_cumprod(scheduler: Any, schedule: NoiseSchedule) -> None:
    """ValueError unless the scheduler's alphas_cumprod equal the schedule's (float32 rounding)."""
    theirs = scheduler.alphas_cumprod.to(torch.float64)
    ours = schedule.alphas_cumprod  # type: ignore[attr-defined]
    gap = float(((theirs - ours).abs() / ours).max())
    if gap > ALPHAS_CUMPROD_RTOL:
        raise ValueError(
            f"diffusers' alphas_cumprod differ from the {schedule.name} schedule's by {gap:.2e} "
            f"(relative), more than {ALPHAS_CUMPROD_RTOL}"
        )


def build_scheduler(config: PeerConfig, schedule: NoiseSchedule) -> Any:
    """The diffusers scheduler of ``config`` on ``schedule`` (alphas_cumprod checked)."""
    import diffusers

    # Its notes that it turned lower_order_final on for odd step counts (the configurations
    # run it as it does) would fill the benchmark's output.
    diffusers.utils.logging.set_verbosity_error()
    scheduler = getattr(diffusers, config.scheduler)(**schedule_kwargs(schedule), **config.kwargs)
    check_alphas_cumprod(scheduler, schedule)
    return scheduler


def steps_for_nfe(scheduler: Any, nfe: int) -> int:
    """The largest ``num_inference_steps`` whose loop makes at most ``nfe`` calls."""
    for steps in range(nfe, 0, -1):
        scheduler.set_timesteps(steps)
        if len(scheduler.timesteps) <= nfe:
            return steps
    raise ValueError(f"{type(scheduler).__name__} needs more than {nfe} calls for one step")


def call_sigma(scheduler: Any, i: int, t: Tensor) -> float:
    """The noise level (VE sigma) the scheduler pairs with call ``i`` at timestep ``t``: the same
    sigma its ``scale_model_input`` and ``step`` use."""
    name = type(scheduler).__name__
    if name in ABAR_TABLE:
        abar = float(scheduler.alphas_cumprod[int(t)])
        return math.sqrt((1 - abar) / abar)
    index = i if scheduler.step_index is None else scheduler.step_index
    if name.startswith("KDPM2") and not scheduler.state_in_first_order:
        # The second call of a KDPM2 step is at the interpolated sigma (ancestral: one behind).
        return float(scheduler.sigmas_interpol[index - (name == "KDPM2AncestralDiscreteScheduler")])
    if index != i and name not in VE_LATENT:  # VE latents: run_peer checks the input scale
        raise RuntimeError(f"{name}: step_index {index} at call {i}")
    return float(scheduler.sigmas[index])


def exact_eps(oracle: GaussianMixtureOracle, x_vp: Tensor, sigma: float) -> Tensor:
    """The exact noise prediction at the VP latent ``x_vp`` of noise level ``sigma`` (VE)."""
    abar = 1.0 / (1.0 + sigma**2)
    x64 = x_vp.to(torch.float64)
    denoised = oracle(
        x64 / math.sqrt(abar), torch.full((x_vp.shape[0],), sigma, dtype=torch.float64)
    )
    return ((x64 - math.sqrt(abar) * denoised) / math.sqrt(1 - abar)).to(x_vp.dtype)


def run_peer(
    config: PeerConfig,
    schedule: NoiseSchedule,
    oracle: GaussianMixtureOracle,
    nfe: int,
    noise: Tensor,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """Sample with one configuration from the unit-variance latent ``noise`` (N, D).

    Returns the samples and the number of oracle calls (<= ``nfe``). ``generator`` feeds the
    stochastic schedulers' noise.
    """
    scheduler = build_scheduler(config, schedule)
    scheduler.set_timesteps(steps_for_nfe(scheduler, nfe))
    if hasattr(scheduler, "set_begin_index"):
        # Start at the first timestep even when the grid repeats it (rounded Karras / beta
        # sigmas on the cosine schedule): without it diffusers starts at the repeat.
        scheduler.set_begin_index(0)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    x = noise * float(scheduler.init_noise_sigma)
    calls = 0
    for i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(x, t)
        sigma = call_sigma(scheduler, i, t)
        if config.scheduler in VE_LATENT:  # the sigma we read is the one that scaled the input
            expected = x[:1] / math.sqrt(1 + sigma**2)
            if not torch.allclose(model_input[:1], expected, rtol=1e-4, atol=1e-6):
                raise RuntimeError(f"{config.label}: call {i} is not at sigma {sigma}")
        eps = exact_eps(oracle, model_input, sigma)
        calls += 1
        extra = {"generator": generator} if takes_generator else {}
        x = scheduler.step(eps, t, x, **extra).prev_sample
    return x, calls
