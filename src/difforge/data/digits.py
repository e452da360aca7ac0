"""scikit-learn's handwritten digits: the embedded default dataset (no download).

1,797 grayscale 8x8 images of the digits 0-9 (UCI optical recognition of handwritten digits),
pixel values 0..16 mapped linearly to ``[-1, 1]``. The split is stratified by class and
deterministic in ``seed``: with the default fractions 1,437 train / 180 val / 180 test images.

``image_size`` 8 keeps the native resolution; any other size resizes bilinearly (e.g. 16 or 32
for a U-Net with more downsampling levels). Since the train split is tiny (12 steps of 128 per
pass), ``repeat`` shows it several times per epoch (reshuffled each time); ``repeat: 10`` gives
~112 steps per epoch at batch size 128.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from difforge.data.base import ArrayDataset, ImageDataModule, resize_images, split_indices
from difforge.data.options import DataConfigError, check_fractions


class DigitsDataModule(ImageDataModule):
    """sklearn ``load_digits``: ``(1, image_size, image_size)`` in ``[-1, 1]``, 10 classes.

    Args:
        batch_size, num_workers, pin_memory, seed: see :class:`DiffusionDataModule`.
        image_size: 8 or ``None`` (native) or a bilinear resize to this size.
        channels: must be 1 (grayscale).
        num_classes: 10 (digit labels) or 0 (unlabelled: ``y`` all zero).
        val_fraction, test_fraction: stratified split fractions.
        repeat: passes over the train split per epoch.
        random_flip: random horizontal flip (off by default: flipped digits are not digits).
    """

    config_name = "digits"

    dataset_name = "digits"
    native_num_classes = 10

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        image_size: int | None = 8,
        channels: int = 1,
        num_classes: int = 10,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        repeat: int = 1,
        random_flip: bool = False,
    ) -> None:
        if channels != 1:
            raise DataConfigError(
                f"digits are grayscale: data.channels must be 1, got {channels!r}"
            )
        super().__init__(
            batch_size,
            num_workers,
            pin_memory,
            seed,
            channels=channels,
            image_size=8 if image_size is None else image_size,
            num_classes=num_classes,
            repeat=repeat,
            random_flip=random_flip,
        )
        self.val_fraction, self.test_fraction = check_fractions(val_fraction, test_fraction)

    def _build_splits(self) -> dict[str, Dataset]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
        x = resize_images(x, self.image_size).clamp_(-1.0, 1.0).contiguous()  # type: ignore[arg-type]
        labels = torch.as_tensor(digits.target, dtype=torch.long)
        y = labels if self.num_classes else torch.zeros_like(labels)
        index = split_indices(len(x), self.val_fraction, self.test_fraction, self.seed, labels)
        self.split_index = index
        return {split: ArrayDataset(x[i], y[i]) for split, i in index.items()}
