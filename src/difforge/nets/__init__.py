"""Networks: ``net(x, noise_labels, class_labels=None) -> out`` (see docs/architecture.md)."""

from difforge.nets.dit import DiT
from difforge.nets.embeddings import SinusoidalEmbedding
from difforge.nets.mlp import MLPDenoiser
from difforge.nets.unet import UNet

__all__ = ["DiT", "MLPDenoiser", "SinusoidalEmbedding", "UNet"]
