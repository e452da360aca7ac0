"""The peers' posterior samplers driven by the same exact denoiser on the same problems.

deepinv (0.5.0: ``deepinv.sampling.DPS``, ``DDRM``, ``DiffPIR``) and diffusers (RePaint:
``RePaintScheduler`` with its pipeline's loop) receive the exact mixture denoiser of the problem
(``posterior.IsotropicMixtureDenoiser``) through their own model interface, so that each peer's
error is its algorithm's, as for difforge's methods.

Conventions, read off the peers' code:

- deepinv's denoisers take images in ``[0, 1]``: ``denoiser(u, sigma)`` with ``u = u_0 + sigma n``
  (a VE noise level in the same units; the samplers map their ``[-1, 1]`` states there, e.g.
  ``MinusOneOneDenoiserWrapper``), and its samplers clamp the denoised estimate to their range
  (DiffPIR to ``[-1, 1]``, DPS to ``[-1, 1]`` in ``[0, 1]`` units). The test bed's signals span
  about ``[-12, 12]``, so the deepinv side sees them in ``[0, 1]`` units,
  ``u = x / (2 c) + 1 / 2`` with ``c = DEEPINV_HALF_RANGE`` (``|x| <= c`` for all but a
  negligible fraction of the prior), the measurement ``A u = y / (2 c) + A 1 / 2`` with noise
  ``sigma_y / (2 c)``, and the samples are mapped back. ``A`` is handed over as a
  ``DecomposablePhysics`` from its SVD (DDRM needs it; DPS and DiffPIR only use ``A``, ``A^T``
  and the proximal step, which it gives in closed form).
- diffusers' RePaint works on the VP latent with the noise prediction
  ``eps = (x_t - sqrt(abar) D(x_t / sqrt(abar), sigma)) / sqrt(1 - abar)``
  (``diffusers_peer.exact_eps``), ``clip_sample`` off (so no rescaling is needed), DDPM's
  linear betas as difforge's ``LinearSchedule``, ``eta = 1`` (RePaint's DDPM steps). Its known
  part is the measurement itself: RePaint assumes ``sigma_y = 0``.

NFE: each peer's denoiser calls are counted (``CountingDenoiser``); a run at a budget ``nfe``
takes the largest setting whose count is at most ``nfe`` (``PEERS``). Every peer runs on a
batch of ``n`` samples of one measurement, in float64 where the peer allows (deepinv's
denoiser calls are cast to float32 by deepinv and back to float64 by the wrapper).

deepinv is optional (not a dependency of difforge): ``deepinv_available`` says whether it can
be imported; see ``scripts/bench_posterior_peers.py`` for how to install it beside difforge.
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from difforge.benchmarks import posterior as bench
from difforge.benchmarks.diffusers_peer import check_alphas_cumprod, exact_eps, schedule_kwargs
from difforge.benchmarks.posterior import (
    CountingDenoiser,
    IsotropicMixtureDenoiser,
    Problem,
    Row,
    schedule,
)
from difforge.posterior.operators.mask import MaskOperator
from difforge.posterior.samplers.registry import POSTERIORS

# Half the range of the signals handed to deepinv in [0, 1] units: the test bed's means lie in
# [-8, 8] (Cardoso et al. 2024), with unit standard deviation: a coordinate leaves [-12, 12] with
# probability below P(N(0, 1) > 4) = 3.2e-5.
DEEPINV_HALF_RANGE = 12.0
INSTALL_DEEPINV = (
    "deepinv is not importable: /work/main/.venv/bin/python -m pip install --target DIR --no-deps "
    "deepinv==0.5.0 einops natsort h5py, then PYTHONPATH=src:DIR"
)


def deepinv_available() -> bool:
    return importlib.util.find_spec("deepinv") is not None


@dataclass(frozen=True)
class PeerConfig:
    """One peer configuration: ``family`` (the algorithm: ``dps``, ``ddrm``, ``diffpir``,
    ``repaint``), the library, and the options handed to the peer's constructor."""

    family: str
    library: str
    options: dict[str, Any] = field(default_factory=dict)
    needs_mask: bool = False

    @property
    def label(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.library}.{self.family}" + (f" ({opts})" if opts else "")


def peer_configs(deepinv: bool = True) -> list[PeerConfig]:
    """Each peer at its defaults and along its main knob: deepinv DPS's guidance ``weight``
    (default 1, ``norm`` guidance as in Chung et al. 2023), DDRM's ``eta`` (default 0.85, Kawar
    et al. 2022), DiffPIR's ``lambda_`` and ``zeta`` (defaults 7 and 0.1, Zhu et al. 2023 use
    ``lambda`` in [3, 25]); RePaint's resampling (``jump_length``, ``jump_n_sample``: Lugmayr
    et al. 2022 use 10 and 10; 1 and 1 is no resampling)."""
    configs = []
    if deepinv:
        configs += [PeerConfig("dps", "deepinv", {"weight": w}) for w in (1.0, 0.3, 3.0)]
        configs += [PeerConfig("ddrm", "deepinv", {"eta": e}) for e in (0.85, 1.0)]
        configs += [
            PeerConfig("diffpir", "deepinv", {"lambda_": lam, "zeta": z})
            for lam, z in ((7.0, 0.1), (3.0, 0.3), (25.0, 0.1))
        ]
    configs += [
        PeerConfig("repaint", "diffusers", {"jump_length": j, "jump_n_sample": r}, True)
        for j, r in ((1, 1), (10, 10), (5, 2))
    ]
    return configs


class UnitRangeDenoiser(torch.nn.Module):
    """The exact denoiser in deepinv's ``[0, 1]`` units: ``u = x / scale + 1 / 2``, noise level
    ``sigma_u = sigma_x / scale``; counts its calls."""

    def __init__(self, denoiser: CountingDenoiser, scale: float) -> None:
        super().__init__()
        self.counter = denoiser
        self.scale = scale

    def forward(self, u: Tensor, sigma: Any, *args: Any, **kwargs: Any) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=u.device).flatten()
        x = (u.to(torch.float64) - 0.5) * self.scale
        sigma_x = (sigma * self.scale).expand(u.shape[0])
        return (self.counter(x, sigma_x) / self.scale + 0.5).to(u.dtype)


def decomposable_physics(A: Tensor, sigma_y: float) -> Any:
    """``A: (d_y, d_x)`` as deepinv's ``DecomposablePhysics`` ``A = U diag(mask) V^T`` on flat
    ``(N, d_x)`` signals: ``V^T x`` and ``U^T y`` padded to ``d_x`` coefficients, ``mask`` the
    singular values padded with zeros; Gaussian noise ``sigma_y``."""
    import deepinv as dinv

    d_y, d_x = A.shape
    U, s, Vh = torch.linalg.svd(A.to(torch.float64), full_matrices=True)
    mask = torch.zeros(1, d_x, dtype=torch.float64)
    mask[0, : s.numel()] = s

    def V_adjoint(x: Tensor) -> Tensor:
        return (x.to(torch.float64) @ Vh.T).to(x.dtype)

    def V(z: Tensor) -> Tensor:
        return (z.to(torch.float64) @ Vh).to(z.dtype)

    def U_fn(z: Tensor) -> Tensor:
        return (z[:, :d_y].to(torch.float64) @ U.T).to(z.dtype)

    def U_adjoint(y: Tensor) -> Tensor:
        out = torch.zeros(y.shape[0], d_x, dtype=y.dtype, device=y.device)
        out[:, :d_y] = (y.to(torch.float64) @ U).to(y.dtype)
        return out

    return dinv.physics.DecomposablePhysics(
        U=U_fn,
        U_adjoint=U_adjoint,
        V=V,
        V_adjoint=V_adjoint,
        mask=mask,
        noise_model=dinv.physics.GaussianNoise(sigma=sigma_y),
    )


def run_deepinv(
    config: PeerConfig, problem: Problem, nfe: int, n: int, seed: int
) -> tuple[Tensor, int]:
    """``n`` samples of ``problem`` by a deepinv sampler within ``nfe`` denoiser calls.

    Returns the samples ``(n, d_x)`` in the problem's units and the calls made."""
    import deepinv as dinv

    scale = 2 * DEEPINV_HALF_RANGE
    A = problem.operator.matrix().to(torch.float64)
    physics = decomposable_physics(A, problem.sigma_y / scale)
    y_u = (problem.y / scale + 0.5 * A.sum(1)).expand(n, -1).clone()
    counter = CountingDenoiser(IsotropicMixtureDenoiser(problem.mixture))
    denoiser = UnitRangeDenoiser(counter, scale)
    torch.manual_seed(seed)  # DDRM and DiffPIR draw from the global generator
    opts = dict(config.options)
    if config.family == "dps":
        # The DDPM solver makes one call per step between num_steps timesteps (no final call).
        model = dinv.sampling.DPS(
            denoiser,
            num_steps=nfe + 1,
            dtype=torch.float64,
            rng=torch.Generator().manual_seed(seed),
            **opts,
        )
        u = model(y_u, physics, x_init=(n, problem.d_x), seed=seed)
    elif config.family == "ddrm":
        import numpy as np

        model = dinv.sampling.DDRM(denoiser, sigmas=np.linspace(1, 0, nfe), **opts)
        u = model(y_u, physics)
    elif config.family == "diffpir":
        model = dinv.sampling.DiffPIR(
            denoiser,
            dinv.optim.data_fidelity.L2(),
            sigma=problem.sigma_y / scale,
            max_iter=nfe,
            **opts,
        )
        u = model(y_u, physics)
    else:
        raise ValueError(f"unknown deepinv family {config.family!r}")
    if counter.calls > nfe:
        raise RuntimeError(f"{config.label}: {counter.calls} calls for a budget of {nfe}")
    return ((u.to(torch.float64) - 0.5) * scale).reshape(n, -1), counter.calls


def repaint_nfe(steps: int, jump_length: int, jump_n_sample: int) -> int:
    """The model calls of RePaint's loop: the downward moves of ``set_timesteps``' schedule."""
    from diffusers import RePaintScheduler

    scheduler: Any = RePaintScheduler()
    scheduler.set_timesteps(steps, jump_length, jump_n_sample)
    t = scheduler.timesteps
    return 1 + int((t[1:] < t[:-1]).sum())


def repaint_steps(nfe: int, jump_length: int, jump_n_sample: int) -> int:
    """The most inference steps whose RePaint loop makes at most ``nfe`` calls (0: none fits)."""
    best = 0
    for steps in range(1, min(nfe, 1000) + 1):
        if repaint_nfe(steps, jump_length, jump_n_sample) <= nfe:
            best = steps
    return best


def run_repaint(
    config: PeerConfig, problem: Problem, nfe: int, n: int, seed: int
) -> tuple[Tensor, int]:
    """``n`` samples by diffusers' RePaint (the loop of its ``RePaintPipeline``, without the
    image conversion) within ``nfe`` calls; ``problem`` must be measured through a mask."""
    from diffusers import RePaintScheduler

    operator = problem.operator
    if not isinstance(operator, MaskOperator):
        raise ValueError("RePaint needs an inpainting mask operator")
    jump_length, jump_n_sample = config.options["jump_length"], config.options["jump_n_sample"]
    steps = repaint_steps(nfe, jump_length, jump_n_sample)
    if steps == 0:
        raise ValueError(f"{config.label}: no RePaint schedule fits {nfe} calls")
    ddpm = schedule()
    kwargs = schedule_kwargs(ddpm)
    del kwargs["prediction_type"]  # RePaint predicts the noise, always
    scheduler: Any = RePaintScheduler(**kwargs, eta=1.0, clip_sample=False)
    check_alphas_cumprod(scheduler, ddpm)
    scheduler.set_timesteps(steps, jump_length, jump_n_sample)
    counter = CountingDenoiser(IsotropicMixtureDenoiser(problem.mixture))
    mask = operator.mask.reshape(1, -1).to(torch.float64)
    known = operator.adjoint(problem.y).reshape(1, -1).to(torch.float64)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, problem.d_x, generator=generator, dtype=torch.float64)
    t_last = scheduler.timesteps[0] + 1
    for t in scheduler.timesteps:
        if t < t_last:
            abar = float(scheduler.alphas_cumprod[int(t)])
            # Any denoiser with the oracle's signature serves exact_eps.
            eps = exact_eps(counter, x, math.sqrt((1 - abar) / abar))  # type: ignore[arg-type]
            x = scheduler.step(eps, t, x, known, mask, generator).prev_sample
        else:
            x = scheduler.undo_step(x, t_last, generator)
        t_last = t
    return x, counter.calls


RUNNERS: dict[str, Callable[[PeerConfig, Problem, int, int, int], tuple[Tensor, int]]] = {
    "deepinv": run_deepinv,
    "diffusers": run_repaint,
}


# The knobs swept on both sides where difforge's method has the peer's: DPS's step scale
# (difforge's zeta, deepinv's weight: both zeta' of Chung et al. 2023, alg. 1), DDRM's eta and
# RePaint's resampling (diffusers' jump_n_sample is difforge's resamplings).
DIFFORGE_VARIANTS: dict[str, list[dict[str, Any]]] = {
    "dps": [{"zeta": 0.3}, {"zeta": 3.0}],
    "ddrm": [{"eta": 0.85}],  # the paper's (difforge's default is 1)
    "repaint": [{"jump_length": 1, "resamplings": 1}, {"jump_length": 5, "resamplings": 2}],
}


def difforge_configs(methods: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """Each method at its defaults, then its ``DIFFORGE_VARIANTS``."""
    return [
        (name, options) for name in methods for options in [{}, *DIFFORGE_VARIANTS.get(name, [])]
    ]


# difforge's method that runs the same algorithm as a peer family (DiffPIR has none).
COUNTERPARTS = {"dps": "dps", "ddrm": "ddrm", "repaint": "repaint"}


def compare(
    kinds: Sequence[str],
    dims: Iterable[tuple[int, int]],
    nfes: Sequence[int],
    draws: int,
    n: int,
    methods: Sequence[str],
    configs: Sequence[PeerConfig],
    log: Callable[[str], None] = print,
) -> list[Row]:
    """One row per (problem kind, d_x, d_y, draw, NFE) x (difforge method | peer configuration),
    plus the floor rows (``side="exact"``); the same problems, reference samples and
    projections for both sides. Methods and configurations that need a mask run on ``mask``
    problems only; a run that raises scores inf and keeps its message."""
    rows: list[Row] = []
    for kind in kinds:
        for d_x, d_y in dims:
            tick = time.perf_counter()
            for draw in range(draws):
                problem = bench.PROBLEMS[kind](d_x, d_y, draw)
                ref = bench.reference(problem, n)
                cell = {"kind": kind, "d_x": d_x, "d_y": d_y, "draw": draw}
                rows.append(
                    cell
                    | {
                        "side": "exact",
                        "family": "exact",
                        "config": "exact",
                        "method": "exact",
                        "nfe": 0,
                        "sw": ref.floor_sw,
                        "weight_tv": ref.floor_weight_tv,
                    }
                )
                for nfe in nfes:
                    for name, options in difforge_configs(methods):
                        if POSTERIORS[name].needs_mask and not problem.operator.is_mask:
                            continue
                        row = bench.measure(name, problem, ref, n, draw, options, nfe=nfe)
                        label = PeerConfig(name, "difforge", options).label
                        rows.append(
                            row | cell | {"side": "difforge", "family": name, "config": label}
                        )
                    for config in configs:
                        if config.needs_mask and not problem.operator.is_mask:
                            continue
                        rows.append(measure_peer(config, problem, ref, nfe, n, draw) | cell)
            log(f"{kind} d_x={d_x} d_y={d_y}: {draws} draws, {time.perf_counter() - tick:.0f} s")
    return rows


def measure_peer(
    config: PeerConfig, problem: Problem, ref: bench.Reference, nfe: int, n: int, seed: int
) -> Row:
    start = time.perf_counter()
    row: Row = {
        "side": config.library,
        "family": config.family,
        "config": config.label,
        "method": config.label,
        "nfe": nfe,
    }
    try:
        samples, calls = RUNNERS[config.library](config, problem, nfe, n, seed)
        row |= bench.score(samples, problem, ref) | {"nfe_used": calls}
    except (ValueError, RuntimeError) as exc:
        row |= {"sw": math.inf, "weight_tv": math.inf, "nfe_used": 0, "error": str(exc)[:200]}
    return row | {"seconds": time.perf_counter() - start}


KEYS = ("kind", "side", "family", "config", "nfe", "d_x", "d_y")


def _best(group: Iterable[Row]) -> Row | None:
    return min(group, key=lambda r: r["sw"], default=None)


def _cells(summary: Sequence[Row]) -> list[tuple[str, int, int, int]]:
    return list(
        dict.fromkeys(
            (r["kind"], r["nfe"], r["d_x"], r["d_y"]) for r in summary if r["side"] != "exact"
        )
    )


def headline_table(summary: Sequence[Row]) -> str:
    """Markdown: per problem kind x NFE x (d_x, d_y), difforge's best method against the best
    peer configuration, SW mean ± 1.96 SE and the ratio of the means (goal: <= 0.8)."""
    lines = [
        "| problem | NFE | d_x | d_y | difforge best | SW | peers' best | SW | ratio | floor |",
        "|" + " --- |" * 10,
    ]
    for kind, nfe, d_x, d_y in _cells(summary):
        here = [r for r in summary if (r["kind"], r["d_x"], r["d_y"]) == (kind, d_x, d_y)]
        ours = _best(r for r in here if r["side"] == "difforge" and r["nfe"] == nfe)
        theirs = _best(
            r for r in here if r["side"] not in ("difforge", "exact") and r["nfe"] == nfe
        )
        floor = next(r for r in here if r["side"] == "exact")
        if ours is None or theirs is None:
            continue
        lines.append(
            f"| {kind} | {nfe} | {d_x} | {d_y} | {ours['config']} | "
            f"{bench.fmt(ours['sw'], ours['sw_ci'])} | {theirs['config']} | "
            f"{bench.fmt(theirs['sw'], theirs['sw_ci'])} | **{_ratio(ours, theirs)}** | "
            f"{bench.fmt(floor['sw'], floor['sw_ci'])} |"
        )
    return "\n".join(lines)


def counterpart_table(summary: Sequence[Row]) -> str:
    """Markdown: each difforge method against the best configuration of the same algorithm in
    the peer library (goal: ratio <= 1)."""
    lines = [
        "| method | problem | NFE | d_x | d_y | difforge SW | peer's best (config) | peer SW | ratio |",
        "|" + " --- |" * 9,
    ]
    for family, ours_name in COUNTERPARTS.items():
        for kind, nfe, d_x, d_y in _cells(summary):
            here = [
                r
                for r in summary
                if (r["kind"], r["nfe"], r["d_x"], r["d_y"]) == (kind, nfe, d_x, d_y)
            ]
            ours = _best(r for r in here if r["side"] == "difforge" and r["family"] == ours_name)
            theirs = _best(r for r in here if r["side"] != "difforge" and r["family"] == family)
            if ours is None or theirs is None:
                continue
            lines.append(
                f"| {family} | {kind} | {nfe} | {d_x} | {d_y} | "
                f"{bench.fmt(ours['sw'], ours['sw_ci'])} | {theirs['config']} | "
                f"{bench.fmt(theirs['sw'], theirs['sw_ci'])} | {_ratio(ours, theirs)} |"
            )
    return "\n".join(lines)


def _ratio(ours: Row, theirs: Row) -> str:
    if not math.isfinite(ours["sw"]):
        return "inf"
    if not math.isfinite(theirs["sw"]):
        return "0 (peer fails)"
    return f"{ours['sw'] / theirs['sw']:.2f}"


def all_table(summary: Sequence[Row]) -> str:
    """Markdown: every difforge method and peer configuration, SW and weight error, per cell."""
    lines = [
        "| problem | NFE | d_x | d_y | method | NFE used | SW | weight TV |",
        "|" + " --- |" * 8,
    ]
    for r in sorted(summary, key=lambda r: (r["kind"], r["nfe"], r["d_x"], r["d_y"], r["sw"])):
        lines.append(
            f"| {r['kind']} | {r['nfe']} | {r['d_x']} | {r['d_y']} | {r['config']} | "
            f"{r['nfe_used']} | {bench.fmt(r['sw'], r['sw_ci'])} | "
            f"{bench.fmt(r['weight_tv'], r['weight_tv_ci'])} |"
        )
    return "\n".join(lines)


def report(rows: Sequence[Row], header: str) -> str:
    summary = bench.summarize(rows, KEYS)
    parts = [
        header,
        "## difforge's best method against the peers' best configuration (SW, mean ± 1.96 SE)\n",
        headline_table(summary),
        "\n## Each difforge method against the same algorithm in the peer library\n",
        counterpart_table(summary),
        "\n## Every run\n",
        all_table(summary),
    ]
    failed = [r for r in summary if r["errors"]]
    if failed:
        parts.append("\nRuns that failed (scored inf):\n")
        parts += [
            f"- {r['config']} {r['kind']} NFE {r['nfe']} d_x={r['d_x']} d_y={r['d_y']}: "
            f"{r['errors'][0]}"
            for r in failed
        ]
    return "\n".join(parts)
