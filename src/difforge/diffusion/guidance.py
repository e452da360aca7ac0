"""Classifier-free guidance (Ho & Salimans 2022, eq. 6), on the denoiser:

    D_w(x, sigma, c) = D(x, sigma, null) + w (D(x, sigma, c) - D(x, sigma, null)),

``w = guidance_scale`` (w = 1: the plain conditional model; w = 0: unconditional). The
conditional and unconditional passes run as one batch of 2B, counted as one function evaluation.
The null label is ``num_classes`` (the networks' extra embedding row).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ClassifierFreeGuidance(nn.Module):
    def __init__(self, denoiser: nn.Module, guidance_scale: float) -> None:
        super().__init__()
        num_classes = int(getattr(denoiser, "num_classes", 0))
        if num_classes == 0 and guidance_scale != 1.0:
            raise ValueError(
                f"guidance_scale={guidance_scale} needs a class-conditional model; this model is unconditional "
                "(set guidance_scale=1.0 or train with model.num_classes > 0)"
            )
        self.denoiser = denoiser
        self.guidance_scale = float(guidance_scale)
        self.num_classes = num_classes
        self.learned_variance = bool(getattr(denoiser, "learned_variance", False))

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if class_labels is None or self.guidance_scale == 1.0:
            return self.denoiser(x, sigma, class_labels)
        null = torch.full_like(class_labels, self.num_classes)
        both = self.denoiser(
            torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([class_labels, null])
        )
        conditional, unconditional = both.chunk(2)
        return unconditional + self.guidance_scale * (conditional - unconditional)
