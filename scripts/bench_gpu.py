"""GPU benchmark: training and sampling speed of difforge's model presets on one GPU.

For each model preset named with ``--models`` (``configs/model/<name>.yaml``, e.g. ``unet_base``,
the DDPM 35.7M U-Net, or ``dit_b`` where that preset exists), on synthetic data already on the
device (3 x 32 x 32 by default; data loading is not part of it):

- training: batch ``--batch``, bf16 autocast, channels_last (for networks that prefer it),
  ``torch.compile`` of the loss (what ``module.compile=true`` compiles): difforge's Denoiser +
  eps parameterization + uniform DenoisingLoss on the linear schedule, backward,
  ``clip_grad_norm_(1.0)`` whose total norm is the non-finite check, fused AdamW skipping a
  flagged step on the device, ``difforge.training.ema.EMA``; images/s from the median of
  ``--repeats`` timed blocks of ``--steps`` steps;
- model FLOPs utilisation: the network's FLOPs for one forward + backward at this batch, counted
  with ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add), times steps/s,
  over ``--peak-tflops`` (default 989: the H100/H200 SXM dense bf16 peak), and over the rate of
  an 8192^3 bf16 matmul measured here;
- peak memory: ``torch.cuda.max_memory_allocated`` over the timed steps; and, eager, the
  step time and peak memory with and without activation checkpointing (``model.checkpointing``);
- sampling: Heun, 18 steps = 35 NFE, batch ``--sample-batch``, bf16, compiled denoiser: images/s;
- Lightning against a bare loop (``--lightning``, needs lightning and torchmetrics): the
  ``DiffusionModule`` in ``Trainer.fit`` (bf16-mixed, clipping 1.0, CSV logger every 25 steps)
  against the plain loop of ``scripts/bench_overhead.py``, interleaved segment by segment, the
  device synchronised at segment ends; plus ``synced``, the module with a host read of the
  loss and gradient flags at every step (what the per-step checks cost before they moved onto
  the device);
- sampling loops (``--peer``, needs diffusers): ``scripts/bench_sampling_peer.py`` on the GPU.

Each section is written to the JSON as soon as it finishes (a run cut short keeps what it has).
At import it needs only torch, PyYAML and difforge's ``nets``, ``diffusion`` and ``machine``
(no hydra or omegaconf, which the GPU image lacks), and finds difforge in ``src/``.

    python scripts/bench_gpu.py --models unet_base dit_b --lightning --peer --json $OUT/gpu.json
    python scripts/bench_gpu.py --smoke          # the CPU dry run of every section (seconds)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
with contextlib.suppress(ImportError):
    import difforge  # noqa: F401
if "difforge" not in sys.modules:
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

from difforge.devices import resolve_device  # noqa: E402
from difforge.diffusion.losses import DenoisingLoss  # noqa: E402
from difforge.diffusion.parameterization import Denoiser, EpsParameterization  # noqa: E402
from difforge.diffusion.samplers import Sampler  # noqa: E402
from difforge.diffusion.schedules import LinearSchedule  # noqa: E402
from difforge.errors import DifforgeError  # noqa: E402
from difforge.machine import machine_info, sync  # noqa: E402
from difforge.nets.presets import available_presets, load_preset  # noqa: E402
from difforge.training.ema import EMA  # noqa: E402

H100_H200_SXM_BF16_DENSE_TFLOPS = 989.0
DEFAULT_MODELS = ("unet_base", "dit_b")


def build_net(args: argparse.Namespace, name: str, **overrides: Any) -> torch.nn.Module:
    cls, cfg = load_preset(name, args.channels, args.image_size)
    torch.manual_seed(0)
    net = cls(**{**cfg, **overrides})
    if hasattr(net, "check_inputs"):
        net.check_inputs = False  # its class-label range check reads the device
    return net


def memory_format(args: argparse.Namespace, net: torch.nn.Module) -> torch.memory_format:
    wanted = args.channels_last and getattr(net, "prefers_channels_last", False)
    return torch.channels_last if wanted else torch.contiguous_format


def count_flops(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, bf16: bool) -> int:
    """FLOPs of one forward + backward of ``net`` at this batch (eager; 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        net(x, t).float().square().mean().backward()
    net.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def matmul_tflops(device: torch.device, n: int) -> float:
    """Achieved TFLOP/s of an n^3 bf16 matmul (median of 10 after 3 warm-ups)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    times = []
    for i in range(13):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e12


class TrainStep:
    """One training step as ``DiffusionModule`` takes it, without Lightning."""

    def __init__(self, args: argparse.Namespace, net: torch.nn.Module, device: torch.device):
        self.device, self.batch = device, args.batch
        self.bf16 = args.dtype == "bf16"
        self.net = net.to(device).to(memory_format=memory_format(args, net)).train()
        self.schedule = LinearSchedule()
        self.denoiser = Denoiser(self.net, self.schedule, EpsParameterization())
        self.loss_fn = DenoisingLoss()
        self.ema = EMA(self.net, 0.9999)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=2e-4, fused=True)
        shape = (args.batch, args.channels, args.image_size, args.image_size)
        self.x0 = (torch.rand(shape, device=device) * 2 - 1).contiguous(
            memory_format=memory_format(args, net)
        )
        self.forward = torch.compile(self._loss) if args.compile else self._loss

    def _loss(self, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.loss_fn(self.denoiser, x0, sigma, noise)

    def __call__(self) -> None:
        sigma = self.schedule.sample_training_sigmas(self.batch, device=self.device)
        loss = self.forward(self.x0, sigma, torch.randn_like(self.x0)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        total = torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0, foreach=True)
        self.optimizer.found_inf = (~torch.isfinite(total) | ~torch.isfinite(loss)).float()  # type: ignore[attr-defined]
        self.optimizer.step()
        self.ema.update(self.net)


# Kernel families of a training step, by substrings of kernel names (first match wins).
KERNEL_FAMILIES = (
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("convolution", ("conv", "cudnn", "implicit_gemm", "xmma_fprop", "dgrad", "wgrad")),
    ("matmul", ("gemm", "cutlass", "cublas", "sm90_")),
    ("inductor (fused elementwise, norms, reductions)", ("triton",)),
    ("optimizer and EMA", ("adam", "foreach", "multi_tensor", "lerp")),
)


def profile_table(
    fn: Callable[[], Any], device: torch.device, calls: int, rows: int = 15
) -> dict[str, Any]:
    """torch.profiler over ``calls`` calls: the top ops, kernel launches and host syncs per call,
    and on CUDA the device time by kernel family."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        sync(device)
    events = prof.key_averages()
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"

    def count(names: tuple[str, ...]) -> int:
        return sum(e.count for e in events if e.key in names)

    result: dict[str, Any] = {
        "calls": calls,
        "table": events.table(sort_by=sort_by, row_limit=rows),
        "kernel_launches_per_call": count(
            ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC")
        )
        / calls,
        "host_syncs_per_call": count(
            ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
        )
        / calls,
        "memcpy_per_call": count(("cudaMemcpyAsync", "cudaMemcpy")) / calls,
    }
    if device.type == "cuda":
        families: dict[str, float] = {}
        for e in events:
            if e.device_type.name != "CUDA":
                continue
            name = e.key.lower()
            family = next(
                (f for f, keys in KERNEL_FAMILIES if any(k in name for k in keys)), "other"
            )
            families[family] = families.get(family, 0.0) + e.self_device_time_total / 1e3 / calls
        result["device_ms_per_call_by_family"] = families
    return result


def timed_blocks(
    step: Callable[[], None], device: torch.device, repeats: int, steps: int
) -> list[float]:
    blocks = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        blocks.append((time.perf_counter() - start) / steps)
    return blocks


def train_benchmark(
    args: argparse.Namespace, name: str, device: torch.device, matmul: float | None
) -> dict[str, Any]:
    step = TrainStep(args, build_net(args, name), device)
    t = step.schedule.noise_labels(step.schedule.sample_training_sigmas(args.batch, device=device))
    flops = count_flops(step.net, step.x0, t, step.bf16)
    start = time.perf_counter()
    step()
    sync(device)
    first_step_s = time.perf_counter() - start
    for _ in range(args.warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    blocks = timed_blocks(step, device, args.repeats, args.steps)
    step_s = statistics.median(blocks)
    achieved = flops / step_s
    result: dict[str, Any] = {
        "params": sum(p.numel() for p in step.net.parameters()),
        "batch": args.batch,
        "first_step_s": first_step_s,
        "step_s_median": step_s,
        "step_s_blocks": blocks,
        "images_per_s": args.batch / step_s,
        "images_per_s_range": [args.batch / max(blocks), args.batch / min(blocks)],
        "flops_per_step": flops,
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / (args.peak_tflops * 1e12),
        "mfu_range": [
            flops / max(blocks) / (args.peak_tflops * 1e12),
            flops / min(blocks) / (args.peak_tflops * 1e12),
        ],
    }
    if matmul:
        result["fraction_of_matmul_rate"] = achieved / (matmul * 1e12)
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if args.profile:
        result["profile"] = profile_table(step, device, 5)
    return result


def checkpointing_benchmark(
    args: argparse.Namespace, name: str, device: torch.device
) -> dict[str, Any]:
    """Eager step time and peak memory without and with activation checkpointing."""
    eager = argparse.Namespace(**{**vars(args), "compile": False})
    out: dict[str, Any] = {}
    for flag in (False, True):
        try:
            net = build_net(args, name, checkpointing=flag)
        except TypeError:
            return {"skipped": f"{name} has no checkpointing option"}
        step = TrainStep(eager, net, device)
        for _ in range(2):
            step()
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        blocks = timed_blocks(step, device, args.repeats, max(2, args.steps // 2))
        out["on" if flag else "off"] = {
            "step_s_median": statistics.median(blocks),
            "step_s_blocks": blocks,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
            if device.type == "cuda"
            else None,
        }
        del step, net
    return out


def sample_benchmark(args: argparse.Namespace, name: str, device: torch.device) -> dict[str, Any]:
    net = build_net(args, name).to(device).eval()
    fmt = memory_format(args, net)
    net = net.to(memory_format=fmt)
    schedule = LinearSchedule()
    denoiser = Denoiser(net, schedule, EpsParameterization()).eval()
    if args.compile:
        denoiser.compile()  # in place, as module.compile=true does for sampling
    sampler = Sampler("heun", args.sample_steps, grid="karras", final_sigma="zero")  # EDM alg. 2
    shape = (args.sample_batch, args.channels, args.image_size, args.image_size)
    bf16 = args.dtype == "bf16"

    def run(seed: int) -> int:
        generator = torch.Generator(device=device).manual_seed(seed)
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            result = sampler(denoiser, schedule, shape, device=device, generator=generator)
        return result.nfe

    sync(device)
    start = time.perf_counter()
    nfe = run(0)
    sync(device)
    first_s = time.perf_counter() - start
    times = []
    for r in range(args.repeats):
        sync(device)
        start = time.perf_counter()
        run(r + 1)
        sync(device)
        times.append(time.perf_counter() - start)
    t = statistics.median(times)
    return {
        "sampler": f"heun, {args.sample_steps} steps",
        "nfe": nfe,
        "batch": args.sample_batch,
        "first_run_s": first_s,
        "run_s_median": t,
        "run_s_all": times,
        "images_per_s": args.sample_batch / t,
        "images_per_s_range": [args.sample_batch / max(times), args.sample_batch / min(times)],
        "network_evals_per_s": args.sample_batch * nfe / t,
    }


def lightning_benchmark(
    args: argparse.Namespace, name: str, device: torch.device
) -> dict[str, Any]:
    """Lightning / bare-loop step-time ratios (median over interleaved segment pairs), per fit."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from bench_overhead import PlainRunner, interleaving_callback, quiet_lightning
    from difforge.training.module import DiffusionModule

    quiet_lightning()

    class Synced(DiffusionModule):
        """Reads the step's flags back at every step, as the per-step checks used to."""

        def configure_gradient_clipping(self, optimizer: Any, *a: Any, **k: Any) -> None:
            super().configure_gradient_clipping(optimizer, *a, **k)
            bool(getattr(optimizer, "found_inf", torch.zeros(())))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            bool(torch.isfinite(loss))
            return loss

    n = args.lightning_segments * args.lightning_steps + args.warmup + 2
    data = torch.rand(n * args.batch, args.channels, args.image_size, args.image_size) * 2 - 1
    dataset = torch.utils.data.TensorDataset(data, torch.zeros(len(data), dtype=torch.long))
    bf16 = args.dtype == "bf16" and device.type == "cuda"
    out: dict[str, Any] = {}
    for kind, cls in (("lightning", DiffusionModule), ("synced", Synced)):
        fits = []
        for fit in range(args.lightning_fits):
            torch.manual_seed(fit)
            net = build_net(args, name)
            module = cls(
                net,
                LinearSchedule(),
                EpsParameterization(),
                DenoisingLoss(),
                Sampler("ddim", 10),
                (args.channels, args.image_size, args.image_size),
                lr=2e-4,
                ema_decay=0.9999,
                channels_last=memory_format(args, net) == torch.channels_last,
            )
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_size=args.batch,
                shuffle=True,
                drop_last=True,
                pin_memory=device.type == "cuda",
            )
            plain_module = copy.deepcopy(module).to(device)
            plain = PlainRunner(plain_module, loader, 1.0, bf16=bf16)
            for _ in range(args.warmup):
                plain.step(plain.next_batch())
            callback = interleaving_callback(
                plain, args.warmup, args.lightning_steps, args.lightning_segments
            )
            trainer = L.Trainer(
                accelerator="gpu" if device.type == "cuda" else "cpu",
                devices=1,
                precision="bf16-mixed" if bf16 else "32-true",
                gradient_clip_val=1.0,
                log_every_n_steps=25,
                logger=CSVLogger(tempfile.mkdtemp(prefix="bench_gpu_")),
                callbacks=[callback],
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                max_steps=10**9,
                max_epochs=-1,
            )
            trainer.fit(module, train_dataloaders=loader)
            pairs = min(len(callback.lightning), len(callback.plain))
            ratios = [callback.lightning[i][0] / callback.plain[i][0] for i in range(pairs)]
            fits.append(
                {
                    "pairs": pairs,
                    "ratio": statistics.median(ratios),
                    "ratios": ratios,
                    "lightning_s": statistics.median(v[0] for v in callback.lightning[:pairs]),
                    "plain_s": statistics.median(v[0] for v in callback.plain[:pairs]),
                }
            )
        medians = [f["ratio"] for f in fits]
        out[kind] = {
            "fits": fits,
            "ratio_median": statistics.median(medians),
            "ratio_range": [min(medians), max(medians)],
        }
    return out


def peer_benchmark(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    from bench_sampling_peer import measure

    return measure(
        args.peer_size, args.peer_batches, args.peer_nfe, args.repeats, device, args.dtype == "bf16"
    )


def peer_profiles(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Profiles of one run of each sampling loop at the smallest peer batch."""
    from bench_sampling_peer import loops
    from bench_unet import SETTINGS, build_diffusers, preset

    torch.manual_seed(0)
    unet = build_diffusers(preset(args.peer_size)).to(device).eval()
    s = SETTINGS[args.peer_size]
    shape = (min(args.peer_batches), s["channels"], s["image_size"], s["image_size"])
    runs = loops(unet, args.peer_nfe, shape, device)
    out = {}
    bf16 = args.dtype == "bf16"
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        for name, run in runs.items():
            run(0)
            out[name] = profile_table(lambda run=run: run(1), device, 1, rows=12)
    return out


def print_section(title: str, rows: dict[str, Any]) -> None:
    print(f"\n| {title} | value |\n| --- | --- |")
    for key, value in rows.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        print(f"| {key} | {value} |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        help=f"model presets (configs/model/<name>.yaml); default: those of {DEFAULT_MODELS} that exist",
    )
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks / sampling runs")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--sample-batch", type=int, default=128)
    parser.add_argument("--sample-steps", type=int, default=18, help="heun steps (2 n - 1 NFE)")
    parser.add_argument("--peak-tflops", type=float, default=H100_H200_SXM_BF16_DENSE_TFLOPS)
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument("--checkpointing", action="store_true", help="eager memory/time, on/off")
    parser.add_argument("--lightning", action="store_true", help="Lightning / bare-loop ratio")
    parser.add_argument("--lightning-fits", type=int, default=3)
    parser.add_argument("--lightning-segments", type=int, default=6)
    parser.add_argument("--lightning-steps", type=int, default=10)
    parser.add_argument("--peer", action="store_true", help="difforge vs diffusers sampling loop")
    parser.add_argument(
        "--profile", action="store_true", help="torch.profiler tables of the step and the loops"
    )
    parser.add_argument("--peer-size", default="base", help="bench_unet.py size")
    parser.add_argument("--peer-batches", type=int, nargs="+", default=[1, 16, 128])
    parser.add_argument("--peer-nfe", type=int, default=35)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every section on the CPU at unet_tiny's size: batch 4, 2 steps, no compile",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.set_defaults(channels_last=True, compile=True)
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.models, args.channels, args.image_size = "cpu", ["unet_tiny"], 1, 8
        args.batch, args.steps, args.repeats, args.warmup, args.compile = 4, 2, 1, 1, False
        args.sample_batch, args.sample_steps = 4, 2
        args.checkpointing = args.lightning = args.peer = args.profile = True
        args.lightning_fits, args.lightning_segments, args.lightning_steps = 1, 1, 2
        args.peer_size, args.peer_batches, args.peer_nfe = "tiny", [2], 2
    if args.models is None:
        args.models = [m for m in DEFAULT_MODELS if m in available_presets()]
    for name in args.models:
        load_preset(name, args.channels, args.image_size)  # refuses unknown presets up front
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        device = resolve_device(args.device, "--device")
    except DifforgeError as error:
        print(f"error: {error}; --smoke is the CPU dry run", file=sys.stderr)
        return 1
    if device.type == "cpu":
        torch.set_num_threads(1)  # a dry run; one thread keeps it steady on a shared machine
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    extra: dict[str, Any] = {
        "device": str(device),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        extra |= {
            "gpu": props.name,
            "capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    info = machine_info(**extra)
    print(f"machine: {json.dumps(info)}")
    print(
        f"command: python scripts/bench_gpu.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    )
    print(
        f"settings: models {args.models}, {args.channels}x{args.image_size}x{args.image_size}, "
        f"batch {args.batch}, {args.dtype}, channels_last {args.channels_last}, "
        f"compile {args.compile}, peak {args.peak_tflops} TFLOP/s"
    )
    results: dict[str, Any] = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}}
    out = args.json
    if out is None and os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / "bench_gpu.json"

    def save(section: str, value: Any) -> None:
        results[section] = value
        if out is not None:
            out.write_text(json.dumps(results, indent=2))

    matmul = None
    if device.type == "cuda":
        matmul = matmul_tflops(device, 8192)
        save("matmul_bf16_8192_tflops", matmul)
        print(f"\nbf16 8192^3 matmul: {matmul:.1f} TFLOP/s")
    for name in args.models:
        train = train_benchmark(args, name, device, matmul)
        save(f"train/{name}", train)
        print_section(f"training {name}", {k: v for k, v in train.items() if k != "profile"})
        if "profile" in train:
            print({k: v for k, v in train["profile"].items() if k != "table"})
            print(train["profile"]["table"])
        if not args.skip_sampling:
            sample = sample_benchmark(args, name, device)
            save(f"sample/{name}", sample)
            print_section(f"sampling {name}", sample)
        if args.checkpointing:
            ckpt = checkpointing_benchmark(args, name, device)
            save(f"checkpointing/{name}", ckpt)
            print(f"\ncheckpointing {name}: {json.dumps(ckpt)}")
    if args.lightning:
        light = lightning_benchmark(args, args.models[0], device)
        save("lightning", light)
        for kind, r in light.items():
            print(
                f"\nLightning ({kind}) / bare loop, {args.models[0]}: median of fits "
                f"{r['ratio_median']:.3f} (range {r['ratio_range'][0]:.3f}-{r['ratio_range'][1]:.3f})"
            )
    if args.peer:
        from bench_sampling_peer import print_rows

        rows = peer_benchmark(args, device)
        save("peer_sampling", rows)
        print()
        print_rows(rows)
        if args.profile:
            profiles = peer_profiles(args, device)
            save("peer_profiles", profiles)
            for name, p in profiles.items():
                print(f"\nprofile of one {name} run, batch {min(args.peer_batches)}:")
                print({k: v for k, v in p.items() if k != "table"})
                print(p["table"])
    if out is not None:
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
