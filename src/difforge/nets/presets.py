"""The network presets ``configs/model/<name>.yaml`` read without Hydra (the benchmark scripts):
the network class and its arguments at a given data shape.

The presets live in the source checkout's ``configs/`` (the scripts run from one), not in the
package; the data shape is what Hydra's ``${...}`` interpolations fill from the data config.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from torch import nn

MODEL_CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "model"
# The keys a preset takes from the data config by interpolation.
DATA_KEYS = ("in_channels", "image_size")


def available_presets() -> list[str]:
    return sorted(p.stem for p in MODEL_CONFIGS.glob("*.yaml"))


def load_preset(
    name: str, channels: int, image_size: int
) -> tuple[Callable[..., nn.Module], dict[str, Any]]:
    """The network class and arguments of ``configs/model/<name>.yaml`` for ``channels`` x
    ``image_size`` x ``image_size`` data.

    Raises:
        ValueError: no such preset (naming those available), or an interpolation other than
            the data shape.
    """
    path = MODEL_CONFIGS / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no model preset {name!r}; available: {', '.join(available_presets())}")
    cfg = yaml.safe_load(path.read_text())
    module_name, _, class_name = cfg.pop("_target_").rpartition(".")
    data = {"in_channels": channels, "image_size": image_size}
    for key, value in cfg.items():
        if isinstance(value, str) and value.startswith("${"):
            if key not in DATA_KEYS:
                raise ValueError(
                    f"{path}: {key}={value} is an interpolation this script cannot fill"
                )
            cfg[key] = data[key]
    return getattr(importlib.import_module(module_name), class_name), cfg
