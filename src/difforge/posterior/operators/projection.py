"""Dense measurement matrices: a seeded random projection (compressed sensing) and a given ``A``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from difforge.checks import check_choice, check_int
from difforge.posterior.operators.base import DENSE_LIMIT, DenseOperator, LinearOperator

SPECTRA = ("gaussian", "cardoso")


def cardoso_matrix(d_y: int, d_x: int, generator: torch.Generator) -> Tensor:
    """``(d_y, d_x)`` float64 ``A = U diag(s) V_{:d_y}^T``: the singular vectors of a standard
    Gaussian matrix with its singular values replaced by ``d_y`` draws of U(0, 1) sorted in
    decreasing order (Cardoso et al. 2024, MCGdiff, app. B.3, as in the authors' code). Needs
    ``d_y <= d_x``."""
    gaussian = torch.randn(d_y, d_x, dtype=torch.float64, generator=generator)
    u, _, vh = torch.linalg.svd(gaussian, full_matrices=False)
    s = torch.sort(torch.rand(d_y, dtype=torch.float64, generator=generator), descending=True)
    return u @ torch.diag(s.values) @ vh


def random_projection(
    x_shape: tuple[int, ...], d_y: int, seed: int = 0, spectrum: str = "gaussian"
) -> LinearOperator:
    """``y = A x`` with a random ``(d_y, d_x)`` matrix drawn with ``seed``.

    ``spectrum: gaussian``: i.i.d. entries ``N(0, 1/d_x)`` (each row has norm about 1, so ``y``
    has the scale of ``x``'s coordinates). ``spectrum: cardoso``: the recipe of the mixture test
    bed, :func:`cardoso_matrix`. The SVD is computed densely: ``d_x <= DENSE_LIMIT``.

    Raises:
        ValueError: ``d_y`` not in ``[1, d_x]``, a negative seed, an unknown spectrum, or
            ``d_x > DENSE_LIMIT``.
    """
    d_x = math.prod(x_shape)
    if d_x > DENSE_LIMIT:
        raise ValueError(
            f"operator random_projection needs d_x <= {DENSE_LIMIT} (a dense SVD), got "
            f"x_shape {tuple(x_shape)} (d_x = {d_x})"
        )
    d_y = check_int("operator.d_y", d_y, minimum=1)
    if d_y > d_x:
        raise ValueError(f"operator.d_y must be an integer in [1, d_x={d_x}], got {d_y}")
    seed = check_int("operator.seed", seed)
    check_choice("operator.spectrum", spectrum, SPECTRA)
    generator = torch.Generator().manual_seed(seed)
    if spectrum == "cardoso":
        A = cardoso_matrix(d_y, d_x, generator)
    else:
        A = torch.randn(d_y, d_x, dtype=torch.float64, generator=generator) / math.sqrt(d_x)
    return DenseOperator(A, tuple(x_shape)).configured(
        "random_projection", d_y=d_y, seed=seed, spectrum=spectrum
    )


def matrix(
    x_shape: tuple[int, ...], A: Tensor | Sequence[Sequence[float]] | None
) -> LinearOperator:
    """``y = A x`` for a given ``(d_y, d_x)`` matrix ``A`` (a tensor or a list of rows; the
    test bed's problems).

    Raises:
        ValueError: ``A`` missing or not 2-D, its columns not ``prod(x_shape)``, or
            ``d_x > DENSE_LIMIT``.
    """
    if A is None:
        raise ValueError("operator matrix needs operator.A, a (d_y, d_x) list of rows")
    operator = DenseOperator(torch.as_tensor(A, dtype=torch.float64), tuple(x_shape))
    if operator.d_x > DENSE_LIMIT:
        raise ValueError(
            f"operator matrix needs d_x <= {DENSE_LIMIT} (a dense SVD), got d_x = {operator.d_x}"
        )
    return operator.configured("matrix")
