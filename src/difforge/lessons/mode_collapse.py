"""Lesson 3, mode collapse: make it happen, measure it, fix it (docs/guide.md, section 3).

On gmm1d (``cfg.data``) and gmm2d (``cfg.data2d``), three experiments, each measured by the
on-mode mass of every mode against an exact sampler's, the modes covered and the share of samples
on no mode (``difforge.lessons.collapse.mode_report``), plus W1 (sliced in 2-D):

1. too few sampling steps with the exact denoiser (``cfg.sampling_steps``);
2. a forward process that stops before q(x_T) is N(0, I) (``cfg.short_forward``: the schedule
   with fewer timesteps and the same betas), sampled from the prior anyway;
3. learning: a tiny MLP, an undertrained one, and one trained enough (``cfg.training.runs``),
   trained in-process with ``difforge.lessons.collapse.train_mlp``.

``run(cfg)`` writes mode_collapse.png, mode_collapse_mass.png, mode_collapse.md and
mode_collapse.json to ``cfg.out_dir`` and returns the measurements.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from difforge.diffusion.gaussian_mixture import GaussianMixture, GaussianMixtureOracle
from difforge.diffusion.samplers import Sampler
from difforge.diffusion.schedules import NoiseSchedule, require_discrete
from difforge.lessons import blurring, efficiency
from difforge.lessons.collapse import mode_report, train_mlp
from difforge.lessons.script import config_mixture
from difforge.metrics.mixture import true_mode_mass

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("difforge")


@dataclass
class Bench:
    """One data set's measuring bench: ``n`` samples per measurement drawn from ``seed``."""

    name: str
    mixture: GaussianMixture
    truth: Tensor  # on-mode mass of exact samples, per mode
    reference: Tensor | None  # exact samples for the sliced W1 (2-D), None in 1-D
    n: int
    seed: int
    radius: float

    def draw(
        self,
        denoiser: Any,
        schedule: NoiseSchedule,
        algorithm: str,
        steps: int,
        dtype: torch.dtype = torch.float64,
    ) -> Tensor:
        with torch.no_grad():
            result = Sampler(algorithm, int(steps))(
                denoiser,
                schedule,
                (self.n, self.mixture.dim),
                dtype=dtype,
                generator=torch.Generator().manual_seed(self.seed),
            )
        return result.samples.to(torch.float64)

    def measure(self, samples: Tensor, label: str) -> dict[str, Any]:
        report = mode_report(samples, self.mixture, self.truth, self.radius)
        report["w1"] = efficiency.distance(samples, self.mixture, self.reference)
        log.info(
            "%s %-34s covered %d/%d  on no mode %5.1f%%  W1 %.3f  mass %s",
            self.name,
            label,
            report["modes_covered"],
            report["num_modes"],
            100 * report["off_mode"],
            report["w1"],
            " ".join(f"{m:.2f}" for m in report["mass"]),
        )
        return report


def run(cfg: DictConfig) -> dict[str, Any]:
    """The lesson: figures, mode_collapse.md and mode_collapse.json in ``cfg.out_dir``; returns
    the measurements per data set and experiment."""
    from hydra.utils import instantiate

    from difforge.lessons import plots

    out = Path(cfg.out_dir)
    schedule = instantiate(cfg.schedule)
    datasets = {"gmm1d": config_mixture(cfg, "data"), "gmm2d": config_mixture(cfg, "data2d")}
    results: dict[str, Any] = {}
    rows: dict[str, list[dict[str, Any]]] = {}
    table = ["# Mode collapse: measurements\n"]
    for name, mixture in datasets.items():
        n = int(cfg.num_samples)
        bench = Bench(
            name,
            mixture,
            true_mode_mass(mixture, float(cfg.radius), num_samples=200_000),
            efficiency.reference_sample(mixture, n) if mixture.dim > 1 else None,
            n,
            int(cfg.seed),
            float(cfg.radius),
        )
        results[name], panels = experiments(bench, schedule, cfg)
        rows[name] = [figure_panel(mixture, *panel) for panel in panels]
        table += markdown(name, results[name], bench.truth)

    plots.plot_collapse_panels(rows, out / "mode_collapse.png", title="losing modes, and not")
    plots.plot_collapse_mass(
        mass_curves(results["gmm1d"], cfg),
        next(iter(results["gmm1d"]["sampling_steps"].values()))["true_mass"],
        out / "mode_collapse_mass.png",
    )
    (out / "mode_collapse.md").write_text("\n".join(table))
    (out / "mode_collapse.json").write_text(json.dumps(results, indent=2))
    log.info("wrote %s", out / "mode_collapse.md")
    return results


def experiments(
    bench: Bench, schedule: NoiseSchedule, cfg: DictConfig
) -> tuple[dict[str, Any], list[tuple[str, Tensor, dict[str, Any]]]]:
    """The three experiments and the fix on one data set: the measurements, and the panels of
    the figure as ``(title, samples, report)``."""
    from hydra.utils import instantiate

    oracle = GaussianMixtureOracle(bench.mixture)
    results: dict[str, Any] = {}
    panels = []
    # 1. Too few sampling steps.
    first = {}
    for algorithm in cfg.sampling_steps.algorithms:
        for steps in cfg.sampling_steps.steps:
            samples = bench.draw(oracle, schedule, algorithm, steps)
            key = f"{algorithm}, {steps} steps"
            first[key] = bench.measure(samples, f"exact, {key}")
            if algorithm == "ddim" and int(steps) == int(cfg.figure.steps):
                panels.append((f"exact denoiser, {key}", samples, first[key]))
    results["sampling_steps"] = first

    # 2. A forward process that stops short of noise.
    second = {}
    # The same betas over fewer steps: a linear schedule must not rescale them here.
    same_betas = (
        {"scale_to_num_timesteps": False} if "scale_to_num_timesteps" in cfg.schedule else {}
    )
    algorithm = cfg.short_forward.algorithm
    for T in cfg.short_forward.num_timesteps:
        short = require_discrete(
            instantiate(cfg.schedule, num_timesteps=int(T), **same_betas), "this lesson"
        )
        steps = min(int(T), int(cfg.short_forward.max_steps))
        samples = bench.draw(oracle, short, algorithm, steps)
        abar_T = float(short.alphas_cumprod[-1])
        key = f"T = {T}"
        second[key] = {
            "abar_T": abar_T,
            **bench.measure(samples, f"exact, {key} (abar_T {abar_T:.3g})"),
        }
        if bench.mixture.dim == 1:
            second[key]["modes_of_q_T"] = blurring.num_modes(bench.mixture, abar_T)
        if int(T) == int(cfg.figure.num_timesteps):
            label = f"exact, {algorithm}, T = {T} ($\\bar\\alpha_T$={abar_T:.2f})"
            panels.append((label, samples, second[key]))
    results["short_forward"] = second

    # The fix of both: enough steps of a schedule that reaches noise.
    fixed_steps = int(cfg.figure.fixed_steps)
    samples = bench.draw(oracle, schedule, "ddim", fixed_steps)
    results["fixed"] = bench.measure(samples, f"exact, ddim, {fixed_steps} steps, full schedule")
    panels.append((f"fixed: exact, ddim, {fixed_steps} steps", samples, results["fixed"]))

    # 3. Learning.
    third = {}
    sampler_cfg = cfg.training.sampler
    for key, spec in cfg.training.runs.items():
        start = time.perf_counter()
        denoiser = train_mlp(
            bench.mixture,
            schedule,
            hidden_dim=int(spec.hidden_dim),
            num_layers=int(spec.num_layers),
            steps=int(spec.steps),
            batch_size=int(cfg.training.batch_size),
            lr=float(cfg.training.lr),
            seed=bench.seed,
        )
        seconds = time.perf_counter() - start
        samples = bench.draw(
            denoiser, schedule, sampler_cfg.algorithm, sampler_cfg.steps, torch.float32
        )
        third[key] = {
            **dict(spec),
            "train_seconds": seconds,
            **bench.measure(samples, f"{spec.label} ({seconds:.0f} s)"),
        }
        panels.append((f"{spec.label}, {sampler_cfg.algorithm}", samples, third[key]))
    results["training"] = third
    return results, panels


def figure_panel(
    mixture: GaussianMixture, title: str, samples: Tensor, report: dict[str, Any]
) -> dict[str, Any]:
    """One panel of mode_collapse.png: the samples against the law."""
    panel: dict[str, Any] = {
        "samples": samples.numpy(),
        "title": f"{title}\n{report['modes_covered']}/{report['num_modes']} modes, "
        f"{100 * report['off_mode']:.0f}% on none, W1 {report['w1']:.2f}",
    }
    if mixture.dim == 1:
        x = blurring.grid_1d(mixture, 1.0, 600, margin=4.0)
        return panel | {"x": x.numpy(), "density": mixture.log_prob(x[:, None]).exp().numpy()}
    bounds = blurring.extent(mixture, 1.0, margin=4.0)
    return panel | {
        "bounds": bounds.tolist(),
        "density": blurring.density_image(mixture, 1.0, bounds, 150).numpy(),
    }


def mass_curves(one_d: dict[str, Any], cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """mode_collapse_mass.png's curves: on-mode mass against the ddim steps (experiment 1) and
    against T (experiment 2), on gmm1d."""
    steps = [int(s) for s in cfg.sampling_steps.steps]
    by_steps = [one_d["sampling_steps"][f"ddim, {s} steps"] for s in steps]
    by_T = list(one_d["short_forward"].values())
    return {
        "gmm1d, exact denoiser: too few sampling steps (ddim)": {
            "x": steps,
            "mass": [r["mass"] for r in by_steps],
            "off_mode": [r["off_mode"] for r in by_steps],
            "xlabel": "sampling steps",
            "log": True,
        },
        f"gmm1d, exact denoiser: forward process of T steps ({cfg.short_forward.algorithm})": {
            "x": [int(T) for T in cfg.short_forward.num_timesteps],
            "mass": [r["mass"] for r in by_T],
            "off_mode": [r["off_mode"] for r in by_T],
            "xlabel": "T (num_timesteps)",
            "log": True,
        },
    }


def markdown(name: str, results: dict[str, Any], truth: Tensor) -> list[str]:
    """The measurements of one data set as a markdown table (mode_collapse.md)."""

    def line(label: str, r: dict[str, Any]) -> str:
        mass = " / ".join(f"{m:.2f}" for m in r["mass"])
        return (
            f"| {label} | {r['modes_covered']}/{r['num_modes']} | {100 * r['off_mode']:.1f}% "
            f"| {mass} | {r['w1']:.3f} |"
        )

    truth_text = " / ".join(f"{m:.2f}" for m in truth.tolist())
    lines = [
        f"## {name}\n",
        f"On-mode mass of exact samples: {truth_text}.\n",
        "| setting | modes covered | on no mode | on-mode mass per mode | W1 |",
        "|---|---:|---:|---|---:|",
    ]
    lines += [line(f"exact, {k}", r) for k, r in results["sampling_steps"].items()]
    lines += [
        line(f"exact, {k} (abar_T {r['abar_T']:.3g})", r)
        for k, r in results["short_forward"].items()
    ]
    lines += [line("exact, ddim, full schedule (fixed)", results["fixed"])]
    lines += [line(r["label"], r) for r in results["training"].values()]
    return [*lines, ""]
