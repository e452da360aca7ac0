"""The linear measurement operator every posterior sampler takes.

A measurement is ``y = A x + sigma_y n`` with ``n ~ N(0, I)``. ``x`` keeps the data's shape
``(N, *x_shape)``; ``y`` is always flat, ``(N, d_y)``, so that one algebra serves masks, pooling,
blur and dense matrices alike. Samplers that need the singular value decomposition
``A = U diag(s) V^T`` (DDRM, Kawar et al. 2022, sec. 3; MCGdiff, Cardoso et al. 2024) read it
from :meth:`LinearOperator.svd`, in DDRM's convention: ``V^T x`` gives ``d_x`` spectral
coefficients whose first ``len(s)`` ones are seen through the singular values ``s`` (sorted in
decreasing order, zeros allowed), and ``U^T y`` gives the matching ``d_y`` coefficients of ``y``.

The base class implements everything from a dense matrix (:meth:`matrix`), which suits vectors
and small images; structured operators (masks, pooling, colourisation) override the methods with
their closed forms and never build the matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from difforge.checks import check_real

# The largest d_x for which the dense fallback builds A and its SVD (a 4096 x 4096 float64
# matrix is 128 MiB; its SVD takes seconds on a CPU).
DENSE_LIMIT = 4096


def check_sigma_y(sigma_y: object) -> float:
    """The measurement noise standard deviation ``sigma_y`` as a float ``>= 0``; a one-line
    ValueError otherwise."""
    return check_real("sigma_y", sigma_y, 0.0)


def image_shape(name: str, x_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``x_shape`` as ``(C, H, W)``; ValueError naming operator ``name`` for any other shape."""
    if len(x_shape) != 3:
        raise ValueError(
            f"operator {name} needs images (x_shape (C, H, W)), got x_shape {tuple(x_shape)}"
        )
    c, h, w = (int(n) for n in x_shape)
    return c, h, w


@dataclass(frozen=True)
class SVD:
    """``A = U diag(s) V^T`` as functions on flat batches (DDRM's convention).

    Attributes:
        s: ``(r,)`` singular values, decreasing, ``r = min(d_x, d_y)``; zeros allowed.
        V: ``(N, d_x) -> (N, *x_shape)``.
        Vt: ``(N, *x_shape) -> (N, d_x)``.
        U: ``(N, d_y) -> (N, d_y)``.
        Ut: ``(N, d_y) -> (N, d_y)``.
    """

    s: Tensor
    V: Callable[[Tensor], Tensor]
    Vt: Callable[[Tensor], Tensor]
    U: Callable[[Tensor], Tensor]
    Ut: Callable[[Tensor], Tensor]


class LinearOperator:
    """``A: R^{d_x} -> R^{d_y}`` acting on batches ``x: (N, *x_shape) -> y: (N, d_y)``.

    Subclasses set ``x_shape`` and ``d_y`` and implement :meth:`forward` and :meth:`adjoint`;
    the rest follows from them through the dense matrix unless overridden.

    Attributes:
        name: the config name (``operator=<name>``).
        x_shape: the shape of one signal, e.g. ``(1, 8, 8)`` or ``(D,)``.
        d_y: the number of measured values.
        is_mask: ``A`` selects coordinates of ``x`` (inpainting): RePaint applies.
    """

    name: str = "linear"
    is_mask: bool = False

    def __init__(self, x_shape: tuple[int, ...], d_y: int) -> None:
        self.x_shape = tuple(int(n) for n in x_shape)
        self.d_y = int(d_y)
        self._dense: tuple[Tensor, SVD] | None = None
        # The options it was built with (set by the registry's builders), for the record.
        self.options: dict[str, object] = {}

    def configured(self, name: str, **options: object) -> LinearOperator:
        """Names this operator by its config name and records the ``options`` it was built
        with (what ``restore.npz`` saves); returns it."""
        self.name = name
        self.options = dict(options)
        return self

    @property
    def d_x(self) -> int:
        return math.prod(self.x_shape)

    def forward(self, x: Tensor) -> Tensor:
        """``A x``: ``(N, *x_shape) -> (N, d_y)``."""
        raise NotImplementedError

    def adjoint(self, y: Tensor) -> Tensor:
        """``A^T y``: ``(N, d_y) -> (N, *x_shape)``."""
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def measure(
        self, x: Tensor, sigma_y: float, generator: torch.Generator | None = None
    ) -> Tensor:
        """``y = A x + sigma_y n``, the noise drawn from ``generator``.

        Raises:
            ValueError: ``sigma_y < 0``.
        """
        sigma_y = check_sigma_y(sigma_y)
        y = self.forward(x)
        if sigma_y == 0:
            return y
        device = generator.device if generator is not None else y.device
        noise = torch.randn(y.shape, generator=generator, device=device, dtype=y.dtype)
        return y + sigma_y * noise.to(y.device)

    def matrix(self) -> Tensor:
        """The dense ``(d_y, d_x)`` float64 matrix of ``A`` (columns are ``A e_j``).

        Raises ValueError when ``d_x`` exceeds ``DENSE_LIMIT``: such operators override
        :meth:`svd` and :meth:`pinv` instead.
        """
        if self.d_x > DENSE_LIMIT:
            raise ValueError(
                f"operator {self.name}: d_x = {self.d_x} is too large for a dense matrix "
                f"(at most {DENSE_LIMIT}); this operator has no closed-form SVD"
            )
        eye = torch.eye(self.d_x, dtype=torch.float64).reshape(self.d_x, *self.x_shape)
        return self.forward(eye).T.contiguous()

    def _dense_svd(self) -> tuple[Tensor, SVD]:
        if self._dense is None:
            A = self.matrix()
            # Thin when d_y < d_x: V's null-space columns are Householder reflections.
            U, s, Vh = torch.linalg.svd(A, full_matrices=self.d_y >= self.d_x)
            shape = self.x_shape
            if self.d_y < self.d_x:
                V, Vt = _householder_basis(Vh.T, shape)
            else:

                def V(z: Tensor) -> Tensor:
                    return (z.to(Vh.dtype) @ Vh).to(z.dtype).reshape(z.shape[0], *shape)

                def Vt(x: Tensor) -> Tensor:
                    return (x.reshape(x.shape[0], -1).to(Vh.dtype) @ Vh.T).to(x.dtype)

            def Uf(z: Tensor) -> Tensor:
                return (z.to(U.dtype) @ U.T).to(z.dtype)

            def Ut(y: Tensor) -> Tensor:
                return (y.to(U.dtype) @ U).to(y.dtype)

            self._dense = (A, SVD(s=s, V=V, Vt=Vt, U=Uf, Ut=Ut))
        return self._dense

    def svd(self) -> SVD:
        """The singular value decomposition (see :class:`SVD`); dense by default."""
        return self._dense_svd()[1]

    def pinv(self, y: Tensor) -> Tensor:
        """The Moore-Penrose pseudo-inverse ``A^+ y``: ``(N, d_y) -> (N, *x_shape)``."""
        svd = self.svd()
        coeffs = svd.Ut(y)
        r = svd.s.numel()
        s = svd.s.to(y.device, y.dtype)
        inv = torch.where(s > s.max() * 1e-10, 1 / s.clamp_min(1e-300), torch.zeros_like(s))
        z = torch.zeros(y.shape[0], self.d_x, device=y.device, dtype=y.dtype)
        z[:, :r] = coeffs[:, :r] * inv
        return svd.V(z)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, x_shape={self.x_shape}, d_y={self.d_y})"


def _householder_basis(
    Vr: Tensor, shape: tuple[int, ...]
) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """``V`` and ``V^T`` of an orthogonal ``d_x x d_x`` matrix whose first ``r`` columns are the
    orthonormal ``Vr: (d_x, r)``, held as ``r`` Householder reflections (``Vr = Q R``,
    Golub & Van Loan, Matrix Computations, sec. 5.2): ``O(r d_x)`` per vector instead of the
    ``d_x^2`` of a dense ``V``, whose null-space columns the samplers need only up to rotation.
    ``R`` of an orthonormal ``Vr`` is diagonal with entries ``+-1``; their signs are folded in so
    that the first ``r`` columns are ``Vr`` itself."""
    reflectors, tau = torch.geqrf(Vr)
    signs = torch.ones(Vr.shape[0], dtype=Vr.dtype)
    signs[: Vr.shape[1]] = torch.sign(torch.diagonal(reflectors))

    def V(z: Tensor) -> Tensor:
        a, t, d = (v.to(z.device) for v in (reflectors, tau, signs))
        out = torch.ormqr(a, t, (z.to(a.dtype) * d).T, left=True, transpose=False)
        return out.T.to(z.dtype).reshape(z.shape[0], *shape)

    def Vt(x: Tensor) -> Tensor:
        a, t, d = (v.to(x.device) for v in (reflectors, tau, signs))
        flat = x.reshape(x.shape[0], -1).to(a.dtype).T
        return (torch.ormqr(a, t, flat, left=True, transpose=True).T * d).to(x.dtype)

    return V, Vt


class DenseOperator(LinearOperator):
    """``A`` given as a ``(d_y, d_x)`` matrix (random projections, the mixture test bed)."""

    name = "matrix"

    def __init__(self, A: Tensor, x_shape: tuple[int, ...] | None = None) -> None:
        A = torch.as_tensor(A, dtype=torch.float64)
        if A.ndim != 2:
            raise ValueError(f"operator matrix must be 2-D (d_y, d_x), got shape {tuple(A.shape)}")
        super().__init__(x_shape or (A.shape[1],), A.shape[0])
        if self.d_x != A.shape[1]:
            raise ValueError(f"operator matrix has {A.shape[1]} columns for x_shape {x_shape}")
        self.A = A

    def forward(self, x: Tensor) -> Tensor:
        return (x.reshape(x.shape[0], -1).to(torch.float64) @ self.A.T.to(x.device)).to(x.dtype)

    def adjoint(self, y: Tensor) -> Tensor:
        out = y.to(torch.float64) @ self.A.to(y.device)
        return out.to(y.dtype).reshape(y.shape[0], *self.x_shape)

    def matrix(self) -> Tensor:
        return self.A
