"""Sampler accuracy per NFE on the exact score: difforge's samplers against diffusers' schedulers.

Both sides sample a known Gaussian mixture with its exact denoiser
(``difforge.diffusion.gaussian_mixture.GaussianMixtureOracle``), so the only error left is the
sampler's discretisation (plus the Monte-Carlo error of a finite sample, reported as the
statistical floor). Mixtures: ``gmm1d`` (weights 0.2/0.5/0.3, means -3/0/3, stds 0.5) and
``gmm2d`` (8 equal Gaussians of std 0.3 on a ring of radius 4, as ``configs/data/gmm2d.yaml``).
Schedule: linear betas 1e-4..0.02, T = 1000, for both sides.

difforge: ``Sampler(algorithm, steps)`` with its defaults (ddpm/ddim on the respaced discrete
grid, euler/heun/dpmpp_2m on the Karras grid, sigma_max capped at 80), plus the other grid.

diffusers: DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler and
DPMSolverMultistepScheduler, each in its default configuration and a few others (timestep
spacing, Karras sigmas); "best" is the lowest error over those at the same NFE. Each is fed the
exact noise prediction

    eps(x_vp, sigma) = (x_vp - sqrt(abar) D(x_vp / sqrt(abar), sigma)) / sqrt(1 - abar),
    abar = 1 / (1 + sigma^2),

where ``x_vp`` is the scaled model input and ``sigma`` the noise level the scheduler itself
assigns to the current latent:

- DDPM, DDIM: latents are variance-preserving (``scale_model_input`` is the identity,
  ``init_noise_sigma = 1``); ``abar = scheduler.alphas_cumprod[t]`` at the integer timestep.
- DPMSolverMultistep: VP latents too; ``sigma = scheduler.sigmas[i]`` (its own, possibly Karras,
  sigma for step i; with Karras sigmas the timestep handed to a network is rounded, the oracle
  is given the unrounded sigma, i.e. diffusers' best case).
- Euler, Heun: latents in sigma space (VE, ``init_noise_sigma`` = sigma_max or
  sqrt(sigma_max^2 + 1)); ``scale_model_input`` divides by sqrt(sigma^2 + 1), which is x_vp;
  ``sigma = scheduler.sigmas[step_index]`` (Heun's interleaved table, one entry per call).

``clip_sample`` is turned off for DDPM/DDIM (diffusers' default clips x0 to [-1, 1], meant for
images; the mixtures live in about [-5, 5]).

Metrics: W1 (exact against the mixture's CDF in 1-D; sliced W1 with 256 directions against a
fixed exact reference sample of the same size in 2-D) and the per-mode mass error
``max_k |mass_k - true_mass_k|`` (Bayes-classifier assignment, ``difforge.metrics.mixture``).
Both sides start from the same standard-normal draw (same seed, same shape), so for the
deterministic samplers their difference is systematic, not Monte-Carlo noise.

    python scripts/bench_samplers.py                       # 20k samples, NFE 5 10 20 50 100
    python scripts/bench_samplers.py --quick               # seconds: 2k samples, NFE 5 10
    python scripts/bench_samplers.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difforge.diffusion.gaussian_mixture import GaussianMixture, GaussianMixtureOracle
from difforge.diffusion.samplers import SAMPLERS, CountingDenoiser, Sampler
from difforge.diffusion.schedules import LinearSchedule
from difforge.machine import machine_info
from difforge.metrics.mixture import mode_mass, true_mode_mass, wasserstein1_1d

FAMILIES = ("ddpm", "ddim", "euler", "heun", "dpmpp_2m")
DIFFUSERS_NAMES = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
}
# Configurations tried per diffusers scheduler; the first is the scheduler's default.
DIFFUSERS_CONFIGS: dict[str, list[dict[str, Any]]] = {
    "ddpm": [
        {"timestep_spacing": "leading"},
        {"timestep_spacing": "trailing"},
        {"timestep_spacing": "linspace"},
    ],
    "ddim": [
        {"timestep_spacing": "leading"},
        {"timestep_spacing": "trailing"},
        {"timestep_spacing": "linspace"},
    ],
    "euler": [
        {"timestep_spacing": "linspace"},
        {"timestep_spacing": "trailing"},
        {"timestep_spacing": "leading"},
        {"timestep_spacing": "linspace", "use_karras_sigmas": True},
    ],
    "heun": [
        {"timestep_spacing": "linspace"},
        {"timestep_spacing": "trailing"},
        {"timestep_spacing": "linspace", "use_karras_sigmas": True},
    ],
    "dpmpp_2m": [
        {"timestep_spacing": "linspace"},
        {"timestep_spacing": "trailing"},
        {"timestep_spacing": "leading"},
        {"timestep_spacing": "linspace", "use_karras_sigmas": True},
    ],
}
SLICED_DIRECTIONS = 256
# Heun steps for the "ODE limit" reference (2 * steps - 1 NFE, float64).
ODE_LIMIT_STEPS = 200
# The first is difforge's default. "trailing" is not a difforge option: the schedule's own sigmas
# at the timesteps round(arange(T, 0, -T / steps)) - 1 (diffusers' "trailing" spacing; Lin et al.
# 2024, "Common diffusion noise schedules and sample steps are flawed", table 2), fed to
# difforge's algorithm functions: what difforge would give with that grid.
DIFFORGE_GRIDS = {
    "ddpm": ("linspace", "karras", "trailing"),
    "ddim": ("linspace", "karras", "trailing"),
    "euler": ("karras", "linspace", "trailing"),
    "heun": ("karras", "linspace", "trailing"),
    "dpmpp_2m": ("karras", "linspace", "trailing"),
}


def make_mixtures() -> dict[str, GaussianMixture]:
    angle = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    ring = 4.0 * torch.stack([angle.cos(), angle.sin()], dim=1)  # = data.toys.mixture_layout
    return {
        "gmm1d": GaussianMixture([0.2, 0.5, 0.3], [-3.0, 0.0, 3.0], [0.5, 0.5, 0.5]),
        "gmm2d": GaussianMixture(torch.ones(8), ring, torch.full((8,), 0.3)),
    }


def steps_for(family: str, nfe: int) -> int:
    """Steps giving at most ``nfe`` evaluations (Heun: 2 steps - 1 on both sides)."""
    return max(1, (nfe + 1) // 2) if family == "heun" else nfe


class Metrics:
    """W1 and mode-mass error against one mixture, with its cached reference quantities.

    In 2-D the sliced W1 is ``difforge.metrics.mixture.sliced_wasserstein1(samples, reference,
    256, seed=0)`` (same directions, same formula; tested equal), with the reference's sorted
    projections cached and the projections sorted along contiguous rows (several times faster).
    """

    def __init__(self, mixture: GaussianMixture, n: int, reference_seed: int = 10_000) -> None:
        self.mixture = mixture
        self.true_mass = true_mode_mass(mixture, num_samples=1_000_000, seed=0)
        self.directions = self.reference_sorted = None
        if mixture.dim > 1:
            reference, _ = mixture.sample(n, torch.Generator().manual_seed(reference_seed))
            generator = torch.Generator().manual_seed(0)
            directions = torch.randn(
                mixture.dim, SLICED_DIRECTIONS, generator=generator, dtype=torch.float64
            )
            self.directions = directions / directions.norm(dim=0, keepdim=True)
            self.reference_sorted = self._sorted_projections(reference)

    def _sorted_projections(self, x: torch.Tensor) -> torch.Tensor:
        projections = (x.to(torch.float64) @ self.directions).T.contiguous()
        return torch.from_numpy(np.sort(projections.numpy(), axis=1))  # 2x torch's CPU sort

    def __call__(self, samples: torch.Tensor) -> dict[str, float]:
        samples = samples.reshape(samples.shape[0], -1).to(torch.float64)
        if not torch.isfinite(samples).all():
            return {"w1": math.inf, "mass_err": math.inf}
        if self.reference_sorted is None:
            w1 = wasserstein1_1d(samples, self.mixture)
        else:
            w1 = float((self._sorted_projections(samples) - self.reference_sorted).abs().mean())
        mass_err = float((mode_mass(samples, self.mixture) - self.true_mass).abs().max())
        return {"w1": w1, "mass_err": mass_err}


def statistical_floor(metrics: Metrics, n: int, seeds: int) -> dict[str, float]:
    """Metrics of exact samples of the same size: the best any sampler can show."""
    w1s, masses = [], []
    for s in range(seeds):
        x, _ = metrics.mixture.sample(n, torch.Generator().manual_seed(1000 + s))
        m = metrics(x)
        w1s.append(m["w1"])
        masses.append(m["mass_err"])
    return {
        "w1_mean": statistics.fmean(w1s),
        "w1_std": statistics.stdev(w1s) if len(w1s) > 1 else 0.0,
        "mass_err_mean": statistics.fmean(masses),
        "mass_err_std": statistics.stdev(masses) if len(masses) > 1 else 0.0,
    }


def run_difforge(
    family: str,
    grid: str,
    nfe: int,
    oracle: GaussianMixtureOracle,
    schedule: LinearSchedule,
    n: int,
    seed: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, int]:
    if grid == "trailing":
        return run_difforge_trailing(family, nfe, oracle, schedule, n, seed, dtype)
    sigma_min = None
    if grid.startswith("karras@"):  # --karras-sigma-min: the Karras grid ending higher
        grid, sigma_min = "karras", float(grid.split("@", 1)[1])
    sampler = Sampler(family, steps_for(family, nfe), grid=grid, sigma_min=sigma_min)
    result = sampler(
        oracle,
        schedule,
        (n, oracle.mixture.dim),
        dtype=dtype,
        generator=torch.Generator().manual_seed(seed),
    )
    return result.samples, result.nfe


def trailing_sigmas(schedule: LinearSchedule, steps: int) -> torch.Tensor:
    """The schedule's sigmas at diffusers' "trailing" timesteps, then 0 (float64)."""
    t = schedule.num_timesteps
    indices = torch.from_numpy(np.arange(t, 0, -t / steps).round().astype(np.int64) - 1)
    return torch.cat([schedule.sigmas[indices], torch.zeros(1, dtype=torch.float64)])


def run_difforge_trailing(
    family: str,
    nfe: int,
    oracle: GaussianMixtureOracle,
    schedule: LinearSchedule,
    n: int,
    seed: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, int]:
    """``Sampler.__call__`` with the trailing grid in place of the configured one."""
    sigmas = trailing_sigmas(schedule, steps_for(family, nfe))
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, oracle.mixture.dim), generator=generator, dtype=dtype)
    counter = CountingDenoiser(oracle)
    samples = SAMPLERS[family].fn(counter, noise * sigmas[0].item(), sigmas, generator=generator)
    return samples, counter.nfe


def exact_eps(oracle: GaussianMixtureOracle, x_vp: torch.Tensor, sigma: float) -> torch.Tensor:
    """The exact noise prediction at the VP latent ``x_vp`` of noise level ``sigma`` (VE)."""
    abar = 1.0 / (1.0 + sigma**2)
    x64 = x_vp.to(torch.float64)
    x_ve = x64 / math.sqrt(abar)
    d = oracle(x_ve, torch.full((x_vp.shape[0],), sigma, dtype=torch.float64))
    return ((x64 - math.sqrt(abar) * d) / math.sqrt(1 - abar)).to(x_vp.dtype)


def run_diffusers(
    family: str,
    config: dict[str, Any],
    nfe: int,
    oracle: GaussianMixtureOracle,
    n: int,
    seed: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, int]:
    import diffusers

    cls = getattr(diffusers, DIFFUSERS_NAMES[family])
    kwargs: dict[str, Any] = {
        "num_train_timesteps": 1000,
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "prediction_type": "epsilon",
        **config,
    }
    if family in ("ddpm", "ddim"):
        kwargs["clip_sample"] = False
    scheduler = cls(**kwargs)
    scheduler.set_timesteps(steps_for(family, nfe))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((n, oracle.mixture.dim), generator=generator, dtype=dtype)
    x = x * float(scheduler.init_noise_sigma)
    calls = 0
    for i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(x, t)
        if family in ("ddpm", "ddim"):
            abar = float(scheduler.alphas_cumprod[int(t)])
            sigma = math.sqrt((1 - abar) / abar)
        else:
            # The sigma the scheduler pairs with this call (Heun: its interleaved table).
            step_index = getattr(scheduler, "step_index", None)
            assert step_index is None or step_index == i, (step_index, i)
            sigma = float(scheduler.sigmas[i])
        eps = exact_eps(oracle, model_input, sigma)
        calls += 1
        extra = {"generator": generator} if family == "ddpm" else {}
        x = scheduler.step(eps, t, x, **extra).prev_sample
    return x, calls


def evaluate_mixture(
    mixture: GaussianMixture,
    schedule: LinearSchedule,
    args: argparse.Namespace,
    dtype: torch.dtype,
    use_diffusers: bool,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Every sampler and configuration at every NFE on one mixture, metrics averaged over seeds."""
    oracle = GaussianMixtureOracle(mixture)
    metrics = Metrics(mixture, args.samples)
    floor = statistical_floor(metrics, args.samples, args.floor_seeds)
    rows: list[dict[str, Any]] = []

    def averaged(run: Any) -> dict[str, Any]:
        per_seed = [run(seed) for seed in args.seeds]
        out = {key: statistics.fmean(m[key] for _, m in per_seed) for key in ("w1", "mass_err")}
        out["nfe"] = per_seed[0][0]
        out["per_seed_w1"] = [m["w1"] for _, m in per_seed]
        return out

    def difforge_run(family: str, grid: str, nfe: int, run_dtype: torch.dtype = dtype) -> Any:
        def run(seed: int) -> Any:
            x, used = run_difforge(
                family, grid, nfe, oracle, schedule, args.samples, seed, run_dtype
            )
            return used, metrics(x)

        return averaged(run)

    def diffusers_run(family: str, config: dict[str, Any], nfe: int) -> Any:
        def run(seed: int) -> Any:
            x, used = run_diffusers(family, config, nfe, oracle, args.samples, seed, dtype)
            return used, metrics(x)

        return averaged(run)

    # The deterministic samplers' limit for these noise draws: the ODE solved finely.
    limit = difforge_run("heun", "karras", 2 * ODE_LIMIT_STEPS - 1, torch.float64)
    for family in args.families:
        for nfe in args.nfe:
            grids = list(DIFFORGE_GRIDS[family])
            grids += [f"karras@{value:g}" for value in args.karras_sigma_min]
            for k, grid in enumerate(grids):
                rows.append(
                    {
                        "side": "difforge",
                        "family": family,
                        "config": grid,
                        "default": k == 0,
                        "nfe_target": nfe,
                        **difforge_run(family, grid, nfe),
                    }
                )
            if not use_diffusers:
                continue
            for k, config in enumerate(DIFFUSERS_CONFIGS[family]):
                rows.append(
                    {
                        "side": "diffusers",
                        "family": family,
                        "config": config_label(config),
                        "default": k == 0,
                        "nfe_target": nfe,
                        **diffusers_run(family, config, nfe),
                    }
                )
    floor["ode_limit_w1"] = limit["w1"]
    floor["ode_limit_mass_err"] = limit["mass_err"]
    return floor, rows


def config_label(config: dict[str, Any]) -> str:
    label = config.get("timestep_spacing", "")
    if config.get("use_karras_sigmas"):
        label += "+karras"
    return label


def fmt(value: float) -> str:
    if math.isinf(value) or math.isnan(value):
        return "nan"
    return f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    parser.add_argument("--mixtures", nargs="+", default=["gmm1d", "gmm2d"])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="metrics are means over these"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: stable when shared)"
    )
    parser.add_argument("--floor-seeds", type=int, default=5)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--no-diffusers", action="store_true", help="difforge only")
    parser.add_argument(
        "--karras-sigma-min",
        type=float,
        nargs="*",
        default=[],
        help="also run difforge's Karras grid with these sigma_min (default: the schedule's)",
    )
    parser.add_argument("--quick", action="store_true", help="2k samples, NFE 5 10: seconds")
    parser.add_argument("--json", type=Path, default=None, help="write all results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.nfe, args.floor_seeds, args.seeds = 2000, [5, 10], 2, [0]
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    use_diffusers = not args.no_diffusers
    if use_diffusers:
        try:
            import diffusers
        except ImportError:
            print("diffusers is not installed (see requirements.txt): difforge only")
            use_diffusers = False
        else:
            diffusers.utils.logging.set_verbosity_error()

    info = machine_info()
    info["diffusers"] = diffusers.__version__ if use_diffusers else None
    print(
        f"machine: {info['nproc']} cores, {info['cpu']}, torch {info['torch']} "
        f"({info['threads']} threads), diffusers {info['diffusers']}"
    )
    print(
        f"command: python scripts/bench_samplers.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    )
    print(
        f"samples {args.samples} per seed, seeds {args.seeds} (metrics are means over seeds), "
        f"dtype {args.dtype}, NFE {args.nfe}\n"
    )
    schedule = LinearSchedule(1000, 1e-4, 0.02)
    mixtures = make_mixtures()
    results: dict[str, Any] = {"machine": info, "args": vars(args) | {"json": str(args.json)}}
    started = time.perf_counter()
    for name in args.mixtures:
        mixture = mixtures[name]
        floor, rows = evaluate_mixture(mixture, schedule, args, dtype, use_diffusers)
        results[name] = {"floor": floor, "rows": rows}
        print_tables(name, mixture, floor, rows, args.nfe, args.families, use_diffusers)
    results["seconds"] = time.perf_counter() - started
    print(f"total {results['seconds']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


def pick(rows: list[dict[str, Any]], side: str, family: str, nfe: int, default: bool | None):
    chosen = [
        r
        for r in rows
        if r["side"] == side
        and r["family"] == family
        and r["nfe_target"] == nfe
        and (default is None or r["default"] == default)
    ]
    return chosen


def print_tables(
    name: str,
    mixture: GaussianMixture,
    floor: dict[str, float],
    rows: list[dict[str, Any]],
    nfes: list[int],
    families: list[str],
    use_diffusers: bool,
) -> None:
    w1_kind = "W1 (exact CDF)" if mixture.dim == 1 else "sliced W1 (256 directions)"
    print(f"## {name}: {w1_kind} and per-mode mass error")
    print(
        f"statistical floor (exact samples of the same size, mean +- std over seeds): "
        f"W1 {floor['w1_mean']:.4f} +- {floor['w1_std']:.4f}, "
        f"mass error {floor['mass_err_mean']:.4f} +- {floor['mass_err_std']:.4f}"
    )
    print(
        f"ODE limit for the same noise draws (difforge heun, {2 * ODE_LIMIT_STEPS - 1} NFE, "
        f"float64; the floor of the deterministic samplers here): W1 {floor['ode_limit_w1']:.4f}, "
        f"mass error {floor['ode_limit_mass_err']:.4f}\n"
    )
    for metric, label in (("w1", "W1"), ("mass_err", "mode-mass error")):
        header = "| sampler | side (config) | " + " | ".join(f"NFE {n}" for n in nfes) + " |"
        print(f"### {name} {label}\n")
        print(header)
        print("|" + " --- |" * (len(nfes) + 2))
        for family in families:
            line_d = [f"| {family} | difforge default |"]
            line_dt = [f"| {family} | difforge on the trailing grid (not an option yet) |"]
            line_db = [f"| {family} | difforge best grid |"]
            line_p = [f"| {family} | diffusers default |"]
            line_pb = [f"| {family} | diffusers best |"]
            line_r = [f"| {family} | ratio difforge default / diffusers best |"]
            for nfe in nfes:
                dd = pick(rows, "difforge", family, nfe, True)[0]
                dt = [
                    r
                    for r in pick(rows, "difforge", family, nfe, False)
                    if r["config"] == "trailing"
                ]
                db = min(pick(rows, "difforge", family, nfe, None), key=lambda r: r[metric])
                line_d.append(f" {fmt(dd[metric])} ({dd['nfe']}) |")
                line_dt.append(f" {fmt(dt[0][metric])} |" if dt else " - |")
                line_db.append(f" {fmt(db[metric])} ({db['config']}) |")
                if use_diffusers:
                    pd = pick(rows, "diffusers", family, nfe, True)[0]
                    pb = min(pick(rows, "diffusers", family, nfe, None), key=lambda r: r[metric])
                    line_p.append(f" {fmt(pd[metric])} ({pd['nfe']}) |")
                    line_pb.append(f" {fmt(pb[metric])} ({pb['config']}) |")
                    ratio = dd[metric] / pb[metric] if pb[metric] > 0 else math.inf
                    line_r.append(f" {ratio:.2f} |")
            print("".join(line_d))
            print("".join(line_dt))
            print("".join(line_db))
            if use_diffusers:
                print("".join(line_p))
                print("".join(line_pb))
                print("".join(line_r))
        print()
    if not use_diffusers:
        return
    # difforge default against the best diffusers configuration of the same scheduler, and
    # against the best diffusers scheduler of all at that NFE.
    tolerance = floor["w1_std"]
    worse = []
    for nfe in nfes:
        peers = [r for r in rows if r["side"] == "diffusers" and r["nfe_target"] == nfe]
        best_any = min(peers, key=lambda r: r["w1"]) if peers else None
        for family in families:
            dd = pick(rows, "difforge", family, nfe, True)[0]
            pb = min(pick(rows, "diffusers", family, nfe, None), key=lambda r: r["w1"])
            if dd["w1"] > pb["w1"] + tolerance:
                worse.append(
                    f"- NFE {nfe} {family}: difforge {dd['w1']:.4f} ({dd['config']}) > diffusers "
                    f"{pb['w1']:.4f} ({pb['config']}) by {dd['w1'] - pb['w1']:.4f}"
                )
        if best_any is not None:
            best_ours = min(
                (
                    r
                    for r in rows
                    if r["side"] == "difforge" and r["nfe_target"] == nfe and r["default"]
                ),
                key=lambda r: r["w1"],
            )
            print(
                f"NFE {nfe}: best difforge default {best_ours['family']} W1 {best_ours['w1']:.4f}; "
                f"best diffusers {best_any['family']} ({best_any['config']}) W1 {best_any['w1']:.4f}"
            )
    print(
        f"\n{name}: difforge default worse than the same scheduler's best diffusers configuration "
        f"by more than the floor's std ({tolerance:.4f}) in W1:"
    )
    print("\n".join(worse) if worse else "- none")
    print()


if __name__ == "__main__":
    sys.exit(main())
