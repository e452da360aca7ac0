"""Noise schedules, all expressed as a noise level sigma in the variance-exploding frame.

A DDPM schedule defines ``abar_t = prod_{s<=t} alpha_s`` for ``t = 1..T``; the same noised point
in the variance-exploding frame ``x = x_0 + sigma * eps`` has (Karras et al. 2022, table 1; Song et
al. 2021, eq. 28)

    sigma_t = sqrt((1 - abar_t) / abar_t),      abar_t = 1 / (1 + sigma_t^2).

Every schedule provides:

- ``sample_training_sigmas(batch)``: the noise levels drawn by the training loss;
- ``noise_labels(sigma)``: what the network is conditioned on (``c_noise``);
- ``sigma_min`` / ``sigma_max``: the range a sampler's grid may span.

Discrete schedules (``linear``, ``cosine``, ``sigmoid``) also expose ``betas`` and
``alphas_cumprod`` as float64 tensors of length T (index ``t - 1`` holds ``abar_t``), and feed
the network the (fractional) timestep index as DDPM does.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from difforge.checks import check_int
from difforge.errors import DifforgeWarning

MAX_BETA = 0.999  # Nichol & Dhariwal 2021, sec. 3.2: clip betas to avoid singularities near t = T


# q(x_T) keeps sqrt(abar_T) of the data; sampling starts from N(0, I) regardless, so a larger
# abar_T shifts every sample (lesson 3 of docs/guide.md: abar_T = 0.36 gives the exact denoiser a
# W1 of about 1 on gmm1d). 1e-3 leaves 3% of the data's scale.
MAX_TERMINAL_ALPHA_BAR = 1e-3


def check_terminal_noise(name: str, alpha_bar_T: float) -> None:
    """Warn, with the value, when a schedule's forward process does not end in noise."""
    if alpha_bar_T > MAX_TERMINAL_ALPHA_BAR:
        warnings.warn(
            f"schedule {name}: abar_T = {alpha_bar_T:.4g} > {MAX_TERMINAL_ALPHA_BAR:g}, so q(x_T) still "
            f"holds sqrt(abar_T) = {math.sqrt(alpha_bar_T):.3g} of the data and sampling from N(0, I) "
            "is biased; use more timesteps or a larger beta_end/sigma_max",
            DifforgeWarning,
            stacklevel=3,
        )


class NoiseSchedule:
    """Base class: a law of training noise levels and a noise-label map for the network."""

    name: str = "base"
    is_discrete: bool = False

    # Set by each schedule's __init__ as Python floats (no graph break when read under compile).
    _sigma_min: float
    _sigma_max: float

    @property
    def sigma_min(self) -> float:
        """The smallest noise level a sampler's grid reaches."""
        return self._sigma_min

    @property
    def sigma_max(self) -> float:
        """The top a sampler starts from (inf under zero terminal SNR)."""
        return self._sigma_max

    def sample_training_sigmas(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Noise levels for the training loss: ``(batch_size,)`` float32 on ``device``.

        Drawn on the CPU (with ``generator`` if given, a CPU generator) so that a seed fixes them
        whatever the device.
        """
        return self._training_sigmas(batch_size, generator).to(device=device, dtype=torch.float32)

    def _training_sigmas(self, batch_size: int, generator: torch.Generator | None) -> Tensor:
        """The schedule's own training law: ``(batch_size,)`` float64 on the CPU."""
        raise NotImplementedError

    def noise_labels(self, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def prior_scale(self, sigma: float) -> float:
        """Standard deviation of the sampler's starting draw at noise level ``sigma`` in the VE
        frame, per unit of standard-normal noise: the schedule's prior."""
        raise NotImplementedError

    def training_quantile(self, sigma: Tensor) -> Tensor:
        """Where ``sigma`` lies in the training noise law, in [0, 1] (its CDF): t / T for discrete
        schedules. Used to report the loss per quartile of noise."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sigma_min={self.sigma_min:.4g}, sigma_max={self.sigma_max:.4g})"
        )


class DiscreteSchedule(NoiseSchedule):
    """A DDPM schedule given by its betas ``(T,)`` (Ho et al. 2020, sec. 2).

    ``alphas_cumprod[t - 1] = abar_t = prod_{s=1..t} (1 - beta_s)``, float64.

    Args:
        betas: ``(T,)`` in (0, 1], before clipping.
        max_beta: clip betas at this value (Nichol & Dhariwal 2021, sec. 3.2); None: no clipping.
        rescale_zero_terminal_snr: rescale ``sqrt(abar)`` linearly so that ``abar_T = 0`` exactly
            while ``abar_1`` is unchanged (Lin et al. 2024, "Common Diffusion Noise Schedules and
            Sample Steps are Flawed", algorithm 1). Then ``beta_T = 1``, ``sigma_T = inf``: the
            last step is pure noise, and only parameterizations that can predict x_0 from pure
            noise (v, x0, edm) can be trained on it (Lin et al., sec. 3.2).

    ``sigma_max`` is the top a sampler starts from: the largest sigma whose beta was not clipped
    (a clipped last beta, 0.999 in cosine, would put it at about 2e4 where any noise-prediction
    error is multiplied by sigma), or ``inf`` with zero terminal SNR.

    Raises:
        ValueError: betas not in (0, 1], or a beta of 1 before the last step.
    """

    is_discrete = True

    def __init__(
        self,
        betas: Tensor,
        max_beta: float | None = None,
        rescale_zero_terminal_snr: bool = False,
    ) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or len(betas) < 2:
            raise ValueError(
                f"betas must be a 1-D tensor of length >= 2, got shape {tuple(betas.shape)}"
            )
        if not ((betas > 0) & (betas <= 1)).all() or (betas[:-1] >= 1).any():
            raise ValueError("every beta must lie in (0, 1), the last one in (0, 1]")
        top_index = len(betas) - 1
        if rescale_zero_terminal_snr:
            betas = _rescale_zero_terminal_snr(betas)
        elif max_beta is not None:
            clipped = betas >= max_beta
            if clipped.any():
                top_index = int(clipped.nonzero()[0]) - 1
            betas = betas.clamp(max=max_beta)
            if top_index < 0:
                raise ValueError(f"max_beta={max_beta} clips every beta")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        if rescale_zero_terminal_snr:
            self.alphas_cumprod[-1] = 0.0  # exactly, not a rounding residue
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
        self.rescale_zero_terminal_snr = bool(rescale_zero_terminal_snr)
        # Python floats: reading them inside a compiled function causes no graph break.
        self._sigma_min, self._sigma_max = float(self.sigmas[0]), float(self.sigmas[top_index])
        # The largest finite sigma of the table: noise labels are interpolated below it.
        self._sigma_finite_max = float(self.sigmas[torch.isfinite(self.sigmas)][-1])
        check_terminal_noise(self.name, float(self.alphas_cumprod[-1]))
        self._log_sigmas_by_device: dict[torch.device, Tensor] = {}

    def prior_scale(self, sigma: float) -> float:
        """The VP prior N(0, I) in the VE frame: ``x_T = sqrt(1 + sigma_T^2) z`` (Song et al.
        2021, eq. 28); at ``sigma = inf`` the sampler starts from ``z`` itself."""
        return math.sqrt(1 + sigma**2)

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def sample_training_timesteps(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """Timestep indices ``t - 1`` uniform on ``{0, ..., T - 1}`` (DDPM algorithm 1), on CPU."""
        return torch.randint(0, self.num_timesteps, (batch_size,), generator=generator)

    def _training_sigmas(self, batch_size: int, generator: torch.Generator | None) -> Tensor:
        return self.sigmas[self.sample_training_timesteps(batch_size, generator)]

    def _log_sigmas(self, device: torch.device) -> Tensor:
        if device not in self._log_sigmas_by_device:
            self._log_sigmas_by_device[device] = self.sigmas.log().to(
                device=device, dtype=torch.float32
            )
        return self._log_sigmas_by_device[device]

    def sigma_to_timestep(self, sigma: Tensor) -> Tensor:
        """Fractional timestep index in ``[0, T - 1]`` by linear interpolation in log sigma.

        Exact at the table's sigmas; between them it lets continuous-sigma solvers (Karras grid)
        query a network trained on discrete timesteps, as k-diffusion does.
        """
        log_sigmas = self._log_sigmas(sigma.device)
        sigma = sigma.to(torch.float32)
        log_sigma = sigma.clamp(min=self.sigma_min, max=self._sigma_finite_max).log()
        high = torch.searchsorted(log_sigmas, log_sigma).clamp(1, self.num_timesteps - 1)
        low = high - 1
        frac = (log_sigma - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])
        timestep = low.to(torch.float32) + frac.nan_to_num(0.0).clamp(0, 1)
        # Zero terminal SNR: sigma = inf is the last timestep, not an interpolation.
        return torch.where(sigma.isinf(), float(self.num_timesteps - 1), timestep)

    def sigma_to_index(self, sigma: Tensor) -> Tensor:
        """Nearest integer timestep index ``t - 1`` for sigmas on the table: ``(B,)`` long."""
        return self.sigma_to_timestep(sigma).round().long()

    def noise_labels(self, sigma: Tensor) -> Tensor:
        return self.sigma_to_timestep(sigma)

    def training_quantile(self, sigma: Tensor) -> Tensor:
        return (self.sigma_to_timestep(sigma) + 0.5) / self.num_timesteps


class LinearSchedule(DiscreteSchedule):
    """Ho et al. 2020, sec. 4: betas linear from ``beta_start`` to ``beta_end``, given for
    T = 1000 and scaled by 1000 / T (Nichol & Dhariwal 2021, improved-diffusion's
    ``get_named_beta_schedule``), so that abar_T is about the same, near 0, for every T. Betas are
    clipped at 0.999 (T <= 20). ``scale_to_num_timesteps=False`` keeps the given betas for any T
    (lesson 3 of docs/guide.md: a forward process that stops short of noise).
    """

    name = "linear"

    def __init__(
        self,
        num_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        scale_to_num_timesteps: bool = True,
        rescale_zero_terminal_snr: bool = False,
    ) -> None:
        check_int("schedule.num_timesteps", num_timesteps, minimum=2)
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}"
            )
        scale = 1000 / num_timesteps if scale_to_num_timesteps else 1.0
        betas = torch.linspace(
            scale * beta_start, scale * beta_end, num_timesteps, dtype=torch.float64
        )
        super().__init__(
            betas.clamp(max=MAX_BETA),
            max_beta=MAX_BETA,
            rescale_zero_terminal_snr=rescale_zero_terminal_snr,
        )


def _betas_from_alphas_cumprod(abar: Tensor) -> Tensor:
    """beta_t = 1 - abar_t / abar_{t-1} with abar_0 = 1 (Nichol & Dhariwal eq. 17, before clipping)."""
    previous = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return 1 - abar / previous


def _rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. 2024, algorithm 1: shift and scale sqrt(abar) to end at 0, keeping abar_1."""
    sqrt_abar = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    return _betas_from_alphas_cumprod(sqrt_abar**2)


class CosineSchedule(DiscreteSchedule):
    """Nichol & Dhariwal 2021, eq. 17: abar_t = f(t) / f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2).

    Betas are clipped at 0.999, so the last abar_t differ from f(t)/f(0) where clipping acts.
    """

    name = "cosine"

    def __init__(
        self,
        num_timesteps: int = 1000,
        s: float = 0.008,
        max_beta: float = MAX_BETA,
        rescale_zero_terminal_snr: bool = False,
    ) -> None:
        check_int("schedule.num_timesteps", num_timesteps, minimum=2)
        if s < 0:
            raise ValueError(f"cosine schedule offset s must be >= 0, got {s}")
        t = torch.arange(num_timesteps + 1, dtype=torch.float64)
        f = torch.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2
        # f(T) = 0: unclipped, the last beta is 1 (zero terminal SNR already).
        super().__init__(
            _betas_from_alphas_cumprod((f / f[0])[1:]).clamp(max=1.0),
            max_beta=max_beta,
            rescale_zero_terminal_snr=rescale_zero_terminal_snr,
        )


class SigmoidSchedule(DiscreteSchedule):
    """Chen 2023 ("On the importance of noise scheduling"), algorithm 1 (sigmoid):

    abar(t) = (v_end - sigmoid((t (end - start) + start) / tau)) / (v_end - v_start),
    v_start = sigmoid(start / tau), v_end = sigmoid(end / tau), t in [0, 1].
    """

    name = "sigmoid"

    def __init__(
        self,
        num_timesteps: int = 1000,
        start: float = -3.0,
        end: float = 3.0,
        tau: float = 1.0,
        max_beta: float = MAX_BETA,
        rescale_zero_terminal_snr: bool = False,
    ) -> None:
        check_int("schedule.num_timesteps", num_timesteps, minimum=2)
        if not start < end or tau <= 0:
            raise ValueError(
                f"sigmoid schedule needs start < end and tau > 0, got start={start}, end={end}, tau={tau}"
            )
        t = torch.arange(1, num_timesteps + 1, dtype=torch.float64) / num_timesteps
        v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
        v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
        abar = (v_end - torch.sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)
        super().__init__(
            _betas_from_alphas_cumprod(abar.clamp(min=1e-12)),
            max_beta=max_beta,
            rescale_zero_terminal_snr=rescale_zero_terminal_snr,
        )


class EDMSchedule(NoiseSchedule):
    """Karras et al. 2022 (EDM): continuous sigma in ``[sigma_min, sigma_max]``.

    Training draws ``ln(sigma) ~ N(P_mean, P_std^2)`` (table 1, "noise distribution"); the
    network is conditioned on ``c_noise = ln(sigma) / 4`` (table 1). Samplers default to the
    grid of eq. 5 with ``rho``.
    """

    name = "edm"

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        P_mean: float = -1.2,
        P_std: float = 1.2,
        sigma_data: float = 0.5,
    ) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        if rho <= 0 or P_std <= 0 or sigma_data <= 0:
            raise ValueError(
                f"rho, P_std and sigma_data must be > 0, got rho={rho}, P_std={P_std}, sigma_data={sigma_data}"
            )
        self._sigma_min = float(sigma_min)
        self._sigma_max = float(sigma_max)
        check_terminal_noise(self.name, 1 / (1 + self._sigma_max**2))
        self.rho = float(rho)
        self.P_mean = float(P_mean)
        self.P_std = float(P_std)
        self.sigma_data = float(sigma_data)

    def _training_sigmas(self, batch_size: int, generator: torch.Generator | None) -> Tensor:
        normal = torch.randn(batch_size, generator=generator, dtype=torch.float64)
        return (normal * self.P_std + self.P_mean).exp()

    def noise_labels(self, sigma: Tensor) -> Tensor:
        return sigma.to(torch.float32).log() / 4

    def prior_scale(self, sigma: float) -> float:
        """EDM's VE prior: ``x = sigma_max n`` (Karras et al. 2022, algorithm 1, line 1)."""
        return sigma

    def training_quantile(self, sigma: Tensor) -> Tensor:
        z = (sigma.to(torch.float32).log() - self.P_mean) / self.P_std
        return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def flow_time(sigma: Tensor) -> Tensor:
    """The rectified-flow time of a VE noise level: ``t = sigma / (1 + sigma)`` (1 where sigma is inf)."""
    return torch.where(torch.isinf(sigma), torch.ones_like(sigma), sigma / (1 + sigma))


def flow_sigma(t: Tensor) -> Tensor:
    """The VE noise level of a rectified-flow time: ``sigma = t / (1 - t)``."""
    return t / (1 - t)


class RectifiedFlowSchedule(NoiseSchedule):
    """Rectified flow (Liu et al. 2023; Lipman et al. 2023, conditional OT path; Esser et al. 2024).

    The straight path ``x_t = (1 - t) x_0 + t eps``, t in [0, 1], is the VE point
    ``x = x_t / (1 - t) = x_0 + sigma eps`` at ``sigma = t / (1 - t)`` (so ``t = sigma / (1 + sigma)``,
    and the signal-to-noise ratio is ``((1 - t) / t)^2 = 1 / sigma^2``).

    ``shift`` is SD3's resolution-dependent timestep shift (Esser et al. 2024, sec. 5.3.2, eq. 23):
    ``t' = shift t / (1 + (shift - 1) t)``, which in the VE frame is ``sigma' = shift * sigma``
    (``shift = sqrt(m / n)`` for m pixels against a base resolution of n; SD3 uses 3.0 at 1024^2).
    It applies to the schedule's own training law, to the laws over t of ``noise_laws``
    (``uniform_t``, ``logit_normal``: drawn, then shifted, as SD3 trains) and to the ``flow`` grid.

    Own training law: t uniform on ``[t_min, t_max]`` (Liu et al. 2023), then shifted; the
    ``noise_law`` group offers the others (logit-normal is SD3's). The network is conditioned on
    ``c_noise = 1000 t`` of the (shifted) noise level, as SD3 feeds its timesteps.

    Args:
        shift: > 0; 1 is no shift.
        t_min, t_max: the training and sampling range of t before the shift, 0 < t_min < t_max < 1
            (t = 1 is sigma = inf, which the VE frame cannot start from; t_max = 0.999 starts a
            sampler at 0.999 eps + 0.001 x_0, indistinguishable from pure noise).
    Raises:
        ValueError: on a shift <= 0 or t_min/t_max outside 0 < t_min < t_max < 1.
    """

    name = "rectified_flow"

    def __init__(self, shift: float = 1.0, t_min: float = 1e-3, t_max: float = 0.999) -> None:
        if not shift > 0:
            raise ValueError(f"schedule.shift must be > 0, got {shift}")
        if not 0 < t_min < t_max < 1:
            raise ValueError(f"need 0 < t_min < t_max < 1, got t_min={t_min}, t_max={t_max}")
        self.shift = float(shift)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self._sigma_min = self.shift * t_min / (1 - t_min)
        self._sigma_max = self.shift * t_max / (1 - t_max)

    def _training_sigmas(self, batch_size: int, generator: torch.Generator | None) -> Tensor:
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        t = self.t_min + u * (self.t_max - self.t_min)
        return self.shift * flow_sigma(t)

    def noise_labels(self, sigma: Tensor) -> Tensor:
        return 1000 * flow_time(sigma.to(torch.float32))

    def prior_scale(self, sigma: float) -> float:
        """The flow's prior x_1 = eps in the VE frame: ``x = x_t / (1 - t) = (1 + sigma) eps``."""
        return 1 + sigma

    def training_quantile(self, sigma: Tensor) -> Tensor:
        t = flow_time(sigma.to(torch.float64) / self.shift)
        return ((t - self.t_min) / (self.t_max - self.t_min)).clamp(0, 1).to(torch.float32)

    def __repr__(self) -> str:
        return f"RectifiedFlowSchedule(shift={self.shift:g}, t_min={self.t_min:g}, t_max={self.t_max:g})"


def require_discrete(schedule: NoiseSchedule, what: str, instead: str = "") -> DiscreteSchedule:
    """``schedule`` itself if it has a timestep table (alphas_cumprod), for ``what`` needs one.

    Raises:
        ValueError: one line naming ``what``, the schedule given and ``instead`` (what to use).
    """
    if not isinstance(schedule, DiscreteSchedule):
        hint = f"; {instead}" if instead else ""
        raise ValueError(
            f"{what} needs a discrete schedule (linear, cosine, sigmoid), got "
            f"schedule={schedule.name!r}{hint}"
        )
    return schedule
