"""Pieces every sampler shares: the denoiser protocol, fresh noise, per-step callbacks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

StepCallback = Callable[[dict[str, Any]], None]
# The denoiser at one scalar noise level, ``D(x, sigma)`` (``denoise`` with its labels bound).
DenoiseAt = Callable[[Tensor, float], Tensor]
# One step's update ``(x, x0, sigma, sigma_next, D) -> x_next``: from ``x`` at ``sigma``, with its
# denoised ``x0``, towards ``sigma_next``; ``D(x, sigma)`` calls the denoiser again where the step
# needs more than one evaluation.
StepUpdate = Callable[[Tensor, Tensor, float, float, DenoiseAt], Tensor]


class DenoiserFn(Protocol):
    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor: ...


def noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``x``; drawn on the generator's device for reproducibility."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def denoise(denoiser: DenoiserFn, x: Tensor, sigma: float, class_labels: Tensor | None) -> Tensor:
    """Call the denoiser at one scalar noise level for the whole batch."""
    return denoiser(
        x, torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype), class_labels
    )


def report(
    callback: StepCallback | None, i: int, x: Tensor, sigma: float, denoised: Tensor
) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})
