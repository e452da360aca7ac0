"""Shared LightningDataModule logic: validation, splits, datasets, dataloaders, reference data.

Every difforge DataModule yields ``(x, y)`` batches: ``x`` float32, images scaled to ``[-1, 1]``
as ``(B, C, H, W)`` and vectors unscaled as ``(B, D)``; ``y`` long class labels (zeros for
unlabelled data). A subclass only builds its three splits (``_build_splits``) and states its
shape; this module carries the rest:

* ``train_dataloader`` shuffles (Lightning swaps in a ``DistributedSampler`` under DDP), applies
  the random horizontal flip (images, ``random_flip``) and repeats the train split ``repeat``
  times per epoch (for tiny datasets, so an epoch is more than a handful of steps);
* ``val_dataloader`` / ``test_dataloader`` are deterministic (no shuffle, no augmentation);
* ``reference_samples(split, n)`` returns real data of a split, un-augmented and in the same
  scaling as the batches, for metrics (FID reference statistics, Wasserstein distances).

Splits are deterministic and disjoint: they depend only on the data and on ``seed``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader

from difforge.data.options import (
    DataConfigError,
    check_choice,
    check_int,
    check_num_classes,
)

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------- splits
def split_indices(
    n: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    labels: Tensor | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Deterministic disjoint ``train``/``val``/``test`` index arrays covering ``range(n)``.

    Stratified by ``labels`` when given and possible (every class needs enough members), a
    plain seeded shuffle otherwise. Split sizes are ``round(n * fraction)``; indices are sorted.
    """
    from sklearn.model_selection import train_test_split

    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    if n - n_test - n_val < 1:
        raise DataConfigError(
            f"{n} samples are too few for data.val_fraction={val_fraction} and "
            f"data.test_fraction={test_fraction}: the train split would be empty"
        )
    y = None if labels is None else np.asarray(labels)

    def take(index: np.ndarray, size: int, salt: int) -> tuple[np.ndarray, np.ndarray]:
        if size == 0:
            return index, index[:0]
        strata = None if y is None or len(np.unique(y[index])) < 2 else y[index]
        try:
            return tuple(  # type: ignore[return-value]
                train_test_split(index, test_size=size, stratify=strata, random_state=seed + salt)
            )
        except ValueError:  # a class too small to stratify: fall back to a plain shuffle
            return tuple(  # type: ignore[return-value]
                train_test_split(index, test_size=size, random_state=seed + salt)
            )

    rest, test = take(np.arange(n), n_test, 0)
    train, val = take(rest, n_val, 1)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


# ------------------------------------------------------------------------------------- datasets
class ArrayDataset(Dataset):
    """In-memory ``(x, y)`` pairs; ``x`` returned as ``float32(x) * scale + shift``.

    Images are kept as uint8 (``scale=2/255, shift=-1`` maps them to ``[-1, 1]``), which keeps
    CIFAR-10 at a quarter of its float32 size.
    """

    def __init__(self, x: Tensor, y: Tensor, scale: float = 1.0, shift: float = 0.0) -> None:
        if len(x) != len(y):
            raise ValueError(f"x and y lengths differ: {len(x)} vs {len(y)}")
        self.x, self.y = x, y.long()
        self.scale, self.shift = scale, shift

    def _convert(self, x: Tensor) -> Tensor:
        if self.scale == 1.0 and self.shift == 0.0 and x.dtype == torch.float32:
            return x
        return x.float() * self.scale + self.shift

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self._convert(self.x[index]), self.y[index]

    def get_x(self, index: Tensor) -> Tensor:
        """Batched ``x`` for a tensor of indices (fast path for :meth:`reference_samples`)."""
        return self._convert(self.x[index])


class EpochShuffleSampler(Sampler[int]):
    """A shuffled order that is a function of ``(seed, epoch)`` alone, and that remembers how far it
    got: Lightning calls ``set_epoch`` each epoch, and the stateful loader saves ``state_dict`` in
    checkpoints, so a resumed run sees exactly the order an uninterrupted run sees, in this epoch
    and the next ones. (Under DDP Lightning swaps in its ``DistributedSampler``, also seeded per
    epoch.)"""

    def __init__(self, length: int, seed: int) -> None:
        self.length, self.seed = length, seed
        self.epoch = 0
        self._resume_from = 0
        self._yielded = 0

    def set_epoch(self, epoch: int) -> None:
        # The saved position belongs to the saved epoch: a run saved after the last batch of an
        # epoch resumes in the next one, from its start.
        if epoch != self.epoch:
            self._resume_from = 0
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(
            self.length, generator=torch.Generator().manual_seed(self.seed + self.epoch)
        )
        start, self._resume_from = self._resume_from, 0
        self._yielded = start
        for index in order[start:].tolist():
            self._yielded += 1
            yield index

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "yielded": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self._resume_from = state["epoch"], state["yielded"]


class HorizontalFlip(Dataset):
    """Flips ``x`` along its last axis with probability 1/2 (torch's global RNG, seeded per
    DataLoader worker)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.dataset[index]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, y


class Repeat(Dataset):
    """The dataset ``times`` times over (index modulo length)."""

    def __init__(self, dataset: Dataset, times: int) -> None:
        self.dataset, self.times = dataset, times
        self.length = len(dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.length * self.times

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index % self.length]


def resize_images(x: Tensor, size: int) -> Tensor:
    """Bilinear resize of float ``(N, C, H, W)`` to ``size x size`` (antialiased when
    shrinking), processed in chunks to bound memory."""
    if x.shape[-2:] == (size, size):
        return x
    shrink = size < max(x.shape[-2:])
    return torch.cat(
        [
            F.interpolate(
                chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
            )
            for chunk in x.split(4096)
        ]
    )


# ---------------------------------------------------------------------------------- datamodules
class DiffusionDataModule(pl.LightningDataModule):
    """Base of every difforge DataModule.

    Args:
        batch_size: samples per batch (per device under DDP).
        num_workers: DataLoader worker processes (0: load in the main process).
        pin_memory: pin host memory for faster GPU transfer.
        seed: seed of the train/val/test split and of generated data.
        num_classes: classes of the labels, 0 for unlabelled data (``y`` all zero); where the
            class sets ``native_num_classes``, that number or 0.
        repeat: the train split is seen ``repeat`` times per epoch (tiny datasets).
        random_flip: random horizontal flip of train images.
    """

    kind: ClassVar[str]
    # Its name in configs/data/ (``data=<config_name>``): what caches and classifiers are keyed by.
    config_name: ClassVar[str]
    # The dataset's name in messages (set with ``native_num_classes``).
    dataset_name: ClassVar[str]
    # The fixed number of classes of a dataset (0: unlabelled), checked against ``num_classes``;
    # None where it depends on the options (a mixture's components, a folder's subfolders).
    native_num_classes: ClassVar[int | None] = None

    def __init__(
        self,
        batch_size: int,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        *,
        num_classes: int,
        repeat: int = 1,
        random_flip: bool = False,
    ) -> None:
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.pin_memory = bool(pin_memory)
        self.seed = check_int("seed", seed, minimum=0)
        self._num_classes = check_int("num_classes", num_classes, minimum=0)
        if self.native_num_classes is not None:
            check_num_classes(self._num_classes, self.native_num_classes, self.dataset_name)
        self.repeat = check_int("repeat", repeat)
        self.random_flip = bool(random_flip)
        self._splits: dict[str, Dataset] | None = None
        # indices of each split's samples in the source data (set by ``_build_splits``)
        self.split_index: dict[str, np.ndarray] = {}

    # ----- what a subclass provides
    def _build_splits(self) -> dict[str, Dataset]:
        """The un-augmented ``train``, ``val`` and ``test`` datasets."""
        raise NotImplementedError

    @property
    def data_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return self._num_classes

    # ----- Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        """Builds all splits once (idempotent; called by Lightning on every rank)."""
        if self._splits is None:
            splits = self._build_splits()
            assert set(splits) == set(SPLITS), f"_build_splits returned {sorted(splits)}"
            self._splits = splits

    def split_dataset(self, split: str) -> Dataset:
        """The un-augmented, un-repeated dataset of ``split`` (``train``, ``val`` or ``test``)."""
        if split not in SPLITS:
            raise DataConfigError(f"split must be one of {list(SPLITS)}, got {split!r}")
        self.setup()
        assert self._splits is not None
        return self._splits[split]

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        # A stateful loader with its own seeded generator: Lightning saves its position in
        # checkpoints, so a resumed run continues the same data order, and creating its iterators
        # never draws from torch's global RNG (which the training noise uses).
        sampler = EpochShuffleSampler(len(dataset), self.seed) if shuffle else None  # type: ignore[arg-type]
        return StatefulDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.split_dataset("train")
        if self.random_flip:
            dataset = HorizontalFlip(dataset)
        if self.repeat > 1:
            dataset = Repeat(dataset, self.repeat)
        return self._loader(dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.split_dataset("val"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.split_dataset("test"), shuffle=False)

    # ----- metrics
    def split_size(self, split: str) -> int:
        return len(self.split_dataset(split))  # type: ignore[arg-type]

    def reference_samples(self, split: str = "test", n: int | None = None) -> Tensor:
        """Real ``x`` of ``split`` (no augmentation, batch scaling), float32 on the CPU.

        ``n=None`` returns the whole split in order; otherwise a subset of ``n`` drawn without
        replacement with ``seed`` (the same subset every call). Asking for more samples than
        the split holds is an error.
        """
        dataset = self.split_dataset(split)
        size = len(dataset)  # type: ignore[arg-type]
        if n is None:
            index = torch.arange(size)
        else:
            n = check_int("reference_samples n", n, minimum=0)
            if n > size:
                raise DataConfigError(
                    f"reference_samples: the {split} split holds {size} samples, {n} requested"
                )
            index = torch.randperm(size, generator=torch.Generator().manual_seed(self.seed))[:n]
        if isinstance(dataset, ArrayDataset):
            return dataset.get_x(index)
        if len(index) == 0:
            return torch.empty(0, *self.data_shape)
        return torch.stack([dataset[int(i)][0] for i in index])


class ImageDataModule(DiffusionDataModule):
    """Base of image DataModules: ``channels``, square ``image_size`` and ``num_classes``."""

    kind: ClassVar[str] = "image"

    def __init__(
        self,
        batch_size: int,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        *,
        channels: int,
        image_size: int | None,
        num_classes: int,
        repeat: int = 1,
        random_flip: bool = False,
    ) -> None:
        super().__init__(
            batch_size,
            num_workers,
            pin_memory,
            seed,
            num_classes=num_classes,
            repeat=repeat,
            random_flip=random_flip,
        )
        self.channels = check_choice("channels", channels, (1, 3))
        self.image_size = None if image_size is None else check_int("image_size", image_size)

    @property
    def data_shape(self) -> tuple[int, ...]:
        if self.image_size is None:
            raise DataConfigError("data.image_size is not set")
        return (self.channels, self.image_size, self.image_size)
