"""Any folder of images.

All files under ``root`` (recursively; hidden files and folders skipped) with an image extension
(``IMAGE_EXTENSIONS``, any case) are used. Each image is converted to ``channels`` (1: grayscale,
3: RGB), its shorter side resized to ``image_size`` (bicubic, antialiased) and center-cropped to
``image_size x image_size``; ``image_size: null`` keeps the native size, which then must be the
same for every image. Pixels are scaled to ``[-1, 1]``.

Labels: when every image lies inside a subfolder of ``root``, the top-level subfolder names are
the classes (sorted, ``classes`` attribute). ``num_classes: 0`` (default) ignores them (``y`` all
zero), ``num_classes: null`` uses them if present, an integer must equal the number of
subfolders. The split is stratified by class when labelled, deterministic in ``seed``.

``in_memory: true`` (default) decodes every image once at setup into a uint8 tensor (3 x 64 x 64
images: 12 KB each), so corrupt files are reported before training; ``false`` decodes on the fly
in the DataLoader workers.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from difforge.data.base import ArrayDataset, ImageDataModule, split_indices
from difforge.data.options import (
    DataConfigError,
    DatasetNotFoundError,
    ImageReadError,
    check_fractions,
)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def find_images(root: Path) -> list[Path]:
    """Image files under ``root``, recursively, sorted; hidden entries skipped."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(folder) / name)
    return found


def image_size_of(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file header, or :class:`ImageReadError` naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except Exception as error:
        raise ImageReadError(f"cannot read image file {path}: {error}") from None


def load_image(path: Path, channels: int, image_size: int | None) -> Tensor:
    """uint8 ``(channels, H, W)``: converted, shorter side resized, center-cropped."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    try:
        with Image.open(path) as opened:
            image = opened.convert("L" if channels == 1 else "RGB")  # decodes the whole file
    except Exception as error:
        raise ImageReadError(f"cannot read image file {path}: {error}") from None
    if image_size is not None:
        image = TF.resize(image, image_size, InterpolationMode.BICUBIC, antialias=True)
        image = TF.center_crop(image, [image_size, image_size])
    return TF.pil_to_tensor(image)


class ImageFileDataset(Dataset):
    """Decodes images on the fly; ``x`` in ``[-1, 1]``."""

    def __init__(
        self, paths: list[Path], labels: Tensor, channels: int, image_size: int | None
    ) -> None:
        self.paths, self.labels = paths, labels
        self.channels, self.image_size = channels, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x = load_image(self.paths[index], self.channels, self.image_size)
        return x.float() * (2.0 / 255.0) - 1.0, self.labels[index]


class ImageFolderDataModule(ImageDataModule):
    """Images from a folder (see the module docstring).

    Args:
        root: the folder.
        batch_size, num_workers, pin_memory, seed: see :class:`DiffusionDataModule`.
        image_size: output size (shorter-side resize + center crop); ``None``: native size.
        channels: 1 (grayscale) or 3 (RGB); images are converted.
        num_classes: 0 (unlabelled), ``None`` (infer from subfolders) or the subfolder count.
        val_fraction, test_fraction: split fractions.
        random_flip: random horizontal flip of train images.
        repeat: passes over the train split per epoch (small folders).
        in_memory: decode all images at setup (``True``) or on the fly (``False``).
    """

    config_name = "image_folder"

    def __init__(
        self,
        root: str | os.PathLike,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        image_size: int | None = 64,
        channels: int = 3,
        num_classes: int | None = 0,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        random_flip: bool = False,
        repeat: int = 1,
        in_memory: bool = True,
    ) -> None:
        super().__init__(
            batch_size,
            num_workers,
            pin_memory,
            seed,
            channels=channels,
            image_size=image_size,
            num_classes=0 if num_classes is None else num_classes,
            repeat=repeat,
            random_flip=random_flip,
        )
        self.root = Path(root).expanduser()
        self._requested_classes = num_classes
        self.val_fraction, self.test_fraction = check_fractions(val_fraction, test_fraction)
        self.in_memory = bool(in_memory)
        self.classes: list[str] = []
        self._native_hw: tuple[int, int] | None = None
        self._scanned: tuple[list[Path], Tensor] | None = None

    # ----- scanning
    def _scan(self) -> tuple[list[Path], Tensor]:
        """Image paths and labels; sets ``classes`` and the native size. Cached."""
        if self._scanned is not None:
            return self._scanned
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise DatasetNotFoundError(
                f"image folder {self.root} {what}: set data.root to a folder of images"
            )
        paths = find_images(self.root)
        if not paths:
            raise DatasetNotFoundError(
                f"no images found in {self.root} (searched recursively for "
                f"{', '.join(IMAGE_EXTENSIONS)})"
            )
        labelled = all(len(path.relative_to(self.root).parts) > 1 for path in paths)
        found = sorted({path.relative_to(self.root).parts[0] for path in paths}) if labelled else []
        requested = self._requested_classes
        if requested is None:
            self._num_classes = len(found)
        elif requested > 0 and requested != len(found):
            names = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
            where = (
                f"{len(found)} class subfolders ({names})"
                if labelled
                else "no class subfolders (some images lie directly in it)"
            )
            raise DataConfigError(
                f"data.num_classes={requested} but {self.root} has {where}: set "
                f"data.num_classes={len(found)}, or 0 for unlabelled images"
            )
        self.classes = found if self._num_classes else []
        index = {name: i for i, name in enumerate(self.classes)}
        labels = torch.tensor(
            [index[path.relative_to(self.root).parts[0]] if index else 0 for path in paths],
            dtype=torch.long,
        )
        first_size = image_size_of(paths[0])
        for path in paths[1:]:  # reads headers only; names the first file that is no image
            size = image_size_of(path)
            if self.image_size is None and size != first_size:
                raise DataConfigError(
                    f"images in {self.root} have different sizes ({paths[0].name}: "
                    f"{first_size[0]}x{first_size[1]}, {path.name}: {size[0]}x{size[1]}) and "
                    f"data.image_size is null: set data.image_size=<int> to resize and "
                    f"center-crop them"
                )
        self._native_hw = (first_size[1], first_size[0])
        self._scanned = (paths, labels)
        return self._scanned

    # ----- shape
    @property
    def data_shape(self) -> tuple[int, ...]:
        if self.image_size is not None:
            return (self.channels, self.image_size, self.image_size)
        self._scan()
        assert self._native_hw is not None
        return (self.channels, *self._native_hw)

    @property
    def num_classes(self) -> int:
        if self._requested_classes is None:
            self._scan()
        return self._num_classes

    # ----- splits
    def _build_splits(self) -> dict[str, Dataset]:
        paths, labels = self._scan()
        index = split_indices(
            len(paths),
            self.val_fraction,
            self.test_fraction,
            self.seed,
            labels if self._num_classes else None,
        )
        self.split_index = index
        if self.in_memory:
            x = torch.stack([load_image(p, self.channels, self.image_size) for p in paths])
            return {
                split: ArrayDataset(x[i], labels[i], scale=2.0 / 255.0, shift=-1.0)
                for split, i in index.items()
            }
        return {
            split: ImageFileDataset(
                [paths[j] for j in i], labels[i], self.channels, self.image_size
            )
            for split, i in index.items()
        }
