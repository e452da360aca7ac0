"""Train the small CNN classifiers used as FID features and for class coverage.

    python scripts/train_digits_classifier.py                  # digits -> src/difforge/assets/
    python scripts/train_digits_classifier.py --data mnist     # -> data/classifiers/mnist.safetensors
    python scripts/train_digits_classifier.py --data all       # digits + mnist/fashion_mnist if present

Trained on the train split of difforge's own DataModule (same split seed as the default data
config), so the val/test splits are never seen; the test accuracy is printed and stored in the
weights file's header. Deterministic (seeded, deterministic algorithms; digits on one thread is
bit-reproducible): digits takes about 10 s on a CPU; MNIST-like data (32 px, 55,000 images) take
minutes per epoch on a CPU.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from difforge.metrics.features import CLASSIFIER_DATASETS, SmallClassifier, digits_classifier_path

REPO = Path(__file__).resolve().parents[1]
# Per dataset: epochs, batch size, learning rate, max shift (pixels) of the augmentation.
RECIPES = {
    "digits": {"epochs": 30, "batch_size": 64, "lr": 2e-3, "shift": 1},
    "mnist": {"epochs": 4, "batch_size": 128, "lr": 2e-3, "shift": 2},
    "fashion_mnist": {"epochs": 8, "batch_size": 128, "lr": 2e-3, "shift": 2},
}


def build_datamodule(name: str, data_dir: Path, seed: int = 0):
    """The labelled DataModule of ``name`` at its default size (digits 8, MNIST-likes 32, pad)."""
    if name == "digits":
        from difforge.data.digits import DigitsDataModule

        return DigitsDataModule(seed=seed, image_size=8, num_classes=10)
    from difforge.data.torchvision_sets import FashionMNISTDataModule, MNISTDataModule

    cls = MNISTDataModule if name == "mnist" else FashionMNISTDataModule
    return cls(root=data_dir, seed=seed, num_classes=10)


def split_tensors(datamodule, split: str) -> tuple[Tensor, Tensor]:
    dataset = datamodule.split_dataset(split)
    return datamodule.reference_samples(split), dataset.y.clone()


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by a random integer offset in ``[-max_shift, max_shift]``, filling
    with the background value -1."""
    if max_shift == 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(x), 2), generator=generator)
    out = torch.empty_like(x)
    for dy in range(2 * max_shift + 1):
        for dx in range(2 * max_shift + 1):
            index = ((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).nonzero().flatten()
            out[index] = padded[index, :, dy : dy + h, dx : dx + w]
    return out


@torch.no_grad()
def accuracy(model: SmallClassifier, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
    model.eval()
    correct = sum(
        int((model.predict(xb) == yb).sum())
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True)
    )
    return correct / len(y)


def train_classifier(
    name: str,
    datamodule,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    shift: int,
    seed: int = 0,
    width: int = 32,
    num_features: int = 64,
    verbose: bool = True,
) -> tuple[SmallClassifier, dict[str, float]]:
    """Train on the train split (AdamW, cosine decay, random shifts); accuracy on val and test."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = split_tensors(datamodule, "train")
    channels, size = x_train.shape[1], x_train.shape[-1]
    model = SmallClassifier(channels, size, 10, width, num_features, dataset=name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    )
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for index in order.split(batch_size):
            xb = random_shift(x_train[index], shift, generator)
            loss = F.cross_entropy(model.logits(xb), y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if verbose and (epoch + 1) % max(1, epochs // 5) == 0:
            print(f"  {name} epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}", flush=True)
    x_val, y_val = split_tensors(datamodule, "val")
    x_test, y_test = split_tensors(datamodule, "test")
    scores = {
        "train_accuracy": accuracy(model, x_train, y_train),
        "val_accuracy": accuracy(model, x_val, y_val),
        "test_accuracy": accuracy(model, x_test, y_test),
        "seconds": time.perf_counter() - start,
    }
    with torch.no_grad():  # unit mean squared feature on the train split
        pre = torch.cat([model.penultimate(xb) for xb in x_train.split(1024)])
        model.feature_scale.fill_(float(pre.square().mean().rsqrt()))
    model.test_accuracy = scores["test_accuracy"]
    return model.freeze(), scores


def run(name: str, data_dir: Path, out: Path | None, seed: int, epochs: int | None) -> Path | None:
    from difforge.data.options import DatasetNotFoundError

    datamodule = build_datamodule(name, data_dir, seed=0)
    try:
        datamodule.setup()
    except DatasetNotFoundError as error:
        print(f"skipping {name}: {str(error).splitlines()[0]}")
        return None
    recipe = dict(RECIPES[name])
    if epochs is not None:
        recipe["epochs"] = epochs
    model, scores = train_classifier(name, datamodule, seed=seed, **recipe)
    if out is None:
        out = (
            digits_classifier_path()
            if name == "digits"
            else data_dir / "classifiers" / f"{name}.safetensors"
        )
    model.save(
        out,
        val_accuracy=round(scores["val_accuracy"], 6),
        train_accuracy=round(scores["train_accuracy"], 6),
        recipe=recipe,
        seed=seed,
        split_seed=0,
    )
    print(
        f"{name}: train {scores['train_accuracy']:.4f}, val {scores['val_accuracy']:.4f}, "
        f"test {scores['test_accuracy']:.4f} accuracy ({scores['seconds']:.1f} s) -> {out}"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="digits", choices=[*CLASSIFIER_DATASETS, "all"])
    parser.add_argument("--data-dir", type=Path, default=REPO / "data", help="${paths.data_dir}")
    parser.add_argument("--out", type=Path, default=None, help="output file (one dataset only)")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: 1 for digits alone, bit-reproducible; else all cores)",
    )
    args = parser.parse_args(argv)
    names = list(CLASSIFIER_DATASETS) if args.data == "all" else [args.data]
    if args.threads is not None or names == ["digits"]:
        torch.set_num_threads(args.threads or 1)
    torch.use_deterministic_algorithms(True)
    if args.out is not None and len(names) > 1:
        parser.error("--out needs a single --data")
    for name in names:
        run(name, args.data_dir, args.out, args.seed, args.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
