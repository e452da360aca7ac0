"""The measurement operators by config name (``operator=<name>``), each registered once.

Every builder takes ``x_shape`` (one signal's shape, ``(C, H, W)`` or ``(D,)``) first and its
options by keyword, checks that it fits, and returns a :class:`LinearOperator` named by its
config name with its options recorded (``operator.name``, ``operator.options``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from difforge.posterior.operators.base import LinearOperator
from difforge.posterior.operators.blur import blur
from difforge.posterior.operators.colorize import colorize
from difforge.posterior.operators.inpaint import denoise, inpaint_box, inpaint_half, inpaint_random
from difforge.posterior.operators.projection import matrix, random_projection
from difforge.posterior.operators.super_resolution import super_resolution

OPERATORS: dict[str, Callable[..., LinearOperator]] = {
    "inpaint_box": inpaint_box,
    "inpaint_half": inpaint_half,
    "inpaint_random": inpaint_random,
    "super_resolution": super_resolution,
    "blur": blur,
    "denoise": denoise,
    "random_projection": random_projection,
    "colorize": colorize,
    "matrix": matrix,
}


def operator_options(name: str) -> dict[str, Any]:
    """The options of operator ``name`` and their defaults (``inspect.Parameter.empty`` for a
    required one)."""
    params = list(inspect.signature(OPERATORS[name]).parameters.values())[1:]  # after x_shape
    return {p.name: p.default for p in params}


def build_operator(name: str, x_shape: tuple[int, ...], **options: Any) -> LinearOperator:
    """The operator ``name`` for signals of ``x_shape``, e.g.
    ``build_operator("super_resolution", (1, 8, 8), factor=2)``.

    Raises:
        ValueError (one line): an unknown name, an unknown or missing option, or what the
            builder refuses (a shape it does not fit, a mask that observes nothing, a bad value).
    """
    if name not in OPERATORS:
        raise ValueError(f"operator must be one of {', '.join(OPERATORS)}, got {name!r}")
    known = operator_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        allowed = ", ".join(known) or "none"
        raise ValueError(f"operator {name} has no option {unknown[0]!r} (its options: {allowed})")
    missing = [key for key, default in known.items() if default is inspect.Parameter.empty]
    missing = [key for key in missing if key not in options]
    if missing:
        raise ValueError(f"operator {name} needs operator.{missing[0]}")
    return OPERATORS[name](tuple(int(n) for n in x_shape), **options)


def operator_from_config(config: Mapping[str, Any], x_shape: tuple[int, ...]) -> LinearOperator:
    """The operator a ``configs/operator/<name>.yaml`` node describes (its ``_target_`` is the
    builder, Hydra's other ``_keys_`` are skipped, the rest are options), checked as
    :func:`build_operator` checks. ``config``: a plain mapping
    (``OmegaConf.to_container(cfg.operator, resolve=True)``)."""
    targets = {f"{fn.__module__}.{fn.__name__}": name for name, fn in OPERATORS.items()}
    target = str(config.get("_target_", ""))
    if target not in targets:
        raise ValueError(f"operator._target_ must be one of {', '.join(targets)}, got {target!r}")
    options = {key: value for key, value in config.items() if not str(key).startswith("_")}
    return build_operator(targets[target], x_shape, **options)
