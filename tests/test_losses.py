import pytest
import torch

from difforge.diffusion.hybrid_loss import HybridLoss
from difforge.diffusion.losses import DenoisingLoss, EDMLoss, MinSNRLoss
from difforge.diffusion.parameterization import (
    Denoiser,
    EDMParameterization,
    EpsParameterization,
    VParameterization,
)
from difforge.diffusion.schedules import EDMSchedule, LinearSchedule


class ConstantNet(torch.nn.Module):
    """Outputs a learnable tensor (B, out_dim): lets tests read gradients per output."""

    def __init__(self, batch: int, dim: int, learned_variance: bool = False) -> None:
        super().__init__()
        self.learned_variance = learned_variance
        self.output = torch.nn.Parameter(torch.zeros(batch, dim * (2 if learned_variance else 1)))

    def forward(self, x, noise_labels, class_labels=None):
        return self.output


def test_min_snr_weight_for_eps_prediction_is_min_snr_over_snr():
    loss = MinSNRLoss(min_snr_gamma=5.0)
    denoiser = Denoiser(ConstantNet(4, 1), LinearSchedule(), EpsParameterization())
    sigma = torch.tensor([0.1, 0.3, 1.0, 10.0])
    snr = 1 / sigma**2
    torch.testing.assert_close(loss.target_weight(denoiser, sigma), snr.clamp(max=5.0) / snr)
    v_denoiser = Denoiser(ConstantNet(4, 1), LinearSchedule(), VParameterization())
    torch.testing.assert_close(
        loss.target_weight(v_denoiser, sigma), snr.clamp(max=5.0) / (snr + 1)
    )


def test_edm_weighting_is_uniform_under_edm_preconditioning():
    denoiser = Denoiser(ConstantNet(4, 1), EDMSchedule(), EDMParameterization(0.5))
    sigma = torch.tensor([0.002, 0.5, 3.0, 80.0])
    torch.testing.assert_close(
        EDMLoss(sigma_data=0.5).target_weight(denoiser, sigma), torch.ones(4)
    )


def test_loss_is_the_weighted_target_error():
    torch.manual_seed(0)
    net = ConstantNet(8, 3)
    with torch.no_grad():
        net.output.normal_()
    denoiser = Denoiser(net, LinearSchedule(), EpsParameterization())
    x0, noise = torch.randn(8, 3), torch.randn(8, 3)
    sigma = torch.rand(8) + 0.1
    per_sample = DenoisingLoss()(denoiser, x0, sigma, noise)
    torch.testing.assert_close(per_sample, ((net.output - noise) ** 2).mean(1))


def test_the_exact_denoiser_minimises_the_loss(gmm1d, oracle1d):
    """E||D(x) - x0||^2 is smallest at D = E[x0 | x]: perturbing the oracle raises the loss."""
    n = 50_000
    x0, _ = gmm1d.sample(n, torch.Generator().manual_seed(0))
    sigma = torch.full((n,), 1.0, dtype=torch.float64)
    x = x0 + torch.randn(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    best = ((oracle1d(x, sigma) - x0) ** 2).mean()
    for shift in (-0.1, 0.1):
        assert ((oracle1d(x, sigma) + shift - x0) ** 2).mean() > best


def test_hybrid_loss_vlb_gradient_reaches_only_the_variance():
    """Improved DDPM sec. 3.1: the stop-gradient keeps L_vlb from driving the mean."""
    torch.manual_seed(0)
    schedule = LinearSchedule(100, 1e-3, 0.1, scale_to_num_timesteps=False)
    x0, noise = torch.rand(4, 2) * 2 - 1, torch.randn(4, 2)
    sigma = schedule.sigmas[torch.tensor([0, 5, 50, 99])].float()
    grads = {}
    for weight in (0.0, 10.0):
        net = ConstantNet(4, 2, learned_variance=True)
        with torch.no_grad():
            net.output.normal_(generator=torch.Generator().manual_seed(1))
        HybridLoss(vlb_weight=weight)(
            Denoiser(net, schedule, EpsParameterization()), x0, sigma, noise
        ).sum().backward()
        grads[weight] = net.output.grad.clone()
    torch.testing.assert_close(grads[10.0][:, :2], grads[0.0][:, :2])  # mean half: L_simple only
    assert (
        grads[0.0][:, 2:].abs().max() == 0 and grads[10.0][:, 2:].abs().min() > 0
    )  # variance half: L_vlb only


def test_hybrid_loss_needs_a_learned_variance_and_a_discrete_schedule():
    x = torch.zeros(2, 1)
    with pytest.raises(ValueError, match="needs a network with learned_variance=true"):
        HybridLoss()(
            Denoiser(ConstantNet(2, 1), LinearSchedule(), EpsParameterization()),
            x,
            torch.ones(2),
            x,
        )
    with pytest.raises(ValueError, match="needs a discrete schedule"):
        HybridLoss()(
            Denoiser(ConstantNet(2, 1, True), EDMSchedule(), EpsParameterization()),
            x,
            torch.ones(2),
            x,
        )


def test_bad_weighting_parameters_are_refused():
    with pytest.raises(ValueError, match=r"loss.min_snr_gamma must be > 0, got 0"):
        MinSNRLoss(0)
    with pytest.raises(ValueError, match=r"loss.sigma_data must be > 0, got -1"):
        EDMLoss(sigma_data=-1)
