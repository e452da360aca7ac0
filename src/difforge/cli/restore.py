"""``python src/restore.py``: measure signals with an operator and draw from the posterior of a
diffusion prior (issue #22); writes ``restore.npz``, ``restore.png`` and ``metrics.json``.

The model loads as ``src/sample.py`` loads it (``ckpt_path=``, ``pretrained=``, or
``model=gmm_oracle data=...``, through :mod:`difforge.api`), and restores through
:meth:`difforge.api.Model.restore`. The signals are the first ``num_inputs`` of the test split
(for data with a known Gaussian-mixture law, draws of that law seeded with ``seed``) or of the
``.npy`` file ``input=``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from difforge.api import Model
from difforge.cli.common import output_dir
from difforge.cli.sample import load_model
from difforge.devices import resolve_device
from difforge.diffusion.gaussian_mixture import GaussianMixture
from difforge.errors import DifforgeError
from difforge.plotting import save_image_grid, save_vector_plot
from difforge.posterior.operators.base import DenseOperator, LinearOperator
from difforge.posterior.operators.registry import operator_from_config

log = logging.getLogger("difforge")

# At most this many inputs and draws per input in restore.png.
PICTURE_INPUTS, PICTURE_DRAWS = 8, 8


def load_input(path: str, num_inputs: int, data_shape: tuple[int, ...]) -> Tensor:
    """The first ``num_inputs`` clean signals of the ``.npy`` file ``path``: float
    ``(N, *data_shape)`` in the data's space (images in [-1, 1])."""
    file = Path(path).expanduser()
    expected = f"(N, {', '.join(map(str, data_shape))})"
    if not file.is_file():
        raise DifforgeError(f"input={path}: no such file (give a .npy array of shape {expected})")
    try:
        array = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DifforgeError(f"input={path}: not a .npy array ({error})") from None
    if tuple(array.shape[1:]) != tuple(data_shape) or not np.issubdtype(array.dtype, np.floating):
        raise DifforgeError(
            f"input={path} holds {array.dtype} of shape {tuple(array.shape)}; this model's "
            f"signals are floats of shape {expected}"
        )
    if array.shape[0] < num_inputs:
        raise DifforgeError(
            f"input={path} holds {array.shape[0]} signals, num_inputs={num_inputs}: set "
            f"num_inputs={array.shape[0]} or fewer"
        )
    if not np.isfinite(array[:num_inputs]).all():
        raise DifforgeError(f"input={path} holds non-finite values")
    return torch.from_numpy(array[:num_inputs].astype(np.float32))


def data_module(model: Model) -> Any:
    """The data module of a difforge checkpoint trained on images (FID and the classifier read
    it), else None."""
    if model.config is None or len(model.data_shape) != 3:
        return None
    datamodule = instantiate(model.config.data)
    datamodule.setup("test")
    return datamodule


def clean_signals(
    cfg: DictConfig, model: Model, datamodule: Any
) -> tuple[Tensor, Tensor | None, str]:
    """``num_inputs`` clean signals and their labels (None when unknown), and where they come
    from: ``input=``, the mixture's law, or the test split."""
    n = int(cfg.num_inputs)
    if cfg.input is not None:
        return load_input(str(cfg.input), n, model.data_shape), None, str(cfg.input)
    if model.mixture is not None:
        x, labels = model.mixture.sample(n, torch.Generator().manual_seed(int(cfg.seed)))
        return x.float().reshape(n, *model.data_shape), labels, "the mixture's law"
    if datamodule is None:
        raise DifforgeError(
            "this model has no test split to restore (a diffusers pipeline, or vectors of "
            "unknown law): give input=FILE.npy, clean signals of shape "
            f"(N, {', '.join(map(str, model.data_shape))})"
        )
    split = datamodule.split_dataset("test")
    if len(split) < n:
        raise DifforgeError(
            f"the test split holds {len(split)} signals: set num_inputs <= {len(split)}"
        )
    pairs = [split[i] for i in range(n)]
    x = torch.stack([pair[0] for pair in pairs])
    labels = torch.tensor([int(pair[1]) for pair in pairs])
    return x, labels, "the test split"


def consistency_metrics(
    y: Tensor, operator: LinearOperator, draws: Tensor, x: Tensor, sigma_y: float
) -> dict[str, float]:
    """``residual_norm``: the mean of ``||y - A x_hat||`` over the draws; ``consistency``: the
    same over ``sigma_y`` (sigma_y > 0), about ``sqrt(d_y)`` for a draw that explains ``y`` as
    well as the clean signal does (``consistency_clean``: the clean signal's own)."""
    n = draws.shape[1]
    flat = draws.reshape(-1, *operator.x_shape).to(y)
    residual = (y.repeat_interleave(n, 0) - operator(flat)).norm(dim=1)
    metrics = {"residual_norm": float(residual.mean()), "d_y": float(operator.d_y)}
    if sigma_y > 0:
        metrics["consistency"] = float(residual.mean() / sigma_y)
        metrics["consistency_clean"] = float((y - operator(x.to(y))).norm(dim=1).mean() / sigma_y)
    return metrics


def exact_posterior_metrics(
    mixture: GaussianMixture, operator: LinearOperator, y: Tensor, draws: Tensor, cfg: DictConfig
) -> tuple[dict[str, float], dict[str, np.ndarray], Tensor]:
    """Against the exact posterior of the mixture prior (:func:`difforge.posterior.exact.
    mixture_posterior`), per input and averaged: ``sw``, the sliced Wasserstein distance of the
    draws to as many exact posterior samples, and ``sw_floor``, that of two exact sets of that
    size; ``component_weight_tv``, the total variation between the components' posterior weights
    and those the draws have (:func:`difforge.posterior.metrics.component_weights`). Returns the
    metrics, the per-input weights (``posterior_weights``, ``sample_weights``: ``(N, K)``) and
    the exact samples of the first input, for the picture."""
    from difforge.posterior.exact import mixture_posterior
    from difforge.posterior.metrics import component_weights, exact_floor, sliced_wasserstein

    generator = torch.Generator().manual_seed(int(cfg.seed) + 1)
    A = operator.matrix()
    n = draws.shape[1]
    sw, floor, exact, found, references = [], [], [], [], []
    for i in range(y.shape[0]):
        posterior = mixture_posterior(mixture, A, y[i].double(), float(cfg.sigma_y))
        samples = draws[i].reshape(n, -1).double()
        references.append(posterior.sample(n, generator))
        sw.append(sliced_wasserstein(samples, references[-1]))
        floor.append(exact_floor(posterior, n, generator=generator))
        exact.append(posterior.weights)
        found.append(component_weights(samples, posterior))
    weights, estimated = torch.stack(exact), torch.stack(found)
    metrics = {
        "sw": float(np.mean(sw)),
        "sw_floor": float(np.mean(floor)),
        "component_weight_tv": float(0.5 * (weights - estimated).abs().sum(1).mean()),
    }
    weights_record = {"posterior_weights": weights.numpy(), "sample_weights": estimated.numpy()}
    return metrics, weights_record, references[0]


def image_quality_metrics(
    cfg: DictConfig,
    datamodule: Any,
    draws: Tensor,
    x: Tensor,
    labels: Tensor | None,
) -> dict[str, float]:
    """Classifier accuracy of the draws (and of the clean signals) against the true labels, where
    the data have a classifier; FID/KID of the draws against the training split
    (``metrics.fid``)."""
    from difforge.metrics.features import classifier_for
    from difforge.metrics.images import image_metrics, predict_classes

    metrics: dict[str, float] = {}
    classifier_dir = f"{cfg.paths.data_dir}/classifiers"
    flat = draws.reshape(-1, *draws.shape[2:])
    if labels is not None:
        classifier = classifier_for(datamodule, classifier_dir)
        if classifier is not None:
            predicted = predict_classes(classifier, flat)
            truth = labels.repeat_interleave(draws.shape[1])
            metrics["classifier_accuracy"] = float((predicted == truth).double().mean())
            clean = predict_classes(classifier, x)
            metrics["classifier_accuracy_clean"] = float((clean == labels).double().mean())
    if cfg.metrics.fid is not False:
        if flat.shape[0] < 2:
            raise DifforgeError(
                "FID needs at least 2 restorations: raise num_inputs or num_samples_per_input, "
                "or set metrics.fid=false"
            )
        found = image_metrics(
            flat,
            datamodule,
            seed=int(cfg.seed),
            cache_dir=f"{cfg.paths.cache_dir}/fid_stats",
            classifier_dir=classifier_dir,
            inception_weights=cfg.metrics.inception_weights,
        )
        metrics.update({k: v for k, v in found.items() if k in ("fid", "kid_mean", "kid_std")})
    return metrics


def save_picture(
    path: Path,
    operator: LinearOperator,
    y: Tensor,
    x: Tensor,
    draws: Tensor,
    mixture: GaussianMixture | None,
    reference: Tensor | None,
    title: str,
) -> None:
    """Images: one row per input, the clean signal, the measurement seen through the
    pseudo-inverse ``A^+ y``, then the draws. Vectors: the draws of the first input over the
    prior's density, beside ``reference`` (exact posterior samples) and its clean signal."""
    if draws.ndim == 5:
        k, m = min(PICTURE_INPUTS, draws.shape[0]), min(PICTURE_DRAWS, draws.shape[1])
        seen = operator.pinv(y[:k].double()).float()
        rows = torch.cat([x[:k, None], seen[:, None], draws[:k, :m]], dim=1)
        save_image_grid(rows.reshape(-1, *rows.shape[2:]), path, columns=m + 2)
    else:
        save_vector_plot(draws[0], path, mixture, title, reference, x[0])


def restore(cfg: DictConfig) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    posterior = instantiate(cfg.posterior)
    model = load_model(cfg, None, device)
    options: dict[str, Any] = OmegaConf.to_container(cfg.operator, resolve=True)  # type: ignore[assignment]
    operator = operator_from_config(options, model.data_shape)
    posterior.spec.check_fit(operator)
    datamodule = data_module(model)
    if cfg.metrics.fid is True and datamodule is None:
        raise DifforgeError(
            "metrics.fid=true needs a checkpoint trained on images (its data give the FID "
            "reference); set metrics.fid=null or false"
        )
    x, labels, source = clean_signals(cfg, model, datamodule)
    sigma_y = float(cfg.sigma_y)
    y = operator.measure(x, sigma_y, torch.Generator().manual_seed(int(cfg.seed)))
    n = int(cfg.num_samples_per_input)
    log.info(
        "restoring %d signals of %s, %d draws each: %r, %r, sigma_y=%g",
        x.shape[0],
        source,
        n,
        operator,
        posterior,
        sigma_y,
    )
    draws = model.restore(
        y,
        operator,
        posterior,
        n,
        sigma_y=sigma_y,
        seed=int(cfg.seed),
        batch_size=int(cfg.batch_size),
        use_ema=bool(cfg.use_ema),
    )
    nfe = posterior.nfe(model.schedule)
    metrics: dict[str, Any] = {
        "operator": operator.name,
        "posterior": posterior.method,
        "steps": posterior.steps,
        "nfe": nfe,
        "num_inputs": x.shape[0],
        "num_samples_per_input": n,
        "sigma_y": sigma_y,
        **consistency_metrics(y, operator, draws, x, sigma_y),
    }
    record: dict[str, Any] = {
        "samples": draws.numpy(),
        "y": y.numpy(),
        "x": x.numpy(),
        "sigma_y": np.float64(sigma_y),
        "operator": np.str_(operator.name),
        **{f"operator_{key}": np.asarray(value) for key, value in operator.options.items()},
    }
    if labels is not None:
        record["labels"] = labels.numpy()
    if isinstance(operator, DenseOperator):
        record["A"] = operator.matrix().numpy()
    if operator.is_mask:
        record["mask"] = operator.mask.numpy()  # type: ignore[attr-defined]
    reference = None  # exact posterior samples of the first input, for the picture
    if model.mixture is not None:
        record.update(
            mixture_weights=model.mixture.weights.numpy(),
            mixture_means=model.mixture.means.numpy(),
            mixture_stds=model.mixture.stds.numpy(),
        )
        exact, weights, reference = exact_posterior_metrics(model.mixture, operator, y, draws, cfg)
        metrics.update(exact)
        record.update(weights)
    if datamodule is not None:
        metrics.update(image_quality_metrics(cfg, datamodule, draws, x, labels))
    out = output_dir()
    np.savez(out / "restore.npz", **record)
    title = f"{posterior.method}, {operator.name}, sigma_y={sigma_y:g}: draws for input 0"
    if reference is not None:
        title += "\n(reference: exact posterior samples)"
    save_picture(out / "restore.png", operator, y, x, draws, model.mixture, reference, title)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    log.info("wrote %s, restore.png and metrics.json (NFE %d per draw)", out / "restore.npz", nfe)
    print(json.dumps(metrics, sort_keys=True))
    return metrics
