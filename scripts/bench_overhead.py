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

Timing, interleaved inside one ``trainer.fit``: a callback splits the fit into segments of
``steps`` batches; at each segment boundary (``on_train_batch_start``) it closes the Lightning
segment just finished, then runs ``steps`` steps of the plain loop right there (outside the
Lightning segment's clock), then opens the next Lightning segment. So every Lightning segment
has a plain segment measured just before it under the same machine load, and the reported
ratio is the median over segments of (Lightning s/step) / (plain s/step). A segment covers
``steps`` whole iterations: data loading, ``training_step``, backward, clipping, optimizer,
scheduler, EMA, hooks and logging (incl. the logger writes every ``log_every_n_steps``).
Segments never span an epoch boundary (no validation, no epoch-end hooks inside) and the first
``warmup`` batches of every epoch are not timed. Both clocks are kept: wall time and this
process's CPU time (``time.process_time``). With one torch thread (the default here) the CPU
clock does not count the time the process waits while other jobs hold the cores, so on a
shared machine it is the steadier of the two; W&B's separate service process is not in it.

Ablations (``--ablate``, on by default) locate the overhead: ``no_log`` is the same module with
``LightningModule.log`` a no-op (metrics still updated), ``bare`` a ``training_step`` that only
computes the loss (no metrics, no logging, no finiteness check of the loss; the module's
gradient check, fused with the clipping in ``configure_gradient_clipping``, stays). ``--profile`` adds a cProfile
of one Lightning block, summarised by where the time goes.

    python scripts/bench_overhead.py                         # 12 segments x 8 steps
    python scripts/bench_overhead.py --quick                 # seconds: 2 segments x 2 steps
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
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from difforge.machine import sync

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


class PlainRunner:
    """The bare PyTorch loop doing the same per-step work as DiffusionModule + Lightning:
    batch to the module's device, loss (under bf16 autocast if ``bf16``), backward, clipping,
    the module's optimizer and LR scheduler, the EMA update."""

    def __init__(self, module: Any, loader: Any, clip: float | None, bf16: bool = False) -> None:
        self.module = module
        self.clip = clip
        self.bf16 = bf16
        self.loader = loader
        self.iterator = iter(self.loader)
        options = module.configure_optimizers()
        self.optimizer = options["optimizer"]
        self.scheduler = options["lr_scheduler"]["scheduler"]
        module.train()

    def next_batch(self) -> Any:
        try:
            return next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.loader)
            return next(self.iterator)

    def step(self, batch: Any) -> torch.Tensor:
        m = self.module
        x0, y = (t.to(m.device, non_blocking=True) for t in batch)
        x0 = m._prepare(x0)
        sigma = m.schedule.sample_training_sigmas(x0.shape[0], device=x0.device)
        noise = torch.randn_like(x0)
        with torch.autocast(m.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = m._train_forward(m.denoiser, x0, sigma, noise, m._training_labels(y)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(m.denoiser.parameters(), self.clip)
        self.optimizer.step()
        self.scheduler.step()
        m.ema.update(m.denoiser.net)
        return loss

    def segment(self, steps: int) -> tuple[float, float]:
        """(wall, process CPU) seconds per step over ``steps`` steps (data loading included)."""
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step(self.next_batch())
        sync(self.module.device)
        return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def interleaving_callback(plain: PlainRunner | None, warmup: int, steps: int, segments: int) -> Any:
    """A Lightning callback alternating plain segments with the fit's own segments (only timing
    the fit's segments when ``plain`` is None)."""
    import lightning as L

    class Interleave(L.Callback):
        def __init__(self) -> None:
            self.lightning: list[tuple[float, float]] = []  # (wall, CPU) s/step
            self.plain: list[tuple[float, float]] = []
            self.opened: tuple[float, float] | None = None

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.opened = None  # never time across an epoch boundary

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, i: int) -> None:
            if i < warmup or (i - warmup) % steps:
                return
            sync(pl_module.device)
            now = time.perf_counter(), time.process_time()
            if self.opened is not None:
                self.lightning.append(
                    ((now[0] - self.opened[0]) / steps, (now[1] - self.opened[1]) / steps)
                )
            if len(self.lightning) >= segments:
                trainer.should_stop = True
                self.opened = None
                return
            if len(self.plain) > len(self.lightning):
                self.plain.pop()  # its Lightning partner was cut by an epoch boundary
            if plain is not None:
                self.plain.append(plain.segment(steps))
            self.opened = time.perf_counter(), time.process_time()

    return Interleave()


def run_fit(cfg: Any, module: Any, datamodule: Any, callback: Any, profiler: Any = None) -> float:
    """``trainer.fit`` of the composed config plus ``callback``; returns the wall seconds."""
    import lightning as L
    from hydra.utils import instantiate

    from difforge.cli.common import instantiate_list
    from difforge.training.build import resolve_precision

    callbacks = [*instantiate_list(cfg.get("callbacks")), callback]
    loggers = instantiate_list(cfg.get("logger"))
    precision = resolve_precision(str(cfg.trainer.precision), str(cfg.trainer.accelerator))
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        max_steps=10**9,
        precision=precision,
    )
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if profiler is not None:
            profiler.enable()
            stack.callback(profiler.disable)
        trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - start
    with contextlib.suppress(Exception):
        import wandb

        if wandb.run is not None:
            wandb.finish(quiet=True)
    return seconds


# Where a Lightning step's time goes: cumulative cProfile time of these functions (any of the
# names, in a file whose path contains the fragment).
PROFILE_GROUPS: list[tuple[str, str, tuple[str, ...]]] = [
    ("training_step (all of it)", "training/module.py", ("training_step",)),
    ("  loss forward (_loss_per_sample)", "training/module.py", ("_loss_per_sample",)),
    ("  self.log (LightningModule.log)", "lightning/pytorch/core/module.py", ("log",)),
    ("  torchmetrics forward (train_loss)", "torchmetrics/metric.py", ("forward",)),
    ("  torchmetrics update (all metrics)", "torchmetrics/metric.py", ("wrapped_func",)),
    ("backward", "torch/_tensor.py", ("backward",)),
    (
        "gradient clipping + non-finite check (configure_gradient_clipping)",
        "training/module.py",
        ("configure_gradient_clipping",),
    ),
    (
        "batch to device (transfer_batch_to_device)",
        "training/module.py",
        ("transfer_batch_to_device",),
    ),
    (
        "AdamW update",
        "torch/optim/adam",
        ("_single_tensor_adam", "_multi_tensor_adam", "_fused_adam"),
    ),
    ("EMA.update", "training/ema.py", ("update",)),
    ("LR scheduler step", "torch/optim/lr_scheduler.py", ("step",)),
    ("data loader __next__", "torch/utils/data/dataloader.py", ("__next__",)),
    ("batch to device (apply_to_collection)", "lightning_utilities", ("apply_to_collection",)),
    ("logger connector: step metrics", "logger_connector.py", ("update_train_step_metrics",)),
    ("loggers: log_metrics (csv, W&B)", "lightning/pytorch/loggers", ("log_metrics",)),
    ("Module.parameters()/buffers() walks", "torch/nn/modules/module.py", ("_named_members",)),
]


def summarise_profile(profiler: cProfile.Profile, steps: int, top: int) -> str:
    stats = pstats.Stats(profiler)
    out = io.StringIO()
    lines = ["| where | cumulative s | ms per step |", "| --- | --- | --- |"]
    for label, path_part, funcs in PROFILE_GROUPS:
        seconds = sum(
            value[3]
            for (path, _, name), value in stats.stats.items()  # type: ignore[attr-defined]
            if name in funcs and path_part in path
        )
        lines.append(f"| {label} | {seconds:.3f} | {1e3 * seconds / steps:.2f} |")
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)
    return "\n".join(lines) + "\n\ncProfile, top by own time:\n" + out.getvalue()


def machine_info() -> dict[str, Any]:
    import lightning

    from difforge.machine import machine_info as difforge_machine_info

    return difforge_machine_info(lightning=lightning.__version__)


def quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "difforge", "wandb"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="steps per segment")
    parser.add_argument("--segments", type=int, default=12, help="timed segment pairs per fit")
    parser.add_argument("--warmup", type=int, default=4, help="untimed batches per epoch")
    parser.add_argument("--no-ablate", action="store_true", help="skip the no_log/bare fits")
    parser.add_argument("--profile", action="store_true", help="cProfile one more Lightning fit")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine two OpenMP threads spin-wait on "
        "each other and timings blow up; 0 keeps torch's default)",
    )
    parser.add_argument("--quick", action="store_true", help="2 segments x 2 steps: seconds")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of configs/train.yaml")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.segments, args.warmup = 2, 2, 1
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
    command = " ".join(sys.argv[1:] if argv is None else argv)
    print(f"command: python scripts/bench_overhead.py {command}")
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
    if args.warmup + args.steps + 1 > len(datamodule.train_dataloader()):
        raise SystemExit("warmup + steps + 1 exceeds one epoch: no segment could be timed")

    kinds = ["lightning"] if args.no_ablate else ["lightning", "no_log", "bare"]
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for kind in kinds:
        L.seed_everything(cfg.seed, verbose=False)
        module = build_module(cfg, data_shape)
        plain = PlainRunner(
            copy.deepcopy(module),
            datamodule.train_dataloader(),
            cfg.trainer.get("gradient_clip_val"),
        )
        for _ in range(args.warmup):
            plain.step(plain.next_batch())
        if kind != "lightning":
            module = ablated(module, kind)
        callback = interleaving_callback(plain, args.warmup, args.steps, args.segments)
        fit_s = run_fit(cfg, module, datamodule, callback)
        n = min(len(callback.lightning), len(callback.plain))
        result: dict[str, Any] = {"fit_s": fit_s, "pairs": n}
        for clock, k in (("wall", 0), ("cpu", 1)):
            light = [v[k] for v in callback.lightning[:n]]
            bare = [v[k] for v in callback.plain[:n]]
            ratios = [lt / pt for lt, pt in zip(light, bare, strict=True)]
            result[clock] = {
                "lightning_s": light,
                "plain_s": bare,
                "ratios": ratios,
                "ratio": statistics.median(ratios),
                "lightning_median_s": statistics.median(light),
                "plain_median_s": statistics.median(bare),
            }
        results[kind] = result
    print(
        f"\n{args.segments} segment pairs x {args.steps} steps per fit, {args.threads or 'default'} "
        f"thread(s), {time.perf_counter() - started:.0f} s\n"
    )
    print(
        "| Lightning module | clock | s/step Lightning | s/step plain | steps/s Lightning "
        "| steps/s plain | ratio Lightning / plain (median over pairs) | min-max of pair ratios |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, r in results.items():
        for clock in ("cpu", "wall"):
            c = r[clock]
            print(
                f"| {kind} | {clock} | {c['lightning_median_s']:.4f} | {c['plain_median_s']:.4f} | "
                f"{1 / c['lightning_median_s']:.2f} | {1 / c['plain_median_s']:.2f} | "
                f"{c['ratio']:.3f} | {min(c['ratios']):.3f}-{max(c['ratios']):.3f} |"
            )
    if len(results) == 3:
        # Each variant's overhead in ms/step, from its own ratio and plain time (load-robust).
        extra = {
            k: (r["cpu"]["ratio"] - 1) * r["cpu"]["plain_median_s"] * 1e3
            for k, r in results.items()
        }
        print(
            "\noverhead per step (CPU clock): total "
            f"{extra['lightning']:.2f} ms = self.log {extra['lightning'] - extra['no_log']:.2f} ms "
            f"+ metric updates and finiteness check {extra['no_log'] - extra['bare']:.2f} ms "
            f"+ Lightning loop {extra['bare']:.2f} ms (plain step "
            f"{results['lightning']['cpu']['plain_median_s'] * 1e3:.1f} ms)"
        )
    profile_text = None
    if args.profile:
        # A Lightning-only fit (no plain segments inside), the same number of timed steps.
        L.seed_everything(cfg.seed, verbose=False)
        module = build_module(cfg, data_shape)
        callback = interleaving_callback(None, args.warmup, args.steps, args.segments)
        profiler = cProfile.Profile()
        fit_s = run_fit(cfg, module, datamodule, callback, profiler=profiler)
        fit_steps = int(module.global_step)
        profile_text = summarise_profile(profiler, fit_steps, 30)
        print(
            f"\ncProfile of one Lightning fit without plain segments: {fit_steps} steps, "
            f"{fit_s:.1f} s under the profiler incl. set-up and teardown; segments "
            f"{1e3 * statistics.median(v[0] for v in callback.lightning):.1f} ms/step "
            "(median, wall)\n"
        )
        print(profile_text)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "results": results,
                    "profile": profile_text,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
