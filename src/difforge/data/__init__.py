"""LightningDataModules: ``(x, y)`` batches, ``data_shape``, ``num_classes``, ``kind``.

One Hydra config per dataset in ``configs/data/``: ``digits`` (embedded default), ``mnist``,
``fashion_mnist``, ``cifar10``, ``image_folder``, and the vector toys ``gmm1d``, ``gmm2d``,
``gmm_grid25``, ``moons``, ``swiss_roll``. See :mod:`difforge.data.base` for the shared contract.

The names below are imported on first use, so that ``difforge.data.options`` and
``difforge.data.mixtures`` (no Lightning) load without the data modules.
"""

from importlib import import_module
from typing import Any

# Each exported name and the module that defines it.
_EXPORTS = {
    "CIFAR10DataModule": "torchvision_sets",
    "DataConfigError": "options",
    "DataError": "options",
    "DatasetDownloadError": "options",
    "DatasetNotFoundError": "options",
    "DiffusionDataModule": "base",
    "DigitsDataModule": "digits",
    "FashionMNISTDataModule": "torchvision_sets",
    "GaussianMixture2dDataModule": "toys",
    "GaussianMixtureDataModule": "toys",
    "GridMixtureDataModule": "toys",
    "ImageDataModule": "base",
    "ImageFolderDataModule": "image_folder",
    "ImageReadError": "options",
    "MNISTDataModule": "torchvision_sets",
    "MoonsDataModule": "toys",
    "SwissRollDataModule": "toys",
    "TorchvisionDataModule": "torchvision_sets",
    "VectorDataModule": "toys",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
