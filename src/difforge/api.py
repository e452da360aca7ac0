"""The Python API for notebooks: ``difforge.load(path)`` and the metric functions.

``load`` reads a difforge checkpoint (a ``.ckpt`` file, or a run directory holding
``checkpoints/last.ckpt``) or a diffusers pipeline folder (``model_index.json``) and returns a
:class:`Model`. ``docs/api.md`` shows it in use; its examples run as doctests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from difforge.devices import resolve_device
from difforge.diffusion.samplers import Sampler
from difforge.errors import DifforgeError
from difforge.training.module import DiffusionModule


class Model:
    """A trained diffusion model: ``sample`` draws images or vectors with any difforge sampler,
    ``evaluate`` runs the paper protocol against a reference file.

    Attributes: ``module`` (the :class:`~difforge.training.module.DiffusionModule`), ``source``
    (the path it was read from), ``kind`` (``difforge`` or ``diffusers``), ``data_shape``,
    ``num_classes``, ``schedule``.
    """

    def __init__(self, module: DiffusionModule, source: Path, kind: str) -> None:
        self.module = module.eval()
        self.source, self.kind = source, kind

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
        **options: Any,
    ) -> Tensor:
        """``n`` samples ``(n, *data_shape)`` (images in [-1, 1]), float32 on the CPU.

        ``sampler``, ``steps``, ``grid`` and ``**options`` build a
        :class:`~difforge.diffusion.samplers.Sampler` (``eta=...``, ``S_churn=...``);
        ``seed`` seeds the generator; ``noise`` ``(n, *data_shape)`` gives the standard-normal
        starting draws instead (diffusers' ``latents``).
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
        return self.module.generate(
            n,
            sampler=built,
            generator=generator,
            batch_size=batch_size,
            class_labels=class_labels,
            use_ema=use_ema,
            noise=draws,
        ).samples

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
        return (
            f"Model({self.kind}, data_shape={self.data_shape}, schedule={self.schedule!r}, "
            f"parameterization={self.module.denoiser.parameterization.name!r})"
        )


def load(path: str | Path, device: torch.device | str = "cpu") -> Model:
    """A :class:`Model` from a difforge checkpoint (``.ckpt`` file or a run directory with
    ``checkpoints/last.ckpt``) or a diffusers pipeline folder (``model_index.json``), on ``device``
    (``auto``: whatever is there).

    Raises DifforgeError (one line) for a path that is neither, or a device this machine lacks
    (checked before anything is read).
    """
    from difforge.interop.diffusers_pipeline import load_pipeline
    from difforge.training.build import module_from_checkpoint

    resolve_device(device)
    source = Path(path).expanduser()
    if source.is_dir() and (source / "model_index.json").is_file():
        return Model(load_pipeline(source, Sampler("dpmpp_2m", 20)), source, "diffusers").to(device)
    if source.is_dir() and (source / "checkpoints" / "last.ckpt").is_file():
        source = source / "checkpoints" / "last.ckpt"
    if source.is_file():
        module, _ = module_from_checkpoint(source)
        return Model(module, source, "difforge").to(device)
    raise DifforgeError(
        f"difforge.load({str(path)!r}): not a difforge checkpoint (.ckpt, or a run directory with "
        "checkpoints/last.ckpt) nor a diffusers pipeline folder (model_index.json)"
    )
