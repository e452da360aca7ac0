"""``python src/train.py``: train a diffusion model from the composed config."""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from torch import Tensor

from difforge.cli.common import instantiate_list, output_dir, print_config
from difforge.diffusion.guidance import check_guidance_trained
from difforge.errors import DifforgeError
from difforge.training.build import (
    build_module,
    check_classes_fit_data,
    resolve_learned_variance,
    resolve_precision,
)
from difforge.training.checkpoint import load_checkpoint
from difforge.training.config import MODEL_GROUPS, plain_config
from difforge.training.fid_callback import BestCheckpoint
from difforge.training.loggers import finishes_wandb_run
from difforge.training.module import STEP_METRIC, DiffusionModule, effective_batch_size

log = logging.getLogger("difforge")


# The config groups that name a run for ``ckpt_path=last``: an earlier run is resumed only if it
# made the same choices (so never another experiment's model).
RUN_IDENTITY_GROUPS = ("experiment", "data", "model", "schedule", "parameterization", "loss")
RUN_FILE = "run.json"  # a run's effective overrides and choices, read by ckpt_path=last


def run_identity(choices: Any) -> dict[str, str | None]:
    return {group: choices.get(group) for group in RUN_IDENTITY_GROUPS}


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """``null`` -> None; ``last`` -> this run directory's ``checkpoints/last.ckpt`` if present;
    else, in a single run, the newest ``last.ckpt`` among earlier runs of the task that made the
    same config group choices (``RUN_IDENTITY_GROUPS``); a sweep job resumes only its own
    directory. Anything else -> that path, which must exist."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is None:
        return None
    if str(ckpt_path) != "last":
        if not Path(ckpt_path).is_file():
            raise DifforgeError(f"ckpt_path={ckpt_path} does not exist")
        return str(ckpt_path)
    own = output_dir() / "checkpoints" / "last.ckpt"
    if own.is_file():
        return str(own)
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        raise DifforgeError(
            f"ckpt_path=last: no {own}; a sweep job resumes only its own directory "
            "(rerun the sweep with hydra.sweep.dir=<its directory>)"
        )
    identity = run_identity(hydra_cfg.runtime.choices)
    runs = Path(cfg.paths.log_dir) / cfg.task_name / "runs"
    candidates = sorted(
        (
            run / "checkpoints" / "last.ckpt"
            for run in runs.glob("*")
            if (run / "checkpoints" / "last.ckpt").is_file()
            and (run / RUN_FILE).is_file()
            and json.loads((run / RUN_FILE).read_text()).get("identity") == identity
        ),
        key=lambda p: p.stat().st_mtime,
    )
    if not candidates:
        named = " ".join(f"{k}={v}" for k, v in identity.items() if v is not None)
        raise DifforgeError(
            f"ckpt_path=last: no run with {named} to resume; looked in {own} and in "
            f"{runs}/*/checkpoints/last.ckpt; name the run with hydra.run.dir=<run directory>"
        )
    return str(candidates[-1])


def override_key(override: str) -> str:
    """``+a.b=1`` / ``~a.b`` / ``a.b=1`` -> ``a.b``."""
    return override.lstrip("~+").split("=", 1)[0]


def merge_overrides(saved: list[str], new: list[str]) -> list[str]:
    """The saved run's overrides with the new ones on top (a new one replaces a saved one with the
    same key)."""
    replaced = {override_key(o) for o in new} | {"ckpt_path"}
    return [o for o in saved if override_key(o) not in replaced] + list(new)


def first_difference(a: Any, b: Any, prefix: str) -> str | None:
    """The first key at which two plain configs differ, with both values, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = first_difference(a.get(key), b.get(key), f"{prefix}.{key}")
            if found:
                return found
        return None
    return None if a == b else f"{prefix}: {a!r} in the checkpoint, {b!r} now"


# What the trained weights mean: a resumed run keeps these groups as the checkpoint saved them
# (config group -> its name in a refusal). Loss and noise law may change (fine-tuning with another
# weighting of the noise levels, as EDM2 does), and so may the module's own settings (lr, EMA...).
RESUME_FIXED_GROUPS = {
    "data": "data",
    "model": "network",
    "schedule": "noise schedule",
    "parameterization": "parameterization",
}
RESUME_FREE_GROUPS = ("loss", "noise_law")
# Data settings a resumed run may change: how the same data are loaded, not which data they are.
RESUMABLE_DATA_KEYS = (
    "batch_size",
    "num_workers",
    "pin_memory",
    "persistent_workers",
    "in_memory",
    "download",
    "root",
    "repeat",
)


def group_difference(
    group: str, saved: Any, now: Any, saved_choice: Any, choice: Any
) -> str | None:
    """How a group of this run differs from the checkpoint's: its choice (``schedule: 'cosine' in
    the checkpoint, 'linear' now``) or else its first differing key; None if the same."""
    if group == "data":
        saved, now = (
            {k: v for k, v in (part or {}).items() if k not in RESUMABLE_DATA_KEYS}
            for part in (saved, now)
        )
    difference = first_difference(saved, now, group)
    if difference and saved_choice is not None and choice is not None and saved_choice != choice:
        return f"{group}: {saved_choice!r} in the checkpoint, {choice!r} now"
    return difference


def check_same_model(
    saved_config: dict[str, Any], effective: DictConfig, choices: Any, ckpt_path: str
) -> None:
    """Refuse a resumed run whose network, schedule, parameterization or data (beyond
    ``RESUMABLE_DATA_KEYS``) differ from the checkpoint's, before any checkpoint, ``run.json`` or
    metric is written; announce
    a change of loss or noise law."""
    saved_choices = saved_config.get("choices") or {}
    for group in (*RESUME_FIXED_GROUPS, *RESUME_FREE_GROUPS):
        if group not in saved_config:  # a checkpoint older than the group: nothing to compare
            continue
        node = effective.get(group)
        now = None if node is None else OmegaConf.to_container(node, resolve=True)
        difference = group_difference(
            group, saved_config[group], now, saved_choices.get(group), choices.get(group)
        )
        if difference is None:
            continue
        if group in RESUME_FREE_GROUPS:
            log.info(
                "resuming with another %s (%s): fine-tuning the trained weights", group, difference
            )
            continue
        raise DifforgeError(
            f"ckpt_path={ckpt_path}: the checkpoint's {RESUME_FIXED_GROUPS[group]} differs from "
            f"this run's ({difference}); a resumed run keeps its data, network, schedule and "
            f"parameterization (of data only {', '.join(RESUMABLE_DATA_KEYS)} may change): "
            "train another model in a new run directory"
        )


def resumed_config(cfg: DictConfig, ckpt_path: str, checkpoint: dict[str, Any]) -> DictConfig:
    """The config of a resumed run: the checkpoint's run overrides with this command's on top.

    Recomposed with Hydra, so group choices (``experiment=gmm1d``) carry over too; Hydra's runtime
    record (choices, overrides, ``.hydra/``) is updated to the effective run.
    """
    from hydra import compose

    saved_config = checkpoint["difforge"]["config"]
    saved = saved_config.get("overrides")
    hydra_cfg = HydraConfig.get()
    if saved is None:
        log.warning(
            "%s holds no run overrides (written by an older difforge): resuming with this command's config only",
            ckpt_path,
        )
        merged = list(hydra_cfg.overrides.task)
        effective = cfg
    else:
        merged = merge_overrides(list(saved), list(hydra_cfg.overrides.task))
        composed = compose(config_name="train", overrides=merged, return_hydra_config=True)
        updated = OmegaConf.create({"hydra": copy.deepcopy(hydra_cfg)})
        with read_write(updated.hydra.runtime), read_write(updated.hydra.overrides):
            updated.hydra.runtime.choices = composed.hydra.runtime.choices
            updated.hydra.overrides.task = merged
        HydraConfig.instance().set_config(updated)
        hydra_cfg = HydraConfig.get()
        with open_dict(composed):
            del composed["hydra"]
        effective = composed
        log.info(
            "resuming with the run's overrides and this command's on top: %s", " ".join(merged)
        )
    resolve_learned_variance(effective)  # as the checkpoint's saved model config has it
    check_same_model(saved_config, effective, hydra_cfg.runtime.choices, str(cfg.ckpt_path))
    if hydra_cfg.output_subdir is not None:
        record = output_dir() / str(hydra_cfg.output_subdir)
        record.mkdir(parents=True, exist_ok=True)
        (record / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(merged)))
        (record / "config.yaml").write_text(OmegaConf.to_yaml(effective))
    return effective


def write_run_file(cfg: DictConfig) -> None:
    """``run.json``: the effective overrides and group choices, for ``ckpt_path=last``."""
    hydra_cfg = HydraConfig.get()
    record = {
        "identity": run_identity(hydra_cfg.runtime.choices),
        "overrides": list(hydra_cfg.overrides.task),
    }
    (output_dir() / RUN_FILE).write_text(json.dumps(record, indent=2))


def check_launch(trainer: L.Trainer, cfg: DictConfig) -> None:
    """Before any process starts, on the devices Lightning resolved (``4``, ``-1``, ``auto``...):
    refuse several processes per job in a multirun under Hydra's basic launcher (DDP's extra
    ranks would re-run the whole sweep), and announce several processes on the CPU."""
    from lightning.pytorch.accelerators import CPUAccelerator

    processes = trainer.num_devices * trainer.num_nodes
    devices = cfg.trainer.get("devices")
    hydra_cfg = HydraConfig.get()
    launcher = hydra_cfg.runtime.choices.get("hydra/launcher", "basic")
    if hydra_cfg.mode == RunMode.MULTIRUN and processes > 1 and launcher == "basic":
        raise DifforgeError(
            f"a multirun (-m) with trainer.devices={devices} ({processes} processes per run) under Hydra's "
            "basic launcher would re-launch the whole sweep in every DDP rank; use "
            "hydra/launcher=submitit_local or submitit_slurm (one job per run), or trainer.devices=1"
        )
    if processes > 1 and isinstance(trainer.accelerator, CPUAccelerator):
        log.warning(
            "trainer.devices=%s on the CPU (%s): %d training processes will share %d CPU cores; "
            "trainer.devices=1 trains in one process",
            devices,
            "no GPU found" if cfg.trainer.get("accelerator") == "auto" else "accelerator=cpu",
            processes,
            os.cpu_count() or 1,
        )


def check_inception_weights(cfg: DictConfig, datamodule: Any, callbacks: list[Any]) -> None:
    """``metrics.inception_weights`` only feeds the FID callback's Inception network: refuse it
    where no Inception FID runs (no FID callback, vector data, data with its own classifier)."""
    weights = OmegaConf.select(cfg, "metrics.inception_weights")
    if not weights:
        return
    from difforge.metrics.features import classifier_for
    from difforge.training.fid_callback import FIDCallback

    reason = None
    if not any(isinstance(callback, FIDCallback) for callback in callbacks):
        reason = "this run has no FID callback"
    elif getattr(datamodule, "kind", "image") != "image":
        reason = "the data are vectors (no FID)"
    elif classifier_for(datamodule) is not None:
        reason = "this data's FID uses its own classifier's features, not Inception"
    if reason is not None:
        raise DifforgeError(f"metrics.inception_weights={weights} cannot apply: {reason}")


@finishes_wandb_run
def train(cfg: DictConfig) -> float | None:
    ckpt_path = resolve_ckpt_path(cfg)
    checkpoint = None
    if ckpt_path is not None:
        checkpoint = load_checkpoint(ckpt_path)
        cfg = resumed_config(cfg, ckpt_path, checkpoint)
    print_config(cfg)
    # Before the data and the model are built: a precision that cannot run here is refused first.
    precision = resolve_precision(str(cfg.trainer.precision), str(cfg.trainer.accelerator))
    finished = checkpoint is not None and nothing_left_to_train(
        cfg, ckpt_path, checkpoint["global_step"]
    )
    if finished and not cfg.get("test", False):
        return stored_optimized_value(cfg, Path(str(ckpt_path)))
    L.seed_everything(cfg.seed, workers=True)
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    if not cfg.data.get("download", False):
        datamodule.setup("fit")  # missing or unreadable data fail here, before anything heavy
    choices = HydraConfig.get().runtime.choices
    run = {
        "overrides": list(HydraConfig.get().overrides.task),
        "choices": {group: choices[group] for group in MODEL_GROUPS if choices.get(group)},
    }
    check_classes_fit_data(cfg)
    module = build_module(cfg, tuple(datamodule.data_shape), run)  # type: ignore[attr-defined]
    check_guidance_trained(module.guidance_scale, module.class_dropout, "module.guidance_scale")
    callbacks = instantiate_list(cfg.get("callbacks"))
    check_inception_weights(cfg, datamodule, callbacks)
    loggers = instantiate_list(cfg.get("logger"))
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, precision=precision
    )
    check_launch(trainer, cfg)
    batch = effective_batch_size(
        cfg.data.batch_size, trainer.num_devices, trainer.num_nodes, trainer.accumulate_grad_batches
    )
    log.info(
        "effective batch size %d (per device %d x %d devices x %d nodes x %d accumulation); lr %g (not rescaled)",
        batch,
        cfg.data.batch_size,
        trainer.num_devices,
        trainer.num_nodes,
        trainer.accumulate_grad_batches,
        cfg.module.lr,
    )
    hparams = plain_config(cfg)
    hparams["effective_batch_size"] = batch
    hparams["num_parameters"] = sum(p.numel() for p in module.denoiser.parameters())
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
    if finished:  # test=true on a finished run: its weights, no training, no checkpoint written
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        return stored_optimized_value(cfg, Path(str(ckpt_path)))
    if trainer.global_rank == 0:
        write_run_file(cfg)
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    if cfg.get("train", True):
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SIGTERMException:
            log.info(
                "stopped by SIGTERM at step %d; resume with ckpt_path=last hydra.run.dir=%s",
                trainer.global_step,
                output_dir(),
            )
            return None
        metrics = validate_final_weights(trainer, module, datamodule)
    else:
        metrics = dict(trainer.callback_metrics)
    if cfg.get("test", False):
        trainer.test(module, datamodule=datamodule)
        metrics.update(trainer.callback_metrics)
    value = optimized_value(metrics, cfg)
    write_final_metrics(trainer, module, metrics, cfg)
    log.info("run directory: %s", output_dir())
    return value


def nothing_left_to_train(cfg: DictConfig, ckpt_path: str | None, step: int) -> bool:
    """A resumed run whose checkpoint already reached ``trainer.max_steps`` says so in one line
    and stops before anything is written (Lightning would restore, train nothing, and the end of
    the run would validate and rewrite the checkpoints)."""
    max_steps = cfg.trainer.get("max_steps")
    if not cfg.get("train", True) or max_steps is None or max_steps < 0 or step < max_steps:
        return False
    log.info(
        "nothing left to train: %s is at step %d, trainer.max_steps=%d; raise trainer.max_steps "
        "to train on (%s)",
        ckpt_path,
        step,
        max_steps,
        "testing it; no checkpoint is written"
        if cfg.get("test", False)
        else "no checkpoint or metric was written",
    )
    return True


def stored_optimized_value(cfg: DictConfig, ckpt_path: Path) -> float | None:
    """The value of ``optimized_metric`` that the checkpoint's run recorded at its end
    (``final_metrics.json`` beside ``checkpoints/``), for a sweeper re-running a finished job."""
    name = cfg.get("optimized_metric")
    summary = ckpt_path.parent.parent / "final_metrics.json"
    if name is None or not summary.is_file():
        return None
    value = json.loads(summary.read_text()).get("metrics", {}).get(name)
    return None if value is None else float(value)


def validate_final_weights(
    trainer: L.Trainer, module: DiffusionModule, datamodule: L.LightningDataModule
) -> dict[str, Tensor]:
    """Validate once more after ``fit`` unless every validation metric (FID included) was
    measured at the last step, so that a run's metrics are those of its final weights (the FID
    callback evaluates in this validation; a run shorter than an epoch gets its first one here);
    ``BestCheckpoint`` keeps the result if it is among the best. Returns every metric of the
    run, the fit's with the final validation's on top (a validation starts Lightning's
    ``callback_metrics`` afresh)."""
    metrics = dict(trainer.callback_metrics)
    steps = {name: step for name, step in module.metric_steps.items() if name.startswith("val/")}
    if steps and all(step == trainer.global_step for step in steps.values()):
        return metrics
    trainer.validate(module, datamodule=datamodule, verbose=False)
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, BestCheckpoint):
            callback.save_after_fit(trainer)
    return {**metrics, **trainer.callback_metrics}


def optimized_value(metrics: Mapping[str, Tensor], cfg: DictConfig) -> float | None:
    """The value of ``optimized_metric`` among the run's final ``metrics``, for sweepers (the
    final weights' after :func:`validate_final_weights`)."""
    name = cfg.get("optimized_metric")
    if name is None or not cfg.get("train", True):
        value = metrics.get(name) if name else None
        return None if value is None else float(value)
    if name not in metrics:
        logged = ", ".join(sorted(metrics)) or "none"
        raise DifforgeError(
            f"optimized_metric={name} was not logged by this run (logged: {logged}); "
            "choose one of those (val/fid needs image data and callbacks.fid)"
        )
    return float(metrics[name])


def write_final_metrics(
    trainer: L.Trainer, module: DiffusionModule, metrics: Mapping[str, Tensor], cfg: DictConfig
) -> None:
    """``final_metrics.json``: the last value of every logged metric, the global step of the
    weights each one measured (``metric_steps``), and the config choices, for sweep summaries
    (``scripts/summarize_sweep.py``)."""
    if trainer.global_rank != 0:
        return
    choices = dict(HydraConfig.get().runtime.choices)
    values = {
        key: float(value)
        for key, value in metrics.items()
        if value.numel() == 1 and key != STEP_METRIC
    }
    summary = {
        "metrics": values,
        "metric_steps": {
            key: module.metric_steps[key] for key in values if key in module.metric_steps
        },
        "choices": {
            key: value
            for key, value in choices.items()
            if not key.startswith("hydra/") and value is not None
        },
        "global_step": trainer.global_step,
        "overrides": list(HydraConfig.get().overrides.task),
    }
    (output_dir() / "final_metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
