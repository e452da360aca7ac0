"""Each entry point's own settings, declared once by type and range: the keys of
``configs/sample.yaml``, ``eval.yaml``, ``restore.yaml`` and ``train.yaml`` (and the Lightning
trainer's, which no difforge class checks), checked as one table by :func:`check_settings`.

The check runs twice, with the same table: on the composed command line before Hydra starts
(``difforge.cli.overrides``, so a bad value costs about a second and writes nothing), and at the
start of each run (``run_command``: each job of a sweep, and runs under ``HYDRA_FULL_ERROR=1``).
A bad value is one line, ``<key> must be <what is allowed>, got <value>``, from
:mod:`difforge.checks`, before any count reaches torch. The settings of the config groups'
objects (sampler, schedule, data...) are checked where those objects are built.

Imports the standard library, OmegaConf and :mod:`difforge.checks` only; torch only to look for a
device that is named (``device=cuda``, ``trainer.accelerator=gpu``).
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from difforge.checks import check_choice, check_flag, check_int, check_real
from difforge.errors import DifforgeError

Check = Callable[[str, Any], object]


def integer(minimum: int, maximum: int | None = None) -> Check:
    return lambda key, value: check_int(key, value, minimum, maximum=maximum)


def number(low: float, high: float = math.inf, **options: Any) -> Check:
    return lambda key, value: check_real(key, value, low, high, **options)


def choice(*allowed: Any) -> Check:
    return lambda key, value: check_choice(key, value, allowed)


def optional(check: Check, null_means: str) -> Check:
    """``check``, or null; the message says what null means."""

    def checked(key: str, value: Any) -> object:
        if value is None:
            return None
        try:
            return check(key, value)
        except (ValueError, DifforgeError) as error:
            raise ValueError(f"{error} (or null: {null_means})") from None

    return checked


def text(key: str, value: Any) -> str:
    """A non-empty string (a path)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key} must be a non-empty text, got {value!r}")
    return value


def name(key: str, value: Any) -> str:
    """A non-empty name; Hydra reads ``run_name=5`` as a number, which names a run as well."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return text(key, value)


def texts(key: str, value: Any) -> list[str]:
    """A list of non-empty strings (``tags``)."""
    if not isinstance(value, (list, ListConfig)):
        raise ValueError(f"{key} must be a list of texts ([a, b]), got {value!r}")
    return [text(f"{key}[{index}]", item) for index, item in enumerate(value)]


def unlimited_or_positive(key: str, value: Any) -> object:
    """Lightning's step and epoch limits: a positive integer, or -1 for no limit (0 would train
    nothing and still write checkpoints)."""
    if value == -1 and not isinstance(value, bool):
        return -1
    return either(key, value, lambda: check_int(key, value, 1), "an integer >= 1 or -1 (no limit)")


def either(key: str, value: Any, check: Callable[[], object], allowed: str) -> object:
    """``check()``, whose error is replaced by ``<key> must be <allowed>``: for a setting that
    takes values of several kinds."""
    try:
        return check()
    except ValueError:
        raise ValueError(f"{key} must be {allowed}, got {value!r}") from None


def device(key: str, value: Any) -> object:
    """A torch device name that this machine has (:func:`difforge.devices.resolve_device`)."""
    if value in ("auto", "cpu"):  # always there: no torch import for the common case
        return value
    from difforge.devices import resolve_device

    return resolve_device(value, key)


def accelerator(key: str, value: Any) -> object:
    """A Lightning accelerator that this machine has (:func:`difforge.devices.check_accelerator`)."""
    if value in ("auto", "cpu"):
        return value
    from difforge.devices import check_accelerator

    return check_accelerator(value, key)


def trainer_devices(key: str, value: Any) -> object:
    """Lightning's ``devices``: a count >= 1, -1 or ``auto`` (all there are), or a list of device
    indices."""
    if value in (-1, "auto") and not isinstance(value, bool):
        return value
    if isinstance(value, (list, ListConfig)) and value:
        return [check_int(f"{key}[{index}]", item, 0) for index, item in enumerate(value)]
    allowed = "an integer >= 1, -1 or auto (every device), or a list of device indices"
    return either(key, value, lambda: check_int(key, value, 1), allowed)


def batches_limit(key: str, value: Any) -> object:
    """Lightning's ``limit_*_batches``: a count of batches (int >= 0) or a fraction in [0, 1]."""
    allowed = "a number of batches (integer >= 0) or a fraction in [0, 1]"
    if isinstance(value, float):
        return either(key, value, lambda: check_real(key, value, 0, 1), allowed)
    return either(key, value, lambda: check_int(key, value, 0), allowed)


def validation_interval(key: str, value: Any) -> object:
    """Lightning's ``val_check_interval``: every N steps (int >= 1) or a fraction of an epoch in
    (0, 1]."""
    allowed = "a number of steps (integer >= 1) or a fraction of an epoch in (0, 1]"
    if isinstance(value, float):
        return either(key, value, lambda: check_real(key, value, 0, 1, low_open=True), allowed)
    return either(key, value, lambda: check_int(key, value, 1), allowed)


def deterministic(key: str, value: Any) -> object:
    """Lightning's ``deterministic``: true, false, or ``warn`` (warn on nondeterministic ops)."""
    if value == "warn":
        return value
    allowed = "true, false or warn (warn on nondeterministic operations)"
    return either(key, value, lambda: check_flag(key, value), allowed)


flag = check_flag
# numpy's seeds, which Lightning's seed_everything and the data splits use, are 32-bit.
SEED = integer(0, 2**32 - 1)

# Keys every command has.
COMMON: dict[str, Check] = {
    "task_name": name,
    "seed": SEED,
    "print_config": flag,
    "traceback": flag,
}
# The keys sample.yaml and eval.yaml share.
SAMPLING: dict[str, Check] = {
    **COMMON,
    "ckpt_path": optional(text, "no checkpoint, for model=gmm_oracle"),
    "pretrained": optional(text, "no diffusers folder"),
    "num_samples": integer(1),
    "batch_size": integer(1),
    "device": device,
    "use_ema": flag,
    "guidance_scale": optional(
        number(0, meaning="0: unconditional, 1: no guidance"), "the checkpoint's"
    ),
    "class_label": optional(integer(0), "every class in turn"),
}
TRAINER: dict[str, Check] = {
    "trainer.default_root_dir": text,
    "trainer.accelerator": accelerator,
    "trainer.devices": trainer_devices,
    "trainer.num_nodes": integer(1),
    "trainer.max_steps": unlimited_or_positive,
    "trainer.max_epochs": optional(unlimited_or_positive, "no limit of epochs"),
    "trainer.gradient_clip_val": optional(number(0), "no clipping"),
    "trainer.accumulate_grad_batches": integer(1),
    "trainer.log_every_n_steps": integer(1),
    "trainer.val_check_interval": optional(validation_interval, "once per epoch"),
    "trainer.check_val_every_n_epoch": optional(integer(1), "by val_check_interval only"),
    "trainer.limit_train_batches": batches_limit,
    "trainer.limit_val_batches": batches_limit,
    "trainer.limit_test_batches": batches_limit,
    "trainer.deterministic": deterministic,
    "trainer.benchmark": optional(flag, "cudnn's default"),
}
SETTINGS: dict[str, dict[str, Check]] = {
    "sample": {**SAMPLING, "noise": optional(text, "drawn from seed")},
    "eval": {
        **SAMPLING,
        "seeds": integer(1),
        "nll.enabled": flag,
        "nll.num_points": integer(1),
        "nll.method": choice("auto", "vlb", "ode"),
        "nll.ode_steps": optional(integer(1), "50"),
        "metrics.inception_weights": optional(text, "torch-fidelity's download cache"),
        "metrics.fid_ref": optional(text, "the model's own test split"),
        "metrics.precision_recall": optional(flag, "when fid_ref holds images"),
        "metrics.dinov2_weights": optional(text, "no FD_DINOv2"),
        "metrics.dinov2_ref": optional(text, "from fid_ref's images"),
    },
    "restore": {
        **COMMON,
        "ckpt_path": SAMPLING["ckpt_path"],
        "pretrained": optional(text, "no diffusers folder (needs input=)"),
        "input": optional(text, "the test split"),
        "num_inputs": integer(1),
        "num_samples_per_input": integer(1),
        "sigma_y": number(0),
        "batch_size": integer(1),
        "device": device,
        "use_ema": flag,
        "metrics.fid": optional(flag, "where the data have images"),
        "metrics.inception_weights": optional(text, "torch-fidelity's download cache"),
    },
    "train": {
        **COMMON,
        "tags": texts,
        "run_name": name,
        "sigma_data": number(0, low_open=True),
        "train": flag,
        "test": flag,
        "ckpt_path": optional(text, "a fresh start"),
        "optimized_metric": optional(text, "none returned to a sweeper"),
        "metrics.inception_weights": optional(text, "torch-fidelity's download cache"),
        **TRAINER,
    },
}


def check_settings(command: str, cfg: DictConfig, table: Mapping[str, Check] | None = None) -> None:
    """Check every key of ``SETTINGS[command]`` (or ``table``) that ``cfg`` holds; raise the first
    bad one's one-line ValueError or DifforgeError. Keys absent from ``cfg`` (an optional
    Lightning limit) and values that cannot be resolved yet (``${hydra:...}`` outside a run) are
    left out."""
    for key, check in (SETTINGS[command] if table is None else table).items():
        node, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, node) if node else cfg
        if not isinstance(parent, DictConfig) or leaf not in parent:
            continue
        if OmegaConf.is_interpolation(parent, leaf) and not _resolvable(parent, leaf):
            continue
        check(key, parent[leaf])


def _resolvable(node: DictConfig, key: str) -> bool:
    from omegaconf.errors import InterpolationResolutionError

    try:
        node[key]
    except InterpolationResolutionError:  # a resolver that needs the running app (${hydra:...})
        return False
    return True


# The config groups whose objects each command builds from the config, walked by
# check_object_settings. Not walked: the trainer (the table above), the module's settings
# (DiffusionModule checks them), the loggers (third-party); sample and eval read the data config
# for its mixture only (data.mixtures.known_mixture checks it), without importing Lightning.
OBJECT_GROUPS = {
    "sample": ("model", "schedule", "sampler"),
    "eval": ("model", "schedule", "sampler"),
    "restore": ("model", "schedule", "operator", "posterior"),
    "train": (
        "data",
        "model",
        "schedule",
        "parameterization",
        "loss",
        "noise_law",
        "sampler",
        "callbacks",
    ),
}
# Plain annotations a value can be checked against, with what the message says is allowed.
# Settings whose null the builder replaces before the class sees it (training.build).
FILLED_IN_WHEN_NULL = {"model.learned_variance"}
UNIONS = (typing.Union, types.UnionType)
PLAIN_TYPES: dict[type, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a text",
}


def check_object_settings(command: str, cfg: DictConfig) -> None:
    """The type of every value given to an object that ``command`` builds from a group of ``cfg``
    (``OBJECT_GROUPS``: a node with ``_target_``, and those inside it), against the annotation
    of the matching argument of its class: a text, a null or a fraction where the class declares
    ``int``, ``float`` or ``bool`` is one line naming the key, before the class compares it with
    a number (``'<' not supported``) or keeps it (``pin_memory='abc'``). The ranges are the
    classes' own checks. Imports each target (torch for difforge's)."""
    for group in OBJECT_GROUPS[command]:
        node = cfg.get(group)
        if isinstance(node, DictConfig):
            _check_objects(node, group)


def _check_objects(node: DictConfig, name: str) -> None:
    """The values of ``node`` (the config node ``name``) and of the nodes inside it."""
    if "_target_" in node:
        for argument, annotation in argument_types(
            str(node._target_), node.get("algorithm")
        ).items():
            setting = f"{name}.{argument}"
            if argument not in node or OmegaConf.is_interpolation(node, argument):
                continue
            if node[argument] is None and setting in FILLED_IN_WHEN_NULL:
                continue
            check_annotated(setting, node[argument], annotation)
    for key in map(str, node):
        if OmegaConf.is_interpolation(node, key) and not _resolvable(node, key):
            continue
        if isinstance(node[key], DictConfig):
            _check_objects(node[key], f"{name}.{key}")


def argument_types(target: str, algorithm: object = None) -> dict[str, Any]:
    """The annotations of the keyword arguments of ``target``, resolved one by one (an annotation
    naming a type imported for type checking only is left out); a ``Sampler``'s include its
    ``algorithm``'s options. {} for a target that cannot be imported."""
    from hydra.utils import get_object

    try:
        obj = get_object(target)
    except (ImportError, ValueError):
        return {}
    types = annotations_of(obj)
    from difforge.diffusion.samplers import Sampler

    if obj is Sampler:
        from difforge.diffusion.samplers.registry import get_sampler_spec

        try:
            options = annotations_of(get_sampler_spec(str(algorithm)).fn)
        except ValueError:  # an unknown algorithm: the Sampler says so when built
            return types
        # null: the solver's default for the schedule's kind (SamplerSpec.defaults).
        types = {**{k: typing.Optional[v] for k, v in options.items()}, **types}  # noqa: UP045
    return types


def annotations_of(obj: Any) -> dict[str, Any]:
    """The resolved annotations of ``obj``'s arguments; a class that passes ``**kwargs`` on
    (``PeriodicCheckpoint`` to Lightning's ``ModelCheckpoint``) adds its bases' arguments."""
    import inspect

    types = _own_annotations(obj)
    if inspect.isclass(obj) and _takes_kwargs(obj):
        for base in obj.__mro__[1:]:
            if base is not object and "__init__" in vars(base):
                types = {**_own_annotations(base), **types}
                if not _takes_kwargs(base):
                    break
    return types


def _takes_kwargs(obj: Any) -> bool:
    import inspect

    try:
        parameters = inspect.signature(obj).parameters.values()
    except (ValueError, TypeError):
        return False
    return any(p.kind is p.VAR_KEYWORD for p in parameters)


def _own_annotations(obj: Any) -> dict[str, Any]:
    import inspect
    import sys

    try:
        parameters = inspect.signature(obj).parameters.values()
    except (ValueError, TypeError):
        return {}
    module = sys.modules.get(getattr(obj, "__module__", ""), None)
    namespace = vars(module) if module is not None else {}
    types: dict[str, Any] = {}
    for parameter in parameters:
        annotation = parameter.annotation
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # the class's own annotation text
            except (NameError, AttributeError, SyntaxError, TypeError):
                continue  # a name imported for type checking only: not checked here
                continue
        types[parameter.name] = annotation
    return types


def check_annotated(key: str, value: Any, annotation: Any) -> None:
    """``value`` against an annotation made of plain types, literal values and None
    (``int``, ``float | None``, ``bool | Literal["link"] | None``); other annotations (sequences,
    classes) are left to the class."""
    members = typing.get_args(annotation) if typing.get_origin(annotation) in UNIONS else ()
    kinds: list[type] = []
    literals: list[Any] = []
    optional = False
    for member in members or (annotation,):
        if member is type(None):
            optional = True
        elif typing.get_origin(member) is typing.Literal:
            literals += typing.get_args(member)
        elif member in PLAIN_TYPES:
            kinds.append(member)
        else:
            return
    if value is None and optional:
        return
    if any(type(value) is type(literal) and value == literal for literal in literals):
        return
    for kind in kinds:
        accepted = (int, float) if kind is float else kind  # YAML's `1` for a float
        if isinstance(value, bool) is (kind is bool) and isinstance(value, accepted):
            return
    allowed = [PLAIN_TYPES[kind] for kind in kinds] + [repr(literal) for literal in literals]
    allowed += ["null"] if optional else []
    listed = f"{', '.join(allowed[:-1])} or {allowed[-1]}" if len(allowed) > 1 else allowed[0]
    raise ValueError(f"{key} must be {listed}, got {value!r}")
