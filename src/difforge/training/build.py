"""Build a DiffusionModule from a composed config, and rebuild one from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from difforge.errors import CheckpointError, DifforgeError
from difforge.training.checkpoint import load_checkpoint
from difforge.training.config import MODEL_CONFIG_KEYS, plain_config, wire_module
from difforge.training.module import DiffusionModule

# Lightning's precisions and their aliases (``32`` is ``32-true``, ``16`` is ``16-mixed``, ``bf16`` is
# ``bf16-mixed``), and difforge's ``auto``. Transformer Engine's need an NVIDIA GPU and its package.
PRECISIONS = (
    "auto",
    "32-true",
    "32",
    "64-true",
    "64",
    "16-mixed",
    "16",
    "bf16-mixed",
    "bf16",
    "16-true",
    "bf16-true",
    "transformer-engine",
    "transformer-engine-float16",
)


def resolve_precision(precision: str, accelerator: str) -> str:
    """``trainer.precision``; ``auto``: bf16 autocast ("bf16-mixed") when training runs on a CUDA
    GPU that supports bf16 (Ampere and later), else full fp32 ("32-true").

    Raises:
        DifforgeError: a value Lightning does not know, or one that cannot run on
            ``trainer.accelerator`` (Transformer Engine without a CUDA GPU or its package, bf16 on
            a CUDA GPU without bf16), in one line naming the value and what is allowed.
    """
    import importlib.util

    import torch

    if precision not in PRECISIONS:
        raise DifforgeError(
            f"trainer.precision={precision} is not a precision; use one of {', '.join(PRECISIONS)}"
        )
    on_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if precision == "auto":
        return "bf16-mixed" if on_cuda and torch.cuda.is_bf16_supported() else "32-true"
    if precision.startswith("transformer-engine") and not (
        on_cuda and importlib.util.find_spec("transformer_engine") is not None
    ):
        where = "no CUDA GPU is in use" if not on_cuda else "transformer_engine is not installed"
        raise DifforgeError(
            f"trainer.precision={precision} needs an NVIDIA GPU and the transformer_engine package "
            f"({where}, trainer.accelerator={accelerator}); use bf16-mixed or 32-true"
        )
    if precision.startswith("bf16") and on_cuda and not torch.cuda.is_bf16_supported():
        raise DifforgeError(
            f"trainer.precision={precision}: this GPU has no bfloat16 (Ampere or later has); "
            "use 16-mixed or 32-true"
        )
    return precision


def check_model_config_fits_data(model_cfg: DictConfig, data_shape: tuple[int, ...]) -> None:
    """Image networks read ``data.channels``/``data.image_size``, vector networks ``data.dim``: a
    missing one means the model does not fit the data kind."""
    if "dim" in model_cfg and model_cfg.dim is None:
        raise ValueError(
            f"model {model_cfg._target_.split('.')[-1]} is for vector data (data.dim), but the data are images of shape {data_shape}; use model=unet_tiny (or another unet)"
        )
    if "in_channels" in model_cfg and model_cfg.in_channels is None:
        raise ValueError(
            f"model {model_cfg._target_.split('.')[-1]} is for images, but the data are vectors of shape {data_shape}; use model=mlp"
        )


def check_classes_fit_data(cfg: DictConfig) -> None:
    """A class-conditional network has one label per class of the data (and the null label): a
    ``model.num_classes`` other than the data's ``data.num_classes`` is refused at the start of a
    run, not at the first out-of-range label. Data that infer their classes (``null``) are checked
    by the network's label check."""
    model_classes = cfg.model.get("num_classes") or 0
    data_classes = cfg.data.get("num_classes")
    if not model_classes or data_classes is None or model_classes == data_classes:
        return
    if data_classes == 0:
        raise ValueError(
            f"model.num_classes={model_classes} but the data are unlabelled (data.num_classes=0); "
            "use model.num_classes=0"
        )
    raise ValueError(
        f"model.num_classes={model_classes} but the data have {data_classes} classes "
        "(data.num_classes); use model.num_classes=${data.num_classes}"
    )


def check_one_sigma_data(cfg: DictConfig) -> None:
    """EDM's sigma_data is one number: the schedule, parameterization and loss must agree."""
    values = {
        f"{group}.sigma_data": cfg[group].sigma_data
        for group in ("schedule", "parameterization", "loss")
        if cfg.get(group) is not None and "sigma_data" in cfg[group]
    }
    if len(set(values.values())) > 1:
        given = ", ".join(f"{key}={value}" for key, value in values.items())
        raise ValueError(f"sigma_data must be one value, set once with sigma_data=...; got {given}")


def resolve_learned_variance(cfg: DictConfig) -> None:
    """``model.learned_variance: null`` (every model config's default) becomes what the loss
    trains: true for a loss with a learned variance (``loss=hybrid``), else false. An explicit
    value is kept; the module refuses one the loss cannot train."""
    model, loss = cfg.get("model"), cfg.get("loss")
    if model is None or loss is None or model.get("learned_variance", False) is not None:
        return
    from hydra.utils import get_class

    model.learned_variance = bool(getattr(get_class(loss._target_), "learned_variance", False))


def build_module(
    cfg: DictConfig, data_shape: tuple[int, ...], run: dict[str, Any] | None = None
) -> DiffusionModule:
    """``instantiate(cfg.module)``: the module node references its parts (``net: ${model}``, ...),
    so one call builds the network, the engine's pieces and the module. The config is checked
    first, where a mistake would otherwise surface as an obscure constructor error. The module
    saves in its checkpoints the model's config (``MODEL_CONFIG_KEYS``) and ``run`` (the run's
    overrides and group choices, for resuming and for sample.py to name them)."""
    resolve_learned_variance(cfg)
    check_model_config_fits_data(cfg.model, data_shape)
    check_one_sigma_data(cfg)
    run_config = {**plain_config(cfg, MODEL_CONFIG_KEYS), **(run or {})}
    build = instantiate(cfg.module, _partial_=True)
    module: DiffusionModule = build(data_shape=data_shape, run_config=run_config)
    return module


# Configs saved in checkpoints before the loss classes and the sampler grids were renamed
# (2026-11-30): the old spelling, and what it is now.
_LEGACY_WEIGHTINGS = {
    "uniform": ("difforge.diffusion.losses.DenoisingLoss", ()),
    "min_snr": ("difforge.diffusion.losses.MinSNRLoss", ("min_snr_gamma",)),
    "edm": ("difforge.diffusion.losses.EDMLoss", ("sigma_data",)),
}


def upgrade_saved_config(cfg: DictConfig) -> DictConfig:
    """A checkpoint's saved training config in today's spelling, so that older runs still load:
    ``DenoisingLoss(weighting=...)`` becomes its weighting's class, ``sampler.grid=discrete``
    the ``linspace`` spacing it was, the old always-present ``sampler.rho: 7`` is dropped where
    the grid has no rho, the old default ``module.class_dropout: 0.1`` of an unconditional
    network becomes null, and the module node references its parts again (``wire_module``)."""
    loss = cfg.get("loss")
    if loss is not None and "weighting" in loss:
        target, keep = _LEGACY_WEIGHTINGS[str(loss.weighting)]
        cfg.loss = OmegaConf.create({"_target_": target, **{k: loss[k] for k in keep if k in loss}})
    sampler = cfg.get("sampler")
    if sampler is not None:
        if sampler.get("grid") == "discrete":
            sampler.grid = "linspace"
        if sampler.get("rho") is not None and sampler.get("grid") not in ("karras", "polynomial"):
            sampler.rho = None
    model, module = cfg.get("model"), cfg.get("module")
    unconditional = model is not None and not model.get("num_classes")
    if module is not None and unconditional and module.get("class_dropout") == 0.1:
        module.class_dropout = None
    return wire_module(cfg)


def module_from_checkpoint(
    path: str | Path, sampler_cfg: DictConfig | None = None
) -> tuple[DiffusionModule, DictConfig]:
    """Rebuild the trained module of a difforge checkpoint (safely loaded) and its training config."""
    checkpoint = load_checkpoint(path)
    cfg = upgrade_saved_config(OmegaConf.create(checkpoint["difforge"]["config"]))
    if sampler_cfg is not None:
        cfg.sampler = sampler_cfg
    data_shape = tuple(checkpoint["difforge"]["data_shape"])
    module = build_module(cfg, data_shape)
    try:
        missing, unexpected = module.load_state_dict(checkpoint["state_dict"], strict=False)
    except RuntimeError as error:
        first = next(
            (line.strip() for line in str(error).splitlines() if "size mismatch" in line),
            str(error).splitlines()[0],
        )
        raise CheckpointError(
            f"checkpoint {path} does not match its own model configuration: {first}"
        ) from None
    missing = [
        k for k in missing if not k.startswith(("train_loss", "val_loss", "quartile_losses"))
    ]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match its own model configuration: "
            f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
        )
    module.eval()
    return module, cfg
