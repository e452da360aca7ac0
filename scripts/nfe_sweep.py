"""Lesson 4, sampling efficiency: quality versus NFE for every sampler (docs/guide.md, section 4).

    python scripts/nfe_sweep.py                         # ~3-5 min on one CPU core
    python scripts/nfe_sweep.py out_dir=docs/figures    # regenerate the guide's figure and table
    python scripts/nfe_sweep.py num_samples=10000 sweep2d.enabled=false   # a quick look
    python scripts/nfe_sweep.py ckpt_path=CKPT          # also FID of a trained image model

With the exact denoiser (no learning error) of ``data`` (gmm1d: exact W1 to the law) and
``data2d`` (gmm2d: sliced W1 to an exact reference sample), every sampler in ``algorithms`` runs
at every step count in ``steps``; then, for each sampler, a bisection on the step count finds
the smallest NFE with W1 <= ``threshold`` on gmm1d. The statistical floor (the W1 of exact
samples of the same size) is measured and reported. Writes nfe_sweep.png, nfe_sweep.md and
nfe_sweep.json (and nfe_sweep_fid.png with ``ckpt_path``) to ``out_dir``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, cast

import hydra
from omegaconf import DictConfig, OmegaConf

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))
log = logging.getLogger("difforge")


def show(record: dict) -> None:
    log.info(
        "%-9s steps %4d  NFE %4d  error %.4f  (%.1f s)",
        record["algorithm"],
        record["steps"],
        record["nfe"],
        record["error"],
        record["seconds"],
    )


def sweep(cfg: DictConfig) -> dict:
    from hydra.utils import instantiate

    from difforge.diffusion.gaussian_mixture import GaussianMixtureOracle
    from difforge.diffusion.samplers import SAMPLERS
    from difforge.lessons import efficiency, plots
    from difforge.lessons.script import config_mixture

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    schedule = instantiate(cfg.schedule)
    algorithms = list(cfg.algorithms or SAMPLERS)  # null: every registered sampler
    options = cast(dict[str, dict[str, Any]], OmegaConf.to_container(cfg.options) or {})
    steps = [int(s) for s in cfg.steps]
    if getattr(schedule, "is_discrete", False):
        steps = [s for s in steps if s <= schedule.num_timesteps]

    mixture = config_mixture(cfg, "data", dim=1)
    oracle = GaussianMixtureOracle(mixture)
    n = int(cfg.num_samples)
    floor = efficiency.statistical_floor(mixture, n, int(cfg.floor_repeats))
    log.info("1-D: W1 of %d exact samples (the floor): %.4f +- %.4f", n, *floor)
    records = efficiency.nfe_sweep(
        oracle, schedule, mixture, algorithms, steps, n, cfg.seed, options=options, progress=show
    )
    reached, spread = {}, {}
    for algorithm in algorithms:
        kwargs = {"max_steps": int(cfg.max_steps), **options.get(algorithm, {})}
        best = efficiency.smallest_steps_reaching(
            oracle,
            schedule,
            mixture,
            algorithm,
            float(cfg.threshold),
            n,
            records,
            seed=cfg.seed,
            **kwargs,
        )
        reached[algorithm] = best
        # The same search with other seeds: how much the answer moves with the sample.
        found = [best["nfe"]] if best else []
        for other in cfg.threshold_seeds:
            if int(other) == int(cfg.seed) or best is None:
                continue
            bracket = [
                efficiency.evaluate(
                    oracle,
                    schedule,
                    mixture,
                    algorithm,
                    s,
                    n,
                    int(other),
                    **options.get(algorithm, {}),
                )
                for s in sorted({max(1, int(best["steps"] / 1.5)), int(best["steps"] * 1.5) + 1})
            ]
            again = efficiency.smallest_steps_reaching(
                oracle,
                schedule,
                mixture,
                algorithm,
                float(cfg.threshold),
                n,
                bracket,
                seed=int(other),
                **kwargs,
            )
            if again is not None:
                found.append(again["nfe"])
        spread[algorithm] = found
        log.info(
            "%-9s reaches W1 <= %g at %s; NFE over seeds %s",
            algorithm,
            cfg.threshold,
            f"NFE {best['nfe']} ({best['steps']} steps, W1 {best['error']:.4f})" if best else "-",
            found,
        )
    summary: dict = {
        "schedule": repr(schedule),
        "gmm1d": {
            "num_samples": n,
            "floor_mean": floor[0],
            "floor_std": floor[1],
            "threshold": float(cfg.threshold),
            "smallest_nfe": {a: (r["nfe"] if r else None) for a, r in reached.items()},
            "smallest_nfe_records": reached,
            "smallest_nfe_over_seeds": spread,
            "records": records,
        },
    }
    panels = {
        f"gmm1d, exact denoiser, {n} samples": {
            "records": records,
            "ylabel": "W1 to the data law",
            "floor": floor,
            "threshold": float(cfg.threshold),
            "reached": reached,
        }
    }

    tables = [
        "# Sampling efficiency: quality versus NFE with the exact denoiser\n",
        f"Schedule: `{schedule!r}`; every sampler on its default grid (ddpm/ddim: the schedule's "
        "respaced timesteps; euler/heun/dpmpp_2m: Karras et al.'s grid, sigma_max 80). Same seed "
        "for every run.\n",
        f"## gmm1d: W1 to the data law, {n} samples\n",
        f"Statistical floor (W1 of {n} exact samples, mean +- std over {cfg.floor_repeats} "
        f"draws): {floor[0]:.4f} +- {floor[1]:.4f}.\n",
        f"Smallest NFE reaching W1 <= {cfg.threshold:g} (bisection on the step count; seed "
        f"{cfg.seed}, and the range over seeds {list(cfg.threshold_seeds)}):\n",
        "| sampler | steps | NFE | W1 | NFE over seeds |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {a} | {r['steps']} | {r['nfe']} | {r['error']:.4f} "
            f"| {min(spread[a])}-{max(spread[a])} |"
            if r
            else f"| {a} | - | > {cfg.max_steps} steps | - | - |"
            for a, r in reached.items()
        ),
        "",
        "W1 (NFE) per step count:\n",
        efficiency.markdown_table(records, algorithms),
        "",
    ]

    if cfg.sweep2d.enabled:
        mixture2d = config_mixture(cfg, "data2d")
        n2 = int(cfg.sweep2d.num_samples)
        reference = efficiency.reference_sample(mixture2d, n2)
        floor2d = efficiency.statistical_floor(mixture2d, n2, int(cfg.floor_repeats), reference)
        log.info("2-D: sliced W1 of %d exact samples (the floor): %.4f +- %.4f", n2, *floor2d)
        steps2d = [int(s) for s in cfg.sweep2d.steps if not steps or int(s) <= max(steps)]
        records2d = efficiency.nfe_sweep(
            GaussianMixtureOracle(mixture2d),
            schedule,
            mixture2d,
            algorithms,
            steps2d,
            n2,
            cfg.seed,
            reference=reference,
            options=options,
            progress=show,
        )
        summary["gmm2d"] = {
            "num_samples": n2,
            "floor_mean": floor2d[0],
            "floor_std": floor2d[1],
            "records": records2d,
        }
        panels[f"gmm2d ({mixture2d.num_components} modes), exact denoiser, {n2} samples"] = {
            "records": records2d,
            "ylabel": "sliced W1 to an exact sample",
            "floor": floor2d,
        }
        tables += [
            f"## gmm2d: sliced W1 to an exact sample, {n2} samples\n",
            f"Statistical floor: {floor2d[0]:.4f} +- {floor2d[1]:.4f}.\n",
            efficiency.markdown_table(records2d, algorithms),
            "",
        ]

    plots.plot_nfe_sweep(panels, out / "nfe_sweep.png", title="sample quality versus NFE")
    if cfg.ckpt_path is not None:
        summary["images"], image_table = image_sweep(cfg, algorithms, out)
        tables += image_table
    (out / "nfe_sweep.md").write_text("\n".join(tables))
    (out / "nfe_sweep.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["gmm1d"]["smallest_nfe"]))
    log.info("wrote %s", out / "nfe_sweep.md")
    return summary


def image_sweep(cfg: DictConfig, algorithms: list[str], out: Path) -> tuple[list, list[str]]:
    """FID (and class coverage) of a trained image model's samples against NFE."""
    import torch
    from hydra.utils import instantiate

    from difforge.diffusion.samplers import Sampler
    from difforge.lessons import plots
    from difforge.metrics.images import image_metrics
    from difforge.training.build import module_from_checkpoint

    module, train_cfg = module_from_checkpoint(cfg.ckpt_path)
    if len(module.data_shape) != 3:
        raise ValueError(f"{cfg.ckpt_path} is not an image model (data shape {module.data_shape})")
    device = torch.device(cfg.images.device)
    module.to(device)
    datamodule = instantiate(train_cfg.data)
    n = int(cfg.images.num_samples)
    records = []
    for algorithm in algorithms:
        for steps in cfg.images.steps:
            sampler = Sampler(algorithm, int(steps))
            result = module.generate(
                n,
                sampler=sampler,
                generator=torch.Generator(device=device).manual_seed(int(cfg.seed)),
                batch_size=int(cfg.images.batch_size),
            )
            metrics = image_metrics(
                result.samples,
                datamodule,
                seed=int(cfg.seed),
                cache_dir=cfg.images.cache_dir,
                kid_subset_size=min(1000, n),
                device=device,
            )
            record = {
                "algorithm": algorithm,
                "steps": int(steps),
                "nfe": int(result.nfe),
                "error": float(metrics["fid"]),
                "class_coverage": float(metrics.get("class_coverage", float("nan"))),
                "seconds": 0.0,
            }
            records.append(record)
            log.info("images: %-9s NFE %4d  FID %.3f", algorithm, record["nfe"], record["error"])
    plots.plot_nfe_sweep(
        {f"{Path(cfg.ckpt_path).name}: FID of {n} samples": {"records": records, "ylabel": "FID"}},
        out / "nfe_sweep_fid.png",
    )
    from difforge.lessons.efficiency import markdown_table

    table = [f"## Trained image model ({cfg.ckpt_path}): FID of {n} samples\n"]
    table += [markdown_table(records, algorithms), ""]
    return records, table


@hydra.main(version_base="1.3", config_path="../configs/lessons", config_name="nfe_sweep")
def main(cfg: DictConfig) -> None:
    from difforge.lessons.script import run_lesson

    run_lesson(sweep, cfg)


if __name__ == "__main__":
    main()
