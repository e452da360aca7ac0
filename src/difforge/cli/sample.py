"""``python src/sample.py``: draw samples from a checkpoint, or from an exact model without one."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from difforge.api import Model, OracleSampling, load, load_exact
from difforge.cli.common import output_dir, print_config
from difforge.devices import resolve_device
from difforge.diffusion.guidance import check_guidance_scale, check_guidance_trained
from difforge.diffusion.samplers import Sampler, SampleResult
from difforge.errors import DifforgeError
from difforge.plotting import save_samples_figure, to_uint8_images

log = logging.getLogger("difforge")


# Options of sample.yaml / eval.yaml that only a trained checkpoint can use, with their defaults.
CHECKPOINT_ONLY_OPTIONS = {"use_ema": True, "guidance_scale": None, "class_label": None}


# The exact model's schedule when the command names none (its name in configs/schedule/).
ORACLE_SCHEDULE = "edm"


def load_oracle(cfg: DictConfig, sampler: Sampler | None) -> Model:
    """The exact model of ``model=gmm_oracle data=...`` (:func:`difforge.api.load_exact`), after
    refusing what it cannot do."""
    if cfg.get("model") is None:
        raise DifforgeError(
            "give ckpt_path=<checkpoint> (or model=gmm_oracle data=gmm1d for the exact model)"
        )
    if "GaussianMixtureOracle" not in str(cfg.model.get("_target_", "")):
        raise DifforgeError(
            f"model {cfg.model._target_} needs training: give ckpt_path=<checkpoint>"
        )
    for key, default in CHECKPOINT_ONLY_OPTIONS.items():
        if cfg.get(key, default) != default:
            raise DifforgeError(
                f"{key}={cfg.get(key)} needs a trained checkpoint (ckpt_path=...): the exact model "
                "has no EMA weights and no class conditioning"
            )
    if cfg.get("data") is None:
        raise DifforgeError(
            "model=gmm_oracle needs the mixture it is exact for: data=gmm1d or data=gmm2d"
        )
    schedule = instantiate(cfg.schedule) if cfg.get("schedule") is not None else None
    return load_exact(cfg.data, schedule, sampler=sampler)


def sampling_labels(cfg: DictConfig, model: Any) -> torch.Tensor | None:
    """The class label of every sample: ``class_label`` for all, else the classes in turn for a
    class-conditional model; None for an unconditional one."""
    num_classes = int(getattr(model, "num_classes", 0))
    label = cfg.get("class_label")
    if label is None:
        return torch.arange(cfg.num_samples) % num_classes if num_classes else None
    if num_classes == 0:
        raise DifforgeError(
            f"class_label={label} needs a class-conditional model; this one is unconditional "
            "(model.num_classes=0)"
        )
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < num_classes:
        raise DifforgeError(f"class_label must be an integer in [0, {num_classes}), got {label!r}")
    return torch.full((cfg.num_samples,), label, dtype=torch.long)


def load_model(cfg: DictConfig, sampler: Sampler | None, device: torch.device) -> Model:
    """The model of ``ckpt_path=``, ``pretrained=`` or ``model=gmm_oracle data=...``, through
    the Python API's loaders (:func:`difforge.api.load`, :func:`difforge.api.load_exact`), with
    ``sampler`` as its default sampler (None: the model's own). Logs the config line, with the model's groups: the
    checkpoint's, or the exact model's with its default schedule. Lightning is imported for
    trained models only."""
    if cfg.get("pretrained") is not None:
        if cfg.ckpt_path is not None:
            raise DifforgeError(
                "give either ckpt_path= (a difforge checkpoint) or pretrained= (a diffusers "
                "folder), not both"
            )
        if cfg.get("guidance_scale") is not None and check_guidance_scale(cfg.guidance_scale) != 1:
            raise DifforgeError(
                f"guidance_scale={cfg.guidance_scale}: a diffusers UNet2DModel has no null class "
                "label for guidance"
            )
        print_config(cfg)
        return load(cfg.pretrained, device, kind="diffusers", sampler=sampler)
    if cfg.ckpt_path is None:
        model = load_oracle(cfg, sampler)
        print_config(cfg, oracle_choices())
        return model
    given = [group for group in ("data", "model", "schedule") if cfg.get(group) is not None]
    if given:
        raise DifforgeError(
            f"{', '.join(given)} cannot be chosen with ckpt_path: a checkpoint brings its own "
            "(drop them, or drop ckpt_path for model=gmm_oracle)"
        )
    guidance_scale = cfg.get("guidance_scale")
    if guidance_scale is not None:
        guidance_scale = check_guidance_scale(guidance_scale)
    model = load(cfg.ckpt_path, device, kind="difforge", sampler=sampler)
    # A difforge checkpoint: a trained module with its training config.
    assert not isinstance(model.module, OracleSampling) and model.config is not None
    if guidance_scale is not None:
        if model.num_classes == 0:
            raise DifforgeError(
                f"guidance_scale={cfg.guidance_scale} needs a class-conditional model; "
                f"{cfg.ckpt_path} is unconditional (model.num_classes=0)"
            )
        model.module.guidance_scale = guidance_scale
    check_guidance_trained(model.module.guidance_scale, model.module.class_dropout)
    print_config(cfg, model.config.get("choices"))  # checkpoints from before 2026-11-30 have none
    return model


def oracle_choices() -> dict[str, str]:
    """The exact model's config groups: the command's, and its default schedule."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {
        "data": choices["data"],
        "model": choices["model"],
        "schedule": choices.get("schedule") or ORACLE_SCHEDULE,
    }


def load_noise(path: str, num_samples: int, data_shape: tuple[int, ...]) -> torch.Tensor:
    """Standard-normal starting draws ``(num_samples, *data_shape)`` from a ``.npy`` file (diffusers'
    ``latents``: the unit-variance VP latent at the top of the grid)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DifforgeError(
            f"noise={path}: no such file (give a .npy array of shape (N, {', '.join(map(str, data_shape))}))"
        )
    try:
        array = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DifforgeError(f"noise={path}: not a .npy array ({error})") from None
    expected = (num_samples, *data_shape)
    if tuple(array.shape) != expected:
        raise DifforgeError(
            f"noise={path} has shape {tuple(array.shape)}, expected {expected} (num_samples={num_samples})"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise DifforgeError(f"noise={path} must hold floats, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise DifforgeError(f"noise={path} holds non-finite values")
    return torch.from_numpy(array.astype(np.float32))


def generate(
    cfg: DictConfig, model: Any, device: torch.device, noise: torch.Tensor | None = None
) -> tuple[SampleResult, torch.Tensor | None]:
    """``cfg.num_samples`` samples of ``model`` seeded by ``cfg.seed`` (the oracle's generator on
    the CPU) and their class labels (:func:`sampling_labels`)."""
    generator = torch.Generator(
        device="cpu" if isinstance(model, OracleSampling) else device
    ).manual_seed(cfg.seed)
    labels = sampling_labels(cfg, model)
    result = model.generate(
        cfg.num_samples,
        generator=generator,
        batch_size=cfg.batch_size,
        class_labels=labels,
        use_ema=cfg.use_ema,
        progress=True,
        noise=noise,
    )
    return result, labels


def sample(cfg: DictConfig) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    sampler: Sampler = instantiate(cfg.sampler)
    loaded = load_model(cfg, sampler, device)
    model, mixture = loaded.module, loaded.mixture
    noise = None
    if cfg.get("noise") is not None:
        if isinstance(model, OracleSampling):
            raise DifforgeError("noise= needs a trained model (ckpt_path= or pretrained=)")
        noise = load_noise(str(cfg.noise), cfg.num_samples, model.data_shape)
    result, labels = generate(cfg, model, device, noise)
    out = output_dir()
    samples = result.samples
    array = (
        to_uint8_images(samples)
        if samples.ndim == 4
        else samples.reshape(samples.shape[0], -1).float().numpy()
    )
    # arr_1: the class labels, as in guided-diffusion's sample files.
    np.savez(out / "samples.npz", array, *([] if labels is None else [labels.numpy()]))
    save_samples_figure(
        samples[:256] if samples.ndim == 4 else samples,
        out / "samples.png",
        mixture,
        title=f"{sampler.algorithm}, {sampler.steps} steps, NFE {result.nfe}",
    )
    summary = {
        "num_samples": int(samples.shape[0]),
        "sampler": sampler.algorithm,
        "steps": sampler.steps,
        "nfe": result.nfe,
        "samples": str(Path(out) / "samples.npz"),
    }
    (out / "sampling.json").write_text(json.dumps(summary, indent=2))
    log.info("wrote %s (NFE %d per sample)", out / "samples.npz", result.nfe)
    print(json.dumps(summary))
    return summary
