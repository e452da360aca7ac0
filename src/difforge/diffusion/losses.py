"""Denoising score matching with a choice of weighting over noise levels.

For ``x = x_0 + sigma * eps`` the loss per sample is (Karras et al. 2022, eq. 8, in target space)

    L = w(sigma) * mean_over_dims || F(c_in x, c_noise) - F* ||^2,   F* = (x_0 - c_skip x) / c_out,

which equals ``w(sigma) / c_out(sigma)^2 * ||D(x, sigma) - x_0||^2``. The weightings, each stated
as its weight on the x_0 error lambda(sigma) and converted by ``w = lambda c_out^2``:

- ``uniform``: w = 1, DDPM's L_simple on the chosen target (Ho et al. 2020, eq. 14).
- ``min_snr``: lambda = min(SNR, gamma), SNR = 1 / sigma^2 (Hang et al. 2023, "Min-SNR
  weighting", eq. 10); for eps-prediction w = min(SNR, gamma) / SNR.
- ``edm``: lambda = (sigma^2 + sd^2) / (sigma sd)^2 (EDM table 1); w = 1 under EDM
  preconditioning. Noise levels come from the schedule (log-normal for ``schedule=edm``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from difforge.diffusion.parameterization import Denoiser, noisy_input

WEIGHTINGS = ("uniform", "min_snr", "edm")


def mean_over_dims(values: Tensor) -> Tensor:
    return values.reshape(values.shape[0], -1).mean(dim=1)


class DenoisingLoss(nn.Module):
    """Per-sample weighted denoising loss ``(B,)``.

    Args:
        weighting: ``uniform``, ``min_snr`` or ``edm``.
        min_snr_gamma: gamma of min-SNR weighting (the paper's default 5).
        sigma_data: the data standard deviation in EDM's lambda.
    """

    learned_variance = False

    def __init__(
        self, weighting: str = "uniform", min_snr_gamma: float = 5.0, sigma_data: float = 0.5
    ) -> None:
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"unknown loss.weighting {weighting!r}; allowed: {', '.join(WEIGHTINGS)}"
            )
        if min_snr_gamma <= 0 or sigma_data <= 0:
            raise ValueError(
                f"min_snr_gamma and sigma_data must be > 0, got {min_snr_gamma}, {sigma_data}"
            )
        self.weighting = weighting
        self.min_snr_gamma = float(min_snr_gamma)
        self.sigma_data = float(sigma_data)

    def x0_weight(self, sigma: Tensor) -> Tensor:
        """lambda(sigma): the weight on ||D - x_0||^2."""
        if self.weighting == "min_snr":
            return (1 / sigma**2).clamp(max=self.min_snr_gamma)
        if self.weighting == "edm":
            # (sigma^2 + sd^2) / (sigma sd)^2, written to stay finite at sigma = inf
            return 1 / self.sigma_data**2 + sigma**-2
        return torch.ones_like(sigma)

    def target_weight(self, denoiser: Denoiser, sigma: Tensor) -> Tensor:
        if self.weighting == "uniform":
            return torch.ones_like(sigma)
        _, c_out, _ = denoiser.parameterization.coefficients(sigma)
        return self.x0_weight(sigma) * c_out**2

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
        return self.target_weight(denoiser, sigma) * mean_over_dims(
            (prediction.raw.float() - target) ** 2
        )
