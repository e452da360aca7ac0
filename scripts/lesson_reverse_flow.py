"""Lesson 2, the reverse flow (docs/guide.md, section 2).

    python scripts/lesson_reverse_flow.py                       # trains an MLP first (~1-2 min)
    python scripts/lesson_reverse_flow.py ckpt_path=CKPT        # or uses a trained checkpoint
    python scripts/lesson_reverse_flow.py out_dir=docs/figures  # regenerate the guide's figure
    python scripts/lesson_reverse_flow.py sampler@stochastic=euler stochastic.S_churn=40

Particles start from N(0, I) and flow to the three modes of ``data`` (gmm1d): under the exact
denoiser of the mixture (the oracle) and under an MLP trained on it, with a stochastic sampler
(``stochastic``: ancestral DDPM, the reverse SDE) and with a probability-flow ODE solver
(``ode``: DDIM with eta = 0). Paths are drawn over the exact density of q(x_t). Without
``ckpt_path`` the MLP is trained with ``python src/train.py experiment=gmm1d`` into ``train.dir``
(reused on later runs unless ``train.retrain=true``). Writes reverse_flow.png and
reverse_flow.json to ``out_dir``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
log = logging.getLogger("difforge")


def train_mlp(cfg: DictConfig, data_choice: str) -> Path:
    """``checkpoints/last.ckpt`` of an MLP trained on ``cfg.data`` with the training CLI."""
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
        str(ROOT / "src" / "train.py"),
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
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=environment)
    if result.returncode != 0 or not checkpoint.exists():
        raise RuntimeError(f"training failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return checkpoint


def sampler_kind(sampler) -> str:
    options = sampler.options
    stochastic = (
        sampler.algorithm == "ddpm"
        or (sampler.algorithm == "ddim" and options.get("eta", 0) > 0)
        or options.get("S_churn", 0) > 0
    )
    return "SDE" if stochastic else "ODE"


def reverse_flow(cfg: DictConfig) -> dict:
    import torch
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from difforge.diffusion.gaussian_mixture import GaussianMixture, GaussianMixtureOracle
    from difforge.diffusion.schedules import require_discrete
    from difforge.lessons import blurring, plots
    from difforge.lessons.script import config_mixture
    from difforge.lessons.trajectories import crossings, record_trajectories
    from difforge.metrics.mixture import mixture_metrics, mode_assignments
    from difforge.training.build import module_from_checkpoint

    out = Path(cfg.out_dir)
    mixture = config_mixture(cfg, "data", dim=1)  # the lesson draws 1-D paths
    samplers = {"stochastic": instantiate(cfg.stochastic), "ode": instantiate(cfg.ode)}

    ckpt_path = cfg.ckpt_path
    if ckpt_path is None:
        ckpt_path = train_mlp(cfg, HydraConfig.get().runtime.choices["data"])
    module, train_cfg = module_from_checkpoint(ckpt_path)
    if "weights" not in train_cfg.data or module.data_shape != (1,):
        raise ValueError(f"{ckpt_path} was not trained on a 1-D Gaussian mixture")
    trained_law: list[Any] = [
        OmegaConf.to_container(train_cfg.data[k]) for k in ("weights", "means", "stds")
    ]
    mlp_mixture = GaussianMixture(*trained_law)
    models = {
        "exact oracle": (
            GaussianMixtureOracle(mixture),
            instantiate(cfg.schedule),
            mixture,
            torch.float64,
        ),
        "trained MLP": (module.sampling_denoiser(), module.schedule, mlp_mixture, torch.float32),
    }

    rows: dict[str, dict[str, dict[str, Any]]] = {}
    background: dict[str, dict[str, Any]] = {}
    summary: dict[str, Any] = {"ckpt_path": str(ckpt_path), "panels": {}}
    for model_name, (denoiser, schedule, law, dtype) in models.items():
        schedule = require_discrete(schedule, "this lesson")
        x_grid = blurring.grid_1d(law, 1.0, 400, margin=4.0)
        t_grid = list(range(0, schedule.num_timesteps + 1, 5))
        background[model_name] = {
            "t": t_grid,
            "x": x_grid.numpy(),
            "density": torch.stack(
                [
                    blurring.marginal_density(law, x_grid[:, None], blurring.abar_at(schedule, t))
                    for t in t_grid
                ]
            ).numpy(),
            "data_density": law.log_prob(x_grid[:, None]).exp().numpy(),
        }
        rows[model_name] = {}
        for role, sampler in samplers.items():
            paths = record_trajectories(
                denoiser, schedule, sampler, int(cfg.num_samples), 1, int(cfg.seed), dtype
            )
            samples = paths.samples
            metrics = mixture_metrics(samples, law)
            swaps = crossings(paths, max_particles=500)
            shown = int(cfg.num_paths)
            label = (
                f"{sampler.algorithm} ({sampler_kind(sampler)}), NFE {paths.nfe}: "
                f"W1 {metrics['w1']:.3f}, order swaps {swaps}"
            )
            rows[model_name][role] = {
                "t": paths.t.numpy(),
                "x": paths.x[:, :shown, 0].numpy(),
                "colour_index": mode_assignments(samples[:shown], law).numpy(),
                "samples": samples[:, 0].numpy(),
                "label": label,
                "short": f"{sampler.algorithm} ({sampler_kind(sampler)})",
            }
            summary["panels"][f"{model_name} / {role}"] = {
                "sampler": repr(sampler),
                "kind": sampler_kind(sampler),
                "nfe": paths.nfe,
                "order_swaps_among_500": swaps,
                **{k: v for k, v in metrics.items() if k != "nll"},
            }
            log.info("%-12s %-10s %s", model_name, role, label)
    plots.plot_reverse_flow(
        rows,
        background,
        out / "reverse_flow.png",
        title="the reverse process: particle paths over the exact density of $q(x_t)$",
    )
    (out / "reverse_flow.json").write_text(json.dumps(summary, indent=2))
    log.info("wrote %s", out / "reverse_flow.png")
    return summary


@hydra.main(version_base="1.3", config_path="../configs/lessons", config_name="reverse_flow")
def main(cfg: DictConfig) -> None:
    from difforge.lessons.script import run_lesson

    run_lesson(reverse_flow, cfg)


if __name__ == "__main__":
    main()
