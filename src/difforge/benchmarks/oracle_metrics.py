"""The benchmark's two laws and its metrics: W1 and the per-mode mass error.

- ``gmm1d``: weights 0.2/0.5/0.3, means -3/0/3, stds 0.5 (``configs/data/gmm1d.yaml``).
- ``gmm2d``: 8 equal Gaussians of std 0.3 on a ring of radius 4 (``configs/data/gmm2d.yaml``).

W1 is exact against the mixture's CDF in 1-D (``wasserstein1_1d``); in 2-D it is the sliced W1
(256 fixed directions) against the law itself: on each direction, the sorted projections
against the projected mixture's n mid-quantiles (``difforge.metrics.mixture.projected_quantiles``),
so no reference sample adds its own noise. The mode-mass error is ``max_k |mass_k - true_mass_k|``
(Bayes-classifier assignment, ``difforge.metrics.mixture.mode_mass``). The starting draws
are ``MixtureScore.draws``: stratified in 1-D, so that W1 there resolves discretisation errors
far below the Monte-Carlo floor of i.i.d. draws.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import torch
from torch import Tensor

from difforge.diffusion.gaussian_mixture import GaussianMixture, GaussianMixtureOracle
from difforge.metrics.mixture import (
    mode_mass,
    projected_quantiles,
    true_mode_mass,
    wasserstein1_1d,
)

SLICED_DIRECTIONS = 256
MIXTURES = ("gmm1d", "gmm2d")


def make_mixture(name: str) -> GaussianMixture:
    """``gmm1d`` or ``gmm2d`` (module docstring); ValueError for any other name."""
    if name == "gmm1d":
        return GaussianMixture([0.2, 0.5, 0.3], [-3.0, 0.0, 3.0], [0.5, 0.5, 0.5])
    if name == "gmm2d":
        angle = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
        ring = 4.0 * torch.stack(
            [angle.cos(), angle.sin()], dim=1
        )  # = data.mixtures.mixture_layout
        return GaussianMixture(torch.ones(8), ring, torch.full((8,), 0.3))
    raise ValueError(f"unknown benchmark mixture {name!r}; allowed: {', '.join(MIXTURES)}")


class BatchSigmaOracle(GaussianMixtureOracle):
    """The oracle, computing the per-component variances once when the whole batch shares one
    finite sigma (every sampler's call): the same values as ``GaussianMixtureOracle``, about
    twice as fast."""

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        if sigma.numel() > 1 and bool(sigma[0].isfinite()) and bool((sigma == sigma[0]).all()):
            return self.mixture.denoise(x, sigma[:1])
        return super().forward(x, sigma, class_labels)


class MixtureScore:
    """W1 (sliced in 2-D) and mode-mass error of ``(N, D)`` samples against one mixture.

    Args:
        mixture: the law.
        num_samples: N; the 2-D quantiles are computed once for this N.
    """

    def __init__(self, mixture: GaussianMixture, num_samples: int) -> None:
        self.mixture = mixture
        self.num_samples = num_samples
        self.true_mass = true_mode_mass(mixture, num_samples=1_000_000, seed=0)
        self.directions: Tensor | None = None
        self.quantiles: Tensor | None = None
        if mixture.dim > 1:
            directions = torch.randn(
                mixture.dim,
                SLICED_DIRECTIONS,
                generator=torch.Generator().manual_seed(0),
                dtype=torch.float64,
            )
            self.directions = directions / directions.norm(dim=0, keepdim=True)
            self.quantiles = projected_quantiles(mixture, self.directions, num_samples)

    def _sorted_projections(self, x: Tensor) -> Tensor:
        assert self.directions is not None
        projections = (x.to(torch.float64) @ self.directions).T.contiguous()
        return torch.from_numpy(np.sort(projections.numpy(), axis=1))  # 2x torch's CPU sort

    def draws(self, seed: int) -> Tensor:
        """The samplers' starting standard-normal draws ``(N, D)`` float64. In 1-D, the normal's
        N mid-quantiles ``Phi^-1((i - 1/2) / N)`` in a random order: the probability-flow ODE
        maps them to the data's mid-quantiles (a monotone map in 1-D), so a deterministic
        sampler's W1 is its discretisation error, with no Monte-Carlo floor (O(1/N)).
        Stochastic samplers still add their fresh noise. In 2-D, i.i.d. draws."""
        generator = torch.Generator().manual_seed(seed)
        n, dim = self.num_samples, self.mixture.dim
        if dim > 1:
            return torch.randn((n, dim), generator=generator, dtype=torch.float64)
        levels = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        return torch.special.ndtri(levels)[torch.randperm(n, generator=generator)][:, None]

    def __call__(self, samples: Tensor) -> dict[str, float]:
        """``{"w1", "mass_err"}``; both inf when a sample is not finite."""
        samples = samples.reshape(samples.shape[0], -1).to(torch.float64).cpu()
        if samples.shape[0] != self.num_samples:
            raise ValueError(f"expected {self.num_samples} samples, got {samples.shape[0]}")
        if not torch.isfinite(samples).all():
            return {"w1": math.inf, "mass_err": math.inf}
        if self.quantiles is None:
            w1 = wasserstein1_1d(samples, self.mixture)
        else:
            w1 = float((self._sorted_projections(samples) - self.quantiles).abs().mean())
        mass_err = float((mode_mass(samples, self.mixture) - self.true_mass).abs().max())
        return {"w1": w1, "mass_err": mass_err}

    def floor(self, repeats: int = 5, seed: int = 1000) -> dict[str, float]:
        """The metrics of exact samples of the same size (mean and std over ``repeats`` draws):
        the error of a perfect sampler."""
        runs = [
            self(self.mixture.sample(self.num_samples, torch.Generator().manual_seed(seed + r))[0])
            for r in range(repeats)
        ]
        out = {}
        for key in ("w1", "mass_err"):
            values = [run[key] for run in runs]
            out[f"{key}_mean"] = statistics.fmean(values)
            out[f"{key}_std"] = statistics.stdev(values) if repeats > 1 else 0.0
        return out
