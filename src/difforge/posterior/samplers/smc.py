"""Sequential Monte Carlo pieces: weights, effective sample size and resampling, per cloud of
particles (``(N, K)``: N independent problems, K particles each).

Resampling (Douc, Cappe & Moulines 2005, "Comparison of resampling schemes for particle
filtering"): ``multinomial`` draws K ancestors i.i.d. from the weights; ``systematic`` draws one
uniform ``u`` and takes the ancestors at ``(u + k) / K``, k = 0..K-1, on the weights' CDF. Both
are unbiased: each particle's expected number of offspring is ``K w_k``.
"""

from __future__ import annotations

import torch
from torch import Tensor

RESAMPLINGS = ("systematic", "multinomial")


def normalized_weights(log_weights: Tensor) -> Tensor:
    """``(N, K)`` log weights -> ``(N, K)`` weights summing to 1 per row."""
    return torch.softmax(log_weights, dim=-1)


def effective_sample_size(log_weights: Tensor) -> Tensor:
    """``ESS = 1 / sum_k w_k^2`` per row (Kong, Liu & Wong 1994): ``(N,)``, in [1, K]."""
    return 1 / (normalized_weights(log_weights) ** 2).sum(-1)


def resample(log_weights: Tensor, method: str, generator: torch.Generator | None = None) -> Tensor:
    """Ancestor indices ``(N, K)`` (long), drawn by ``method`` (``RESAMPLINGS``)."""
    weights = normalized_weights(log_weights.to(torch.float64))
    n, k = weights.shape
    device = generator.device if generator is not None else weights.device
    if method == "multinomial":
        return torch.multinomial(weights.to(device), k, replacement=True, generator=generator).to(
            weights.device
        )
    u = torch.rand(n, 1, generator=generator, device=device, dtype=torch.float64)
    positions = (u.to(weights.device) + torch.arange(k, device=weights.device)) / k
    cdf = weights.cumsum(-1)
    cdf[:, -1] = 1.0  # round-off must not leave the last position past the end
    return torch.searchsorted(cdf, positions, right=True).clamp_max(k - 1)
