"""Tests of the LightningDataModules (difforge.data) and their configs (configs/data/*.yaml)."""

from __future__ import annotations

import math
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from difforge.data import (
    CIFAR10DataModule,
    DataConfigError,
    DataError,
    DatasetNotFoundError,
    DiffusionDataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    GaussianMixture2dDataModule,
    GaussianMixtureDataModule,
    ImageFolderDataModule,
    ImageReadError,
    MNISTDataModule,
    MoonsDataModule,
    SwissRollDataModule,
    TorchvisionDataModule,
)
from difforge.data.mixtures import known_mixture
from difforge.diffusion.gaussian_mixture import GaussianMixture

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "data"
SPLITS = ("train", "val", "test")


def first_batch(dm: DiffusionDataModule, split: str = "train"):
    loader = getattr(dm, f"{split}_dataloader")()
    return next(iter(loader))


def check_batch(dm: DiffusionDataModule, x: torch.Tensor, y: torch.Tensor, batch: int) -> None:
    assert x.dtype == torch.float32 and y.dtype == torch.long
    assert x.shape == (batch, *dm.data_shape)
    assert y.shape == (batch,)
    if dm.num_classes:
        assert int(y.min()) >= 0 and int(y.max()) < dm.num_classes
    else:
        assert (y == 0).all()
    if dm.kind == "image":
        assert len(dm.data_shape) == 3
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    else:
        assert dm.kind == "vector" and len(dm.data_shape) == 1


def check_disjoint(dm: DiffusionDataModule) -> None:
    sets = [set(dm.split_index[s].tolist()) for s in SPLITS]
    assert sum(len(s) for s in sets) == len(set().union(*sets))
    for split, index in zip(SPLITS, sets, strict=True):
        assert len(index) == dm.split_size(split)


# ------------------------------------------------------------------------------------ digits
@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=32, seed=0)
    dm.setup()
    return dm


def test_digits_batches(digits):
    x, y = first_batch(digits)
    check_batch(digits, x, y, 32)
    assert digits.data_shape == (1, 8, 8) and digits.num_classes == 10 and digits.kind == "image"
    ref = digits.reference_samples("train")
    assert ref.shape == (1437, 1, 8, 8) and ref.dtype == torch.float32
    assert float(ref.min()) == -1.0 and float(ref.max()) == 1.0  # 0 and 16 both occur
    # digit values 0..16 map to -1 + k/8
    assert torch.allclose(ref * 8, (ref * 8).round(), atol=1e-5)
    xv, yv = first_batch(digits, "val")
    check_batch(digits, xv, yv, 32)


def test_digits_splits_deterministic_disjoint_stratified(digits):
    assert {s: digits.split_size(s) for s in SPLITS} == {"train": 1437, "val": 180, "test": 180}
    check_disjoint(digits)
    again = DigitsDataModule(batch_size=32, seed=0)
    other = DigitsDataModule(batch_size=32, seed=1)
    for split in SPLITS:
        assert torch.equal(digits.reference_samples(split), again.reference_samples(split))
        np.testing.assert_array_equal(digits.split_index[split], again.split_index[split])
    assert not torch.equal(digits.reference_samples("test"), other.reference_samples("test"))
    # stratified: every class has 18 (+-1) test images
    y_test = torch.cat([y for _, y in digits.test_dataloader()])
    counts = torch.bincount(y_test, minlength=10)
    assert int(counts.min()) >= 17 and int(counts.max()) <= 19
    # deterministic loaders for val / test
    a = torch.cat([x for x, _ in digits.val_dataloader()])
    assert torch.equal(a, torch.cat([x for x, _ in again.val_dataloader()]))


def test_digits_resize_repeat_unlabelled():
    dm = DigitsDataModule(batch_size=64, image_size=16, repeat=3, num_classes=0)
    x, y = first_batch(dm)
    check_batch(dm, x, y, 64)
    assert dm.data_shape == (1, 16, 16)
    assert len(dm.train_dataloader().dataset) == 3 * 1437
    assert len(dm.train_dataloader()) == math.ceil(3 * 1437 / 64)
    assert len(dm.val_dataloader().dataset) == 180  # val / test are not repeated


def test_digits_workers():
    dm = DigitsDataModule(batch_size=16, num_workers=1)
    x, y = first_batch(dm)
    check_batch(dm, x, y, 16)


def test_reference_samples_subset(digits):
    a = digits.reference_samples("test", 50)
    assert a.shape == (50, 1, 8, 8)
    assert torch.equal(a, digits.reference_samples("test", 50))
    rows = {tuple(r.flatten().tolist()) for r in digits.reference_samples("test")}
    assert all(tuple(r.flatten().tolist()) in rows for r in a)
    with pytest.raises(DataConfigError, match=r"holds 180 samples, 181 requested"):
        digits.reference_samples("test", 181)
    with pytest.raises(DataConfigError, match=r"split must be one of"):
        digits.reference_samples("valid")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": 3}, "digits are grayscale: data.channels must be 1"),
        ({"num_classes": 5}, "data.num_classes must be 10"),
        ({"image_size": 0}, "data.image_size must be an integer >= 1"),
        ({"batch_size": 0}, "data.batch_size must be an integer >= 1"),
        ({"repeat": 0}, "data.repeat must be an integer >= 1"),
        ({"val_fraction": 1.5}, r"data.val_fraction must be in \[0, 1\), got 1.5"),
    ],
)
def test_digits_errors(kwargs, message):
    with pytest.raises(DataConfigError, match=message):
        DigitsDataModule(**{"batch_size": 8, **kwargs})


def test_split_fractions(tmp_path):
    with pytest.raises(DataConfigError, match=r"val_fraction \+ data.test_fraction must be < 1"):
        DigitsDataModule(batch_size=8, val_fraction=0.5, test_fraction=0.5)
    for i in range(2):
        write_png(tmp_path / f"{i}.png", rgb(4, 4, (0, 0, 0)))
    dm = ImageFolderDataModule(tmp_path, batch_size=2, val_fraction=0.4, test_fraction=0.4)
    with pytest.raises(
        DataConfigError, match=r"2 samples are too few .* train split would be empty"
    ):
        dm.setup()


# -------------------------------------------------------------------------------------- toys
def mixture_moments(w, mu, s):
    w, mu, s = (np.asarray(v, dtype=np.float64) for v in (w, mu, s))
    w = w / w.sum()
    mean = float((w * mu).sum())
    var = float((w * (s**2 + mu**2)).sum() - mean**2)
    d = mu - mean
    fourth = float((w * (d**4 + 6 * d**2 * s**2 + 3 * s**4)).sum())  # E[(X - mean)^4]
    return mean, var, fourth


@pytest.mark.parametrize(
    ("overrides", "w", "mu", "s"),
    [
        ({}, [0.2, 0.5, 0.3], [-3.0, 0.0, 3.0], [0.5, 0.5, 0.5]),
        (
            {"weights": [0.5, 0.25, 0.25], "means": [-4, 0, 4], "stds": [1.0, 0.5, 0.25]},
            [0.5, 0.25, 0.25],
            [-4.0, 0.0, 4.0],
            [1.0, 0.5, 0.25],
        ),
    ],
)
def test_gmm1d_matches_mixture(overrides, w, mu, s):
    n = 20_000
    dm = GaussianMixtureDataModule(batch_size=256, num_train=n, **overrides)
    assert isinstance(dm.mixture, GaussianMixture)
    torch.testing.assert_close(dm.mixture.means[:, 0], torch.tensor(mu, dtype=torch.float64))
    torch.testing.assert_close(dm.mixture.stds[:, 0], torch.tensor(s, dtype=torch.float64))
    x, y = first_batch(dm)
    check_batch(dm, x, y, 256)
    assert dm.data_shape == (1,) and dm.num_classes == 3 and dm.kind == "vector"
    samples = dm.reference_samples("train").double()[:, 0]
    assert samples.shape == (n,)
    mean, var, fourth = mixture_moments(w, mu, s)
    # 5 standard errors: the mean's SE is sqrt(var/n), the sample variance's sqrt((m4-var^2)/n)
    assert abs(float(samples.mean()) - mean) < 5 * math.sqrt(var / n)
    assert abs(float(samples.var()) - var) < 5 * math.sqrt((fourth - var**2) / n)
    # component frequencies (binomial SE) and per-component means
    labels = dm.split_dataset("train").y
    for k, (wk, mk, sk) in enumerate(zip(np.asarray(w) / sum(w), mu, s, strict=True)):
        freq = float((labels == k).double().mean())
        assert abs(freq - wk) < 5 * math.sqrt(wk * (1 - wk) / n)
        nk = int((labels == k).sum())
        assert abs(float(samples[labels == k].mean()) - mk) < 5 * sk / math.sqrt(nk)
    # Kolmogorov-Smirnov against the mixture's CDF (1.95 / sqrt(n): the 0.1% level)
    sorted_x = samples.sort().values
    cdf = dm.mixture.cdf_1d(sorted_x)
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = float(torch.maximum(grid - cdf, cdf - (grid - 1 / n)).max())
    assert ks < 1.95 / math.sqrt(n)


def test_gmm1d_deterministic_and_disjoint():
    a = GaussianMixtureDataModule(batch_size=64, num_train=1000, num_val=200, num_test=300)
    b = GaussianMixtureDataModule(batch_size=64, num_train=1000, num_val=200, num_test=300)
    c = GaussianMixtureDataModule(batch_size=64, num_train=1000, num_val=200, num_test=300, seed=1)
    for split in SPLITS:
        assert torch.equal(a.reference_samples(split), b.reference_samples(split))
    assert not torch.equal(a.reference_samples("train"), c.reference_samples("train"))
    assert {s: a.split_size(s) for s in SPLITS} == {"train": 1000, "val": 200, "test": 300}
    check_disjoint(a)
    rows = [set(a.reference_samples(s)[:, 0].tolist()) for s in SPLITS]
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 2}, "set data.dim=1"),
        ({"num_classes": 4}, "data.num_classes must be 3"),
        ({"means": [-1.0, 1.0]}, "one entry per component"),
        ({"stds": [0.5, -0.5, 0.5]}, "stds must be > 0"),
        ({"num_train": 0}, "data.num_train must be an integer >= 1"),
    ],
)
def test_gmm1d_errors(kwargs, message):
    with pytest.raises(DataConfigError, match=message):
        GaussianMixtureDataModule(batch_size=8, **kwargs)


def test_gmm1d_unlabelled():
    dm = GaussianMixtureDataModule(batch_size=64, num_classes=0, num_train=500)
    x, y = first_batch(dm)
    check_batch(dm, x, y, 64)


def test_gmm2d_layouts():
    ring = GaussianMixture2dDataModule(batch_size=128, num_train=4000, num_val=10, num_test=10)
    assert ring.data_shape == (2,) and ring.num_classes == 8
    torch.testing.assert_close(ring.mixture.means.norm(dim=1), torch.full((8,), 4.0).double())
    torch.testing.assert_close(ring.mixture.stds, torch.full((8, 2), 0.3).double())
    x, y = first_batch(ring)
    check_batch(ring, x, y, 128)
    train = ring.reference_samples("train")
    labels = ring.split_dataset("train").y
    centre = ring.mixture.means[labels].float()
    assert float((train - centre).std()) == pytest.approx(0.3, rel=0.05)

    grid = GaussianMixture2dDataModule(
        batch_size=8, layout="grid", num_components=25, num_classes=25
    )
    means = grid.mixture.means
    assert means.shape == (25, 2) and float(means.min()) == -4.0 and float(means.max()) == 4.0
    assert sorted(set(means[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]

    custom = GaussianMixture2dDataModule(
        batch_size=8,
        layout="custom",
        num_components=2,
        num_classes=2,
        weights=[1, 3],
        means=[[0, 0], [5, 5]],
        stds=[1.0, 2.0],
    )
    torch.testing.assert_close(custom.mixture.weights, torch.tensor([0.25, 0.75]).double())
    torch.testing.assert_close(custom.mixture.stds[1], torch.tensor([2.0, 2.0]).double())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layout": "grid", "num_components": 8}, "needs a square data.num_components"),
        ({"layout": "spiral"}, "data.layout must be one of"),
        ({"means": [[0, 0]] * 8}, "only used with data.layout=custom"),
        ({"layout": "custom"}, "needs data.means"),
        ({"layout": "custom", "means": [[0, 0]], "stds": [1]}, "set data.num_components=1"),
        ({"num_components": 6}, "data.num_classes must be 6"),
        ({"dim": 3}, "data.dim must be 2"),
        ({"std": 0}, "data.std must be a positive number"),
    ],
)
def test_gmm2d_errors(kwargs, message):
    with pytest.raises(DataConfigError, match=message):
        GaussianMixture2dDataModule(batch_size=8, **kwargs)


@pytest.mark.parametrize("cls", [MoonsDataModule, SwissRollDataModule])
def test_sklearn_toys(cls):
    dm = cls(batch_size=100, num_train=3000, num_val=500, num_test=500)
    x, y = first_batch(dm)
    check_batch(dm, x, y, 100)
    assert dm.data_shape == (2,) and not hasattr(dm, "mixture")
    train = dm.reference_samples("train")
    torch.testing.assert_close(train.mean(0), torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(train.std(0), torch.ones(2), atol=1e-4, rtol=0)
    again = cls(batch_size=100, num_train=3000, num_val=500, num_test=500)
    assert torch.equal(dm.reference_samples("test"), again.reference_samples("test"))
    check_disjoint(dm)
    with pytest.raises(DataConfigError, match=r"data.dim must be 2"):
        cls(batch_size=8, dim=3)
    with pytest.raises(DataConfigError, match=r"data.num_classes must be"):
        cls(batch_size=8, num_classes=7)


def test_moons_labels():
    dm = MoonsDataModule(batch_size=500, num_train=1000, num_val=10, num_test=10)
    assert dm.num_classes == 2
    _, y = first_batch(dm)
    assert set(y.tolist()) == {0, 1}


# ------------------------------------------------------------------------------ image folder
def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def rgb(h: int, w: int, value: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(value, dtype=np.uint8), (h, w, 3)).copy()


@pytest.fixture()
def class_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for i in range(6):
        write_png(root / "cats" / f"c{i}.png", rgb(20, 30, (255, 0, 0)))  # 30 wide, 20 high
        write_png(root / "dogs" / "sub" / f"d{i}.PNG", rgb(40, 24, (0, 0, 255)))
    return root


def test_image_folder_labels_resize_channels(class_folder):
    dm = ImageFolderDataModule(
        class_folder,
        batch_size=4,
        image_size=16,
        num_classes=None,
        val_fraction=1 / 6,
        test_fraction=1 / 6,
    )
    assert dm.num_classes == 2 and dm.data_shape == (3, 16, 16)
    assert dm.classes == ["cats", "dogs"]
    assert {s: dm.split_size(s) for s in SPLITS} == {"train": 8, "val": 2, "test": 2}
    check_disjoint(dm)
    x, y = first_batch(dm)
    check_batch(dm, x, y, 4)
    ref = dm.reference_samples("train")
    labels = dm.split_dataset("train").y
    assert torch.bincount(labels).tolist() == [4, 4]  # stratified
    red = torch.tensor([1.0, -1.0, -1.0])[:, None, None]
    blue = torch.tensor([-1.0, -1.0, 1.0])[:, None, None]
    assert torch.allclose(ref[labels == 0], red.expand(3, 16, 16), atol=1e-6)
    assert torch.allclose(ref[labels == 1], blue.expand(3, 16, 16), atol=1e-6)
    # grayscale conversion, labels ignored by default (num_classes 0)
    gray = ImageFolderDataModule(class_folder, batch_size=4, image_size=8, channels=1)
    assert gray.num_classes == 0 and gray.data_shape == (1, 8, 8)
    xg, yg = first_batch(gray)
    check_batch(gray, xg, yg, 4)
    # on-the-fly decoding gives the same data
    lazy = ImageFolderDataModule(
        class_folder,
        batch_size=4,
        image_size=16,
        num_classes=2,
        in_memory=False,
        val_fraction=1 / 6,
        test_fraction=1 / 6,
    )
    assert torch.equal(lazy.reference_samples("test"), dm.reference_samples("test"))


def test_image_folder_center_crop_and_native_size(tmp_path):
    root = tmp_path / "wide"
    image = np.zeros((20, 60), dtype=np.uint8)
    image[:, 20:40] = 255  # a white centre square between black side bands
    for i in range(4):
        write_png(root / f"{i}.png", image)
    dm = ImageFolderDataModule(
        root, batch_size=2, image_size=16, channels=1, val_fraction=0.25, test_fraction=0.25
    )
    x = dm.reference_samples("train")
    assert x.shape == (2, 1, 16, 16)
    # shorter side 20 -> 16 (width 48), centre crop 16 keeps the white square only
    assert float(x[..., 2:-2].min()) > 0.9
    native = ImageFolderDataModule(
        root, batch_size=2, image_size=None, channels=1, val_fraction=0.25, test_fraction=0.25
    )
    assert native.data_shape == (1, 20, 60)
    xn = native.reference_samples("test")
    assert xn.shape == (1, 1, 20, 60)
    assert float(xn[0, 0, 0, 0]) == -1.0 and float(xn[0, 0, 0, 30]) == 1.0


def test_image_folder_flip(tmp_path):
    root = tmp_path / "arrow"
    image = np.zeros((8, 8), dtype=np.uint8)
    image[:, :2] = 255  # bright on the left: flipping moves it to the right
    for i in range(3):
        write_png(root / f"{i}.png", image)
    dm = ImageFolderDataModule(
        root,
        batch_size=64,
        image_size=8,
        channels=1,
        random_flip=True,
        repeat=30,
        val_fraction=0,
        test_fraction=0,
    )
    torch.manual_seed(0)
    x, _ = first_batch(dm)
    left = x[:, 0, :, 0] > 0
    right = x[:, 0, :, -1] > 0
    assert left.all(1).sum() > 10 and right.all(1).sum() > 10
    assert torch.equal(left.all(1), ~right.all(1))
    # reference data are never flipped
    assert (dm.reference_samples("train")[:, 0, :, 0] == 1).all()
    no_flip = ImageFolderDataModule(
        root, batch_size=64, image_size=8, channels=1, repeat=30, val_fraction=0, test_fraction=0
    )
    assert (first_batch(no_flip)[0][:, 0, :, 0] == 1).all()


def test_image_folder_errors(tmp_path, class_folder):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError, match=rf"image folder {missing} does not exist"):
        ImageFolderDataModule(missing, batch_size=4).setup()
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetNotFoundError, match=rf"no images found in {empty}"):
        ImageFolderDataModule(empty, batch_size=4).setup()
    # garbage bytes with an image extension
    bad = tmp_path / "bad"
    write_png(bad / "ok.png", rgb(8, 8, (1, 2, 3)))
    (bad / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(ImageReadError, match=r"cannot read image file .*broken.png"):
        ImageFolderDataModule(bad, batch_size=4).setup()
    # a truncated file: the header reads, decoding fails
    trunc = tmp_path / "trunc"
    write_png(trunc / "ok.png", rgb(8, 8, (1, 2, 3)))
    write_png(trunc / "cut.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    data = (trunc / "cut.png").read_bytes()
    (trunc / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut.png"):
        ImageFolderDataModule(trunc, batch_size=4).setup()
    # mixed sizes without image_size
    with pytest.raises(DataConfigError, match=r"different sizes .* set data.image_size"):
        ImageFolderDataModule(class_folder, batch_size=4, image_size=None).setup()
    # wrong class count
    with pytest.raises(DataConfigError, match=r"data.num_classes=3 but .* 2 class subfolders"):
        ImageFolderDataModule(class_folder, batch_size=4, num_classes=3).setup()
    with pytest.raises(DataConfigError, match=r"data.channels must be one of"):
        ImageFolderDataModule(class_folder, batch_size=4, channels=4)
    # every error is a DataError
    assert issubclass(ImageReadError, DataError) and issubclass(DatasetNotFoundError, OSError)


# ------------------------------------------------------------------------ torchvision sets
def write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian sizes, bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fake_mnist(raw: Path, n_train: int = 60, n_test: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    data = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": np.arange(n_train) % 10,
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": np.arange(n_test) % 10,
    }
    write_idx(raw / "train-images-idx3-ubyte", data["train_x"])
    write_idx(raw / "train-labels-idx1-ubyte", data["train_y"])
    write_idx(raw / "t10k-images-idx3-ubyte", data["test_x"])
    write_idx(raw / "t10k-labels-idx1-ubyte", data["test_y"])
    return data


@pytest.mark.parametrize(
    ("cls", "folder"), [(MNISTDataModule, "MNIST"), (FashionMNISTDataModule, "FashionMNIST")]
)
def test_mnist_fake_on_disk(tmp_path, cls, folder):
    data = write_fake_mnist(tmp_path / folder / "raw")
    dm = cls(root=tmp_path, batch_size=8, val_size=10)
    assert dm.data_shape == (1, 32, 32) and dm.num_classes == 10
    x, y = first_batch(dm)
    check_batch(dm, x, y, 8)
    assert {s: dm.split_size(s) for s in SPLITS} == {"train": 50, "val": 10, "test": 20}
    check_disjoint_train_val = set(dm.split_index["train"]) & set(dm.split_index["val"])
    assert not check_disjoint_train_val
    test = dm.reference_samples("test")
    expected = torch.as_tensor(data["test_x"]).float() / 127.5 - 1
    # padded by 2 black (-1) pixels on each side, pixels unchanged inside
    torch.testing.assert_close(test[:, 0, 2:30, 2:30], expected)
    assert (test[:, :, :2] == -1).all() and (test[:, :, :, -2:] == -1).all()
    y_test = torch.cat([y for _, y in dm.test_dataloader()])
    assert y_test.tolist() == data["test_y"].tolist()
    val_rows = dm.reference_samples("val")[:, 0, 2:30, 2:30]
    torch.testing.assert_close(
        val_rows, torch.as_tensor(data["train_x"][dm.split_index["val"]]).float() / 127.5 - 1
    )
    again = cls(root=tmp_path, batch_size=8, val_size=10)
    assert torch.equal(again.reference_samples("val"), dm.reference_samples("val"))
    resized = cls(root=tmp_path, batch_size=8, val_size=10, image_size=16, resize_mode="bilinear")
    assert resized.reference_samples("test").shape == (20, 1, 16, 16)
    with pytest.raises(DataConfigError, match=r"must be smaller than"):
        cls(root=tmp_path, batch_size=8, val_size=60).setup()
    with pytest.raises(DataConfigError, match=r"resize_mode=pad cannot shrink"):
        cls(root=tmp_path, batch_size=8, image_size=16)
    with pytest.raises(DataConfigError, match=r"data.channels must be 1"):
        cls(root=tmp_path, batch_size=8, channels=3)


def write_fake_cifar(folder: Path, per_batch: int = 6, n_test: int = 10) -> dict[str, np.ndarray]:
    """CIFAR-10's python format: pickled dicts with 'data' (N, 3072) uint8 rows (R, G, B
    planes of 32x32) and 'labels', plus batches.meta with 'label_names'."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": images.reshape(n, -1), "labels": labels}, f)
        out[name] = images
        out[name + "_labels"] = np.asarray(labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return out


def test_cifar10_fake_on_disk(tmp_path, monkeypatch):
    data = write_fake_cifar(tmp_path / "cifar-10-batches-py")
    # the fake files cannot match torchvision's md5 checksums: the check names them corrupt
    with pytest.raises(DatasetNotFoundError, match=r"could not be read .* corrupt"):
        CIFAR10DataModule(root=tmp_path, batch_size=4, val_size=6).setup()
    import torchvision.datasets.cifar

    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path)
    )
    dm = CIFAR10DataModule(root=tmp_path, batch_size=4, val_size=6)
    assert dm.random_flip and dm.data_shape == (3, 32, 32) and dm.num_classes == 10
    x, y = first_batch(dm)
    check_batch(dm, x, y, 4)
    assert {s: dm.split_size(s) for s in SPLITS} == {"train": 24, "val": 6, "test": 10}
    test = dm.reference_samples("test")
    torch.testing.assert_close(test, torch.as_tensor(data["test_batch"]).float() / 127.5 - 1)
    y_test = torch.cat([y for _, y in dm.test_dataloader()])
    assert y_test.tolist() == data["test_batch_labels"].tolist()
    train_all = np.concatenate([data[f"data_batch_{i}"] for i in range(1, 6)])
    torch.testing.assert_close(
        dm.reference_samples("train"),
        torch.as_tensor(train_all[dm.split_index["train"]]).float() / 127.5 - 1,
    )
    assert not set(dm.split_index["train"]) & set(dm.split_index["val"])
    with pytest.raises(DataConfigError, match=r"data.channels must be 3"):
        CIFAR10DataModule(root=tmp_path, batch_size=4, channels=1)


@pytest.mark.parametrize(
    ("cls", "where", "files"),
    [
        (MNISTDataModule, "MNIST/raw", "train-images-idx3-ubyte"),
        (FashionMNISTDataModule, "FashionMNIST/raw", "t10k-labels-idx1-ubyte"),
        (CIFAR10DataModule, "cifar-10-batches-py", "data_batch_1"),
    ],
)
def test_torchvision_missing_offline(tmp_path, cls, where, files):
    dm = cls(root=tmp_path, batch_size=4)  # constructing touches no file
    with pytest.raises(DatasetNotFoundError) as info:
        dm.setup()
    message = str(info.value)
    assert "not found: missing" in message and files in message
    assert str(tmp_path / where) in message
    assert "data.download=true" in message and "http" in message
    assert isinstance(info.value, FileNotFoundError)
    assert "\n" not in message


def test_lightning_fit_uses_the_datamodule():
    import lightning.pytorch as pl

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch, _):
            x, y = batch
            assert x.shape[1:] == (1,) and y.dtype == torch.long
            return self.layer(x).pow(2).mean()

        def validation_step(self, batch, _):
            return None

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = GaussianMixtureDataModule(batch_size=32, num_train=256, num_val=64, num_test=64)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), datamodule=dm)
    assert trainer.global_step == 3


# ---------------------------------------------------------------------------------- configs
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def compose(name: str, tmp_path: Path, overrides: list[str] | None = None):
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}})
    cfg.data = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    return cfg


# The exported data modules that are bases for others, not datasets.
BASE_DATA_MODULES = {
    "DiffusionDataModule",
    "ImageDataModule",
    "VectorDataModule",
    "TorchvisionDataModule",
}
# The data modules that read files (tested offline on files the tests make, elsewhere here).
READS_FILES = (TorchvisionDataModule, ImageFolderDataModule)


def test_every_dataset_has_a_config():
    import difforge.data

    datasets = {
        name
        for name in difforge.data.__all__
        if name.endswith("DataModule") and name not in BASE_DATA_MODULES
    }
    targets = {str(compose(name, Path("unused")).data._target_).split(".")[-1] for name in CONFIGS}
    assert datasets <= targets, f"no configs/data/*.yaml for {sorted(datasets - targets)}"


@pytest.mark.parametrize("name", CONFIGS)
def test_config_instantiates(name, tmp_path):
    cfg = compose(name, tmp_path)
    dm = instantiate(cfg.data)
    assert isinstance(dm, DiffusionDataModule)
    assert dm.batch_size == cfg.data.batch_size and dm.num_classes == cfg.data.num_classes
    for key in ("_target_", "batch_size", "num_workers", "pin_memory", "seed", "num_classes"):
        assert key in cfg.data
    if dm.kind == "image":
        assert dm.data_shape == (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    else:
        assert dm.data_shape == (cfg.data.dim,)
    if "root" in cfg.data:
        assert str(dm.root).startswith(str(tmp_path))
    if not isinstance(dm, READS_FILES):
        x, y = first_batch(dm)
        check_batch(dm, x, y, cfg.data.batch_size)


def test_config_overrides(tmp_path):
    cfg = compose("gmm1d", tmp_path, ["data.means=[-4,0,4]", "data.weights=[1,1,2]"])
    dm = instantiate(cfg.data)
    torch.testing.assert_close(dm.mixture.means[:, 0], torch.tensor([-4.0, 0.0, 4.0]).double())
    torch.testing.assert_close(dm.mixture.weights, torch.tensor([0.25, 0.25, 0.5]).double())
    cfg = compose("gmm2d", tmp_path, ["data.layout=grid", "data.num_components=9"])
    assert cfg.data.num_classes == 9  # follows num_components
    assert instantiate(cfg.data).mixture.num_components == 9
    # Hydra wraps the error; its message still says what to change
    with pytest.raises(InstantiationException, match=r"digits are grayscale"):
        instantiate(compose("digits", tmp_path, ["data.channels=3"]).data)
    dm = instantiate(compose("digits", tmp_path, ["data.image_size=16"]).data)
    assert dm.data_shape == (1, 16, 16)


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("gmm1d", []),
        ("gmm1d", ["data.means=[-4,0,4]", "data.weights=[1,1,2]", "data.num_classes=0"]),
        ("gmm2d", []),
        ("gmm2d", ["data.layout=grid", "data.num_components=9", "data.std=0.2"]),
        ("gmm_grid25", ["data.dim=80", "data.mixture_seed=3", "data.num_classes=0"]),
        ("moons", []),
        ("digits", []),
    ],
)
def test_known_mixture_is_the_data_modules_law(name, overrides, tmp_path):
    """The exact model reads the law from the data options without the data module
    (``KNOWN_LAWS``): the same mixture as ``datamodule.mixture``, None where there is none."""
    cfg = compose(name, tmp_path, overrides)
    law = known_mixture(cfg.data)
    dm = instantiate(cfg.data)
    if not hasattr(dm, "mixture"):
        assert law is None
        return
    assert law is not None
    for field in ("weights", "means", "stds"):
        torch.testing.assert_close(getattr(law, field), getattr(dm.mixture, field), rtol=0, atol=0)


@pytest.mark.parametrize(
    "name,overrides,message",
    [
        ("gmm2d", ["data.layout=grid", "data.num_components=8"], "square data.num_components"),
        ("gmm1d", ["data.dim=2"], "set data.dim=1"),
        ("gmm_grid25", ["data.dim=9"], "data.dim must be even"),
        ("gmm_grid25", ["data.num_classes=5"], "data.num_classes must be 25"),
    ],
)
def test_known_mixture_refuses_what_the_data_module_refuses(name, overrides, message, tmp_path):
    cfg = compose(name, tmp_path, overrides)
    with pytest.raises(DataConfigError, match=message):
        known_mixture(cfg.data)
    with pytest.raises(InstantiationException, match=message):
        instantiate(cfg.data)
