"""A diffusers pipeline folder as a difforge model.

A folder written by ``DDPMPipeline.save_pretrained`` (or ``DDIMPipeline``) holds
``model_index.json``, ``unet/`` (a ``UNet2DModel``: ``config.json`` and safetensors weights) and
``scheduler/scheduler_config.json`` (a DDPM/DDIM scheduler: the betas, ``num_train_timesteps``,
``prediction_type``, ``clip_sample``). It maps onto difforge's pieces as follows:

* the betas -> a :class:`~difforge.diffusion.schedules.DiscreteSchedule` with the same
  ``alphas_cumprod`` (computed here in float64 from the claimed ``beta_schedule``, then checked
  against the scheduler's own float32 table: a mismatch means the config claims one schedule and
  its ``trained_betas`` give another);
* ``prediction_type`` epsilon / sample / v_prediction -> the ``eps`` / ``x0`` / ``v``
  parameterization. Their ``c_in = 1 / sqrt(1 + sigma^2)`` feeds the UNet the unit-variance VP
  latent ``z_t = x / sqrt(1 + sigma_t^2)`` diffusers feeds it, and the schedule's noise labels
  are diffusers' timestep index ``t`` (an integer on the table, fractional between entries);
* ``clip_sample`` -> ``clip_denoised``, difforge's static thresholding (``ClippedDenoiser``):
  the denoised estimate is clamped to [-1, 1] at every step, for every sampler. diffusers' DDPM
  step uses the clamped x0 in the posterior mean exactly as difforge's ``ddpm`` does; its DDIM
  step matches difforge's ``ddim`` with ``use_clipped_model_output=True``. diffusers' default
  (``False``) keeps the network's raw eps in DDIM's direction term next to the clamped x0, a
  mix no denoiser ``D(x, sigma)`` can express: where clipping acts, images differ from it.

* ``timestep_spacing`` -> the grid of ``ddpm`` and ``ddim`` when ``sampler.grid`` is unset (the
  folder's own algorithms on the folder's own grid give diffusers' images; the other samplers are
  difforge's, with their own defaults). diffusers' DDIM steps from t to ``t - T // N``, which is
  its next timestep on every ``leading`` grid and on ``trailing`` ones when N divides T; where it
  is not (``linspace``, or N not dividing T) the folder's grid is refused for ``ddim``, since
  difforge's DDIM steps along its grid (naming ``sampler.grid`` chooses that).

Every field diffusers writes in these configs is listed in ``SCHEDULER_FIELDS`` and
``UNET_FIELDS`` with what difforge does with it: reproduced (the same images as diffusers'
pipeline on the same draws, tests/test_diffusers_interop.py) or refused in one line naming the
field, its value and what is supported. A field the installed diffusers accepts but these tables
do not list (a newer diffusers) is refused rather than dropped.

Weights are read from safetensors files only (no pickles), from the local folder (no hub).
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from difforge.diffusion.parameterization import PARAMETERIZATIONS
from difforge.diffusion.schedules import CosineSchedule, DiscreteSchedule, LinearSchedule
from difforge.diffusion.sigma_grids import TIMESTEP_SPACINGS
from difforge.errors import DifforgeError

# diffusers' prediction_type -> difforge's parameterization name.
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# diffusers' DDPM step takes the square root of fixed_large_log's log(beta_t) < 0 (NaN images):
# of the fixed variances, these three have an output to reproduce.
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")
# The pipelines the loader takes hold these components and no other (LDMPipeline's vqvae, say,
# would make the UNet's images latents).
COMPONENTS = ("unet", "scheduler")

# Every field of the scheduler configs the loader takes (the __init__ arguments of DDPMScheduler
# and DDIMScheduler: a config converted from one to the other keeps both), and what difforge does
# with it. tests/test_diffusers_interop.py checks these keys against diffusers' signatures and
# walks each field: reproduced (the same images) or refused in one line.
SCHEDULER_FIELDS: dict[str, str] = {
    "num_train_timesteps": "the schedule's T",
    "beta_start": "the schedule's betas",
    "beta_end": "the schedule's betas",
    "beta_schedule": f"the schedule's betas: {', '.join(BETA_SCHEDULES)} (others refused)",
    "trained_betas": "taken when they give beta_schedule's alphas_cumprod (others refused)",
    "rescale_betas_zero_snr": "the schedule rescaled to zero terminal SNR (not with epsilon)",
    "prediction_type": f"the parameterization: {', '.join(PREDICTION_TYPES)} (others refused)",
    "clip_sample": "clip_denoised (the x0 estimate clamped at every step)",
    "clip_sample_range": "1 with clip_sample (others refused); unused without it",
    "thresholding": "false (dynamic thresholding refused)",
    "dynamic_thresholding_ratio": "used by thresholding only",
    "sample_max_value": "used by thresholding only",
    "variance_type": f"ddpm's variance: {', '.join(VARIANCE_TYPES)} (others refused)",
    "timestep_spacing": f"the grid of ddpm and ddim: {', '.join(TIMESTEP_SPACINGS)}",
    "steps_offset": "0 with the leading grid (others refused); unused by the other grids",
    "set_alpha_to_one": "ddim's last level: true sigma = 0; false the table's first "
    "(final_sigma=min), on the trailing grid (refused on the others)",
}
_ARCHITECTURE = "built by diffusers' own UNet2DModel from the folder: the same network"
UNET_FIELDS: dict[str, str] = {
    "sample_size": "the data shape (int or [height, width])",
    "in_channels": "the data shape",
    "out_channels": "equal to in_channels (a learned variance refused)",
    "time_embedding_type": "positional (fourier and learned refused)",
    "class_embed_type": "null (others refused)",
    "num_class_embeds": "the number of classes (no null label: guidance refused)",
    "num_train_timesteps": "used by the learned time embedding only (refused)",
    **{
        name: _ARCHITECTURE
        for name in (
            "center_input_sample",
            "time_embedding_dim",
            "freq_shift",
            "flip_sin_to_cos",
            "down_block_types",
            "mid_block_type",
            "up_block_types",
            "block_out_channels",
            "layers_per_block",
            "mid_block_scale_factor",
            "downsample_padding",
            "downsample_type",
            "upsample_type",
            "dropout",
            "act_fn",
            "attention_head_dim",
            "norm_num_groups",
            "attn_norm_num_groups",
            "norm_eps",
            "resnet_time_scale_shift",
            "add_attention",
        )
    },
}
# The scheduler's alphas_cumprod is a float32 cumulative product of up to a few thousand terms:
# its relative error stays below 1e-4, while a different schedule differs by far more.
ALPHAS_CUMPROD_RTOL = 1e-4
ALPHAS_CUMPROD_ATOL = 1e-9


@dataclass(frozen=True)
class PipelineSpec:
    """What a pipeline folder says, validated; the UNet weights are not read yet.

    ``data_shape``: ``(C, H, W)`` of one sample; ``num_classes``: 0 for an unconditional UNet.
    """

    path: Path
    pipeline_class: str
    scheduler_class: str
    schedule: DiscreteSchedule
    parameterization: str
    clip_sample: bool
    clip_sample_range: float
    data_shape: tuple[int, int, int]
    num_classes: int
    variance: str = "small"  # DDPM's posterior variance: the scheduler's variance_type
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    set_alpha_to_one: bool = True

    @property
    def scheduler_source(self) -> Path:
        return self.path / "scheduler" / "scheduler_config.json"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DifforgeError(
            f"{path} is missing (not a diffusers pipeline folder written by save_pretrained)"
        )
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DifforgeError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise DifforgeError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def _component_class(index: dict[str, Any], name: str, index_path: Path) -> str:
    entry = index.get(name)
    if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str)):
        raise DifforgeError(
            f"{index_path}: no {name!r} component (difforge loads pipelines with a UNet2DModel "
            f"'unet' and a DDPM/DDIM 'scheduler', e.g. written by DDPMPipeline.save_pretrained)"
        )
    return entry[1]


def init_fields(cls: type) -> list[str]:
    """The config fields a diffusers class takes: its ``__init__`` arguments."""
    parameters = inspect.signature(cls.__init__).parameters.values()  # type: ignore[misc]
    return [p.name for p in parameters if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]


def check_fields_classified(
    config: dict[str, Any], cls: type, known: dict[str, str], source: Path
) -> None:
    """Raises DifforgeError for a field of ``config`` that the installed diffusers' ``cls`` takes
    but ``known`` does not list (a newer diffusers): it is refused, never dropped. Fields ``cls``
    does not take are ignored by diffusers too."""
    for name in init_fields(cls):
        if name in config and name not in known:
            raise DifforgeError(
                f"{source}: {name}={config[name]!r} is a {cls.__name__} field difforge does not "
                f"know (a newer diffusers?); difforge reproduces {', '.join(known)}"
            )


def claimed_schedule(config: dict[str, Any], source: Path) -> DiscreteSchedule:
    """The schedule the config's ``beta_schedule`` names (diffusers' names), in float64:

    * ``linear``: betas ``linspace(beta_start, beta_end, T)`` (Ho et al. 2020, sec. 4);
    * ``scaled_linear``: ``linspace(sqrt(beta_start), sqrt(beta_end), T)^2`` (latent diffusion);
    * ``squaredcos_cap_v2``: Nichol & Dhariwal 2021, eq. 17 with s = 0.008, betas capped at 0.999
      (difforge's ``cosine`` schedule);

    then, with ``rescale_betas_zero_snr``, rescaled to zero terminal SNR (Lin et al. 2024,
    algorithm 1), after the cap as diffusers does. Raises DifforgeError naming ``source`` for an
    unknown schedule or bad values.
    """
    name = config.get("beta_schedule", "linear")
    steps = config.get("num_train_timesteps", 1000)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
        raise DifforgeError(f"{source}: num_train_timesteps must be an integer >= 2, got {steps!r}")
    start, end = config.get("beta_start", 1e-4), config.get("beta_end", 0.02)
    rescale = bool(config.get("rescale_betas_zero_snr", False))
    try:
        if name == "squaredcos_cap_v2":
            cosine = CosineSchedule(steps, s=0.008)
            # Without rescaling, CosineSchedule keeps its capped top out of sigma_max.
            return (
                DiscreteSchedule(cosine.betas, rescale_zero_terminal_snr=True)
                if rescale
                else cosine
            )
        if name == "linear":  # diffusers takes the betas as given, for any T
            return LinearSchedule(
                steps,
                float(start),
                float(end),
                scale_to_num_timesteps=False,
                rescale_zero_terminal_snr=rescale,
            )
        if name == "scaled_linear":
            if not 0 < start <= end < 1:
                raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {start}, {end}")
            root = torch.linspace(math.sqrt(start), math.sqrt(end), steps, dtype=torch.float64)
            return DiscreteSchedule(root**2, rescale_zero_terminal_snr=rescale)
    except (TypeError, ValueError) as error:
        raise DifforgeError(f"{source}: beta_schedule={name!r}: {error}") from None
    raise DifforgeError(
        f"{source}: beta_schedule={name!r} is not supported; allowed: {', '.join(BETA_SCHEDULES)}"
    )


def schedule_from_scheduler_config(
    config: dict[str, Any], scheduler_alphas_cumprod: Tensor, source: Path
) -> DiscreteSchedule:
    """The difforge schedule of a diffusers scheduler config, checked against the scheduler's own
    ``alphas_cumprod`` ``(T,)`` (diffusers computes it from ``trained_betas`` when present,
    otherwise from ``beta_schedule``). Raises DifforgeError naming ``source`` and the field when the
    two differ or a field is out of range."""
    schedule = claimed_schedule(config, source)
    theirs = scheduler_alphas_cumprod.to(torch.float64)
    ours = schedule.alphas_cumprod
    if theirs.shape != ours.shape:
        raise DifforgeError(
            f"{source}: trained_betas has {theirs.numel()} entries but num_train_timesteps="
            f"{ours.numel()}"
        )
    # Relative agreement, and absolute near abar = 0 (zero terminal SNR).
    excess = (theirs - ours).abs() - ALPHAS_CUMPROD_RTOL * ours - ALPHAS_CUMPROD_ATOL
    if not bool((excess <= 0).all()):
        at = int(excess.argmax())
        field = "trained_betas" if config.get("trained_betas") is not None else "beta_schedule"
        raise DifforgeError(
            f"{source}: {field} gives another schedule than beta_schedule="
            f"{config.get('beta_schedule', 'linear')!r} claims (alphas_cumprod[{at}] is "
            f"{theirs[at].item():.6g}, the claimed schedule has {ours[at].item():.6g})"
        )
    return schedule


def _check_unet_config(config: dict[str, Any], source: Path) -> tuple[tuple[int, int, int], int]:
    """``(data_shape, num_classes)`` of a UNet2DModel config, or DifforgeError for a UNet difforge
    cannot wrap."""
    embedding = config.get("time_embedding_type", "positional")
    if embedding != "positional":
        raise DifforgeError(
            f"{source}: time_embedding_type={embedding!r} is not supported; difforge wraps "
            "UNet2DModels with 'positional' timestep embeddings (fractional timesteps)"
        )
    channels, out_channels = config.get("in_channels", 3), config.get("out_channels", 3)
    if out_channels != channels:
        raise DifforgeError(
            f"{source}: out_channels={out_channels} differs from in_channels={channels}; difforge "
            "wraps UNets that predict one image-shaped quantity (no learned variance)"
        )
    size = config.get("sample_size")
    if isinstance(size, int):
        size = (size, size)
    if not (isinstance(size, (list, tuple)) and len(size) == 2):
        raise DifforgeError(
            f"{source}: sample_size must be an int or [height, width], got {size!r}"
        )
    class_embedding = config.get("class_embed_type")
    if class_embedding is not None:
        raise DifforgeError(
            f"{source}: class_embed_type={class_embedding!r} is not supported; difforge wraps "
            "unconditional UNet2DModels or ones with a class table (num_class_embeds)"
        )
    num_classes = config.get("num_class_embeds") or 0
    return (int(channels), int(size[0]), int(size[1])), int(num_classes)


def read_pipeline(path: str | Path) -> PipelineSpec:
    """Validate the pipeline folder ``path`` and build its schedule (the weights are not read).

    Raises DifforgeError (one line, naming the file and field) for a folder that is not a pipeline,
    a UNet difforge cannot wrap, or a scheduler config it cannot map.
    """
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

    root = Path(path).expanduser()
    if not root.is_dir():
        raise DifforgeError(
            f"pretrained={path}: not a directory (give a diffusers pipeline folder)"
        )
    index_path = root / "model_index.json"
    index = _read_json(index_path)
    unet_class = _component_class(index, "unet", index_path)
    scheduler_class = _component_class(index, "scheduler", index_path)
    if unet_class != "UNet2DModel":
        raise DifforgeError(
            f"{index_path}: unet is a {unet_class}; difforge wraps UNet2DModel (pixel-space, "
            "unconditional or class-conditional)"
        )
    if scheduler_class not in SCHEDULERS:
        raise DifforgeError(
            f"{index_path}: scheduler is a {scheduler_class}; allowed: {', '.join(SCHEDULERS)}"
        )
    for name, entry in index.items():
        if not name.startswith("_") and name not in COMPONENTS:
            raise DifforgeError(
                f"{index_path}: component {name}={entry!r} is not supported; difforge loads "
                "pipelines of a UNet2DModel 'unet' and a 'scheduler' only (DDPMPipeline, DDIMPipeline)"
            )
    unet_source = root / "unet" / "config.json"
    unet_config = _read_json(unet_source)
    check_fields_classified(unet_config, UNet2DModel, UNET_FIELDS, unet_source)
    data_shape, num_classes = _check_unet_config(unet_config, unet_source)
    scheduler_source = root / "scheduler" / "scheduler_config.json"
    config = _read_json(scheduler_source)
    scheduler_type = DDPMScheduler if scheduler_class == "DDPMScheduler" else DDIMScheduler
    check_fields_classified(config, scheduler_type, SCHEDULER_FIELDS, scheduler_source)
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise DifforgeError(
            f"{scheduler_source}: prediction_type={prediction!r}; allowed: {', '.join(PREDICTION_TYPES)}"
        )
    variance = config.get("variance_type", "fixed_small")
    if variance not in VARIANCE_TYPES:
        raise DifforgeError(
            f"{scheduler_source}: variance_type={variance!r} is not supported (a learned "
            "variance, or fixed_large_log, whose DDPM step gives NaN in diffusers); allowed: "
            f"{', '.join(VARIANCE_TYPES)}"
        )
    spacing = config.get("timestep_spacing", "leading")
    if spacing not in TIMESTEP_SPACINGS:
        raise DifforgeError(
            f"{scheduler_source}: timestep_spacing={spacing!r} is not supported; allowed: "
            f"{', '.join(TIMESTEP_SPACINGS)}"
        )
    offset = config.get("steps_offset", 0)
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise DifforgeError(
            f"{scheduler_source}: steps_offset must be an integer >= 0, got {offset!r}"
        )
    if config.get("rescale_betas_zero_snr", False) and prediction == "epsilon":
        raise DifforgeError(
            f"{scheduler_source}: rescale_betas_zero_snr=true with prediction_type='epsilon': "
            "x0 cannot be recovered from eps at zero SNR (Lin et al. 2024, sec. 3.2)"
        )
    if config.get("thresholding", False):
        raise DifforgeError(
            f"{scheduler_source}: thresholding=true (dynamic thresholding) is not supported; "
            "difforge clips with clip_sample (static thresholding)"
        )
    clip_range = float(config.get("clip_sample_range", 1.0))
    if not clip_range > 0:
        raise DifforgeError(f"{scheduler_source}: clip_sample_range must be > 0, got {clip_range}")
    try:
        scheduler = scheduler_type.from_config(config)
    except (NotImplementedError, ValueError, TypeError) as error:
        raise DifforgeError(f"{scheduler_source}: {error}") from None
    schedule = schedule_from_scheduler_config(config, scheduler.alphas_cumprod, scheduler_source)
    return PipelineSpec(
        path=root,
        pipeline_class=str(index.get("_class_name", "")),
        scheduler_class=scheduler_class,
        schedule=schedule,
        parameterization=PREDICTION_TYPES[prediction],
        clip_sample=bool(config.get("clip_sample", True)),
        clip_sample_range=clip_range,
        data_shape=data_shape,
        num_classes=num_classes,
        variance="large" if variance == "fixed_large" else "small",
        timestep_spacing=spacing,
        steps_offset=offset,
        set_alpha_to_one=bool(config.get("set_alpha_to_one", True)),
    )


def pipeline_sampler(sampler: Any, spec: PipelineSpec) -> Any:
    """``sampler`` with what the user left unset taken from the pipeline, for the folder's own
    algorithms (``ddpm``, ``ddim``): the grid is the scheduler's ``timestep_spacing``; ``ddpm``
    gets its ``variance_type`` and ends at sigma = 0 as diffusers' DDPM does; ``ddim`` ends at
    sigma = 0, or with ``set_alpha_to_one=false`` at the table's first level. One seed then gives
    diffusers' images (difforge's own defaults are measured on the exact score instead,
    docs/benchmarks.md, section 3). Other samplers are returned as given.

    Raises DifforgeError naming the field where diffusers' algorithm leaves the grid (DDIM's
    step to ``t - T // N``), or applies ``steps_offset`` or ``set_alpha_to_one=false`` on a grid
    where difforge cannot follow.
    """
    if sampler is None or sampler.algorithm not in ("ddpm", "ddim"):
        return sampler
    fill: dict[str, Any] = {}
    grid = sampler.grid
    if grid is None:
        grid = fill["grid"] = spec.timestep_spacing
    source = spec.scheduler_source
    if grid == "leading" and spec.steps_offset:
        raise DifforgeError(
            f"{source}: steps_offset={spec.steps_offset} moves diffusers' leading grid up by "
            f"{spec.steps_offset}; difforge's leading grid has steps_offset=0 (use "
            "sampler.grid=trailing or linspace, or steps_offset=0)"
        )
    if sampler.algorithm == "ddpm":
        if sampler.final_sigma is None:
            fill["final_sigma"] = "zero"
        if "variance" not in sampler.options:
            fill["variance"] = spec.variance
        return sampler.replace(**fill) if fill else sampler
    if sampler.grid is None:
        _check_ddim_stays_on_grid(spec, grid, sampler.steps)
    if not spec.set_alpha_to_one and sampler.final_sigma is None:
        if grid != "trailing":
            raise DifforgeError(
                f"{source}: set_alpha_to_one=false ends diffusers' DDIM at the table's first "
                f"level, which difforge reproduces on the trailing grid only, not {grid!r} (use "
                "sampler.grid=trailing, or name sampler.final_sigma=zero or min)"
            )
        fill["final_sigma"] = "min"
    return sampler.replace(**fill) if fill else sampler


def _check_ddim_stays_on_grid(spec: PipelineSpec, spacing: str, steps: int) -> None:
    """diffusers' DDIM steps from each timestep t to ``t - T // N``: refuse the folder's grid
    where that is not the grid's next timestep, which difforge's DDIM steps to."""
    total = spec.schedule.num_timesteps
    if not 0 < steps <= total:
        return  # the sampler's own check names the bad steps
    timesteps = TIMESTEP_SPACINGS[spacing](total, steps)
    if bool((timesteps[:-1] - timesteps[1:] == total // steps).all()):
        return
    raise DifforgeError(
        f"{spec.scheduler_source}: timestep_spacing={spacing!r} with sampler.steps={steps}: "
        f"diffusers' DDIM steps from t to t - {total // steps} (T // N), off that grid, which "
        f"difforge's ddim cannot follow; use sampler.steps dividing num_train_timesteps={total} "
        "on the trailing or leading grid, or name sampler.grid= for difforge's DDIM along it"
    )


class DiffusersUNet(nn.Module):
    """A ``UNet2DModel`` behind difforge's network interface ``net(x, noise_labels, class_labels)``.

    ``x: (B, C, H, W)`` is the VP latent (the parameterization's ``c_in`` already applied),
    ``noise_labels: (B,)`` the timestep index ``t`` in ``[0, T - 1]`` (float: fractional between
    the table's entries), ``class_labels: (B,)`` long or None. Returns the UNet's output
    ``(B, C, H, W)`` (eps, x0 or v).
    """

    learned_variance = False

    def __init__(self, unet: nn.Module, in_channels: int, num_classes: int = 0) -> None:
        super().__init__()
        self.unet = unet
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)

    def forward(
        self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None
    ) -> Tensor:
        if self.num_classes and class_labels is None:
            raise ValueError("this UNet is class-conditional: give class labels")
        labels = class_labels if self.num_classes else None
        dtype = next(self.unet.parameters()).dtype
        return self.unet(x.to(dtype), noise_labels, class_labels=labels).sample


def load_unet(spec: PipelineSpec) -> nn.Module:
    """The pipeline's UNet2DModel from its safetensors weights (local files only, eval mode)."""
    from diffusers import UNet2DModel

    unet_dir = spec.path / "unet"
    if not any(unet_dir.glob("*.safetensors")):
        raise DifforgeError(
            f"{unet_dir}: no .safetensors weights (difforge reads safetensors only, never pickles; "
            "re-save with save_pretrained(safe_serialization=True))"
        )
    try:
        unet = UNet2DModel.from_pretrained(
            str(unet_dir), local_files_only=True, use_safetensors=True, low_cpu_mem_usage=False
        )
    except (OSError, ValueError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DifforgeError(f"cannot load the UNet of {unet_dir}: {first}") from None
    return unet.eval().requires_grad_(False)


def load_pipeline(path: str | Path, sampler: Any) -> Any:
    """A :class:`~difforge.training.module.DiffusionModule` around the pipeline at ``path``: every
    difforge sampler, metric and command runs on it (``sampler`` is its default sampler).

    ``clip_sample`` becomes ``clip_denoised``; a ``clip_sample_range`` other than 1 is refused
    (difforge clips images to their range [-1, 1]).
    """
    from difforge.diffusion.losses import DenoisingLoss
    from difforge.interop.pipeline_module import PipelineModule

    spec = read_pipeline(path)
    if spec.clip_sample and spec.clip_sample_range != 1.0:
        raise DifforgeError(
            f"{spec.scheduler_source}: clip_sample_range={spec.clip_sample_range} is not "
            "supported with clip_sample=true; difforge clips to [-1, 1]"
        )
    pipeline_sampler(sampler, spec)  # refused settings fail here, before the weights load
    net = DiffusersUNet(load_unet(spec), spec.data_shape[0], spec.num_classes)
    module = PipelineModule(
        spec,
        net=net,
        schedule=spec.schedule,
        parameterization=PARAMETERIZATIONS[spec.parameterization](),
        loss=DenoisingLoss(),
        sampler=sampler,
        data_shape=spec.data_shape,
        ema_decay=0.0,
        # A UNet2DModel's class table has no null label: guidance is refused on it.
        class_dropout=0.0 if spec.num_classes else None,
        clip_denoised=spec.clip_sample,
    )
    return module.eval()
