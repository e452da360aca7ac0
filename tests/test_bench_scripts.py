"""Smoke tests of scripts/bench_*.py: each runs in a tiny setting and prints its tables.

The diffusers comparisons are skipped where diffusers is not importable.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def run_script(name: str, *args: str, timeout: float = 300) -> str:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
    )
    return result.stdout


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), SCRIPTS / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """The cells of the markdown table whose header line starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    assert set(lines[start + 1].replace("|", "").split()) == {"---"}
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def assert_header(text: str, script: str) -> None:
    assert text.startswith("machine: "), text[:200]
    assert f"command: python scripts/{script}" in text


# --- samplers ---------------------------------------------------------------------------------


def test_bench_samplers_difforge_only(tmp_path: Path) -> None:
    from difforge.diffusion.samplers import SAMPLERS

    out = run_script(
        "bench_samplers.py", "--quick", "--no-diffusers", "--json", str(tmp_path / "s.json")
    )
    assert_header(out, "bench_samplers.py")
    assert "Statistical floor" in out
    rows = table_rows(out, "| sampler | law | schedule | NFE |")
    assert {r[0] for r in rows} == set(SAMPLERS)  # every registered sampler, none hard-coded
    results = json.loads((tmp_path / "s.json").read_text())
    floor = results["floors"]["gmm1d"]
    assert 0 < floor["w1_mean"] < 0.2
    assert {r["side"] for r in results["search"] + results["headline"]} == {"difforge"}
    for row in results["headline"]:
        assert row["default"] and 0 <= row["w1"] < float("inf") and 0 <= row["mass_err"] <= 1
        assert 0 < row["nfe"] <= row["nfe_target"]
    grids = {r["config"].split()[0] for r in results["search"]}
    assert {"trailing", "karras"} <= grids
    # The search ranks each sampler's configurations: one table line per sampler and rank.
    choice = table_rows(out, "| sampler | schedule kind | rank |")
    assert {r[0] for r in choice} == set(SAMPLERS)


@pytest.mark.slow
def test_bench_samplers_against_diffusers(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    out = run_script(
        "bench_samplers.py",
        "--quick",
        "--samplers",
        "ddim",
        "heun",
        "--families",
        "ddim",
        "euler",
        "heun",
        "--json",
        str(tmp_path / "s.json"),
    )
    headline = table_rows(out, "| law | schedule | NFE | difforge best default")
    assert [(r[0], r[1], r[2]) for r in headline] == [
        ("gmm1d", "linear", "5"),
        ("gmm1d", "linear", "10"),
    ]
    for r in headline:
        ours, theirs, ratio = float(r[4]), float(r[7]), float(r[9].strip("*"))
        assert ratio == pytest.approx(ours / theirs, abs=0.01)
    counterpart = table_rows(out, "| sampler | law | schedule | NFE | difforge default |")
    assert {r[0] for r in counterpart} == {"ddim", "heun"}
    rows = json.loads((tmp_path / "s.json").read_text())["search"]
    peers = [r for r in rows if r["side"] == "diffusers"]
    assert {r["family"] for r in peers} == {"ddim", "euler", "heun"}
    # Heun: 2 calls per step minus one, so a budget of 10 gets 5 steps, 9 calls.
    assert {r["nfe"] for r in peers if r["family"] == "heun" and r["nfe_target"] == 10} == {9}


def test_bench_samplers_sliced_w1_is_against_the_projected_law() -> None:
    import torch

    from difforge.benchmarks.oracle_metrics import MixtureScore, make_mixture
    from difforge.diffusion.gaussian_mixture import GaussianMixture
    from difforge.metrics.mixture import projected_quantiles

    mixture = make_mixture("gmm2d")
    score = MixtureScore(mixture, 500)
    assert score.directions is not None and score.quantiles is not None
    # each row: the projected mixture's mid-quantiles, F(q_i) = (i - 1/2) / n
    for j in (0, 100, 255):
        u = score.directions[:, j]
        projected = GaussianMixture(
            mixture.weights, mixture.means @ u, ((mixture.stds**2) @ u**2).sqrt()
        )
        levels = (torch.arange(500, dtype=torch.float64) + 0.5) / 500
        torch.testing.assert_close(projected.cdf_1d(score.quantiles[j]), levels, rtol=0, atol=1e-12)
    samples, _ = mixture.sample(500, torch.Generator().manual_seed(3))
    projections = (samples @ score.directions).T.sort(dim=1).values
    expected = float((projections - score.quantiles).abs().mean())
    assert score(samples)["w1"] == pytest.approx(expected, rel=1e-12)
    # Triangle inequality: shifting the samples moves each projection's W1 by |u . shift|.
    shift = torch.tensor([0.5, 0.0], dtype=torch.float64)
    moved, near = score(samples + shift)["w1"], score(samples)["w1"]
    mean_shift = float((shift @ score.directions).abs().mean())
    assert mean_shift - near <= moved <= mean_shift + near
    assert moved > near
    torch.testing.assert_close(projected_quantiles(mixture, score.directions, 500), score.quantiles)


def test_batch_sigma_oracle_equals_the_oracle() -> None:
    import torch

    from difforge.benchmarks.oracle_metrics import BatchSigmaOracle, make_mixture
    from difforge.diffusion.gaussian_mixture import GaussianMixtureOracle

    mixture = make_mixture("gmm2d")
    x = 3 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for sigma in (torch.full((64,), 0.7, dtype=torch.float64), torch.linspace(0.1, 5, 64)):
        expected = GaussianMixtureOracle(mixture)(x, sigma)
        assert torch.allclose(BatchSigmaOracle(mixture)(x, sigma), expected, rtol=1e-12, atol=0)


# The same algorithm on the same grid from the same noise: difforge's sampler and diffusers'
# scheduler must agree to diffusers' float32 rounding. This checks the exact-eps conversion,
# the input scaling and the sigma each diffusers call is paired with. Linear schedule only: on
# cosine, difforge's grids start at the largest unclipped sigma (642), diffusers' at t = T
# (sigma 2e4), so the grids differ there by design.
SAME_ALGORITHM = [
    ("ddim", {}, "DDIMScheduler", {"clip_sample": False}),
    ("ddim", {}, "EulerDiscreteScheduler", {}),
    ("euler", {}, "EulerDiscreteScheduler", {}),
    ("heun", {}, "HeunDiscreteScheduler", {}),
    ("dpmpp_2m", {"solver_type": "midpoint"}, "DPMSolverMultistepScheduler", {"solver_order": 2}),
    ("dpmpp_3m", {"solver_type": "midpoint"}, "DPMSolverMultistepScheduler", {"solver_order": 3}),
    (
        "dpmpp_2m",
        {"solver_type": "heun"},
        "DPMSolverMultistepScheduler",
        {"solver_order": 2, "solver_type": "heun"},
    ),
    (
        "dpmpp_3m",
        {"solver_type": "heun"},
        "DPMSolverMultistepScheduler",
        {"solver_order": 3, "solver_type": "heun"},
    ),
    ("unipc", {"order": 2}, "UniPCMultistepScheduler", {"solver_order": 2}),
    ("unipc", {"order": 3}, "UniPCMultistepScheduler", {"solver_order": 3}),
]
# Not listed: DEIS (diffusers' DEISMultistepScheduler differs from the method, see
# tests/test_solvers.py's strict xfails), UniPC bh1 (diffusers returns NaN with a final sigma
# of zero), and the stochastic samplers (the fresh noise is drawn in a different order).


# diffusers' multistep schedulers (DPM-Solver, UniPC) lay leading and linspace over N + 1 points
# and take final_sigmas_type; the others lay them over N points and end at 0.
FINALS = {
    "DPMSolverMultistepScheduler": ("zero", "sigma_min"),
    "UniPCMultistepScheduler": ("sigma_min",),
}


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize(("sampler", "options", "scheduler", "kwargs"), SAME_ALGORITHM)
def test_same_algorithm_same_grid_matches_diffusers(
    sampler: str, options: dict, scheduler: str, kwargs: dict, spacing: str
) -> None:
    pytest.importorskip("diffusers")
    from difforge.benchmarks import difforge_configs, diffusers_peer

    if spacing == "linspace" and scheduler == "DDIMScheduler":
        pytest.skip(
            "DDIMScheduler steps from t to t - T // N, not to the next linspace timestep "
            "(about T / (N - 1) lower): its linspace trajectory is not DDIM on that grid"
        )
    if spacing == "linspace" and scheduler in ("EulerDiscreteScheduler", "HeunDiscreteScheduler"):
        pytest.skip(
            f"{scheduler}'s linspace keeps fractional timesteps (sigmas interpolated between "
            "the table's), difforge's rounds them as DDIM's and the multistep schedulers' do"
        )
    for final in FINALS.get(scheduler, ("zero",)):
        ours_config = difforge_configs.DifforgeConfig(
            sampler, spacing, final.removeprefix("sigma_"), tuple(options.items())
        )
        peer_kwargs = {"timestep_spacing": spacing, **kwargs}
        if scheduler in FINALS:
            peer_kwargs["final_sigmas_type"] = final
        peer = diffusers_peer.PeerConfig(sampler, scheduler, peer_kwargs)
        _assert_same_samples(ours_config, peer, scheduler)


def _assert_same_samples(ours_config, peer, scheduler: str) -> None:
    import torch

    from difforge.benchmarks import difforge_configs, diffusers_peer
    from difforge.benchmarks.oracle_metrics import BatchSigmaOracle, make_mixture
    from difforge.diffusion.schedules import LinearSchedule

    schedule = LinearSchedule(1000, 1e-4, 0.02)
    oracle = BatchSigmaOracle(make_mixture("gmm1d"))
    noise = torch.randn(256, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # diffusers keeps a VE state (|x| up to 3 sigma_max = 470) in float32 between steps: 3e-5
    # absolute, amplified up to ~10x where the last denoising step crosses between modes. A VP
    # state (|x| ~ 3) rounds 100x less.
    atol = 5e-4 if scheduler in diffusers_peer.VE_LATENT else 1e-5
    for nfe in (5, 10):
        ours, ours_nfe = difforge_configs.run_difforge(ours_config, schedule, oracle, nfe, noise)
        theirs, their_nfe = diffusers_peer.run_peer(peer, schedule, oracle, nfe, noise)
        assert ours_nfe == their_nfe <= nfe
        # A grid ending at sigma_min > 0 ends in the VP frame there (x / sqrt(1 + sigma^2)) in
        # diffusers, in the VE frame in difforge.
        final = float(difforge_configs.grid_of(ours_config, schedule, nfe)[-1])
        gap = (ours - theirs.to(torch.float64) * math.sqrt(1 + final**2)).abs()
        assert float(gap.max()) < atol and float(gap.median()) < atol / 10, float(gap.max())


def test_diffusers_betas_match_the_schedules() -> None:
    pytest.importorskip("diffusers")
    from difforge.benchmarks import diffusers_peer
    from difforge.diffusion.schedules import LinearSchedule, SigmoidSchedule

    bench = load_script("bench_samplers.py")
    config = diffusers_peer.PeerConfig("ddim", "DDIMScheduler", {})
    for name in ("linear", "cosine"):
        diffusers_peer.build_scheduler(config, bench.SCHEDULES[name]())  # checks alphas_cumprod
    scheduler = diffusers_peer.build_scheduler(config, LinearSchedule(1000, 1e-4, 0.02))
    with pytest.raises(ValueError, match="alphas_cumprod differ"):
        diffusers_peer.check_alphas_cumprod(scheduler, LinearSchedule(1000, 2e-4, 0.02))
    with pytest.raises(ValueError, match="linear or cosine"):
        diffusers_peer.schedule_kwargs(SigmoidSchedule())


def test_diffusers_nfe_budget_counts_every_call() -> None:
    pytest.importorskip("diffusers")
    import torch

    from difforge.benchmarks import diffusers_peer
    from difforge.benchmarks.oracle_metrics import BatchSigmaOracle, make_mixture

    bench = load_script("bench_samplers.py")
    oracle = BatchSigmaOracle(make_mixture("gmm1d"))
    noise = torch.randn(8, 1, dtype=torch.float64)
    budgets = {"HeunDiscreteScheduler": 9, "KDPM2DiscreteScheduler": 9, "DDIMScheduler": 10}
    for name, calls in budgets.items():
        config = diffusers_peer.PeerConfig("x", name, {"timestep_spacing": "trailing"})
        _, used = diffusers_peer.run_peer(config, bench.SCHEDULES["linear"](), oracle, 10, noise)
        assert used == calls, name
    configs = diffusers_peer.peer_configs()
    assert len({c.label for c in configs}) == len(configs)  # labels identify configurations


def test_grid_scores_rank_by_geometric_mean_of_relative_error() -> None:
    from difforge.benchmarks.sampler_tables import grid_scores, headline

    def row(config: str, nfe: int, w1: float, side: str = "difforge", **extra: object) -> dict:
        return {
            "side": side, "law": "gmm1d", "schedule": "linear", "nfe_target": nfe,
            "family": "euler", "config": config, "default": False, "nfe": nfe, "w1": w1,
            "mass_err": w1 / 10, **extra,
        }  # fmt: skip

    rows = [row("a", 5, 1.0), row("b", 5, 2.0), row("a", 10, 0.4), row("b", 10, 0.1)]
    ranked = grid_scores(rows, "euler", ["linear"])
    assert [c for c, _, _ in ranked] == ["b", "a"]
    assert [s for _, s, _ in ranked] == pytest.approx([2**0.5, 2.0])  # sqrt(2 * 1), sqrt(1 * 4)
    rows.append(row("c", 5, float("inf")))
    assert grid_scores(rows, "euler", ["linear"])[-1][:2] == ("c", float("inf"))
    rows += [row("default", 5, 0.9, default=True), row("x", 5, 0.5, side="diffusers")]
    (cell,) = headline(rows)
    assert cell["ratio"] == pytest.approx(0.9 / 0.5)


# --- U-Net ------------------------------------------------------------------------------------


def test_bench_unet_difforge_only(tmp_path: Path) -> None:
    out = run_script(
        "bench_unet.py",
        "--quick",
        "--no-diffusers",
        "--variants",
        "fp32",
        "--json",
        str(tmp_path / "u.json"),
    )
    assert_header(out, "bench_unet.py")
    rows = table_rows(out, "| size | variant | batch | train s/step |")
    assert [r[:3] for r in rows] == [["tiny", "fp32", "4"]]
    result = json.loads((tmp_path / "u.json").read_text())["results"][0]
    assert result["params"]["difforge"] == 649_329
    assert result["memory"]["difforge"]["train_peak_mib"] > 0
    assert result["median_s"]["cpu"]["difforge"]["train"] > 0


@pytest.mark.slow
def test_bench_unet_against_diffusers(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    out = run_script(
        "bench_unet.py", "--quick", "--variants", "cl", "--json", str(tmp_path / "u.json")
    )
    rows = table_rows(out, "| size | variant | batch | train s/step difforge |")
    assert [r[1] for r in rows] == ["cl"]
    for result in json.loads((tmp_path / "u.json").read_text())["results"]:
        assert result["params"]["difforge"] == result["params"]["diffusers"]
        assert result["ratio"]["cpu"]["train"] > 0 and result["memory_ratio"]["infer"] > 0


@pytest.mark.parametrize(("size", "params"), [("small", 6_469_889), ("base", 35_746_307)])
def test_diffusers_unet_matches_difforge_parameters(size: str, params: int) -> None:
    pytest.importorskip("diffusers")
    bench = load_script("bench_unet.py")
    cfg = bench.preset(size)
    assert bench.num_params(bench.build_difforge(cfg)) == params
    assert bench.num_params(bench.build_diffusers(cfg)) == params


def test_bench_unet_attention_patch_is_the_same_function() -> None:
    import torch

    from difforge.nets.unet import AttentionBlock

    bench = load_script("bench_unet.py")
    torch.manual_seed(0)
    block = AttentionBlock(64, 4)
    torch.nn.init.normal_(block.proj.weight)  # zero-initialised: make the attention visible
    x = torch.randn(3, 64, 4, 4)
    with torch.no_grad():
        expected = block(x)
        got = bench.attention_forward_last_dim_contiguous(block, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# --- overhead, throughput, GPU -----------------------------------------------------------------


@pytest.mark.slow
def test_bench_overhead(tmp_path: Path) -> None:
    out = run_script("bench_overhead.py", "--quick", "--json", str(tmp_path / "o.json"))
    assert_header(out, "bench_overhead.py")
    rows = table_rows(out, "| Lightning module |")
    assert [r[0] for r in rows] == ["lightning"] * 2 + ["no_log"] * 2 + ["bare"] * 2
    assert "overhead per step" in out
    results = json.loads((tmp_path / "o.json").read_text())["results"]
    for clock in ("cpu", "wall"):
        assert len(results["lightning"][clock]["ratios"]) == 2
        assert all(r > 0 for r in results["lightning"][clock]["ratios"])


def test_bench_throughput(tmp_path: Path) -> None:
    out = run_script("bench_throughput.py", "--quick", "--json", str(tmp_path / "t.json"))
    assert_header(out, "bench_throughput.py")
    rows = table_rows(out, "| model | sampler |")
    assert [r[1] for r in rows] == ["ddpm", "ddim", "euler", "heun", "dpmpp_2m"]
    data = json.loads((tmp_path / "t.json").read_text())["rows"]
    # 2 steps each; Heun's step into sigma = 0 takes one evaluation
    assert [r["nfe"] for r in data] == [2, 2, 2, 3, 2]
    assert all(r["images_per_s"] > 0 for r in data)


@pytest.mark.slow
def test_bench_gpu_smoke_runs_every_section_on_cpu(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    out = run_script("bench_gpu.py", "--smoke", "--json", str(tmp_path / "g.json"))
    assert_header(out, "bench_gpu.py")
    results = json.loads((tmp_path / "g.json").read_text())
    train = results["train/unet_tiny"]
    assert train["params"] == 649_329 and train["flops_per_step"] > 0 and train["mfu"] > 0
    assert results["sample/unet_tiny"]["nfe"] == 3
    assert set(results["checkpointing/unet_tiny"]) == {"on", "off"}
    assert set(results["lightning"]) == {"lightning", "synced"}
    assert all(r["ratio_median"] > 0 for r in results["lightning"].values())
    assert results["peer_sampling"][0]["nfe"] == 2


def test_bench_gpu_imports_nothing_the_gpu_image_lacks() -> None:
    """At import: torch, PyYAML and difforge only; Lightning and diffusers only in their sections."""
    code = (
        "import runpy, sys; runpy.run_path('scripts/bench_gpu.py', run_name='bench_gpu'); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'hydra', 'omegaconf', 'lightning', 'pytorch_lightning', 'wandb', 'torch_fidelity', "
        "'torchmetrics', 'diffusers'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_bench_gpu_reads_model_presets_from_configs() -> None:
    bench = load_script("bench_gpu.py")
    cls, cfg = bench.load_preset("unet_base", 3, 32)
    assert (cfg["in_channels"], cfg["image_size"], cfg["base_channels"]) == (3, 32, 128)
    with torch.device("meta"):
        net = cls(**cfg)
    assert sum(p.numel() for p in net.parameters()) == 35_746_307
    with pytest.raises(ValueError, match=r"no model preset 'dit_nope'; available: .*unet_base"):
        bench.load_preset("dit_nope", 3, 32)
    assert (
        "error: no model preset"
        in subprocess.run(
            [sys.executable, str(SCRIPTS / "bench_gpu.py"), "--models", "dit_nope"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        ).stderr
    )


def test_bench_sampling_peer(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    out = run_script("bench_sampling_peer.py", "--quick", "--json", str(tmp_path / "p.json"))
    assert_header(out, "bench_sampling_peer.py")
    (row,) = json.loads((tmp_path / "p.json").read_text())["rows"]
    assert row["nfe"] == 2 and row["ratio"] > 0
    assert set(row["images_per_s"]) == {"difforge", "diffusers"}


def test_a_default_is_never_leading_read_over_one_more_point() -> None:
    from difforge.benchmarks import sampler_tables as tables

    def row(config: str, schedule: str, w1: float) -> dict:
        cell = {"law": "gmm1d", "schedule": schedule, "nfe_target": 5, "side": "difforge"}
        return {**cell, "family": "heun", "config": config, "w1": w1, "default": False}

    rows = [
        row("leading final=min", "linear", 0.05),
        row("leading final=zero", "linear", 0.06),
        row("trailing final=zero", "linear", 0.061),
    ]
    assert tables.can_be_default("heun", "leading final=zero")
    assert not tables.can_be_default("heun", "leading final=min")
    assert not tables.can_be_default("unipc", "leading final=zero order=2")
    assert tables.chosen_default(rows, "heun", ["linear"]) == ("leading final=zero", 1.2)
    # the current default is kept within KEEP_DEFAULT_WITHIN of the best allowed
    assert tables.chosen_default(rows, "heun", ["linear"], "trailing final=zero")[0] == (
        "trailing final=zero"
    )
