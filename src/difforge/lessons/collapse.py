"""Mode collapse, measured: how much of each mode a sampler's output covers, and a tiny trainer.

``mode_report`` compares the on-mode mass of each component (``difforge.metrics.mixture.mode_mass``:
assigned to it and within ``radius`` of its standard deviations) with the same quantity for exact
samples; a mode is covered when it receives at least half of its true on-mode mass.

``train_mlp`` fits ``difforge.nets.mlp.MLPDenoiser`` by denoising score matching in a plain loop
(no Lightning): seconds on a CPU for the toy mixtures.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from difforge.diffusion.gaussian_mixture import GaussianMixture
from difforge.diffusion.losses import DenoisingLoss
from difforge.diffusion.parameterization import Denoiser, EpsParameterization
from difforge.diffusion.schedules import NoiseSchedule
from difforge.metrics.mixture import mode_mass, true_mode_mass
from difforge.nets.mlp import MLPDenoiser


def mode_report(
    samples: Tensor,
    mixture: GaussianMixture,
    truth: Tensor | None = None,
    radius: float = 3.0,
    coverage_threshold: float = 0.5,
) -> dict[str, Any]:
    """``modes_covered`` (modes with at least ``coverage_threshold`` of their true on-mode mass),
    ``off_mode`` (share of samples on no mode), ``mass`` and ``true_mass`` (per mode, lists) and
    ``max_mass_error``."""
    truth = true_mode_mass(mixture, radius, num_samples=200_000) if truth is None else truth
    mass = mode_mass(samples, mixture, radius)
    covered = mass >= coverage_threshold * truth
    return {
        "modes_covered": int(covered.sum()),
        "num_modes": mixture.num_components,
        "off_mode": float(1 - mass.sum()),
        "true_off_mode": float(1 - truth.sum()),
        "mass": mass.tolist(),
        "true_mass": truth.tolist(),
        "max_mass_error": float((mass - truth).abs().max()),
    }


def train_mlp(
    mixture: GaussianMixture,
    schedule: NoiseSchedule,
    hidden_dim: int = 64,
    num_layers: int = 2,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    num_data: int = 50_000,
) -> Denoiser:
    """An MLP denoiser (eps prediction, uniform weighting: Ho et al. 2020's L_simple) trained
    with AdamW on ``num_data`` exact samples, the learning rate decaying linearly to 0 (the last
    iterate of a constant rate is noisy, and there is no EMA here); returned in eval mode."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = MLPDenoiser(mixture.dim, hidden_dim=hidden_dim, num_layers=num_layers, embed_dim=32)
    denoiser = Denoiser(net, schedule, EpsParameterization())
    loss_fn = DenoisingLoss()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    data = mixture.sample(num_data, generator)[0].to(torch.float32)
    for _ in range(steps):
        x0 = data[torch.randint(0, num_data, (batch_size,), generator=generator)]
        sigma = schedule.sample_training_sigmas(batch_size, generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        loss = loss_fn(denoiser, x0, sigma, noise).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        decay.step()
    return denoiser.eval()
