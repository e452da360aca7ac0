"""The LightningModule: a schedule, a network, a parameterization and a loss from the engine,
with EMA weights, AdamW with linear warm-up, and sampling for grids and metrics.

The math lives in ``difforge.diffusion``; this class only wires it to Lightning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, cast

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from difforge.checks import check_flag, check_int, check_optional_flag, check_real
from difforge.diffusion.guidance import (
    ClassifierFreeGuidance,
    check_guidance,
    check_guidance_trained,
)
from difforge.diffusion.noise_laws import NoiseLaw, ScheduleLaw
from difforge.diffusion.parameterization import ClippedDenoiser, Denoiser, Parameterization
from difforge.diffusion.samplers import Sampler, SampleResult
from difforge.diffusion.schedules import DiscreteSchedule, NoiseSchedule
from difforge.training.ema import EMA
from difforge.training.nonfinite import NonfiniteRecorder, NonfiniteStep, gradients_nonfinite

NUM_NOISE_QUARTILES = 4
log = logging.getLogger("difforge")


def nonfinite_parameter_groups(net: nn.Module, depth: int = 2) -> list[str]:
    """Names (to ``depth`` components) of the parameter groups holding NaN/Inf weights or gradients."""
    groups: list[str] = []
    for name, parameter in net.named_parameters():
        values_bad = not torch.isfinite(parameter).all()
        grad_bad = parameter.grad is not None and not torch.isfinite(parameter.grad).all()
        group = ".".join(name.split(".")[:depth])
        if (values_bad or grad_bad) and group not in groups:
            groups.append(group)
    return groups


def check_network_fits_data(net: Any, data_shape: tuple[int, ...]) -> None:
    """Catch channel and size mismatches between data and network at start, with both values named."""
    if len(data_shape) == 3:
        channels, height, width = data_shape
        net_channels = getattr(net, "in_channels", None)
        if net_channels is not None and net_channels != channels:
            raise ValueError(
                f"the data has {channels} channel(s) but model.in_channels={net_channels}"
            )
        size = getattr(net, "image_size", None)
        if size is not None and (height, width) != (size, size):
            raise ValueError(f"the data is {height}x{width} but model.image_size={size}")
        if getattr(net, "dim", None) is not None:
            raise ValueError(
                f"model {type(net).__name__} is for vector data, but the data are images of shape {data_shape}"
            )
    else:
        dim = getattr(net, "dim", None)
        if dim is None:
            raise ValueError(
                f"model {type(net).__name__} is for images, but the data are vectors of shape {data_shape}; use model=mlp"
            )
        if dim != data_shape[0]:
            raise ValueError(f"the data have dimension {data_shape[0]} but model.dim={dim}")


def check_betas(betas: object) -> tuple[float, float]:
    """AdamW's ``(beta1, beta2)``: any sequence of two numbers in [0, 1) (Hydra gives a ListConfig)."""
    message = f"module.betas must be two numbers in [0, 1), got {betas!r}"
    if not isinstance(betas, Sequence) or isinstance(betas, str) or len(betas) != 2:
        raise ValueError(message)
    try:
        beta1, beta2 = (check_real("module.betas", b, 0.0, 1.0, high_open=True) for b in betas)
    except ValueError:
        raise ValueError(message) from None
    return beta1, beta2


# Ho & Salimans 2022 train with p_uncond in {0.1, 0.2}.
DEFAULT_CLASS_DROPOUT = 0.1


def class_dropout_for(class_dropout: object, num_classes: int) -> float:
    """The label dropout: None -> 0.1 for a class-conditional network, 0 for an unconditional one,
    for which a value cannot apply and is refused."""
    if class_dropout is None:
        return DEFAULT_CLASS_DROPOUT if num_classes else 0.0
    dropout = check_real("module.class_dropout", class_dropout, 0.0, 1.0, high_open=True)
    if num_classes == 0:
        raise ValueError(
            f"module.class_dropout={class_dropout} needs a class-conditional model "
            "(model.num_classes=<the data's number of classes>); "
            "leave it null for an unconditional one"
        )
    return dropout


# Lightning's logger connector takes a logged "step" as the step of the logged row (not a metric).
STEP_METRIC = "step"


class DiffusionModule(L.LightningModule):
    """Trains ``net`` as a denoiser and samples with its EMA weights.

    Args:
        net: network with the ``difforge.nets`` interface.
        schedule, parameterization, loss, sampler: engine objects (``configs/schedule`` ...).
        data_shape: shape of one sample, ``(C, H, W)`` or ``(D,)``.
        lr, betas, weight_decay, warmup_steps: AdamW and its linear warm-up (per optimizer step).
        ema_decay, ema_warmup: see ``difforge.training.ema.EMA``.
        class_dropout: probability of replacing a label by the null label while training a
            conditional network, for classifier-free guidance (Ho & Salimans 2022, sec. 3.2);
            None: 0.1 for a conditional network. A value for an unconditional one is refused.
        guidance_scale: classifier-free guidance weight used when sampling with labels.
        compile: ``torch.compile`` the training forward pass (loss and network) and the EMA
            denoiser that sampling and validation call (in place: state-dict keys unchanged).
        channels_last: keep image tensors in channels-last memory format; None: on when
            training on a CUDA device with a network that prefers it (``net.prefers_channels_last``,
            the U-Net: cuDNN's convolutions and GroupNorm run faster in NHWC under bf16).
        max_nonfinite_skips: steps with a non-finite loss or gradient to skip (with a warning)
            before stopping; 0 stops at the first. Such a step never reaches the weights: it is
            flagged on the device and the optimizer skips it there; the run reports it (naming
            the step) at the next logging step, checkpoint or epoch end, without a per-step
            host-device synchronisation.
        clip_denoised: clamp denoised estimates to [-1, 1] while sampling (static thresholding);
            None: on for images, off for vector data.
        noise_law: the law of training noise levels (``difforge.diffusion.noise_laws``);
            None: the schedule's own.
        run_config: the config the module was built from (``training.build.build_module``), saved
            in its checkpoints so that sample.py, eval.py and a resumed run can rebuild it.

    Raises:
        ValueError: a setting of the wrong type (a bool setting must be a bool, or None where
            None is described above) or out of range, or a network that does not fit
            ``data_shape``, the loss or the options; each names the key (``module.lr``) and value.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule,
        parameterization: Parameterization,
        loss: nn.Module,
        sampler: Sampler,
        data_shape: tuple[int, ...],
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        ema_decay: float = 0.9999,
        ema_warmup: bool = True,
        class_dropout: float | None = None,
        guidance_scale: float = 1.0,
        compile: bool = False,
        channels_last: bool | None = None,
        max_nonfinite_skips: int = 0,
        clip_denoised: bool | None = None,
        noise_law: NoiseLaw | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        lr = check_real("module.lr", lr, 0.0, low_open=True)
        betas = check_betas(betas)
        weight_decay = check_real("module.weight_decay", weight_decay, 0.0)
        warmup_steps = check_int("module.warmup_steps", warmup_steps)
        ema_decay = check_real("module.ema_decay", ema_decay, 0.0, 1.0, high_open=True)
        ema_warmup = check_flag("module.ema_warmup", ema_warmup)
        compile = check_flag("module.compile", compile)
        channels_last = check_optional_flag(
            "module.channels_last", channels_last, "on for the U-Net on a CUDA GPU"
        )
        max_nonfinite_skips = check_int("module.max_nonfinite_skips", max_nonfinite_skips)
        clip_denoised = check_optional_flag(
            "module.clip_denoised", clip_denoised, "on for images, off for vectors"
        )
        check_network_fits_data(net, tuple(data_shape))
        if channels_last and len(data_shape) != 3:
            raise ValueError(
                f"module.channels_last=true is a memory layout for images; the data are vectors of shape {tuple(data_shape)}"
            )
        loss_needs_variance = bool(getattr(loss, "learned_variance", False))
        net_has_variance = bool(getattr(net, "learned_variance", False))
        if loss_needs_variance != net_has_variance:
            raise ValueError(
                f"loss {type(loss).__name__} {'needs' if loss_needs_variance else 'cannot train'} a network with a "
                f"learned variance, but model.learned_variance={net_has_variance} (use loss=hybrid with learned variance)"
            )
        self.data_shape = tuple(int(d) for d in data_shape)
        self.clip_denoised = len(self.data_shape) == 3 if clip_denoised is None else clip_denoised
        self._channels_last_option = channels_last
        self.channels_last = bool(channels_last)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.denoiser = Denoiser(net, schedule, parameterization)
        self.ema = EMA(net, ema_decay, ema_warmup)
        # The EMA network is saved once, as ``ema.net.*``: this view of it is kept out of the
        # module tree, so no second copy of it enters the state_dict.
        self.__dict__["ema_denoiser"] = Denoiser(self.ema.net, schedule, parameterization)
        self.register_load_state_dict_pre_hook(DiffusionModule._drop_legacy_ema_copy)
        self.schedule = schedule
        self.noise_law = noise_law or ScheduleLaw()
        self.noise_law.check(schedule)
        self.loss_fn = loss
        self.sampler = sampler
        self.lr = lr
        self.betas = betas
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.num_classes = int(getattr(net, "num_classes", 0))
        self.class_dropout = class_dropout_for(class_dropout, self.num_classes)
        self.guidance_scale = check_guidance(
            self.num_classes, guidance_scale, "module.guidance_scale"
        )
        self.val_loss = MeanMetric()
        # Per noise quartile: sum of finite per-sample losses and their count, this epoch (on
        # the device; one index_add_ each per step, read once per epoch).
        self._quartile_sums: Tensor | None = None
        self._train_forward = (
            torch.compile(self._loss_per_sample) if compile else self._loss_per_sample
        )
        if compile:
            self.ema_denoiser.compile()
        self.max_nonfinite_skips = max_nonfinite_skips
        self.nonfinite_skips = 0
        self._nonfinite = NonfiniteRecorder(max_nonfinite_skips + 1)
        self._flagged_optimizer: torch.optim.Optimizer | None = None
        self.run_config = run_config
        # Metric name -> the global step of the weights it last measured (see ``log``).
        self.metric_steps: dict[str, int] = {}

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        """Lightning's ``log``, also recording in ``metric_steps[name]`` the global step at which
        the value was logged: the step of the weights it measured (callbacks log through here
        too), written beside the value in ``final_metrics.json``."""
        super().log(name, value, *args, **kwargs)
        self.metric_steps[name] = self.global_step

    ema_denoiser: Denoiser

    @staticmethod
    def _drop_legacy_ema_copy(
        module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any
    ) -> None:
        # Checkpoints written before the EMA network was saved once hold it twice, also as
        # ``ema_denoiser.net.*``; ``ema.net.*`` is the one tools rewrite (scripts/posthoc_ema.py).
        for key in [k for k in state_dict if k.startswith(f"{prefix}ema_denoiser.")]:
            del state_dict[key]

    # --- training -----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # Before the optimizer is built: its state takes the parameters' memory format.
        if self._channels_last_option is not None or self.channels_last:
            return
        net = self.denoiser.net
        if (
            len(self.data_shape) == 3
            and getattr(net, "prefers_channels_last", False)
            and self.trainer.strategy.root_device.type == "cuda"
        ):
            self.channels_last = True
            net.to(memory_format=torch.channels_last)
            self.ema.net.to(memory_format=torch.channels_last)

    def _prepare(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _training_labels(self, y: Tensor) -> Tensor | None:
        if self.num_classes == 0:
            return None
        drop = torch.rand(y.shape, device=y.device) < self.class_dropout
        return torch.where(drop, torch.full_like(y, self.num_classes), y)

    def _loss_per_sample(
        self, denoiser: Denoiser, x0: Tensor, sigma: Tensor, noise: Tensor, labels: Tensor | None
    ) -> Tensor:
        return self.loss_fn(denoiser, x0, sigma, noise, labels)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x0, y = batch
        x0 = self._prepare(x0)
        sigma = self.noise_law.sample(self.schedule, x0.shape[0], device=x0.device)
        noise = torch.randn_like(x0)
        per_sample = self._train_forward(self.denoiser, x0, sigma, noise, self._training_labels(y))
        # A non-finite loss is flagged on the device; the optimizer skips the step there.
        finite = self._nonfinite.note_loss(per_sample, sigma).to(torch.float32)
        values = torch.where(finite > 0, per_sample.detach().float(), 0.0)
        quartile = (
            (self.noise_law.quantile(self.schedule, sigma) * NUM_NOISE_QUARTILES)
            .long()
            .clamp(0, NUM_NOISE_QUARTILES - 1)
        )
        if self._quartile_sums is None or self._quartile_sums.device != values.device:
            self._quartile_sums = values.new_zeros(2, NUM_NOISE_QUARTILES)
        self._quartile_sums[0].index_add_(0, quartile, values)
        self._quartile_sums[1].index_add_(0, quartile, finite)
        # Loggers write only every log_every_n_steps: log (and build the progress bar's value)
        # only then, the step's mean loss over its finite samples.
        if (self.global_step + 1) % self._log_every_n_steps() == 0:
            batch_size = x0.shape[0]
            loss = values.sum() / finite.sum().clamp(min=1)
            self.log(
                "train/loss",
                loss,
                on_step=True,
                on_epoch=False,
                prog_bar=True,
                batch_size=batch_size,
            )
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            self.log("train/lr", lr, on_step=True, on_epoch=False, batch_size=batch_size)
        return per_sample.mean()

    def _log_every_n_steps(self) -> int:
        return int(getattr(self.trainer, "log_every_n_steps", 50))

    def on_train_epoch_end(self) -> None:
        # Epoch-level quartile losses: accumulated every step, logged once here.
        if self._quartile_sums is not None:
            sums = self._quartile_sums
            if self.trainer.world_size > 1:
                sums = cast(Tensor, self.trainer.strategy.reduce(sums, reduce_op="sum"))
            means = sums[0] / sums[1]  # NaN for a quartile without samples this epoch
            for k in range(NUM_NOISE_QUARTILES):
                self.log(f"train/loss_q{k + 1}", means[k], on_step=False, on_epoch=True)
        self._report_nonfinite()

    def _nonfinite_message(self, bad: NonfiniteStep) -> str:
        parts = [f"non-finite {bad.kind} at global step {bad.step}"]
        if bad.sigmas:
            levels = torch.tensor(bad.sigmas, dtype=torch.float64)
            if isinstance(self.schedule, DiscreteSchedule):
                steps = (self.schedule.sigma_to_timestep(levels) + 1).round().long().tolist()
                parts.append(f"timesteps t = {steps} of T = {self.schedule.num_timesteps}")
            else:
                parts.append(f"noise levels sigma = {[round(v, 4) for v in bad.sigmas]}")
        groups = nonfinite_parameter_groups(self.denoiser.net)
        parts.append(
            f"non-finite weights or gradients now in: {', '.join(groups) if groups else 'none'}"
        )
        if self.max_nonfinite_skips:
            parts.append(
                f"after skipping {self.nonfinite_skips} such step(s), the limit module.max_nonfinite_skips={self.max_nonfinite_skips}"
            )
        parts.append(
            "the last checkpoint is intact; lower module.lr, use gradient clipping, or check the data"
        )
        return "; ".join(parts)

    def _report_nonfinite(self) -> None:
        """Warn about the skipped non-finite steps recorded since the last report; stop with
        the details at the first one over ``max_nonfinite_skips`` (one host-device sync)."""
        for bad in self._nonfinite.read():
            if self.nonfinite_skips >= self.max_nonfinite_skips:
                raise FloatingPointError(self._nonfinite_message(bad))
            self.nonfinite_skips += 1
            log.warning("skipping a step: %s", self._nonfinite_message(bad))

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # Called after backward (and after unscaling under fp16) on every optimizer step.
        if "16-mixed" in str(self.trainer.precision) and "bf16" not in str(self.trainer.precision):
            # fp16 mixed precision: the gradient scaler skips overflowing steps itself.
            super().configure_gradient_clipping(
                optimizer, gradient_clip_val, gradient_clip_algorithm
            )
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            # One pass gives both: the total norm is non-finite iff some gradient is.
            total = torch.nn.utils.clip_grad_norm_(params, gradient_clip_val, foreach=True)
            grads_bad = ~torch.isfinite(total)
        else:
            grads_bad = gradients_nonfinite(grads)
            super().configure_gradient_clipping(
                optimizer, gradient_clip_val, gradient_clip_algorithm
            )
        found_inf = self._nonfinite.found_inf(grads_bad)
        if self.trainer.world_size > 1:
            # Every rank must skip the same steps (a rank's own loss can be the only bad one).
            found_inf = cast(Tensor, self.trainer.strategy.reduce(found_inf, reduce_op="max"))
        self._nonfinite.record(self.global_step, found_inf)
        if optimizer.defaults.get("fused"):
            # Read by fused Adam/AdamW in step(): the update is skipped on the device.
            optimizer.found_inf = found_inf  # type: ignore[attr-defined]
            self._flagged_optimizer = optimizer
            return
        # Other optimizers cannot skip on the device: read the flag now (a sync).
        skipped_before = self.nonfinite_skips
        self._report_nonfinite()
        if self.nonfinite_skips > skipped_before:
            # A skipped step: AdamW leaves parameters without gradients untouched.
            optimizer.zero_grad(set_to_none=True)

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        # The (x0, y) pairs of difforge's data modules, moved without Lightning's generic walk.
        if isinstance(batch, (tuple, list)) and all(isinstance(t, Tensor) for t in batch):
            return type(batch)(t.to(device, non_blocking=True) for t in batch)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self._flagged_optimizer is not None:
            del self._flagged_optimizer.found_inf  # type: ignore[attr-defined]
            self._flagged_optimizer = None
        # Right after the weights change, so checkpoints saved in on_train_batch_end include it.
        self.ema.update(self.denoiser.net)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step % self._log_every_n_steps() == 0:
            self._report_nonfinite()

    def on_train_start(self) -> None:
        if self.trainer.world_size > 1:
            # Every rank starts from the same RNG state (seed or checkpoint); the training noise
            # must differ between ranks, so derive one stream per rank from it.
            base = int(torch.randint(0, 2**62, (1,)).item())
            torch.manual_seed(base + self.global_rank)

    def on_train_end(self) -> None:
        self._report_nonfinite()
        if self.trainer.world_size > 1:
            # Every rank updates its EMA from the same synchronised weights; check they agree.
            checksum = (
                torch.stack([p.double().sum() for p in self.ema.net.parameters()]).sum().reshape(1)
            )
            gathered = cast(Tensor, self.all_gather(checksum))
            if not torch.allclose(gathered, gathered[0].expand_as(gathered), rtol=0, atol=0):
                raise RuntimeError(
                    f"EMA weights differ between ranks: checksums {gathered.flatten().tolist()}"
                )

    def on_train_epoch_start(self) -> None:
        # Epoch-level sums restart each epoch.
        self._quartile_sums = None

    def on_validation_start(self) -> None:
        # Validation and the callbacks that sample at its end (FID, grids) must not move the RNG
        # the training noise comes from: a resumed run does not repeat the validation that
        # followed its last step, and must still draw the noise an uninterrupted run draws.
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self._training_rng = (torch.get_rng_state(), cuda)

    def on_validation_end(self) -> None:
        # The logged "step" names this validation's row only: left among the callback metrics,
        # it would name a later checkpoint ("{step}" in a filename) with this step. Module hooks
        # run after the callbacks' (a checkpoint saved here still reads it, rightly).
        self.trainer.callback_metrics.pop(STEP_METRIC, None)
        # (FID draws its samples in on_validation_end.)
        state = getattr(self, "_training_rng", None)
        if state is not None:
            torch.set_rng_state(state[0])
            if state[1] is not None:
                torch.cuda.set_rng_state_all(state[1])

    def on_validation_epoch_end(self) -> None:
        # Lightning logs a validation inside fit at the step before the optimizer step that
        # produced the weights (after fit: at that step itself); a logged "step" sets the row's
        # step, so every validation row is at the global step of the weights it measured.
        self.log(STEP_METRIC, float(self.global_step), on_step=False, on_epoch=True, sync_dist=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x0, y = batch
        x0 = self._prepare(x0)
        # Fixed noise per batch so validation losses are comparable across epochs.
        generator = torch.Generator().manual_seed(batch_idx)
        sigma = self.noise_law.sample(
            self.schedule, x0.shape[0], device=x0.device, generator=generator
        )
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        labels = y if self.num_classes > 0 else None
        self.val_loss(self.loss_fn(self.ema_denoiser, x0, sigma, noise, labels))
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def configure_optimizers(self) -> Any:
        # Fused AdamW (one kernel per parameter group; CPU, CUDA and MPS) skips a step flagged
        # non-finite on the device; elsewhere the multi-tensor (foreach) implementation.
        fused = self.device.type in ("cpu", "cuda", "mps")
        optimizer = torch.optim.AdamW(
            self.denoiser.parameters(),
            lr=self.lr,
            betas=self.betas,
            weight_decay=self.weight_decay,
            fused=fused or None,
            foreach=None if fused else True,
        )
        warmup = self.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # --- sampling -----------------------------------------------------------------------------
    def sampling_denoiser(self, use_ema: bool = True) -> nn.Module:
        denoiser: nn.Module = self.ema_denoiser if use_ema else self.denoiser
        if self.num_classes > 0 and self.guidance_scale != 1.0:
            check_guidance_trained(self.guidance_scale, self.class_dropout)
            denoiser = ClassifierFreeGuidance(denoiser, self.guidance_scale)
        if self.clip_denoised:
            denoiser = ClippedDenoiser(denoiser)
        return denoiser

    @torch.no_grad()
    def generate(
        self,
        num_samples: int,
        *,
        sampler: Sampler | None = None,
        class_labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 256,
        use_ema: bool = True,
        progress: bool = False,
        noise: Tensor | None = None,
    ) -> SampleResult:
        """Draw ``num_samples`` samples ``(N, *data_shape)`` in data space, in batches (clamped
        to [-1, 1] when ``clip_denoised``).

        ``class_labels: (N,)`` for a conditional model (None: cycle through the classes).
        ``noise: (N, *data_shape)`` standard-normal starting draws (None: drawn with ``generator``).
        ``nfe`` of the result is per sample (network evaluations per batch).
        """
        if num_samples < 1 or batch_size < 1:
            raise ValueError(
                f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}"
            )
        sampler = sampler or self.sampler
        if class_labels is None and self.num_classes > 0:
            class_labels = torch.arange(num_samples) % self.num_classes
        if class_labels is not None and self.num_classes == 0:
            raise ValueError(
                "class labels were given but the model is unconditional (model.num_classes=0)"
            )
        denoiser = self.sampling_denoiser(use_ema)
        was_training = self.training
        self.eval()
        chunks, nfe, sigmas = [], 0, torch.zeros(0)
        starts: Iterable[int] = range(0, num_samples, batch_size)
        if progress:
            from rich.progress import track

            starts = track(
                starts, description=f"sampling ({sampler.algorithm}, {sampler.steps} steps)"
            )
        for start in starts:
            n = min(batch_size, num_samples - start)
            labels = (
                class_labels[start : start + n].to(self.device)
                if class_labels is not None
                else None
            )
            result = sampler(
                denoiser,
                self.schedule,
                (n, *self.data_shape),
                device=self.device,
                generator=generator,
                class_labels=labels,
                noise=None if noise is None else noise[start : start + n],
            )
            samples = result.samples.float().cpu()
            if self.clip_denoised:
                # A grid ending at sigma_min leaves that much noise on the clipped estimate; the
                # data's range is [-1, 1], and diffusers' pipelines clamp their output to it too.
                samples = samples.clamp(-1.0, 1.0)
            chunks.append(samples)
            nfe, sigmas = result.nfe, result.sigmas
        self.train(was_training)
        return SampleResult(torch.cat(chunks), nfe, sigmas)

    # --- checkpoints --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # No checkpoint is written past an unreported non-finite step.
        self._report_nonfinite()
        checkpoint["difforge"] = {
            "config": self.run_config,
            "data_shape": list(self.data_shape),
            "world_size": self.trainer.world_size,
        }
        # The training noise comes from torch's global RNG: saving it makes a resumed run draw the
        # same noise as one that never stopped.
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved_world = checkpoint.get("difforge", {}).get("world_size", 1)
        fit_loop_state = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        if (
            saved_world != 1 or self.trainer.world_size != 1
        ) and "combined_loader" in fit_loop_state:
            # The exact data position is kept on one device only: under DDP Lightning's
            # distributed sampler (seeded per epoch, not resumable mid-epoch) replaces ours.
            del fit_loop_state["combined_loader"]
            log.info(
                "resuming with %d process(es) (saved with %d): the current epoch's data order restarts",
                self.trainer.world_size,
                saved_world,
            )
        states = checkpoint.get("rng_states", {})
        if "torch" in states:
            torch.set_rng_state(states["torch"])
        if (
            "cuda" in states
            and torch.cuda.is_available()
            and len(states["cuda"]) == torch.cuda.device_count()
        ):
            torch.cuda.set_rng_state_all(states["cuda"])


def effective_batch_size(batch_size: int, devices: int, num_nodes: int, accumulate: int) -> int:
    """Samples per optimizer step across all processes."""
    return batch_size * devices * num_nodes * accumulate
