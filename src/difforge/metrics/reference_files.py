"""Published reference statistics, and the Frechet distance between two Gaussians.

Two layouts of ``.npz`` files are read:

* guided-diffusion's reference batches (Dhariwal & Nichol 2021, ``evaluations/``, e.g.
  ``VIRTUAL_imagenet64_labeled.npz``): ``arr_0`` the reference images (uint8 ``(N, H, W, 3)``),
  ``mu`` / ``sigma`` their Inception pool statistics, and ``mu_s`` / ``sigma_s`` spatial ones
  (unused here: sFID);
* EDM's ``fid-refs`` (Karras et al. 2022, ``fid.py ref``, e.g. ``cifar10-32x32.npz``): ``mu`` and
  ``sigma`` only.

Both store ``mu = mean(f)`` and the unbiased covariance ``sigma = cov(f)`` (``np.cov``, ddof=1) of
2048-d Inception-v3 pool features, so :func:`feature_statistics` of the same features gives the
same numbers. The images of a guided-diffusion batch make precision/recall (and FD_DINOv2 without
its own reference) possible; an EDM file cannot give them.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from difforge.errors import DifforgeError


@dataclass
class ReferenceFile:
    """Statistics read from ``path``: ``mu (d,)`` and ``sigma (d, d)`` float64, the reference
    images as uint8 ``(N, C, H, W)`` when the file holds them (else None; kept as uint8: 10,000
    ImageNet 256x256 images are 2 GB so, 8 GB as floats), and its ``layout``
    (``guided-diffusion`` or ``edm``)."""

    path: Path
    mu: Tensor
    sigma: Tensor
    images: Tensor | None
    layout: str


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """``(mu (d,), sigma (d, d))`` of features ``(N, d)`` in float64, sigma unbiased (ddof=1)."""
    f = features.detach().to("cpu", torch.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise DifforgeError(f"feature statistics need >= 2 rows of features, got {tuple(f.shape)}")
    mu = f.mean(0)
    centered = f - mu
    return mu, centered.T @ centered / (f.shape[0] - 1)


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """``||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))`` (Heusel et al. 2017,
    eq. 6), in float64. ``tr (sigma1 sigma2)^(1/2)`` is the sum of the square roots of the
    eigenvalues of ``sigma1 sigma2`` (real and >= 0 for covariances, up to rounding)."""
    mu1, mu2 = mu1.to(torch.float64), mu2.to(torch.float64)
    sigma1, sigma2 = sigma1.to(torch.float64), sigma2.to(torch.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise DifforgeError(
            f"statistics of different feature sizes: {tuple(mu1.shape)} and {tuple(mu2.shape)}"
        )
    eigenvalues = torch.linalg.eigvals(sigma1 @ sigma2)
    trace_sqrt = eigenvalues.sqrt().real.sum()
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return max(float(distance), 0.0)


def load_reference_file(path: str | os.PathLike) -> ReferenceFile:
    """Read a guided-diffusion reference batch or an EDM ``fid-refs`` ``.npz`` (see the module
    docstring). Raises DifforgeError naming the file and the missing or bad field."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DifforgeError(f"metrics.fid_ref={path}: no such file")
    try:
        archive = np.load(file, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DifforgeError(f"metrics.fid_ref={path}: not a .npz file ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DifforgeError(f"metrics.fid_ref={path}: not a .npz archive (a single array)")
    with archive:
        names = set(archive.files)
        if not {"mu", "sigma"} <= names:
            raise DifforgeError(
                f"{file}: no 'mu'/'sigma' arrays (has {sorted(names)}); expected a guided-diffusion "
                "reference batch or an EDM fid-refs file"
            )
        mu = torch.from_numpy(np.asarray(archive["mu"], dtype=np.float64))
        sigma = torch.from_numpy(np.asarray(archive["sigma"], dtype=np.float64))
        images = archive["arr_0"] if "arr_0" in names else None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise DifforgeError(
            f"{file}: mu {tuple(mu.shape)} and sigma {tuple(sigma.shape)} are not (d,) and (d, d)"
        )
    if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all()):
        raise DifforgeError(f"{file}: mu or sigma holds non-finite values")
    if images is None:
        return ReferenceFile(file, mu, sigma, None, "edm")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DifforgeError(
            f"{file}: arr_0 must be uint8 images (N, H, W, 1 or 3), got {images.dtype} {images.shape}"
        )
    return ReferenceFile(
        file, mu, sigma, torch.from_numpy(images).permute(0, 3, 1, 2), "guided-diffusion"
    )
