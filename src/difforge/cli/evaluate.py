"""``python src/eval.py``: the metrics that fit a model's data, written to ``metrics.json``."""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from difforge.cli.common import output_dir, print_config
from difforge.cli.sample import load_model, pick_device, sampling_labels
from difforge.diffusion.gaussian_mixture import GaussianMixture
from difforge.diffusion.likelihood import (
    bits_per_dim,
    dequantize,
    ode_log_likelihood,
    vlb_bits_per_dim,
)
from difforge.diffusion.samplers import Sampler
from difforge.diffusion.schedules import DiscreteSchedule
from difforge.errors import DifforgeError
from difforge.metrics.mixture import mixture_metrics
from difforge.training.module import DiffusionModule

log = logging.getLogger("difforge")
NLL_METHODS = ("auto", "vlb", "ode")
DEFAULT_ODE_STEPS = 50


def likelihood_metrics(
    denoiser: Any, schedule: Any, x: torch.Tensor, cfg: DictConfig, is_image: bool
) -> dict[str, float]:
    """NLL in bits/dim of real test points: the VLB for discrete schedules, else the ODE."""
    method = cfg.nll.method
    if method not in NLL_METHODS:
        raise DifforgeError(f"unknown nll.method {method!r}; allowed: {', '.join(NLL_METHODS)}")
    if method == "auto":
        method = "vlb" if isinstance(schedule, DiscreteSchedule) else "ode"
    generator = torch.Generator().manual_seed(cfg.seed)
    num_dims = x[0].numel()
    if method == "vlb" and cfg.nll.ode_steps is not None:
        raise DifforgeError(
            f"nll.ode_steps={cfg.nll.ode_steps} applies to nll.method=ode; this NLL is the VLB "
            "(nll.method=vlb or auto with a discrete schedule)"
        )
    if method == "vlb":
        if not isinstance(schedule, DiscreteSchedule):
            raise DifforgeError("nll.method=vlb needs a discrete schedule; use nll.method=ode")
        variance = "learned" if getattr(denoiser, "learned_variance", False) else "large"
        bound = vlb_bits_per_dim(
            denoiser, schedule, x, variance=variance, discretized=is_image, generator=generator
        )
        return {"nll_bpd_vlb": float(bound["total"].mean())}
    if is_image:
        # 8-bit pixels: the ODE density of dequantised points, not of the bin centres.
        x = dequantize(x, generator=generator)
    with torch.no_grad():
        log_prob = ode_log_likelihood(
            denoiser,
            x,
            schedule.sigma_min,
            schedule.sigma_max,
            steps=cfg.nll.ode_steps or DEFAULT_ODE_STEPS,
            num_probes=None if num_dims <= 4 else 1,
            generator=generator,
        )
    return {"nll_bpd_ode": float(bits_per_dim(log_prob, num_dims, 8 if is_image else None).mean())}


def evaluate(cfg: DictConfig) -> dict[str, float]:
    print_config(cfg)
    device = pick_device(str(cfg.device))
    sampler: Sampler = instantiate(cfg.sampler)
    model, mixture, train_cfg = load_model(cfg, sampler, device)
    generator = torch.Generator(
        device=device if isinstance(model, DiffusionModule) else "cpu"
    ).manual_seed(cfg.seed)
    labels = sampling_labels(cfg, model)
    result = model.generate(
        cfg.num_samples,
        generator=generator,
        batch_size=cfg.batch_size,
        class_labels=labels,
        use_ema=cfg.use_ema,
        progress=True,
    )
    metrics: dict[str, float] = {
        "nfe": float(result.nfe),
        "num_samples": float(result.samples.shape[0]),
    }
    if cfg.get("class_label") is not None:
        metrics["class_label"] = float(cfg.class_label)
        if mixture is not None:
            # A mixture's labels are its component indices: one class is one component.
            k = int(cfg.class_label)
            mixture = GaussianMixture([1.0], mixture.means[k : k + 1], mixture.stds[k : k + 1])
    if mixture is not None:
        metrics.update(mixture_metrics(result.samples, mixture, seed=cfg.seed))
    if isinstance(model, DiffusionModule):
        assert train_cfg is not None  # a trained model comes with its training config
        metrics.update(evaluate_trained(model, train_cfg, cfg, result.samples))
    elif cfg.nll.enabled and mixture is not None:
        x, _ = mixture.sample(cfg.nll.num_points, torch.Generator().manual_seed(cfg.seed + 1))
        metrics.update(likelihood_metrics(model.oracle, model.schedule, x, cfg, is_image=False))
        metrics["true_nll_bpd"] = float(bits_per_dim(mixture.log_prob(x), mixture.dim).mean())
    path = output_dir() / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    log.info("wrote %s", path)
    print(json.dumps(metrics, sort_keys=True))
    return metrics


def evaluate_trained(
    module: DiffusionModule, train_cfg: DictConfig, cfg: DictConfig, samples: torch.Tensor
) -> dict[str, float]:
    """Metrics of a trained model against its test split."""
    datamodule = instantiate(train_cfg.data)
    datamodule.setup("test")
    metrics: dict[str, float] = {}
    is_image = samples.ndim == 4
    if cfg.nll.enabled:
        num_points = min(
            cfg.nll.num_points, datamodule.split_size("test")
        )  # small test splits: all of it
        x = datamodule.reference_samples("test", num_points).to(module.device)
        metrics.update(
            likelihood_metrics(
                module.ema_denoiser if cfg.use_ema else module.denoiser,
                module.schedule,
                x,
                cfg,
                is_image,
            )
        )
    if is_image:
        from difforge.metrics.images import image_metrics

        metrics.update(
            image_metrics(
                samples,
                datamodule,
                seed=cfg.seed,
                cache_dir=f"{cfg.paths.cache_dir}/fid_stats",
                classifier_dir=f"{cfg.paths.data_dir}/classifiers",
                inception_weights=OmegaConf.select(cfg, "metrics.inception_weights"),
            )
        )
    return metrics
