"""Build a DiffusionModule from a composed config, and rebuild one from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from difforge.errors import CheckpointError
from difforge.training.checkpoint import load_checkpoint
from difforge.training.module import DiffusionModule

# The config groups that define a trained model: their choices are saved in every checkpoint
# (``choices``), for sample.py and eval.py to name.
MODEL_GROUPS = ("data", "model", "schedule", "parameterization", "loss", "noise_law")
# The parts of a run's config that define its model; saved in every checkpoint.
MODEL_CONFIG_KEYS = (*MODEL_GROUPS, "sampler", "module")


def resolve_precision(precision: str, accelerator: str) -> str:
    """``trainer.precision``; ``auto``: bf16 autocast ("bf16-mixed") when training runs on a CUDA
    GPU that supports bf16 (Ampere and later), else full fp32 ("32-true")."""
    if precision != "auto":
        return precision
    import torch

    on_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_cuda and torch.cuda.is_bf16_supported() else "32-true"


def check_network_fits_data(net: Any, data_shape: tuple[int, ...]) -> None:
    """Catch channel and size mismatches between data and network at start, with both values named."""
    if len(data_shape) == 3:
        channels, height, width = data_shape
        net_channels = getattr(net, "in_channels", None)
        if net_channels is not None and net_channels != channels:
            raise ValueError(
                f"the data has {channels} channel(s) but model.in_channels={net_channels}"
            )
        size = getattr(net, "image_size", None)
        if size is not None and (height, width) != (size, size):
            raise ValueError(f"the data is {height}x{width} but model.image_size={size}")
        if getattr(net, "dim", None) is not None:
            raise ValueError(
                f"model {type(net).__name__} is for vector data, but the data are images of shape {data_shape}"
            )
    else:
        dim = getattr(net, "dim", None)
        if dim is None:
            raise ValueError(
                f"model {type(net).__name__} is for images, but the data are vectors of shape {data_shape}; use model=mlp"
            )
        if dim != data_shape[0]:
            raise ValueError(f"the data have dimension {data_shape[0]} but model.dim={dim}")


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


DEFAULT_CLASS_DROPOUT = 0.1  # Ho & Salimans 2022 train with p_uncond in {0.1, 0.2}


def class_dropout_for(module_cfg: DictConfig, num_classes: int) -> float:
    """``module.class_dropout``: null -> 0.1 for a class-conditional network; a value for an
    unconditional one cannot apply and is refused."""
    value = module_cfg.get("class_dropout")
    if value is None:
        return DEFAULT_CLASS_DROPOUT if num_classes else 0.0
    if num_classes == 0:
        raise ValueError(
            f"module.class_dropout={value} needs a class-conditional model "
            "(model.num_classes=<the data's number of classes>); "
            "leave it null for an unconditional one"
        )
    return float(value)


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


def build_module(cfg: DictConfig, data_shape: tuple[int, ...]) -> DiffusionModule:
    resolve_learned_variance(cfg)
    check_model_config_fits_data(cfg.model, data_shape)
    check_one_sigma_data(cfg)
    net = instantiate(cfg.model)
    check_network_fits_data(net, data_shape)
    if cfg.module.get("channels_last") and len(data_shape) != 3:
        raise ValueError(
            f"module.channels_last=true is a memory layout for images; the data are vectors of shape {data_shape}"
        )
    module_factory = instantiate(cfg.module)
    module = module_factory(
        class_dropout=class_dropout_for(cfg.module, int(getattr(net, "num_classes", 0))),
        net=net,
        schedule=instantiate(cfg.schedule),
        parameterization=instantiate(cfg.parameterization),
        loss=instantiate(cfg.loss),
        sampler=instantiate(cfg.sampler),
        noise_law=instantiate(cfg.noise_law) if cfg.get("noise_law") is not None else None,
        data_shape=data_shape,
    )
    module.run_config = {
        key: OmegaConf.to_container(cfg[key], resolve=True)
        for key in MODEL_CONFIG_KEYS
        if cfg.get(key) is not None
    }
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
    the grid has no rho, and the old default ``module.class_dropout: 0.1`` of an unconditional
    network becomes null."""
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
    return cfg


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
