"""Shared fixtures: the seed's three-Gaussian mixture and its exact denoiser."""

from __future__ import annotations

import pytest
import torch

from difforge.diffusion.gaussian_mixture import GaussianMixture, GaussianMixtureOracle

# Unit tests use small tensors: one thread avoids OpenMP spin-waits on a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def gmm1d() -> GaussianMixture:
    """The teaching example: weights (0.2, 0.5, 0.3), means (-3, 0, 3), stds 0.5."""
    return GaussianMixture([0.2, 0.5, 0.3], [-3.0, 0.0, 3.0], [0.5, 0.5, 0.5])


@pytest.fixture(scope="session")
def oracle1d(gmm1d: GaussianMixture) -> GaussianMixtureOracle:
    return GaussianMixtureOracle(gmm1d)
