"""The Gaussian-mixture test bed of Cardoso et al. 2024 (MCGdiff, "Monte Carlo guided diffusion
for Bayesian linear inverse problems", ICLR 2024, sec. 4 and app. B.3), on which the exact
posterior (:mod:`difforge.posterior.exact`) measures every posterior sampler.

The prior has 25 components of identity covariance whose means are the points ``(8i, 8j)``,
``i, j in {-2, ..., 2}``, repeated ``d_x / 2`` times along the coordinates
(``(8i, 8j, 8i, 8j, ...)``), and random weights ``w_k ∝ g_k^2`` with ``g_k ~ N(0, 1)``. A problem
adds a measurement ``y = A x + sigma_y n`` of ``x ~ prior``: ``A`` has the singular vectors of a
standard Gaussian ``(d_y, d_x)`` matrix and ``d_y`` singular values drawn from U(0, 1),
and ``sigma_y = u * max(s)`` with ``u ~ U(0, 1)``. The paper uses ``d_x`` in {8, 80, 800} and
``d_y`` in {1, 2, 4}, with 20 problem draws per pair. The recipe follows the authors' code
(github.com/gabrielvc/mcg_diff); the random streams are difforge's own.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from difforge.checks import check_int
from difforge.diffusion.gaussian_mixture import GaussianMixture
from difforge.posterior.exact import MixturePosterior, mixture_posterior
from difforge.posterior.operators.base import LinearOperator
from difforge.posterior.operators.projection import cardoso_matrix, matrix

GRID = (-8.0, -4.0, 0.0, 4.0, 8.0)
NUM_COMPONENTS = len(GRID) ** 2


def grid_means(d_x: int) -> Tensor:
    """``(25, d_x)`` float64: the 5 x 5 grid point ``(a, b)`` repeated as ``(a, b, a, b, ...)``."""
    axis = torch.tensor(GRID, dtype=torch.float64)
    first, second = torch.meshgrid(axis, axis, indexing="ij")
    pairs = torch.stack([first.flatten(), second.flatten()], dim=1)  # (25, 2)
    return pairs.repeat(1, d_x // 2)


def check_dimension(d_x: object) -> int:
    """``d_x`` as an even integer >= 2; a one-line ValueError otherwise."""
    d_x = check_int("d_x", d_x, minimum=2)
    if d_x % 2:
        raise ValueError(f"d_x must be even (the grid's 2-D means repeat d_x / 2 times), got {d_x}")
    return d_x


def cardoso_mixture(d_x: int, seed: int = 0) -> GaussianMixture:
    """The test bed's prior in ``d_x`` dimensions, its weights drawn with ``seed`` (the first
    draws of :func:`cardoso_problem` with the same seed).

    Raises:
        ValueError: ``d_x`` not an even integer >= 2, a negative seed.
    """
    d_x = check_dimension(d_x)
    generator = torch.Generator().manual_seed(check_int("seed", seed))
    return _mixture(d_x, generator)


def _mixture(d_x: int, generator: torch.Generator) -> GaussianMixture:
    weights = torch.randn(NUM_COMPONENTS, dtype=torch.float64, generator=generator) ** 2
    return GaussianMixture(weights, grid_means(d_x), torch.ones(NUM_COMPONENTS, d_x))


class Problem(NamedTuple):
    """One test-bed problem; unpacks as ``mixture, A, sigma_y, y, x_true``."""

    mixture: GaussianMixture  # the prior
    A: Tensor  # (d_y, d_x) float64
    sigma_y: float
    y: Tensor  # (d_y,) float64
    x_true: Tensor  # (d_x,) float64, the prior draw that was measured

    def operator(self) -> LinearOperator:
        """``A`` as the ``matrix`` operator on ``(d_x,)`` vectors (what the samplers take)."""
        return matrix((self.mixture.dim,), self.A)

    def posterior(self) -> MixturePosterior:
        """The exact posterior ``p(x | y)`` (:func:`mixture_posterior`)."""
        return mixture_posterior(self.mixture, self.A, self.y, self.sigma_y)


def cardoso_problem(d_x: int, d_y: int, seed: int) -> Problem:
    """Problem ``seed`` of the test bed for ``(d_x, d_y)``: the prior (weights drawn first,
    so :func:`cardoso_mixture` with the same seed gives it), then ``A``, ``x_true``,
    ``sigma_y`` and the noise, all from one generator seeded with ``seed``.

    Raises:
        ValueError: ``d_x`` not even >= 2, ``d_y`` not in ``[1, d_x]``, a negative seed.
    """
    d_x = check_dimension(d_x)
    d_y = check_int("d_y", d_y, minimum=1)
    if d_y > d_x:
        raise ValueError(f"d_y must be an integer in [1, d_x={d_x}], got {d_y}")
    generator = torch.Generator().manual_seed(check_int("seed", seed))
    mixture = _mixture(d_x, generator)
    A = cardoso_matrix(d_y, d_x, generator)
    x_true = mixture.sample(1, generator)[0][0]
    s_max = torch.linalg.matrix_norm(A, ord=2)
    sigma_y = (torch.rand((), dtype=torch.float64, generator=generator) * s_max).item()
    noise = torch.randn(d_y, dtype=torch.float64, generator=generator)
    return Problem(mixture, A, sigma_y, A @ x_true + sigma_y * noise, x_true)
