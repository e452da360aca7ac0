"""The FID callback: FID/KID of EMA samples during training, correct under DDP.

At the end of a validation epoch (never during the sanity check), on the first validation of a
fit, then every ``every_n_epochs`` epochs or ``every_n_steps`` optimizer steps, and on the final
weights: at a validation of the fit's last step (``trainer.max_steps``) or one run after the fit
(``train.py`` validates the final weights when no validation fell on the last step):

1. each rank draws its share of ``num_samples`` (``M // W``, the first ``M % W`` ranks one more)
   with ``pl_module.generate`` (EMA weights), a rank-specific seed and, for a conditional model,
   the class labels ``arange(M) % K`` of its global slice: together exactly the single-process
   label set;
2. features are computed on each rank, padded to a common length and gathered with
   ``pl_module.all_gather`` along with the true counts; the padding is dropped, so no sample is
   counted twice or lost;
3. FID/KID against the cached reference statistics of the data's ``reference_split`` are computed
   from all features on every rank (KID's subsets seeded), then logged as ``val/fid``,
   ``val/kid`` (and ``val/kid_std``, ``val/class_coverage`` when the data have a classifier) with
   ``sync_dist=False``: the values are identical on every rank.

The first evaluation also guarantees that ``val/fid`` exists when a ``ModelCheckpoint``
monitoring it first runs (``configs/callbacks/best_checkpoint.yaml``). Non-image data (vector
toys) disable the callback with a warning.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from difforge.diffusion.samplers import Sampler
from difforge.errors import DifforgeError

if TYPE_CHECKING:
    from difforge.metrics.images import FeatureMetrics, ReferenceStats

log = logging.getLogger("difforge")


def rank_slice(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, count)`` of rank ``rank``'s share of ``total`` items: contiguous slices whose
    sizes differ by at most one (the first ``total % world_size`` ranks take one more)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    base, extra = divmod(total, world_size)
    start = rank * base + min(rank, extra)
    return start, base + (1 if rank < extra else 0)


def gather_rows(
    local: Tensor, total: int, world_size: int, all_gather: Callable[[Tensor], Tensor]
) -> Tensor:
    """All ranks' ``local`` rows ``(n_r, ...)`` in rank order, ``(total, ...)`` on every rank.

    The ranks first share their counts; every rank pads its rows to the largest (all_gather needs
    equal shapes), and the padding is dropped after the gather.
    """
    if world_size == 1:
        return local
    counts = all_gather(torch.tensor([len(local)], device=local.device)).reshape(world_size)
    width = int(counts.max())
    padded = local.new_zeros((width, *local.shape[1:]))
    padded[: len(local)] = local
    rows = all_gather(padded).reshape(world_size, width, *local.shape[1:])
    gathered = torch.cat([rows[r, : int(counts[r])] for r in range(world_size)])
    if len(gathered) != total:
        raise RuntimeError(f"gathered {len(gathered)} feature rows, expected {total}")
    return gathered


class FIDCallback(Callback):
    """FID/KID of ``num_samples`` EMA samples against the data's cached reference statistics.

    Args:
        every_n_epochs: evaluate every this many epochs.
        every_n_steps: when set, replaces ``every_n_epochs``: evaluate at the first validation
            end at least this many optimizer steps after the last evaluation.
        num_samples: generated samples per evaluation, over all ranks.
        sampler: a ``difforge.diffusion.samplers.Sampler`` (None: the module's); its steps are
            ``callbacks.fid.sampler.steps``.
        seed: base seed; rank ``r`` draws with ``seed + r`` (the same noise every evaluation).
        batch_size: generation and feature batch size.
        reference_split, num_reference: real images for the reference (None: the whole split).
        cache_dir: reference-statistics cache (None: ``~/.cache/difforge/fid_stats``).
        feature: ``auto`` (:func:`feature_network_for` the data), ``digits_classifier``,
            ``inception``, or an ``nn.Module``.
        inception_weights: local Inception weights file (offline machines).
        classifier_dir: where mnist/fashion_mnist classifiers live (None: ``<data root>/classifiers``).
        kid_subset_size, kid_subsets: KID's subsets (subset size capped by the sample counts).
    """

    def __init__(
        self,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        num_samples: int = 1000,
        sampler: Sampler | None = None,
        seed: int = 0,
        batch_size: int = 256,
        reference_split: str = "train",
        num_reference: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        feature: str | nn.Module = "auto",
        inception_weights: str | os.PathLike | None = None,
        classifier_dir: str | os.PathLike | None = None,
        kid_subset_size: int = 1000,
        kid_subsets: int = 100,
    ) -> None:
        super().__init__()
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise DifforgeError(
                    f"callbacks.fid.{name} must be null or an integer >= 1, got {value!r}"
                )
        if every_n_epochs is None and every_n_steps is None:
            raise DifforgeError("callbacks.fid needs every_n_epochs or every_n_steps")
        if not isinstance(num_samples, int) or num_samples < 2:
            raise DifforgeError(
                f"callbacks.fid.num_samples must be an integer >= 2, got {num_samples!r}"
            )
        if isinstance(feature, str) and feature not in ("auto", "digits_classifier", "inception"):
            raise DifforgeError(
                f"callbacks.fid.feature must be auto, digits_classifier or inception, got {feature!r}"
            )
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.sampler = sampler
        self.seed = seed
        self.batch_size = batch_size
        self.reference_split = reference_split
        self.num_reference = num_reference
        self.cache_dir = cache_dir
        self.feature_choice = feature
        self.inception_weights = inception_weights
        self.classifier_dir = classifier_dir
        self.kid_subset_size = kid_subset_size
        self.kid_subsets = kid_subsets
        self.enabled = True
        # Values are computed from all ranks' features and identical everywhere: Lightning's
        # advice to sync them across devices does not apply.
        warnings.filterwarnings(
            "ignore", message=r".*self\.log\('val/(fid|kid|kid_std|class_coverage)'.*sync_dist"
        )
        self.feature: nn.Module | None = None
        self.classifier: nn.Module | None = None
        self.reference: ReferenceStats | None = None
        self.metrics: FeatureMetrics | None = None
        self.last_step: int | None = None
        self.last_metrics: dict[str, float] = {}

    # ----- setup
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            raise DifforgeError(
                "the FID callback needs a DataModule (trainer.fit(..., datamodule=...))"
            )
        if getattr(datamodule, "kind", "image") != "image":
            rank_zero_warn(
                f"callbacks.fid: {type(datamodule).__name__} is not image data; FID disabled"
            )
            self.enabled = False

    def _build_feature(self, datamodule: Any) -> nn.Module:
        from difforge.metrics import features

        if isinstance(self.feature_choice, nn.Module):
            return self.feature_choice
        if self.feature_choice == "digits_classifier":
            return features.digits_classifier()
        if self.feature_choice == "inception":
            return features.inception(self.inception_weights)
        return features.feature_network_for(
            datamodule, inception_weights=self.inception_weights, classifier_dir=self.classifier_dir
        )

    def _prepare(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Feature network, classifier, reference statistics (rank 0 computes and caches them
        first; the other ranks then read the cache, or compute their own if they cannot see it)."""
        from difforge.metrics import features
        from difforge.metrics.images import FeatureMetrics, reference_stats

        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        device = pl_module.device
        if self.feature is None:
            self.feature = self._build_feature(datamodule).requires_grad_(False).eval()
            predict = getattr(self.feature, "predict", None)
            self.classifier = (
                self.feature
                if callable(predict)
                else features.classifier_for(datamodule, self.classifier_dir)
            )
        self.feature.to(device)
        if self.classifier is not None:
            self.classifier.to(device)
        if self.reference is None:
            stats = functools.partial(
                reference_stats,
                datamodule,
                self.feature,
                self.reference_split,
                self.num_reference,
                cache_dir=self.cache_dir,
                batch_size=self.batch_size,
                device=device,
            )
            # Rank 0 computes and caches the statistics; the others read its cache.
            if trainer.is_global_zero:
                self.reference = stats()
            trainer.strategy.barrier("fid_reference")
            if not trainer.is_global_zero:
                self.reference = stats(write=False)
            assert self.reference is not None  # one of the two branches ran
            num_features = self.reference.num_features
            self.metrics = FeatureMetrics(num_features, self.kid_subset_size, self.kid_subsets)

    # ----- schedule
    def should_evaluate(self, trainer: L.Trainer) -> bool:
        if not self.enabled or trainer.sanity_checking:
            return False
        if self.last_step is None:
            return True
        if trainer.global_step == self.last_step:
            return False
        if trainer.state.fn != TrainerFn.FITTING or 0 < trainer.max_steps <= trainer.global_step:
            return True  # the final weights: a validation after the fit, or at its last step
        if self.every_n_steps is not None:
            return trainer.global_step - self.last_step >= self.every_n_steps
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0  # type: ignore[operator]

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.should_evaluate(trainer):
            return
        metrics = self.evaluate(trainer, pl_module)
        self.last_step = trainer.global_step
        for name, value in metrics.items():
            pl_module.log(f"val/{name}", value, sync_dist=False, on_step=False, on_epoch=True)

    # ----- evaluation
    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        from difforge.metrics.images import coverage_metrics, extract_features, predict_classes

        self._prepare(trainer, pl_module)
        assert self.feature is not None and self.metrics is not None
        assert self.reference is not None

        def all_gather(tensor: Tensor) -> Tensor:
            # LightningModule.all_gather is typed for tensor collections; a tensor gives a tensor
            return cast(Tensor, pl_module.all_gather(tensor))

        rank, world = trainer.global_rank, trainer.world_size
        start, count = rank_slice(self.num_samples, rank, world)
        local_features = torch.zeros(0, self.reference.num_features, device=pl_module.device)
        local_counts = None
        num_classes = int(getattr(self.classifier, "num_classes", 0))
        if count > 0:
            labels = None
            model_classes = int(getattr(pl_module, "num_classes", 0))
            if model_classes > 0:
                labels = torch.arange(start, start + count) % model_classes
            generator = torch.Generator(device=pl_module.device).manual_seed(self.seed + rank)
            samples = pl_module.generate(  # type: ignore[operator]
                count,
                sampler=self.sampler,
                class_labels=labels,
                generator=generator,
                batch_size=self.batch_size,
            ).samples
            local_features = extract_features(
                self.feature, samples, self.batch_size, pl_module.device
            )
            if self.classifier is not None:
                predictions = predict_classes(self.classifier, samples, self.batch_size)
                local_counts = torch.bincount(predictions, minlength=num_classes)
        if num_classes and local_counts is None:
            local_counts = torch.zeros(num_classes, dtype=torch.long)
        features = gather_rows(local_features, self.num_samples, world, all_gather)
        result = self.metrics(self.reference, features.cpu(), seed=self.seed)
        metrics = {"fid": result["fid"], "kid": result["kid_mean"], "kid_std": result["kid_std"]}
        if num_classes:
            assert local_counts is not None
            counts = local_counts.to(pl_module.device)
            if world > 1:
                counts = all_gather(counts).reshape(world, num_classes).sum(0)
            predicted = torch.arange(num_classes).repeat_interleave(counts.cpu())
            metrics["class_coverage"] = coverage_metrics(predicted, num_classes)["class_coverage"]
        self.last_metrics = metrics
        if trainer.is_global_zero:
            log.info(
                "step %d: FID %.4g, KID %.4g (%d samples)",
                trainer.global_step,
                metrics["fid"],
                metrics["kid"],
                self.num_samples,
            )
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"last_metrics": dict(self.last_metrics)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_metrics = dict(state_dict.get("last_metrics", {}))


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` for a metric that only some runs log (``val/fid``): until the metric
    exists it skips top-k saving silently (a run shorter than its first validation). When no
    enabled ``FIDCallback`` can ever log it (vector data, or no FID callback), it says so once at
    the start."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self.monitor == "val/fid":
            fid = [c for c in trainer.callbacks if isinstance(c, FIDCallback) and c.enabled]  # type: ignore[attr-defined]
            if not fid:
                rank_zero_warn(
                    "callbacks.best_checkpoint: no FID callback is on for this run, so val/fid is "
                    "never logged and no best.ckpt is kept",
                    category=UserWarning,
                )

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if self.monitor is not None and self.monitor not in monitor_candidates:
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def save_after_fit(self, trainer: L.Trainer) -> None:
        """The validation of the final weights that ``train.py`` runs after ``fit`` (when none
        fell on the last step), where Lightning saves no top-k checkpoint: keep its result if it
        is among the best."""
        if self.monitor not in trainer.callback_metrics:
            return
        self._save_topk_checkpoint(trainer, dict(trainer.callback_metrics))
