"""Mode blurring: the exact density of q(x_t) for a Gaussian mixture, its modes, and when they merge.

For data drawn from a Gaussian mixture, DDPM's marginal (Ho et al. 2020, eq. 4)

    q(x_t) = integral q(x_0) N(x_t; sqrt(abar_t) x_0, (1 - abar_t) I) dx_0
           = sum_k pi_k N(x_t; sqrt(abar_t) mu_k, abar_t s_k^2 + 1 - abar_t)

is again a mixture, in closed form: no histogram is needed (``GaussianMixture.log_prob`` with
``scale = sqrt(abar_t)``, ``sigma = sqrt(1 - abar_t)``). As t grows the peaks sink (the weights
spread over wider components), widen, slide towards 0 and finally merge into one: mode blurring.

Counting modes. ``num_modes`` counts the strict local maxima of the exact log-density of a 1-D
mixture on a fine grid that covers every component. Since q(x_t) is the variance-exploding
marginal p_sigma(x) = (q_0 * N(0, sigma^2))(x) rescaled by sqrt(abar_t), with
sigma_t = sqrt((1 - abar_t) / abar_t), the number of modes depends on sigma_t only, not on the
schedule. In one dimension Gaussian smoothing never creates a mode (the scale-space causality of
the Gaussian kernel: Babaud, Witkin, Baudin & Duda 1986), so the count falls monotonically with
sigma and every schedule merges the peaks at the same critical noise level sigma*
(``critical_sigma``): the merge time of a schedule is the first t with sigma_t >= sigma*. (In two
or more dimensions smoothing can create modes: Carreira-Perpinan & Williams 2003. Mode counts
here are one-dimensional.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from difforge.diffusion.gaussian_mixture import GaussianMixture
from difforge.diffusion.schedules import DiscreteSchedule, require_discrete

# Grid resolution of the mode counts.
POINTS_1D = 8001


def abar_at(schedule: DiscreteSchedule, t: int) -> float:
    """abar_t for ``t`` in ``0..T`` (``t = 0`` is the data itself: abar_0 = 1)."""
    require_discrete(schedule, "this lesson")
    if not 0 <= int(t) <= schedule.num_timesteps:
        raise ValueError(f"t must lie in [0, {schedule.num_timesteps}], got {t}")
    return 1.0 if int(t) == 0 else float(schedule.alphas_cumprod[int(t) - 1])


def sigma_at(schedule: DiscreteSchedule, t: int) -> float:
    """The variance-exploding noise level sigma_t = sqrt((1 - abar_t) / abar_t); 0 at t = 0."""
    abar = abar_at(schedule, t)
    return math.sqrt((1 - abar) / abar)


def marginal_log_density(mixture: GaussianMixture, x: Tensor, abar: float) -> Tensor:
    """log q(x_t) at ``x: (N, D)`` for the marginal with signal level ``abar``: ``(N,)`` float64."""
    if not 0 < abar <= 1:
        raise ValueError(f"abar must lie in (0, 1], got {abar}")
    return mixture.log_prob(x, sigma=math.sqrt(1 - abar), scale=math.sqrt(abar))


def marginal_density(mixture: GaussianMixture, x: Tensor, abar: float) -> Tensor:
    """q(x_t) at ``x: (N, D)``: ``(N,)`` float64 (see the module docstring)."""
    return marginal_log_density(mixture, x, abar).exp()


def extent(mixture: GaussianMixture, abar: float = 1.0, margin: float = 4.0) -> Tensor:
    """``(D, 2)`` bounds covering every component of q(x_t) to ``margin`` of its std."""
    scale = math.sqrt(abar)
    std = ((scale * mixture.stds) ** 2 + (1 - abar)).sqrt()
    lo = (scale * mixture.means - margin * std).min(0).values
    hi = (scale * mixture.means + margin * std).max(0).values
    return torch.stack([lo, hi], dim=1)


def grid_1d(
    mixture: GaussianMixture, abar: float = 1.0, points: int = POINTS_1D, margin: float = 4.0
) -> Tensor:
    """``(points,)`` float64 evenly spaced points covering q(x_t) of a 1-D mixture."""
    if mixture.dim != 1:
        raise ValueError(f"grid_1d needs a 1-D mixture, this one has dim={mixture.dim}")
    lo, hi = extent(mixture, abar, margin)[0].tolist()
    return torch.linspace(lo, hi, points, dtype=torch.float64)


def density_image(
    mixture: GaussianMixture,
    abar: float,
    bounds: Sequence[Sequence[float]] | Tensor,
    points: int = 200,
    log: bool = False,
) -> Tensor:
    """q(x_t) of a 2-D mixture on a ``points x points`` grid over ``bounds = ((x0, x1), (y0, y1))``.

    Returns ``(points, points)`` float64 indexed ``[row = y, column = x]`` (``imshow`` order with
    ``origin="lower"``); ``log=True`` gives the log-density.
    """
    if mixture.dim != 2:
        raise ValueError(f"density_image needs a 2-D mixture, this one has dim={mixture.dim}")
    bounds = torch.as_tensor(bounds, dtype=torch.float64)
    xs = torch.linspace(float(bounds[0, 0]), float(bounds[0, 1]), points, dtype=torch.float64)
    ys = torch.linspace(float(bounds[1, 0]), float(bounds[1, 1]), points, dtype=torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    values = marginal_log_density(mixture, torch.stack([gx.flatten(), gy.flatten()], 1), abar)
    values = values.reshape(points, points)
    return values if log else values.exp()


def local_maxima(values: Tensor | np.ndarray | Sequence[float]) -> Tensor:
    """Indices of the strict local maxima of a sampled 1-D function (interior points only).

    Runs of equal values count as one point (its first index), so a flat top counts once and a
    flat tail (a density that underflows to 0) never.
    """
    v = torch.as_tensor(np.asarray(values), dtype=torch.float64).flatten()
    if v.numel() < 3:
        return torch.zeros(0, dtype=torch.long)
    change = torch.cat([torch.ones(1, dtype=torch.bool), v[1:] != v[:-1]])
    starts = change.nonzero().flatten()  # first index of every run of equal values
    runs = v[starts]
    peak = (runs[1:-1] > runs[:-2]) & (runs[1:-1] > runs[2:])
    return starts[1:-1][peak]


def count_local_maxima(values: Tensor | np.ndarray | Sequence[float]) -> int:
    """Number of strict local maxima of a sampled 1-D function (see ``local_maxima``)."""
    return len(local_maxima(values))


def mode_positions(mixture: GaussianMixture, abar: float = 1.0, points: int = POINTS_1D) -> Tensor:
    """Positions of the modes of q(x_t) of a 1-D mixture (to the grid step): ``(modes,)``."""
    x = grid_1d(mixture, abar, points)
    return x[local_maxima(marginal_log_density(mixture, x[:, None], abar))]


def num_modes(mixture: GaussianMixture, abar: float = 1.0, points: int = POINTS_1D) -> int:
    """Number of modes of q(x_t) (signal level ``abar``) of a 1-D mixture: the strict local
    maxima of the exact log-density on ``points`` evenly spaced points covering every component.

    Two peaks closer than the grid step count as one. (Only 1-D: in 2-D, a ring of peaks blurs
    into a crest whose height varies by less than float64 resolves, and a grid count there
    measures the grid, not the density.)
    """
    return len(mode_positions(mixture, abar, points))


def mode_counts(
    mixture: GaussianMixture,
    schedule: DiscreteSchedule,
    timesteps: Iterable[int] | None = None,
    points: int = POINTS_1D,
) -> dict[int, int]:
    """``{t: number of modes of q(x_t)}`` for ``timesteps`` (default every t in ``0..T``)."""
    require_discrete(schedule, "this lesson")
    ts = range(schedule.num_timesteps + 1) if timesteps is None else timesteps
    return {int(t): num_modes(mixture, abar_at(schedule, int(t)), points) for t in ts}


def merge_timesteps(
    mixture: GaussianMixture, schedule: DiscreteSchedule, points: int = POINTS_1D
) -> dict[int, int | None]:
    """``{k: the first t at which q(x_t) has at most k modes}`` for k from (modes at t = 0) - 1
    down to 1; ``merge_timesteps(...)[1]`` is when the peaks have merged into one (``None`` where
    the schedule never gets there). Scans every t in ``1..T``."""
    counts = mode_counts(mixture, schedule, points=points)
    return {
        k: next((t for t in range(1, schedule.num_timesteps + 1) if counts[t] <= k), None)
        for k in range(counts[0] - 1, 0, -1)
    }


def critical_sigma(
    mixture: GaussianMixture,
    modes: int = 1,
    points: int = POINTS_1D,
    sigma_max: float = 1e3,
    rel_tol: float = 1e-6,
) -> float:
    """The smallest variance-exploding noise level sigma at which p_sigma = q_0 * N(0, sigma^2)
    has at most ``modes`` modes: bisection, exact in 1-D since the count falls monotonically
    with sigma. Every schedule reaches ``modes`` modes at its first t with sigma_t >= this."""

    def count(sigma: float) -> int:
        return num_modes(mixture, 1 / (1 + sigma**2), points)

    if count(0.0) <= modes:
        return 0.0
    if count(sigma_max) > modes:
        raise ValueError(f"p_sigma still has more than {modes} modes at sigma={sigma_max}")
    lo, hi = 0.0, sigma_max
    while hi - lo > rel_tol * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if count(mid) > modes else (lo, mid)
    return hi


def first_timestep_above(schedule: DiscreteSchedule, sigma: float) -> int | None:
    """The first t in ``1..T`` with sigma_t >= ``sigma`` (None if the schedule never gets there)."""
    require_discrete(schedule, "this lesson")
    above = (schedule.sigmas >= sigma).nonzero()
    return int(above[0]) + 1 if len(above) else None
