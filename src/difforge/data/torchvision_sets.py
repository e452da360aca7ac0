"""MNIST, Fashion-MNIST and CIFAR-10, read by torchvision's own dataset classes.

Files live under ``root`` (the config's ``${paths.data_dir}``) in torchvision's layout:

* MNIST: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (gunzipped);
* Fashion-MNIST: the same four names under ``<root>/FashionMNIST/raw/``;
* CIFAR-10: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``.

``download: false`` by default: absent files raise :class:`DatasetNotFoundError` naming the
missing files, the folder and how to get them (``data.download=true`` when online, or the URL).
Downloads happen in ``prepare_data`` (rank 0 only under DDP).

Splits: ``test`` is the official test set (10,000 images); ``val`` is ``val_size`` images held
out of the official train set, stratified by class with ``seed``; ``train`` is the rest.
The images are kept in memory as uint8 ``(N, C, H, W)`` and scaled to ``[-1, 1]`` per batch.
MNIST/Fashion-MNIST are 28x28: ``image_size: 32`` (default) with ``resize_mode: pad`` adds a
2-pixel black border (pixels unchanged); ``resize_mode: bilinear`` resizes instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from difforge.data.base import ArrayDataset, ImageDataModule, resize_images, split_indices
from difforge.data.options import (
    DataConfigError,
    DatasetDownloadError,
    DatasetNotFoundError,
    check_choice,
    check_int,
)


class TorchvisionDataModule(ImageDataModule):
    """Shared logic of the torchvision datasets; subclasses set the class attributes
    (``dataset_name``: the class ``torchvision.datasets.<dataset_name>`` that reads the files).

    Args:
        root: folder holding the dataset (torchvision layout, see the module docstring).
        batch_size, num_workers, pin_memory, seed: see :class:`DiffusionDataModule`.
        download: fetch the files when absent (needs internet).
        image_size: output size (``None``: 32).
        channels: must equal the dataset's channels (``None``: native).
        num_classes: 10 (class labels) or 0 (unlabelled: ``y`` all zero).
        val_size: images held out of the official train set for validation.
        resize_mode: ``pad`` (black border, needs ``image_size >= native``) or ``bilinear``.
        random_flip: random horizontal flip of train images (``None``: dataset default).
        repeat: passes over the train split per epoch.
    """

    native_num_classes = 10
    native_channels: ClassVar[int]
    native_size: ClassVar[int]
    default_image_size: ClassVar[int] = 32
    default_resize_mode: ClassVar[str] = "bilinear"
    default_random_flip: ClassVar[bool] = False

    def __init__(
        self,
        root: str | os.PathLike,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        download: bool = False,
        image_size: int | None = None,
        channels: int | None = None,
        num_classes: int = 10,
        val_size: int = 5000,
        resize_mode: str | None = None,
        random_flip: bool | None = None,
        repeat: int = 1,
    ) -> None:
        channels = self.native_channels if channels is None else channels
        if channels != self.native_channels:
            raise DataConfigError(
                f"{self.dataset_name} images have {self.native_channels} channel(s): "
                f"data.channels must be {self.native_channels}, got {channels!r}"
            )
        super().__init__(
            batch_size,
            num_workers,
            pin_memory,
            seed,
            channels=channels,
            image_size=self.default_image_size if image_size is None else image_size,
            num_classes=num_classes,
            repeat=repeat,
            random_flip=self.default_random_flip if random_flip is None else random_flip,
        )
        self.root = Path(root).expanduser()
        self.download = bool(download)
        self.val_size = check_int("val_size", val_size, minimum=0)
        self.resize_mode = check_choice(
            "resize_mode",
            self.default_resize_mode if resize_mode is None else resize_mode,
            ("pad", "bilinear"),
        )
        if self.resize_mode == "pad" and self.image_size < self.native_size:  # type: ignore[operator]
            raise DataConfigError(
                f"data.resize_mode=pad cannot shrink {self.dataset_name}'s {self.native_size}x"
                f"{self.native_size} images to data.image_size={self.image_size}: use "
                f"data.resize_mode=bilinear"
            )

    # ----- what a subclass provides
    def _dataset_folder(self) -> Path:
        """The folder torchvision reads."""
        raise NotImplementedError

    def _required_files(self) -> list[str]:
        raise NotImplementedError

    def manual_download(self) -> str:
        """How to get the files by hand (for the error messages)."""
        raise NotImplementedError

    # ----- files
    def _torchvision_dataset(self, train: bool, download: bool) -> Any:
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, self.dataset_name)
        return dataset_class(str(self.root), train=train, download=download)

    def missing_files(self) -> list[str]:
        folder = self._dataset_folder()
        return [name for name in self._required_files() if not (folder / name).is_file()]

    def prepare_data(self) -> None:
        """Downloads the files when ``download`` is set and they are absent."""
        if not self.download or not self.missing_files():
            return
        try:
            for train in (True, False):
                self._torchvision_dataset(train, download=True)
        except Exception as error:
            reason = " ".join(str(error).split())  # torchvision's message spans lines
            raise DatasetDownloadError(
                f"could not download {self.dataset_name} into {self.root} "
                f"({type(error).__name__}: {reason}). Offline? {self.manual_download()} "
                f"(on a connected machine, then copy the files here)"
            ) from None

    def _check_files(self) -> None:
        missing = self.missing_files()
        if missing and self.download:
            self.prepare_data()
            missing = self.missing_files()
        if missing:
            raise DatasetNotFoundError(
                f"{self.dataset_name} not found: missing {', '.join(missing)} in "
                f"{self._dataset_folder()}. "
                f"Run with data.download=true (needs internet), or {self.manual_download()}"
            )

    def _load(self, train: bool) -> tuple[Tensor, Tensor]:
        """uint8 ``(N, C, H, W)`` images and long labels of the official train or test set."""
        try:
            dataset = self._torchvision_dataset(train, download=False)
        except Exception as error:  # CIFAR-10's checksum test, a truncated idx file, ...
            reason = " ".join(str(error).split()) or type(error).__name__
            raise DatasetNotFoundError(
                f"{self.dataset_name} files in {self._dataset_folder()} could not be read "
                f"({reason}); they may be corrupt or partial: delete them and fetch them again "
                f"(data.download=true, or {self.manual_download()})"
            ) from None
        x = torch.as_tensor(np.asarray(dataset.data))
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (N, H, W) or (N, H, W, C)
        return x.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.long)

    def _resize(self, x: Tensor) -> Tensor:
        size = self.image_size
        assert size is not None
        if x.shape[-1] == size:
            return x
        if self.resize_mode == "pad":
            before = (size - x.shape[-1]) // 2
            after = size - x.shape[-1] - before
            return F.pad(x, (before, after, before, after), value=0)
        resized = resize_images(x.float(), size)
        return resized.round_().clamp_(0, 255).to(torch.uint8)

    def _build_splits(self) -> dict[str, Dataset]:
        self._check_files()
        x_train, y_train = self._load(train=True)
        x_test, y_test = self._load(train=False)
        if self.val_size >= len(x_train):
            raise DataConfigError(
                f"data.val_size={self.val_size} must be smaller than {self.dataset_name}'s "
                f"{len(x_train)} train images"
            )
        index = split_indices(
            len(x_train), self.val_size / len(x_train), 0.0, self.seed, labels=y_train
        )
        self.split_index = {**index, "test": np.arange(len(x_test))}  # test: official test set
        if not self.num_classes:
            y_train, y_test = torch.zeros_like(y_train), torch.zeros_like(y_test)
        x_train, x_test = self._resize(x_train), self._resize(x_test)

        def dataset(x: Tensor, y: Tensor) -> ArrayDataset:
            return ArrayDataset(x, y, scale=2.0 / 255.0, shift=-1.0)

        return {
            "train": dataset(x_train[index["train"]], y_train[index["train"]]),
            "val": dataset(x_train[index["val"]], y_train[index["val"]]),
            "test": dataset(x_test, y_test),
        }


class _MNISTLike(TorchvisionDataModule):
    native_channels = 1
    native_size = 28
    default_resize_mode = "pad"
    files: ClassVar[tuple[str, ...]] = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )

    url: ClassVar[str]

    def _dataset_folder(self) -> Path:
        return self.root / self.dataset_name / "raw"  # torchvision's layout

    def manual_download(self) -> str:
        names = " ".join(f"{name}.gz" for name in self.files)
        return f"download {names} from {self.url} into {self._dataset_folder()} and gunzip them"

    def _required_files(self) -> list[str]:
        return list(self.files)


class MNISTDataModule(_MNISTLike):
    """MNIST handwritten digits: 60,000 + 10,000 grayscale 28x28 images, 10 classes."""

    config_name = "mnist"

    dataset_name = "MNIST"
    url = "https://ossci-datasets.s3.amazonaws.com/mnist/"


class FashionMNISTDataModule(_MNISTLike):
    """Fashion-MNIST clothing: 60,000 + 10,000 grayscale 28x28 images, 10 classes."""

    config_name = "fashion_mnist"

    dataset_name = "FashionMNIST"
    url = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10: 50,000 + 10,000 colour 32x32 images, 10 classes; random flip by default."""

    config_name = "cifar10"

    dataset_name = "CIFAR10"
    native_channels = 3
    native_size = 32
    default_random_flip = True

    def manual_download(self) -> str:
        url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
        return f"download {url} and extract it with tar -xzf cifar-10-python.tar.gz -C {self.root}"

    def _dataset_folder(self) -> Path:
        return self.root / "cifar-10-batches-py"

    def _required_files(self) -> list[str]:
        return [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
