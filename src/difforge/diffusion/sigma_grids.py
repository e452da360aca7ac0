"""Decreasing grids of noise levels for samplers: ``steps + 1`` float64 values, the last one 0
(``final_sigma="zero"``) or the schedule's smallest sigma (``final_sigma="min"``).

Timestep spacings of a discrete schedule's own table (diffusers' ``timestep_spacing``; Lin et al.
2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", table 2), with T the
number of training timesteps and N the steps (timestep index ``t - 1`` in ``[0, T - 1]``):

- ``linspace``: ``round(linspace(0, T - 1, N))``, reversed (DDIM's "uniform" with both ends);
- ``leading``:  ``arange(N) * (T // N)``, reversed (DDIM, Stable Diffusion);
- ``trailing``: ``round(arange(T, 0, -T / N)) - 1`` (starts at t = T: pure noise under zero
  terminal SNR; Lin et al., sec. 3.3).

diffusers' multistep schedulers (DPMSolverMultistep, UniPCMultistep, DEISMultistep) read
``linspace`` and ``leading`` differently, and so do the samplers registered with
``multistep_spacing`` (``SamplerSpec``): the spacing is laid over ``N + 1`` points and its last
one, t = 1, is dropped, so the last step runs from the lowest kept timestep to the final level
instead of spending an evaluation between sigma at t = 1 and 0:

- ``linspace``: ``round(linspace(0, T - 1, N + 1))``, reversed, without its last 0;
- ``leading``:  ``arange(N + 1) * (T // (N + 1))``, reversed, without its last 0.

Continuous grids between ``sigma_min`` and ``sigma_max`` (any schedule; a discrete network is
queried at fractional timesteps):

- ``karras``: Karras et al. 2022 (EDM), eq. 5,
  sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, rho = 7;
- ``log_snr``: uniform in lambda = log SNR / 2 = -log sigma (Lu et al. 2022, DPM-Solver,
  sec. 3.3, "time-uniform lambda"; diffusers' ``use_lu_lambdas``);
- ``exponential``: uniform in log sigma (k-diffusion's ``get_sigmas_exponential``, diffusers'
  ``use_exponential_sigmas``). In the VE frame this is the same grid as ``log_snr``; both names
  are kept because users know both;
- ``flow``: rectified flow's grid (diffusers' FlowMatchEulerDiscreteScheduler): t uniform
  between t(sigma_max) and t(sigma_min) before SD3's shift (Esser et al. 2024, sec. 5.3.2),
  sigma_i = shift t_i / (1 - t_i), with the schedule's ``shift`` (1 for other schedules);
- ``polynomial``: sigma_i = (1 - i/(N-1))^rho (sigma_max - sigma_min) + sigma_min
  (k-diffusion's ``get_sigmas_polynomial``), rho = 7 by default (rho = 1 is uniform in sigma).

A schedule with zero terminal SNR has ``sigma_max = inf``; the continuous grids then start at
inf and spend their other N - 1 levels between sigma_min and the largest finite sigma.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from difforge.diffusion.schedules import DiscreteSchedule, NoiseSchedule, require_discrete

FINAL_SIGMAS = ("zero", "min")
DEFAULT_RHO = {"karras": 7.0, "polynomial": 7.0}


def check_steps(steps: int) -> None:
    """Raises ValueError unless ``steps`` is a positive integer."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"sampler.steps must be a positive integer, got {steps!r}")


# ----- timestep spacings of a discrete table: (T, N) -> N indices t - 1, decreasing
def linspace_timesteps(num_timesteps: int, steps: int) -> Tensor:
    return torch.linspace(0, num_timesteps - 1, steps, dtype=torch.float64).round().long().flip(0)


def leading_timesteps(num_timesteps: int, steps: int) -> Tensor:
    return (torch.arange(steps) * (num_timesteps // steps)).flip(0)


def trailing_timesteps(num_timesteps: int, steps: int) -> Tensor:
    ramp = torch.arange(num_timesteps, 0, -num_timesteps / steps, dtype=torch.float64)
    return ramp.round().long() - 1


def _over_one_more_point(spacing: Callable[[int, int], Tensor]) -> Callable[[int, int], Tensor]:
    """The multistep schedulers' reading of a spacing: ``N + 1`` points, the last (t = 1) dropped."""
    return lambda num_timesteps, steps: spacing(num_timesteps, steps + 1)[:-1]


TIMESTEP_SPACINGS: dict[str, Callable[[int, int], Tensor]] = {
    "linspace": linspace_timesteps,
    "leading": leading_timesteps,
    "trailing": trailing_timesteps,
}
MULTISTEP_SPACINGS: dict[str, Callable[[int, int], Tensor]] = {
    "linspace": _over_one_more_point(linspace_timesteps),
    "leading": _over_one_more_point(leading_timesteps),
    "trailing": trailing_timesteps,
}


# ----- continuous grids: (N, sigma_min, sigma_max, rho) -> N levels, decreasing
def karras_levels(steps: int, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    inv_min, inv_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (inv_max + ramp * (inv_min - inv_max)) ** rho


def log_uniform_levels(steps: int, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    return torch.linspace(
        math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64
    ).exp()


def polynomial_levels(steps: int, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    ramp = torch.linspace(1, 0, steps, dtype=torch.float64) ** rho
    return ramp * (sigma_max - sigma_min) + sigma_min


def flow_levels(steps: int, sigma_min: float, sigma_max: float, shift: float) -> Tensor:
    """t uniform between the unshifted times of sigma_max and sigma_min, mapped back and shifted."""
    t_max, t_min = (s / shift / (1 + s / shift) for s in (sigma_max, sigma_min))
    t = torch.linspace(t_max, t_min, steps, dtype=torch.float64)
    return shift * t / (1 - t)


CONTINUOUS_GRIDS: dict[str, Callable[[int, float, float, float], Tensor]] = {
    "karras": karras_levels,
    "log_snr": log_uniform_levels,
    "exponential": log_uniform_levels,
    "polynomial": polynomial_levels,
    "flow": flow_levels,
}
GRIDS = (*TIMESTEP_SPACINGS, *CONTINUOUS_GRIDS)


def check_grid(grid: str | None, final_sigma: str = "zero", rho: float | None = None) -> None:
    """Raises ValueError for an unknown grid or final_sigma, rho <= 0, or a rho the grid does
    not use (``grid=None``: the grid is chosen later, and checked then)."""
    if grid is not None and grid not in GRIDS:
        raise ValueError(f"unknown sampler.grid {grid!r}; allowed: {', '.join(GRIDS)}")
    if final_sigma not in FINAL_SIGMAS:
        raise ValueError(
            f"unknown sampler.final_sigma {final_sigma!r}; allowed: {', '.join(FINAL_SIGMAS)}"
        )
    if rho is not None and not rho > 0:
        raise ValueError(f"sampler.rho must be > 0, got {rho}")
    if rho is not None and grid is not None and grid not in DEFAULT_RHO:
        raise ValueError(
            f"sampler.rho applies to the grids {', '.join(DEFAULT_RHO)}, not to {grid!r}"
        )


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """``steps + 1`` values: EDM eq. 5's ``steps`` levels from sigma_max to sigma_min, then 0."""
    return _continuous(karras_levels, steps, sigma_min, sigma_max, rho, final=0.0)


def _continuous(
    levels: Callable[[int, float, float, float], Tensor],
    steps: int,
    sigma_min: float,
    sigma_max: float,
    rho: float,
    final: float,
) -> Tensor:
    """``steps`` intervals: ``steps`` levels down to sigma_min then the final 0, or, when the
    final level is sigma_min itself, ``steps + 1`` levels ending there."""
    check_steps(steps)
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(
            f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )
    if math.isinf(sigma_max):
        raise ValueError("a continuous grid needs a finite sigma_max")
    count = steps if final < sigma_min else steps + 1
    grid = torch.tensor([sigma_max], dtype=torch.float64)
    if count > 1:
        grid = levels(count, sigma_min, sigma_max, rho)
        grid[0], grid[-1] = sigma_max, sigma_min  # exact ends, not a power's rounding
    return _append_final(grid, final)


def _append_final(levels: Tensor, final: float) -> Tensor:
    """Append the final level when it lies below the last one (a repeated level is no step)."""
    if final < float(levels[-1]):
        levels = torch.cat([levels, torch.tensor([final], dtype=torch.float64)])
    return levels


def discrete_sigmas(
    schedule: DiscreteSchedule, steps: int, spacing: str = "linspace", multistep: bool = False
) -> Tensor:
    """The schedule's own sigmas at the spacing's timesteps, then 0: ``steps + 1`` values.

    Timesteps above the schedule's top (a clipped last beta, see ``DiscreteSchedule``) move down
    to it. ``multistep``: the multistep schedulers' reading of ``linspace`` and ``leading``.

    Raises:
        ValueError: ``steps`` above the number of timesteps.
    """
    check_steps(steps)
    if steps > schedule.num_timesteps:
        raise ValueError(
            f"sampler.steps={steps} exceeds the schedule's num_timesteps={schedule.num_timesteps}"
        )
    top = int(
        torch.searchsorted(schedule.sigmas, torch.tensor(schedule.sigma_max, dtype=torch.float64))
    )
    spacings = MULTISTEP_SPACINGS if multistep else TIMESTEP_SPACINGS
    indices = spacings[spacing](schedule.num_timesteps, steps).clamp(max=top)
    return _append_final(schedule.sigmas[indices.unique_consecutive()], 0.0)


def sigma_grid(
    schedule: NoiseSchedule,
    steps: int,
    grid: str,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float | None = None,
    final_sigma: str = "zero",
    multistep: bool = False,
) -> Tensor:
    """The grid named ``grid`` for ``schedule``: float64, decreasing, ``steps + 1`` values.

    Args:
        sigma_min, sigma_max: range of the continuous grids; None: the schedule's (its top is
            never the sigma of a clipped last beta). Not accepted by the timestep spacings.
        rho: exponent of ``karras`` and ``polynomial`` (default 7); not used by ``flow``.
        final_sigma: ``zero`` ends at sigma = 0 (the last step returns the denoised estimate);
            ``min`` ends at the schedule's smallest sigma (diffusers' ``final_sigmas_type``).
        multistep: read ``linspace`` and ``leading`` as diffusers' multistep schedulers do
            (``MULTISTEP_SPACINGS``); with ``final_sigma="min"`` every sampler does, so that
            the grid has ``steps`` steps ending at t = 1.

    Raises:
        ValueError: unknown grid or final_sigma, a timestep spacing on a continuous schedule or
            with a sigma range, bad range or steps.
    """
    check_grid(grid, final_sigma, rho)
    final = 0.0 if final_sigma == "zero" else schedule.sigma_min
    if grid in TIMESTEP_SPACINGS:
        schedule = require_discrete(
            schedule, f"sampler.grid={grid!r}", f"allowed here: {', '.join(CONTINUOUS_GRIDS)}"
        )
        if sigma_min is not None or sigma_max is not None:
            raise ValueError(
                f"sampler.grid={grid!r} takes the schedule's own timesteps: sigma_min/sigma_max "
                f"apply only to {', '.join(CONTINUOUS_GRIDS)}"
            )
        # Ending at sigma_min (t = 1) takes the N + 1 points whatever the convention: N steps.
        sigmas = discrete_sigmas(schedule, steps, grid, multistep or final_sigma == "min")
        return _append_final(sigmas[:-1], final)
    check_steps(steps)
    lo = schedule.sigma_min if sigma_min is None else float(sigma_min)
    hi = schedule.sigma_max if sigma_max is None else float(sigma_max)
    rho = DEFAULT_RHO.get(grid, 1.0) if rho is None else float(rho)
    if grid == "flow":  # the levels' fourth argument is the schedule's shift, not rho
        rho = float(getattr(schedule, "shift", 1.0))
    if not math.isinf(hi):
        return _continuous(CONTINUOUS_GRIDS[grid], steps, lo, hi, rho, final)
    # Zero terminal SNR: the first level is pure noise, the rest span the finite table.
    inf = torch.tensor([math.inf], dtype=torch.float64)
    if steps == 1:
        return _append_final(inf, final)
    finite_top = float(schedule.sigmas[torch.isfinite(schedule.sigmas)][-1])  # type: ignore[attr-defined]
    rest = _continuous(CONTINUOUS_GRIDS[grid], steps - 1, lo, finite_top, rho, final)
    return torch.cat([inf, rest])
