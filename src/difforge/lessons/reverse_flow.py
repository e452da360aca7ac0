"""Lesson 2, the reverse flow (docs/guide.md, section 2).

Particles start from the prior and flow to the three modes of ``cfg.data`` (gmm1d): under the
exact denoiser of the mixture (the oracle) and under an MLP trained on it, with a stochastic
sampler (``cfg.stochastic``: ancestral DDPM, the reverse SDE) and with a probability-flow ODE
solver (``cfg.ode``: DDIM with eta = 0). Paths (``difforge.lessons.trajectories``) are drawn over
the exact density of q(x_t). Without ``cfg.ckpt_path`` the MLP is trained with
``python src/train.py experiment=gmm1d`` into ``cfg.train.dir`` (``train_checkpoint``; reused on
later runs unless ``train.retrain=true``).

``run(cfg)`` writes reverse_flow.png and reverse_flow.json to ``cfg.out_dir`` and returns the
summary.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from difforge.diffusion.gaussian_mixture import GaussianMixture, GaussianMixtureOracle
from difforge.diffusion.samplers import Sampler
from difforge.diffusion.samplers.common import DenoiserFn
from difforge.diffusion.schedules import NoiseSchedule, require_discrete
from difforge.lessons import blurring
from difforge.lessons.script import config_mixture
from difforge.lessons.trajectories import crossings, record_trajectories
from difforge.metrics.mixture import mixture_metrics, mode_assignments

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("difforge")


def run(cfg: DictConfig) -> dict[str, Any]:
    """The lesson: reverse_flow.png and reverse_flow.json in ``cfg.out_dir``; returns the
    summary (the checkpoint, and per model and sampler: NFE, order swaps, metrics)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from difforge.lessons import plots
    from difforge.training.build import module_from_checkpoint

    out = Path(cfg.out_dir)
    mixture = config_mixture(cfg, "data", dim=1)  # the lesson draws 1-D paths
    samplers = {"stochastic": instantiate(cfg.stochastic), "ode": instantiate(cfg.ode)}
    ckpt_path = cfg.ckpt_path
    if ckpt_path is None:
        ckpt_path = train_checkpoint(cfg, HydraConfig.get().runtime.choices["data"])
    module, train_cfg = module_from_checkpoint(ckpt_path)
    if "weights" not in train_cfg.data or module.data_shape != (1,):
        raise ValueError(f"{ckpt_path} was not trained on a 1-D Gaussian mixture")
    trained_law: list[Any] = [
        OmegaConf.to_container(train_cfg.data[k]) for k in ("weights", "means", "stds")
    ]
    models = {
        "exact oracle": (
            GaussianMixtureOracle(mixture),
            instantiate(cfg.schedule),
            mixture,
            torch.float64,
        ),
        "trained MLP": (
            module.sampling_denoiser(),
            module.schedule,
            GaussianMixture(*trained_law),
            torch.float32,
        ),
    }
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    background: dict[str, dict[str, Any]] = {}
    summary: dict[str, Any] = {"ckpt_path": str(ckpt_path), "panels": {}}
    for model_name, (denoiser, schedule, law, dtype) in models.items():
        background[model_name] = density_background(law, schedule)
        rows[model_name] = {}
        for role, sampler in samplers.items():
            rows[model_name][role], summary["panels"][f"{model_name} / {role}"] = paths_panel(
                denoiser, schedule, sampler, law, dtype, cfg
            )
            log.info("%-12s %-10s %s", model_name, role, rows[model_name][role]["label"])
    plots.plot_reverse_flow(
        rows,
        background,
        out / "reverse_flow.png",
        title="the reverse process: particle paths over the exact density of $q(x_t)$",
    )
    (out / "reverse_flow.json").write_text(json.dumps(summary, indent=2))
    log.info("wrote %s", out / "reverse_flow.png")
    return summary


def density_background(law: GaussianMixture, schedule: NoiseSchedule) -> dict[str, Any]:
    """The exact density of q(x_t) every 5 timesteps, and of the data: the panels' background."""
    discrete = require_discrete(schedule, "this lesson")
    x_grid = blurring.grid_1d(law, 1.0, 400, margin=4.0)
    t_grid = list(range(0, discrete.num_timesteps + 1, 5))
    density = [
        blurring.marginal_density(law, x_grid[:, None], blurring.abar_at(discrete, t))
        for t in t_grid
    ]
    return {
        "t": t_grid,
        "x": x_grid.numpy(),
        "density": torch.stack(density).numpy(),
        "data_density": law.log_prob(x_grid[:, None]).exp().numpy(),
    }


def paths_panel(
    denoiser: DenoiserFn,
    schedule: NoiseSchedule,
    sampler: Sampler,
    law: GaussianMixture,
    dtype: torch.dtype,
    cfg: DictConfig,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One sampler's paths under one model: the figure's panel and the summary's entry."""
    paths = record_trajectories(
        denoiser, schedule, sampler, int(cfg.num_samples), 1, int(cfg.seed), dtype
    )
    samples = paths.samples
    metrics = mixture_metrics(samples, law)
    swaps = crossings(paths, max_particles=500)
    shown = int(cfg.num_paths)
    kind = "SDE" if sampler.stochastic else "ODE"
    panel = {
        "t": paths.t.numpy(),
        "x": paths.x[:, :shown, 0].numpy(),
        "colour_index": mode_assignments(samples[:shown], law).numpy(),
        "samples": samples[:, 0].numpy(),
        "label": f"{sampler.algorithm} ({kind}), NFE {paths.nfe}: "
        f"W1 {metrics['w1']:.3f}, order swaps {swaps}",
        "short": f"{sampler.algorithm} ({kind})",
    }
    entry = {
        "sampler": repr(sampler),
        "kind": kind,
        "nfe": paths.nfe,
        "order_swaps_among_500": swaps,
        **{k: v for k, v in metrics.items() if k != "nll"},
    }
    return panel, entry


def train_checkpoint(cfg: DictConfig, data_choice: str) -> Path:
    """``checkpoints/last.ckpt`` of an MLP trained on ``cfg.data`` (config ``data_choice``) by the
    training CLI into ``cfg.train.dir``, or the one already there unless ``cfg.train.retrain``.

    Raises:
        RuntimeError: the training run failed (with the end of its stderr).
    """
    from omegaconf import OmegaConf

    root = Path(os.environ["PROJECT_ROOT"])
    run_dir = Path(cfg.train.dir)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if checkpoint.exists() and not cfg.train.retrain:
        log.info("reusing %s (train.retrain=true trains again)", checkpoint)
        return checkpoint
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    data_overrides = [
        f"data.{key}={json.dumps(OmegaConf.to_container(cfg.data[key]), separators=(',', ':'))}"
        for key in ("weights", "means", "stds")
        if cfg.data.get(key) is not None
    ]
    command = [
        sys.executable,
        str(root / "src" / "train.py"),
        "experiment=gmm1d",
        f"data={data_choice}",
        *data_overrides,
        f"trainer.max_steps={int(cfg.train.max_steps)}",
        f"hydra.run.dir={run_dir}",
        "logger=csv",
        "print_config=false",
        *cfg.train.overrides,
    ]
    log.info("training an MLP (%d steps): %s", cfg.train.max_steps, " ".join(command[1:]))
    environment = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, env=environment)
    if result.returncode != 0 or not checkpoint.exists():
        raise RuntimeError(f"training failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return checkpoint
