"""Choose the EMA length after training: FID of post-hoc EMA reconstructions (EDM2, Karras et al.
2024) at several sigma_rel, from the snapshots of a run trained with
``callbacks=[default,posthoc_ema]``; no retraining.

    python scripts/posthoc_ema.py logs/train/runs/<run>/checkpoints/last.ckpt \
        --sigma-rels 0.02 0.04 0.06 0.08 0.10 0.13 0.16 [--num-samples 1000] [--out best.ckpt]

Reads ``<checkpoint dir>/posthoc_ema/step_*.pt``, reconstructs each sigma_rel at the last snapshot
(``--step`` for an earlier one), loads it as the EMA network, samples with the run's sampler and
prints FID (and class coverage for digits) per sigma_rel, plus the tracked constant-decay EMAs.
``--out`` writes a copy of the checkpoint whose EMA weights are the best reconstruction, for
``src/sample.py`` / ``src/eval.py``. ``--json`` saves the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

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


def main(argv: list[str] | None = None) -> int:
    from difforge.training.posthoc_ema import load_snapshots, reconstruct

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument(
        "--sigma-rels", type=float, nargs="+", default=[0.03, 0.05, 0.08, 0.10, 0.13, 0.16]
    )
    parser.add_argument("--step", type=int, default=None, help="reconstruct at this step")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="checkpoint with the best EMA")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        if not args.checkpoint.is_file():
            raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
        snapshots = load_snapshots(args.checkpoint.parent / "posthoc_ema")
        step = snapshots[-1]["step"] if args.step is None else args.step
        states: dict[str, dict[str, torch.Tensor]] = {
            f"sigma_rel={r:g}": reconstruct(snapshots, r, step) for r in args.sigma_rels
        }
        at_step = [s for s in snapshots if s["step"] == step]
        for key, state in (at_step[0]["averages"] if at_step else {}).items():
            if key.startswith("decay="):
                states[key] = state
        results = evaluate_states(args.checkpoint, states, args.num_samples, args.seed)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    best = min(results, key=lambda name: results[name]["fid"])
    print(f"best by FID at step {step}: {best} (FID {results[best]['fid']:.4g})")
    if args.json:
        args.json.write_text(json.dumps({"step": step, "best": best, "results": results}, indent=2))
    if args.out:
        checkpoint: dict[str, Any] = torch.load(args.checkpoint, weights_only=True)
        for name, value in states[best].items():
            checkpoint["state_dict"][f"ema.net.{name}"] = value
        torch.save(checkpoint, args.out)
        print(f"wrote {args.out} (EMA weights: {best})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
