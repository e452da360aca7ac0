"""Laws of the training noise level, separate from the schedule so any objective trains under any law.

Each law draws VE noise levels sigma (``x = x_0 + sigma eps``) for the training loss and gives
their quantile (CDF) for the per-quartile loss report. Laws over t are over the rectified-flow
time ``t = sigma / (1 + sigma)`` (``difforge.diffusion.schedules.flow_time``).

- ``schedule``: the schedule's own law (``schedule.sample_training_sigmas``), the default; a run
  without ``noise_law`` draws exactly the same sigmas (same RNG calls) as before the group existed.
- ``discrete_t``: t uniform on a discrete schedule's own timesteps (DDPM algorithm 1).
- ``uniform_t``: t ~ U(0, 1) (rectified flow, Liu et al. 2023), i.e. CDF ``F(sigma) = t``, then
  shifted (below).
- ``log_normal``: ``ln sigma ~ N(P_mean, P_std^2)`` (EDM, Karras et al. 2022, table 1).
- ``logit_normal``: ``logit t ~ N(m, s^2)`` (SD3, Esser et al. 2024, sec. 3.1, eq. 19). Since
  ``logit t = ln(t / (1 - t)) = ln sigma`` this is the log-normal law of sigma with
  ``P_mean = m, P_std = s``: SD3's density in t, ``pi_ln(t) = exp(-(logit t - m)^2 / (2 s^2)) /
  (s sqrt(2 pi) t (1 - t))``, is the same law written in t; then shifted (below).

The laws over t (``uniform_t``, ``logit_normal``) take a rectified-flow schedule's ``shift`` as SD3
does (Esser et al. 2024, sec. 5.3.2: t is drawn from the law, then shifted,
``t' = shift t / (1 + (shift - 1) t)``, i.e. ``sigma' = shift sigma``), as do the trainers built on
it (diffusers' ``train_dreambooth_sd3``: ``compute_density_for_timestep_sampling``, then the
scheduler's shifted sigmas): the training law and the ``flow`` sampling grid move together. With
``shift = 3`` the median t of logit-normal(0, 1) is 0.75, not 0.5. ``log_normal`` is EDM's law
over sigma itself and takes no shift.

Continuous laws are truncated to the schedule's ``[sigma_min, sigma_max]`` by inverse-CDF sampling
(``u ~ U(F(sigma_min), F(sigma_max))``, ``sigma = F^-1(u)``), so no level falls outside what the
schedule's noise labels and samplers cover. Draws are on the CPU in float64 (with ``generator`` if
given), then cast to float32 on ``device``, as the schedules do.
"""

from __future__ import annotations

import torch
from torch import Tensor

from difforge.diffusion.schedules import (
    DiscreteSchedule,
    NoiseSchedule,
    flow_sigma,
    flow_time,
    require_discrete,
)


class NoiseLaw:
    """Base class: ``sample(schedule, batch_size, device, generator) -> (B,)`` float32 sigmas."""

    name: str = "base"

    def check(self, schedule: NoiseSchedule) -> None:
        """Raise a one-line ValueError if this law cannot apply to ``schedule``."""

    def sample(
        self,
        schedule: NoiseSchedule,
        batch_size: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        return self._draw(schedule, batch_size, generator).to(device=device, dtype=torch.float32)

    def _draw(
        self, schedule: NoiseSchedule, batch_size: int, generator: torch.Generator | None
    ) -> Tensor:
        """``(batch_size,)`` sigmas on the CPU, float64 (float32 from the schedule's own law)."""
        raise NotImplementedError

    def quantile(self, schedule: NoiseSchedule, sigma: Tensor) -> Tensor:
        """Where ``sigma`` lies in this law (its CDF), in [0, 1]."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ScheduleLaw(NoiseLaw):
    """The schedule's own training law."""

    name = "schedule"

    def _draw(
        self, schedule: NoiseSchedule, batch_size: int, generator: torch.Generator | None
    ) -> Tensor:
        return schedule.sample_training_sigmas(batch_size, generator=generator)

    def quantile(self, schedule: NoiseSchedule, sigma: Tensor) -> Tensor:
        return schedule.training_quantile(sigma)


class DiscreteTLaw(NoiseLaw):
    """t uniform on a discrete schedule's timesteps ``{1, ..., T}`` (Ho et al. 2020, algorithm 1)."""

    name = "discrete_t"

    def check(self, schedule: NoiseSchedule) -> None:
        self._discrete(schedule)

    @staticmethod
    def _discrete(schedule: NoiseSchedule) -> DiscreteSchedule:
        return require_discrete(
            schedule, "noise_law=discrete_t", "use noise_law=uniform_t, logit_normal or log_normal"
        )

    def _draw(
        self, schedule: NoiseSchedule, batch_size: int, generator: torch.Generator | None
    ) -> Tensor:
        discrete = self._discrete(schedule)
        return discrete.sigmas[discrete.sample_training_timesteps(batch_size, generator)]

    def quantile(self, schedule: NoiseSchedule, sigma: Tensor) -> Tensor:
        return self._discrete(schedule).training_quantile(sigma)


class ContinuousLaw(NoiseLaw):
    """A law given by its CDF ``F(sigma)`` and inverse, truncated to the schedule's range; a law
    over t (``over_t``) draws the unshifted sigma and multiplies it by the schedule's ``shift``."""

    over_t = False

    def cdf(self, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def icdf(self, u: Tensor) -> Tensor:
        raise NotImplementedError

    def shift(self, schedule: NoiseSchedule) -> float:
        """SD3's ``sigma' = shift sigma`` for a law over t on a shifted schedule, else 1."""
        return float(getattr(schedule, "shift", 1.0)) if self.over_t else 1.0

    def _range(self, schedule: NoiseSchedule) -> tuple[Tensor, Tensor]:
        bounds = torch.tensor([schedule.sigma_min, schedule.sigma_max], dtype=torch.float64)
        low, high = self.cdf(bounds / self.shift(schedule))
        return low, high

    def _draw(
        self, schedule: NoiseSchedule, batch_size: int, generator: torch.Generator | None
    ) -> Tensor:
        low, high = self._range(schedule)
        u = low + (high - low) * torch.rand(batch_size, generator=generator, dtype=torch.float64)
        sigma = self.shift(schedule) * self.icdf(u)
        return sigma.clamp(schedule.sigma_min, schedule.sigma_max)

    def quantile(self, schedule: NoiseSchedule, sigma: Tensor) -> Tensor:
        low, high = self._range(schedule)
        unshifted = sigma.detach().to(device="cpu", dtype=torch.float64) / self.shift(schedule)
        u = self.cdf(unshifted)
        return ((u - low) / (high - low)).clamp(0, 1).to(device=sigma.device, dtype=torch.float32)


class UniformTLaw(ContinuousLaw):
    """t = sigma / (1 + sigma) ~ U(0, 1) (Liu et al. 2023; Lipman et al. 2023)."""

    name = "uniform_t"
    over_t = True

    def cdf(self, sigma: Tensor) -> Tensor:
        return flow_time(sigma)

    def icdf(self, u: Tensor) -> Tensor:
        return flow_sigma(u)


class LogNormalLaw(ContinuousLaw):
    """``ln sigma ~ N(P_mean, P_std^2)`` (EDM, Karras et al. 2022, table 1: P_mean -1.2, P_std 1.2)."""

    name = "log_normal"

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2) -> None:
        if not P_std > 0:
            raise ValueError(f"noise_law.P_std must be > 0, got {P_std}")
        self.P_mean, self.P_std = float(P_mean), float(P_std)

    def cdf(self, sigma: Tensor) -> Tensor:
        return torch.special.ndtr((sigma.log() - self.P_mean) / self.P_std)

    def icdf(self, u: Tensor) -> Tensor:
        return (self.P_mean + self.P_std * torch.special.ndtri(u)).exp()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(P_mean={self.P_mean:g}, P_std={self.P_std:g})"


class LogitNormalLaw(LogNormalLaw):
    """``logit t ~ N(m, s^2)`` (SD3, Esser et al. 2024, eq. 19; m = 0, s = 1 is their choice):
    the log-normal law of sigma with ``P_mean = m``, ``P_std = s`` (see the module docstring)."""

    name = "logit_normal"
    over_t = True

    def __init__(self, m: float = 0.0, s: float = 1.0) -> None:
        if not s > 0:
            raise ValueError(f"noise_law.s must be > 0, got {s}")
        super().__init__(P_mean=m, P_std=s)

    def __repr__(self) -> str:
        return f"LogitNormalLaw(m={self.P_mean:g}, s={self.P_std:g})"


NOISE_LAWS: dict[str, type[NoiseLaw]] = {
    cls.name: cls for cls in (ScheduleLaw, DiscreteTLaw, UniformTLaw, LogNormalLaw, LogitNormalLaw)
}
