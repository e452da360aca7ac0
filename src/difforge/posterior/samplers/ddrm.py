"""DDRM: denoising diffusion restoration models (Kawar, Elad, Ermon & Song 2022, NeurIPS,
eqs. 7-8), in the spectral space of ``A = U diag(s) V^T``.

With ``x_bar = V^T x``, ``y_bar_i = (U^T y)_i / s_i`` and ``c_i = sigma_y / s_i`` (so
``y_bar_i = x0_bar_i + c_i n`` on the seen coordinates), the start (eq. 7) is
``x_bar_T = y_bar + sqrt(sigma_T^2 - c^2) z`` on the seen coordinates and noise elsewhere, and
each step to ``sigma' = sigma_{t-1}`` with ``x0_bar = V^T D(x_t, sigma_t)`` draws (eq. 8)

- unseen (``s_i = 0``): ``x0_bar + sqrt(1 - eta^2) sigma' (x_bar_t - x0_bar) / sigma_t + eta sigma' z``;
- seen, ``sigma' < c_i``: ``x0_bar + sqrt(1 - eta^2) sigma' (y_bar - x0_bar) / c_i + eta sigma' z``;
- seen, ``sigma' >= c_i``: ``(1 - eta_b) x0_bar + eta_b y_bar + sqrt(sigma'^2 - c_i^2 eta_b^2) z``.

``eta_b = 1`` and 20 steps are the paper's defaults (sec. 5; its code, bahjat-kawar/ddrm
``functions/denoising.py``, runs the same update). ``eta`` defaults to 1, not the paper's 0.85:
with the exact denoiser of the mixture test bed (Cardoso et al. 2024) ``eta = 1`` gives the lower
sliced Wasserstein distance in 16 of the 18 cells of docs/guide.md sec. 6 (NFE 20 and 100; not
``d_x = 800, d_y = 1``, 2 draws) and in 10 of the 12 of docs/benchmarks.md sec. 8 (not the
coordinate masks at ``d_x = 8, d_y = 4``); on a small trained digits network it does not degrade
box inpainting (KID and classifier accuracy better at 20 and 100 steps, FID better at 20 and 6 %
higher at 100; 128 draws, so within noise). DDRM is not exact on a Gaussian prior: the seen
coordinates ignore the prior while ``sigma' >= c_i``, and the fresh noise ``eta sigma'`` does not
shrink with the step, so for ``eta > 0`` the error does not vanish as the steps grow even where
the posterior factorises (an isotropic prior with ``sigma_y = 0``, where ``eta = 0`` is exact in
the limit; tests/test_posterior_samplers.py).
One network evaluation per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from difforge.diffusion.samplers.common import DenoiserFn, StepCallback, denoise, noise_like, report
from difforge.posterior.operators.base import LinearOperator
from difforge.posterior.samplers.common import check_eta, spectral


def check_ddrm_options(eta: float = 1.0, eta_b: float = 1.0) -> None:
    """``0 <= eta, eta_b <= 1``."""
    check_eta(eta)
    check_eta(eta_b, "posterior.eta_b")


def sample_ddrm(
    denoiser: DenoiserFn,
    y: Tensor,
    operator: LinearOperator,
    sigma_y: float,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 1.0,
    eta_b: float = 1.0,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    class_labels: Tensor | None = None,
) -> Tensor:
    """x: ``(N, *x_shape)`` at ``sigmas[0]``; y: ``(N, d_y)``; returns ``(N, *x_shape)``."""
    check_ddrm_options(eta, eta_b)
    svd = operator.svd()
    view = spectral(operator, y, sigma_y)
    seen, y_bar, c = view.seen, view.y_bar, view.c
    c_seen = torch.where(seen, c, torch.zeros_like(c))
    sigma_0 = float(sigmas[0])
    x_bar = svd.Vt(x)
    start = seen & (c <= sigma_0)
    spread = (sigma_0**2 - c_seen**2).clamp_min(0).sqrt()
    x_bar = torch.where(start, y_bar + spread * noise_like(x_bar, generator), x_bar)
    x = svd.V(x_bar)
    keep = (1 - eta**2) ** 0.5
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(denoiser, x, sigma, class_labels)
        report(callback, i, x, sigma, x0)
        x0_bar, z = svd.Vt(x0), noise_like(x_bar, generator)
        unseen = x0_bar + keep * sigma_next * (x_bar - x0_bar) / sigma + eta * sigma_next * z
        c_safe = torch.where(c_seen > 0, c_seen, torch.ones_like(c_seen))
        below = x0_bar + keep * sigma_next * (y_bar - x0_bar) / c_safe + eta * sigma_next * z
        spread = (sigma_next**2 - (c_seen * eta_b) ** 2).clamp_min(0).sqrt()
        above = (1 - eta_b) * x0_bar + eta_b * y_bar + spread * z
        x_bar = torch.where(seen, torch.where(sigma_next < c_seen, below, above), unseen)
        x = svd.V(x_bar)
    return x
