"""``python src/eval.py``: the metrics that fit a model's data, written to ``metrics.json``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from difforge.cli.common import output_dir
from difforge.cli.sample import OracleSampling, generate, load_model
from difforge.devices import resolve_device
from difforge.diffusion.gaussian_mixture import GaussianMixture
from difforge.diffusion.likelihood import (
    bits_per_dim,
    dequantize,
    ode_log_likelihood,
    vlb_bits_per_dim,
)
from difforge.diffusion.parameterization import ClippedDenoiser
from difforge.diffusion.samplers import Sampler
from difforge.diffusion.schedules import require_discrete
from difforge.errors import DifforgeError
from difforge.metrics.mixture import mixture_metrics

if TYPE_CHECKING:
    from difforge.training.module import DiffusionModule

log = logging.getLogger("difforge")
DEFAULT_ODE_STEPS = 50


class CountedDenoiser:
    """A denoiser that calls ``advance()`` at each network evaluation: the NLL makes thousands
    (T for the VLB, 4 per RK4 step for the ODE), each over all its points."""

    def __init__(self, denoiser: Any, advance: Callable[[], Any]) -> None:
        self.denoiser, self.advance = denoiser, advance

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.advance()
        return self.denoiser(x, sigma, class_labels)  # type: ignore[no-any-return]

    def predict(
        self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> Any:
        self.advance()
        return self.denoiser.predict(x, sigma, class_labels)


def likelihood_metrics(
    denoiser: Any,
    schedule: Any,
    x: torch.Tensor,
    cfg: DictConfig,
    is_image: bool,
    clip_denoised: bool = False,
) -> dict[str, float]:
    """NLL in bits/dim of real test points: the VLB for discrete schedules, else the ODE. Says
    first what it computes and how to make it cheaper, then shows its progress.

    ``clip_denoised``: the VLB is that of the model as it samples, x0 clamped to [-1, 1], as Ho
    et al.'s and improved-diffusion's bpd loops evaluate it (``clip_denoised=True``); without it
    an eps error at t = T (cosine: abar_T = 2.4e-9) is multiplied by 1/sqrt(abar_T) = 2e4."""
    from rich.progress import Progress

    method = cfg.nll.method
    if method == "auto":
        method = "vlb" if schedule.is_discrete else "ode"
    generator = torch.Generator().manual_seed(cfg.seed)
    num_dims = x[0].numel()
    if method == "vlb" and cfg.nll.ode_steps is not None:
        raise DifforgeError(
            f"nll.ode_steps={cfg.nll.ode_steps} applies to nll.method=ode; this NLL is the VLB "
            "(nll.method=vlb or auto with a discrete schedule)"
        )
    if method == "vlb":
        schedule = require_discrete(schedule, "nll.method=vlb", "use nll.method=ode")
        if clip_denoised:
            denoiser = ClippedDenoiser(denoiser)
        evaluations = schedule.num_timesteps
        what = f"the VLB ({evaluations} terms, one network evaluation each)"
    else:
        steps = cfg.nll.ode_steps or DEFAULT_ODE_STEPS
        evaluations = 4 * steps
        what = f"the probability-flow ODE ({steps} RK4 steps, {evaluations} network evaluations with gradients)"
    log.info(
        "NLL: %s on %d test points; nll.num_points=N takes fewer points, nll.enabled=false skips it",
        what,
        x.shape[0],
    )
    with Progress() as bar:
        task = bar.add_task(f"NLL ({method}, {x.shape[0]} points)", total=evaluations)
        counted = CountedDenoiser(denoiser, lambda: bar.advance(task))
        if method == "vlb":
            variance = "learned" if getattr(denoiser, "learned_variance", False) else "large"
            bound = vlb_bits_per_dim(
                counted, schedule, x, variance=variance, discretized=is_image, generator=generator
            )
            return {"nll_bpd_vlb": float(bound["total"].mean())}
        if is_image:
            # 8-bit pixels: the ODE density of dequantised points, not of the bin centres.
            x = dequantize(x, generator=generator)
        with torch.no_grad():
            log_prob = ode_log_likelihood(
                counted,
                x,
                schedule.sigma_min,
                schedule.sigma_max,
                steps=steps,
                num_probes=None if num_dims <= 4 else 1,
                generator=generator,
            )
    return {"nll_bpd_ode": float(bits_per_dim(log_prob, num_dims, 8 if is_image else None).mean())}


PROTOCOL_ONLY = ("metrics.dinov2_weights", "metrics.dinov2_ref", "metrics.precision_recall")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    if OmegaConf.select(cfg, "metrics.fid_ref") is not None:
        return evaluate_with_reference(cfg, device)
    if cfg.get("pretrained") is not None:
        raise DifforgeError(
            "a pretrained= diffusers model has no dataset to compare with: give "
            "metrics.fid_ref=<reference .npz> (guided-diffusion reference batch or EDM fid-refs)"
        )
    for key in PROTOCOL_ONLY:
        if OmegaConf.select(cfg, key) is not None:
            raise DifforgeError(
                f"{key} applies to the reference protocol: give metrics.fid_ref=PATH"
            )
    if cfg.get("seeds", 1) != 1:
        raise DifforgeError(
            f"seeds={cfg.seeds} applies to the reference protocol: give metrics.fid_ref=PATH"
        )
    sampler: Sampler = instantiate(cfg.sampler)
    loaded = load_model(cfg, sampler, device)
    model, mixture, train_cfg = loaded.module, loaded.mixture, loaded.config
    result, _ = generate(cfg, model, device)
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
    if OmegaConf.select(cfg, "metrics.inception_weights") and result.samples.ndim != 4:
        raise DifforgeError(
            "metrics.inception_weights is for FID of images; these samples are vectors (no FID)"
        )
    if mixture is not None:
        metrics.update(mixture_metrics(result.samples, mixture, seed=cfg.seed))
    if not isinstance(model, OracleSampling):
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
                clip_denoised=module.clip_denoised,
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


def evaluate_with_reference(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    """The paper protocol (:mod:`difforge.metrics.protocol`) against ``metrics.fid_ref``, across
    the ranks torchrun starts; rank 0 writes ``metrics.json``."""
    from difforge.metrics.features import inception
    from difforge.metrics.protocol import Extractors, Ranks, evaluate_protocol
    from difforge.metrics.reference_files import load_reference_file

    if cfg.get("class_label") is not None:
        raise DifforgeError(
            "class_label does not apply to the reference protocol: class labels cycle through "
            "all classes, as the reference batches hold them"
        )
    seeds = cfg.get("seeds", 1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and device.type == "cuda":
        # One GPU per rank, chosen before NCCL starts (torchrun sets LOCAL_RANK).
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    ranks = Ranks.from_environment(device)
    reference = load_reference_file(cfg.metrics.fid_ref)
    sampler: Sampler = instantiate(cfg.sampler)
    model = load_model(cfg, sampler, device).module
    if isinstance(model, OracleSampling) or len(model.data_shape) != 3:
        raise DifforgeError(
            "metrics.fid_ref needs a trained image model (ckpt_path= or pretrained=)"
        )
    extractors = Extractors(
        inception(OmegaConf.select(cfg, "metrics.inception_weights")).to(device)
    )
    dinov2_reference = None
    if OmegaConf.select(cfg, "metrics.dinov2_weights") is not None:
        from difforge.metrics.dinov2 import load_dinov2

        extractors.dinov2 = load_dinov2(cfg.metrics.dinov2_weights).to(device)
        if OmegaConf.select(cfg, "metrics.dinov2_ref") is not None:
            dinov2_file = load_reference_file(cfg.metrics.dinov2_ref)
            dinov2_reference = (dinov2_file.mu, dinov2_file.sigma)
    elif OmegaConf.select(cfg, "metrics.dinov2_ref") is not None:
        raise DifforgeError("metrics.dinov2_ref needs metrics.dinov2_weights (the DINOv2 network)")
    result = evaluate_protocol(
        model,
        reference,
        extractors,
        num_samples=cfg.num_samples,
        batch_size=cfg.batch_size,
        seeds=list(range(cfg.seed, cfg.seed + seeds)),
        device=device,
        ranks=ranks,
        dinov2_reference=dinov2_reference,
        precision_recall_enabled=OmegaConf.select(cfg, "metrics.precision_recall"),
        use_ema=cfg.use_ema,
    )
    result.update(
        sampler=sampler.algorithm,
        steps=sampler.steps,
        model=str(cfg.pretrained if cfg.get("pretrained") is not None else cfg.ckpt_path),
    )
    if ranks.rank == 0:
        path = output_dir() / "metrics.json"
        path.write_text(json.dumps(result, indent=2, sort_keys=True))
        log.info("wrote %s", path)
        print(json.dumps(result, sort_keys=True))
    return result
