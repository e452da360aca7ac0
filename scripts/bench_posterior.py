"""The exact-posterior leaderboard of difforge's posterior samplers (issue #22).

Every method of the registry (``difforge.posterior.samplers.registry.POSTERIORS``) samples the
posterior of each draw of the test bed of Cardoso et al. 2024 (25-component mixture on a 5 x 5
grid, random ``A``; ``d_x`` in {8, 80, 800}, ``d_y`` in {1, 2, 4}) with the exact mixture
denoiser, at equal network evaluations (NFE), on DDPM's linear schedule; its samples are
measured by the sliced Wasserstein distance (SW) to exact posterior samples of the same size,
next to the floor (two sets of exact samples), and by the total-variation error of the
components' posterior weights. Mean ± 1.96 standard errors over the draws. Then the SMC
sampler's SW against its particle count. Logic: ``difforge.benchmarks.posterior``.

    python scripts/bench_posterior.py --json posterior.json --markdown posterior.md   # ~33 min
    python scripts/bench_posterior.py --quick                                         # seconds

Run with ``OMP_NUM_THREADS=1``: the figures in docs/guide.md (section 6) took 33 minutes on one
thread of a loaded 2-core CPU, with 5 draws x 500 samples (2 x 200 at ``d_x = 800``); Cardoso et
al.'s 20 draws: ``--draws 20 --draws-800 0 --samples-800 0``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from difforge.benchmarks import posterior as bench
from difforge.machine import machine_info
from difforge.posterior.samplers.registry import POSTERIORS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=tuple(POSTERIORS),
        default=None,
        help="default: every registered method that applies to a matrix A",
    )
    parser.add_argument("--dims", type=int, nargs="+", default=list(bench.DIMS), help="d_x values")
    parser.add_argument("--d-ys", type=int, nargs="+", default=list(bench.D_YS), help="d_y values")
    parser.add_argument(
        "--nfe", type=int, nargs="+", default=[20, 100], help="network evaluations per sample"
    )
    parser.add_argument(
        "--draws", type=int, default=5, help="problem draws per (d_x, d_y) (Cardoso et al.: 20)"
    )
    parser.add_argument("--samples", type=int, default=500, help="samples per problem")
    parser.add_argument(
        "--draws-800", type=int, default=2, help="problem draws at d_x = 800 (0: --draws)"
    )
    parser.add_argument(
        "--samples-800",
        type=int,
        default=200,
        help="samples per problem at d_x = 800 (0: --samples)",
    )
    parser.add_argument(
        "--smc",
        default=None,
        help="the SMC method of the particle sweep (default: the registry's first method with a "
        "num_particles option; none: no sweep)",
    )
    parser.add_argument("--particles", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument(
        "--leaderboard-particles",
        type=int,
        default=4,
        help="the SMC method's particles in the leaderboard: at equal NFE per "
        "sample they divide its steps (NFE = steps x particles)",
    )
    parser.add_argument(
        "--smc-dims",
        type=int,
        nargs="+",
        default=[8, 80],
        help="d_x values of the particle sweep (d_y = 1)",
    )
    parser.add_argument(
        "--smc-steps",
        type=int,
        default=50,
        help="steps of the particle sweep (NFE per sample: steps x particles)",
    )
    parser.add_argument("--smc-samples", type=int, default=200, help="samples per problem")
    parser.add_argument("--smc-draws", type=int, default=5)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="seconds: d_x 8, d_y 1, 2 draws, 200 samples, NFE 10 20",
    )
    parser.add_argument("--json", type=Path, default=None, help="write every row here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables here")
    args = parser.parse_args(argv)
    if args.quick:
        args.dims, args.d_ys, args.nfe, args.draws, args.samples = [8], [1], [10, 20], 2, 200
        args.particles, args.smc_dims, args.smc_steps = [1, 4], [8], 10
        args.smc_samples, args.smc_draws = 100, 2
    if min(args.draws_800, args.samples_800) < 0:
        parser.error("--draws-800 and --samples-800 must be >= 0 (0: --draws, --samples)")
    if min(args.draws, args.samples, args.smc_samples, args.smc_draws, *args.nfe) < 1:
        parser.error("--draws, --samples, --smc-samples, --smc-draws and --nfe must be >= 1")
    if args.samples < 2 or args.smc_samples < 2:
        parser.error("--samples and --smc-samples must be >= 2 (a distance between samples)")
    if args.methods is None:
        args.methods = [n for n, s in POSTERIORS.items() if not s.needs_mask]
    if args.smc == "none":
        args.smc = None
    elif args.smc is None:
        args.smc = next((n for n, s in POSTERIORS.items() if bench.is_smc(s)), None)
    elif args.smc not in POSTERIORS or not bench.is_smc(POSTERIORS[args.smc]):
        parser.error(f"--smc {args.smc}: not a method with a num_particles option")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    info = machine_info()
    command = (
        f"python scripts/bench_posterior.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    )
    header = (
        f"machine: {info['nproc']} cores, {info['cpu']}, torch {info['torch']} "
        f"({info['threads']} thread)\ncommand: {command}\n"
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.samples} samples per "
        f"problem, {args.draws} draws (d_x = 800: {args.samples_800 or args.samples} samples, "
        f"{args.draws_800 or args.draws} draws), NFE {args.nfe}, methods {', '.join(args.methods)}"
    )
    print(header, flush=True)
    started = time.perf_counter()
    dims = [(d_x, d_y) for d_x in args.dims for d_y in args.d_ys]
    smc_methods = [n for n in args.methods if bench.is_smc(POSTERIORS[n])]
    options = {n: {"num_particles": args.leaderboard_particles} for n in smc_methods}
    rows = []
    for d_x, d_y in dims:
        draws = args.draws_800 if d_x == 800 and args.draws_800 else args.draws
        samples = args.samples_800 if d_x == 800 and args.samples_800 else args.samples
        rows += bench.leaderboard(args.methods, [(d_x, d_y)], args.nfe, draws, samples, options)
    smc_rows = []
    if args.smc is not None:
        smc_rows = bench.smc_sweep(
            args.smc,
            args.particles,
            [(d, 1) for d in args.smc_dims],
            args.smc_steps,
            args.smc_draws,
            args.smc_samples,
        )
    seconds = time.perf_counter() - started
    results = {
        "machine": info,
        "command": command,
        "seconds": seconds,
        "rows": rows,
        "smc_rows": smc_rows,
    }
    report = bench.report(rows, smc_rows, args.smc, header + f"\ntotal {seconds:.0f} s\n")
    print("\n" + report)
    bench.write_results(results, args, report, args.json, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
