"""Lightning callbacks: periodic sample grids, periodic and final checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from difforge.diffusion.samplers import Sampler
from difforge.plotting import save_samples_figure


class SampleGrid(Callback):
    """Every ``every_n_steps`` optimizer steps and at the end of training, draw ``num_samples``
    with the EMA weights from fixed noise (``seed``), save ``<run>/samples/step_<N>.png`` and send it
    to the loggers that take images (W&B, TensorBoard). Runs on global rank 0 only.

    ``sampler``: a ``Sampler`` to use instead of the module's.
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        num_samples: int = 100,
        seed: int = 0,
        sampler: Sampler | None = None,
    ) -> None:
        if every_n_steps < 1 or num_samples < 1:
            raise ValueError(
                f"sample_grid.every_n_steps and num_samples must be >= 1, got {every_n_steps}, {num_samples}"
            )
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.seed = seed
        self.sampler = sampler
        self._last_step = -1

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.draw(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.draw(trainer, pl_module)

    @rank_zero_only
    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path:
        step = trainer.global_step
        self._last_step = step
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        result = pl_module.generate(self.num_samples, sampler=self.sampler, generator=generator)  # type: ignore[operator]
        directory = Path(trainer.default_root_dir) / "samples"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"step_{step:07d}.png"
        mixture = getattr(getattr(trainer, "datamodule", None), "mixture", None)
        save_samples_figure(result.samples, path, mixture, title=f"step {step}, NFE {result.nfe}")
        for logger in trainer.loggers:
            log_image = getattr(logger, "log_image", None)
            experiment: Any = getattr(logger, "experiment", None)
            if callable(log_image):  # W&B
                log_image(key="samples", images=[str(path)], step=step)
            elif hasattr(experiment, "add_image"):  # TensorBoard
                import numpy as np
                from PIL import Image

                experiment.add_image(
                    "samples", np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC"
                )
        return path


class FinalCheckpoint(Callback):
    """Saves ``last.ckpt`` at the last step (``trainer.max_steps``), and when a scheduler stops the
    run with SIGTERM.

    Periodic checkpoints (``ModelCheckpoint``) miss the last steps of a run that ends between them;
    this one does not. Lightning turns SIGTERM into a clean stop after the current batch
    (``SIGTERMException``, every rank agreeing), and the checkpoint is written at that point, so
    ``ckpt_path=last`` resumes losing nothing. SIGKILL gives no chance to save: resume then starts
    from the last periodic checkpoint.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self._saved_step = -1

    def _save(self, trainer: L.Trainer) -> None:
        # A full checkpoint (optimizer, loops) to resume from; said explicitly, else Lightning
        # logs that it defaults weights_only to False.
        trainer.save_checkpoint(self.dirpath / "last.ckpt", weights_only=False)
        self._saved_step = trainer.global_step

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # At the batch end, like the periodic checkpoints: there the saved data-loader position
        # and RNG state are exactly those of the next step.
        if 0 < trainer.max_steps <= trainer.global_step:
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run stopped by max_epochs ends at an epoch boundary, where the epoch-end state is right.
        if trainer.global_step != self._saved_step:
            self._save(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            self._save(trainer)


class PeriodicCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` without its end-of-training save of ``last.ckpt``.

    That save runs after the fit loop has closed the epoch: a run that stopped mid-epoch before
    its first periodic checkpoint would overwrite ``FinalCheckpoint``'s mid-epoch ``last.ckpt``
    with an end-of-epoch state, and a resumed run would skip the rest of the epoch's batches.
    ``FinalCheckpoint`` saves the end of every run.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass
