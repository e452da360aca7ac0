"""``python src/train.py``: train a diffusion model from the composed config."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from difforge.cli.common import instantiate_list, output_dir, print_config
from difforge.errors import DifforgeError
from difforge.training.build import build_module, resolve_precision
from difforge.training.checkpoint import load_checkpoint
from difforge.training.module import effective_batch_size

log = logging.getLogger("difforge")


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """``null`` -> None; ``last`` -> this run's ``checkpoints/last.ckpt`` if present, else the newest
    ``last.ckpt`` among earlier runs of the same task; anything else -> that path, which must exist."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        own = output_dir() / "checkpoints" / "last.ckpt"
        if own.is_file():
            return str(own)
        runs = Path(cfg.paths.log_dir) / cfg.task_name / "runs"
        candidates = sorted(runs.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise DifforgeError(
                f"ckpt_path=last: no checkpoints/last.ckpt in {output_dir()} or under {runs}"
            )
        return str(candidates[-1])
    if not Path(ckpt_path).is_file():
        raise DifforgeError(f"ckpt_path={ckpt_path} does not exist")
    return str(ckpt_path)


def checked_ckpt_path(cfg: DictConfig) -> str | None:
    """The resume checkpoint, after a safe load that refuses damaged or unsafe files clearly."""
    path = resolve_ckpt_path(cfg)
    if path is not None:
        load_checkpoint(path)
    return path


def refuse_ddp_in_basic_multirun(cfg: DictConfig) -> None:
    """Under ``-m`` with Hydra's basic launcher, DDP's extra ranks re-run the whole sweep."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    devices = cfg.trainer.get("devices", 1)
    many = (isinstance(devices, int) and devices > 1) or (
        not isinstance(devices, int) and str(devices) not in ("1", "auto")
    )
    launcher = hydra_cfg.runtime.choices.get("hydra/launcher", "basic")
    if many and launcher == "basic":
        raise DifforgeError(
            f"a multirun (-m) with trainer.devices={devices} under Hydra's basic launcher would re-launch the "
            "whole sweep in every DDP rank; use hydra/launcher=submitit_local or submitit_slurm (one job per run), "
            "or trainer.devices=1"
        )


# Trainer settings that must be integers (None allowed where Lightning allows it).
INTEGER_TRAINER_KEYS = (
    "max_steps",
    "max_epochs",
    "num_nodes",
    "accumulate_grad_batches",
    "log_every_n_steps",
)


def check_trainer_config(trainer_cfg: DictConfig) -> None:
    for key in INTEGER_TRAINER_KEYS:
        value = trainer_cfg.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise DifforgeError(f"trainer.{key} must be an integer, got {value!r}")
    if trainer_cfg.get("max_steps") == 0:
        raise DifforgeError("trainer.max_steps must be positive (or -1 for no limit), got 0")


def train(cfg: DictConfig) -> float | None:
    print_config(cfg)
    check_trainer_config(cfg.trainer)
    refuse_ddp_in_basic_multirun(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    if not cfg.data.get("download", False):
        datamodule.setup("fit")  # missing or unreadable data fail here, before anything heavy
    module = build_module(cfg, tuple(datamodule.data_shape))  # type: ignore[attr-defined]
    callbacks = instantiate_list(cfg.get("callbacks"))
    loggers = instantiate_list(cfg.get("logger"))
    precision = resolve_precision(str(cfg.trainer.precision), str(cfg.trainer.accelerator))
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, precision=precision
    )
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
    hparams: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    hparams["effective_batch_size"] = batch
    hparams["num_parameters"] = sum(p.numel() for p in module.denoiser.parameters())
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
    ckpt_path = checked_ckpt_path(cfg)
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
    if cfg.get("test", False):
        trainer.test(module, datamodule=datamodule)
    write_final_metrics(trainer, cfg)
    log.info("run directory: %s", output_dir())
    value = trainer.callback_metrics.get(cfg.get("optimized_metric", "val/loss"))
    return None if value is None else float(value)


def write_final_metrics(trainer: L.Trainer, cfg: DictConfig) -> None:
    """``final_metrics.json``: the last value of every logged metric and the config choices, for
    sweep summaries (``scripts/summarize_sweep.py``)."""
    if trainer.global_rank != 0:
        return
    choices = dict(HydraConfig.get().runtime.choices)
    summary = {
        "metrics": {
            key: float(value)
            for key, value in trainer.callback_metrics.items()
            if value.numel() == 1
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
