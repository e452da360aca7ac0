"""Exact metrics for known laws: mode collapse must show as a number."""

import pytest
import torch

from difforge.diffusion.gaussian_mixture import GaussianMixture
from difforge.metrics.mixture import mixture_metrics, sliced_wasserstein1, wasserstein1_1d


def test_exact_samples_cover_every_mode(gmm1d):
    x, _ = gmm1d.sample(20_000, torch.Generator().manual_seed(0))
    metrics = mixture_metrics(x, gmm1d)
    assert metrics["mode_coverage"] == 1.0 and metrics["mode_mass_error"] < 0.02


def test_mode_coverage_drops_when_a_mode_is_removed(gmm1d):
    x, component = gmm1d.sample(20_000, torch.Generator().manual_seed(0))
    metrics = mixture_metrics(x[component != 2], gmm1d)
    assert (
        metrics["modes_covered"] == 2 and metrics["mode_mass_2"] < 0.01
    )  # only the tail of the middle mode


def test_a_pile_on_the_mean_of_a_ring_is_collapse_not_coverage():
    """Nearest-mode assignment would share a central pile among all modes; on-mode mass does not."""
    angles = torch.arange(8) * 2 * torch.pi / 8
    ring = GaussianMixture(
        [1.0] * 8, torch.stack([4 * angles.cos(), 4 * angles.sin()], 1), [[0.3, 0.3]] * 8
    )
    pile = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0)) * 0.1
    metrics = mixture_metrics(pile, ring)
    assert metrics["modes_covered"] == 0 and metrics["off_mode"] == 1.0


def test_w1_is_exact_against_a_shifted_gaussian():
    """W1 between N(0, 1) and N(d, 1) is d: the empirical law of many exact draws comes close."""
    law = GaussianMixture([1.0], [0.0], [1.0])
    x, _ = law.sample(200_000, torch.Generator().manual_seed(0))
    assert abs(wasserstein1_1d(x + 0.5, law) - 0.5) < 0.01
    assert wasserstein1_1d(x, law) < 0.01


def test_sliced_w1_of_a_shifted_cloud_is_the_mean_projected_shift():
    """Shifting a cloud by c shifts every sorted projection by <c, theta>: the sliced W1 is the
    mean of |<c, theta>| over the directions, 2 |c| / pi for uniform directions in 2-D; in 1-D
    it is the exact W1 of sorted samples, and the order of the samples does not matter."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 2, generator=generator, dtype=torch.float64)
    shift = torch.tensor([0.3, -0.4], dtype=torch.float64)  # |c| = 0.5
    shuffled = (x + shift)[torch.randperm(3000, generator=generator)]
    value = sliced_wasserstein1(shuffled, x, num_projections=4096)
    assert abs(value - 2 * 0.5 / torch.pi) < 0.01
    a, b = x[:, :1], torch.randn(3000, 1, generator=generator, dtype=torch.float64) * 2
    exact = (a.flatten().sort().values - b.flatten().sort().values).abs().mean()
    assert sliced_wasserstein1(a, b, num_projections=3) == pytest.approx(float(exact), rel=1e-12)
