"""GPU benchmark: DDPM's 35.7M U-Net (``unet_base``) training and sampling on one GPU.

Measures, on synthetic data already on the device (data loading is not part of it):

- training at 32 px, 3 channels, batch 128, bf16 autocast, channels_last, ``torch.compile``
  of the loss (as ``module.compile=true`` does): difforge's Denoiser + eps parameterization +
  uniform DenoisingLoss on the linear schedule, backward, ``clip_grad_norm_(1.0)``, fused AdamW
  and an EMA update (``torch._foreach_lerp_``, as ``difforge.training.ema``): images/s;
- model FLOPs utilisation: the U-Net's FLOPs for one forward + backward at this batch, counted
  with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls, attention; 2 FLOPs
  per multiply-add), times steps/s, divided by the card's peak dense bf16 rate
  (``--peak-tflops``, default 989 TFLOP/s: H100/H200 SXM without sparsity);
- peak memory: ``torch.cuda.max_memory_allocated`` over the timed training steps;
- sampling images/s with Heun, 18 steps = 35 NFE (EDM's setting), bf16, channels_last,
  compiled network, batch ``--sample-batch``.

It imports only torch and difforge's ``nets`` and ``diffusion`` (no hydra, omegaconf, lightning,
wandb or torch-fidelity), and finds difforge in ``src/`` when it is not installed.

    python scripts/bench_gpu.py                             # on the GPU (a few minutes)
    python scripts/bench_gpu.py --json $OUT/bench_gpu.json
    python scripts/bench_gpu.py --device cpu --quick        # end-to-end check in seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
with contextlib.suppress(ImportError):
    import difforge  # noqa: F401
if "difforge" not in sys.modules:
    sys.path.insert(0, str(ROOT / "src"))

from difforge.diffusion.losses import DenoisingLoss  # noqa: E402
from difforge.diffusion.parameterization import Denoiser, EpsParameterization  # noqa: E402
from difforge.diffusion.samplers import Sampler  # noqa: E402
from difforge.diffusion.schedules import LinearSchedule  # noqa: E402
from difforge.nets.unet import UNet  # noqa: E402

# configs/model/unet_base.yaml at 32 px, 3 channels (tests/test_bench_scripts.py checks they
# agree); unet_tiny for --quick.
PRESETS: dict[str, dict[str, Any]] = {
    "base": {
        "in_channels": 3,
        "image_size": 32,
        "base_channels": 128,
        "channel_mult": (1, 2, 2, 2),
        "num_res_blocks": 2,
        "attn_resolutions": (16,),
        "dropout": 0.1,
        "num_heads": 1,
        "head_channels": None,
        "num_classes": 0,
        "learned_variance": False,
        "scale_shift_norm": False,
        "resample_with_conv": True,
    },
    "tiny": {
        "in_channels": 1,
        "image_size": 8,
        "base_channels": 16,
        "channel_mult": (1, 2, 4),
        "num_res_blocks": 1,
        "attn_resolutions": (4,),
        "dropout": 0.0,
        "num_heads": 1,
        "head_channels": None,
        "num_classes": 0,
        "learned_variance": False,
        "scale_shift_norm": False,
        "resample_with_conv": True,
    },
}
H100_H200_SXM_BF16_DENSE_TFLOPS = 989.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "nproc": os.cpu_count(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": props.name,
            "capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return info


def count_flops(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, bf16: bool) -> int:
    """FLOPs of one forward + backward of ``net`` at this batch (eager; 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = net(x, t)
        out.float().square().mean().backward()
    net.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def train_benchmark(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    cfg = PRESETS[args.preset]
    torch.manual_seed(0)
    net = UNet(**cfg).to(device)
    net.check_inputs = False
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    schedule = LinearSchedule()
    denoiser = Denoiser(net, schedule, EpsParameterization())
    loss_fn = DenoisingLoss("uniform")
    ema = [p.detach().clone() for p in net.parameters()]
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-4, fused=device.type == "cuda")
    bf16 = args.dtype == "bf16"
    shape = (args.batch, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    x0 = (torch.rand(shape, device=device) * 2 - 1).contiguous(memory_format=memory_format)

    def loss_per_sample(x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return loss_fn(denoiser, x0, sigma, noise)

    forward = torch.compile(loss_per_sample) if args.compile else loss_per_sample

    def step() -> None:
        sigma = schedule.sample_training_sigmas(args.batch, device=device)
        noise = torch.randn_like(x0)
        loss = forward(x0, sigma, noise).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in net.parameters()], 1 - 0.9999)

    # FLOPs of the network alone (the loss and the optimizer add next to nothing).
    t_flops = schedule.noise_labels(schedule.sample_training_sigmas(args.batch, device=device))
    flops = count_flops(net, x0, t_flops, bf16)

    start = time.perf_counter()
    step()
    sync(device)
    first_step_s = time.perf_counter() - start
    for _ in range(args.warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    blocks = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(device)
        blocks.append((time.perf_counter() - start) / args.steps)
    step_s = statistics.median(blocks)
    peak_tflops = args.peak_tflops
    achieved = flops / step_s
    result = {
        "params": sum(p.numel() for p in net.parameters()),
        "batch": args.batch,
        "first_step_s (incl. compile)": first_step_s,
        "step_s_median": step_s,
        "step_s_blocks": blocks,
        "images_per_s": args.batch / step_s,
        "flops_per_step": flops,
        "achieved_tflops": achieved / 1e12,
        "peak_tflops_used": peak_tflops,
        "mfu": achieved / (peak_tflops * 1e12),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def sample_benchmark(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    cfg = PRESETS[args.preset]
    torch.manual_seed(0)
    net = UNet(**cfg).to(device).eval()
    net.check_inputs = False
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    schedule = LinearSchedule()
    compiled = torch.compile(net) if args.compile else net
    denoiser = Denoiser(compiled, schedule, EpsParameterization())
    sampler = Sampler("heun", args.sample_steps)
    shape = (args.sample_batch, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    bf16 = args.dtype == "bf16"

    def run(seed: int) -> int:
        generator = torch.Generator(device=device).manual_seed(seed)
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
        ):
            result = sampler(denoiser, schedule, shape, device=device, generator=generator)
        assert torch.isfinite(result.samples).all(), "non-finite samples"
        return result.nfe

    start = time.perf_counter()
    nfe = run(0)
    sync(device)
    first_s = time.perf_counter() - start
    times = []
    for r in range(args.repeats):
        start = time.perf_counter()
        run(r + 1)
        sync(device)
        times.append(time.perf_counter() - start)
    t = statistics.median(times)
    return {
        "sampler": f"heun, {args.sample_steps} steps",
        "nfe": nfe,
        "batch": args.sample_batch,
        "first_run_s (incl. compile)": first_s,
        "run_s_median": t,
        "images_per_s": args.sample_batch / t,
        "network_evals_per_s": args.sample_batch * nfe / t,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", choices=list(PRESETS), default="base")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks / sampling runs")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--compile", dest="compile", action="store_true", default=None)
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--sample-batch", type=int, default=128)
    parser.add_argument("--sample-steps", type=int, default=18, help="heun steps (2 n - 1 NFE)")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=H100_H200_SXM_BF16_DENSE_TFLOPS,
        help="the card's peak dense rate for --dtype (989: H100/H200 SXM bf16)",
    )
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="tiny preset, batch 4, 2 steps, no compile: seconds"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.set_defaults(channels_last=True, compile=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.batch, args.steps, args.repeats, args.warmup = "tiny", 4, 2, 1, 1
        args.sample_batch, args.sample_steps = 4, 2
        if args.compile is None:
            args.compile = False
    if args.compile is None:
        args.compile = True
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # a dry run; one thread keeps it steady on a shared machine
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("error: no CUDA device (use --device cpu --quick for a dry run)", file=sys.stderr)
            return 1
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    info = machine_info(device)
    print(f"machine: {json.dumps(info)}")
    print(
        f"command: python scripts/bench_gpu.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    )
    print(
        f"settings: preset {args.preset}, batch {args.batch}, {args.dtype}, "
        f"channels_last {args.channels_last}, compile {args.compile}, "
        f"peak {args.peak_tflops} TFLOP/s"
    )
    results: dict[str, Any] = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}}
    train = train_benchmark(args, device)
    results["train"] = train
    print("\n| training | value |\n| --- | --- |")
    print(f"| parameters | {train['params']:,} |")
    print(f"| batch | {train['batch']} |")
    print(f"| first step (incl. compile) s | {train['first_step_s (incl. compile)']:.2f} |")
    print(f"| step s (median of {args.repeats} x {args.steps}) | {train['step_s_median']:.4f} |")
    print(f"| images/s | {train['images_per_s']:.1f} |")
    print(f"| model GFLOPs per step (fwd+bwd) | {train['flops_per_step'] / 1e9:.1f} |")
    print(f"| achieved TFLOP/s | {train['achieved_tflops']:.2f} |")
    print(f"| MFU (peak {args.peak_tflops:g} TFLOP/s) | {train['mfu']:.1%} |")
    if "peak_memory_gib" in train:
        print(f"| peak memory allocated GiB | {train['peak_memory_gib']:.2f} |")
    if not args.skip_sampling:
        sample = sample_benchmark(args, device)
        results["sample"] = sample
        print("\n| sampling | value |\n| --- | --- |")
        print(f"| sampler | {sample['sampler']} ({sample['nfe']} NFE) |")
        print(f"| batch | {sample['batch']} |")
        print(f"| first run (incl. compile) s | {sample['first_run_s (incl. compile)']:.2f} |")
        print(f"| run s (median) | {sample['run_s_median']:.3f} |")
        print(f"| images/s | {sample['images_per_s']:.1f} |")
        print(f"| network evals/s | {sample['network_evals_per_s']:.1f} |")
    out = args.json
    if out is None and os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / "bench_gpu.json"
    if out is not None:
        out.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
