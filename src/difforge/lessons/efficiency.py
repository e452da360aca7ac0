"""Sampling efficiency: sample quality against the number of function evaluations (NFE).

With the exact denoiser of a Gaussian mixture (the oracle) the learning error is zero, so the
distance between the samples and the data law is the sampler's discretisation error plus the
statistical error of a finite sample. That second part is the floor no sampler can beat:
``statistical_floor`` measures it with exact samples of the same size.

Distances: in 1-D the exact Wasserstein-1 distance to the law (``wasserstein1_1d``); in more
dimensions the sliced W1 against a fixed exact reference sample of the same size
(``sliced_wasserstein1``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from difforge.diffusion.gaussian_mixture import GaussianMixture
from difforge.diffusion.samplers import Sampler
from difforge.diffusion.samplers.common import DenoiserFn
from difforge.diffusion.schedules import NoiseSchedule
from difforge.metrics.mixture import sliced_wasserstein1, wasserstein1_1d


def distance(samples: Tensor, mixture: GaussianMixture, reference: Tensor | None = None) -> float:
    """W1 to the law (1-D, exact) or sliced W1 to ``reference`` (an exact sample, same size)."""
    samples = samples.reshape(samples.shape[0], -1).to(torch.float64)
    if not torch.isfinite(samples).all():
        return math.inf
    if mixture.dim == 1:
        return wasserstein1_1d(samples, mixture)
    if reference is None or reference.shape != samples.shape:
        raise ValueError("the sliced W1 needs an exact reference sample of the samples' size")
    return sliced_wasserstein1(samples, reference)


def reference_sample(mixture: GaussianMixture, num_samples: int, seed: int = 12345) -> Tensor:
    """A fixed exact sample for the sliced W1 of multi-dimensional mixtures."""
    return mixture.sample(num_samples, torch.Generator().manual_seed(seed))[0]


def statistical_floor(
    mixture: GaussianMixture,
    num_samples: int,
    repeats: int = 10,
    reference: Tensor | None = None,
    seed: int = 1000,
) -> tuple[float, float]:
    """Mean and standard deviation of ``distance`` for exact samples of ``num_samples``: the error
    of a perfect sampler."""
    values = torch.tensor(
        [
            distance(
                mixture.sample(num_samples, torch.Generator().manual_seed(seed + r))[0],
                mixture,
                reference,
            )
            for r in range(repeats)
        ],
        dtype=torch.float64,
    )
    return float(values.mean()), float(values.std()) if repeats > 1 else 0.0


def evaluate(
    denoiser: DenoiserFn,
    schedule: NoiseSchedule,
    mixture: GaussianMixture,
    algorithm: str,
    steps: int,
    num_samples: int,
    seed: int = 0,
    reference: Tensor | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Draw ``num_samples`` with ``Sampler(algorithm, steps, **options)`` (float64, one batch) and
    return ``{"algorithm", "steps", "nfe", "error", "seconds"}``."""
    sampler = Sampler(algorithm, int(steps), **options)
    start = time.perf_counter()
    result = sampler(
        denoiser,
        schedule,
        (num_samples, mixture.dim),
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(seed),
    )
    return {
        "algorithm": algorithm,
        "steps": int(steps),
        "nfe": int(result.nfe),
        "error": distance(result.samples, mixture, reference),
        "seconds": time.perf_counter() - start,
    }


def nfe_sweep(
    denoiser: DenoiserFn,
    schedule: NoiseSchedule,
    mixture: GaussianMixture,
    algorithms: Iterable[str],
    steps: Sequence[int],
    num_samples: int,
    seed: int = 0,
    reference: Tensor | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """``evaluate`` every algorithm at every step count (the same seed throughout: common random
    numbers make the curves smooth). ``options[algorithm]`` are extra sampler options."""
    records = []
    for algorithm in algorithms:
        for n in steps:
            record = evaluate(
                denoiser,
                schedule,
                mixture,
                algorithm,
                n,
                num_samples,
                seed,
                reference,
                **(options or {}).get(algorithm, {}),
            )
            records.append(record)
            if progress is not None:
                progress(record)
    return records


def fid_versus_nfe(
    module: Any,
    datamodule: Any,
    algorithms: Iterable[str],
    nfes: Sequence[int],
    num_samples: int,
    seed: int = 0,
    batch_size: int = 500,
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    options: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    kid_subsets: int = 100,
) -> list[dict[str, Any]]:
    """FID of a trained image model's samples against NFE, for every algorithm at every target
    NFE in ``nfes``.

    ``module``: a ``DiffusionModule`` (its EMA weights sample) on ``device``; ``datamodule`` its
    data, whose train split is the reference (``difforge.metrics.images.image_metrics``: the
    digits classifier's features for digits, statistics cached in ``cache_dir``). Each algorithm
    runs ``Sampler.steps_for_nfe`` steps (the most whose NFE on the model's schedule does not
    exceed the target) with its defaults for that schedule and ``options[algorithm]``, from
    the same seed. KID uses ``kid_subsets`` subsets of ``min(1000, num_samples)`` (on a CPU,
    100 take longer than the FID and the sampling at low NFE).

    Returns one record per (algorithm, target): ``algorithm``, ``nfe_target``, ``steps``,
    ``nfe`` (network evaluations per sample, counted), ``error`` (FID), ``kid_mean``,
    ``class_coverage`` (nan without a classifier) and ``seconds`` (sampling).

    Raises:
        ValueError: a target NFE below 1, or below the NFE of one step of an algorithm.
    """
    from difforge.metrics.features import feature_network_for
    from difforge.metrics.images import image_metrics

    if any(int(nfe) < 1 for nfe in nfes):
        raise ValueError(f"target NFEs must be >= 1, got {list(nfes)}")
    device = torch.device(device)
    feature = feature_network_for(datamodule)
    records = []
    for algorithm in algorithms:
        for target in nfes:
            sampler = Sampler(algorithm, 1, **(options or {}).get(algorithm, {}))
            sampler = sampler.replace(steps=sampler.steps_for_nfe(int(target), module.schedule))
            start = time.perf_counter()
            result = module.generate(
                num_samples,
                sampler=sampler,
                generator=torch.Generator(device=device).manual_seed(seed),
                batch_size=batch_size,
            )
            seconds = time.perf_counter() - start
            metrics = image_metrics(
                result.samples,
                datamodule,
                seed=seed,
                feature=feature,
                cache_dir=cache_dir,
                kid_subset_size=min(1000, num_samples),
                kid_subsets=kid_subsets,
                device=device,
            )
            record = {
                "algorithm": algorithm,
                "nfe_target": int(target),
                "steps": sampler.steps,
                "nfe": int(result.nfe),
                "error": float(metrics["fid"]),
                "kid_mean": float(metrics["kid_mean"]),
                "class_coverage": float(metrics.get("class_coverage", math.nan)),
                "seconds": seconds,
            }
            records.append(record)
            if progress is not None:
                progress(record)
    return records


def smallest_steps_reaching(
    denoiser: DenoiserFn,
    schedule: NoiseSchedule,
    mixture: GaussianMixture,
    algorithm: str,
    threshold: float,
    num_samples: int,
    records: Sequence[dict[str, Any]] = (),
    max_steps: int = 1000,
    seed: int = 0,
    reference: Tensor | None = None,
    **options: Any,
) -> dict[str, Any] | None:
    """The evaluation with the fewest steps whose error is <= ``threshold`` (None if even
    ``max_steps`` does not get there).

    Starts from the sweep's ``records`` of ``algorithm`` (the first passing step count and the
    largest failing one below it; doubling when none passes), then bisects on the step count,
    so it assumes the error falls monotonically with the steps in between.
    """
    cache = {r["steps"]: r for r in records if r["algorithm"] == algorithm}

    def run(steps: int) -> dict[str, Any]:
        if steps not in cache:
            cache[steps] = evaluate(
                denoiser,
                schedule,
                mixture,
                algorithm,
                steps,
                num_samples,
                seed,
                reference,
                **options,
            )
        return cache[steps]

    passing = sorted(s for s, r in cache.items() if r["error"] <= threshold)
    if passing:
        hi = passing[0]
    else:
        hi = max(cache, default=1)
        while run(hi)["error"] > threshold:
            if hi >= max_steps:
                return None
            hi = min(2 * hi, max_steps)
    lo = max((s for s in cache if s < hi and cache[s]["error"] > threshold), default=0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if run(mid)["error"] <= threshold:
            hi = mid
        else:
            lo = mid
    return run(hi)


def markdown_table(
    records: Sequence[dict[str, Any]],
    algorithms: Sequence[str],
    value: str = "error",
    column: str = "steps",
    label: str | None = None,
) -> str:
    """A markdown table of a sweep: one row per algorithm, one column per distinct
    ``record[column]`` (the step count, or a target NFE), each cell ``record[value]`` followed
    by ``(NFE n)`` where the NFE counted differs from the column's number (two evaluations per
    step for Heun and DPM-Solver++(2S)). ``label`` heads the columns (default: ``column``)."""
    keys = sorted({r[column] for r in records})
    by_key = {(r["algorithm"], r[column]): r for r in records}
    lines = [
        f"| sampler \\ {label or column} | " + " | ".join(str(k) for k in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for algorithm in algorithms:
        cells = []
        for key in keys:
            record = by_key.get((algorithm, key))
            if record is None:
                cells.append("")
                continue
            nfe = "" if record["nfe"] == key else f" (NFE {record['nfe']})"
            cells.append(f"{record[value]:.4f}{nfe}")
        lines.append(f"| {algorithm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
