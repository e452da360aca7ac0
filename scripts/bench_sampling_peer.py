"""Sampling throughput: difforge's sampling loop against diffusers' pipeline loop, same network.

Both loops drive one and the same diffusers ``UNet2DModel`` (built from a difforge preset by
``scripts/bench_unet.py``, so the weights are identical by construction) for the same number of
network evaluations:

- difforge: ``Sampler("ddim", steps=NFE)`` (eta 0) on ``LinearSchedule()`` through
  ``Denoiser`` with the eps parameterization (the network sees ``c_in x`` and the fractional
  timestep), as ``python src/sample.py`` runs it;
- diffusers: ``DDIMPipeline.__call__``'s loop without the progress bar and the final
  conversion to images: ``DDIMScheduler`` (linear betas 1e-4 to 0.02, 1000 steps),
  ``set_timesteps(NFE)``, then per timestep ``unet(x, t).sample`` and ``scheduler.step``.

For each batch size: one warm-up run of each, then ``repeats`` runs, the two loops alternating
(the order flipping between repeats); images/s from the median time, and the ratio of run
times difforge / diffusers (median of the per-repeat ratios; <= 1: difforge as fast or faster). On the CPU times are this
process's CPU time (one thread: steady on a shared machine) with wall time alongside; on CUDA,
wall time after a synchronisation. "beyond the network" is ``1 - NFE x (one timed network call
at that batch) / (one run)``: what each loop costs besides its NFE network calls.

    python scripts/bench_sampling_peer.py                           # unet_small, 16 px, CPU
    python scripts/bench_sampling_peer.py --size tiny --batches 1 16 256 --nfe 50
    python scripts/bench_sampling_peer.py --quick                   # seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_unet import SETTINGS, build_diffusers, preset
from difforge.devices import resolve_device
from difforge.diffusion.parameterization import Denoiser, EpsParameterization
from difforge.diffusion.samplers import Sampler
from difforge.diffusion.schedules import LinearSchedule
from difforge.errors import DifforgeError
from difforge.machine import machine_info, sync


class DiffusersNet(nn.Module):
    """``UNet2DModel`` behind difforge's network interface ``net(x, noise_labels, labels)``."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None
    ) -> Tensor:
        return self.unet(x, noise_labels, return_dict=False)[0]


def loops(
    unet: nn.Module, nfe: int, shape: tuple[int, ...], device: torch.device
) -> dict[str, Callable[[int], Tensor]]:
    """The two sampling loops, each ``run(seed) -> samples``, and the bare network call."""
    from diffusers import DDIMScheduler

    schedule = LinearSchedule()
    denoiser = Denoiser(DiffusersNet(unet), schedule, EpsParameterization()).eval()
    sampler = Sampler("ddim", nfe)
    scheduler = DDIMScheduler(
        num_train_timesteps=schedule.num_timesteps,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
    )

    def difforge_loop(seed: int) -> Tensor:
        generator = torch.Generator(device).manual_seed(seed)
        return sampler(denoiser, schedule, shape, device=device, generator=generator).samples

    def diffusers_loop(seed: int) -> Tensor:
        generator = torch.Generator(device).manual_seed(seed)
        x = torch.randn(shape, generator=generator, device=device)
        scheduler.set_timesteps(nfe)
        for t in scheduler.timesteps:
            eps = unet(x, t, return_dict=False)[0]
            x = scheduler.step(eps, t, x, eta=0.0, generator=generator).prev_sample
        return x

    x = torch.randn(shape, device=device)
    t = torch.full((shape[0],), 500.0, device=device)

    def network(seed: int) -> Tensor:
        return unet(x, t, return_dict=False)[0]

    return {"difforge": difforge_loop, "diffusers": diffusers_loop, "network": network}


def clocked(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call, the device synchronised at both ends."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(
    size: str,
    batches: list[int],
    nfe: int,
    repeats: int,
    device: torch.device,
    bf16: bool = False,
) -> list[dict[str, Any]]:
    """One row per batch size: images/s of both loops and their ratio."""
    cfg = preset(size)
    torch.manual_seed(0)
    unet = build_diffusers(cfg).to(device).eval()
    params = sum(p.numel() for p in unet.parameters())
    tail = (SETTINGS[size]["channels"], SETTINGS[size]["image_size"], SETTINGS[size]["image_size"])
    clock = 0 if device.type == "cuda" else 1  # CPU time on the CPU, wall time on a GPU
    rows = []
    for batch in batches:
        runs = loops(unet, nfe, (batch, *tail), device)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            for run in runs.values():
                run(0)  # warm-up (cuDNN algorithm choice, allocator)
            for r in range(repeats):
                order = list(runs) if r % 2 == 0 else list(runs)[::-1]
                for name in order:
                    run, seed = runs[name], r + 1
                    times[name].append(clocked(lambda run=run, seed=seed: run(seed), device))
        med = {name: statistics.median(t[clock] for t in v) for name, v in times.items()}
        wall = {name: statistics.median(t[0] for t in v) for name, v in times.items()}
        ratios = [
            a[clock] / b[clock] for a, b in zip(times["difforge"], times["diffusers"], strict=True)
        ]
        rows.append(
            {
                "size": size,
                "params": params,
                "batch": batch,
                "nfe": nfe,
                "clock": "wall" if clock == 0 else "cpu",
                "seconds": med,
                "wall_seconds": wall,
                "images_per_s": {k: batch / med[k] for k in ("difforge", "diffusers")},
                # time per run, difforge / diffusers: <= 1 means difforge is as fast or faster
                "ratio": statistics.median(ratios),
                "ratio_range": [min(ratios), max(ratios)],
                "beyond_network": {
                    k: 1 - nfe * med["network"] / med[k] for k in ("difforge", "diffusers")
                },
            }
        )
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    clock = rows[0]["clock"]
    print(
        f"| model | batch | NFE | difforge images/s ({clock}) | diffusers images/s ({clock}) "
        "| time difforge / diffusers (median of per-repeat ratios) | range "
        "| beyond the network: difforge | diffusers |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ips, beyond = r["images_per_s"], r["beyond_network"]
        print(
            f"| {r['size']} ({r['params'] / 1e6:.2f}M) | {r['batch']} | {r['nfe']} "
            f"| {ips['difforge']:.2f} | {ips['diffusers']:.2f} | {r['ratio']:.3f} "
            f"| {r['ratio_range'][0]:.3f}-{r['ratio_range'][1]:.3f} "
            f"| {beyond['difforge']:.1%} | {beyond['diffusers']:.1%} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(SETTINGS), default="small")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--nfe", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    parser.add_argument("--quick", action="store_true", help="tiny, batch 2, 2 NFE, 1 repeat")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batches, args.nfe, args.repeats = "tiny", [2], 2, 1
    for name in ("nfe", "repeats"):
        if getattr(args, name) < 1:
            print(f"error: --{name} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 1
    try:
        device = resolve_device(args.device, "--device")
    except DifforgeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(device=str(device))
    print(f"machine: {json.dumps(info)}")
    print(
        f"command: python scripts/bench_sampling_peer.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    )
    rows = measure(args.size, args.batches, args.nfe, args.repeats, device, args.bf16)
    print_rows(rows)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
