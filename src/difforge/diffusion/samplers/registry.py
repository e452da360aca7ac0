"""Every sampling algorithm, registered once: its function, whether it draws fresh noise, its
network evaluations per step, the checker of its options and its default grid per kind of
schedule. Scripts, configs, benchmarks and lessons read ``SAMPLERS``; adding a solver is its
file plus one entry here plus ``configs/sampler/<name>.yaml``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from difforge.diffusion.samplers.ddim import check_ddim_options, sample_ddim
from difforge.diffusion.samplers.ddpm import check_ddpm_options, sample_ddpm
from difforge.diffusion.samplers.deis import check_deis_options, sample_deis
from difforge.diffusion.samplers.dpmpp_2m import sample_dpmpp_2m
from difforge.diffusion.samplers.dpmpp_2m_sde import sample_dpmpp_2m_sde
from difforge.diffusion.samplers.dpmpp_2s_ancestral import sample_dpmpp_2s_ancestral
from difforge.diffusion.samplers.dpmpp_3m import sample_dpmpp_3m
from difforge.diffusion.samplers.dpmpp_3m_sde import sample_dpmpp_3m_sde
from difforge.diffusion.samplers.dpmpp_multistep import check_dpmpp_multistep_options
from difforge.diffusion.samplers.dpmpp_singlestep import (
    check_dpmpp_singlestep_options,
    sample_dpmpp_singlestep,
)
from difforge.diffusion.samplers.euler import check_churn, sample_euler
from difforge.diffusion.samplers.euler_ancestral import (
    check_ancestral_options,
    sample_euler_ancestral,
)
from difforge.diffusion.samplers.heun import sample_heun
from difforge.diffusion.samplers.unipc import check_unipc_options, sample_unipc
from difforge.diffusion.schedules import NoiseSchedule

# Arguments every solver takes that are not user options.
_COMMON = frozenset({"denoiser", "x", "sigmas", "generator", "callback", "class_labels"})


def _no_options(**options: Any) -> None:
    """Solvers without option values to check."""


@dataclass(frozen=True)
class SamplerSpec:
    """One sampling algorithm.

    Attributes:
        name: the config name (``sampler=<name>``).
        fn: ``fn(denoiser, x, sigmas, *, generator, callback, class_labels, **options) -> x0``.
        stochastic: draws fresh noise at each step (ancestral / SDE solvers).
        noise_options: options that make the solver stochastic when > 0 (DDIM's and the SDE
            solvers' ``eta``, EDM's ``S_churn``), with the default of the solver's signature.
        evals_per_step: network evaluations per step; a step to sigma = 0 needs one only.
        check: raises ValueError for bad option values (names are checked from ``fn``).
        defaults: per kind of schedule (``discrete``, ``continuous``), the ``Sampler``
            settings used when the user leaves them unset: ``grid``, ``final_sigma`` and any of
            the solver's options; the best measured at 5-20 NFE by
            ``scripts/bench_samplers.py`` (docs/benchmarks.md, section 3, "grid choice").
            Options not named here keep the default of the solver's signature.
        multistep_spacing: read the ``linspace`` and ``leading`` grids as diffusers' multistep
            schedulers do (``sigma_grids.MULTISTEP_SPACINGS``), for the solvers diffusers runs
            in those schedulers.
    """

    name: str
    fn: Callable[..., Tensor]
    stochastic: bool
    description: str
    evals_per_step: int = 1
    noise_options: tuple[str, ...] = ()
    check: Callable[..., None] = _no_options
    defaults: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"discrete": {"grid": "trailing"}, "continuous": {"grid": "karras"}}
    )
    multistep_spacing: bool = False

    @property
    def options(self) -> tuple[str, ...]:
        """The solver's own keyword options, read from its signature."""
        return tuple(p for p in inspect.signature(self.fn).parameters if p not in _COMMON)

    def is_stochastic(self, options: dict[str, Any]) -> bool:
        defaults = inspect.signature(self.fn).parameters
        return self.stochastic or any(
            options.get(name, defaults[name].default) > 0 for name in self.noise_options
        )

    def defaults_for(self, schedule: NoiseSchedule) -> dict[str, Any]:
        """``grid``, ``final_sigma`` and the option values used on ``schedule`` when unset."""
        chosen = self.defaults["discrete" if schedule.is_discrete else "continuous"]
        return {"final_sigma": "zero", **chosen}

    def default_grid(self, schedule: NoiseSchedule) -> str:
        return str(self.defaults_for(schedule)["grid"])

    def nfe(self, steps: int, final_zero: bool = True, from_infinity: bool = False) -> int:
        """Network evaluations per sample for ``steps`` steps; a step to sigma = 0 and the exact
        first step from sigma = inf (zero terminal SNR) take one evaluation."""
        single = int(final_zero) + int(from_infinity and steps > 1)
        return self.evals_per_step * steps - (self.evals_per_step - 1) * single


# Defaults measured best at 5-20 NFE on the exact score (docs/benchmarks.md, section 3, "grid
# choice"): the flow grid (t = sigma / (1 + sigma) uniform) ending at sigma_min wins for most.
FLOW_MIN: dict[str, Any] = {"grid": "flow", "final_sigma": "min"}


def _on_both(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The same default settings on discrete and continuous schedules."""
    return {kind: dict(settings) for kind in ("discrete", "continuous")}


SAMPLERS: dict[str, SamplerSpec] = {
    spec.name: spec
    for spec in (
        SamplerSpec(
            "ddpm",
            sample_ddpm,
            True,
            "ancestral DDPM (Ho et al. 2020)",
            check=check_ddpm_options,
            defaults=_on_both({**FLOW_MIN, "variance": "large"}),
        ),
        SamplerSpec(
            "ddim",
            sample_ddim,
            False,
            "DDIM (Song et al. 2021), eta",
            noise_options=("eta",),
            check=check_ddim_options,
            defaults={"discrete": {"grid": "trailing"}, "continuous": FLOW_MIN},
        ),
        SamplerSpec(
            "euler",
            sample_euler,
            False,
            "Euler, EDM churn",
            noise_options=("S_churn",),
            check=check_churn,
            defaults={"discrete": {"grid": "trailing"}, "continuous": FLOW_MIN},
        ),
        SamplerSpec(
            "heun",
            sample_heun,
            False,
            "Heun (EDM alg. 2)",
            2,
            noise_options=("S_churn",),
            check=check_churn,
            defaults={
                "discrete": {"grid": "leading"},
                "continuous": {"grid": "karras", "final_sigma": "min"},
            },
        ),
        SamplerSpec(
            "dpmpp_2m",
            sample_dpmpp_2m,
            False,
            "DPM-Solver++(2M) (Lu et al. 2022)",
            check=check_dpmpp_multistep_options,
            defaults=_on_both({**FLOW_MIN, "solver_type": "heun"}),
            multistep_spacing=True,
        ),
        SamplerSpec(
            "dpmpp_3m",
            sample_dpmpp_3m,
            False,
            "DPM-Solver++(3M) (Lu et al. 2022)",
            check=check_dpmpp_multistep_options,
            defaults=_on_both({**FLOW_MIN, "solver_type": "heun"}),
            multistep_spacing=True,
        ),
        SamplerSpec(
            "dpmpp_2m_sde",
            sample_dpmpp_2m_sde,
            False,
            "SDE-DPM-Solver++(2M), eta",
            noise_options=("eta",),
            check=check_dpmpp_multistep_options,
            defaults=_on_both(FLOW_MIN),
            multistep_spacing=True,
        ),
        SamplerSpec(
            "dpmpp_3m_sde",
            sample_dpmpp_3m_sde,
            False,
            "SDE-DPM-Solver++(3M), eta",
            noise_options=("eta",),
            check=check_dpmpp_multistep_options,
            defaults=_on_both(FLOW_MIN),
            multistep_spacing=True,
        ),
        SamplerSpec(
            "dpmpp_singlestep",
            sample_dpmpp_singlestep,
            False,
            "singlestep DPM-Solver++(1S/2S/3S) (Lu et al. 2022), order 1-3",
            check=check_dpmpp_singlestep_options,
            defaults=_on_both(FLOW_MIN),
            multistep_spacing=True,
        ),
        SamplerSpec(
            "euler_ancestral",
            sample_euler_ancestral,
            False,
            "Euler ancestral (k-diffusion), eta",
            noise_options=("eta",),
            check=check_ancestral_options,
            defaults=_on_both(FLOW_MIN),
        ),
        SamplerSpec(
            "dpmpp_2s_ancestral",
            sample_dpmpp_2s_ancestral,
            False,
            "DPM-Solver++(2S) ancestral, eta",
            2,
            noise_options=("eta",),
            check=check_ancestral_options,
            defaults=_on_both(FLOW_MIN),
        ),
        SamplerSpec(
            "unipc",
            sample_unipc,
            False,
            "UniPC (Zhao et al. 2023), bh1/bh2, order 1-3",
            check=check_unipc_options,
            defaults=_on_both(FLOW_MIN),
            multistep_spacing=True,
        ),
        SamplerSpec(
            "deis",
            sample_deis,
            False,
            "DEIS (Zhang & Chen 2023), order 1-3",
            check=check_deis_options,
            defaults={
                "discrete": {"grid": "log_snr", "final_sigma": "min", "order": 3},
                "continuous": {"grid": "karras", "final_sigma": "min", "order": 3},
            },
            multistep_spacing=True,
        ),
    )
}


def get_sampler_spec(name: str) -> SamplerSpec:
    """Raises ValueError naming the registered samplers for an unknown ``name``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler algorithm {name!r}; allowed: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
