"""The paper-comparable evaluation protocol: FID, Inception Score, improved precision/recall and
FD_DINOv2 of ``num_samples`` generated images (50,000 in the papers) against published reference
statistics, sampled in batches across ranks.

* Samples: global batch ``b`` (images ``b * batch_size ...``) is drawn with its own generator,
  seeded from ``(seed, b)``, and class labels ``index % num_classes``; rank ``r`` draws a
  contiguous share of the batches (:func:`~difforge.training.fid_callback.rank_slice`). So the
  images, and every number, do not depend on the number of ranks, for every sampler.
* Features of each batch are computed at once (images are not kept) and gathered across ranks
  in global order.
* FID: Frechet distance of Inception-v3 pool features (Heusel et al. 2017) against the file's
  ``mu``/``sigma`` (:mod:`difforge.metrics.reference_files`).
* Inception Score (Salimans et al. 2016): ``exp E_x KL(p(y|x) || p(y))`` on 10 contiguous
  splits of the unbiased 1008-way logits, mean and std over splits (torch-fidelity's
  ``isc_features_to_metric``; for 50k samples the 5,000-image splits of guided-diffusion's
  evaluator).
* Improved precision and recall (Kynkaanniemi et al. 2019) with k = 3 nearest neighbours in
  Inception pool space, against the reference images' features (torch-fidelity's
  ``prc_features_to_metric``); only files with reference images (guided-diffusion batches).
* FD_DINOv2 (Stein et al. 2023; EDM2): the same distance in DINOv2 ViT-L/14 space, when its
  network is given; the reference side from ``dinov2_ref`` (``mu``/``sigma``) or from the
  reference images.
* ``seeds``: the whole protocol once per seed; EDM (Karras et al. 2022, sec. 5) reports the
  minimum of three FIDs: each metric's ``_min`` and ``_mean`` are reported with every run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from difforge.errors import DifforgeError
from difforge.metrics.reference_files import (
    ReferenceFile,
    feature_statistics,
    frechet_distance,
)
from difforge.training.fid_callback import gather_rows, rank_slice

log = logging.getLogger("difforge")
PRECISION_RECALL_K = 3  # Kynkaanniemi et al. 2019, sec. 3: k = 3 is robust
IS_SPLITS = 10


@dataclass
class Ranks:
    """This process's place among ``world_size`` ranks and an ``all_gather`` that stacks every
    rank's tensor ``(world_size, ...)``."""

    rank: int = 0
    world_size: int = 1

    def all_gather(self, tensor: Tensor) -> Tensor:
        if self.world_size == 1:
            return tensor[None]
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    def gather(self, local: Tensor, total: int) -> Tensor:
        return gather_rows(local, total, self.world_size, self.all_gather)

    @classmethod
    def from_environment(cls, device: torch.device) -> Ranks:
        """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``): NCCL on CUDA,
        gloo otherwise. One process without those variables."""
        import torch.distributed as dist

        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size())


@dataclass
class Extractors:
    """``inception``: a module with ``pool_and_logits(images) -> ((N, 2048), (N, 1008))`` (FID's
    Inception-v3, :class:`~difforge.metrics.features.InceptionFeatures`); ``dinov2``: images ->
    ``(N, D)`` or None."""

    inception: nn.Module
    dinov2: nn.Module | None = None

    def __call__(self, images: Tensor, device: torch.device) -> dict[str, Tensor]:
        """Features of images ``(N, C, H, W)`` in [-1, 1]: ``pool``, ``logits`` and ``dinov2``."""
        with torch.no_grad():
            batch = images.to(device, torch.float32).clamp(-1, 1)
            pool, logits = self.inception.pool_and_logits(batch)  # type: ignore[operator]
            features = {"pool": pool.float(), "logits": logits.float()}
            if self.dinov2 is not None:
                features["dinov2"] = self.dinov2(batch).float()
        return features


def batch_seed(seed: int, batch_index: int) -> int:
    """A 63-bit generator seed for global batch ``batch_index`` of run ``seed`` (numpy's
    SeedSequence: nearby seeds give unrelated streams)."""
    state = np.random.SeedSequence([int(seed), int(batch_index)]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def inception_score(logits: Tensor, splits: int = IS_SPLITS) -> tuple[float, float]:
    """Inception Score ``(mean, std)`` over ``splits`` contiguous splits of logits ``(N, K)``."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    if logits.ndim != 2 or logits.shape[0] < splits:
        raise DifforgeError(
            f"the Inception Score needs at least {splits} samples, got {tuple(logits.shape)}"
        )
    result = isc_features_to_metric(logits.to(torch.float64).cpu(), splits, shuffle=False)
    return result["inception_score_mean"], result["inception_score_std"]


def precision_recall(
    real: Tensor, fake: Tensor, k: int = PRECISION_RECALL_K, batch_size: int = 10_000
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, eqs. 1-2) of features ``fake``
    ``(M, d)`` against ``real`` ``(N, d)``: the share of fake points inside the union of the real
    points' k-NN balls, and of real points inside the fake points' balls (float64 distances)."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    if min(len(real), len(fake)) <= k:
        raise DifforgeError(
            f"precision/recall with k={k} need more than {k} real and generated samples, "
            f"got {len(real)} and {len(fake)}"
        )
    result = prc_features_to_metric(
        fake.to(torch.float64),
        real.to(fake.device, torch.float64),
        prc_neighborhood=k,
        prc_batch_size=batch_size,
        save_cpu_ram=True,
        verbose=False,
    )
    return float(result["precision"]), float(result["recall"])


def _progress(total: int, description: str, enabled: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    progress = Progress(*columns, disable=not enabled)
    task = progress.add_task(description, total=total)
    return progress, task


class BatchSource(Protocol):
    """``source(batch_index, start, count) -> (count, *item_shape)`` images in [-1, 1]."""

    item_shape: tuple[int, ...]

    def __call__(self, batch_index: int, start: int, count: int) -> Tensor: ...


def _sharded_features(
    total: int,
    batch_size: int,
    make_batch: BatchSource,
    extractors: Extractors,
    ranks: Ranks,
    device: torch.device,
    description: str,
    progress: bool,
) -> dict[str, Tensor]:
    """Features of ``total`` images made by ``make_batch(batch_index, start, count)``, each rank
    making its contiguous share of the batches; gathered in global order on every rank."""
    num_batches = -(-total // batch_size)
    first, count = rank_slice(num_batches, ranks.rank, ranks.world_size)
    bar, task = _progress(count, description, progress and ranks.rank == 0)
    chunks: dict[str, list[Tensor]] = {}
    with bar:
        for b in range(first, first + count):
            start = b * batch_size
            n = min(batch_size, total - start)
            for name, value in extractors(make_batch(b, start, n), device).items():
                chunks.setdefault(name, []).append(value)
            bar.advance(task)
    local = {name: torch.cat(values) for name, values in chunks.items()}
    if not local:  # a rank without batches still joins every gather, with zero rows
        probe = extractors(torch.zeros(1, *make_batch.item_shape), device)
        local = {name: value[:0] for name, value in probe.items()}
    return {name: ranks.gather(value, total).cpu() for name, value in local.items()}


class ModelBatches:
    """``make_batch(b, start, n)`` for a model with ``generate`` (a ``DiffusionModule``): batch
    ``b`` of run ``seed`` drawn with a generator seeded by :func:`batch_seed`, class labels
    ``index % num_classes``. Returns images ``(n, C, H, W)`` in [-1, 1]; counts the NFE."""

    def __init__(self, model: Any, seed: int, device: torch.device, use_ema: bool = True) -> None:
        self.model, self.seed, self.device, self.use_ema = model, int(seed), device, use_ema
        self.item_shape: tuple[int, ...] = tuple(model.data_shape)
        self.nfe = 0

    def __call__(self, batch_index: int, start: int, count: int) -> Tensor:
        generator = torch.Generator(self.device).manual_seed(batch_seed(self.seed, batch_index))
        num_classes = int(getattr(self.model, "num_classes", 0))
        labels = torch.arange(start, start + count) % num_classes if num_classes else None
        result = self.model.generate(
            count, generator=generator, batch_size=count, class_labels=labels, use_ema=self.use_ema
        )
        self.nfe = result.nfe
        return result.samples


class ImageBatches:
    """``make_batch`` over uint8 images ``(N, C, H, W)`` (reference images), scaled to [-1, 1]
    one batch at a time."""

    def __init__(self, images: Tensor) -> None:
        self.images = images
        self.item_shape: tuple[int, ...] = tuple(images.shape[1:])

    def __call__(self, batch_index: int, start: int, count: int) -> Tensor:
        return self.images[start : start + count].to(torch.float32) / 127.5 - 1.0


def score(
    features: dict[str, Tensor],
    reference: ReferenceFile,
    reference_features: dict[str, Tensor] | None,
    dinov2_reference: tuple[Tensor, Tensor] | None,
) -> dict[str, float]:
    """The protocol's metrics of generated ``features`` (``pool``, ``logits``, maybe ``dinov2``)."""
    mu, sigma = feature_statistics(features["pool"])
    if mu.shape != reference.mu.shape:
        raise DifforgeError(
            f"{reference.path}: mu has {reference.mu.shape[0]} features, Inception pool {mu.shape[0]}"
        )
    metrics = {"fid": frechet_distance(mu, sigma, reference.mu, reference.sigma)}
    metrics["inception_score"], metrics["inception_score_std"] = inception_score(features["logits"])
    if reference_features is not None:
        metrics["precision"], metrics["recall"] = precision_recall(
            reference_features["pool"], features["pool"]
        )
    if "dinov2" in features:
        if dinov2_reference is None:
            raise DifforgeError("FD_DINOv2 needs DINOv2 reference statistics")
        mu_d, sigma_d = feature_statistics(features["dinov2"])
        metrics["fd_dinov2"] = frechet_distance(mu_d, sigma_d, *dinov2_reference)
    return metrics


def summarize(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """``<metric>_min`` and ``<metric>_mean`` over runs (EDM reports the minimum FID of three)."""
    summary: dict[str, float] = {}
    for name in runs[0]:
        values = [run[name] for run in runs]
        summary[f"{name}_min"] = float(min(values))
        summary[f"{name}_mean"] = float(np.mean(values))
    return summary


def evaluate_protocol(
    model: Any,
    reference: ReferenceFile,
    extractors: Extractors,
    *,
    num_samples: int,
    batch_size: int,
    seeds: Sequence[int],
    device: torch.device,
    ranks: Ranks | None = None,
    dinov2_reference: tuple[Tensor, Tensor] | None = None,
    precision_recall_enabled: bool | None = None,
    use_ema: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the protocol once per seed; returns the metrics with the seeds, the sample count, the
    reference used and, for several seeds, every run and each metric's min and mean.

    ``precision_recall_enabled``: None computes precision/recall when the reference file holds
    images; True requires them (DifforgeError otherwise); False skips them.
    """
    ranks = ranks or Ranks()
    if num_samples < 2 or batch_size < 1 or not seeds:
        raise DifforgeError(
            f"need num_samples >= 2, batch_size >= 1 and a seed, got {num_samples}, {batch_size}, {list(seeds)}"
        )
    if precision_recall_enabled and reference.images is None:
        raise DifforgeError(
            f"metrics.precision_recall=true needs reference images, but {reference.path} holds only "
            "mu/sigma (an EDM fid-refs file); give a guided-diffusion reference batch (arr_0)"
        )
    use_images = reference.images is not None and precision_recall_enabled is not False
    needs_dinov2_images = extractors.dinov2 is not None and dinov2_reference is None
    if needs_dinov2_images and reference.images is None:
        raise DifforgeError(
            f"FD_DINOv2 needs reference statistics in DINOv2 space: give metrics.dinov2_ref=<.npz "
            f"with mu/sigma> or a reference file with images (guided-diffusion layout), not {reference.path}"
        )
    reference_features = None
    if use_images or needs_dinov2_images:
        assert reference.images is not None
        reference_features = _sharded_features(
            len(reference.images),
            batch_size,
            ImageBatches(reference.images),
            extractors,
            ranks,
            device,
            "reference features",
            progress,
        )
        if needs_dinov2_images:
            dinov2_reference = feature_statistics(reference_features["dinov2"])
    runs = []
    nfe = 0
    for seed in seeds:
        batches = ModelBatches(model, seed, device, use_ema)
        features = _sharded_features(
            num_samples,
            batch_size,
            batches,
            extractors,
            ranks,
            device,
            f"seed {seed}: sampling + features",
            progress,
        )
        nfe = batches.nfe or nfe
        run = score(
            features, reference, reference_features if use_images else None, dinov2_reference
        )
        log.info("seed %d: %s", seed, ", ".join(f"{k} {v:.4f}" for k, v in run.items()))
        runs.append(run)
    result: dict[str, Any] = {
        "num_samples": num_samples,
        "seeds": [int(s) for s in seeds],
        "reference": str(reference.path),
        "reference_layout": reference.layout,
        "world_size": ranks.world_size,
        "batch_size": batch_size,
        "nfe": nfe,
    }
    if not use_images:
        result["precision_recall"] = (
            "off (metrics.precision_recall=false)"
            if precision_recall_enabled is False
            else f"not computed: {reference.path.name} has no reference images"
        )
    if len(runs) == 1:
        result.update(runs[0])
    else:
        result["per_seed"] = [{"seed": int(s), **run} for s, run in zip(seeds, runs, strict=True)]
        result.update(summarize(runs))
    return result
