"""Lesson 4, sampling efficiency: quality versus NFE for every sampler (docs/guide.md, section 4).

With the exact denoiser (no learning error) of ``cfg.data`` (gmm1d: exact W1 to the law) and
``cfg.data2d`` (gmm2d: sliced W1 to an exact reference sample), every sampler in
``cfg.algorithms`` (null: every one in ``difforge.diffusion.samplers.SAMPLERS``) runs at every
step count in ``cfg.steps`` (``difforge.lessons.efficiency``); then, for each sampler, a bisection
on the step count finds the smallest NFE with W1 <= ``cfg.threshold`` on gmm1d, repeated over
``cfg.threshold_seeds``. The statistical floor (the W1 of exact samples of the same size) is
measured and reported. With ``cfg.ckpt_path``, FID of a trained image model against NFE too
(``efficiency.fid_versus_nfe``); ``cfg.exact=false`` runs that part alone.

``run(cfg)`` writes nfe_sweep.png, nfe_sweep.md and nfe_sweep.json (the exact denoiser) and
nfe_sweep_fid.png, nfe_sweep_fid.md and nfe_sweep_fid.json (the checkpoint) to ``cfg.out_dir``
and returns the summary.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from difforge.diffusion.gaussian_mixture import GaussianMixture, GaussianMixtureOracle
from difforge.diffusion.samplers import SAMPLERS, Sampler
from difforge.diffusion.schedules import NoiseSchedule
from difforge.lessons import efficiency
from difforge.lessons.script import config_mixture

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("difforge")


def run(cfg: DictConfig) -> dict[str, Any]:
    """The lesson: with ``cfg.exact`` the exact-denoiser sweeps (nfe_sweep.png, .md, .json in
    ``cfg.out_dir``), with ``cfg.ckpt_path`` FID versus NFE (nfe_sweep_fid.png, .md, .json);
    returns the summary (per data set the floor and every record; on gmm1d the smallest NFE per
    sampler; ``images``: the FID records).

    Raises:
        ValueError: nothing to run (``exact=false`` without ``ckpt_path``), or ``options`` for
            a sampler not in ``cfg.algorithms``.
    """
    from omegaconf import OmegaConf

    if not cfg.exact and cfg.ckpt_path is None:
        raise ValueError("exact=false and no ckpt_path: nothing to run (give ckpt_path=CKPT)")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    algorithms = list(cfg.algorithms or SAMPLERS)  # null: every registered sampler
    options = cast(
        dict[str, dict[str, Any]], OmegaConf.to_container(cfg.options) if cfg.options else {}
    )
    unused = sorted(set(options) - set(algorithms))
    if unused:
        raise ValueError(
            f"options for {unused[0]!r}, which is not among the algorithms run: {algorithms}"
        )
    summary: dict[str, Any] = {}
    if cfg.exact:
        summary.update(exact_sweeps(cfg, algorithms, options, out))
    if cfg.ckpt_path is not None:
        summary["images"] = image_sweep(cfg, algorithms, options, out)
    return summary


def exact_sweeps(
    cfg: DictConfig, algorithms: list[str], options: dict[str, dict[str, Any]], out: Path
) -> dict[str, Any]:
    """Every sampler with the exact denoiser of ``cfg.data`` (gmm1d: W1 and the smallest NFE
    reaching ``cfg.threshold``) and of ``cfg.data2d`` (``cfg.sweep2d``): nfe_sweep.png,
    nfe_sweep.md and nfe_sweep.json in ``out``; returns their summary."""
    from hydra.utils import instantiate

    from difforge.lessons import plots

    schedule = instantiate(cfg.schedule)
    steps = [int(s) for s in cfg.steps]
    if schedule.is_discrete:
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
        reached[algorithm], spread[algorithm] = smallest_nfe(
            oracle, schedule, mixture, algorithm, records, options.get(algorithm, {}), cfg
        )
    grids = sampler_grids(algorithms, options, schedule)
    summary: dict[str, Any] = {
        "schedule": repr(schedule),
        "grids": grids,
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
    panels: dict[str, dict[str, Any]] = {
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
        f"Schedule: `{schedule!r}`; every sampler on its default grid (the registry's). Same "
        "seed for every run.\n",
        f"## gmm1d: W1 to the data law, {n} samples\n",
        f"Statistical floor (W1 of {n} exact samples, mean +- std over {cfg.floor_repeats} "
        f"draws): {floor[0]:.4f} +- {floor[1]:.4f}.\n",
        f"Smallest NFE reaching W1 <= {cfg.threshold:g} (bisection on the step count; seed "
        f"{cfg.seed}, and the range over seeds {list(cfg.threshold_seeds)}):\n",
        "| sampler | grid (final sigma) | steps | NFE | W1 | NFE over seeds |",
        "|---|---|---:|---:|---:|---:|",
        *(
            f"| {a} | {grids[a]} | {r['steps']} | {r['nfe']} | {r['error']:.4f} "
            f"| {min(spread[a])}-{max(spread[a])} |"
            if r
            else f"| {a} | {grids[a]} | - | > {cfg.max_steps} steps | - | - |"
            for a, r in reached.items()
        ),
        "",
        "W1 per step count (with the NFE where it differs from the step count):\n",
        efficiency.markdown_table(records, algorithms),
        "",
    ]
    if cfg.sweep2d.enabled:
        summary["gmm2d"], title, panels_2d, table_2d = sweep_2d(
            cfg, schedule, algorithms, options, steps
        )
        panels[title] = panels_2d
        tables += table_2d
    plots.plot_nfe_sweep(panels, out / "nfe_sweep.png", title="sample quality versus NFE")
    (out / "nfe_sweep.md").write_text("\n".join(tables))
    (out / "nfe_sweep.json").write_text(json.dumps(summary, indent=2))
    log.info("smallest NFE per sampler: %s", json.dumps(summary["gmm1d"]["smallest_nfe"]))
    log.info("wrote %s", out / "nfe_sweep.md")
    return summary


def sampler_grids(
    algorithms: list[str], options: dict[str, dict[str, Any]], schedule: NoiseSchedule
) -> dict[str, str]:
    """The grid and final sigma each sampler walks on ``schedule``, e.g. ``flow (min)``: its
    defaults for the schedule, or what ``options`` set."""
    samplers = {a: Sampler(a, 1, **options.get(a, {})) for a in algorithms}
    return {
        a: f"{s.grid_for(schedule)} ({s.final_sigma_for(schedule)})" for a, s in samplers.items()
    }


def show(record: dict[str, Any]) -> None:
    log.info(
        "%-18s steps %4d  NFE %4d  error %.4f  (%.1f s)",
        record["algorithm"],
        record["steps"],
        record["nfe"],
        record["error"],
        record["seconds"],
    )


def smallest_nfe(
    oracle: GaussianMixtureOracle,
    schedule: NoiseSchedule,
    mixture: GaussianMixture,
    algorithm: str,
    records: list[dict[str, Any]],
    options: dict[str, Any],
    cfg: DictConfig,
) -> tuple[dict[str, Any] | None, list[int]]:
    """The smallest NFE at which ``algorithm`` reaches W1 <= ``cfg.threshold`` (seed
    ``cfg.seed``, reusing ``records``), and the NFE found with each of ``cfg.threshold_seeds``:
    how much the answer moves with the sample."""
    threshold, n = float(cfg.threshold), int(cfg.num_samples)
    kwargs = {"max_steps": int(cfg.max_steps), **options}
    best = efficiency.smallest_steps_reaching(
        oracle, schedule, mixture, algorithm, threshold, n, records, seed=cfg.seed, **kwargs
    )
    found = [best["nfe"]] if best else []
    for other in cfg.threshold_seeds:
        if int(other) == int(cfg.seed) or best is None:
            continue
        bracket = [
            efficiency.evaluate(oracle, schedule, mixture, algorithm, s, n, int(other), **options)
            for s in sorted({max(1, int(best["steps"] / 1.5)), int(best["steps"] * 1.5) + 1})
        ]
        again = efficiency.smallest_steps_reaching(
            oracle, schedule, mixture, algorithm, threshold, n, bracket, seed=int(other), **kwargs
        )
        if again is not None:
            found.append(again["nfe"])
    log.info(
        "%-18s reaches W1 <= %g at %s; NFE over seeds %s",
        algorithm,
        threshold,
        f"NFE {best['nfe']} ({best['steps']} steps, W1 {best['error']:.4f})" if best else "-",
        found,
    )
    return best, found


def sweep_2d(
    cfg: DictConfig,
    schedule: NoiseSchedule,
    algorithms: list[str],
    options: dict[str, dict[str, Any]],
    steps: list[int],
) -> tuple[dict[str, Any], str, dict[str, Any], list[str]]:
    """The sweep on ``cfg.data2d`` (``cfg.sweep2d``): its summary, the figure panel's title and
    panel, and its markdown table."""
    mixture = config_mixture(cfg, "data2d")
    n = int(cfg.sweep2d.num_samples)
    reference = efficiency.reference_sample(mixture, n)
    floor = efficiency.statistical_floor(mixture, n, int(cfg.floor_repeats), reference)
    log.info("2-D: sliced W1 of %d exact samples (the floor): %.4f +- %.4f", n, *floor)
    steps_2d = [int(s) for s in cfg.sweep2d.steps if not steps or int(s) <= max(steps)]
    records = efficiency.nfe_sweep(
        GaussianMixtureOracle(mixture),
        schedule,
        mixture,
        algorithms,
        steps_2d,
        n,
        cfg.seed,
        reference=reference,
        options=options,
        progress=show,
    )
    summary = {"num_samples": n, "floor_mean": floor[0], "floor_std": floor[1], "records": records}
    title = f"gmm2d ({mixture.num_components} modes), exact denoiser, {n} samples"
    panel = {"records": records, "ylabel": "sliced W1 to an exact sample", "floor": floor}
    table = [
        f"## gmm2d: sliced W1 to an exact sample, {n} samples\n",
        f"Statistical floor: {floor[0]:.4f} +- {floor[1]:.4f}.\n",
        efficiency.markdown_table(records, algorithms),
        "",
    ]
    return summary, title, panel, table


def image_sweep(
    cfg: DictConfig, algorithms: list[str], options: dict[str, dict[str, Any]], out: Path
) -> list[dict[str, Any]]:
    """FID (and class coverage) of the trained image model ``cfg.ckpt_path`` against NFE, at the
    target NFEs ``cfg.images.nfe`` (``efficiency.fid_versus_nfe``): nfe_sweep_fid.png (one line
    per sampler), nfe_sweep_fid.md and nfe_sweep_fid.json in ``out``; returns the records."""
    from hydra.utils import instantiate

    from difforge.lessons import plots
    from difforge.training.build import module_from_checkpoint

    module, train_cfg = module_from_checkpoint(cfg.ckpt_path)
    if len(module.data_shape) != 3:
        raise ValueError(f"{cfg.ckpt_path} is not an image model (data shape {module.data_shape})")
    device = torch.device(cfg.images.device)
    module.to(device)
    n = int(cfg.images.num_samples)
    datamodule = instantiate(train_cfg.data)
    records = efficiency.fid_versus_nfe(
        module,
        datamodule,
        algorithms,
        [int(nfe) for nfe in cfg.images.nfe],
        n,
        seed=int(cfg.seed),
        batch_size=int(cfg.images.batch_size),
        cache_dir=cfg.images.cache_dir,
        device=device,
        options=options,
        progress=show,
        kid_subsets=int(cfg.images.kid_subsets),
    )
    title = f"{datamodule.config_name}, {Path(cfg.ckpt_path).name}: FID of {n} samples"
    plots.plot_nfe_sweep(
        {title: {"records": records, "ylabel": "FID against the train split"}},
        out / "nfe_sweep_fid.png",
    )
    table = [
        f"# FID versus NFE of {cfg.ckpt_path}: {n} samples against the train split\n",
        f"Schedule `{module.schedule!r}`. Each sampler runs the most steps whose NFE does not "
        f"exceed the target (same seed {cfg.seed}); (NFE n) marks a cell whose counted NFE "
        "differs from its column. Grids (final sigma): "
        + ", ".join(
            f"{a} {g}" for a, g in sampler_grids(algorithms, options, module.schedule).items()
        )
        + ".\n",
        efficiency.markdown_table(records, algorithms, column="nfe_target", label="target NFE"),
        "",
        "Class coverage (digits classifier; 1 = every class gets at least half its share):\n",
        efficiency.markdown_table(
            records, algorithms, "class_coverage", column="nfe_target", label="target NFE"
        ),
        "",
    ]
    (out / "nfe_sweep_fid.md").write_text("\n".join(table))
    (out / "nfe_sweep_fid.json").write_text(json.dumps(records, indent=2))
    log.info("wrote %s", out / "nfe_sweep_fid.md")
    return records
