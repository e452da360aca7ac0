"""Shared by the entry points: clean one-line errors, config printing, instantiation helpers."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from difforge.errors import DifforgeError

log = logging.getLogger("difforge")
T = TypeVar("T")

USER_ERRORS = (DifforgeError, ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError)


def user_error_message(error: BaseException) -> str | None:
    """The one-line message for an error caused by the user's input, or None for a bug."""
    from hydra.errors import HydraException, InstantiationException

    if isinstance(error, InstantiationException):
        cause = error.__cause__ or error.__context__
        if cause is not None and isinstance(cause, USER_ERRORS):
            return f"{cause} (while building {_instantiation_target(error)})"
        return " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if isinstance(error, (*USER_ERRORS, HydraException)):
        return str(error)
    return None


def _instantiation_target(error: BaseException) -> str:
    text = str(error)
    start = text.find("'")
    end = text.find("'", start + 1)
    return text[start + 1 : end] if start >= 0 and end > start else "an object"


def run_command(command: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Run ``command(cfg)``; an error caused by bad input becomes ``error: <message>`` and exit 1,
    after the full traceback with ``traceback=true``. Bugs, and every error under
    ``HYDRA_FULL_ERROR=1``, propagate with their traceback."""
    try:
        return command(cfg)
    except Exception as error:
        message = user_error_message(error)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if cfg.get("traceback", False):
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


def print_config(cfg: DictConfig) -> None:
    if cfg.get("print_config", False):
        log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))


def instantiate_list(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` (callbacks, loggers)."""
    from hydra.utils import instantiate

    if not cfg:
        return []
    return [
        instantiate(entry)
        for entry in cfg.values()
        if isinstance(entry, DictConfig) and "_target_" in entry
    ]


def output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)
