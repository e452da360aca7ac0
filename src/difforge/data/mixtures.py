"""The laws of the Gaussian-mixture data (``gmm1d``, ``gmm2d``, ``gmm_grid25``) from their data options, checked
as the data modules check them: what the data modules draw from and what the exact model
(``model=gmm_oracle``) is exact for. Torch and numpy only, no Lightning: sampling the exact model
needs the law, not the data module."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from difforge import checks
from difforge.data.options import DataConfigError, check_choice, check_int
from difforge.diffusion.gaussian_mixture import GaussianMixture

Components = tuple[Any, Any, Any]  # weights (K,), means (K,) or (K, D), stds (K,) or (K, D)


def plain(value: Any) -> Any:
    """OmegaConf containers (Hydra passes ListConfig) to plain Python lists."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def gaussian_mixture_law(
    weights: Sequence[float],
    means: Sequence[float] | Sequence[Sequence[float]],
    stds: Sequence[float] | Sequence[Sequence[float]],
    dim: int,
    num_classes: int,
) -> GaussianMixture:
    """The mixture of ``data.weights``, ``data.means``, ``data.stds``, which must be ``data.dim``
    dimensional with ``data.num_classes`` K (component labels) or 0; DataConfigError names the
    option to change."""
    dim = check_int("dim", dim)
    num_classes = check_int("num_classes", num_classes, minimum=0)
    try:
        mixture = GaussianMixture(plain(weights), plain(means), plain(stds))
    except (ValueError, TypeError, RuntimeError) as error:
        raise DataConfigError(f"invalid data.weights/means/stds: {error}") from None
    k = mixture.num_components
    if mixture.dim != dim:
        raise DataConfigError(
            f"the mixture means are {mixture.dim}-dimensional but data.dim={dim}: "
            f"set data.dim={mixture.dim}"
        )
    if num_classes not in (k, 0):
        raise DataConfigError(
            f"the mixture has {k} components: data.num_classes must be {k} (component "
            f"labels) or 0 (unlabelled), got {num_classes}"
        )
    return mixture


def mixture_layout(layout: str, num_components: int, radius: float) -> Tensor:
    """Means of a 2-D layout: ``ring`` (``num_components`` equally spaced on a circle of
    ``radius``, the first at angle 0) or ``grid`` (a square grid of ``num_components = m^2``
    points spanning ``[-radius, radius]^2``)."""
    if layout == "ring":
        angle = 2 * math.pi * torch.arange(num_components, dtype=torch.float64) / num_components
        return radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    side = math.isqrt(num_components)
    if side * side != num_components:
        raise DataConfigError(
            f"data.layout=grid needs a square data.num_components (4, 9, 16, 25, ...), "
            f"got {num_components}"
        )
    axis = (
        torch.linspace(-radius, radius, side, dtype=torch.float64) if side > 1 else torch.zeros(1)
    )
    gx, gy = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([gx.flatten(), gy.flatten()], dim=1).to(torch.float64)


def layout_components(
    layout: str,
    num_components: int,
    radius: float,
    std: float,
    weights: Sequence[float] | None,
    means: Sequence[Sequence[float]] | None,
    stds: Sequence[float] | Sequence[Sequence[float]] | None,
    dim: int,
) -> Components:
    """``gmm2d``'s components: ``num_components`` of std ``std`` on a ``ring`` or ``grid`` of
    ``radius``, or ``custom`` ``means`` and ``stds``; ``weights`` None for equal weights."""
    if dim != 2:
        raise DataConfigError(f"gmm2d is 2-dimensional: data.dim must be 2, got {dim!r}")
    check_choice("layout", layout, ("ring", "grid", "custom"))
    k = check_int("num_components", num_components)
    if layout == "custom":
        if means is None or stds is None:
            raise DataConfigError("data.layout=custom needs data.means (K x 2) and data.stds")
        if len(plain(means)) != k:
            raise DataConfigError(
                f"data.means has {len(plain(means))} components but data.num_components="
                f"{k}: set data.num_components={len(plain(means))}"
            )
    else:
        if means is not None or stds is not None:
            raise DataConfigError(
                f"data.means/data.stds are only used with data.layout=custom "
                f"(layout={layout} places the means itself)"
            )
        if isinstance(std, bool) or not isinstance(std, int | float) or std <= 0:
            raise DataConfigError(f"data.std must be a positive number, got {std!r}")
        radius = checks.check_real("data.radius", radius, 0, low_open=True, error=DataConfigError)
        means = mixture_layout(layout, k, radius)  # type: ignore[assignment]
        stds = [float(std)] * k
    return [1.0] * k if weights is None else weights, means, stds


def layout_mixture_law(
    layout: str,
    num_components: int,
    radius: float,
    std: float,
    weights: Sequence[float] | None,
    means: Sequence[Sequence[float]] | None,
    stds: Sequence[float] | Sequence[Sequence[float]] | None,
    dim: int,
    num_classes: int,
) -> GaussianMixture:
    """The law of ``gmm2d`` (:func:`layout_components`)."""
    components = layout_components(layout, num_components, radius, std, weights, means, stds, dim)
    return gaussian_mixture_law(*components, dim=dim, num_classes=num_classes)


def grid25_mixture_law(dim: int, mixture_seed: int, num_classes: int) -> GaussianMixture:
    """The law of ``gmm_grid25``: the 25-component prior of the mixture test bed of Cardoso et
    al. 2024 in ``data.dim`` (even) dimensions, its weights drawn with ``data.mixture_seed``
    (:func:`difforge.posterior.testbed.cardoso_mixture`)."""
    from difforge.posterior.testbed import cardoso_mixture

    dim = check_int("dim", dim, minimum=2)
    if dim % 2:
        raise DataConfigError(
            f"data.dim must be even (the grid's 2-D means repeat dim / 2 times), got {dim}"
        )
    mixture = cardoso_mixture(dim, check_int("mixture_seed", mixture_seed, minimum=0))
    components = (mixture.weights, mixture.means, mixture.stds)
    return gaussian_mixture_law(*components, dim=dim, num_classes=num_classes)  # type: ignore[arg-type]


# The data whose law is known, by their config's ``_target_``: the function of the data options
# that builds the law (the data module calls the same function).
KNOWN_LAWS: dict[str, Callable[..., GaussianMixture]] = {
    "difforge.data.toys.GaussianMixtureDataModule": gaussian_mixture_law,
    "difforge.data.toys.GaussianMixture2dDataModule": layout_mixture_law,
    "difforge.data.toys.GridMixtureDataModule": grid25_mixture_law,
}


def known_mixture(data_cfg: Mapping[str, Any]) -> GaussianMixture | None:
    """The exact law of the data a ``data`` config describes (``datamodule.mixture``, without
    building the data module), or None when it is not known."""
    law = KNOWN_LAWS.get(str(data_cfg.get("_target_", "")))
    if law is None:
        return None
    options = inspect.signature(law).parameters
    return law(**{key: value for key, value in data_cfg.items() if key in options})
