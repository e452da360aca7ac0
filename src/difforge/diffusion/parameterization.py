"""What the network predicts, and the denoiser built from it.

All parameterizations are preconditionings in the sense of Karras et al. 2022 (EDM), eq. 7:

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)),

with ``x = x_0 + sigma eps`` (variance-exploding frame) and ``F`` the network. Writing DDPM's
latent as ``z = x / sqrt(1 + sigma^2)`` (so ``c_in = 1 / sqrt(1 + sigma^2)`` feeds the network the
unit-variance latent it was trained on):

==========  ===========================  ==============================  ==========================
name        c_skip                       c_out                           F predicts
==========  ===========================  ==============================  ==========================
``eps``     1                            -sigma                          eps (Ho et al. 2020)
``x0``      0                            1                               x_0
``v``       1 / (sigma^2 + 1)            -sigma / sqrt(sigma^2 + 1)      v = alpha eps - sigma_vp x_0
                                                                         (Salimans & Ho 2022, sec. 4)
``edm``     sd^2 / (sigma^2 + sd^2)      sigma sd / sqrt(sigma^2 + sd^2) EDM table 1, sd = sigma_data;
                                                                         c_in = 1 / sqrt(sigma^2 + sd^2)
``flow``    1 / (1 + sigma)              -sigma / (1 + sigma)            velocity u = eps - x_0 (rectified
                                                                         flow); c_in = 1 / (1 + sigma)
==========  ===========================  ==============================  ==========================

``flow`` is derived in ``FlowParameterization``'s docstring.

The network's regression target is ``F* = (x_0 - c_skip x) / c_out`` (EDM eq. 8), written here
in closed form in ``x_0`` and ``eps`` so it stays exact as ``sigma -> 0`` and finite at
``sigma = inf``.

Zero terminal SNR (Lin et al. 2024): at ``sigma = inf`` the VE point is infinite, so the
convention is that ``x`` holds the unit noise ``lim x / sigma`` (the VP latent) there; then
``c_in x -> x`` and ``c_skip x -> skip_at_infinity * x`` with ``skip_at_infinity = lim c_skip
sigma`` (0 for x0, v and edm). eps-prediction has no limit (x_0 = x - sigma eps): it cannot be
used with an infinite sigma (Lin et al., sec. 3.2). Conversions between
predictions (x0, eps, v, score) live here too.
"""

from __future__ import annotations

import math
from typing import NamedTuple, cast

import torch
from torch import Tensor, nn

from difforge.diffusion.broadcast import per_sample
from difforge.diffusion.schedules import NoiseSchedule


# Conversions between predictions at noise level sigma, x = x0 + sigma * eps (VE frame).
def eps_from_x0(x: Tensor, x0: Tensor, sigma: Tensor) -> Tensor:
    return (x - x0) / per_sample(sigma, x)


def x0_from_eps(x: Tensor, eps: Tensor, sigma: Tensor) -> Tensor:
    return x - per_sample(sigma, x) * eps


def v_from_x0_eps(x0: Tensor, eps: Tensor, sigma: Tensor) -> Tensor:
    """v = alpha eps - sigma_vp x0 with alpha = 1/sqrt(1+sigma^2), sigma_vp = sigma alpha
    = 1/sqrt(1 + sigma^-2) (finite at sigma = inf, where v = -x0)."""
    s = per_sample(sigma, x0)
    return eps / (1 + s**2).sqrt() - x0 / (1 + s**-2).sqrt()


def noisy_input(x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
    """``x = x0 + sigma noise`` (VE frame), ``noise`` itself where ``sigma = inf`` (the module
    docstring's convention for zero terminal SNR)."""
    s = per_sample(sigma, x0)
    return torch.where(s.isinf(), noise, x0 + s.nan_to_num(posinf=0.0) * noise)


def x0_from_v(x: Tensor, v: Tensor, sigma: Tensor) -> Tensor:
    s = per_sample(sigma, x)
    return x / (1 + s**2) - s / (1 + s**2).sqrt() * v


def score_from_x0(x: Tensor, x0: Tensor, sigma: Tensor) -> Tensor:
    """Tweedie: grad log p_sigma(x) = (E[x0 | x] - x) / sigma^2."""
    return (x0 - x) / per_sample(sigma, x) ** 2


def x0_from_score(x: Tensor, score: Tensor, sigma: Tensor) -> Tensor:
    return x + per_sample(sigma, x) ** 2 * score


class Parameterization:
    """Preconditioning coefficients ``(c_skip, c_out, c_in)`` and the network's target."""

    name: str = "base"
    # lim_{sigma -> inf} c_skip(sigma) sigma; None where it diverges (eps-prediction).
    skip_at_infinity: float | None = 0.0

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        """F* = (x0 - c_skip x) / c_out for x = x0 + sigma * noise, in closed form."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EpsParameterization(Parameterization):
    name = "eps"
    skip_at_infinity = None

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1).sqrt()

    def target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        return noise


class X0Parameterization(Parameterization):
    name = "x0"

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return torch.zeros_like(sigma), torch.ones_like(sigma), 1 / (sigma**2 + 1).sqrt()

    def target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        return x0


class VParameterization(Parameterization):
    name = "v"

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # c_out = -sigma / sqrt(sigma^2 + 1), written to stay finite at sigma = inf.
        return 1 / (sigma**2 + 1), -1 / (1 + sigma**-2).sqrt(), 1 / (sigma**2 + 1).sqrt()

    def target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        return v_from_x0_eps(x0, noise, sigma)


class EDMParameterization(Parameterization):
    """EDM table 1 with ``sigma_data`` the data's standard deviation (0.5 for images in [-1, 1])."""

    name = "edm"

    def __init__(self, sigma_data: float = 0.5) -> None:
        if sigma_data <= 0:
            raise ValueError(f"parameterization.sigma_data must be > 0, got {sigma_data}")
        self.sigma_data = float(sigma_data)

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        sd2 = self.sigma_data**2
        # c_out = sigma sd / sqrt(sigma^2 + sd^2), written to stay finite at sigma = inf.
        c_out = self.sigma_data / (1 + sd2 * sigma**-2).sqrt()
        return sd2 / (sigma**2 + sd2), c_out, 1 / (sigma**2 + sd2).sqrt()

    def target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        # (x0 - c_skip (x0 + sigma n)) / c_out simplified: (sigma x0 - sd^2 n) / (sd sqrt(sigma^2 + sd^2)),
        # each term divided through so that sigma = inf stays finite.
        s = per_sample(sigma, x0)
        sd = self.sigma_data
        return x0 / (sd * (1 + sd**2 * s**-2).sqrt()) - sd * noise / (s**2 + sd**2).sqrt()

    def __repr__(self) -> str:
        return f"EDMParameterization(sigma_data={self.sigma_data})"


class FlowParameterization(Parameterization):
    """The network predicts the rectified-flow velocity ``u = dx_t/dt = eps - x_0`` (Liu et al. 2023;
    Lipman et al. 2023; Esser et al. 2024, eq. 6 with a_t = 1 - t, b_t = t).

    Derivation. With ``t = sigma / (1 + sigma)`` the flow point is ``x_t = (1 - t) x_0 + t eps
    = x / (1 + sigma)``, so the network gets ``c_in = 1 - t = 1 / (1 + sigma)``. From ``x_t`` and
    ``u``: ``x_0 = x_t - t u``, hence

        D(x, sigma) = x / (1 + sigma) - sigma / (1 + sigma) F,
        c_skip = 1 / (1 + sigma),   c_out = -sigma / (1 + sigma),

    and the regression target ``(x_0 - c_skip x) / c_out = eps - x_0`` (EDM eq. 8). ``c_noise`` is
    the schedule's: ``1000 t`` under ``schedule=rectified_flow`` (SD3's timesteps), the fractional
    timestep under a discrete schedule. Under the uniform weighting the loss is the conditional
    flow-matching loss ``||F - (eps - x_0)||^2`` (Lipman et al. 2023, eq. 9).
    """

    name = "flow"
    skip_at_infinity = 1.0  # lim sigma / (1 + sigma): x_0 = eps - F at t = 1

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c_in = 1 / (1 + sigma)
        # c_out = -sigma / (1 + sigma), written to stay finite at sigma = inf
        return c_in, -1 / (1 + sigma**-1), c_in

    def target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        return noise - x0


PARAMETERIZATIONS: dict[str, type[Parameterization]] = {
    cls.name: cls
    for cls in (
        EpsParameterization,
        X0Parameterization,
        VParameterization,
        EDMParameterization,
        FlowParameterization,
    )
}


class NetworkOutput(NamedTuple):
    """A network evaluation: the denoised estimate, the raw mean output F and, for networks with a
    learned variance, the interpolation value v in [-1, 1] (improved DDPM eq. 15), else None."""

    x0: Tensor
    raw: Tensor
    variance_value: Tensor | None


class Denoiser(nn.Module):
    """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) (EDM eq. 7) for any network, schedule and
    parameterization.

    Args:
        net: ``net(x, noise_labels, class_labels) -> out`` (see ``difforge.nets``).
        schedule: gives ``c_noise`` through ``schedule.noise_labels(sigma)``.
        parameterization: gives ``c_skip, c_out, c_in``.
    Call: ``x: (B, ...)`` in the VE frame, ``sigma: (B,)`` -> ``x0: (B, ...)``; rows with
    ``sigma = inf`` hold the unit noise (module docstring).

    Raises:
        ValueError: a schedule with zero terminal SNR and a parameterization that cannot
            denoise pure noise (eps).
    """

    def __init__(
        self, net: nn.Module, schedule: NoiseSchedule, parameterization: Parameterization
    ) -> None:
        super().__init__()
        self.net = net
        self.schedule = schedule
        self.parameterization = parameterization
        self.zero_terminal_snr = math.isinf(schedule.sigma_max)
        if self.zero_terminal_snr and parameterization.skip_at_infinity is None:
            raise ValueError(
                f"parameterization={parameterization.name} cannot predict x0 from pure noise, "
                "which a zero-terminal-SNR schedule (sigma_T = inf) needs: use v, x0 or edm "
                "(Lin et al. 2024, sec. 3.2)"
            )

    evals_per_call = 1  # network evaluations per sample in one call

    @property
    def learned_variance(self) -> bool:
        return bool(getattr(self.net, "learned_variance", False))

    @property
    def num_classes(self) -> int:
        return int(getattr(self.net, "num_classes", 0))

    def predict(
        self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None
    ) -> NetworkOutput:
        sigma = sigma.to(torch.float32).reshape(-1).expand(x.shape[0])
        c_skip, c_out, c_in = self.parameterization.coefficients(sigma)
        net_input, skip = per_sample(c_in, x) * x, per_sample(c_skip, x) * x
        if self.zero_terminal_snr:
            at_infinity = per_sample(sigma.isinf(), x)
            net_input = torch.where(at_infinity, x, net_input)
            skip_limit = self.parameterization.skip_at_infinity * x  # type: ignore[operator]
            skip = torch.where(at_infinity, skip_limit, skip)
        # The network computes in its own dtype (bf16 or float64 under Lightning's "-true"
        # precisions, float32 for the EMA copy), the sampler in the noise's.
        net_dtype = next((p.dtype for p in self.net.parameters() if p.is_floating_point()), None)
        if net_dtype is not None:
            net_input = net_input.to(net_dtype)
        out = self.net(net_input, self.schedule.noise_labels(sigma), class_labels)
        variance_value = None
        if self.learned_variance:
            out, variance_value = out.chunk(2, dim=1)
        x0 = skip + per_sample(c_out, x) * out.to(x.dtype)
        return NetworkOutput(x0, out, variance_value)

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return self.predict(x, sigma, class_labels).x0


class DenoiserWrapper(nn.Module):
    """Base of the modules that wrap a denoiser (guidance, clipping): forwards the whole denoiser
    interface (``predict``, ``learned_variance``, ``num_classes``, ``evals_per_call``), so a
    subclass changes only what it changes, by overriding ``predict``; calling it returns
    ``predict(...).x0``.

    ``denoiser``: a ``Denoiser``, another wrapper, or any ``denoiser(x, sigma, class_labels)``
    module (an exact oracle), whose output then stands for both ``x0`` and ``raw``.
    """

    def __init__(self, denoiser: nn.Module) -> None:
        super().__init__()
        self.denoiser = denoiser

    @property
    def learned_variance(self) -> bool:
        return bool(getattr(self.denoiser, "learned_variance", False))

    @property
    def num_classes(self) -> int:
        return int(getattr(self.denoiser, "num_classes", 0))

    @property
    def evals_per_call(self) -> int:
        """Network evaluations per sample in one call (2 when guidance runs both halves)."""
        return int(getattr(self.denoiser, "evals_per_call", 1))

    def predict(
        self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None
    ) -> NetworkOutput:
        predict = getattr(self.denoiser, "predict", None)
        if predict is not None:
            return cast(NetworkOutput, predict(x, sigma, class_labels))
        x0 = self.denoiser(x, sigma, class_labels)
        return NetworkOutput(x0, x0, None)

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return self.predict(x, sigma, class_labels).x0


class ClippedDenoiser(DenoiserWrapper):
    """Clamps the denoised estimate to the data range while sampling: "static thresholding"
    (Ho et al. 2020's ``clip_denoised``; Saharia et al. 2022, sec. 2.3).

    Needed for eps-prediction at the top of schedules whose last abar_T is tiny (cosine: sigma_T
    of about 2e4), where x0 = x - sigma eps multiplies the network's error by sigma. Images only:
    their range is known.
    """

    def __init__(self, denoiser: nn.Module, low: float = -1.0, high: float = 1.0) -> None:
        super().__init__(denoiser)
        self.low, self.high = low, high

    def predict(
        self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None
    ) -> NetworkOutput:
        output = super().predict(x, sigma, class_labels)
        return output._replace(x0=output.x0.clamp(self.low, self.high))
