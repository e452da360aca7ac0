"""Pieces the posterior samplers share: the DDIM step in the VE frame, gradients through the
denoiser, the spectral view of ``y`` and the re-imposition of observed pixels.

Every sampler works in the VE frame ``x = x0 + sigma eps`` with the denoiser
``D(x, sigma) = E[x0 | x]`` (``difforge.diffusion.samplers.common.DenoiserFn``); a VP or flow
model reaches it through the module's denoiser, as the unconditional samplers do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from difforge.checks import check_real
from difforge.diffusion.samplers.common import DenoiserFn, denoise, noise_like
from difforge.diffusion.samplers.euler_ancestral import ancestral_step
from difforge.posterior.operators.base import LinearOperator


def check_eta(eta: float, key: str = "posterior.eta") -> float:
    """DDIM's eta in [0, 1] (0: the probability-flow ODE, 1: DDPM's ancestral noise)."""
    return check_real(key, eta, 0.0, 1.0)


def ddim_step(
    x: Tensor,
    x0: Tensor,
    sigma: float,
    sigma_next: float,
    eta: float,
    generator: torch.Generator | None,
) -> Tensor:
    """One DDIM step (Song et al. 2021, eq. 12) from ``x`` at ``sigma`` with the estimate
    ``x0`` to ``sigma_next``, in the VE frame: Euler's step of the probability-flow ODE to
    ``sigma_down`` then fresh noise ``sigma_up z`` (``euler_ancestral.ancestral_step``,
    ``sigma_down^2 + sigma_up^2 = sigma_next^2``). ``eta = 1`` draws from DDPM's posterior
    ``q(x_s | x_t, x0)`` (Ho et al. 2020, eqs. 6-7); a step to sigma = 0 returns ``x0``.
    The posterior samplers pass a corrected ``x0`` (the ``eps`` of the step follows it)."""
    if sigma_next == 0:
        return x0
    sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
    x = x0 + (sigma_down / sigma) * (x - x0)  # euler.euler_step to sigma_down
    return x + sigma_up * noise_like(x, generator) if sigma_up > 0 else x


def denoise_and_pullback(
    denoiser: DenoiserFn,
    x: Tensor,
    sigma: float,
    class_labels: Tensor | None,
    cotangent: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """``(D(x), J^T v)`` with ``J = dD/dx`` and ``v = cotangent(D(x))``: the gradient of
    ``<v, D(x)>`` through the network (one evaluation and its backward pass)."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        x0 = denoise(denoiser, x_in, sigma, class_labels)
        v = cotangent(x0.detach())
        (grad,) = torch.autograd.grad(x0, x_in, v)
    return x0.detach(), grad


@dataclass(frozen=True)
class Spectral:
    """``y`` in the operator's SVD coordinates (DDRM's convention, Kawar et al. 2022, sec. 3.1).

    Attributes:
        seen: ``(d_x,)`` bool, True for the spectral coordinates ``V^T x`` that ``y`` sees
            (``s_i > 0``).
        s: ``(d_x,)`` singular values padded with zeros.
        y_bar: ``(N, d_x)``, ``(U^T y)_i / s_i`` where seen, 0 elsewhere: ``y_bar = V^T x0 +
            c n`` on the seen coordinates.
        c: ``(d_x,)``, ``sigma_y / s_i`` where seen (the noise level of ``y_bar``), inf
            elsewhere.
    """

    seen: Tensor
    s: Tensor
    y_bar: Tensor
    c: Tensor


def spectral(operator: LinearOperator, y: Tensor, sigma_y: float) -> Spectral:
    """The spectral view of ``y: (N, d_y)`` for methods that need the SVD (DDRM, DDNM, MCGdiff)."""
    svd = operator.svd()
    s = torch.zeros(operator.d_x, dtype=y.dtype, device=y.device)
    r = svd.s.numel()
    s[:r] = svd.s.to(y.device, y.dtype)
    # Singular values below the numerical floor of a dense SVD see nothing.
    seen = s > s.max() * 1e-10
    coeffs = svd.Ut(y)[:, :r]
    y_bar = torch.zeros(y.shape[0], operator.d_x, dtype=y.dtype, device=y.device)
    safe = torch.where(seen, s, torch.ones_like(s))
    y_bar[:, :r] = torch.where(seen[:r], coeffs / safe[:r], torch.zeros_like(coeffs))
    c = torch.where(seen, sigma_y / safe, torch.full_like(s, float("inf")))
    return Spectral(seen=seen, s=s, y_bar=y_bar, c=c)


def impose_known(
    x: Tensor,
    y: Tensor,
    operator: LinearOperator,
    sigma_y: float,
    sigma: float,
    generator: torch.Generator | None,
) -> Tensor:
    """Replace the observed pixels of ``x`` (a mask operator) by ``y`` noised to ``sigma``:
    ``y + sqrt(sigma^2 - sigma_y^2) z``, a draw of ``x0 + sigma eps`` on those pixels since
    ``y = x0 + sigma_y n`` is ``x0`` at noise level ``sigma_y`` (RePaint, Lugmayr et al. 2022,
    alg. 1 line 5, with DDRM's reading of noisy pixels, Kawar et al. 2022, eq. 8). Below
    ``sigma_y`` the pixels are left to the model, which denoises them with the rest."""
    if sigma < sigma_y:
        return x
    known = y + (sigma**2 - sigma_y**2) ** 0.5 * noise_like(y, generator) if sigma > sigma_y else y
    return x - operator.adjoint(operator.forward(x)) + operator.adjoint(known)
