"""The exact posterior of a Gaussian-mixture prior under a linear Gaussian measurement.

Prior ``p(x) = sum_k pi_k N(x; m_k, S_k)`` (diagonal ``S_k``), measurement
``y = A x + sigma_y n``, ``n ~ N(0, I)``. The posterior is again a mixture (e.g. Cardoso et al.
2024, MCGdiff, app. B.3): each component is updated as a Kalman filter would update it
(Kalman 1960; Bishop 2006, eqs. 2.113-2.117),

    C_k  = A S_k A^T + sigma_y^2 I                    (the innovation covariance, d_y x d_y)
    G_k  = S_k A^T C_k^{-1}                           (the gain)
    m'_k = m_k + G_k (y - A m_k),   S'_k = S_k - G_k A S_k,

and reweighted by its evidence, ``pi'_k ∝ pi_k N(y; A m_k, C_k)``. With ``sigma_y = 0`` the
same formulas hold as long as ``C_k = A S_k A^T`` is invertible (``A`` of full row rank): the
posterior then lives on the affine subspace ``{x : A x = y}``. Everything runs in float64.
"""

from __future__ import annotations

import math
from functools import cached_property

import torch
from torch import Tensor

from difforge.diffusion.gaussian_mixture import GaussianMixture
from difforge.posterior.operators.base import LinearOperator, check_sigma_y

# Eigenvalues below this fraction of a component's largest are treated as 0 (the directions the
# posterior fixes when sigma_y = 0).
RANK_TOLERANCE = 1e-10


class FullCovMixture:
    """``sum_k weights_k N(means_k, covs_k)`` with full (possibly singular) covariances.

    Args:
        weights: ``(K,)``, summing to 1.
        means: ``(K, D)``.
        covs: ``(K, D, D)`` symmetric positive semi-definite.

    A singular component (a posterior with ``sigma_y = 0``) has its density taken on its
    support, the affine subspace ``means_k + range(covs_k)``: :meth:`log_prob` uses the
    pseudo-inverse and pseudo-determinant, ignoring a point's offset from that subspace.
    """

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor) -> None:
        self.weights = weights.to(torch.float64)
        self.means = means.to(torch.float64)
        self.covs = covs.to(torch.float64)

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @cached_property
    def _eigen(self) -> tuple[Tensor, Tensor, Tensor]:
        """Per component: eigenvalues (clamped to 0 below the tolerance), eigenvectors and
        the rank mask: ``(K, D)``, ``(K, D, D)``, ``(K, D)``."""
        values, vectors = torch.linalg.eigh(self.covs)
        kept = values > RANK_TOLERANCE * values.amax(-1, keepdim=True).clamp_min(1e-300)
        return torch.where(kept, values, 0.0), vectors, kept

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws: ``(n, D)`` float64."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        values, vectors, _ = self._eigen
        x = torch.empty(n, self.dim, dtype=torch.float64)
        for k in component.unique().tolist():
            rows = component == k
            x[rows] = self.means[k] + (noise[rows] * values[k].sqrt()) @ vectors[k].T
        return x

    def component_log_prob(self, x: Tensor) -> Tensor:
        """``log N(x; means_k, covs_k)`` for ``x: (N, D)``: ``(N, K)`` float64 (on each
        component's support when it is singular)."""
        x = x.to(torch.float64).reshape(x.shape[0], -1)
        values, vectors, kept = self._eigen
        out = torch.empty(x.shape[0], self.num_components, dtype=torch.float64)
        for k in range(self.num_components):
            coords = (x - self.means[k]) @ vectors[k]  # (N, D) in the eigenbasis
            inv = torch.where(kept[k], 1 / values[k].clamp_min(1e-300), 0.0)
            mahalanobis = (coords**2 * inv).sum(-1)
            log_det = values[k][kept[k]].log().sum()
            rank = int(kept[k].sum())
            out[:, k] = -0.5 * (mahalanobis + log_det + rank * math.log(2 * math.pi))
        return out

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` for ``x: (N, D)``: ``(N,)`` float64."""
        return torch.logsumexp(self.component_log_prob(x) + self.weights.log(), dim=-1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """``p(component k | x)``: ``(N, K)``."""
        return torch.softmax(self.component_log_prob(x) + self.weights.log(), dim=-1)

    def mean(self) -> Tensor:
        """The mixture's mean ``(D,)``."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """The mixture's covariance ``(D, D)`` (law of total covariance)."""
        centred = self.means - self.mean()
        within = torch.einsum("k,kij->ij", self.weights, self.covs)
        return within + torch.einsum("k,ki,kj->ij", self.weights, centred, centred)


class MixturePosterior(FullCovMixture):
    """The posterior :func:`mixture_posterior` returns, kept in its low-rank form: each
    covariance is a diagonal minus a rank-``d_y`` term, so drawing ``n`` samples and their
    densities costs ``O(n d_x d_y)`` per component, not the ``O(d_x^3)`` of a factorisation.

    Sampling uses Matheron's rule (pathwise conditioning; Hoffman & Ribak 1991, Wilson et al.
    2020): ``x = x_0 + G_k (y - A x_0 - sigma_y e)`` with ``x_0 ~ N(m_k, S_k)`` and
    ``e ~ N(0, I)`` is an exact draw of component ``k`` of the posterior. Densities use the
    precision ``S_k^{-1} + A^T A / sigma_y^2`` and the determinant lemma,
    ``log det S'_k = log det S_k - log det C_k + 2 d_y log sigma_y``; with ``sigma_y = 0`` the
    density is taken on ``{A x = y}`` (the point projected on it), where the precision is
    ``S_k^{-1}`` and ``log pdet S'_k = log det S_k - log det C_k + log det(A A^T)``.
    ``covs`` (``(K, d_x, d_x)``) is built only when read.
    """

    def __init__(
        self,
        weights: Tensor,
        means: Tensor,
        prior_means: Tensor,
        prior_variances: Tensor,
        A: Tensor,
        sigma_y: float,
        y: Tensor,
        gain_t: Tensor,
        chol: Tensor,
    ) -> None:
        self.weights, self.means = weights, means
        self.prior_means, self.prior_variances = prior_means, prior_variances
        self.A, self.sigma_y, self.y = A, sigma_y, y
        self.gain_t, self.chol = gain_t, chol  # C_k^{-1} A S_k (K, d_y, D); chol(C_k)

    @cached_property
    def covs(self) -> Tensor:  # type: ignore[override]
        AS = self.A[None] * self.prior_variances[:, None, :]
        covs = torch.diag_embed(self.prior_variances) - AS.transpose(1, 2) @ self.gain_t
        return (covs + covs.transpose(1, 2)) / 2  # symmetric to rounding

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        e = torch.randn(n, self.A.shape[0], dtype=torch.float64, generator=generator)
        prior = self.prior_means[component] + self.prior_variances[component].sqrt() * z
        innovation = self.y - prior @ self.A.T - self.sigma_y * e  # (n, d_y)
        return prior + torch.einsum("nyd,ny->nd", self.gain_t[component], innovation)

    def component_log_prob(self, x: Tensor) -> Tensor:
        x = x.to(torch.float64).reshape(x.shape[0], -1)
        d_y, d_x = self.A.shape
        log_det_c = 2 * torch.diagonal(self.chol, dim1=-2, dim2=-1).log().sum(-1)  # (K,)
        log_det = self.prior_variances.log().sum(-1) - log_det_c
        if self.sigma_y > 0:
            log_det = log_det + 2 * d_y * math.log(self.sigma_y)
            rank = d_x
        else:
            gram = self.A @ self.A.T
            x = x - torch.linalg.solve(gram, x @ self.A.T - self.y, left=False) @ self.A
            log_det = log_det + torch.logdet(gram)
            rank = d_x - d_y
        out = torch.empty(x.shape[0], self.num_components, dtype=torch.float64)
        for k in range(self.num_components):
            delta = x - self.means[k]
            mahalanobis = (delta**2 / self.prior_variances[k]).sum(-1)
            if self.sigma_y > 0:
                mahalanobis = mahalanobis + ((delta @ self.A.T) ** 2).sum(-1) / self.sigma_y**2
            out[:, k] = -0.5 * (mahalanobis + log_det[k] + rank * math.log(2 * math.pi))
        return out


def mixture_posterior(
    mixture: GaussianMixture, A: Tensor | LinearOperator, y: Tensor, sigma_y: float
) -> MixturePosterior:
    """The exact posterior ``p(x | y)`` of the prior ``mixture`` (``K`` diagonal components in
    ``D = d_x`` dimensions) under ``y = A x + sigma_y n``.

    Args:
        mixture: the prior.
        A: ``(d_y, d_x)`` matrix, or a :class:`LinearOperator` on ``(d_x,)`` vectors (its dense
            matrix is used).
        y: ``(d_y,)`` (or ``(1, d_y)``) measurement.
        sigma_y: the measurement noise standard deviation, ``>= 0``.

    Returns:
        :class:`MixturePosterior` (a :class:`FullCovMixture`) with the updated weights
        ``(K,)``, means ``(K, d_x)`` and covariances ``(K, d_x, d_x)``, float64.

    Raises:
        ValueError: ``sigma_y < 0``; shapes that do not match; ``sigma_y = 0`` with an ``A``
            whose ``A S_k A^T`` is singular (not of full row rank).
    """
    sigma_y = check_sigma_y(sigma_y)
    if isinstance(A, LinearOperator):
        A = A.matrix()
    A = torch.as_tensor(A, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    if A.ndim != 2 or A.shape[1] != mixture.dim or A.shape[0] != y.numel():
        raise ValueError(
            f"A must be (d_y, d_x) = ({y.numel()}, {mixture.dim}) for y of {y.numel()} values "
            f"and a {mixture.dim}-D mixture, got A of shape {tuple(A.shape)}"
        )
    variances = mixture.stds**2  # (K, D)
    AS = A[None] * variances[:, None, :]  # A S_k: (K, d_y, D)
    innovation = AS @ A.T + sigma_y**2 * torch.eye(A.shape[0], dtype=torch.float64)
    chol, info = torch.linalg.cholesky_ex(innovation)
    if (info != 0).any():
        raise ValueError(
            f"the measurement covariance A S_k A^T + sigma_y^2 I is singular (sigma_y = "
            f"{sigma_y:g}): sigma_y = 0 needs A of full row rank"
        )
    residual = y - mixture.means @ A.T  # y - A m_k: (K, d_y)
    gain_t = torch.cholesky_solve(AS, chol)  # C_k^{-1} A S_k = G_k^T: (K, d_y, D)
    means = mixture.means + torch.einsum("kyd,ky->kd", gain_t, residual)
    whitened = torch.linalg.solve_triangular(chol, residual[..., None], upper=False)[..., 0]
    log_evidence = (
        -0.5 * (whitened**2).sum(-1)
        - torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
        - 0.5 * A.shape[0] * math.log(2 * math.pi)
    )
    weights = torch.softmax(mixture.weights.log() + log_evidence, dim=0)
    return MixturePosterior(weights, means, mixture.means, variances, A, sigma_y, y, gain_t, chol)
