"""How far samples are from the exact posterior: the sliced Wasserstein distance, its floor, the
posterior weight of each component, and the mean with a 95 % interval over problem draws.

The sliced Wasserstein-2 distance (Rabin et al. 2011; Bonneel et al. 2015) averages the squared
1-D Wasserstein-2 distance of the samples' projections on random directions ``theta`` drawn
uniformly on the unit sphere:

    SW_2(a, b) = ( E_theta W_2^2(theta^T a, theta^T b) )^{1/2},

the expectation estimated with ``num_projections`` directions (default 1000; the estimate's
relative Monte Carlo error is then about 2-5 % for the distances on the test bed). The same
directions are used for every call with the same ``generator`` seed, so that methods compared on
one problem see the same projections (common random numbers). Cardoso et al. 2024 (MCGdiff)
rank posterior samplers on their mixture test bed by this distance to exact posterior samples.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from difforge.metrics.mixture import unit_directions
from difforge.posterior.exact import FullCovMixture

NUM_PROJECTIONS = 1000
SEED = 0


def _quantile_pieces(n: int, m: int) -> tuple[Tensor, Tensor, Tensor]:
    """The 1-D optimal coupling of ``n`` and ``m`` equally weighted atoms: the merged quantile
    levels cut [0, 1] into pieces; returns each piece's width and the sorted-index of the atom of
    each sample set that covers it."""
    levels = torch.cat(
        [
            torch.arange(1, n + 1, dtype=torch.float64) / n,
            torch.arange(1, m + 1, dtype=torch.float64) / m,
        ]
    )
    levels = torch.unique(levels)  # sorted
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    middle = levels - widths / 2
    index_a = (middle * n).floor().long().clamp(max=n - 1)
    index_b = (middle * m).floor().long().clamp(max=m - 1)
    return widths, index_a, index_b


def sliced_wasserstein(
    a: Tensor,
    b: Tensor,
    num_projections: int = NUM_PROJECTIONS,
    generator: torch.Generator | None = None,
) -> float:
    """``SW_2`` between the empirical laws of ``a: (n, d)`` and ``b: (m, d)`` (any ``n, m``;
    each row one point, rows of images flattened).

    Args:
        num_projections: the random directions averaged over.
        generator: draws the directions; None: a generator seeded with ``SEED`` (the same
            directions on every call).

    Raises:
        ValueError: empty sets, different dimensions, or ``num_projections < 1``.
    """
    a = a.reshape(a.shape[0], -1).to(torch.float64).cpu()
    b = b.reshape(b.shape[0], -1).to(torch.float64).cpu()
    if a.shape[0] == 0 or b.shape[0] == 0 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"sliced_wasserstein needs two non-empty sets of the same dimension, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    if num_projections < 1:
        raise ValueError(f"num_projections must be an integer >= 1, got {num_projections}")
    if generator is None:
        generator = torch.Generator().manual_seed(SEED)
    theta = unit_directions(a.shape[1], num_projections, generator)
    # One row per direction: sorting contiguous rows is faster than strided columns.
    pa = (a @ theta).T.contiguous().sort(dim=1).values  # (P, n)
    pb = (b @ theta).T.contiguous().sort(dim=1).values
    if a.shape[0] == b.shape[0]:
        squared = ((pa - pb) ** 2).mean(1)
    else:
        widths, ia, ib = _quantile_pieces(a.shape[0], b.shape[0])
        squared = ((pa[:, ia] - pb[:, ib]) ** 2 * widths).sum(1)
    return math.sqrt(squared.mean().item())


def exact_floor(
    posterior: FullCovMixture,
    n: int,
    num_projections: int = NUM_PROJECTIONS,
    generator: torch.Generator | None = None,
) -> float:
    """The distance a perfect sampler scores: ``SW_2`` between two independent sets of ``n``
    exact posterior samples (drawn from ``generator``; the projections are the default ones).
    A method's ``SW_2`` to ``n`` exact samples is comparable to this floor only for the same
    ``n``."""
    first = posterior.sample(n, generator)
    second = posterior.sample(n, generator)
    return sliced_wasserstein(first, second, num_projections)


def component_weights(samples: Tensor, posterior: FullCovMixture) -> Tensor:
    """The posterior weight of each component as the samples have it: the mean over the
    samples of the responsibilities ``p(k | x)``, ``(K,)``.

    For exact samples it is an unbiased estimate of ``posterior.weights`` (``E[p(k | x)] =
    weights_k``); a sampler that misses a mode, or puts mass on one the measurement rules out,
    shows it here (where DPS-type methods are known to go wrong)."""
    x = samples.reshape(samples.shape[0], -1)
    return posterior.responsibilities(x).mean(0)


def mean_and_interval(values: Tensor | list[float]) -> tuple[float, float]:
    """``(mean, 1.96 * standard error)`` over problem draws (the 95 % interval's half width;
    0 for a single value)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 0:
        raise ValueError("mean_and_interval needs at least one value")
    if v.numel() == 1:
        return v.item(), 0.0
    return v.mean().item(), 1.96 * (v.std(unbiased=True) / math.sqrt(v.numel())).item()
