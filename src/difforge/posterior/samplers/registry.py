"""Every posterior sampler, registered once: its function, what it needs of the operator, its
network evaluations per step and the checker of its options. Scripts, configs and benchmarks
read ``POSTERIORS``; adding a method is its file plus one entry here plus
``configs/posterior/<name>.yaml``.

Each ``fn`` has one signature, ``fn(denoiser, y, operator, sigma_y, x, sigmas, *, generator,
callback, class_labels, **options) -> x0``: ``x: (N, *x_shape)`` at ``sigmas[0]`` in the VE frame,
``y: (N, d_y)`` the measurement ``A x0 + sigma_y n`` of row n, ``sigmas`` decreasing and finite,
ending at 0 or sigma_min. The denoiser is ``difforge.diffusion.samplers.common.DenoiserFn``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from difforge.checks import check_real
from difforge.diffusion.samplers.common import DenoiserFn, StepCallback, noise_like
from difforge.posterior.operators.base import LinearOperator
from difforge.posterior.samplers.ddnm import check_ddnm_options, sample_ddnm
from difforge.posterior.samplers.ddrm import check_ddrm_options, sample_ddrm
from difforge.posterior.samplers.dps import check_dps_options, sample_dps
from difforge.posterior.samplers.mcgdiff import check_mcgdiff_options, mcgdiff_nfe, sample_mcgdiff
from difforge.posterior.samplers.pigdm import check_pigdm_options, sample_pigdm
from difforge.posterior.samplers.repaint import check_repaint_options, repaint_nfe, sample_repaint
from difforge.posterior.samplers.sdedit import check_sdedit_options, sample_sdedit, sdedit_steps

# Arguments every method takes that are not user options.
_COMMON = frozenset(
    {"denoiser", "y", "operator", "sigma_y", "x", "sigmas", "generator", "callback", "class_labels"}
)


def _no_options(**options: Any) -> None:
    """Methods without option values to check."""


@dataclass(frozen=True)
class PosteriorSpec:
    """One posterior sampling method.

    Attributes:
        name: the config name (``posterior=<name>``).
        fn: see the module's docstring.
        description: the method and its paper, one line.
        evals_per_step: network evaluations per step and per sample (a backward pass through
            the network is not counted).
        needs_svd: reads ``operator.svd()``.
        needs_mask: the operator must be an inpainting mask (``operator.is_mask``).
        needs_grad: differentiates the denoiser (DPS, PiGDM).
        check: raises ValueError for bad option values (names are checked from ``fn``).
        nfe_of: ``(steps, options) -> NFE per sample`` where it is not
            ``evals_per_step * steps`` (SDEdit runs part of the grid, RePaint goes back up,
            SMC evaluates every particle).
        own_start: starts from its own points (SMC particles, SDEdit's noised guide): takes no ``x_init``.
    """

    name: str
    fn: Callable[..., Tensor]
    description: str
    evals_per_step: int = 1
    needs_svd: bool = False
    needs_mask: bool = False
    needs_grad: bool = False
    check: Callable[..., None] = _no_options
    nfe_of: Callable[[int, dict[str, Any]], int] | None = None
    own_start: bool = False

    @property
    def options(self) -> tuple[str, ...]:
        """The method's own keyword options, read from its signature."""
        return tuple(p for p in inspect.signature(self.fn).parameters if p not in _COMMON)

    def defaults(self) -> dict[str, Any]:
        """The option values of the method's signature (its paper's defaults)."""
        parameters = inspect.signature(self.fn).parameters
        return {name: parameters[name].default for name in self.options}

    def nfe(self, steps: int, **options: Any) -> int:
        """Network evaluations per sample for ``steps`` grid steps with ``options``."""
        if self.nfe_of is not None:
            return self.nfe_of(steps, {**self.defaults(), **options})
        return self.evals_per_step * steps

    def check_options(self, options: dict[str, Any]) -> None:
        """Raises ValueError for an option the method does not have or a bad value."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            allowed = ", ".join(self.options) or "none"
            close = difflib.get_close_matches(unknown[0], self.options, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown option {unknown[0]!r} for posterior={self.name}; its options: "
                f"{allowed}{hint}"
            )
        self.check(**options)

    def check_fit(self, operator: LinearOperator) -> None:
        """Raises ValueError when the method cannot run with ``operator``."""
        name = getattr(operator, "name", type(operator).__name__)
        if self.needs_mask and not operator.is_mask:
            raise ValueError(
                f"posterior={self.name} needs an inpainting mask operator; operator={name} "
                "is not a mask"
            )
        if self.needs_svd:
            try:
                operator.svd()
            except ValueError as error:
                raise ValueError(
                    f"posterior={self.name} needs the operator's SVD, which operator={name} "
                    f"does not have: {error}"
                ) from None


SPECS: tuple[PosteriorSpec, ...] = (
    PosteriorSpec(
        "dps",
        sample_dps,
        "DPS (Chung et al. 2023), gradient of ||y - A D(x)||",
        needs_grad=True,
        check=check_dps_options,
    ),
    PosteriorSpec(
        "pigdm",
        sample_pigdm,
        "PiGDM (Song et al. 2023), Gaussian p(x0 | x_t) and the SVD",
        needs_svd=True,
        needs_grad=True,
        check=check_pigdm_options,
    ),
    PosteriorSpec(
        "ddrm",
        sample_ddrm,
        "DDRM (Kawar et al. 2022), spectral steps with eta, eta_b",
        needs_svd=True,
        check=check_ddrm_options,
    ),
    PosteriorSpec(
        "ddnm",
        sample_ddnm,
        "DDNM / DDNM+ (Wang et al. 2023), null-space projection",
        needs_svd=True,
        check=check_ddnm_options,
    ),
    PosteriorSpec(
        "repaint",
        sample_repaint,
        "RePaint (Lugmayr et al. 2022), inpainting with resampling jumps",
        needs_mask=True,
        check=check_repaint_options,
        nfe_of=repaint_nfe,
    ),
    PosteriorSpec(
        "sdedit",
        sample_sdedit,
        "SDEdit (Meng et al. 2022), noise the guide to sigma(t0) and denoise",
        check=check_sdedit_options,
        nfe_of=lambda steps, options: sdedit_steps(steps, options["strength"]),
        own_start=True,
    ),
    PosteriorSpec(
        "mcgdiff",
        sample_mcgdiff,
        "MCGdiff (Cardoso et al. 2024), SMC, exact as num_particles grows",
        needs_svd=True,
        check=check_mcgdiff_options,
        nfe_of=mcgdiff_nfe,
        own_start=True,
    ),
)
POSTERIORS: dict[str, PosteriorSpec] = {spec.name: spec for spec in SPECS}


def get_posterior_spec(name: str) -> PosteriorSpec:
    """Raises ValueError naming the registered methods for an unknown ``name``."""
    if name not in POSTERIORS:
        raise ValueError(f"unknown posterior {name!r}; allowed: {', '.join(POSTERIORS)}")
    return POSTERIORS[name]


def check_sigma_y(sigma_y: float) -> float:
    """``sigma_y >= 0`` as a float."""
    return check_real("sigma_y", sigma_y, 0.0)


def posterior_sample(
    name: str,
    denoiser: DenoiserFn,
    y: Tensor,
    operator: LinearOperator,
    sigma_y: float,
    sigmas: Tensor,
    *,
    x_init: Tensor | None = None,
    generator: torch.Generator | None = None,
    class_labels: Tensor | None = None,
    callback: StepCallback | None = None,
    **options: Any,
) -> Tensor:
    """One draw of ``x0 | y_n`` per row of ``y``, by the method ``name``.

    Args:
        denoiser: ``D(x, sigma: (N,), class_labels) -> E[x0 | x]`` in the VE frame.
        y: ``(N, d_y)`` measurements ``A x0 + sigma_y n``.
        operator: ``A``, with ``x_shape`` and ``d_y``.
        sigma_y: the measurement noise's standard deviation, >= 0.
        sigmas: decreasing, finite noise levels ending at 0 or sigma_min.
        x_init: ``(N, *x_shape)`` start at ``sigmas[0]``; None: ``sigmas[0] * N(0, I)``.
        **options: the method's options (``POSTERIORS[name].options``).

    Returns:
        ``(N, *x_shape)`` samples in ``y``'s dtype.

    Raises:
        ValueError: one line: an unknown method or option, a bad option value, ``sigma_y < 0``,
            ``y`` not ``(N, operator.d_y)``, a method that does not fit the operator (RePaint on
            a non-mask, an SVD method on an operator without one), a bad grid.
    """
    spec = get_posterior_spec(name)
    sigma_y = check_sigma_y(sigma_y)
    spec.check_options(options)
    if y.ndim != 2 or y.shape[1] != operator.d_y:
        raise ValueError(
            f"y must have shape (N, {operator.d_y}) for operator {operator!r}, got {tuple(y.shape)}"
        )
    sigmas = sigmas.to(torch.float64)
    if sigmas.ndim != 1 or len(sigmas) < 2 or not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("posterior sigmas must be a decreasing 1-D grid of at least 2 levels")
    if not bool(torch.isfinite(sigmas).all()) or float(sigmas[-1]) < 0:
        raise ValueError("posterior sigmas must be finite and >= 0")
    spec.check_fit(operator)
    shape = (y.shape[0], *operator.x_shape)
    if x_init is None:
        x = float(sigmas[0]) * noise_like(y.new_empty(shape), generator)
    elif spec.own_start:
        raise ValueError(f"posterior={name} starts from its own points: x_init must be None")
    elif tuple(x_init.shape) != shape:
        raise ValueError(f"x_init must have shape {shape}, got {tuple(x_init.shape)}")
    else:
        x = x_init.to(y)
    return spec.fn(
        denoiser,
        y,
        operator,
        sigma_y,
        x,
        sigmas,
        generator=generator,
        callback=callback,
        class_labels=class_labels,
        **options,
    )
