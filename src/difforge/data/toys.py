"""Low-dimensional toy data (``kind == "vector"``): Gaussian mixtures, two moons, swiss roll.

Samples are drawn once with ``seed``: ``num_train + num_val + num_test`` points, sliced into the
three splits (disjoint, deterministic). Vectors are **not** scaled to ``[-1, 1]``:

* ``gmm1d`` / ``gmm2d`` are in the mixture's own units (the defaults span about ``[-5, 5]``);
  the law is exposed as ``mixture`` (a :class:`GaussianMixture`, exact density and denoiser),
  labels are component indices.
* ``moons`` / ``swiss_roll`` are standardised (zero mean, unit variance per coordinate,
  statistics of the train split, kept as ``loc`` and ``scale``); no known density.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from difforge.data.base import ArrayDataset, DiffusionDataModule
from difforge.data.mixtures import gaussian_mixture_law, grid25_mixture_law, layout_components
from difforge.data.options import DataConfigError, check_int


class VectorDataModule(DiffusionDataModule):
    """Base of the toy DataModules: ``(B, dim)`` float32 vectors.

    Args:
        batch_size, num_workers, pin_memory, seed: see :class:`DiffusionDataModule`.
        dim: the data dimension (validated against the dataset).
        num_classes: number of classes of the labels, 0 for unlabelled (``y`` all zero).
        num_train, num_val, num_test: samples drawn per split.
    """

    kind = "vector"

    def __init__(
        self,
        batch_size: int,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        *,
        dim: int,
        num_classes: int,
        num_train: int = 50_000,
        num_val: int = 5_000,
        num_test: int = 5_000,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, seed, num_classes=num_classes)
        self.dim = check_int("dim", dim)
        self.num_train = check_int("num_train", num_train)
        self.num_val = check_int("num_val", num_val, minimum=0)
        self.num_test = check_int("num_test", num_test, minimum=0)

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def _generate(self, n: int) -> tuple[Tensor, Tensor]:
        """``n`` samples ``(x: (n, dim), labels: (n,) long)``, deterministic in ``seed``."""
        raise NotImplementedError

    def _postprocess(self, x: Tensor, train: Tensor) -> Tensor:
        """A transform fitted on the train rows ``train`` (identity by default)."""
        return x

    def _build_splits(self) -> dict[str, Dataset]:
        x, labels = self._generate(self.num_train + self.num_val + self.num_test)
        x = x.to(torch.float32)
        x = self._postprocess(x, x[: self.num_train]).contiguous()
        y = labels.long() if self._num_classes else torch.zeros(len(x), dtype=torch.long)
        bounds = np.cumsum([0, self.num_train, self.num_val, self.num_test])
        self.split_index = {
            split: np.arange(lo, hi)
            for split, lo, hi in zip(("train", "val", "test"), bounds[:-1], bounds[1:], strict=True)
        }
        return {split: ArrayDataset(x[i], y[i]) for split, i in self.split_index.items()}


class GaussianMixtureDataModule(VectorDataModule):
    """Samples of a Gaussian mixture (``gmm1d``: the 1-D teaching example).

    Args:
        weights: ``(K,)`` mixture weights (normalised).
        means: ``(K,)`` for 1-D or ``(K, dim)``.
        stds: ``(K,)`` (isotropic) or ``(K, dim)``, all > 0.
        dim: must equal the mixture's dimension.
        num_classes: ``K`` (labels are the component indices) or 0 (unlabelled).
        batch_size, num_workers, pin_memory, seed, num_train, num_val, num_test: see
            :class:`VectorDataModule`.
    """

    config_name = "gmm1d"

    def __init__(
        self,
        batch_size: int = 512,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        weights: Sequence[float] = (0.2, 0.5, 0.3),
        means: Sequence[float] | Sequence[Sequence[float]] = (-3.0, 0.0, 3.0),
        stds: Sequence[float] | Sequence[Sequence[float]] = (0.5, 0.5, 0.5),
        dim: int = 1,
        num_classes: int = 3,
        num_train: int = 50_000,
        num_val: int = 5_000,
        num_test: int = 5_000,
    ) -> None:
        super().__init__(
            batch_size,
            num_workers,
            pin_memory,
            seed,
            dim=dim,
            num_classes=num_classes,
            num_train=num_train,
            num_val=num_val,
            num_test=num_test,
        )
        self.mixture = gaussian_mixture_law(weights, means, stds, dim, num_classes)

    def _generate(self, n: int) -> tuple[Tensor, Tensor]:
        return self.mixture.sample(n, torch.Generator().manual_seed(self.seed))


class GaussianMixture2dDataModule(GaussianMixtureDataModule):
    """A 2-D Gaussian mixture (``gmm2d``): by default 8 equal Gaussians of std 0.3 on a ring of
    radius 4; ``layout: grid`` with ``num_components: 25`` gives the 5x5 grid on ``[-4, 4]^2``;
    ``layout: custom`` takes ``weights``, ``means`` (K x 2) and ``stds`` as given.

    Args:
        layout: ``ring``, ``grid`` or ``custom``.
        num_components: components of the ring or grid (must match ``means`` when custom).
        radius: ring radius, or grid half-width.
        std: the components' standard deviation (ring, grid).
        weights: ``None`` for equal weights, else ``(K,)``.
        means, stds: only with ``layout: custom``.
        dim: must be 2. ``num_classes``: ``num_components`` or 0. The rest: see
            :class:`GaussianMixtureDataModule`.
    """

    config_name = "gmm2d"

    def __init__(
        self,
        batch_size: int = 512,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        layout: str = "ring",
        num_components: int = 8,
        radius: float = 4.0,
        std: float = 0.3,
        weights: Sequence[float] | None = None,
        means: Sequence[Sequence[float]] | None = None,
        stds: Sequence[float] | Sequence[Sequence[float]] | None = None,
        dim: int = 2,
        num_classes: int = 8,
        num_train: int = 50_000,
        num_val: int = 5_000,
        num_test: int = 5_000,
    ) -> None:
        weights, means, stds = layout_components(  # type: ignore[assignment]
            layout, num_components, radius, std, weights, means, stds, dim
        )
        self.layout = layout
        super().__init__(
            batch_size,
            num_workers,
            pin_memory,
            seed,
            weights=weights,  # type: ignore[arg-type]
            means=means,  # type: ignore[arg-type]
            stds=stds,
            dim=dim,
            num_classes=num_classes,
            num_train=num_train,
            num_val=num_val,
            num_test=num_test,
        )


class GridMixtureDataModule(GaussianMixtureDataModule):
    """The prior of the posterior-sampling test bed of Cardoso et al. 2024 (``gmm_grid25``):
    25 unit-variance Gaussians with means on the 5 x 5 grid ``{-8, -4, 0, 4, 8}^2`` repeated
    along the ``dim`` coordinates, weights drawn with ``mixture_seed``; the same mixture as
    ``difforge.posterior.testbed.cardoso_problem(dim, d_y, mixture_seed)``.

    Args:
        dim: an even dimension (the paper: 8, 80, 800).
        mixture_seed: draws the weights.
        num_classes: 25 (component labels) or 0. The rest: see :class:`VectorDataModule`.
    """

    config_name = "gmm_grid25"

    def __init__(
        self,
        batch_size: int = 512,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        dim: int = 8,
        mixture_seed: int = 0,
        num_classes: int = 25,
        num_train: int = 50_000,
        num_val: int = 5_000,
        num_test: int = 5_000,
    ) -> None:
        law = grid25_mixture_law(dim, mixture_seed, num_classes)
        self.mixture_seed = mixture_seed
        super().__init__(
            batch_size,
            num_workers,
            pin_memory,
            seed,
            weights=law.weights,  # type: ignore[arg-type]
            means=law.means,  # type: ignore[arg-type]
            stds=law.stds,  # type: ignore[arg-type]
            dim=dim,
            num_classes=num_classes,
            num_train=num_train,
            num_val=num_val,
            num_test=num_test,
        )


class _Standardised(VectorDataModule):
    """2-D scikit-learn generators, standardised with the train split's statistics.

    Args:
        noise: std of the generator's Gaussian noise, before standardising (``None``: the
            dataset's ``default_noise``).
        num_classes: the dataset's ``native_num_classes`` or 0 (``None``: the former).
        dim: must be 2. The rest: see :class:`VectorDataModule`.
    """

    native_num_classes: ClassVar[int]
    default_noise: ClassVar[float]

    def __init__(
        self,
        batch_size: int = 512,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        noise: float | None = None,
        dim: int = 2,
        num_classes: int | None = None,
        num_train: int = 50_000,
        num_val: int = 5_000,
        num_test: int = 5_000,
    ) -> None:
        noise = self.default_noise if noise is None else noise
        if dim != 2:
            raise DataConfigError(
                f"{type(self).__name__} data are 2-dimensional: data.dim must be 2, got {dim!r}"
            )
        if isinstance(noise, bool) or not isinstance(noise, int | float) or noise < 0:
            raise DataConfigError(f"data.noise must be a number >= 0, got {noise!r}")
        super().__init__(
            batch_size,
            num_workers,
            pin_memory,
            seed,
            dim=dim,
            num_classes=self.native_num_classes if num_classes is None else num_classes,
            num_train=num_train,
            num_val=num_val,
            num_test=num_test,
        )
        self.noise = float(noise)
        self.loc = torch.zeros(2)
        self.scale = torch.ones(2)

    def _postprocess(self, x: Tensor, train: Tensor) -> Tensor:
        self.loc, self.scale = train.mean(0), train.std(0)
        return (x - self.loc) / self.scale


class MoonsDataModule(_Standardised):
    """scikit-learn's two interleaving half circles (``make_moons``), standardised.

    Args: see :class:`_Standardised`; ``noise`` 0.05 and ``num_classes`` 2 (which moon; 0:
    unlabelled) by default.
    """

    config_name = "moons"

    dataset_name = "moons"
    native_num_classes = 2
    default_noise = 0.05

    def _generate(self, n: int) -> tuple[Tensor, Tensor]:
        from sklearn.datasets import make_moons

        x, y = make_moons(n, noise=self.noise, random_state=self.seed)
        return torch.as_tensor(x), torch.as_tensor(y)


class SwissRollDataModule(_Standardised):
    """scikit-learn's swiss roll (``make_swiss_roll``), its 2-D spiral (coordinates x, z),
    standardised. Unlabelled.

    Args: see :class:`_Standardised`; ``noise`` 0.5 by default (the raw spiral spans about
    ``[-11, 14]``), ``num_classes`` must be 0.
    """

    config_name = "swiss_roll"

    dataset_name = "swiss_roll"
    native_num_classes = 0
    default_noise = 0.5

    def _generate(self, n: int) -> tuple[Tensor, Tensor]:
        from sklearn.datasets import make_swiss_roll

        x, _ = make_swiss_roll(n, noise=self.noise, random_state=self.seed)
        return torch.as_tensor(x[:, [0, 2]]), torch.zeros(n, dtype=torch.long)
