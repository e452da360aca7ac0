"""The training config as a checkpoint saves it and a run shows it.

The ``module`` node (``configs/module/diffusion.yaml``) builds the LightningModule; its parts are
other config groups, referenced by interpolation (``net: ${model}``), so ``instantiate(cfg.module)``
builds the whole object tree. Each part is saved, logged and printed once, under its group; the
module node keeps only its own settings there. Imports no Lightning.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

# The module's constructor arguments that are other config groups: argument -> group.
MODULE_PARTS = {
    "net": "model",
    "schedule": "schedule",
    "parameterization": "parameterization",
    "loss": "loss",
    "noise_law": "noise_law",
    "sampler": "sampler",
}
# The module's arguments that the builder supplies (``training.build.build_module``): not settings.
BUILDER_ARGUMENTS = ("data_shape", "run_config")
# The config groups that define a trained model: their choices are saved in every checkpoint
# (``choices``), for sample.py and eval.py to name.
MODEL_GROUPS = ("data", "model", "schedule", "parameterization", "loss", "noise_law")
# The parts of a run's config that define its model; saved in every checkpoint.
MODEL_CONFIG_KEYS = (*MODEL_GROUPS, "sampler", "module")


def module_settings(module_cfg: DictConfig) -> dict[str, Any]:
    """The module node resolved to plain values, without its parts (each is its group's node)."""
    resolved: dict[str, Any] = OmegaConf.to_container(module_cfg, resolve=True)  # type: ignore[assignment]
    return {key: value for key, value in resolved.items() if key not in MODULE_PARTS}


def plain_config(cfg: DictConfig, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``cfg`` (or its ``keys``) resolved to plain containers, each part of the module once: under
    its group, not again inside ``module``. What checkpoints save and loggers record."""
    plain: dict[str, Any] = {}
    for key in cfg if keys is None else keys:
        value = cfg.get(key)
        if value is None and keys is not None:
            continue
        if key == "module" and isinstance(value, DictConfig):
            plain[str(key)] = module_settings(value)
        elif isinstance(value, DictConfig) or OmegaConf.is_list(value):
            plain[str(key)] = OmegaConf.to_container(value, resolve=True)
        else:
            plain[str(key)] = value
    return plain


def wire_module(cfg: DictConfig) -> DictConfig:
    """Reference the module's parts from its node, as ``configs/module/diffusion.yaml`` does, in a
    config saved without them (checkpoints; those written before the module node was a group
    also carry ``_partial_: true``). A missing ``noise_law`` group means the schedule's own law."""
    if cfg.get("module") is None:
        return cfg
    module = cfg.module
    if "_partial_" in module:
        del module["_partial_"]
    if "noise_law" not in cfg:
        cfg.noise_law = None
    for argument, group in MODULE_PARTS.items():
        if argument not in module:
            module[argument] = f"${{{group}}}"
    return cfg
