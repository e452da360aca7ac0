"""Denoising score matching with a choice of weighting over noise levels.

For ``x = x_0 + sigma * eps`` the loss per sample is (Karras et al. 2022, eq. 8, in target space)

    L = w(sigma) * mean_over_dims || F(c_in x, c_noise) - F* ||^2,   F* = (x_0 - c_skip x) / c_out,

which equals ``w(sigma) / c_out(sigma)^2 * ||D(x, sigma) - x_0||^2``. The weightings, each stated
as its weight on the x_0 error lambda(sigma) and converted by ``w = lambda c_out^2``:

- ``DenoisingLoss`` (``loss=simple``): w = 1, DDPM's L_simple on the chosen target (Ho et al. 2020, eq. 14).
- ``MinSNRLoss`` (``loss=min_snr``): lambda = min(SNR, gamma), SNR = 1 / sigma^2 (Hang et al. 2023, "Min-SNR
  weighting", eq. 10); for eps-prediction w = min(SNR, gamma) / SNR.
- ``EDMLoss`` (``loss=edm``): lambda = (sigma^2 + sd^2) / (sigma sd)^2 (EDM table 1); w = 1 under EDM
  preconditioning. Noise levels come from the schedule (log-normal for ``schedule=edm``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from difforge.checks import check_real
from difforge.diffusion.parameterization import Denoiser, noisy_input


def mean_over_dims(values: Tensor) -> Tensor:
    return values.reshape(values.shape[0], -1).mean(dim=1)


class DenoisingLoss(nn.Module):
    """DDPM's L_simple: the unweighted squared error on the parameterization's target (w = 1).
    Each weighting below is a subclass that states its lambda(sigma).

    Call: ``(denoiser, x0 (B, ...), sigma (B,), noise (B, ...), class_labels) -> (B,)``.
    """

    learned_variance = False

    def target_weight(self, denoiser: Denoiser, sigma: Tensor) -> Tensor:
        """w(sigma), the weight on the target-space error: 1."""
        return torch.ones_like(sigma)

    def forward(
        self,
        denoiser: Denoiser,
        x0: Tensor,
        sigma: Tensor,
        noise: Tensor,
        class_labels: Tensor | None = None,
    ) -> Tensor:
        x = noisy_input(x0, noise, sigma)
        prediction = denoiser.predict(x, sigma, class_labels)
        target = denoiser.parameterization.target(x0, noise, sigma)
        error = mean_over_dims((prediction.raw.float() - target) ** 2)
        return self.target_weight(denoiser, sigma) * error


class WeightedLoss(DenoisingLoss):
    """A weighting stated as lambda(sigma), the weight on ||D - x_0||^2: w = lambda c_out^2."""

    def x0_weight(self, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def target_weight(self, denoiser: Denoiser, sigma: Tensor) -> Tensor:
        _, c_out, _ = denoiser.parameterization.coefficients(sigma)
        return self.x0_weight(sigma) * c_out**2


class MinSNRLoss(WeightedLoss):
    """lambda = min(SNR, gamma), SNR = 1 / sigma^2 (Hang et al. 2023, eq. 10).

    Raises:
        ValueError: ``min_snr_gamma <= 0``.
    """

    def __init__(self, min_snr_gamma: float = 5.0) -> None:
        super().__init__()
        self.min_snr_gamma = check_real("loss.min_snr_gamma", min_snr_gamma, 0, low_open=True)

    def x0_weight(self, sigma: Tensor) -> Tensor:
        return (1 / sigma**2).clamp(max=self.min_snr_gamma)


class EDMLoss(WeightedLoss):
    """lambda = (sigma^2 + sd^2) / (sigma sd)^2 (Karras et al. 2022, table 1): w = 1 under EDM
    preconditioning. Noise levels come from the noise law (log-normal for ``schedule=edm``).

    Raises:
        ValueError: ``sigma_data <= 0``.
    """

    def __init__(self, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.sigma_data = check_real("loss.sigma_data", sigma_data, 0, low_open=True)

    def x0_weight(self, sigma: Tensor) -> Tensor:
        # (sigma^2 + sd^2) / (sigma sd)^2, written to stay finite at sigma = inf
        return 1 / self.sigma_data**2 + sigma**-2
