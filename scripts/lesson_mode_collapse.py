"""Lesson 3, mode collapse: make it happen, measure it, fix it (docs/guide.md, section 3).

    python scripts/lesson_mode_collapse.py                       # ~1-2 min on a CPU
    python scripts/lesson_mode_collapse.py out_dir=docs/figures  # regenerate the guide's figures
    python scripts/lesson_mode_collapse.py schedule=cosine       # short cosine chains are fine

On gmm1d (``data``) and gmm2d (``data2d``), three experiments, each measured by the on-mode
mass of every mode against an exact sampler's, the modes covered and the share of samples on no
mode (``difforge.lessons.collapse.mode_report``), plus W1 (sliced in 2-D):

1. too few sampling steps with the exact denoiser (``sampling_steps``);
2. a forward process that stops before q(x_T) is N(0, I) (``short_forward``: the schedule with
   fewer timesteps, same betas), sampled from N(0, I) anyway;
3. learning: a tiny MLP, an undertrained one, and one trained enough (``training.runs``),
   trained in-process with ``difforge.lessons.collapse.train_mlp``.

Writes mode_collapse.png, mode_collapse_mass.png, mode_collapse.md and mode_collapse.json to
``out_dir``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))
log = logging.getLogger("difforge")


def collapse(cfg: DictConfig) -> dict:
    import torch
    from hydra.utils import instantiate

    from difforge.diffusion.gaussian_mixture import GaussianMixtureOracle
    from difforge.diffusion.samplers import Sampler
    from difforge.diffusion.schedules import require_discrete
    from difforge.lessons import blurring, efficiency, plots
    from difforge.lessons.collapse import mode_report, train_mlp
    from difforge.lessons.script import config_mixture
    from difforge.metrics.mixture import true_mode_mass

    out = Path(cfg.out_dir)
    n, seed, radius = int(cfg.num_samples), int(cfg.seed), float(cfg.radius)
    schedule = instantiate(cfg.schedule)
    datasets = {"gmm1d": config_mixture(cfg, "data"), "gmm2d": config_mixture(cfg, "data2d")}
    results: dict = {name: {} for name in datasets}
    rows: dict = {}
    table = ["# Mode collapse: measurements\n"]

    for name, mixture in datasets.items():
        truth = true_mode_mass(mixture, radius, num_samples=200_000)
        reference = efficiency.reference_sample(mixture, n) if mixture.dim > 1 else None
        oracle = GaussianMixtureOracle(mixture)

        def measure(samples, label, mixture=mixture, truth=truth, reference=reference, name=name):
            report = mode_report(samples, mixture, truth, radius)
            report["w1"] = efficiency.distance(samples, mixture, reference)
            log.info(
                "%s %-34s covered %d/%d  on no mode %5.1f%%  W1 %.3f  mass %s",
                name,
                label,
                report["modes_covered"],
                report["num_modes"],
                100 * report["off_mode"],
                report["w1"],
                " ".join(f"{m:.2f}" for m in report["mass"]),
            )
            return report

        def draw(denoiser, sched, algorithm, steps, dtype=torch.float64, mixture=mixture):
            sampler = Sampler(algorithm, int(steps))
            with torch.no_grad():
                result = sampler(
                    denoiser,
                    sched,
                    (n, mixture.dim),
                    dtype=dtype,
                    generator=torch.Generator().manual_seed(seed),
                )
            return result.samples.to(torch.float64)

        panels = []
        # 1. Too few sampling steps.
        first = {}
        for algorithm in cfg.sampling_steps.algorithms:
            for steps in cfg.sampling_steps.steps:
                samples = draw(oracle, schedule, algorithm, steps)
                key = f"{algorithm}, {steps} steps"
                first[key] = measure(samples, f"exact, {key}")
                if algorithm == "ddim" and int(steps) == int(cfg.figure.steps):
                    panels.append((f"exact denoiser, {key}", samples, first[key]))
        results[name]["sampling_steps"] = first

        # 2. A forward process that stops short of noise.
        second = {}
        for T in cfg.short_forward.num_timesteps:
            # The same betas over fewer steps: a linear schedule must not rescale them here.
            same_betas = (
                {"scale_to_num_timesteps": False}
                if "scale_to_num_timesteps" in cfg.schedule
                else {}
            )
            short = require_discrete(
                instantiate(cfg.schedule, num_timesteps=int(T), **same_betas), "this lesson"
            )
            steps = min(int(T), int(cfg.short_forward.max_steps))
            samples = draw(oracle, short, cfg.short_forward.algorithm, steps)
            abar_T = float(short.alphas_cumprod[-1])
            key = f"T = {T}"
            second[key] = {
                "abar_T": abar_T,
                **measure(samples, f"exact, {key} (abar_T {abar_T:.3g})"),
            }
            if mixture.dim == 1:
                second[key]["modes_of_q_T"] = blurring.num_modes(mixture, abar_T)
            if int(T) == int(cfg.figure.num_timesteps):
                label = (
                    f"exact, {cfg.short_forward.algorithm}, T = {T} ($\\bar\\alpha_T$={abar_T:.2f})"
                )
                panels.append((label, samples, second[key]))
        results[name]["short_forward"] = second
        fixed_steps = int(cfg.figure.fixed_steps)
        samples = draw(oracle, schedule, "ddim", fixed_steps)
        fixed = measure(samples, f"exact, ddim, {fixed_steps} steps, full schedule")
        panels.append((f"fixed: exact, ddim, {fixed_steps} steps", samples, fixed))
        results[name]["fixed"] = fixed

        # 3. Learning.
        third = {}
        for key, run in cfg.training.runs.items():
            start = time.perf_counter()
            denoiser = train_mlp(
                mixture,
                schedule,
                hidden_dim=int(run.hidden_dim),
                num_layers=int(run.num_layers),
                steps=int(run.steps),
                batch_size=int(cfg.training.batch_size),
                lr=float(cfg.training.lr),
                seed=seed,
            )
            seconds = time.perf_counter() - start
            sampler_cfg = cfg.training.sampler
            samples = draw(
                denoiser, schedule, sampler_cfg.algorithm, sampler_cfg.steps, torch.float32
            )
            third[key] = {
                **dict(run),
                "train_seconds": seconds,
                **measure(samples, f"{run.label} ({seconds:.0f} s)"),
            }
            panels.append((f"{run.label}, {sampler_cfg.algorithm}", samples, third[key]))
        results[name]["training"] = third

        # The figure's row: samples against the law.
        bounds = blurring.extent(mixture, 1.0, margin=4.0)
        row = []
        for title, samples, report in panels:
            panel = {
                "samples": samples.numpy(),
                "title": f"{title}\n{report['modes_covered']}/{report['num_modes']} modes, "
                f"{100 * report['off_mode']:.0f}% on none, W1 {report['w1']:.2f}",
            }
            if mixture.dim == 1:
                x = blurring.grid_1d(mixture, 1.0, 600, margin=4.0)
                panel |= {"x": x.numpy(), "density": mixture.log_prob(x[:, None]).exp().numpy()}
            else:
                panel |= {
                    "bounds": bounds.tolist(),
                    "density": blurring.density_image(mixture, 1.0, bounds, 150).numpy(),
                }
            row.append(panel)
        rows[name] = row
        table += markdown(name, results[name], truth)

    plots.plot_collapse_panels(rows, out / "mode_collapse.png", title="losing modes, and not")
    one_d, ddim = results["gmm1d"], "ddim"
    steps = [int(s) for s in cfg.sampling_steps.steps]
    plots.plot_collapse_mass(
        {
            "gmm1d, exact denoiser: too few sampling steps (ddim)": {
                "x": steps,
                "mass": [one_d["sampling_steps"][f"{ddim}, {s} steps"]["mass"] for s in steps],
                "off_mode": [
                    one_d["sampling_steps"][f"{ddim}, {s} steps"]["off_mode"] for s in steps
                ],
                "xlabel": "sampling steps",
                "log": True,
            },
            f"gmm1d, exact denoiser: forward process of T steps ({cfg.short_forward.algorithm})": {
                "x": [int(T) for T in cfg.short_forward.num_timesteps],
                "mass": [r["mass"] for r in one_d["short_forward"].values()],
                "off_mode": [r["off_mode"] for r in one_d["short_forward"].values()],
                "xlabel": "T (num_timesteps)",
                "log": True,
            },
        },
        next(iter(one_d["sampling_steps"].values()))["true_mass"],
        out / "mode_collapse_mass.png",
    )
    (out / "mode_collapse.md").write_text("\n".join(table))
    (out / "mode_collapse.json").write_text(json.dumps(results, indent=2))
    log.info("wrote %s", out / "mode_collapse.md")
    return results


def markdown(name: str, results: dict, truth) -> list[str]:
    def line(label: str, r: dict) -> str:
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


@hydra.main(version_base="1.3", config_path="../configs/lessons", config_name="mode_collapse")
def main(cfg: DictConfig) -> None:
    from difforge.lessons.script import run_lesson

    run_lesson(collapse, cfg)


if __name__ == "__main__":
    main()
