"""Sampling throughput (images/s) of difforge's samplers on the U-Net presets, on the CPU.

- ``tiny``: ``configs/model/unet_tiny.yaml`` at 8 px, 1 channel (the digits default: cosine
  schedule, eps), random weights or a trained checkpoint's EMA weights (``--ckpt``);
- ``base``: ``configs/model/unet_base.yaml`` (DDPM's 35.7M CIFAR-10 U-Net) at 32 px,
  3 channels, linear schedule, random weights.

Every sampler runs with the step count of its ``configs/sampler/*.yaml`` (ddpm 100, ddim 50,
euler 50, heun 18 = 35 NFE, dpmpp_2m 20) unless ``--steps`` overrides it (the base model
defaults to a few steps on the CPU: a forward pass of 35.7M parameters takes seconds there).
Times are this process's CPU time (one torch thread by default: on a shared machine the CPU
clock does not count the time spent waiting for a core, so images per CPU-second is what one
free core delivers), with the wall-clock images/s alongside. Besides images per CPU-second it
reports network evaluations per CPU-second (images x NFE / s) and the sampler's overhead over
bare network calls: 1 - NFE x (one timed ``denoiser`` call) / (one sampling run), both measured
interleaved at the same batch size (medians over repeats).

    python scripts/bench_throughput.py                      # tiny and base, small batch sweep
    python scripts/bench_throughput.py --models tiny --ckpt logs/train/runs/X/checkpoints/last.ckpt
    python scripts/bench_throughput.py --quick              # seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from difforge.diffusion.parameterization import Denoiser, EpsParameterization
from difforge.diffusion.samplers import Sampler
from difforge.diffusion.schedules import CosineSchedule, LinearSchedule
from difforge.machine import machine_info
from difforge.nets.presets import load_preset
from difforge.nets.unet import UNet

ROOT = Path(__file__).resolve().parents[1]
SAMPLERS = ("ddpm", "ddim", "euler", "heun", "dpmpp_2m")
MODELS: dict[str, dict[str, Any]] = {
    "tiny": {"channels": 1, "image_size": 8, "schedule": "cosine", "batches": [16, 64, 256]},
    "base": {
        "channels": 3,
        "image_size": 32,
        "schedule": "linear",
        "batches": [1, 4],
        "steps": 4,
    },
}


def sampler_config(name: str) -> dict[str, Any]:
    cfg = yaml.safe_load((ROOT / "configs" / "sampler" / f"{name}.yaml").read_text())
    cfg.pop("_target_")
    return cfg


def build_denoiser(model: str, ckpt: str | None) -> tuple[Any, Any, str]:
    if ckpt:
        from difforge.training.build import module_from_checkpoint

        module, _ = module_from_checkpoint(ckpt)
        net = module.ema_denoiser.net
        if hasattr(net, "check_inputs"):
            net.check_inputs = False
        return module.ema_denoiser.eval(), module.schedule, f"checkpoint {ckpt} (EMA)"
    spec = MODELS[model]
    _, cfg = load_preset(f"unet_{model}", spec["channels"], spec["image_size"])
    torch.manual_seed(0)
    net = UNet(**cfg)
    net.check_inputs = False
    schedule = CosineSchedule() if spec["schedule"] == "cosine" else LinearSchedule()
    return Denoiser(net, schedule, EpsParameterization()).eval(), schedule, "random weights"


def measure(
    model: str,
    batches: list[int],
    samplers: list[str],
    steps_override: int | None,
    repeats: int,
    ckpt: str | None,
) -> list[dict[str, Any]]:
    denoiser, schedule, weights = build_denoiser(model, ckpt)
    shape_tail = (
        MODELS[model]["channels"],
        MODELS[model]["image_size"],
        MODELS[model]["image_size"],
    )
    params = sum(p.numel() for p in denoiser.parameters())
    rows = []
    for batch in batches:
        shape = (batch, *shape_tail)
        configs = {}
        for name in samplers:
            cfg = sampler_config(name)
            if steps_override:
                cfg["steps"] = steps_override
            configs[name] = Sampler(**cfg)
        x = torch.randn(shape)
        sigma = torch.full((batch,), 1.0)
        forward_s: list[float] = []  # process CPU seconds
        sample_s: dict[str, list[float]] = {name: [] for name in samplers}
        sample_wall: dict[str, list[float]] = {name: [] for name in samplers}
        nfe: dict[str, int] = {}
        with torch.inference_mode():
            denoiser(x, sigma)  # warm-up
            for r in range(repeats):
                start = time.process_time()
                denoiser(x, sigma)
                forward_s.append(time.process_time() - start)
                order = samplers if r % 2 == 0 else samplers[::-1]
                for name in order:
                    generator = torch.Generator().manual_seed(r)
                    start, cpu = time.perf_counter(), time.process_time()
                    result = configs[name](denoiser, schedule, shape, generator=generator)
                    sample_wall[name].append(time.perf_counter() - start)
                    sample_s[name].append(time.process_time() - cpu)
                    nfe[name] = result.nfe
        t_forward = statistics.median(forward_s)
        for name in samplers:
            t = statistics.median(sample_s[name])
            wall = statistics.median(sample_wall[name])
            rows.append(
                {
                    "model": model,
                    "weights": weights,
                    "params": params,
                    "sampler": name,
                    "steps": configs[name].steps,
                    "nfe": nfe[name],
                    "batch": batch,
                    "cpu_seconds": t,
                    "wall_seconds": wall,
                    "images_per_cpu_s": batch / t,
                    "images_per_s": batch / wall,
                    "evals_per_cpu_s": batch * nfe[name] / t,
                    "forward_s": t_forward,
                    "sampler_overhead": 1 - nfe[name] * t_forward / t,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "base"], choices=list(MODELS))
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="override the sweep")
    parser.add_argument("--steps", type=int, default=None, help="override every sampler's steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ckpt", default=None, help="a difforge checkpoint (tiny only)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="tiny, batch 4, 2 steps: seconds")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.steps, args.repeats = ["tiny"], [4], 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print(
        f"machine: {info['nproc']} cores, {info['cpu']}, torch {info['torch']} "
        f"({info['threads']} threads)"
    )
    print(
        f"command: python scripts/bench_throughput.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    )
    rows: list[dict[str, Any]] = []
    for model in args.models:
        spec = MODELS[model]
        start = time.perf_counter()
        rows += measure(
            model,
            args.batches or spec["batches"],
            args.samplers,
            args.steps or spec.get("steps"),
            args.repeats,
            args.ckpt if model == "tiny" else None,
        )
        print(f"{model}: {time.perf_counter() - start:.0f} s ({rows[-1]['weights']})")
    print()
    print(
        "| model | sampler | steps | NFE | batch | CPU s per batch | images per CPU s "
        "| network evals per CPU s | sampler overhead | images/s (wall) |"
    )
    print("|" + " --- |" * 10)
    for r in rows:
        print(
            f"| {r['model']} ({r['params'] / 1e6:.2f}M) | {r['sampler']} | {r['steps']} | {r['nfe']} "
            f"| {r['batch']} | {r['cpu_seconds']:.3f} | {r['images_per_cpu_s']:.2f} | "
            f"{r['evals_per_cpu_s']:.1f} | {r['sampler_overhead']:.1%} | {r['images_per_s']:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
