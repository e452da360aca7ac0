"""difforge's UNet against diffusers' UNet2DModel at equal parameters and layout, on the CPU.

Both networks are built from one preset (``configs/model/unet_<size>.yaml``): the same widths,
residual blocks per level, attention resolutions and heads, GroupNorm(32, eps 1e-6), dropout,
conv resampling and the same sinusoidal embedding ([sin, cos], ``freq_shift=1``). The parameter
counts are checked to be equal (small at 16 px, 1 channel: 6,469,889; base at 32 px,
3 channels: 35,746,307).

For each variant (fp32, bf16 autocast, channels_last, their combination, torch.compile) it
measures, interleaved (difforge then diffusers, the order alternating between repeats, medians
over repeats):

- training step: forward + MSE loss + backward + AdamW step (dropout on, ``set_to_none`` grads);
- inference: one forward pass under ``torch.inference_mode`` in eval mode;
- peak memory of one training step and one inference call: the high-water mark of tensor
  memory allocated above the level at the step's start, from the allocation events that
  ``torch.profiler`` records with ``profile_memory=True`` (the CPU analogue of
  ``torch.cuda.max_memory_allocated() - memory_allocated()``; params, grads and AdamW state
  present before the step are not counted, the gradients created in it are). As a cross-check,
  the growth of the resident set's high-water mark (``VmHWM``, reset through
  ``/proc/self/clear_refs``) over the same call, which includes allocator caching.

Times are taken on two clocks: wall and this process's CPU time (``time.process_time``); with
one torch thread (the default) the CPU clock does not count time spent waiting for a core that
another job holds, so it is the steadier on a shared machine. Ratios are difforge / diffusers:
below 1 means difforge is faster or smaller.

    python scripts/bench_unet.py                             # small and base
    python scripts/bench_unet.py --sizes small --compile     # adds torch.compile (minutes)
    python scripts/bench_unet.py --profile                   # top ops of each, fp32 train step
    python scripts/bench_unet.py --sizes small --patch-attention   # the proposed attention fix
    python scripts/bench_unet.py --quick                     # seconds: tiny preset, batch 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from difforge.machine import machine_info as difforge_machine_info
from difforge.nets.presets import load_preset
from difforge.nets.unet import AttentionBlock, UNet

# size -> (channels, image size) of the benchmark data, and default batch / repeats / steps.
SETTINGS: dict[str, dict[str, Any]] = {
    "tiny": {"channels": 1, "image_size": 8, "batch": 4, "repeats": 1, "steps": 1},
    "small": {"channels": 1, "image_size": 16, "batch": 32, "repeats": 5, "steps": 2},
    "base": {"channels": 3, "image_size": 32, "batch": 8, "repeats": 3, "steps": 1},
}
VARIANTS: dict[str, dict[str, bool]] = {
    "fp32": {"bf16": False, "channels_last": False, "compile": False},
    "bf16": {"bf16": True, "channels_last": False, "compile": False},
    "cl": {"bf16": False, "channels_last": True, "compile": False},
    "cl_bf16": {"bf16": True, "channels_last": True, "compile": False},
    "compile": {"bf16": False, "channels_last": False, "compile": True},
    "compile_bf16": {"bf16": True, "channels_last": False, "compile": True},
}
DEFAULT_VARIANTS = {"tiny": ["fp32", "bf16", "cl"], "small": ["fp32", "bf16", "cl", "cl_bf16"]}
DEFAULT_VARIANTS["base"] = ["fp32", "bf16", "cl"]


def preset(size: str) -> dict[str, Any]:
    """The UNet arguments of ``configs/model/unet_<size>.yaml`` at the benchmark's data shape."""
    return load_preset(f"unet_{size}", SETTINGS[size]["channels"], SETTINGS[size]["image_size"])[1]


def build_difforge(cfg: dict[str, Any]) -> nn.Module:
    net = UNet(**cfg)
    net.check_inputs = False
    return net


def build_diffusers(cfg: dict[str, Any]) -> nn.Module:
    """UNet2DModel with difforge's layout: same widths, blocks, attention levels and heads."""
    from diffusers import UNet2DModel

    mult = cfg["channel_mult"]
    widths = [cfg["base_channels"] * m for m in mult]
    resolutions = [cfg["image_size"] // 2**i for i in range(len(mult))]
    attn = set(cfg["attn_resolutions"])
    attention_widths = [w for w, r in zip(widths, resolutions, strict=True) if r in attn]
    attention_widths.append(widths[-1])  # the middle block
    if cfg.get("head_channels"):
        head_dim = cfg["head_channels"]
    elif cfg["num_heads"] == 1:
        head_dim = None  # diffusers: one head of the block's width
    else:
        if len(set(attention_widths)) != 1:
            raise ValueError(
                "num_heads > 1 at several attention widths has no diffusers equivalent"
            )
        head_dim = attention_widths[0] // cfg["num_heads"]
    # diffusers has one GroupNorm group count for every width; difforge uses 32 where it divides
    # the width (all of small and base), fewer on narrow layers (tiny: 16 at width 16).
    common = math.gcd(*widths)
    groups = max(g for g in range(1, 33) if common % g == 0)
    if cfg.get("num_classes", 0) or cfg.get("learned_variance"):
        raise ValueError("the comparison covers unconditional, fixed-variance presets")
    return UNet2DModel(
        sample_size=cfg["image_size"],
        in_channels=cfg["in_channels"],
        out_channels=cfg["in_channels"],
        block_out_channels=tuple(widths),
        layers_per_block=cfg["num_res_blocks"],
        down_block_types=tuple(
            "AttnDownBlock2D" if r in attn else "DownBlock2D" for r in resolutions
        ),
        up_block_types=tuple(
            "AttnUpBlock2D" if r in attn else "UpBlock2D" for r in reversed(resolutions)
        ),
        attention_head_dim=head_dim,
        norm_num_groups=groups,
        norm_eps=1e-6,
        dropout=cfg["dropout"],
        flip_sin_to_cos=False,
        freq_shift=1,
        resnet_time_scale_shift="scale_shift" if cfg["scale_shift_norm"] else "default",
        downsample_type="conv" if cfg["resample_with_conv"] else "avg",
    )


def attention_forward_last_dim_contiguous(self: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """The proposed fix of ``AttentionBlock.forward`` (``--patch-attention``): the same maths,
    with q/k/v made contiguous in the head dimension, so that ``scaled_dot_product_attention``
    can take its flash kernel (on the CPU it falls back to the math kernel, which materialises
    the attention matrix, when the last dimension is strided, as for contiguous activations)."""
    b, c, hh, ww = x.shape
    heads = self.num_heads
    qkv = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).contiguous()  # (B, HW, 3C)
    q, k, v = qkv.view(b, hh * ww, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
    h = F.scaled_dot_product_attention(q, k, v)
    h = h.transpose(1, 2).reshape(b, hh, ww, c).permute(0, 3, 1, 2)
    return x + self.proj(h)


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class Bench:
    """One network in one variant: its forward, optimizer and fixed inputs."""

    def __init__(
        self, name: str, net: nn.Module, batch: int, settings: dict[str, Any], variant: dict
    ) -> None:
        self.name = name
        self.variant = variant
        shape = (batch, settings["channels"], settings["image_size"], settings["image_size"])
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(shape, generator=generator)
        self.target = torch.randn(shape, generator=generator)
        self.t = torch.rand(batch, generator=generator) * 999
        if variant["channels_last"]:
            net = net.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.net = net
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
        if name == "diffusers":

            def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return net(x, t, return_dict=False)[0]

        else:

            def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return net(x, t)

        self.forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = (
            torch.compile(forward) if variant["compile"] else forward
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.variant["bf16"])

    def train_step(self) -> None:
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.forward(self.x, self.t)
        loss = F.mse_loss(out.float(), self.target)
        loss.backward()
        self.optimizer.step()

    def infer(self) -> None:
        self.net.eval()
        with torch.inference_mode(), self.autocast():
            self.forward(self.x, self.t)


def timed(fn: Callable[[], None], steps: int) -> tuple[float, float]:
    """(wall, process CPU) seconds per call."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_peak_growth_mib(fn: Callable[[], None]) -> float | None:
    """Growth of the resident set's high-water mark over ``fn()``, MiB (Linux; None elsewhere)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _rss_kib("VmRSS")
        fn()
        return (_rss_kib("VmHWM") - before) / 1024
    except (OSError, KeyError):
        return None


def profiler_peak_mib(fn: Callable[[], None]) -> float:
    """Peak of tensor memory allocated above the start of ``fn()``, from the profiler's allocation
    events (sizes are negative for frees), MiB."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocations: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    allocation_tag = torch._C._profiler._EventType.Allocation
    while stack:
        node = stack.pop()
        if node.tag == allocation_tag and str(node.extra_fields.device) == "cpu":
            allocations.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    allocations.sort()
    level = peak = 0
    for _, size in allocations:
        level += size
        peak = max(peak, level)
    return peak / 2**20


def top_ops(fn: Callable[[], None], rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def run_variant(
    size: str, variant_name: str, batch: int, repeats: int, steps: int, memory: bool, peers: bool
) -> dict[str, Any]:
    variant = VARIANTS[variant_name]
    cfg = preset(size)
    settings = SETTINGS[size]
    torch.manual_seed(0)
    benches = [Bench("difforge", build_difforge(cfg), batch, settings, variant)]
    if peers:
        torch.manual_seed(0)
        benches.append(Bench("diffusers", build_diffusers(cfg), batch, settings, variant))
    result: dict[str, Any] = {
        "size": size,
        "variant": variant_name,
        "batch": batch,
        "params": {b.name: num_params(b.net) for b in benches},
    }
    # Warm-up (and compilation: its time is the first calls' time).
    for b in benches:
        start = time.perf_counter()
        b.train_step()
        b.infer()
        result.setdefault("first_call_s", {})[b.name] = time.perf_counter() - start
        b.train_step()
        b.infer()
    times: dict[str, dict[str, dict[str, list[float]]]] = {
        clock: {b.name: {"train": [], "infer": []} for b in benches} for clock in ("wall", "cpu")
    }
    for r in range(repeats):
        order = benches if r % 2 == 0 else benches[::-1]
        for kind, fn in (("train", "train_step"), ("infer", "infer")):
            for b in order:
                wall, cpu = timed(getattr(b, fn), steps)
                times["wall"][b.name][kind].append(wall)
                times["cpu"][b.name][kind].append(cpu)
    result["times"] = times
    result["median_s"] = {
        clock: {
            name: {kind: statistics.median(v) for kind, v in kinds.items()}
            for name, kinds in per_clock.items()
        }
        for clock, per_clock in times.items()
    }
    if peers:
        result["ratio"] = {
            clock: {
                kind: statistics.median(
                    d / p
                    for d, p in zip(
                        times[clock]["difforge"][kind], times[clock]["diffusers"][kind], strict=True
                    )
                )
                for kind in ("train", "infer")
            }
            for clock in ("wall", "cpu")
        }
    if memory:
        mem: dict[str, dict[str, float | None]] = {}
        for b in benches:
            mem[b.name] = {
                "train_peak_mib": profiler_peak_mib(b.train_step),
                "infer_peak_mib": profiler_peak_mib(b.infer),
                "train_rss_mib": rss_peak_growth_mib(b.train_step),
                "infer_rss_mib": rss_peak_growth_mib(b.infer),
            }
        result["memory"] = mem
        if peers:
            result["memory_ratio"] = {
                kind: mem["difforge"][f"{kind}_peak_mib"] / mem["diffusers"][f"{kind}_peak_mib"]
                for kind in ("train", "infer")
            }
    return result


def machine_info() -> dict[str, Any]:
    return difforge_machine_info(cpu_capability=torch.backends.cpu.get_cpu_capability())


def print_table(results: list[dict[str, Any]], peers: bool, clock: str) -> None:
    print(f"\nclock: {clock} (medians over repeats; ratios are medians of per-repeat ratios)\n")
    if peers:
        print(
            "| size | variant | batch | train s/step difforge | diffusers | ratio | "
            "infer s difforge | diffusers | ratio | train peak MiB difforge | diffusers | ratio | "
            "infer peak MiB difforge | diffusers | ratio |"
        )
        print("|" + " --- |" * 15)
    else:
        print(
            "| size | variant | batch | train s/step | infer s | train peak MiB | infer peak MiB |"
        )
        print("|" + " --- |" * 7)
    for r in results:
        med = r["median_s"][clock]
        mem = r.get("memory")

        def m(name: str, kind: str, mem: dict | None = mem) -> str:
            return f"{mem[name][f'{kind}_peak_mib']:.1f}" if mem else "-"

        head = f"| {r['size']} | {r['variant']} | {r['batch']} | "
        if peers:
            ratio = r["ratio"][clock]
            mr = r.get("memory_ratio")
            mem_cells = (
                f"{m('difforge', 'train')} | {m('diffusers', 'train')} | {mr['train']:.3f} | "
                f"{m('difforge', 'infer')} | {m('diffusers', 'infer')} | {mr['infer']:.3f} |"
                if mr
                else "- | - | - | - | - | - |"
            )
            print(
                head + f"{med['difforge']['train']:.4f} | {med['diffusers']['train']:.4f} | "
                f"{ratio['train']:.3f} | {med['difforge']['infer']:.4f} | "
                f"{med['diffusers']['infer']:.4f} | {ratio['infer']:.3f} | " + mem_cells
            )
        else:
            print(
                head + f"{med['difforge']['train']:.4f} | {med['difforge']['infer']:.4f} | "
                f"{m('difforge', 'train')} | {m('difforge', 'infer')} |"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["small", "base"], choices=list(SETTINGS))
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS))
    parser.add_argument(
        "--compile", action="store_true", help="add torch.compile variants (small/tiny)"
    )
    parser.add_argument("--batch", type=int, default=None, help="override the size's batch")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="calls per timed block")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-diffusers", action="store_true")
    parser.add_argument("--profile", action="store_true", help="top ops of one fp32 train step")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)"
    )
    parser.add_argument(
        "--patch-attention",
        action="store_true",
        help="run difforge with the proposed AttentionBlock layout fix (see the function)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny preset, batch 4: seconds")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = ["tiny"]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.patch_attention:
        AttentionBlock.forward = attention_forward_last_dim_contiguous  # type: ignore[method-assign]
        print("difforge AttentionBlock.forward patched: q/k/v contiguous in the head dimension")
    peers = not args.no_diffusers
    if peers:
        try:
            import diffusers
        except ImportError:
            print("diffusers is not installed (see requirements.txt): difforge only")
            peers = False
        else:
            diffusers.utils.logging.set_verbosity_error()
    info = machine_info()
    info["diffusers"] = diffusers.__version__ if peers else None
    print(
        f"machine: {info['nproc']} cores, {info['cpu']} ({info['cpu_capability']}), "
        f"torch {info['torch']} ({info['threads']} threads), diffusers {info['diffusers']}"
    )
    print(
        f"command: python scripts/bench_unet.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    )
    results = []
    for size in args.sizes:
        settings = SETTINGS[size]
        variants = list(args.variants or DEFAULT_VARIANTS[size])
        if args.compile and size != "base":
            variants += [v for v in ("compile", "compile_bf16") if v not in variants]
        for variant in variants:
            start = time.perf_counter()
            r = run_variant(
                size,
                variant,
                args.batch or settings["batch"],
                args.repeats or settings["repeats"],
                args.steps or settings["steps"],
                memory=not args.no_memory,
                peers=peers,
            )
            r["seconds"] = time.perf_counter() - start
            results.append(r)
            params = ", ".join(f"{k} {v:,}" for k, v in r["params"].items())
            first = ", ".join(f"{k} {v:.1f} s" for k, v in r["first_call_s"].items())
            print(f"{size}/{variant}: params {params}; first calls {first}; {r['seconds']:.0f} s")
        if args.profile:
            cfg = preset(size)
            for name, build in (("difforge", build_difforge), ("diffusers", build_diffusers)):
                if name == "diffusers" and not peers:
                    continue
                torch.manual_seed(0)
                b = Bench(
                    name, build(cfg), args.batch or settings["batch"], settings, VARIANTS["fp32"]
                )
                b.train_step()
                print(f"\n{size} {name}: fp32 train step, top ops by self CPU time")
                print(top_ops(b.train_step, 15))
    print_table(results, peers, "cpu")
    print_table(results, peers, "wall")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
