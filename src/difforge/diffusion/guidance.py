"""Classifier-free guidance (Ho & Salimans 2022, eq. 6), on the denoiser:

    D_w(x, sigma, c) = D(x, sigma, null) + w (D(x, sigma, c) - D(x, sigma, null)),

``w = guidance_scale`` (w = 1: the plain conditional model; w = 0: unconditional). The
conditional and unconditional passes run as one batch of 2B: one call, two network evaluations
per sample (``evals_per_call``). The null label is ``num_classes`` (the networks' extra
embedding row).

With a learned variance the mean is guided and the variance is the conditional branch's, as in
GLIDE (Nichol et al. 2022) and improved-diffusion's guided sampling.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from difforge.checks import check_real
from difforge.diffusion.parameterization import DenoiserWrapper, NetworkOutput


def check_guidance_scale(guidance_scale: object, key: str = "guidance_scale") -> float:
    """``guidance_scale`` as a float ``w >= 0``, else a ValueError naming ``key``.

    ``D_w`` follows the score ``w grad log p(x|c) + (1 - w) grad log p(x)``: 0 <= w < 1
    interpolates between the unconditional and the conditional model, w > 1 is guidance (Ho &
    Salimans 2022 eq. 6, whose w is this w - 1; diffusers' ``guidance_scale`` is this w, Imagen's,
    Saharia et al. 2022 eq. 2). w < 0 would extrapolate beyond the unconditional model, away from
    the class: no guidance either paper defines.
    """
    return check_real(key, guidance_scale, 0.0, meaning="0: unconditional, 1: no guidance")


def check_guidance(num_classes: int, guidance_scale: object, key: str = "guidance_scale") -> float:
    """``guidance_scale`` as a float; raises ValueError (naming ``key``) if it is not a number
    ``>= 0`` or if it is not 1 on an unconditional model (``num_classes = 0``)."""
    scale = check_guidance_scale(guidance_scale, key)
    if num_classes == 0 and scale != 1.0:
        raise ValueError(
            f"{key}={guidance_scale} needs a class-conditional model; this model is unconditional "
            f"(set {key}=1.0, or train with model.num_classes=<the data's number of classes>: "
            "README, 'Class-conditional models and classifier-free guidance')"
        )
    return scale


def check_guidance_trained(
    guidance_scale: float, class_dropout: float, key: str = "guidance_scale"
) -> None:
    """Raises ValueError (naming ``key``) for guidance (w != 1) on a model trained without label
    dropout. The unconditional branch ``D(x, sigma, null)`` of eq. 6 is learned only from the
    labels training replaces by the null label (Ho & Salimans 2022, algorithm 1, ``p_uncond``);
    with ``class_dropout = 0`` it is an untrained embedding, and guidance extrapolates from it
    (on gmm1d at w = 3 the W1 to the requested class grows from 1.4 to 10)."""
    if guidance_scale != 1.0 and class_dropout == 0.0:
        raise ValueError(
            f"{key}={guidance_scale:g} needs an unconditional branch, and this model is trained "
            "with module.class_dropout=0 (its null label never trained): train with "
            "module.class_dropout > 0 (Ho & Salimans 2022: 0.1 or 0.2), or use guidance_scale=1"
        )


class ClassifierFreeGuidance(DenoiserWrapper):
    def __init__(self, denoiser: nn.Module, guidance_scale: float) -> None:
        super().__init__(denoiser)
        self.guidance_scale = check_guidance(self.num_classes, guidance_scale)

    @property
    def evals_per_call(self) -> int:
        both_halves = self.guidance_scale != 1.0
        return super().evals_per_call * (2 if both_halves else 1)

    def predict(
        self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None
    ) -> NetworkOutput:
        if class_labels is None or self.guidance_scale == 1.0:
            return super().predict(x, sigma, class_labels)
        null = torch.full_like(class_labels, self.num_classes)
        sigma = sigma.reshape(-1).expand(x.shape[0])
        both = super().predict(
            torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([class_labels, null])
        )
        (x0_c, x0_u), (raw_c, raw_u) = both.x0.chunk(2), both.raw.chunk(2)
        w = self.guidance_scale
        return NetworkOutput(
            x0_u + w * (x0_c - x0_u),
            raw_u + w * (raw_c - raw_u),
            None if both.variance_value is None else both.variance_value.chunk(2)[0],
        )
