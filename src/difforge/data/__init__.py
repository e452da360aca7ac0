"""LightningDataModules: ``(x, y)`` batches, ``data_shape``, ``num_classes``, ``kind``.

One Hydra config per dataset in ``configs/data/``: ``digits`` (embedded default), ``mnist``,
``fashion_mnist``, ``cifar10``, ``image_folder``, and the vector toys ``gmm1d``, ``gmm2d``,
``moons``, ``swiss_roll``. See :mod:`difforge.data.base` for the shared contract.
"""

from difforge.data.base import (
    DataConfigError,
    DataError,
    DatasetDownloadError,
    DatasetNotFoundError,
    DiffusionDataModule,
    ImageDataModule,
    ImageReadError,
)
from difforge.data.digits import DigitsDataModule
from difforge.data.image_folder import ImageFolderDataModule
from difforge.data.torchvision_sets import (
    CIFAR10DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    TorchvisionDataModule,
)
from difforge.data.toys import (
    GaussianMixture2dDataModule,
    GaussianMixtureDataModule,
    MoonsDataModule,
    SwissRollDataModule,
    VectorDataModule,
)

__all__ = [
    "CIFAR10DataModule",
    "DataConfigError",
    "DataError",
    "DatasetDownloadError",
    "DatasetNotFoundError",
    "DiffusionDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "GaussianMixture2dDataModule",
    "GaussianMixtureDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "ImageReadError",
    "MNISTDataModule",
    "MoonsDataModule",
    "SwissRollDataModule",
    "TorchvisionDataModule",
    "VectorDataModule",
]
