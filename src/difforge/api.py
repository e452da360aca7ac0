"""The Python API for notebooks: ``difforge.load(path)``, ``difforge.load_exact(data)`` and the
metric functions; the entry points (``src/sample.py``, ``src/eval.py``, ``src/restore.py``) load
their models through the same two functions.

``load`` reads a difforge checkpoint (a ``.ckpt`` file, or a run directory holding
``checkpoints/last.ckpt``) or a diffusers pipeline folder (``model_index.json``); ``load_exact``
builds the exact denoiser of a Gaussian-mixture law (``model=gmm_oracle data=gmm1d``). Both return
a :class:`Model`. ``docs/api.md`` shows them in use; its examples run as doctests.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from difforge.devices import resolve_device
from difforge.diffusion.gaussian_mixture import GaussianMixture, GaussianMixtureOracle
from difforge.diffusion.guidance import check_guidance
from difforge.diffusion.samplers import Sampler, SampleResult
from difforge.diffusion.schedules import EDMSchedule, NoiseSchedule
from difforge.errors import DifforgeError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from difforge.posterior.operators.base import LinearOperator
    from difforge.posterior.samplers import PosteriorSampler
    from difforge.training.module import DiffusionModule

# The kinds of model ``load`` reads, by what marks them on disk.
KINDS = ("difforge", "diffusers")


class OracleSampling:
    """The exact denoiser of a Gaussian mixture dressed as a trained module: the attributes and
    ``generate`` of :class:`~difforge.training.module.DiffusionModule` that sampling, evaluation
    and restoration read. It lives on the CPU (its float64 mixture is tiny), has no EMA weights
    and no classes."""

    num_classes = 0
    guidance_scale = 1.0
    class_dropout = 0.0
    clip_denoised = False
    device = torch.device("cpu")

    def __init__(self, oracle: GaussianMixtureOracle, schedule: Any, sampler: Sampler) -> None:
        self.oracle, self.schedule, self.sampler = oracle, schedule, sampler
        self.data_shape = (oracle.mixture.dim,)

    def eval(self) -> OracleSampling:
        return self

    def to(self, device: torch.device | str) -> OracleSampling:
        """Stays on the CPU: the exact denoiser's cost is a few (K, D) float64 products."""
        return self

    def sampling_denoiser(self, use_ema: bool = True) -> GaussianMixtureOracle:
        return self.oracle

    def generate(
        self,
        num_samples: int,
        *,
        generator: torch.Generator,
        batch_size: int,
        sampler: Sampler | None = None,
        noise: Tensor | None = None,
        **_: Any,
    ) -> SampleResult:
        sampler = sampler or self.sampler
        results = [
            sampler(
                self.oracle,
                self.schedule,
                (min(batch_size, num_samples - start), *self.data_shape),
                generator=generator,
                noise=None if noise is None else noise[start : start + batch_size],
            )
            for start in range(0, num_samples, batch_size)
        ]
        return SampleResult(
            torch.cat([r.samples for r in results]), results[0].nfe, results[0].sigmas
        )


class Model:
    """A diffusion model: ``sample`` draws images or vectors with any difforge sampler,
    ``restore`` draws from the posterior given a measurement, ``evaluate`` runs the paper protocol
    against a reference file.

    Attributes: ``module`` (the :class:`~difforge.training.module.DiffusionModule`, or
    :class:`OracleSampling` for an exact model), ``source`` (the path it was read from; None for
    an exact model), ``kind`` (``difforge``, ``diffusers`` or ``exact``), ``mixture`` (the
    Gaussian-mixture law of its data when known, else None), ``config`` (a difforge checkpoint's
    training config, else None), ``data_shape``, ``num_classes``, ``schedule``.
    """

    def __init__(
        self,
        module: DiffusionModule | OracleSampling,
        source: Path | None,
        kind: str,
        mixture: GaussianMixture | None = None,
        config: DictConfig | None = None,
    ) -> None:
        self.module = module.eval()
        self.source, self.kind = source, kind
        self.mixture, self.config = mixture, config

    @property
    def data_shape(self) -> tuple[int, ...]:
        return self.module.data_shape

    @property
    def num_classes(self) -> int:
        return self.module.num_classes

    @property
    def schedule(self) -> Any:
        return self.module.schedule

    @property
    def device(self) -> torch.device:
        return self.module.device

    def to(self, device: torch.device | str) -> Model:
        """This model on ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a
        ``torch.device``); raises DifforgeError if this machine has no such device."""
        self.module.to(resolve_device(device))
        return self

    def sample(
        self,
        n: int,
        sampler: str = "dpmpp_2m",
        steps: int = 20,
        *,
        grid: str | None = None,
        seed: int = 0,
        noise: Tensor | np.ndarray | None = None,
        class_labels: Tensor | None = None,
        batch_size: int = 256,
        use_ema: bool = True,
        guidance_scale: float | None = None,
        **options: Any,
    ) -> Tensor:
        """``n`` samples ``(n, *data_shape)`` (images in [-1, 1]), float32 on the CPU.

        ``sampler``, ``steps``, ``grid`` and ``**options`` build a
        :class:`~difforge.diffusion.samplers.Sampler` (``eta=...``, ``S_churn=...``);
        ``seed`` seeds the generator; ``noise`` ``(n, *data_shape)`` gives the standard-normal
        starting draws instead (diffusers' ``latents``). ``guidance_scale``: classifier-free
        guidance w for this call (None: the checkpoint's). Raises ValueError for guidance on an
        unconditional model or on one trained without label dropout (``module.class_dropout=0``).
        """
        built = Sampler(sampler, steps, grid=grid, **options)
        generator = torch.Generator(self.device).manual_seed(int(seed))
        draws = None
        if noise is not None:
            draws = torch.as_tensor(noise, dtype=torch.float32)
            if tuple(draws.shape) != (n, *self.data_shape):
                raise DifforgeError(
                    f"noise has shape {tuple(draws.shape)}, expected {(n, *self.data_shape)}"
                )
        previous = self.module.guidance_scale
        if guidance_scale is not None:
            self.module.guidance_scale = check_guidance(self.num_classes, guidance_scale)
        try:
            return self.module.generate(
                n,
                sampler=built,
                generator=generator,
                batch_size=batch_size,
                class_labels=class_labels,
                use_ema=use_ema,
                noise=draws,
            ).samples
        finally:
            self.module.guidance_scale = previous

    def restore(
        self,
        y: Tensor | np.ndarray,
        operator: LinearOperator | str,
        posterior: str | PosteriorSampler = "dps",
        n: int = 1,
        *,
        sigma_y: float,
        steps: int | None = None,
        grid: str | None = None,
        seed: int = 0,
        generator: torch.Generator | None = None,
        class_labels: Tensor | None = None,
        batch_size: int = 256,
        use_ema: bool = True,
        **options: Any,
    ) -> Tensor:
        """``n`` draws of the posterior ``p(x | y)`` for each measurement ``y = A x + sigma_y n``,
        with this model as the prior: ``(N, n, *data_shape)`` float32 on the CPU (images in
        [-1, 1], clamped when the model clips its estimates).

        Args:
            y: ``(N, d_y)`` measurements (flat, as ``operator.measure`` gives them).
            operator: ``A``, a :class:`~difforge.posterior.operators.base.LinearOperator` for
                ``data_shape``, or an operator name built with its defaults
                (:func:`~difforge.posterior.operators.registry.build_operator`).
            posterior: a method name in ``POSTERIORS`` (``dps``, ``pigdm``, ``ddrm``, ...) or a
                built :class:`~difforge.posterior.samplers.PosteriorSampler`.
            sigma_y: the measurement noise's standard deviation, ``>= 0``.
            steps, grid, **options: build the method (``steps`` None: 100; ``zeta=`` for DPS,
                ``eta=`` for DDRM...); not with a built ``posterior``.
            seed: seeds the generator (on the model's device); ``generator``: use this one.
            class_labels: ``(N,)`` for a class-conditional model (None: its null class).
            batch_size: draws per network batch (the ``n`` draws of a row stay together).

        Raises:
            DifforgeError or ValueError (one line): ``y`` not ``(N, d_y)``, an operator that does
            not fit ``data_shape``, ``sigma_y < 0``, a method that does not fit the operator
            (RePaint on a non-mask, an SVD method without an SVD), a bad option.
        """
        from difforge.posterior.operators.registry import build_operator
        from difforge.posterior.samplers import PosteriorSampler

        if isinstance(operator, str):
            operator = build_operator(operator, self.data_shape)
        elif tuple(operator.x_shape) != tuple(self.data_shape):
            raise DifforgeError(
                f"operator {operator.name} is built for x_shape {tuple(operator.x_shape)}; this "
                f"model's data have shape {tuple(self.data_shape)}"
            )
        if isinstance(posterior, str):
            posterior = PosteriorSampler(
                posterior, 100 if steps is None else steps, grid, **options
            )
        elif steps is not None or grid is not None or options:
            raise DifforgeError(
                "steps, grid and method options build a posterior method by name; this "
                f"{posterior!r} is built already"
            )
        posterior.spec.check_fit(operator)
        y = torch.as_tensor(y, dtype=torch.float32)
        if y.ndim != 2 or y.shape[1] != operator.d_y:
            raise DifforgeError(
                f"y must have shape (N, {operator.d_y}) for operator {operator.name}, got "
                f"{tuple(y.shape)}"
            )
        if batch_size < 1 or isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DifforgeError(
                f"n and batch_size must be positive integers, got {n}, {batch_size}"
            )
        if generator is None:
            generator = torch.Generator(self.device).manual_seed(int(seed))
        denoiser = self.module.sampling_denoiser(use_ema)
        rows = max(1, batch_size // n)
        chunks = []
        for start in range(0, y.shape[0], rows):
            labels = None if class_labels is None else class_labels[start : start + rows]
            result = posterior(
                denoiser,
                self.schedule,
                y[start : start + rows].to(self.device),
                operator,
                sigma_y,
                n=n,
                generator=generator,
                class_labels=None if labels is None else labels.to(self.device),
            )
            chunks.append(result.samples.detach().float().cpu())
        samples = torch.cat(chunks)
        if self.module.clip_denoised:
            samples = samples.clamp(-1.0, 1.0)  # as ``generate`` leaves its samples
        return samples.reshape(y.shape[0], n, *self.data_shape)

    def evaluate(
        self,
        fid_ref: str | Path,
        num_samples: int = 50_000,
        sampler: str = "dpmpp_2m",
        steps: int = 20,
        *,
        seeds: int = 1,
        seed: int = 0,
        batch_size: int = 256,
        inception_weights: str | Path | None = None,
        dinov2_weights: str | Path | None = None,
        dinov2_ref: str | Path | None = None,
        precision_recall: bool | None = None,
        progress: bool = True,
        **options: Any,
    ) -> dict[str, Any]:
        """The paper protocol (:func:`difforge.metrics.protocol.evaluate_protocol`) in this
        process: FID, Inception Score, precision/recall and (with ``dinov2_weights``) FD_DINOv2
        of ``num_samples`` samples against the reference file ``fid_ref``."""
        from difforge.metrics.features import inception
        from difforge.metrics.protocol import Extractors, evaluate_protocol
        from difforge.metrics.reference_files import load_reference_file

        if len(self.data_shape) != 3:
            raise DifforgeError(f"evaluate needs an image model, this one draws {self.data_shape}")
        previous = self.module.sampler
        self.module.sampler = Sampler(sampler, steps, **options)
        extractors = Extractors(inception(inception_weights).to(self.device))
        dinov2_reference = None
        if dinov2_weights is not None:
            from difforge.metrics.dinov2 import load_dinov2

            extractors.dinov2 = load_dinov2(dinov2_weights).to(self.device)
            if dinov2_ref is not None:
                file = load_reference_file(dinov2_ref)
                dinov2_reference = (file.mu, file.sigma)
        try:
            return evaluate_protocol(
                self.module,
                load_reference_file(fid_ref),
                extractors,
                num_samples=num_samples,
                batch_size=batch_size,
                seeds=list(range(seed, seed + seeds)),
                device=self.device,
                dinov2_reference=dinov2_reference,
                precision_recall_enabled=precision_recall,
                progress=progress,
            )
        finally:
            self.module.sampler = previous

    def __repr__(self) -> str:
        if isinstance(self.module, OracleSampling):
            return (
                f"Model(exact, data_shape={self.data_shape}, schedule={self.schedule!r}, "
                f"components={self.module.oracle.mixture.num_components})"
            )
        return (
            f"Model({self.kind}, data_shape={self.data_shape}, schedule={self.schedule!r}, "
            f"parameterization={self.module.denoiser.parameterization.name!r})"
        )


def load(
    path: str | Path,
    device: torch.device | str = "cpu",
    *,
    kind: str | None = None,
    sampler: Sampler | None = None,
) -> Model:
    """A :class:`Model` from a difforge checkpoint (``.ckpt`` file or a run directory with
    ``checkpoints/last.ckpt``) or a diffusers pipeline folder (``model_index.json``), on ``device``
    (``auto``: whatever is there).

    ``kind``: ``difforge`` or ``diffusers`` to read ``path`` as that kind (the entry points'
    ``ckpt_path=`` and ``pretrained=``), with that kind's own errors; None tells them apart.
    ``sampler``: the model's default sampler (``module.sampler``); None keeps a checkpoint's own
    and gives a pipeline ``dpmpp_2m`` with 20 steps (completed from its scheduler's settings).

    Raises DifforgeError (one line) for a path that is neither, or not the ``kind`` named, or a
    device this machine lacks (checked before anything is read).
    """
    from difforge.data.mixtures import known_mixture
    from difforge.interop.diffusers_pipeline import load_pipeline
    from difforge.training.build import module_from_checkpoint

    resolve_device(device)
    source = Path(path).expanduser()
    if kind is None:
        if source.is_dir() and (source / "model_index.json").is_file():
            kind = "diffusers"
        elif source.is_file() or (source / "checkpoints" / "last.ckpt").is_file():
            kind = "difforge"
        else:
            raise DifforgeError(
                f"difforge.load({str(path)!r}): not a difforge checkpoint (.ckpt, or a run "
                "directory with checkpoints/last.ckpt) nor a diffusers pipeline folder "
                "(model_index.json)"
            )
    if kind == "diffusers":
        module = load_pipeline(source, sampler or Sampler("dpmpp_2m", 20))
        return Model(module, source, kind).to(device)
    if kind != "difforge":
        raise DifforgeError(f"difforge.load: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if source.is_dir() and (source / "checkpoints" / "last.ckpt").is_file():
        source = source / "checkpoints" / "last.ckpt"
    module, config = module_from_checkpoint(source)
    if sampler is not None:
        module.sampler = sampler
    return Model(module, source, kind, known_mixture(config.data), config).to(device)


def load_exact(
    data: GaussianMixture | Mapping[str, Any] | str | Path,
    schedule: NoiseSchedule | None = None,
    *,
    sampler: Sampler | None = None,
) -> Model:
    """The exact model of a Gaussian-mixture law (``model=gmm_oracle``): its denoiser is
    ``E[x_0 | x]`` in closed form, so sampling and restoring with it carry no learning error.

    ``data``: the mixture, or a data config whose law is known
    (:func:`difforge.data.mixtures.known_mixture`): a mapping with its ``_target_`` and options,
    or the path of its YAML file (``configs/data/gmm2d.yaml``).
    ``schedule``: the noise schedule the samplers step along (None: EDM's). ``sampler``: its
    default sampler (None: ``dpmpp_2m`` with 20 steps). The model lives on the CPU.

    Raises DifforgeError (one line) for data whose law is not a known Gaussian mixture, or a path
    that is not a readable YAML mapping.
    """
    from omegaconf import OmegaConf

    from difforge.data.mixtures import known_mixture

    if isinstance(data, str | Path):
        path = Path(data).expanduser()
        loaded = OmegaConf.load(path) if path.is_file() else None
        if not isinstance(loaded, Mapping):
            raise DifforgeError(
                f"difforge.load_exact({str(data)!r}): not a data config file (a YAML mapping with "
                "_target_, such as configs/data/gmm2d.yaml)"
            )
        data = loaded

    if isinstance(data, GaussianMixture):
        mixture = data
    else:
        found = known_mixture(data)
        if found is None:
            raise DifforgeError(
                f"model=gmm_oracle needs data with a known Gaussian mixture (gmm1d, gmm2d); "
                f"{data.get('_target_')} has none"
            )
        mixture = found
    oracle = GaussianMixtureOracle(mixture)
    module = OracleSampling(oracle, schedule or EDMSchedule(), sampler or Sampler("dpmpp_2m", 20))
    return Model(module, None, "exact", mixture)
