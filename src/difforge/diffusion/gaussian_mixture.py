"""Gaussian mixtures: the law, its noised marginals, and its exact denoiser (the oracle).

A mixture with weights ``pi_k``, means ``mu_k`` and diagonal standard deviations ``s_k`` stays a
mixture under Gaussian noise. In the variance-exploding frame ``x = x_0 + sigma * eps`` the
marginal is

    p_sigma(x) = sum_k pi_k N(x; mu_k, diag(s_k^2 + sigma^2)),

and Tweedie's formula (Efron 2011; Karras et al. 2022, eq. 3) gives the exact denoiser

    D(x, sigma) = E[x_0 | x] = x + sigma^2 grad log p_sigma(x)
                = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)),

with ``r_k(x)`` the posterior responsibility of component ``k``. The variance-preserving marginal
q(x_t) of DDPM is the same law scaled by ``sqrt(abar_t)``: means ``sqrt(abar_t) mu_k``, variances
``abar_t s_k^2 + 1 - abar_t``.

Computations run in float64; results are cast back to the input dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from difforge.diffusion.broadcast import per_sample


def _as_matrix(values: Sequence[float] | Sequence[Sequence[float]] | Tensor, name: str) -> Tensor:
    tensor = torch.as_tensor(values, dtype=torch.float64)
    if tensor.ndim == 1:
        tensor = tensor[:, None]
    if tensor.ndim != 2:
        raise ValueError(
            f"mixture {name} must be a list (1-D) or a list of lists (K x D), got shape {tuple(tensor.shape)}"
        )
    return tensor


class GaussianMixture:
    """A mixture of K diagonal Gaussians in D dimensions.

    Args:
        weights: ``(K,)`` non-negative mixture weights, normalised here.
        means: ``(K,)`` for 1-D or ``(K, D)``.
        stds: same shape as ``means`` (or ``(K,)`` for isotropic components), all > 0.
    """

    def __init__(
        self,
        weights: Sequence[float] | Tensor,
        means: Sequence[float] | Sequence[Sequence[float]] | Tensor,
        stds: Sequence[float] | Sequence[Sequence[float]] | Tensor,
    ) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        mu = _as_matrix(means, "means")
        s = torch.as_tensor(stds, dtype=torch.float64)
        if s.ndim == 1 and mu.shape[1] > 1:
            s = s[:, None].expand_as(mu)
        s = _as_matrix(s, "stds")
        if not (len(w) == mu.shape[0] == s.shape[0]):
            raise ValueError(
                f"mixture weights, means and stds must have one entry per component: got "
                f"{len(w)} weights, {mu.shape[0]} means, {s.shape[0]} stds"
            )
        if s.shape != mu.shape:
            raise ValueError(
                f"mixture stds shape {tuple(s.shape)} must match means shape {tuple(mu.shape)}"
            )
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(
                f"mixture weights must be non-negative with a positive sum, got {w.tolist()}"
            )
        if (s <= 0).any():
            raise ValueError(f"mixture stds must be > 0, got {s.tolist()}")
        self.weights = w / w.sum()
        self.means = mu
        self.stds = s

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``n`` points. Returns ``(x: (n, D) float64, component: (n,) long)``."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return self.means[component] + self.stds[component] * noise, component

    def _component_log_prob(
        self, x: Tensor, sigma: Tensor | float = 0.0, scale: Tensor | float = 1.0
    ) -> Tensor:
        """log N(x; scale mu_k, scale^2 s_k^2 + sigma^2) per component: ``(N, K)``."""
        x = x.to(torch.float64)
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1)
        scale = torch.as_tensor(scale, dtype=torch.float64).reshape(-1, 1, 1)
        var = (scale * self.stds[None]) ** 2 + sigma**2  # (N or 1, K, D)
        diff = x[:, None, :] - scale * self.means[None]
        return -0.5 * ((diff**2) / var + torch.log(2 * math.pi * var)).sum(-1)

    def log_prob(
        self, x: Tensor, sigma: Tensor | float = 0.0, scale: Tensor | float = 1.0
    ) -> Tensor:
        """Log-density of ``scale * x_0 + sigma * eps`` at ``x: (N, D)``: ``(N,)`` float64.

        ``sigma`` and ``scale`` are scalars or ``(N,)``. ``scale=1`` is the VE marginal
        p_sigma; ``scale=sqrt(abar_t), sigma=sqrt(1 - abar_t)`` is DDPM's q(x_t).
        """
        return torch.logsumexp(
            self._component_log_prob(x, sigma, scale) + self.weights.log(), dim=-1
        )

    def responsibilities(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """Posterior component probabilities ``r_k(x)`` under the VE marginal: ``(N, K)``."""
        return torch.softmax(self._component_log_prob(x, sigma) + self.weights.log(), dim=-1)

    def denoise(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """Exact E[x_0 | x_0 + sigma eps = x] for ``x: (N, D)``; sigma scalar or ``(N,)``."""
        x64 = x.to(torch.float64).reshape(x.shape[0], -1)
        sig = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1, 1)
        r = self.responsibilities(x64, sig.reshape(-1))  # (N, K)
        var0 = self.stds[None] ** 2  # (1, K, D)
        shrink = var0 / (var0 + sig**2)
        per_component = self.means[None] + shrink * (x64[:, None, :] - self.means[None])
        return (r[..., None] * per_component).sum(1).to(x.dtype).reshape(x.shape)

    def score(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """Exact grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma^2."""
        x64 = x.to(torch.float64)
        sig = per_sample(torch.as_tensor(sigma, dtype=torch.float64), x64)
        return ((self.denoise(x64, sigma) - x64) / sig**2).to(x.dtype)

    def cdf_1d(self, x: Tensor) -> Tensor:
        """CDF of a one-dimensional mixture at ``x: (N,)``."""
        if self.dim != 1:
            raise ValueError(f"cdf_1d needs a 1-D mixture, this one has dim={self.dim}")
        z = (x.to(torch.float64)[:, None] - self.means[:, 0]) / self.stds[:, 0]
        return (self.weights * 0.5 * (1 + torch.erf(z / math.sqrt(2)))).sum(-1)


class GaussianMixtureOracle(torch.nn.Module):
    """The exact denoiser of a Gaussian mixture, with a trained denoiser's call signature.

    ``oracle(x, sigma, class_labels=None) -> E[x_0 | x]`` for ``x: (B, D)`` in the VE frame and
    ``sigma: (B,)``. Sampling with it isolates a sampler's discretisation error: the learning
    error is zero.
    """

    learned_variance = False

    def __init__(self, mixture: GaussianMixture) -> None:
        super().__init__()
        self.mixture = mixture

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """At ``sigma = inf`` (zero terminal SNR; ``x`` then holds the unit noise) E[x_0 | x] is
        the mixture's mean."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0])
        at_infinity = sigma.isinf()
        denoised = self.mixture.denoise(x, torch.where(at_infinity, 1.0, sigma))
        mean = (self.mixture.weights[:, None] * self.mixture.means).sum(0).to(x)
        return torch.where(per_sample(at_infinity, x), mean, denoised)
