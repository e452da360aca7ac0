"""Sampler accuracy per NFE on the exact score: difforge's samplers against diffusers' schedulers.

Both sides sample a known Gaussian mixture (gmm1d, gmm2d: ``difforge.benchmarks.oracle_metrics``)
with its exact denoiser, on difforge's linear and cosine schedules (diffusers: ``linear`` and
``squaredcos_cap_v2`` betas, alphas_cumprod checked equal), from the same standard-normal
draws, so what is left is each sampler's discretisation error plus the Monte-Carlo error of a
finite sample (the statistical floor, reported). In 1-D the draws are the normal's
mid-quantiles (``MixtureScore.draws``), which removes that floor for deterministic samplers.

1. Search (``--search-samples`` per run): every difforge sampler of the registry on every grid
   (``difforge.benchmarks.difforge_configs``), and every diffusers configuration that fits
   (``difforge.benchmarks.diffusers_peer``), at every NFE; difforge also on the continuous
   ``edm`` schedule (no diffusers peer) to choose its defaults there.
2. Headline (``--samples`` per run): each difforge sampler at its default settings, and the
   ``--top`` best configurations of every diffusers family in the search, run again.

Tables (markdown, on stdout): the headline (difforge's best default sampler vs diffusers' best
configuration of all, per law x schedule x NFE), each difforge default vs its diffusers
counterpart's best, and the grid choice (each sampler's configurations ranked per schedule kind).

    python scripts/bench_samplers.py --json samplers.json          # the full benchmark
    python scripts/bench_samplers.py --quick                       # seconds: a smoke test

The full benchmark takes hours on two shared cores; docs/benchmarks.md (section 3) splits it
into runs per side and per law (``--no-difforge`` / ``--no-diffusers``, ``--laws``), reruns the
defaults after a registry change (``--headline-only``) and joins them (``--reuse``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from difforge.benchmarks import difforge_configs as ours
from difforge.benchmarks import sampler_tables as tables
from difforge.benchmarks.oracle_metrics import (
    MIXTURES,
    BatchSigmaOracle,
    MixtureScore,
    make_mixture,
)
from difforge.diffusion.gaussian_mixture import GaussianMixtureOracle
from difforge.diffusion.samplers import SAMPLERS
from difforge.diffusion.schedules import CosineSchedule, EDMSchedule, LinearSchedule, NoiseSchedule
from difforge.machine import machine_info

SCHEDULES: dict[str, Callable[[], NoiseSchedule]] = {
    "linear": lambda: LinearSchedule(1000, 1e-4, 0.02),
    "cosine": lambda: CosineSchedule(1000),
    "edm": lambda: EDMSchedule(),
}
# Schedule kinds whose defaults the grid search chooses: discrete VP tables and continuous EDM.
KINDS = {"discrete (linear, cosine)": ("linear", "cosine"), "edm": ("edm",)}
ODE_LIMIT_STEPS = 250  # Heun on the trailing grid, 499 NFE: the probability-flow ODE's limit


def measure(
    run: Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, int]],
    score: MixtureScore,
    seed: int,
    **fields: Any,
) -> dict[str, Any]:
    """One run from the starting draws of ``seed`` (``MixtureScore.draws``: stratified in 1-D;
    stochastic samplers' noise from ``seed + 1``), scored; a run that raises scores inf and
    keeps its error message."""
    noise = score.draws(seed)
    start = time.perf_counter()
    try:
        samples, nfe = run(noise, torch.Generator().manual_seed(seed + 1))
        metrics, error = score(samples), None
    except (ValueError, RuntimeError, IndexError) as exc:  # diffusers' failures on odd configs
        nfe, metrics, error = 0, {"w1": math.inf, "mass_err": math.inf}, str(exc)[:200]
    row = {**fields, "nfe": nfe, **metrics, "seconds": time.perf_counter() - start}
    if error is not None:
        row["error"] = error
    return row


def measure_seeds(
    run: Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, int]],
    score: MixtureScore,
    args: argparse.Namespace,
    **fields: Any,
) -> dict[str, Any]:
    """``measure`` from the draws of ``--headline-seeds`` seeds (``seed``, ``seed + 10``, ...):
    the metrics' means, with each seed's W1 and their standard deviation."""
    seeds = [args.seed + 10 * k for k in range(args.headline_seeds)]
    rows = [measure(run, score, seed, **fields) for seed in seeds]
    merged = dict(rows[0])
    for key in ("w1", "mass_err", "seconds"):
        merged[key] = statistics.fmean(r[key] for r in rows)
    merged["w1_seeds"] = [r["w1"] for r in rows]
    merged["w1_std"] = statistics.stdev(merged["w1_seeds"]) if len(rows) > 1 else 0.0
    return merged


def search_cell(
    law: str,
    schedule_name: str,
    nfe: int,
    oracle: GaussianMixtureOracle,
    score: MixtureScore,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Every difforge configuration and (discrete schedules) every diffusers one in one cell."""
    schedule = SCHEDULES[schedule_name]()
    cell = {"law": law, "schedule": schedule_name, "nfe_target": nfe}
    rows = []
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for config in ours.grid_configs(schedule, () if args.headline_only else tuple(args.samplers)):
        # Configurations that walk the same grid (e.g. log_snr and exponential) run once.
        key = (config.sampler, config.options, tuple(ours.grid_of(config, schedule, nfe).tolist()))
        fields = {
            **cell,
            "side": "difforge",
            "family": config.sampler,
            "config": config.label,
            "default": False,
            "stochastic": SAMPLERS[config.sampler].is_stochastic(dict(config.options)),
        }
        if key in seen:
            rows.append({**seen[key], **fields, "same_as": seen[key]["config"]})
            continue
        seen[key] = measure(
            lambda noise, gen, config=config: ours.run_difforge(
                config, schedule, oracle, nfe, noise, gen
            ),
            score,
            args.seed,
            **fields,
        )
        rows.append(seen[key])
    if args.headline_only:
        return tables.select(args.reused["search"], **cell)
    rows += reused_rows(args, "search", cell)
    if args.diffusers and schedule.is_discrete:
        from difforge.benchmarks import diffusers_peer as peer

        for pc in peer.peer_configs():
            if args.families and pc.family not in args.families:
                continue
            rows.append(
                measure(
                    lambda noise, gen, pc=pc: peer.run_peer(pc, schedule, oracle, nfe, noise, gen),
                    score,
                    args.seed,
                    **cell,
                    side="diffusers",
                    family=pc.family,
                    config=pc.label,
                    default=False,
                    stochastic=pc.stochastic,
                )
            )
    return rows


def headline_cell(
    law: str,
    schedule_name: str,
    nfe: int,
    oracle: GaussianMixtureOracle,
    score: MixtureScore,
    search: list[dict[str, Any]],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Each difforge sampler at its defaults, and the ``--top`` best configurations of each
    diffusers family in the search, at ``--samples``."""
    schedule = SCHEDULES[schedule_name]()
    cell = {"law": law, "schedule": schedule_name, "nfe_target": nfe}
    rows = reused_rows(args, "headline", cell)
    for sampler in args.samplers:
        config = ours.default_config(sampler)
        rows.append(
            measure_seeds(
                lambda noise, gen, config=config: ours.run_difforge(
                    config, schedule, oracle, nfe, noise, gen
                ),
                score,
                args,
                **cell,
                side="difforge",
                family=sampler,
                config=f"default ({ours.grid_label(config, schedule)})",
                default=True,
                stochastic=SAMPLERS[sampler].is_stochastic({}),
            )
        )
    if not (args.diffusers and schedule.is_discrete):
        return rows
    from difforge.benchmarks import diffusers_peer as peer

    by_label = {pc.label: pc for pc in peer.peer_configs()}
    searched = tables.select(search, side="diffusers", **cell)
    for family in dict.fromkeys(r["family"] for r in searched):
        ranked = sorted(tables.select(searched, family=family), key=lambda r: r["w1"])
        for row in ranked[: args.top]:
            if args.samples == args.search_samples:
                rows.append(row)
                continue
            pc = by_label[row["config"]]
            rows.append(
                measure_seeds(
                    lambda noise, gen, pc=pc: peer.run_peer(pc, schedule, oracle, nfe, noise, gen),
                    score,
                    args,
                    **{k: row[k] for k in ("law", "schedule", "nfe_target", "side", "family")},
                    config=row["config"],
                    default=False,
                    stochastic=row["stochastic"],
                )
            )
    return rows


def reused_rows(args: argparse.Namespace, part: str, cell: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of ``--reuse`` files in this cell that this run does not compute itself."""
    return [
        r
        for r in tables.select(args.reused[part], **cell)
        if (r["side"] == "diffusers" and not args.diffusers)
        or (r["side"] == "difforge" and r["family"] not in args.samplers)
    ]


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """Who made a row, and in which cell."""
    return tuple(row[k] for k in ("side", "family", "law", "schedule", "nfe_target"))


def ode_limit(
    schedule_name: str, oracle: GaussianMixtureOracle, score: MixtureScore, seed: int
) -> dict[str, Any]:
    """Heun with ``ODE_LIMIT_STEPS`` on the trailing grid: the deterministic samplers' limit
    for these noise draws (a sampler can sit slightly below it by chance)."""
    schedule = SCHEDULES[schedule_name]()
    config = ours.DifforgeConfig("heun", "trailing")
    nfe = SAMPLERS["heun"].nfe(ODE_LIMIT_STEPS)
    return measure(
        lambda noise, gen: ours.run_difforge(config, schedule, oracle, nfe, noise, gen),
        score,
        seed,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=50_000, help="per headline run")
    parser.add_argument("--search-samples", type=int, default=10_000, help="per search run")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--laws", nargs="+", choices=MIXTURES, default=list(MIXTURES))
    parser.add_argument(
        "--schedules", nargs="+", choices=("linear", "cosine"), default=["linear", "cosine"]
    )
    parser.add_argument(
        "--no-edm-search", action="store_true", help="skip difforge's grid search on edm"
    )
    parser.add_argument("--samplers", nargs="+", choices=tuple(SAMPLERS), default=list(SAMPLERS))
    parser.add_argument(
        "--families", nargs="+", default=None, help="diffusers families (default: all)"
    )
    parser.add_argument("--top", type=int, default=3, help="diffusers configs per family rerun")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--headline-seeds", type=int, default=1, help="headline runs averaged over this many draws"
    )
    parser.add_argument("--floor-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-diffusers", action="store_true", help="difforge only")
    parser.add_argument(
        "--no-difforge", action="store_true", help="diffusers only (no difforge sampler)"
    )
    parser.add_argument(
        "--headline-only",
        action="store_true",
        help="run only difforge's defaults; every other row (the search) comes from --reuse",
    )
    parser.add_argument(
        "--quick", action="store_true", help="seconds: 2k samples, NFE 5 10, gmm1d, linear"
    )
    parser.add_argument("--json", type=Path, default=None, help="write every row here")
    parser.add_argument(
        "--reuse",
        type=Path,
        nargs="+",
        default=[],
        help="add the rows of these earlier --json runs (same samples and seed) that this run "
        "does not compute (diffusers' with --no-diffusers, samplers not in --samplers); a later "
        "file's rows of a sampler in a cell replace an earlier file's",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.samples = args.search_samples = 2000
        args.nfe, args.laws, args.schedules, args.floor_repeats = [5, 10], ["gmm1d"], ["linear"], 2
        args.no_edm_search = True
    if min(args.samples, args.search_samples, args.top, args.floor_repeats) < 1:
        parser.error("--samples, --search-samples, --top and --floor-repeats must be >= 1")
    if args.headline_only and not args.reuse:
        parser.error("--headline-only needs --reuse (the search to take the other rows from)")
    args.diffusers = not (args.no_diffusers or args.headline_only)
    if args.no_difforge:
        args.samplers = []
    args.reused = {"search": [], "headline": []}
    for path in args.reuse:
        earlier = json.loads(path.read_text())
        for key in ("search_samples", "seed"):
            if earlier["args"][key] != getattr(args, key):
                parser.error(
                    f"--reuse {path}: {key} was {earlier['args'][key]!r} there, "
                    f"{getattr(args, key)!r} here"
                )
        # Headline rows of another size or number of draws are left out; the search is kept.
        same_headline = all(
            earlier["args"].get(key, 1) == getattr(args, key)
            for key in ("samples", "headline_seeds")
        )
        for part in ("search", "headline") if same_headline else ("search",):
            # A later file's rows of a sampler (or diffusers family) in a cell replace earlier ones.
            redone = {row_key(r) for r in earlier[part]}
            args.reused[part] = [
                r for r in args.reused[part] if row_key(r) not in redone
            ] + earlier[part]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info()
    if args.diffusers:
        import diffusers

        info["diffusers"] = diffusers.__version__
    print(
        f"machine: {info['nproc']} cores, {info['cpu']}, torch {info['torch']} "
        f"({info['threads']} threads), diffusers {info.get('diffusers')}"
    )
    print(
        f"command: python scripts/bench_samplers.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    )
    print(
        f"headline {args.samples} samples, search {args.search_samples} samples, seed "
        f"{args.seed}, float64, NFE {args.nfe}, samplers {', '.join(args.samplers)}\n"
    )
    search_schedules = list(args.schedules) + ([] if args.no_edm_search else ["edm"])
    results: dict[str, Any] = {
        "machine": info,
        "args": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "reused"
        },
        "floors": {},
        "ode_limit": {},
        "search": [],
        "headline": [],
    }
    started = time.perf_counter()
    for law in args.laws:
        mixture = make_mixture(law)
        oracle = BatchSigmaOracle(mixture)
        search_score = MixtureScore(mixture, args.search_samples)
        score = (
            search_score
            if args.samples == args.search_samples
            else MixtureScore(mixture, args.samples)
        )
        results["floors"][law] = score.floor(args.floor_repeats)
        for schedule_name in search_schedules:
            for nfe in args.nfe:
                tick = time.perf_counter()
                search = search_cell(law, schedule_name, nfe, oracle, search_score, args)
                results["search"] += search
                if schedule_name in args.schedules:
                    results["headline"] += headline_cell(
                        law, schedule_name, nfe, oracle, score, search, args
                    )
                print(
                    f"{law} {schedule_name} NFE {nfe}: {len(search)} search runs, "
                    f"{time.perf_counter() - tick:.0f} s",
                    flush=True,
                )
                if args.json:  # a checkpoint: a long run that is stopped keeps its cells
                    args.json.write_text(json.dumps(results, indent=1, default=str))
            if schedule_name in args.schedules and "heun" in SAMPLERS:
                limit = ode_limit(schedule_name, oracle, score, args.seed)
                results["ode_limit"][f"{law} {schedule_name}"] = limit
    results["seconds"] = time.perf_counter() - started
    print_report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\ntotal {results['seconds']:.0f} s\n")
    print("## Statistical floor (exact samples of the headline size) and ODE limit\n")
    print("| law | W1 floor (mean +- std) | mass-err floor | schedule | ODE limit W1 | mass err |")
    print("|" + " --- |" * 6)
    for key, limit in results["ode_limit"].items():
        law, schedule = key.split()
        floor = results["floors"][law]
        print(
            f"| {law} | {floor['w1_mean']:.4f} +- {floor['w1_std']:.4f} | "
            f"{floor['mass_err_mean']:.4f} +- {floor['mass_err_std']:.4f} | {schedule} | "
            f"{tables.fmt(limit['w1'])} | {tables.fmt(limit['mass_err'])} |"
        )
    headline_rows = results["headline"]
    if any(r["side"] == "diffusers" for r in headline_rows):
        print("\n## Headline: difforge's best default sampler vs diffusers' best configuration\n")
        print(tables.headline_table(headline_rows, results["floors"]))
        print("\n## Each difforge default vs its diffusers counterpart's best (W1)\n")
        print(tables.counterpart_table(headline_rows))
    else:
        print("\n## difforge defaults (W1)\n")
        print(tables.counterpart_table(headline_rows))
    kinds = {
        kind: [s for s in schedules if s in {r["schedule"] for r in results["search"]}]
        for kind, schedules in KINDS.items()
    }
    kinds = {kind: schedules for kind, schedules in kinds.items() if schedules}
    samplers = dict.fromkeys(r["family"] for r in results["search"] if r["side"] == "difforge")
    current = {
        (sampler, kind): ours.explicit_default(sampler, SCHEDULES[schedules[0]]()).label
        for sampler in samplers
        for kind, schedules in kinds.items()
    }
    print("\n## Grid choice: each sampler's configurations, ranked per schedule kind (search)\n")
    print(tables.grid_choice_table(results["search"], kinds, current))
    failed = [r for r in results["search"] if "error" in r]
    if failed:
        print(f"\n{len(failed)} search runs failed (scored inf), e.g.:")
        for r in failed[:5]:
            print(f"- {r['side']} {r['family']} {r['config']} ({r['schedule']}): {r['error']}")


if __name__ == "__main__":
    sys.exit(main())
