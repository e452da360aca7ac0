"""The hybrid objective of improved DDPM (Nichol & Dhariwal 2021, sec. 3.1):

    L_hybrid = L_simple + lambda * L_vlb,     lambda = 0.001,

for networks with a learned variance Sigma_theta = exp(v log beta_t + (1 - v) log beta~_t)
(eq. 15, the network outputs v in [-1, 1] mapped to [0, 1]). L_vlb is estimated from one
uniformly drawn timestep as T * L_{t-1} (bits/dim), and its gradient reaches only the variance:
the mean enters it through a stop-gradient, so L_simple alone drives the mean (sec. 3.1).
L_0 is the discretized Gaussian decoder for 8-bit images, the Gaussian density for continuous data.
Needs a discrete schedule.
"""

from __future__ import annotations

from torch import Tensor, nn

from difforge.checks import check_flag, check_real
from difforge.diffusion.broadcast import per_sample
from difforge.diffusion.likelihood import reverse_step_log_variance, vlb_term
from difforge.diffusion.losses import mean_over_dims
from difforge.diffusion.parameterization import Denoiser
from difforge.diffusion.schedules import require_discrete


class HybridLoss(nn.Module):
    """Per-sample ``L_simple + vlb_weight * T * L_{t-1}``: ``(B,)``.

    Args:
        vlb_weight: lambda (the paper's 0.001).
        discretized_decoder: L_0 for 8-bit images (True) or continuous data (False).
    """

    learned_variance = True

    def __init__(self, vlb_weight: float = 0.001, discretized_decoder: bool = True) -> None:
        super().__init__()
        self.vlb_weight = check_real("loss.vlb_weight", vlb_weight, 0)
        self.discretized_decoder = check_flag("loss.discretized_decoder", discretized_decoder)

    def forward(
        self,
        denoiser: Denoiser,
        x0: Tensor,
        sigma: Tensor,
        noise: Tensor,
        class_labels: Tensor | None = None,
    ) -> Tensor:
        schedule = require_discrete(denoiser.schedule, "loss=hybrid")
        if not denoiser.learned_variance:
            raise ValueError("loss=hybrid needs a network with learned_variance=true")
        x = x0 + per_sample(sigma, x0) * noise
        prediction = denoiser.predict(x, sigma, class_labels)
        target = denoiser.parameterization.target(x0, noise, sigma)
        simple = mean_over_dims((prediction.raw.float() - target) ** 2)

        index = schedule.sigma_to_index(sigma)
        c_skip, c_out, _ = denoiser.parameterization.coefficients(sigma)
        frozen_x0 = (
            per_sample(c_skip, x) * x + per_sample(c_out, x) * prediction.raw.detach().float()
        )
        assert prediction.variance_value is not None  # learned variance, checked above
        log_var = reverse_step_log_variance(
            schedule, index, x0, "learned", prediction.variance_value.float()
        )
        abar = schedule.alphas_cumprod.to(x0.device)[index]
        z_t = x * per_sample(abar.sqrt(), x)
        vlb = vlb_term(schedule, x0, z_t, index, frozen_x0, log_var, self.discretized_decoder)
        return simple + self.vlb_weight * schedule.num_timesteps * vlb
