"""Command-line overrides checked before Hydra runs: a typo becomes one line, ``error: ...`` with
the closest valid config group, option or key, instead of Hydra's multi-line message (which
suggests ``+schedul=cosine`` for a misspelt ``schedule``).

Imports only Hydra and OmegaConf, so a bad option fails in about a second, without Lightning;
a key added with ``+`` into a node that builds an object (``+sampler.etaa=0.5``) imports that
object's class, to check the key against its options.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from omegaconf import DictConfig

# Hydra flags after which there is nothing of ours to check (Hydra answers them itself), and the
# flags that take a value.
HANDLED_BY_HYDRA = {
    "-h",
    "--help",
    "--hydra-help",
    "-i",
    "--info",
    "-cp",
    "--config-path",
    "-cn",
    "--config-name",
    "-cd",
    "--config-dir",
    "--experimental-rerun",
    "-sc",
    "--shell-completion",
}
FLAGS_WITH_VALUE = {"-c", "--cfg", "-p", "--package"}


def seeds_flag_to_override(argv: list[str]) -> list[str]:
    """``--seeds N`` (or ``--seeds=N``) -> the Hydra override ``seeds=N``, so that EDM's protocol
    reads as ``python src/eval.py ... --seeds 3``."""
    out: list[str] = []
    values = iter(argv)
    for arg in values:
        if arg == "--seeds":
            out.append(f"seeds={next(values, '')}")
        elif arg.startswith("--seeds="):
            out.append(f"seeds={arg.split('=', 1)[1]}")
        else:
            out.append(arg)
    return out


def command_line_overrides(argv: Sequence[str]) -> list[str] | None:
    """The overrides among ``argv`` (no program name), or None when Hydra answers a flag itself."""
    overrides: list[str] = []
    skip_next = False
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if skip_next:
            skip_next = False
        elif flag in HANDLED_BY_HYDRA:
            return None
        elif arg in FLAGS_WITH_VALUE:
            skip_next = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides


def closest(name: str, candidates: Sequence[str]) -> str | None:
    """The candidate ``name`` most likely meant: the same but for case (``Lr`` -> ``lr``), else the
    closest spelling, else a key of which it is a word (``ema`` -> ``ema_decay``)."""
    pool = sorted(set(candidates))
    folded = [c for c in pool if c.lower() == name.lower()]
    if folded:
        return folded[0]
    matches = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    if matches:
        return matches[0]
    words = [c for c in pool if len(name) > 1 and name.lower() in c.lower().split("_")]
    return words[0] if words else None


def did_you_mean(name: str, candidates: Sequence[str]) -> str:
    match = closest(name, candidates)
    return f"; did you mean {match}?" if match else ""


def option_error(group: str, option: str, options: Sequence[str]) -> str:
    match = closest(option, options)
    hint = f"; did you mean {group}={match}?" if match else ""
    return f"Could not find '{group}/{option}'{hint} (options of {group}: {', '.join(sorted(options))})"


def key_error(key: str, add_hint: str, config: DictConfig, groups: Sequence[str]) -> str | None:
    """None if the key exists. ``trainer.max_step`` -> the first part of the path that does not exist, with the closest key
    at that level (and, at the top, the closest config group)."""
    parts = key.split(".")
    node: Any = config
    for depth, part in enumerate(parts):
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
            continue
        keys = [str(k) for k in node] if isinstance(node, DictConfig) else []
        if depth == 0 and part in groups:
            return f"{key}: this command's config has no {part} (it is a group of another command)"
        candidates = keys + (list(groups) if depth == 0 else [])
        match = closest(part, candidates)
        prefix = ".".join(parts[:depth])
        if match is None:
            where = f"in {prefix}" if prefix else "at the top level"
            return f"{key}: no such key {where}{add_hint}"
        suggestion = ".".join([*parts[:depth], match, *parts[depth + 1 :]])
        kind = "config group or key" if depth == 0 else "key"
        if isinstance(node, DictConfig) and "_target_" in node:
            # The node builds an object: its config file lists the options, so a near miss is a
            # typo, not a new key (which would fail when the object is built).
            add_hint = ""
        return f"{key}: no such {kind}; did you mean {suggestion}?{add_hint}"
    return None


def object_options(node: DictConfig) -> tuple[str, list[str]] | None:
    """The name of the class ``node`` builds (its ``_target_``) and the keyword options it takes,
    or None when it takes any (``**kwargs``) or cannot be imported. A ``Sampler`` takes its own
    options and its algorithm's (``eta`` for ddim); the LightningModule's options leave out the
    arguments its builder supplies."""
    import inspect

    from hydra.utils import get_object

    from difforge.training.config import BUILDER_ARGUMENTS

    try:
        target = get_object(str(node._target_))
        parameters = list(inspect.signature(target).parameters.values())
    except (ImportError, ValueError, TypeError):
        return None
    names = [
        p.name
        for p in parameters
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in BUILDER_ARGUMENTS
    ]
    label = getattr(target, "__name__", str(node._target_))
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        from difforge.diffusion.samplers import Sampler
        from difforge.diffusion.samplers.registry import get_sampler_spec

        if target is not Sampler:
            return None
        try:
            names += get_sampler_spec(str(node.get("algorithm"))).options
        except ValueError:  # an unknown algorithm: the Sampler says so when built
            return None
        label = f"sampler {node.algorithm}"
    return label, names


def added_key_error(key: str, config: DictConfig) -> str | None:
    """None if ``+key`` is an option of the objects on its path; else the first part that is not,
    with the closest option of that object (``+sampler.etaa`` -> ``sampler.eta``)."""
    parts = key.split(".")
    node: Any = config
    for depth, part in enumerate(parts):
        if not isinstance(node, DictConfig) or part not in node:
            return None
        if "_target_" in node and not part.startswith("_"):  # _partial_, _convert_: Hydra's
            found = object_options(node)
            if found is not None and part not in found[1]:
                label, options = found
                match = closest(part, options)
                hint = (
                    f"; did you mean {'.'.join([*parts[:depth], match, *parts[depth + 1 :]])}?"
                    if match
                    else f" (its options: {', '.join(sorted(options))})"
                )
                return f"{key}: {label} has no option {part!r}{hint}"
        node = node[part]
    return None


def one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = error.__cause__
    if cause is not None and str(cause).strip() and str(cause).splitlines()[0] not in str(error):
        lines.append(str(cause).splitlines()[0].strip())
    return " ".join(lines)


def explain(error: BaseException, overrides: list[str], config_name: str) -> str:
    """The one-line message for a composition error of ``overrides``."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException

    loader = GlobalHydra.instance().config_loader()
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, option = str(error.missing_cfg_file).rpartition("/")
        if group:
            options = list(error.options or loader.get_group_options(group))
            return option_error(group, option, options)
    found = re.search(
        r"(?:Could not override|Could not delete from config\.) '([^']+)'", str(error)
    )
    if found is None:
        return one_line(error)
    key = found.group(1)
    culprit = next((o for o in overrides if o.lstrip("~+").split("=", 1)[0] == key), None)
    add_hint = (
        f" (to add a new key: +{culprit.lstrip('+')})"
        if culprit and not culprit.startswith("~")
        else ""
    )
    others = [o for o in overrides if o != culprit]
    try:
        config = compose(config_name, overrides=others, return_hydra_config=True)
    except Exception:
        config = compose(config_name, return_hydra_config=True)
    return key_error(key, add_hint, config, loader.list_groups("")) or one_line(error)


def module_part_error(key: str, value: str | None) -> str | None:
    """None unless ``key`` writes into one of the module's parts (``module.net``,
    ``module.sampler.steps``): those are references to config groups, set in the group itself
    (``model=...``, ``sampler.steps=...``). ``value`` None: the key is deleted."""
    from difforge.training.config import MODULE_PARTS

    parts = key.split(".")
    if len(parts) < 2 or parts[0] != "module" or parts[1] not in MODULE_PARTS:
        return None
    group = MODULE_PARTS[parts[1]]
    part = f"module.{parts[1]}"
    where = "" if len(parts) == 2 else f"{key}: "
    instead = (
        "the module cannot do without it"
        if value is None
        else f"set {'.'.join([group, *parts[2:]])}={value} instead"
    )
    return f"{where}{part} is the {group} group ({part}: ${{{group}}}); {instead}"


def parse_error(error: BaseException, overrides: Sequence[str]) -> str:
    """Hydra's grammar error in one line; a value holding ``=`` (Lightning's checkpoint names,
    ``epoch=0-step=20.ckpt``) is named with the quoting that passes it."""
    unquoted = [o for o in overrides if o.count("=") > 1 and not re.search(r"=\s*['\"]", o)]
    if "mismatched input '='" in str(error) and unquoted:
        key, _, value = unquoted[0].partition("=")
        return f"{unquoted[0]}: a value holding '=' must be quoted: '{key}=\"{value}\"'"
    return one_line(error)


def check_overrides(config_dir: str, config_name: str, argv: Sequence[str]) -> None:
    """Compose ``config_name`` with the overrides in ``argv`` as Hydra will; on a bad override
    print ``error: <one line>`` and exit 1. Sweeps (``-m a=1,2``) are left to Hydra.
    ``HYDRA_FULL_ERROR=1`` skips the check (Hydra's own message and traceback)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    overrides = command_line_overrides(argv)
    if not overrides:
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as error:
        fail(parse_error(error, overrides))
    for override in parsed:
        value = None if override.is_delete() else str(override.input_line).split("=", 1)[-1]
        message = module_part_error(override.key_or_group, value)
        if message is not None:
            fail(message)
    single_overrides = [o for o in parsed if not o.is_sweep_override() and o.input_line]
    single = [str(o.input_line) for o in single_overrides]
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        check_group_sweeps([o for o in parsed if o.is_sweep_override()])
        try:
            config = compose(config_name, overrides=single, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as error:
            fail(explain(error, single, config_name))
        check_added_keys(single_overrides, config)
    check_entry_settings(config_name, config)


def check_entry_settings(config_name: str, config: DictConfig) -> None:
    """The entry point's own keys (:mod:`difforge.cli.settings`), before Hydra writes anything."""
    from difforge.cli.settings import check_settings
    from difforge.errors import DifforgeError

    try:
        check_settings(config_name, config)
    except (ValueError, DifforgeError) as error:
        fail(str(error))


def check_added_keys(overrides: Sequence[Any], config: DictConfig) -> None:
    """``+key=value`` (or ``++``) into a node that builds an object must name one of its options:
    Hydra adds any key, and building the object would fail later, without a suggestion."""
    for override in overrides:
        if (override.is_add() or override.is_force_add()) and not override.is_hydra_override():
            message = added_key_error(override.key_or_group, config)
            if message is not None:
                fail(message)


def check_group_sweeps(sweeps: Sequence[Any]) -> None:
    """``-m schedule=cosine,edm``: every option of a swept config group must exist (the sweep
    itself is composed job by job, by Hydra)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.types import ChoiceSweep

    loader = GlobalHydra.instance().config_loader()
    for sweep in sweeps:
        group = sweep.key_or_group
        options = loader.get_group_options(group)
        # glob(...) picks from the options itself; ranges and intervals are not group choices.
        if not options or sweep.is_delete() or not isinstance(sweep.value(), ChoiceSweep):
            continue
        for option in sweep.sweep_string_iterator():
            if option not in options:
                fail(option_error(group, option, options))


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)
