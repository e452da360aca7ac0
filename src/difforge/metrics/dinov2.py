"""DINOv2 features for FD_DINOv2 (Stein et al. 2023; EDM2, Karras et al. 2024), from a local file.

The network is DINOv2 ViT-L/14's class-token embedding (1024-d). No installed package builds it
offline (torch hub fetches its code from GitHub, and torch-fidelity's extractor goes through the
hub), so difforge reads it as a ``torch.export`` program (``.pt2``) saved once where the hub is
reachable::

    net = torch.hub.load("facebookresearch/dinov2", "dinov2_vitl14").eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (torch.zeros(2, 3, 224, 224),), dynamic_shapes=({0: batch},))
    torch.export.save(program, "dinov2_vitl14.pt2")

Preprocessing is EDM2's (``calculate_metrics.py``, DINOv2 detector, ``resize_mode='torch'``):
uint8 images resized to 224x224 (bicubic, antialiased), scaled to [0, 1], normalized with the
ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difforge.errors import DifforgeError

INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXPORT_HINT = (
    "save DINOv2 once with torch.export (see difforge.metrics.dinov2's docstring): "
    "torch.export.save(torch.export.export(net, (torch.zeros(2, 3, 224, 224),), "
    "dynamic_shapes=({0: torch.export.Dim('batch')},)), 'dinov2_vitl14.pt2')"
)


class DINOv2Features(nn.Module):
    """Images ``(N, C, H, W)`` in [-1, 1] -> DINOv2 features ``(N, D)`` float32.

    ``net``: the exported network, ``(N, 3, 224, 224)`` normalized -> ``(N, D)``.
    """

    name = "dinov2"

    def __init__(self, net: nn.Module, source: str = "") -> None:
        super().__init__()
        self.net = net
        self.source = source

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"dinov2 expects images (N, 1 or 3, H, W), got {tuple(x.shape)}")
        # EDM2 feeds uint8 pixel values: quantize first, as the images a paper reports would be.
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic", antialias=True)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).reshape(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).reshape(1, 3, 1, 1)
        features = self.net((x / 255 - mean) / std)
        if features.ndim != 2 or features.shape[0] != x.shape[0]:
            raise DifforgeError(
                f"the DINOv2 network {self.source} returned shape {tuple(features.shape)} for "
                f"{x.shape[0]} images; expected (N, D) class-token features"
            )
        return features.float()


def load_dinov2(path: str | os.PathLike) -> DINOv2Features:
    """DINOv2 from a ``torch.export`` file (``metrics.dinov2_weights``); a one-line DifforgeError
    for a missing file or one that is not an exported program."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DifforgeError(f"metrics.dinov2_weights={path}: no such file; {EXPORT_HINT}")
    try:
        program = torch.export.load(str(file))
    except Exception as error:  # any reader error means the same thing: not an exported program
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise DifforgeError(
            f"metrics.dinov2_weights={path} is not a torch.export program "
            f"({type(error).__name__}: {first}); {EXPORT_HINT}"
        ) from None
    return DINOv2Features(program.module(), str(file))
