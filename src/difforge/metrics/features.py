"""Feature networks for FID/KID: frozen modules mapping images ``(N, C, H, W)`` in ``[-1, 1]`` to
features ``(N, num_features)``.

* :func:`digits_classifier`: a small CNN trained on the train split of scikit-learn's 8x8 digits
  (``scripts/train_digits_classifier.py``; weights shipped in ``difforge/assets/``, 290 KB).
  Features are its penultimate layer (64-d, pre-activation, scaled to unit mean square on the
  train split); ``logits``/``predict`` give the class, for class coverage. Its held-out test
  accuracy, 0.9944 (179/180), is stored with the weights (``test_accuracy``).
* :func:`load_classifier`: the same architecture trained on another dataset (MNIST,
  Fashion-MNIST: ``${paths.data_dir}/classifiers/<name>.safetensors``, written by the same script
  when the data are present).
* :func:`inception`: the standard FID Inception-v3 (TF 2015-12-05 weights, 2048-d pool features)
  through torch-fidelity's ``FeatureExtractorInceptionV3``.
* :func:`feature_network_for`: the network that fits a dataset.

Every network has ``num_features`` (torchmetrics then skips its dummy forward), ``name`` and
``cache_id`` (name plus a hash of the weights: part of the reference-statistics cache key), and is
frozen (``requires_grad_(False)``, ``eval()``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difforge.errors import DifforgeError

log = logging.getLogger("difforge")

CLASSIFIER_FORMAT = "difforge-classifier-v1"
CLASSIFIER_DATASETS = ("digits", "mnist", "fashion_mnist")
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_ENV = "DIFFORGE_INCEPTION_WEIGHTS"


def _weights_hash(module: nn.Module, *names: str) -> str:
    """Short hash of some (or all) of a module's tensors: identifies the weights in cache keys."""
    digest = hashlib.sha256()
    state = module.state_dict()
    for key in names or sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:10]


def _to_unit_range(x: Tensor) -> Tensor:
    return x.float().clamp(-1.0, 1.0)


# ------------------------------------------------------------------------------ the classifier
class SmallClassifier(nn.Module):
    """A small CNN classifier whose penultimate layer serves as FID features.

    ``conv3x3(channels -> width)``, then ``log2(image_size) - 1`` blocks of
    ``conv3x3 -> ReLU -> maxpool2`` (width doubling once, to ``2 width``), adaptive average pooling
    to 2x2, ``Linear(8 width -> num_features)`` (the penultimate layer), ReLU and
    ``Linear(num_features -> num_classes)``. The features are the penultimate layer's
    pre-activation output times ``feature_scale``, a constant set after training so that the mean
    squared feature is 1 on the train split (KID's cubic kernel then sees values of order 1, as
    with Inception; ReLU outputs would leave dead, constant dimensions). Inputs of another size are resized (bilinear,
    antialiased) to ``image_size``; RGB inputs of a grayscale classifier are averaged to one
    channel, grayscale inputs of an RGB one repeated.
    """

    feature_scale: Tensor  # a buffer, registered in __init__

    def __init__(
        self,
        channels: int = 1,
        image_size: int = 8,
        num_classes: int = 10,
        width: int = 32,
        num_features: int = 64,
        dataset: str = "digits",
        test_accuracy: float | None = None,
    ) -> None:
        super().__init__()
        if image_size < 4:
            raise ValueError(f"SmallClassifier needs image_size >= 4, got {image_size}")
        self.channels, self.image_size, self.num_classes = channels, image_size, num_classes
        self.width, self.num_features = width, num_features
        self.dataset, self.test_accuracy = dataset, test_accuracy
        self.name = f"{dataset}_classifier"
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        current = width
        for _ in range(max(1, int(math.log2(image_size)) - 1)):
            layers += [nn.Conv2d(current, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            current = 2 * width
        layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.embed = nn.Linear(4 * current, num_features)
        self.head = nn.Linear(num_features, num_classes)
        self.register_buffer("feature_scale", torch.ones(()))
        self.cache_id = self.name  # set to name + weights hash by ``freeze``

    def config(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "width": self.width,
            "num_features": self.num_features,
            "dataset": self.dataset,
        }

    def prepare(self, x: Tensor) -> Tensor:
        """Images in ``[-1, 1]`` of any size/channels -> this classifier's input."""
        if x.ndim != 4:
            raise ValueError(f"{self.name} expects images (N, C, H, W), got shape {tuple(x.shape)}")
        x = _to_unit_range(x)
        if x.shape[1] != self.channels:
            if self.channels == 1:
                x = x.mean(dim=1, keepdim=True)
            elif x.shape[1] == 1:
                x = x.expand(-1, self.channels, -1, -1)
            else:
                raise ValueError(f"{self.name} takes {self.channels} channels, got {x.shape[1]}")
        if x.shape[-2:] != (self.image_size, self.image_size):
            shrink = self.image_size < max(x.shape[-2:])
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=shrink,
            )
        return x

    def penultimate(self, x: Tensor) -> Tensor:
        """The penultimate layer's pre-activation output ``(N, num_features)`` (unscaled)."""
        return self.embed(self.body(self.prepare(x)))

    def features(self, x: Tensor) -> Tensor:
        """FID features: ``penultimate(x) * feature_scale``, ``(N, num_features)``."""
        return self.penultimate(x) * self.feature_scale

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)

    def logits(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.penultimate(x)))

    def predict(self, x: Tensor) -> Tensor:
        """Predicted class ``(N,)``."""
        return self.logits(x).argmax(dim=-1)

    def freeze(self) -> SmallClassifier:
        self.requires_grad_(False)
        self.eval()
        self.cache_id = f"{self.name}-{_weights_hash(self)}"
        return self

    def save(self, path: str | os.PathLike, **metadata: Any) -> Path:
        """Weights as safetensors, with the architecture (and ``metadata``) in the header."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"format": CLASSIFIER_FORMAT, "config": json.dumps(self.config())}
        if self.test_accuracy is not None:
            header["test_accuracy"] = repr(float(self.test_accuracy))
        header.update({key: json.dumps(value) for key, value in metadata.items()})
        state = {key: value.detach().cpu().contiguous() for key, value in self.state_dict().items()}
        save_file(state, str(path), metadata=header)
        return path


def load_classifier(path: str | os.PathLike) -> SmallClassifier:
    """A :class:`SmallClassifier` from a safetensors file written by ``SmallClassifier.save``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DifforgeError(
            f"classifier weights {path} do not exist (train them with "
            f"python scripts/train_digits_classifier.py)"
        )
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    if header.get("format") != CLASSIFIER_FORMAT:
        raise DifforgeError(f"{path} is not a difforge classifier ({CLASSIFIER_FORMAT}) file")
    config = json.loads(header["config"])
    accuracy = header.get("test_accuracy")
    model = SmallClassifier(**config, test_accuracy=None if accuracy is None else float(accuracy))
    model.load_state_dict(load_file(str(path)))
    return model.freeze()


def digits_classifier_path() -> Path:
    return Path(str(resources.files("difforge") / "assets" / "digits_classifier.safetensors"))


def digits_classifier(path: str | os.PathLike | None = None) -> SmallClassifier:
    """The shipped digits classifier (or the one at ``path``): features ``(N, 64)``."""
    return load_classifier(path or digits_classifier_path())


# -------------------------------------------------------------------------------- inception
def _inception_hub_file() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME


def _missing_inception_message(reason: str) -> str:
    return (
        f"the FID Inception-v3 weights are not available ({reason}): download {INCEPTION_URL} "
        f"(pytorch-fid's pt_inception-2015-12-05-6726825d.pth has the same layout) and pass "
        f"metrics.inception_weights=/path/to/{INCEPTION_FILENAME} (or set "
        f"{INCEPTION_WEIGHTS_ENV}, or put the file in {_inception_hub_file().parent})"
    )


def resolve_inception_weights(weights: str | os.PathLike | None = None) -> str | None:
    """The local Inception weights file to use: ``weights``, else ``$DIFFORGE_INCEPTION_WEIGHTS``,
    else torch hub's cached download; None when there is none (torch-fidelity downloads)."""
    if weights is None:
        weights = os.environ.get(INCEPTION_WEIGHTS_ENV) or None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise DifforgeError(
                f"metrics.inception_weights={weights}: no such file; download {INCEPTION_URL}"
            )
        return str(path)
    cached = _inception_hub_file()
    return str(cached) if cached.is_file() else None


class InceptionFeatures(nn.Module):
    """FID's Inception-v3 (torch-fidelity ``FeatureExtractorInceptionV3``, 2048-d pool features).

    Images in ``[-1, 1]`` are quantized to uint8 ``[0, 255]`` as torch-fidelity expects (it then
    resizes to 299x299 with TF1-compatible bilinear interpolation); grayscale is repeated to 3
    channels.
    """

    num_features = 2048
    name = "inception"

    def __init__(self, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = resolve_inception_weights(weights)
        if path is not None:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:
                raise DifforgeError(
                    f"cannot read Inception weights {path}: {type(error).__name__}: "
                    f"{str(error).splitlines()[0] if str(error) else ''}"
                ) from None
            if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state:
                raise DifforgeError(
                    f"{path} is not torch-fidelity's Inception-v3 state dict; download "
                    f"{INCEPTION_URL}"
                )
        try:
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat",
                ["2048", "logits_unbiased"],
                feature_extractor_weights_path=path,
            )
        except DifforgeError:
            raise
        except RuntimeError as error:  # a state dict of another architecture
            if path is None:
                raise DifforgeError(_missing_inception_message(_first_line(error))) from None
            raise DifforgeError(
                f"{path} does not fit torch-fidelity's Inception-v3: {_first_line(error)}"
            ) from None
        except Exception as error:  # offline: URLError, HTTPError, socket errors...
            raise DifforgeError(_missing_inception_message(_first_line(error))) from None
        self.source = path or INCEPTION_URL
        self.requires_grad_(False)
        self.eval()
        self.cache_id = (
            f"inception2048-{_weights_hash(self.net, 'Conv2d_1a_3x3.conv.weight', 'fc.bias')}"
        )

    def train(self, mode: bool = True) -> InceptionFeatures:
        return super().train(False)  # always eval (batch norm statistics are fixed)

    def pool_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The 2048-d pool features ``(N, 2048)`` and the 1008-way logits without bias
        ``(N, 1008)`` (the Inception Score's, as in Salimans et al. 2016's code)."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"inception expects images (N, 1 or 3, H, W), got {tuple(x.shape)}")
        x = ((_to_unit_range(x) + 1.0) * 127.5).round().to(torch.uint8)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        pool, logits = self.net(x)
        return pool.reshape(x.shape[0], -1), logits

    def forward(self, x: Tensor) -> Tensor:
        return self.pool_and_logits(x)[0]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def inception(weights: str | os.PathLike | None = None) -> InceptionFeatures:
    """FID's Inception-v3: from ``weights`` (a local ``.pth`` file), else from
    ``$DIFFORGE_INCEPTION_WEIGHTS``, torch hub's cache, or torch-fidelity's download; a one-line
    :class:`DifforgeError` saying where to get the file when none works."""
    return InceptionFeatures(weights)


# --------------------------------------------------------------------------------- selection
def data_name(data: Any) -> str:
    """The data config name (``digits``, ``mnist``, ...) of a DataModule or a name."""
    if isinstance(data, str):
        return data
    return getattr(data, "config_name", type(data).__name__)


def classifier_path_for(data: Any, classifier_dir: str | os.PathLike | None = None) -> Path | None:
    """Where the classifier of ``data`` lives (it may not exist), None for other data.

    digits: the shipped asset. mnist/fashion_mnist: ``<classifier_dir>/<name>.safetensors``, with
    ``classifier_dir`` defaulting to ``<datamodule.root>/classifiers`` (``${paths.data_dir}``).
    """
    name = data_name(data)
    if name == "digits":
        return digits_classifier_path()
    if name not in CLASSIFIER_DATASETS:
        return None
    if classifier_dir is None:
        root = getattr(data, "root", None)
        if root is None:
            return None
        classifier_dir = Path(root) / "classifiers"
    return Path(classifier_dir).expanduser() / f"{name}.safetensors"


def classifier_for(
    data: Any, classifier_dir: str | os.PathLike | None = None
) -> SmallClassifier | None:
    """The trained classifier of ``data`` when one exists (digits always), else None."""
    path = classifier_path_for(data, classifier_dir)
    if path is None or not path.is_file():
        return None
    model = load_classifier(path)
    if not isinstance(data, str) and getattr(data, "channels", model.channels) != model.channels:
        return None
    return model


def feature_network_for(
    data: Any,
    *,
    inception_weights: str | os.PathLike | None = None,
    classifier_dir: str | os.PathLike | None = None,
) -> nn.Module:
    """The FID feature network that fits ``data`` (a DataModule or a data name): the digits
    classifier for digits, the dataset's classifier for mnist/fashion_mnist when trained
    (else Inception), Inception for cifar10, image folders and anything else."""
    name = data_name(data)
    classifier = classifier_for(data, classifier_dir)
    if classifier is not None:
        return classifier
    if name in CLASSIFIER_DATASETS:
        log.warning(
            "no %s classifier at %s: using Inception features (train one with "
            "python scripts/train_digits_classifier.py --data %s)",
            name,
            classifier_path_for(data, classifier_dir),
            name,
        )
    return inception(inception_weights)
