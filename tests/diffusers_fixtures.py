"""Small diffusers pipelines trained in the tests (no download): a ``UNet2DModel`` on scikit-learn's
8x8 digits, a few optimizer steps with diffusers' own noising, saved with
``DDPMPipeline.save_pretrained``."""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE_SIZE = 8


def tiny_unet(num_classes: int | None = None):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=IMAGE_SIZE,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=8,
        num_class_embeds=num_classes,
    )


def digits_images(n: int = 256) -> torch.Tensor:
    """``(n, 1, 8, 8)`` digits scaled to [-1, 1]."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images[:n], dtype=torch.float32)
    return (images / 8.0 - 1.0).clamp(-1, 1)[:, None]


def train_pipeline(
    path: Path,
    prediction_type: str = "epsilon",
    *,
    steps: int = 30,
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
    clip_sample: bool = True,
    **scheduler_options,
) -> Path:
    """Train a tiny UNet2DModel for ``steps`` steps on digits with diffusers' DDPMScheduler targets
    (eps, x0 or v) and save the pipeline to ``path``."""
    from diffusers import DDPMPipeline, DDPMScheduler

    scheduler = DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        clip_sample=clip_sample,
        **scheduler_options,
    )
    unet = tiny_unet()
    data = digits_images()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x0 = data[torch.randint(0, len(data), (32,), generator=generator)]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, num_train_timesteps, (32,), generator=generator)
        noisy = scheduler.add_noise(x0, noise, t)
        target = {
            "epsilon": noise,
            "sample": x0,
            "v_prediction": scheduler.get_velocity(x0, noise, t),
        }[prediction_type]
        loss = torch.nn.functional.mse_loss(unet(noisy, t).sample, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    DDPMPipeline(unet=unet.eval(), scheduler=scheduler).save_pretrained(str(path))
    return path
