"""The exact-posterior leaderboard: every posterior sampler against the exact mixture posterior.

On the test bed of Cardoso et al. 2024 (MCGdiff, ICLR 2024, sec. 4: a 25-component mixture on a
5 x 5 grid, a random ``A``; ``difforge.posterior.testbed``) the posterior of ``x`` given
``y = A x + sigma_y n`` is a Gaussian mixture known in closed form (``difforge.posterior.exact``),
and the prior's denoiser is exact. What separates the methods is then only each method's own
approximation and discretisation, measured as the sliced Wasserstein distance of its samples to
exact posterior samples (``difforge.posterior.metrics``), next to the floor: the distance between
two sets of exact posterior samples of the same size, which no sampler can beat. The posterior
weight of each mixture component, estimated from the samples, shows where DPS-type methods go
wrong (they put the posterior's mass on the wrong modes).

- ``Problem`` / ``cardoso`` / ``masked``: one draw of the test bed, with its exact posterior;
  ``masked`` observes ``d_y`` coordinates instead (inpainting, where RePaint applies), with the
  draw's ``sigma_y`` (``mask``) or none (``mask_exact``: RePaint's setting).
- ``IsotropicMixtureDenoiser``: the exact denoiser of a mixture whose components share one
  isotropic standard deviation, through matrix products (``GaussianMixtureOracle``, the general
  diagonal case, broadcasts ``(N, K, D)`` and takes seconds per call at ``d_x = 800``).
- ``run_difforge`` / ``score``: one method on one problem at a budget of network evaluations.
- ``leaderboard`` / ``smc_sweep``: the runs; ``summarize`` and the ``*_table`` functions: mean and
  1.96 x standard error over the problem draws, as markdown.

``scripts/bench_posterior.py`` is the entry point.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from difforge.diffusion.gaussian_mixture import GaussianMixture
from difforge.diffusion.schedules import LinearSchedule, NoiseSchedule
from difforge.diffusion.sigma_grids import sigma_grid
from difforge.posterior import exact, metrics, testbed
from difforge.posterior.operators.base import LinearOperator
from difforge.posterior.operators.mask import MaskOperator
from difforge.posterior.samplers.registry import POSTERIORS, posterior_sample

Row = dict[str, Any]
DIMS: tuple[int, ...] = (8, 80, 800)
D_YS: tuple[int, ...] = (1, 2, 4)


def schedule() -> NoiseSchedule:
    """DDPM's linear schedule (Ho et al. 2020: 1000 steps, betas 1e-4 to 0.02), on which DPS,
    PiGDM, DDRM, DDNM, RePaint and MCGdiff were all published; the peers use it too."""
    return LinearSchedule(1000, 1e-4, 0.02)


@dataclass(frozen=True)
class Problem:
    """One draw of a test-bed problem and its exact posterior.

    Attributes:
        kind: ``cardoso`` (random ``A``) or ``mask`` (observes ``d_y`` coordinates).
        mixture: the prior, ``d_x``-dimensional.
        operator: ``A``; ``y``: ``(1, d_y)``; ``sigma_y``: the measurement noise (>= 0).
        posterior: the exact posterior (``difforge.posterior.exact.mixture_posterior``).
        x_true: ``(1, d_x)``, the signal ``y`` was measured from.
    """

    kind: str
    d_x: int
    d_y: int
    seed: int
    mixture: GaussianMixture
    operator: LinearOperator
    sigma_y: float
    y: Tensor
    x_true: Tensor
    posterior: Any


def cardoso(d_x: int, d_y: int, seed: int) -> Problem:
    """Draw ``seed`` of the test bed of Cardoso et al. 2024 (``testbed.cardoso_problem``)."""
    drawn = testbed.cardoso_problem(d_x, d_y, seed)
    return Problem(
        "cardoso",
        d_x,
        d_y,
        seed,
        drawn.mixture,
        drawn.operator(),
        float(drawn.sigma_y),
        drawn.y.reshape(1, -1),
        drawn.x_true.reshape(1, -1),
        drawn.posterior(),
    )


def masked(d_x: int, d_y: int, seed: int, sigma_y: float | None = None) -> Problem:
    """The test bed's prior and signal of draw ``seed`` measured through a mask that observes
    ``d_y`` coordinates drawn at random (inpainting), with the draw's ``sigma_y`` or the one
    given (``mask_exact``: 0, RePaint's setting)."""
    base = cardoso(d_x, d_y, seed)
    sigma_y = base.sigma_y if sigma_y is None else sigma_y
    generator = torch.Generator().manual_seed(10_000 + seed)
    mask = torch.zeros(d_x, dtype=torch.bool)
    mask[torch.randperm(d_x, generator=generator)[:d_y]] = True
    operator = MaskOperator(mask)
    y = operator.measure(base.x_true, sigma_y, generator)
    posterior = exact.mixture_posterior(base.mixture, operator.matrix(), y[0], sigma_y)
    kind = "mask_exact" if sigma_y == 0 else "mask"
    return Problem(kind, d_x, d_y, seed, base.mixture, operator, sigma_y, y, base.x_true, posterior)


PROBLEMS: dict[str, Callable[[int, int, int], Problem]] = {
    "cardoso": cardoso,
    "mask": masked,
    "mask_exact": lambda d_x, d_y, seed: masked(d_x, d_y, seed, sigma_y=0.0),
}


class IsotropicMixtureDenoiser(torch.nn.Module):
    """The exact denoiser ``E[x_0 | x_0 + sigma eps = x]`` of a mixture whose components all have
    the standard deviation ``s`` in every coordinate (the test bed's identity covariances).

    With a shared isotropic variance the responsibilities depend on ``x`` only through
    ``x . mu_k``: ``r = softmax(log pi_k + (x . mu_k - |mu_k|^2 / 2) / (s^2 + sigma^2))``, and
    Tweedie's formula reads ``D = r mu + s^2 / (s^2 + sigma^2) (x - r mu)``: two ``(N, D) x
    (D, K)`` products instead of the ``(N, K, D)`` tensor of ``GaussianMixture.denoise`` (same
    values, tested against it). Signature of ``difforge.diffusion.samplers.common.DenoiserFn``:
    ``x: (N, *shape)``, ``sigma: (N,)`` or a scalar (``inf`` gives the mixture's mean);
    float64 inside, the input's dtype out.

    Raises:
        ValueError: components whose standard deviations differ.
    """

    learned_variance = False

    def __init__(self, mixture: GaussianMixture) -> None:
        super().__init__()
        stds = mixture.stds
        if not torch.allclose(stds, stds.flatten()[0].expand_as(stds), rtol=0, atol=0):
            raise ValueError(
                "IsotropicMixtureDenoiser needs one shared standard deviation for every "
                f"component and coordinate, got values from {float(stds.min())} to {float(stds.max())}"
            )
        self.var0 = float(stds.flatten()[0]) ** 2
        self.log_weights = mixture.weights.log()
        self.means = mixture.means  # (K, D)
        self.half_sq_norms = 0.5 * (self.means**2).sum(-1)  # (K,)

    def forward(
        self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None
    ) -> Tensor:
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        sig = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1)
        var = self.var0 + sig**2
        means = self.means.to(x.device)
        logits = (
            self.log_weights.to(x.device) + (flat @ means.T - self.half_sq_norms.to(x.device)) / var
        )
        mean = torch.softmax(logits, dim=-1) @ means
        denoised = mean + (self.var0 / var) * (flat - mean)
        return denoised.to(x.dtype).reshape(x.shape)


class CountingDenoiser(torch.nn.Module):
    """A denoiser that counts its calls (network evaluations, NFE) and the rows it denoised."""

    def __init__(self, denoiser: Callable[..., Tensor]) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.calls = 0
        self.rows = 0

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        return self.denoiser(x, sigma, class_labels)


def steps_for(name: str, nfe: int, options: dict[str, Any]) -> int:
    """The most grid steps whose network evaluations per sample (``PosteriorSpec.nfe``: SMC
    counts every particle) fit in ``nfe``.

    Raises:
        ValueError: not even one step fits.
    """
    spec = POSTERIORS[name]
    if spec.nfe(1, **options) > nfe:
        raise ValueError(f"posterior={name} with {options}: one step takes more than {nfe} NFE")
    steps = 1
    # Up to the schedule's 1000 timesteps; SDEdit's count grows slower than its steps.
    while steps < 1000 and spec.nfe(steps + 1, **options) <= nfe:
        steps += 1
    return steps


def run_difforge(
    name: str, problem: Problem, steps: int, n: int, seed: int, **options: Any
) -> tuple[Tensor, CountingDenoiser]:
    """``n`` posterior samples of ``problem`` by method ``name`` in ``steps`` steps of DDPM's
    linear schedule at evenly spaced timesteps (``linspace``; ``schedule``), ending at 0.

    Returns the samples ``(n, d_x)`` and the counting denoiser (``calls``: the batched calls
    made, ``rows``: the rows denoised, all particles included).
    """
    sigmas = sigma_grid(schedule(), steps, "linspace")
    denoiser = CountingDenoiser(IsotropicMixtureDenoiser(problem.mixture))
    y = problem.y.expand(n, -1).clone()
    samples = posterior_sample(
        name,
        denoiser,
        y,
        problem.operator,
        problem.sigma_y,
        sigmas,
        generator=torch.Generator().manual_seed(seed),
        **options,
    )
    return samples.reshape(n, -1).to(torch.float64), denoiser


@dataclass
class Reference:
    """A problem's exact posterior samples, which every method is measured against, and the
    floor: the same metrics for a second, independent set of exact samples of the same size."""

    samples: Tensor
    floor_sw: float
    floor_weight_tv: float


def reference(problem: Problem, n: int) -> Reference:
    """``n`` exact posterior samples of ``problem`` and its floor (as ``metrics.exact_floor``,
    with the component-weight error too)."""
    gen = torch.Generator().manual_seed(20_000 + problem.seed)
    samples = problem.posterior.sample(n, gen)
    other = problem.posterior.sample(n, gen)
    floor = score(other, problem, Reference(samples, math.nan, math.nan))
    return Reference(samples, floor["sw"], floor["weight_tv"])


def score(samples: Tensor, problem: Problem, ref: Reference) -> dict[str, float]:
    """``sw``: the sliced Wasserstein distance to the reference exact samples (``metrics``'
    default projections: the same for every method); ``weight_tv``: the total-variation
    distance between the components' posterior weights as the samples have them
    (``metrics.component_weights``) and the exact ones, ``0.5 sum_k |w_hat_k - w_k|`` (0: the
    mass sits on the right modes; 1: on none of them). Non-finite samples score inf."""
    if not bool(torch.isfinite(samples).all()):
        return {"sw": math.inf, "weight_tv": math.inf}
    sw = metrics.sliced_wasserstein(samples, ref.samples)
    weights = metrics.component_weights(samples, problem.posterior)
    tv = 0.5 * float((weights - problem.posterior.weights.to(weights)).abs().sum())
    return {"sw": sw, "weight_tv": tv}


def leaderboard(
    methods: Sequence[str],
    dims: Iterable[tuple[int, int]],
    nfes: Sequence[int],
    draws: int,
    n: int,
    options: dict[str, dict[str, Any]] | None = None,
    log: Callable[[str], None] = print,
) -> list[Row]:
    """One row per method x (d_x, d_y) x NFE x draw, plus a ``method="exact"`` floor row per
    (d_x, d_y) x draw. A run that raises ``ValueError``/``RuntimeError`` scores inf and keeps its
    message (``error``)."""
    rows: list[Row] = []
    for d_x, d_y in dims:
        tick = time.perf_counter()
        for draw in range(draws):
            problem = cardoso(d_x, d_y, draw)
            ref = reference(problem, n)
            cell = {"d_x": d_x, "d_y": d_y, "draw": draw}
            rows.append(
                {
                    **cell,
                    "method": "exact",
                    "nfe": 0,
                    "nfe_used": 0,
                    "sw": ref.floor_sw,
                    "weight_tv": ref.floor_weight_tv,
                    "seconds": 0.0,
                }
            )
            for nfe in nfes:
                for name in methods:
                    opts = (options or {}).get(name, {})
                    rows.append(measure(name, problem, ref, n, draw, opts, nfe=nfe) | cell)
        log(f"d_x={d_x} d_y={d_y}: {draws} draws, {time.perf_counter() - tick:.0f} s")
    return rows


def label(name: str, options: dict[str, Any]) -> str:
    """``name`` with its options, e.g. ``mcgdiff (num_particles=4)``."""
    opts = ", ".join(f"{k}={v}" for k, v in options.items())
    return f"{name} ({opts})" if opts else name


def measure(
    name: str,
    problem: Problem,
    ref: Reference,
    n: int,
    seed: int,
    options: dict[str, Any],
    *,
    nfe: int | None = None,
    steps: int | None = None,
) -> Row:
    """One method on one problem within ``nfe`` evaluations per sample (or in ``steps`` steps),
    scored (see ``leaderboard``). ``nfe`` in the row is the budget; ``nfe_used`` the method's
    evaluations per sample by the registry's count, ``calls`` the denoiser calls counted."""
    start = time.perf_counter()
    row: Row = {"method": label(name, options), "nfe": nfe, "options": options}
    try:
        if steps is None:
            assert nfe is not None
            steps = steps_for(name, nfe, options)
        samples, counter = run_difforge(name, problem, steps, n, seed, **options)
        row |= score(samples, problem, ref) | {
            "steps": steps,
            "nfe_used": POSTERIORS[name].nfe(steps, **options),
            "calls": counter.calls,
            "rows_per_sample": counter.rows / n,
        }
    except (ValueError, RuntimeError) as exc:
        row |= {"sw": math.inf, "weight_tv": math.inf, "calls": 0, "error": str(exc)[:200]}
    return row | {"seconds": time.perf_counter() - start}


def smc_sweep(
    name: str,
    particles: Sequence[int],
    dims: Iterable[tuple[int, int]],
    steps: int,
    draws: int,
    n: int,
    log: Callable[[str], None] = print,
) -> list[Row]:
    """The SMC sampler ``name`` in ``steps`` steps at each particle count (option
    ``num_particles``; its NFE per sample grows with it), with the floor rows
    (``method="exact"``) of the same sample size."""
    rows: list[Row] = []
    for d_x, d_y in dims:
        tick = time.perf_counter()
        for draw in range(draws):
            problem = cardoso(d_x, d_y, draw)
            ref = reference(problem, n)
            cell = {"d_x": d_x, "d_y": d_y, "draw": draw}
            rows.append(
                {
                    **cell,
                    "method": "exact",
                    "num_particles": 0,
                    "sw": ref.floor_sw,
                    "weight_tv": ref.floor_weight_tv,
                }
            )
            for count in particles:
                options = {"num_particles": count}
                row = measure(name, problem, ref, n, draw, options, steps=steps)
                rows.append(row | cell | {"num_particles": count})
        log(f"{name} d_x={d_x} d_y={d_y}: {draws} draws, {time.perf_counter() - tick:.0f} s")
    return rows


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 1.96 x standard error over the draws (``metrics.mean_and_interval``); inf when a
    run failed."""
    if any(not math.isfinite(v) for v in values):
        return math.inf, math.inf
    return metrics.mean_and_interval(list(values))


def summarize(rows: Sequence[Row], keys: Sequence[str]) -> list[Row]:
    """Mean and 1.96 SE of ``sw`` and ``weight_tv`` over the draws, per distinct ``keys``."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for key, group in groups.items():
        sw, sw_ci = mean_ci([r["sw"] for r in group])
        tv, tv_ci = mean_ci([r["weight_tv"] for r in group])
        calls = max(int(r.get("nfe_used") or 0) for r in group)
        errors = sorted({r["error"] for r in group if "error" in r})
        out.append(
            dict(zip(keys, key, strict=True))
            | {
                "sw": sw,
                "sw_ci": sw_ci,
                "weight_tv": tv,
                "weight_tv_ci": tv_ci,
                "nfe_used": calls,
                "draws": len(group),
                "errors": errors,
            }
        )
    return out


def fmt(mean: float, ci: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "fails"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"


def leaderboard_table(summary: Sequence[Row], metric: str = "sw") -> str:
    """Markdown: one row per method x NFE, one column per (d_x, d_y), ``metric`` mean ± 1.96 SE;
    the exact-sample floor first; the best method of each column in bold."""
    cells = list(dict.fromkeys((r["d_x"], r["d_y"]) for r in summary))
    lookup = {(r["method"], r["nfe"], r["d_x"], r["d_y"]): r for r in summary}
    lines = [
        "| method | NFE | " + " | ".join(f"d_x={dx}, d_y={dy}" for dx, dy in cells) + " |",
        "|" + " --- |" * (2 + len(cells)),
    ]
    best = {
        cell: min(
            (r[metric] for r in summary if (r["d_x"], r["d_y"]) == cell and r["method"] != "exact"),
            default=math.inf,
        )
        for cell in cells
    }
    floor = [lookup.get(("exact", 0, dx, dy)) for dx, dy in cells]
    lines.append(
        "| exact samples (floor) | - | "
        + " | ".join(fmt(r[metric], r[f"{metric}_ci"]) if r else "-" for r in floor)
        + " |"
    )
    keys = dict.fromkeys((r["method"], r["nfe"]) for r in summary if r["method"] != "exact")
    for method, nfe in sorted(keys, key=lambda k: (k[1], k[0])):
        out = []
        for dx, dy in cells:
            r = lookup.get((method, nfe, dx, dy))
            text = fmt(r[metric], r[f"{metric}_ci"]) if r else "-"
            out.append(f"**{text}**" if r and r[metric] == best[(dx, dy)] else text)
        lines.append(f"| {method} | {nfe} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def smc_table(summary: Sequence[Row]) -> str:
    """Markdown: the SMC sampler's SW per particle count and (d_x, d_y), with the floor and the
    ratio to it."""
    lines = [
        "| d_x | d_y | particles | NFE | SW (mean ± 1.96 SE) | floor | SW / floor |",
        "|" + " --- |" * 7,
    ]
    floors = {(r["d_x"], r["d_y"]): r for r in summary if r["method"] == "exact"}
    for r in summary:
        if r["method"] == "exact":
            continue
        floor = floors[(r["d_x"], r["d_y"])]
        ratio = r["sw"] / floor["sw"] if math.isfinite(r["sw"]) else math.inf
        lines.append(
            f"| {r['d_x']} | {r['d_y']} | {r['num_particles']} | {r['nfe_used']} | "
            f"{fmt(r['sw'], r['sw_ci'])} | {fmt(floor['sw'], floor['sw_ci'])} | {ratio:.2f} |"
        )
    return "\n".join(lines)


def is_smc(spec: Any) -> bool:
    """A sequential Monte Carlo method: its function takes the ``num_particles`` option."""
    return "num_particles" in inspect.signature(spec.fn).parameters


def report(rows: Sequence[Row], smc_rows: Sequence[Row], smc: str | None, header: str) -> str:
    """The leaderboard's markdown: SW and component-weight error per method x NFE x (d_x, d_y),
    failed runs, and the SMC sweep with its ratio to the floor."""
    summary = summarize(rows, ("method", "nfe", "d_x", "d_y"))
    parts = [
        header,
        "## Sliced Wasserstein to the exact posterior (mean ± 1.96 SE over the draws)\n",
        leaderboard_table(summary, "sw"),
        "\n## Components' posterior weights: total-variation error (mean ± 1.96 SE)\n",
        leaderboard_table(summary, "weight_tv"),
    ]
    failed = [r for r in summary if r["errors"]]
    if failed:
        parts.append("\nRuns that failed (scored inf):\n")
        parts += [
            f"- {r['method']} NFE {r['nfe']} d_x={r['d_x']} d_y={r['d_y']}: {r['errors'][0]}"
            for r in failed
        ]
    if smc is not None and smc_rows:
        parts += [
            f"\n## {smc}: SW against the particle count (mean ± 1.96 SE)\n",
            smc_table(summarize(smc_rows, ("method", "num_particles", "d_x", "d_y"))),
        ]
    return "\n".join(parts)


def write_results(
    results: dict[str, Any], args: Any, report: str, json_path: Path | None, markdown: Path | None
) -> None:
    """A benchmark script's outputs: ``results`` with its parsed ``args`` as JSON, the markdown
    ``report``; each only where its path is given."""
    results["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    if json_path:
        json_path.write_text(json.dumps(results, indent=1, default=str))
    if markdown:
        markdown.write_text(report + "\n")
