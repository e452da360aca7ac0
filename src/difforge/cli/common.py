"""Shared by the entry points: clean one-line errors, config printing, instantiation helpers."""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from difforge.errors import DifforgeError, DifforgeWarning

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
        if isinstance(cause, TypeError):
            # A setting of the wrong type that the class does not check itself, e.g. a string
            # compared with a number: name the config node to look at.
            node = _instantiation_key(error)
            return (
                f"{node}: a setting has the wrong type ({cause}) while building "
                f"{_instantiation_target(error)}; check the {node}.* values given"
            )
        return " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if isinstance(error, (*USER_ERRORS, HydraException)):
        return str(error)
    return None


def _instantiation_key(error: BaseException) -> str:
    """The config node Hydra was building (``full_key``), by the group a module part refers to
    (``module.schedule`` -> ``schedule``)."""
    from difforge.training.config import MODULE_PARTS

    found = re.search(r"full_key: (\S+)", str(error))
    key = found.group(1) if found else "config"
    parts = key.split(".")
    if len(parts) >= 2 and parts[0] == "module" and parts[1] in MODULE_PARTS:
        key = ".".join([MODULE_PARTS[parts[1]], *parts[2:]])
    return key


def _instantiation_target(error: BaseException) -> str:
    text = str(error)
    start = text.find("'")
    end = text.find("'", start + 1)
    return text[start + 1 : end] if start >= 0 and end > start else "an object"


def run_command(
    command: Callable[[DictConfig], T], cfg: DictConfig, settings: str | None = None
) -> T:
    """Run ``command(cfg)``, after checking the entry point's own keys (``settings``: ``sample``,
    ``eval`` or ``train``) and the types of the values given to the objects the config builds (see
    :mod:`difforge.cli.settings`); an error caused by bad input becomes
    ``error: <message>`` and exit 1, after the full traceback with ``traceback=true``. Bugs, and
    every error under ``HYDRA_FULL_ERROR=1``, propagate with their traceback."""
    from difforge.cli.settings import check_object_settings, check_settings

    quiet_third_party()
    rank_zero_output()
    try:
        if settings is not None:
            check_settings(settings, cfg)
            check_object_settings(settings, cfg)
        return command(cfg)
    except Exception as error:
        message = user_error_message(error)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if cfg.get("traceback", False):
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


# Dependencies' warnings that say nothing to a difforge user, by exact message and category:
# torchdata calls a deprecated torch function; Lightning's pytree helper uses torch's deprecated
# LeafSpec; difforge's module moves batches itself (transfer_batch_to_device) and keeps its EMA
# copies in eval mode on purpose. difforge's own warnings are never filtered here.
THIRD_PARTY_WARNINGS = (
    (r"'set_vital' is deprecated", UserWarning),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    (r"You have overridden `transfer_batch_to_device` in `LightningModule`", UserWarning),
    (r"Found \d+ module\(s\) in eval mode at the start of training", UserWarning),
)
# Lightning's advertisements, logged at INFO on every run.
LIGHTNING_TIP = "💡 Tip:"


class _DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_TIP)


_DROP_LIGHTNING_TIPS = _DropLightningTips()


def quiet_third_party() -> None:
    """Each message once and no dependency noise: filter ``THIRD_PARTY_WARNINGS`` and Lightning's
    tips, and drop the console handler Lightning adds to its ``lightning`` logger (its records
    also reach the root logger, which Hydra prints and writes to the run's log file, so every
    line appeared twice). Idempotent; call again after a lazy ``import lightning``."""
    for message, category in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DROP_LIGHTNING_TIPS)
    lightning = logging.getLogger("lightning")
    if logging.getLogger().handlers and lightning.propagate:
        for handler in list(lightning.handlers):
            if type(handler) is logging.StreamHandler:
                lightning.removeHandler(handler)


def global_rank() -> int:
    """This process's global rank as Lightning keeps it (``rank_zero_only.rank``: read from the
    launcher's environment when lightning is imported, set again by the strategy); 0 before."""
    from lightning_utilities.core.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0))


class _RankZeroOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return global_rank() == 0


_RANK_ZERO_ONLY = _RankZeroOnly()


def rank_zero_output() -> None:
    """difforge's lines once per run, not once per DDP process (as lightning-hydra-template's
    ``RankedLogger``): the ``difforge`` logger's records pass on global rank 0 only (decided per
    record, so a rank the strategy sets later counts), and ``DifforgeWarning``s are ignored on the
    other ranks. Idempotent."""
    logging.getLogger("difforge").addFilter(_RANK_ZERO_ONLY)
    if global_rank() != 0:
        warnings.simplefilter("ignore", DifforgeWarning)


# Config groups left out of the one-line summary: the same in every run.
PLUMBING_GROUPS = ("hydra", "paths", "local")


def print_config(cfg: DictConfig, model_choices: Mapping[str, str] | None = None) -> None:
    """Save the resolved config as a tree to ``<run dir>/config_tree.log`` (the plain YAML is
    Hydra's ``.hydra/config.yaml``); print the tree with ``print_config=true``, else one line with
    every config group choice, defaults included. ``model_choices``: the groups of the model when
    the command does not choose them (a checkpoint's, the exact model's default schedule); they
    come first and replace Hydra's empty choices."""
    from hydra.core.hydra_config import HydraConfig

    tree = config_tree(cfg)
    if HydraConfig.initialized():
        from rich.console import Console

        with open(output_dir() / "config_tree.log", "w") as file:
            Console(file=file, width=100, color_system=None).print(tree)
        choices = choices_line(HydraConfig.get().runtime.choices, model_choices or {})
        log.info("config: %s (full config: %s)", choices, output_dir() / "config_tree.log")
    if cfg.get("print_config", False):
        from rich import print as rich_print

        rich_print(tree)


def choices_line(hydra_choices: Mapping[str, str | None], model_choices: Mapping[str, str]) -> str:
    """``group=option`` for ``model_choices``, then for Hydra's other non-empty choices (in the
    order of the defaults list), without the plumbing groups."""
    choices = dict(model_choices)
    # Hydra records the choices last default first.
    for group, choice in reversed(list(hydra_choices.items())):
        if (
            group not in choices
            and group not in PLUMBING_GROUPS
            and not group.startswith("hydra/")
            and choice is not None
        ):
            choices[group] = choice
    return " ".join(f"{group}={choice}" for group, choice in choices.items())


def config_tree(cfg: DictConfig) -> Any:
    """The resolved config as a ``rich`` tree: the top-level settings, then one branch per
    section."""
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    settings = {k: v for k, v in cfg.items() if not isinstance(v, DictConfig)}
    if settings:
        tree.add("settings").add(
            Syntax(OmegaConf.to_yaml(OmegaConf.create(settings), resolve=True), "yaml")
        )
    for key, value in cfg.items():
        if isinstance(value, DictConfig):
            tree.add(str(key)).add(Syntax(section_yaml(str(key), value), "yaml"))
    return tree


def section_yaml(key: str, section: DictConfig) -> str:
    """One section of the config, resolved; the module's parts are shown as the references they
    are (``net: ${model}``), each part's values under its own group."""
    if key != "module":
        return OmegaConf.to_yaml(section, resolve=True)
    from difforge.training.config import MODULE_PARTS, module_settings

    settings = module_settings(section)
    parts = {arg: f"${{{group}}}" for arg, group in MODULE_PARTS.items() if arg in section}
    target = {"_target_": settings.pop("_target_")} if "_target_" in settings else {}
    return OmegaConf.to_yaml(OmegaConf.create({**target, **parts, **settings}))


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
