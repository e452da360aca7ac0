"""difforge's DiT against diffusers' DiTTransformer2DModel at equal architecture, on the CPU.

Both are built from one preset (``configs/model/dit_<size>.yaml``): the same hidden size, depth,
heads, patch size, MLP ratio (GELU-tanh), adaLN-Zero conditioning, class-conditional with a null
class, LayerNorm eps 1e-6. Parameter counts differ by design: diffusers gives every block its own
copy of the timestep MLP and label table (``AdaLayerNormZero.emb``), which the paper and difforge
share (both counts are printed; the extra compute is B x depth small matrix-vector products).

For fp32 and bf16 autocast it measures, interleaved (difforge then diffusers, the order alternating
between repeats; medians over repeats; ratios are medians of per-repeat ratios), with the helpers
of ``scripts/bench_unet.py`` (see its docstring for the clocks and the memory measure):

- training step: forward + MSE + backward + AdamW step;
- inference: one forward pass under ``torch.inference_mode``;
- peak tensor memory of one training step and one inference call (profiler allocation events).

    python scripts/bench_dit.py                     # tiny (digits) and s (DiT-S/2 at 32x32x4)
    python scripts/bench_dit.py --sizes s --patch-size 4 --repeats 7
    python scripts/bench_dit.py --quick             # seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench_unet import machine_info, num_params, profiler_peak_mib, timed
from difforge.nets.dit import DiT
from difforge.nets.presets import load_preset

# size -> preset, data (channels, image size, classes), default batch / repeats / steps per block.
SETTINGS: dict[str, dict[str, Any]] = {
    "tiny": {"preset": "dit_tiny", "channels": 1, "image_size": 8, "classes": 10,
             "batch": 64, "repeats": 7, "steps": 3},
    "s": {"preset": "dit_s", "channels": 4, "image_size": 32, "classes": 1000,
          "batch": 4, "repeats": 5, "steps": 1},
}  # fmt: skip
VARIANTS = {"fp32": False, "bf16": True}


def preset(size: str, patch_size: int | None) -> dict[str, Any]:
    settings = SETTINGS[size]
    _, cfg = load_preset(settings["preset"], settings["channels"], settings["image_size"])
    cfg["num_classes"] = settings["classes"]
    if patch_size is not None:
        cfg["patch_size"] = patch_size
    return cfg


def build_difforge(cfg: dict[str, Any]) -> nn.Module:
    net = DiT(**cfg)
    net.check_inputs = False
    return net


def build_diffusers(cfg: dict[str, Any]) -> nn.Module:
    from diffusers import DiTTransformer2DModel

    if cfg["mlp_ratio"] != 4.0 or cfg["learned_variance"]:
        raise ValueError("the comparison covers mlp_ratio 4 and a fixed variance")
    return DiTTransformer2DModel(
        num_attention_heads=cfg["num_heads"],
        attention_head_dim=cfg["hidden_size"] // cfg["num_heads"],
        in_channels=cfg["in_channels"],
        out_channels=cfg["in_channels"],
        num_layers=cfg["depth"],
        dropout=0.0,
        norm_num_groups=32,
        attention_bias=True,
        sample_size=cfg["image_size"],
        patch_size=cfg["patch_size"],
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=cfg["num_classes"],
        upcast_attention=False,
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )


class DiTBench:
    """One network in one variant: fixed inputs (labels included), its optimizer and steps."""

    def __init__(self, name: str, net: nn.Module, batch: int, cfg: dict, bf16: bool) -> None:
        self.name, self.net, self.bf16 = name, net, bf16
        generator = torch.Generator().manual_seed(0)
        shape = (batch, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
        self.x = torch.randn(shape, generator=generator)
        self.target = torch.randn(shape, generator=generator)
        self.t = torch.rand(batch, generator=generator) * 999
        self.y = torch.randint(0, cfg["num_classes"], (batch,), generator=generator)
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def forward(self) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            if self.name == "diffusers":
                return self.net(self.x, timestep=self.t, class_labels=self.y, return_dict=False)[0]
            return self.net(self.x, self.t, self.y)

    def train_step(self) -> None:
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        F.mse_loss(self.forward().float(), self.target).backward()
        self.optimizer.step()

    def infer(self) -> None:
        self.net.eval()
        with torch.inference_mode():
            self.forward()


def run(size: str, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    settings, cfg = SETTINGS[size], preset(size, args.patch_size)
    batch = args.batch or settings["batch"]
    benches = []
    for name, build in (("difforge", build_difforge), ("diffusers", build_diffusers)):
        torch.manual_seed(0)
        benches.append(DiTBench(name, build(cfg), batch, cfg, VARIANTS[variant]))
    for b in benches:  # warm-up
        for _ in range(2):
            b.train_step()
            b.infer()
    times: dict[str, dict[str, dict[str, list[float]]]] = {
        clock: {b.name: {"train": [], "infer": []} for b in benches} for clock in ("wall", "cpu")
    }
    for r in range(args.repeats or settings["repeats"]):
        for kind in ("train", "infer"):
            for b in benches if r % 2 == 0 else benches[::-1]:
                fn = b.train_step if kind == "train" else b.infer
                wall, cpu = timed(fn, args.steps or settings["steps"])
                times["wall"][b.name][kind].append(wall)
                times["cpu"][b.name][kind].append(cpu)

    def ratios(clock: str, kind: str) -> list[float]:
        pairs = zip(times[clock]["difforge"][kind], times[clock]["diffusers"][kind], strict=True)
        return [d / p for d, p in pairs]

    memory = {
        b.name: {kind: profiler_peak_mib(getattr(b, fn)) for kind, fn in (("train", "train_step"), ("infer", "infer"))}
        for b in benches
    }  # fmt: skip
    return {
        "size": size,
        "variant": variant,
        "batch": batch,
        "patch_size": cfg["patch_size"],
        "params": {b.name: num_params(b.net) for b in benches},
        "times": times,
        "median_s": {
            clock: {
                n: {k: statistics.median(v) for k, v in kinds.items()} for n, kinds in c.items()
            }
            for clock, c in times.items()
        },
        "ratio": {
            clock: {
                kind: {
                    "median": statistics.median(ratios(clock, kind)),
                    "min": min(ratios(clock, kind)),
                    "max": max(ratios(clock, kind)),
                }
                for kind in ("train", "infer")
            }
            for clock in ("wall", "cpu")
        },
        "memory_mib": memory,
        "memory_ratio": {
            k: memory["difforge"][k] / memory["diffusers"][k] for k in ("train", "infer")
        },
    }


def print_table(results: list[dict[str, Any]], clock: str) -> None:
    print(f"\nclock: {clock}; ratio = difforge / diffusers, median [min, max] over repeats\n")
    print(
        "| size | patch | variant | batch | params difforge | diffusers | train s difforge | "
        "diffusers | train ratio | infer ratio | train peak MiB difforge | diffusers | ratio |"
    )
    print("|" + " --- |" * 13)
    for r in results:
        med, ratio, mem = r["median_s"][clock], r["ratio"][clock], r["memory_mib"]

        def span(kind: str, ratio: dict = ratio) -> str:
            v = ratio[kind]
            return f"{v['median']:.3f} [{v['min']:.3f}, {v['max']:.3f}]"

        print(
            f"| {r['size']} | {r['patch_size']} | {r['variant']} | {r['batch']} | "
            f"{r['params']['difforge']:,} | {r['params']['diffusers']:,} | "
            f"{med['difforge']['train']:.4f} | {med['diffusers']['train']:.4f} | {span('train')} | "
            f"{span('infer')} | {mem['difforge']['train']:.1f} | {mem['diffusers']['train']:.1f} | "
            f"{r['memory_ratio']['train']:.3f} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "s"], choices=list(SETTINGS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--patch-size", type=int, default=None, choices=[2, 4, 8])
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="calls per timed block")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny, batch 8, 2 repeats")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.batch, args.repeats, args.steps = ["tiny"], 8, 2, 1
    torch.set_num_threads(args.threads)
    try:
        import diffusers
    except ImportError:
        print("error: diffusers is not installed (see requirements.txt)", file=sys.stderr)
        return 1
    diffusers.utils.logging.set_verbosity_error()
    info = machine_info()
    info["diffusers"] = diffusers.__version__
    print(
        f"machine: {info['nproc']} cores, {info['cpu']} ({info['cpu_capability']}), "
        f"torch {info['torch']} ({info['threads']} threads), diffusers {info['diffusers']}"
    )
    print(
        f"command: python scripts/bench_dit.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    )
    results = [run(size, variant, args) for size in args.sizes for variant in args.variants]
    print_table(results, "cpu")
    print_table(results, "wall")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
