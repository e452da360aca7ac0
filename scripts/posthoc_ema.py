"""Choose the EMA length after training: FID of post-hoc EMA reconstructions (EDM2, Karras et al.
2024) at several sigma_rel, from the snapshots of a run trained with
``callbacks=[default,posthoc_ema]``; no retraining.

    python scripts/posthoc_ema.py logs/train/runs/<run>/checkpoints/last.ckpt \
        --sigma-rels 0.02 0.04 0.06 0.08 0.10 0.13 0.16 [--num-samples 1000] [--out best.ckpt]

Reads ``<checkpoint dir>/posthoc_ema/step_*.pt``, reconstructs each sigma_rel at the last snapshot
up to the checkpoint's step (``--step`` for an earlier snapshot step; any other step is outside the
recorded history and refused), loads it as the EMA network, samples with the run's sampler and
prints FID (and class coverage for digits) per sigma_rel, plus the tracked constant-decay EMAs.
``--out`` writes a copy of the checkpoint whose EMA weights (``ema.net.*``, the one copy of the EMA
network) are the best reconstruction, for ``src/sample.py`` / ``src/eval.py`` / ``difforge.load``.
``--json`` saves the table. Every error is one line (``error: ...``) and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch
from hydra.utils import instantiate

from difforge.errors import DifforgeError

ROOT = Path(__file__).resolve().parents[1]


def evaluate_states(
    checkpoint: Path,
    states: dict[str, dict[str, torch.Tensor]],
    num_samples: int,
    seed: int,
) -> dict[str, dict[str, float]]:
    from difforge.metrics.images import image_metrics
    from difforge.training.build import module_from_checkpoint

    module, cfg = module_from_checkpoint(checkpoint)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    results = {}
    for name, state in states.items():
        module.ema.net.load_state_dict(state)
        samples = module.generate(num_samples, generator=torch.Generator().manual_seed(seed))
        metrics = image_metrics(
            samples.samples,
            datamodule,
            seed=seed,
            cache_dir=os.environ.get("DIFFORGE_CACHE_DIR", str(ROOT / ".cache")) + "/fid_stats",
            classifier_dir=str(ROOT / "data" / "classifiers"),
        )
        results[name] = {k: v for k, v in metrics.items() if not k.startswith("class_share")}
        print(f"{name:>16}: " + ", ".join(f"{k} {v:.4g}" for k, v in results[name].items()))
    return results


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of the script (``--help`` shows usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")


def at_least(minimum: int) -> Any:
    """An argparse type: an integer >= ``minimum``, else a one-line usage error naming it."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be an integer >= {minimum}, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return parse


def check_writable(path: Path | None, option: str) -> None:
    """Refuse an output path whose folder is missing before the minutes of sampling, not after."""
    if path is not None and not path.parent.is_dir():
        raise DifforgeError(f"{option} {path}: the folder {path.parent} does not exist")


def select_states(
    snapshots: list[dict[str, Any]], sigma_rels: list[float], step: int
) -> dict[str, dict[str, torch.Tensor]]:
    """The reconstruction of each sigma_rel at ``step``, and the constant-decay EMAs saved then."""
    from difforge.training.posthoc_ema import reconstruct

    states = {f"sigma_rel={r:g}": reconstruct(snapshots, r, step) for r in sigma_rels}
    at_step = next(s for s in snapshots if s["step"] == step)
    states.update({k: v for k, v in at_step["averages"].items() if k.startswith("decay=")})
    return states


def write_checkpoint(
    checkpoint: dict[str, Any], state: dict[str, torch.Tensor], path: Path
) -> None:
    """``checkpoint`` with ``state`` as its EMA network, saved to ``path``."""
    weights = checkpoint["state_dict"]
    for key in [k for k in weights if k.startswith("ema_denoiser.")]:
        del weights[key]  # older checkpoints held the EMA network a second time, under this name
    for name, value in state.items():
        weights[f"ema.net.{name}"] = value
    torch.save(checkpoint, path)


def main(argv: list[str] | None = None) -> int:
    from difforge.training.checkpoint import load_checkpoint
    from difforge.training.posthoc_ema import history, load_snapshots

    parser = OneLineParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument(
        "--sigma-rels",
        type=float,
        nargs="+",
        default=[0.03, 0.05, 0.08, 0.10, 0.13, 0.16],
        help="EMA lengths to reconstruct (relative widths, EDM2's sigma_rel)",
    )
    parser.add_argument("--step", type=int, default=None, help="reconstruct at this snapshot step")
    parser.add_argument("--num-samples", type=at_least(2), default=1000, help="samples per FID")
    parser.add_argument("--seed", type=at_least(0), default=0, help="seed of the samples")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint with the best EMA")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    try:
        check_writable(args.out, "--out")
        check_writable(args.json, "--json")
        checkpoint: dict[str, Any] = load_checkpoint(args.checkpoint)
        data_shape = tuple(checkpoint["difforge"]["data_shape"])
        if len(data_shape) != 3:
            raise DifforgeError(
                f"{args.checkpoint}: the data are vectors of shape {data_shape}; this script ranks "
                "EMA lengths by FID, which needs image data"
            )
        folder = args.checkpoint.parent / "posthoc_ema"
        # Snapshots past the checkpoint's step belong to a later state of the run.
        snapshots = [s for s in load_snapshots(folder) if s["step"] <= checkpoint["global_step"]]
        if not snapshots:
            raise DifforgeError(
                f"no post-hoc EMA snapshot in {folder} at or before the checkpoint's step "
                f"{checkpoint['global_step']}"
            )
        step = history(snapshots)[-1]["step"] if args.step is None else args.step
        states = select_states(snapshots, args.sigma_rels, step)
        results = evaluate_states(args.checkpoint, states, args.num_samples, args.seed)
        best = min(results, key=lambda name: results[name]["fid"])
        print(f"best by FID at step {step}: {best} (FID {results[best]['fid']:.4g})")
        if args.json:
            args.json.write_text(
                json.dumps({"step": step, "best": best, "results": results}, indent=2)
            )
        if args.out:
            write_checkpoint(checkpoint, states[best], args.out)
            print(f"wrote {args.out} (EMA weights: {best})")
    except (DifforgeError, ValueError, FileNotFoundError, RuntimeError, OSError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
