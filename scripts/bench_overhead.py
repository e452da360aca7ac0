"""Framework overhead: difforge's Lightning training loop against a bare PyTorch loop.

The Lightning side is the real ``python src/train.py`` configuration, composed with Hydra's
compose API from ``configs/train.yaml`` (default: digits, unet_tiny, cosine, eps, batch 128,
AdamW lr 2e-3 with 100 warm-up steps, gradient clipping 1.0, EMA 0.995, csv + W&B loggers
offline, ``log_every_n_steps=25``) and built by ``difforge.training.build.build_module``, with the
sample-grid, FID and best-checkpoint callbacks and the progress bar removed (the periodic
model checkpoint and the final checkpoint stay; neither fires inside the timed window).

The plain side runs, on an identically initialised copy of the same module and on the same
datamodule's loader, exactly the per-step work of ``DiffusionModule``: draw sigmas and noise,
class-label dropout, the loss (forward), ``backward``, ``clip_grad_norm_(1.0)``, AdamW, the
warm-up LR scheduler and the EMA update; nothing else (no metrics, no logging).

Timing: each block runs ``warmup`` untimed steps then ``steps`` timed steps (the Lightning
block from a fresh ``Trainer``: the timed window runs from the start of batch ``warmup`` to the
start of batch ``warmup + steps``, so it excludes set-up, teardown and the final checkpoint, and
stays inside the first epoch: no validation). Blocks are interleaved, ``repeats`` x (plain,
Lightning[, ablations]), the order rotating, and the reported ratio is the median over repeats
of (Lightning s/step) / (plain s/step).

Ablations (``--ablate``, on by default) locate the overhead: ``no_log`` is the same module with
``LightningModule.log`` a no-op (metrics still updated), ``bare`` a ``training_step`` that only
computes the loss (no metrics, no logging, no finiteness check). ``--profile`` adds a cProfile
of one Lightning block, summarised by where the time goes.

    python scripts/bench_overhead.py                         # 5 x 50 steps
    python scripts/bench_overhead.py --quick                 # seconds: 2 x 4 steps
    python scripts/bench_overhead.py --profile
    python scripts/bench_overhead.py -- model=unet_small data.image_size=16   # Hydra overrides
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import io
import json
import logging
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
# What the benchmark removes from the real configuration, and why: see the module docstring.
BASE_OVERRIDES = [
    "~callbacks.sample_grid",
    "~callbacks.fid",
    "~callbacks.best_checkpoint",
    "~callbacks.progress_bar",
    "+trainer.enable_progress_bar=false",
    "print_config=false",
]


def compose_config(overrides: list[str], output_dir: str) -> Any:
    from hydra import compose, initialize_config_dir

    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(
            "train.yaml",
            overrides=[
                *BASE_OVERRIDES,
                f"paths.output_dir={output_dir}",
                "run_name=bench_overhead",
                *overrides,
            ],
        )


class StepTimer:
    """Lightning callback: wall time from the start of batch ``warmup`` to that of ``warmup + n``."""

    def __init__(self, warmup: int, steps: int) -> None:
        import lightning as L

        class _Callback(L.Callback):
            def on_train_batch_start(cb, trainer, pl_module, batch, batch_idx) -> None:  # noqa: N805
                if batch_idx == warmup:
                    self.start = time.perf_counter()
                elif batch_idx == warmup + steps:
                    self.stop = time.perf_counter()

        self.callback = _Callback()
        self.start = self.stop = None

    @property
    def seconds_per_step(self) -> float:
        assert self.start is not None and self.stop is not None, "timed window not reached"
        return (self.stop - self.start) / self.steps

    steps = 1


def ablated(module: Any, kind: str) -> Any:
    """The same module with part of its per-step work switched off (``kind``: no_log, bare)."""
    base = type(module)

    if kind == "no_log":

        class NoLog(base):  # type: ignore[misc, valid-type]
            def log(self, *args: Any, **kwargs: Any) -> None:
                pass

        module.__class__ = NoLog
    elif kind == "bare":

        class Bare(base):  # type: ignore[misc, valid-type]
            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                x0, y = batch
                x0 = self._prepare(x0)
                sigma = self.schedule.sample_training_sigmas(x0.shape[0], device=x0.device)
                noise = torch.randn_like(x0)
                labels = self._training_labels(y)
                return self._train_forward(self.denoiser, x0, sigma, noise, labels).mean()

        module.__class__ = Bare
    return module


class LightningRunner:
    """Fresh Trainer per block on one module (its weights carry over between blocks)."""

    def __init__(self, cfg: Any, module: Any, datamodule: Any) -> None:
        self.cfg = cfg
        self.module = module
        self.datamodule = datamodule

    def block(self, warmup: int, steps: int, profiler: cProfile.Profile | None = None) -> dict:
        import lightning as L
        from hydra.utils import instantiate

        from difforge.cli.common import instantiate_list

        timer = StepTimer(warmup, steps)
        timer.steps = steps
        callbacks = [*instantiate_list(self.cfg.get("callbacks")), timer.callback]
        loggers = instantiate_list(self.cfg.get("logger"))
        trainer: L.Trainer = instantiate(
            self.cfg.trainer,
            callbacks=callbacks,
            logger=loggers or False,
            max_steps=warmup + steps + 1,
            enable_model_summary=False,
        )
        start = time.perf_counter()
        with contextlib.ExitStack() as stack:
            if profiler is not None:
                profiler.enable()
                stack.callback(profiler.disable)
            trainer.fit(self.module, datamodule=self.datamodule)
        fit_seconds = time.perf_counter() - start
        for logger in trainer.loggers:
            with contextlib.suppress(Exception):
                logger.finalize("success")
        with contextlib.suppress(Exception):
            import wandb

            if wandb.run is not None:
                wandb.finish(quiet=True)
        return {"s_per_step": timer.seconds_per_step, "fit_s": fit_seconds}


class PlainRunner:
    """The bare PyTorch loop doing the same per-step work as DiffusionModule + Lightning."""

    def __init__(self, cfg: Any, module: Any, datamodule: Any) -> None:
        self.module = module
        self.clip = cfg.trainer.get("gradient_clip_val")
        self.loader = datamodule.train_dataloader()
        options = module.configure_optimizers()
        self.optimizer = options["optimizer"]
        self.scheduler = options["lr_scheduler"]["scheduler"]
        module.train()

    def step(self, batch: Any) -> torch.Tensor:
        m = self.module
        x0, y = batch
        x0 = m._prepare(x0)
        sigma = m.schedule.sample_training_sigmas(x0.shape[0], device=x0.device)
        noise = torch.randn_like(x0)
        loss = m._train_forward(m.denoiser, x0, sigma, noise, m._training_labels(y)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(m.denoiser.parameters(), self.clip)
        self.optimizer.step()
        self.scheduler.step()
        m.ema.update(m.denoiser.net)
        return loss

    def block(self, warmup: int, steps: int) -> dict:
        iterator = iter(self.loader)
        for _ in range(warmup):
            self.step(next(iterator))
        start = time.perf_counter()
        for _ in range(steps):
            self.step(next(iterator))
        return {"s_per_step": (time.perf_counter() - start) / steps}


# Where a Lightning step's time goes: cumulative cProfile time of these functions.
PROFILE_GROUPS = [
    ("training_step (all)", "module.py", "training_step"),
    ("  loss forward (_loss_per_sample)", "module.py", "_loss_per_sample"),
    ("  LightningModule.log", "lightning/pytorch/core/module.py", "log"),
    ("  torchmetrics Metric.forward", "torchmetrics/metric.py", "forward"),
    ("  torchmetrics Metric.update", "torchmetrics/metric.py", "wrapped_func"),
    ("backward", "torch/_tensor.py", "backward"),
    ("clip_gradients (Lightning)", "lightning/pytorch/core/module.py", "clip_gradients"),
    ("optimizer.step (AdamW)", "torch/optim/adamw.py", "step"),
    ("EMA.update", "training/ema.py", "update"),
    ("lr scheduler step", "torch/optim/lr_scheduler.py", "step"),
    ("data loader __next__", "torch/utils/data/dataloader.py", "__next__"),
    ("logger connector (Lightning)", "logger_connector.py", "update_train_step_metrics"),
    ("loggers: log_metrics", "loggers", "log_metrics"),
    ("callbacks: on_train_batch_end", "lightning/pytorch/trainer/call.py", "_call_callback_hooks"),
]


def summarise_profile(profiler: cProfile.Profile, total: float, top: int) -> str:
    stats = pstats.Stats(profiler)
    out = io.StringIO()
    lines = ["| where | cumulative s | share of profiled fit |", "| --- | --- | --- |"]
    for label, path_part, func in PROFILE_GROUPS:
        seconds = sum(
            value[3]
            for (path, _, name), value in stats.stats.items()  # type: ignore[attr-defined]
            if name == func and path_part in path
        )
        lines.append(f"| {label} | {seconds:.3f} | {seconds / total:.1%} |")
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)
    return "\n".join(lines) + "\n\ncProfile, top by own time:\n" + out.getvalue()


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import lightning

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "difforge", "wandb"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per block")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per block")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-ablate", action="store_true", help="skip the no_log/bare variants")
    parser.add_argument("--profile", action="store_true", help="cProfile one Lightning block")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="2 x 4 steps: seconds")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of configs/train.yaml")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.repeats = 4, 2, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_lightning()
    import lightning as L
    from hydra.utils import instantiate

    from difforge.training.build import build_module

    info = machine_info()
    print(
        f"machine: {info['nproc']} cores, {info['cpu']}, torch {info['torch']} "
        f"({info['threads']} threads), lightning {info['lightning']}"
    )
    print(f"command: python scripts/bench_overhead.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    tmp = tempfile.mkdtemp(prefix="bench_overhead_")
    cfg = compose_config(list(args.overrides), tmp)
    print(
        f"config: data={cfg.data._target_.rsplit('.', 1)[-1]} batch {cfg.data.batch_size}, "
        f"model={cfg.model._target_.rsplit('.', 1)[-1]} base {cfg.model.get('base_channels')}, "
        f"loggers {list(cfg.logger.keys()) if cfg.get('logger') else []}, "
        f"callbacks {list(cfg.callbacks.keys()) if cfg.get('callbacks') else []}, "
        f"clip {cfg.trainer.gradient_clip_val}, EMA {cfg.module.ema_decay}, "
        f"log_every_n_steps {cfg.trainer.log_every_n_steps}; output {tmp}"
    )
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    data_shape = tuple(datamodule.data_shape)
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg, data_shape)
    steps_per_epoch = len(datamodule.train_dataloader())
    if args.warmup + args.steps + 1 > steps_per_epoch:
        raise SystemExit(
            f"warmup + steps + 1 = {args.warmup + args.steps + 1} exceeds one epoch "
            f"({steps_per_epoch} batches): the window would include validation"
        )
    runners: dict[str, Any] = {
        "plain": PlainRunner(cfg, copy.deepcopy(module), datamodule),
        "lightning": LightningRunner(cfg, module, datamodule),
    }
    if not args.no_ablate:
        for kind in ("no_log", "bare"):
            L.seed_everything(cfg.seed, verbose=False)
            runners[kind] = LightningRunner(cfg, ablated(build_module(cfg, data_shape), kind), datamodule)
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    fit_seconds: dict[str, list[float]] = {name: [] for name in names if name != "plain"}
    started = time.perf_counter()
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            result = runners[name].block(args.warmup, args.steps)
            times[name].append(result["s_per_step"])
            if "fit_s" in result:
                fit_seconds[name].append(result["fit_s"])
    ratios = {
        name: statistics.median(
            t / p for t, p in zip(times[name], times["plain"], strict=True)
        )
        for name in names
        if name != "plain"
    }
    medians = {name: statistics.median(v) for name, v in times.items()}
    print(f"\n{args.repeats} x {args.steps} timed steps (+{args.warmup} warm-up) per block, "
          f"{time.perf_counter() - started:.0f} s\n")
    print("| loop | s/step (median) | steps/s | ratio to plain (median of per-repeat ratios) | fit() wall s incl. set-up (median) |")
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        ratio = "1" if name == "plain" else f"{ratios[name]:.3f}"
        fit = f"{statistics.median(fit_seconds[name]):.2f}" if name in fit_seconds else "-"
        print(f"| {name} | {medians[name]:.4f} | {1 / medians[name]:.2f} | {ratio} | {fit} |")
    per_repeat = ", ".join(
        f"{t / p:.3f}" for t, p in zip(times["lightning"], times["plain"], strict=True)
    )
    print(f"\nlightning/plain per repeat: {per_repeat}")
    if "no_log" in ratios:
        plain = medians["plain"]
        print(
            "overhead per step (median s/step differences): "
            f"self.log {1e3 * (medians['lightning'] - medians['no_log']):.2f} ms, "
            f"metric updates + finiteness check {1e3 * (medians['no_log'] - medians['bare']):.2f} ms, "
            f"Lightning loop {1e3 * (medians['bare'] - plain):.2f} ms; plain step {1e3 * plain:.2f} ms"
        )
    profile_text = None
    if args.profile:
        profiler = cProfile.Profile()
        steps = args.steps
        result = runners["lightning"].block(args.warmup, steps, profiler=profiler)
        profile_text = summarise_profile(profiler, result["fit_s"], 25)
        print(f"\ncProfile of one Lightning fit ({args.warmup + steps + 1} steps incl. set-up, "
              f"{result['fit_s']:.2f} s under the profiler)\n")
        print(profile_text)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "times": times,
                    "fit_seconds": fit_seconds,
                    "medians": medians,
                    "ratios": ratios,
                    "profile": profile_text,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
