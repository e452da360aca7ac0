"""difforge's posterior samplers side by side with deepinv's and diffusers' (issue #22).

The same problems (the test bed of Cardoso et al. 2024 with its random ``A``, and the same
priors measured through a coordinate mask, where RePaint applies), the same exact mixture
denoiser, the same budget of network evaluations (NFE, counted), the same exact reference
samples: deepinv 0.5.0's DPS, DDRM and DiffPIR, diffusers' RePaint (``RePaintScheduler``),
each at its defaults and along its main knob, against every difforge method at its defaults.
Tables: difforge's best against the peers' best (goal: 20 % lower SW), each difforge method
against the same algorithm in the peer library (goal: no worse), every run. Logic and the
peers' conventions: ``difforge.benchmarks.posterior_peers``.

deepinv is optional, not a dependency of difforge; install it beside the project's packages
without touching them (its other requirements are already there):

    /work/main/.venv/bin/python -m pip install --target /work/wt/deepinv-site --no-deps \\
        deepinv==0.5.0 einops natsort h5py
    PYTHONPATH=$PWD/src:/work/wt/deepinv-site OMP_NUM_THREADS=1 \\
        python scripts/bench_posterior_peers.py --json peers.json --markdown peers.md
    python scripts/bench_posterior_peers.py --quick                      # seconds
    python scripts/bench_posterior_peers.py --methods ddrm --peers ddrm  # DDRM's cells only

Without deepinv the script says so in one line and runs the diffusers side alone
(``--no-deepinv`` does that on purpose).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from difforge.benchmarks import posterior as bench
from difforge.benchmarks import posterior_peers as peers
from difforge.machine import machine_info
from difforge.posterior.samplers.registry import POSTERIORS

PEER_FAMILIES = ("dps", "ddrm", "diffpir", "repaint")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=tuple(POSTERIORS),
        default=None,
        help="difforge methods (default: every method without particles)",
    )
    parser.add_argument(
        "--peers",
        nargs="+",
        choices=PEER_FAMILIES,
        default=list(PEER_FAMILIES),
        help="peer algorithms run (default: all); e.g. --methods ddrm --peers ddrm for DDRM's cells",
    )
    parser.add_argument(
        "--kinds",
        nargs="*",
        choices=tuple(bench.PROBLEMS),
        default=["cardoso", "mask_exact"],
        help="problems: the test bed (random A), masks with its sigma_y, masks without noise",
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        nargs="+",
        default=[],
        help="add the rows of earlier --json runs of problem kinds this run does not compute "
        "(the same samples and draws); with --kinds and nothing after it, only the report",
    )
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 80], help="d_x values")
    parser.add_argument("--d-ys", type=int, nargs="+", default=[1, 4], help="d_y values")
    parser.add_argument("--nfe", type=int, nargs="+", default=[100])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--no-deepinv", action="store_true", help="diffusers' RePaint only")
    parser.add_argument(
        "--quick", action="store_true", help="seconds: d_x 8, d_y 1, 2 draws, 200 samples, NFE 20"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.dims, args.d_ys, args.nfe, args.draws, args.samples = [8], [1], [20], 2, 200
    if min(args.draws, *args.nfe) < 1 or args.samples < 2:
        parser.error("--draws and --nfe must be >= 1, --samples >= 2")
    if args.methods is None:
        args.methods = [n for n, s in POSTERIORS.items() if not bench.is_smc(s)]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    with_deepinv = not args.no_deepinv and peers.deepinv_available()
    if not args.no_deepinv and not with_deepinv:
        print(peers.INSTALL_DEEPINV + "; running diffusers' RePaint alone", flush=True)
    info = machine_info()
    import diffusers

    info["diffusers"] = diffusers.__version__
    if with_deepinv:
        import deepinv

        info["deepinv"] = deepinv.__version__
    command = f"python scripts/bench_posterior_peers.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    header = (
        f"machine: {info['nproc']} cores, {info['cpu']}, torch {info['torch']} (1 thread), "
        f"diffusers {info['diffusers']}, deepinv {info.get('deepinv', 'absent')}\n"
        f"command: {command}\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{args.samples} samples per problem, {args.draws} draws, NFE {args.nfe}"
    )
    print(header, flush=True)
    started = time.perf_counter()
    rows = peers.compare(
        args.kinds,
        [(d_x, d_y) for d_x in args.dims for d_y in args.d_ys],
        args.nfe,
        args.draws,
        args.samples,
        args.methods,
        [c for c in peers.peer_configs(deepinv=with_deepinv) if c.family in args.peers],
    )
    seconds = time.perf_counter() - started
    for path in args.reuse:
        earlier = json.loads(path.read_text())
        for key in ("samples", "draws"):
            if earlier["args"][key] != getattr(args, key):
                sys.exit(
                    f"error: --reuse {path}: {key} was {earlier['args'][key]} there, "
                    f"{getattr(args, key)} here"
                )
        rows += [r for r in earlier["rows"] if r["kind"] not in args.kinds]
        header += f"\nrows of {path.name} reused: {earlier['command']}"
    report = peers.report(rows, header + f"\ntotal {seconds:.0f} s\n")
    print("\n" + report)
    results = {"machine": info, "command": command, "seconds": seconds, "rows": rows}
    bench.write_results(results, args, report, args.json, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
