"""FID, KID and class coverage of generated images, with cached reference statistics.

* Features come from a frozen feature network (:mod:`difforge.metrics.features`), computed in
  batches by :func:`extract_features`; generated images are clamped to ``[-1, 1]``.
* FID and KID are torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` fed
  with precomputed features (their ``feature`` is :class:`FeatureInput`, an identity with
  ``num_features``), so features can be gathered across DDP ranks first and the reference side
  restored from a cache. Their state is reset at every evaluation and never synced by
  torchmetrics (``sync_on_compute=False``: callers pass all features).
* Reference statistics of real data (feature sum, sum of outer products and count for FID; up to
  ``kid_max_reference`` features for KID) are computed once per (dataset, split, resolution,
  feature network, number of images, split options) and cached as safetensors in ``cache_dir``
  (default ``$DIFFORGE_CACHE_DIR/fid_stats`` or ``~/.cache/difforge/fid_stats``).
* Class coverage (data with a trained classifier: digits, and mnist/fashion_mnist when trained):
  the share of generated samples the classifier assigns to each class, and the fraction of
  classes that receive at least half their fair share (``1 / num_classes``). Mode collapse shows
  as coverage below 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from difforge.errors import DifforgeError
from difforge.metrics.features import classifier_for, data_name, feature_network_for

log = logging.getLogger("difforge")

CACHE_ENV = "DIFFORGE_CACHE_DIR"
# KID draws its subsets from torch's global CPU RNG: seed it under a lock (thread safety).
_GLOBAL_RNG_LOCK = threading.Lock()
# DataModule attributes that change which images a split holds or how they look.
SPLIT_OPTIONS = (
    "seed",
    "val_fraction",
    "test_fraction",
    "val_size",
    "resize_mode",
    "image_size",
    "channels",
    "root",
)


def default_cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "difforge"
    return Path(base).expanduser() / "fid_stats"


# ------------------------------------------------------------------------------------ features
class FeatureInput(nn.Module):
    """Identity ``feature`` for torchmetrics' FID/KID when features are precomputed."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features: Tensor) -> Tensor:
        return features


@contextlib.contextmanager
def _no_autocast(device: torch.device) -> Iterator[None]:
    with torch.autocast(device_type=device.type, enabled=False):
        yield


@torch.no_grad()
def extract_features(
    feature: nn.Module,
    images: Tensor,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> Tensor:
    """``feature(images)`` in batches, float32 ``(N, d)`` on ``device`` (default: the network's).

    Images are clamped to ``[-1, 1]`` and run in float32 outside any autocast.
    """
    if device is None:
        device = next(iter(feature.parameters()), torch.empty(0)).device
    device = torch.device(device)
    feature = feature.to(device)
    chunks = []
    with _no_autocast(device):
        for batch in images.split(batch_size):
            batch = batch.to(device, torch.float32).clamp(-1.0, 1.0)
            chunks.append(feature(batch).float().reshape(batch.shape[0], -1))
    if not chunks:
        return torch.empty(0, int(getattr(feature, "num_features", 0)), device=device)
    return torch.cat(chunks)


# ----------------------------------------------------------------------- reference statistics
@dataclass
class ReferenceStats:
    """Statistics of real features: FID's sums (float64) and KID's feature sample (float32)."""

    features_sum: Tensor
    features_cov_sum: Tensor
    num_samples: int
    kid_features: Tensor
    key: dict[str, Any] = field(default_factory=dict)

    @property
    def num_features(self) -> int:
        return int(self.features_sum.shape[0])

    @classmethod
    def from_features(
        cls,
        features: Tensor,
        kid_max_reference: int | None = 10_000,
        seed: int = 0,
        key: dict[str, Any] | None = None,
    ) -> ReferenceStats:
        f = features.detach().to("cpu", torch.float64)
        if f.ndim != 2 or f.shape[0] < 2:
            raise DifforgeError(
                f"reference statistics need >= 2 feature rows, got {tuple(f.shape)}"
            )
        kid = features.detach().to("cpu", torch.float32)
        if kid_max_reference is not None and len(kid) > kid_max_reference:
            generator = torch.Generator().manual_seed(seed)
            kid = kid[torch.randperm(len(kid), generator=generator)[:kid_max_reference]]
        return cls(f.sum(0), f.T @ f, int(f.shape[0]), kid.contiguous(), dict(key or {}))

    def save(self, path: str | os.PathLike) -> Path:
        """Atomic write (temporary file + rename): concurrent readers never see half a file."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "features_sum": self.features_sum.contiguous(),
            "features_cov_sum": self.features_cov_sum.contiguous(),
            "num_samples": torch.tensor([self.num_samples], dtype=torch.int64),
            "kid_features": self.kid_features.contiguous(),
        }
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        try:
            save_file(tensors, tmp, metadata={"key": json.dumps(self.key, sort_keys=True)})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReferenceStats:
        from safetensors import safe_open
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            key = json.loads((handle.metadata() or {}).get("key", "{}"))
        return cls(
            tensors["features_sum"],
            tensors["features_cov_sum"],
            int(tensors["num_samples"][0]),
            tensors["kid_features"],
            key,
        )


def reference_key(
    datamodule: Any, feature: nn.Module, split: str, num_images: int | None
) -> dict[str, Any]:
    """What identifies a reference-statistics file."""
    options = {}
    for name in SPLIT_OPTIONS:
        value = getattr(datamodule, name, None)
        if value is not None:
            options[name] = str(value) if isinstance(value, os.PathLike) else value
    return {
        "dataset": data_name(datamodule),
        "split": split,
        "shape": list(getattr(datamodule, "data_shape", ())),
        "feature": getattr(feature, "cache_id", type(feature).__name__),
        "num_images": num_images,
        "options": options,
    }


def reference_path(key: dict[str, Any], cache_dir: str | os.PathLike | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    shape = "x".join(str(s) for s in key["shape"][-2:]) or "na"
    n = "all" if key["num_images"] is None else str(key["num_images"])
    feature = str(key["feature"]).split("-")[0]
    name = f"{key['dataset']}-{key['split']}-{shape}-{feature}-{n}-{digest[:12]}.safetensors"
    return Path(cache_dir or default_cache_dir()).expanduser() / name


def compute_reference(
    datamodule: Any,
    feature: nn.Module,
    split: str = "train",
    num_images: int | None = None,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    kid_max_reference: int | None = 10_000,
) -> ReferenceStats:
    """Reference statistics of ``num_images`` real images of ``split`` (None: all), uncached."""
    if num_images is not None:
        num_images = min(int(num_images), datamodule.split_size(split))
    images = datamodule.reference_samples(split, num_images)
    features = extract_features(feature, images, batch_size, device)
    key = reference_key(datamodule, feature, split, num_images)
    return ReferenceStats.from_features(features, kid_max_reference, key=key)


def reference_stats(
    datamodule: Any,
    feature: nn.Module,
    split: str = "train",
    num_images: int | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    kid_max_reference: int | None = 10_000,
    write: bool = True,
) -> ReferenceStats:
    """Cached :func:`compute_reference`: read from ``cache_dir`` when present, else computed and
    (``write``) saved there. ``num_images`` above the split's size means the whole split."""
    if num_images is not None:
        num_images = min(int(num_images), datamodule.split_size(split))
        if num_images == datamodule.split_size(split):
            num_images = None
    key = reference_key(datamodule, feature, split, num_images)
    key["kid_max_reference"] = kid_max_reference
    path = reference_path(key, cache_dir)
    if path.is_file():
        try:
            stats = ReferenceStats.load(path)
            if stats.key == json.loads(json.dumps(key, default=str)):
                return stats
            log.warning("reference statistics %s have another key: recomputing", path)
        except Exception as error:  # a corrupt or foreign file: recompute and overwrite
            log.warning("cannot read reference statistics %s (%s): recomputing", path, error)
    log.info("computing %s reference statistics of the %s split -> %s", key["feature"], split, path)
    stats = compute_reference(
        datamodule,
        feature,
        split,
        num_images,
        batch_size=batch_size,
        device=device,
        kid_max_reference=kid_max_reference,
    )
    stats.key = json.loads(json.dumps(key, default=str))
    if write:
        try:
            stats.save(path)
        except OSError as error:
            log.warning("cannot write reference statistics to %s: %s", path, error)
    return stats


# -------------------------------------------------------------------------------- FID and KID
class FeatureMetrics:
    """torchmetrics FID and KID on precomputed features against :class:`ReferenceStats`.

    Each call resets both metrics, restores the reference side and adds ``fake_features``: no
    state survives between evaluations (``ddp_spawn`` shares metric tensors across processes
    until the first reset). KID draws its subsets from torch's RNG forked and seeded with
    ``seed``: the same features give the same numbers on every rank.
    """

    def __init__(self, num_features: int, kid_subset_size: int = 1000, kid_subsets: int = 100):
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        if kid_subset_size < 2 or kid_subsets < 1:
            raise DifforgeError(
                f"kid_subset_size must be >= 2 and kid_subsets >= 1, got {kid_subset_size}, "
                f"{kid_subsets}"
            )
        self.num_features = int(num_features)
        self.kid_subset_size = int(kid_subset_size)
        self.fid = FrechetInceptionDistance(
            feature=FeatureInput(num_features),
            reset_real_features=True,
            sync_on_compute=False,
            dist_sync_on_step=False,
        )
        with warnings.catch_warnings():  # "will save all extracted features": we know
            warnings.simplefilter("ignore", UserWarning)
            self.kid = KernelInceptionDistance(
                feature=FeatureInput(num_features),
                subsets=kid_subsets,
                subset_size=kid_subset_size,
                reset_real_features=True,
                sync_on_compute=False,
                dist_sync_on_step=False,
            )

    def __call__(self, reference: ReferenceStats, fake_features: Tensor, seed: int = 0) -> dict:
        if reference.num_features != self.num_features:
            raise DifforgeError(
                f"reference statistics have {reference.num_features} features, the metric "
                f"{self.num_features}"
            )
        fake = fake_features.detach().to("cpu", torch.float64)
        if fake.ndim != 2 or fake.shape[0] < 2:
            raise DifforgeError(f"FID needs >= 2 generated samples, got {tuple(fake.shape)}")
        self.fid.reset()
        self.kid.reset()
        self.fid.real_features_sum = reference.features_sum.to(torch.float64).clone()
        self.fid.real_features_cov_sum = reference.features_cov_sum.to(torch.float64).clone()
        self.fid.real_features_num_samples = torch.tensor(reference.num_samples)
        self.fid.update(fake, real=False)
        fid = float(self.fid.compute())
        self.kid.update(reference.kid_features.to(torch.float64), real=True)
        self.kid.update(fake, real=False)
        self.kid.subset_size = min(self.kid_subset_size, len(reference.kid_features), len(fake))
        with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            kid_mean, kid_std = (float(v) for v in self.kid.compute())
        self.fid.reset()
        self.kid.reset()
        return {"fid": max(fid, 0.0), "kid_mean": kid_mean, "kid_std": kid_std}


def fid_kid(
    reference: ReferenceStats,
    fake_features: Tensor,
    *,
    seed: int = 0,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
) -> dict[str, float]:
    """``fid``, ``kid_mean``, ``kid_std`` of features against reference statistics."""
    metrics = FeatureMetrics(reference.num_features, kid_subset_size, kid_subsets)
    return metrics(reference, fake_features, seed)


# ----------------------------------------------------------------------------- class coverage
def class_shares(predictions: Tensor, num_classes: int) -> Tensor:
    """Share of the samples predicted as each class: ``(num_classes,)`` float64 summing to 1."""
    counts = torch.bincount(predictions.flatten().long().cpu(), minlength=num_classes)
    return counts.to(torch.float64) / max(1, int(counts.sum()))


def class_coverage(shares: Tensor, threshold: float = 0.5) -> float:
    """Fraction of classes with at least ``threshold`` times their fair share ``1/K``."""
    fair = 1.0 / shares.numel()
    return float((shares >= threshold * fair - 1e-12).to(torch.float64).mean())


@torch.no_grad()
def predict_classes(classifier: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    device = next(classifier.parameters()).device
    return torch.cat(
        [
            classifier.predict(b.to(device, torch.float32)).cpu()  # type: ignore[operator]
            for b in images.split(batch_size)
        ]
    )


def coverage_metrics(predictions: Tensor, num_classes: int, threshold: float = 0.5) -> dict:
    shares = class_shares(predictions, num_classes)
    metrics = {"class_coverage": class_coverage(shares, threshold)}
    metrics.update({f"class_share_{k}": float(s) for k, s in enumerate(shares)})
    return metrics


# ---------------------------------------------------------------------------------- front door
def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def image_metrics(
    samples: Tensor,
    datamodule: Any,
    seed: int = 0,
    feature: nn.Module | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    split: str = "train",
    num_reference: int | None = None,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    inception_weights: str | os.PathLike | None = None,
    classifier_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """FID/KID of generated ``samples`` ``(N, C, H, W)`` in ``[-1, 1]`` against real images of
    ``split`` (``num_reference`` of them, None: all; statistics cached in ``cache_dir``), plus
    class coverage and per-class shares when the data have a classifier.

    ``feature``: the feature network (None: :func:`feature_network_for` the data).
    Returns floats: ``fid``, ``kid_mean``, ``kid_std``, ``num_reference``, and possibly
    ``class_coverage`` and ``class_share_<k>``.
    """
    if samples.ndim != 4:
        raise DifforgeError(f"image metrics need images (N, C, H, W), got {tuple(samples.shape)}")
    if hasattr(datamodule, "setup"):
        datamodule.setup("test")
    device = torch.device(device) if device is not None else _default_device()
    if feature is None:
        feature = feature_network_for(
            datamodule, inception_weights=inception_weights, classifier_dir=classifier_dir
        )
    feature = feature.to(device)
    reference = reference_stats(
        datamodule,
        feature,
        split,
        num_reference,
        cache_dir=cache_dir,
        batch_size=batch_size,
        device=device,
    )
    fake = extract_features(feature, samples, batch_size, device)
    metrics = fid_kid(
        reference, fake, seed=seed, kid_subset_size=kid_subset_size, kid_subsets=kid_subsets
    )
    metrics["num_reference"] = float(reference.num_samples)
    classifier = feature if callable(getattr(feature, "predict", None)) else None
    if classifier is None:
        classifier = classifier_for(datamodule, classifier_dir)
    if classifier is not None:
        classifier = classifier.to(device)
        predictions = predict_classes(classifier, samples, batch_size)
        metrics.update(coverage_metrics(predictions, classifier.num_classes))  # type: ignore[arg-type]
    return metrics
