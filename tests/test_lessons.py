"""The lessons (difforge.lessons, run by scripts/lesson_*.py and scripts/nfe_sweep.py): exact densities,
mode counts and merge times, trajectories, collapse metrics, the NFE sweep, and the figures."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from difforge.diffusion.forward import q_sample
from difforge.diffusion.gaussian_mixture import GaussianMixture, GaussianMixtureOracle
from difforge.diffusion.samplers import Sampler
from difforge.diffusion.schedules import CosineSchedule, LinearSchedule, SigmoidSchedule
from difforge.lessons import blurring, efficiency, plots
from difforge.lessons.collapse import mode_report, train_mlp
from difforge.lessons.trajectories import crossings, record_trajectories
from difforge.metrics.mixture import mode_mass

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
LINEAR, COSINE = LinearSchedule(), CosineSchedule()


# ----------------------------------------------------------------------------- exact densities
@pytest.mark.parametrize("schedule", [LINEAR, COSINE, SigmoidSchedule()], ids=lambda s: s.name)
@pytest.mark.parametrize("t", [0, 1, 100, 300, 600, 1000])
def test_exact_density_integrates_to_one(gmm1d: GaussianMixture, schedule, t: int) -> None:
    x = torch.linspace(-12, 12, 24001, dtype=torch.float64)
    density = blurring.marginal_density(gmm1d, x[:, None], blurring.abar_at(schedule, t))
    assert float(torch.trapezoid(density, x)) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("t", [50, 250, 600])
def test_exact_density_matches_forward_samples(gmm1d: GaussianMixture, t: int) -> None:
    """Bin probabilities of q_sample draws against the exact marginal's, within 5 binomial sds."""
    n = 200_000
    generator = torch.Generator().manual_seed(t)
    x0, _ = gmm1d.sample(n, generator)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    xt = q_sample(LINEAR, x0, torch.full((n,), t - 1), noise)[:, 0]
    edges = torch.linspace(-5, 5, 81, dtype=torch.float64)
    counts = torch.histc(xt, bins=80, min=-5, max=5)
    fine = torch.linspace(-5, 5, 80 * 50 + 1, dtype=torch.float64)
    density = blurring.marginal_density(gmm1d, fine[:, None], blurring.abar_at(LINEAR, t))
    cumulative = torch.cat(
        [torch.zeros(1, dtype=torch.float64), torch.cumulative_trapezoid(density, fine)]
    )
    expected = cumulative[::50].diff()
    assert len(expected) == len(edges) - 1
    observed = counts.to(torch.float64) / n
    tolerance = 5 * (expected * (1 - expected) / n).sqrt() + 1e-4
    assert ((observed - expected).abs() <= tolerance).all()


# ------------------------------------------------------------------------------------ modes
def test_count_local_maxima() -> None:
    assert blurring.count_local_maxima([0, 1, 0, 2, 0]) == 2
    assert blurring.count_local_maxima([0, 1, 1, 1, 0]) == 1  # a flat top counts once
    assert blurring.count_local_maxima([1, 0, 0, 0, 0]) == 0  # endpoints and flat tails never
    assert blurring.count_local_maxima([0, 1, 1, 2, 1]) == 1  # a shoulder is not a peak


@pytest.mark.parametrize("schedule", [LINEAR, COSINE], ids=lambda s: s.name)
def test_three_modes_at_start_one_at_the_end(gmm1d: GaussianMixture, schedule) -> None:
    counts = blurring.mode_counts(gmm1d, schedule, [0, schedule.num_timesteps], points=4001)
    assert counts == {0: 3, schedule.num_timesteps: 1}


def test_merge_time_agrees_with_the_critical_noise_level(gmm1d: GaussianMixture) -> None:
    sigma_star = blurring.critical_sigma(gmm1d, points=4001)
    for schedule in (LINEAR, COSINE):
        merges = blurring.merge_timesteps(gmm1d, schedule, points=4001)
        assert set(merges) == {2, 1}
        assert merges[2] < merges[1]
        assert merges[1] == blurring.first_timestep_above(schedule, sigma_star)
        # the count falls monotonically with t (1-D scale-space causality)
        counts = list(blurring.mode_counts(gmm1d, schedule, points=2001).values())
        assert all(a >= b for a, b in itertools.pairwise(counts))


def test_merge_time_falls_as_the_noise_rises(gmm1d: GaussianMixture) -> None:
    merges = [
        blurring.merge_timesteps(gmm1d, LinearSchedule(beta_end=beta_end), points=2001)[1]
        for beta_end in (0.01, 0.02, 0.04)
    ]
    assert merges[0] > merges[1] > merges[2]
    # a schedule that never gets noisy enough never merges the peaks
    assert (
        blurring.merge_timesteps(
            gmm1d, LinearSchedule(num_timesteps=20, scale_to_num_timesteps=False), points=2001
        )[1]
        is None
    )


def test_discrete_schedule_required(gmm1d: GaussianMixture) -> None:
    from difforge.diffusion.schedules import EDMSchedule

    with pytest.raises(ValueError, match="discrete schedule"):
        blurring.mode_counts(gmm1d, EDMSchedule())


# ------------------------------------------------------------------------------- trajectories
def test_trajectories_ode_never_cross_sde_do(oracle1d: GaussianMixtureOracle) -> None:
    ode = record_trajectories(oracle1d, LINEAR, Sampler("ddim", 20), 300, seed=1)
    assert ode.x.shape == (21, 300, 1)
    assert ode.t[0] == pytest.approx(LINEAR.num_timesteps, abs=0.5)
    assert ode.t[-1] == 0 and ode.sigma[-1] == 0
    assert 0.85 < float(ode.x[0].std()) < 1.15  # N(0, I) in DDPM's frame
    assert torch.equal(ode.x[-1], ode.samples)
    assert crossings(ode) == 0
    sde = record_trajectories(oracle1d, LINEAR, Sampler("ddpm", 20), 300, seed=1)
    assert crossings(sde) > 100


@pytest.mark.parametrize(
    "sampler,kind",
    [
        (Sampler("ddpm", 10), "SDE"),
        (Sampler("euler", 10, S_churn=40.0), "SDE"),
        (Sampler("ddim", 10), "ODE"),
        (Sampler("heun", 5), "ODE"),
    ],
    ids=lambda v: getattr(v, "algorithm", v),
)
def test_reverse_flow_panel(oracle1d: GaussianMixtureOracle, sampler: Sampler, kind: str) -> None:
    """A panel of lesson 2: the sampler's kind from the registry, paths that cross only under
    the SDE."""
    from omegaconf import OmegaConf

    from difforge.lessons.reverse_flow import paths_panel

    cfg = OmegaConf.create({"num_samples": 300, "seed": 1, "num_paths": 12})
    panel, entry = paths_panel(oracle1d, LINEAR, sampler, oracle1d.mixture, torch.float64, cfg)
    assert entry["kind"] == kind and panel["short"] == f"{sampler.algorithm} ({kind})"
    assert panel["x"].shape == (sampler.steps + 1, 12) and panel["samples"].shape == (300,)
    assert (entry["order_swaps_among_500"] > 0) == (kind == "SDE")


# ------------------------------------------------------------------------------ mode collapse
def test_mode_report(gmm1d: GaussianMixture) -> None:
    exact, _ = gmm1d.sample(20_000, torch.Generator().manual_seed(3))
    report = mode_report(exact, gmm1d)
    assert report["modes_covered"] == 3
    assert report["max_mass_error"] < 0.02
    assert report["off_mode"] == pytest.approx(1 - math.erf(3 / math.sqrt(2)), abs=0.003)
    collapsed = torch.full((1000, 1), 0.3, dtype=torch.float64)  # one-step sampling: the mean
    assert mode_report(collapsed, gmm1d)["modes_covered"] == 1
    far = torch.full((1000, 1), 6.0, dtype=torch.float64)  # 6 stds beyond the last peak
    assert mode_mass(far, gmm1d).sum() == 0
    assert mode_report(far, gmm1d)["off_mode"] == 1


def test_one_sampling_step_collapses_onto_the_mean(oracle1d: GaussianMixtureOracle) -> None:
    gmm = oracle1d.mixture
    for steps, covered in ((1, 1), (100, 3)):
        result = Sampler("ddim", steps)(
            oracle1d, LINEAR, (4000, 1), dtype=torch.float64, generator=torch.Generator()
        )
        assert mode_report(result.samples, gmm)["modes_covered"] == covered


def test_train_mlp_runs(gmm1d: GaussianMixture) -> None:
    denoiser = train_mlp(gmm1d, LINEAR, hidden_dim=8, num_layers=1, steps=5, batch_size=16)
    out = denoiser(torch.zeros(4, 1), torch.ones(4))
    assert out.shape == (4, 1) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------- efficiency
def test_nfe_sweep_error_falls_with_nfe(
    gmm1d: GaussianMixture, oracle1d: GaussianMixtureOracle
) -> None:
    algorithms = ["ddpm", "ddim", "euler", "heun", "dpmpp_2m"]
    records = efficiency.nfe_sweep(oracle1d, LINEAR, gmm1d, algorithms, [4, 64], 8000)
    floor, _ = efficiency.statistical_floor(gmm1d, 8000, repeats=3)
    for algorithm in algorithms:
        few, many = (r for r in records if r["algorithm"] == algorithm)
        assert few["nfe"] < many["nfe"]
        assert many["error"] < 0.25 * few["error"], algorithm
        assert many["error"] < 0.1 + floor, algorithm
    table = efficiency.markdown_table(records, algorithms)
    lines = table.splitlines()
    assert lines[0] == "| sampler \\ steps | 4 | 64 |" and len(lines) == 2 + len(algorithms)
    heun = [r["nfe"] for r in records if r["algorithm"] == "heun"]
    assert heun == [Sampler("heun", s).nfe(LINEAR) for s in (4, 64)] and heun[1] in (127, 128)
    assert f"(NFE {heun[1]})" in table and table.count("(NFE") == 2  # heun: 2 per step


def test_smallest_steps_reaching(gmm1d: GaussianMixture, oracle1d: GaussianMixtureOracle) -> None:
    kwargs = {"num_samples": 4000, "seed": 0}
    best = efficiency.smallest_steps_reaching(oracle1d, LINEAR, gmm1d, "dpmpp_2m", 0.1, **kwargs)
    assert best is not None and best["error"] <= 0.1
    before = efficiency.evaluate(oracle1d, LINEAR, gmm1d, "dpmpp_2m", best["steps"] - 1, 4000)
    assert before["error"] > 0.1
    never = efficiency.smallest_steps_reaching(
        oracle1d, LINEAR, gmm1d, "ddpm", 1e-6, max_steps=8, **kwargs
    )
    assert never is None


def test_sliced_distance_needs_a_reference() -> None:
    ring = GaussianMixture([1.0, 1.0], [[-2.0, 0.0], [2.0, 0.0]], [0.3, 0.3])
    reference = efficiency.reference_sample(ring, 500)
    assert efficiency.distance(reference, ring, reference) == 0.0
    with pytest.raises(ValueError, match="reference"):
        efficiency.distance(reference, ring)


# ------------------------------------------------------------------------------------- figures
def assert_png(path: Path, size: tuple[float, float]) -> None:
    from PIL import Image

    assert path.is_file() and 0 < path.stat().st_size < 300_000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == plots.figure_size(size)


def test_figures(tmp_path: Path, gmm1d: GaussianMixture) -> None:
    x = blurring.grid_1d(gmm1d, 1.0, 200)
    ts = [0, 500, 1000]
    curves = torch.stack(
        [blurring.marginal_density(gmm1d, x[:, None], blurring.abar_at(LINEAR, t)) for t in ts]
    ).numpy()
    panel = {
        "x": x.numpy(),
        "ridge_t": ts,
        "ridge_density": curves,
        "ridge_modes": [3, 1, 1],
        "heat_t": ts,
        "heat_density": curves,
        "mode_t": [0, 0, 0, 500],
        "mode_x": [-3.0, 0.0, 3.0, 0.0],
        "merge_t": 275,
        "T": 1000,
    }
    path = plots.plot_blurring_1d({"linear": panel, "cosine": panel}, tmp_path / "a.png")
    assert_png(path, plots.BLURRING_1D_SIZE)

    counts = {"t": [0, 1, 2], "modes": [3, 3, 1], "sigma": [0.0, 0.5, 2.0], "merge_t": 2}
    path = plots.plot_mode_counts({"linear": counts}, 1.08, tmp_path / "b.png")
    assert_png(path, plots.COUNTS_SIZE)

    images = {"linear": [np.random.rand(20, 20) for _ in ts]}
    path = plots.plot_density_images(images, ts, [[-1, 1], [-1, 1]], tmp_path / "c.png")
    assert_png(path, plots.image_rows_size(1, 3))
    path = plots.plot_image_rows(images, ts, tmp_path / "d.png")
    assert_png(path, plots.image_rows_size(1, 3, cell=1.3))

    paths = record_trajectories(GaussianMixtureOracle(gmm1d), LINEAR, Sampler("ddim", 5), 50)
    row = {
        "t": paths.t.numpy(),
        "x": paths.x[:, :, 0].numpy(),
        "colour_index": np.zeros(50, dtype=int),
        "samples": paths.samples[:, 0].numpy(),
        "label": "ddim",
    }
    background = {"t": ts, "x": x.numpy(), "density": curves, "data_density": curves[0]}
    path = plots.plot_reverse_flow(
        {"oracle": {"ode": row, "sde": row}}, {"oracle": background}, tmp_path / "e.png"
    )
    assert_png(path, plots.REVERSE_FLOW_SIZE)

    records = [
        {"algorithm": a, "steps": s, "nfe": s, "error": 1 / s}
        for a in ("ddim", "heun")
        for s in (1, 10)
    ]
    panels = {"1-D": {"records": records, "floor": (0.01, 0.002), "threshold": 0.05}}
    assert_png(plots.plot_nfe_sweep(panels, tmp_path / "f.png"), plots.nfe_sweep_size(1))

    hist = {"samples": np.zeros((10, 1)), "title": "t", "x": x.numpy(), "density": curves[0]}
    path = plots.plot_collapse_panels({"gmm1d": [hist, hist]}, tmp_path / "g.png")
    assert_png(path, plots.collapse_size(2))
    mass = {"x": [1, 2], "mass": [[0, 1, 0], [0.2, 0.5, 0.3]], "off_mode": [0, 0], "xlabel": "n"}
    path = plots.plot_collapse_mass({"steps": mass}, [0.2, 0.5, 0.3], tmp_path / "h.png")
    assert_png(path, plots.COLLAPSE_MASS_SIZE)


def test_mode_blurring_script(tmp_path: Path) -> None:
    """The lesson as a user runs it (a Hydra app composing configs/schedule and configs/data)."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "lesson_mode_blurring.py"),
            f"out_dir={tmp_path}",
            f"hydra.run.dir={tmp_path / 'run'}",
            "grid_points=2001",
            "heat_stride=50",
            "image_points=24",
            "image_timesteps=[0,500,1000]",
            "schedules.linear.beta_end=0.04",
            "~schedule@schedules.sigmoid",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    summary = json.loads((tmp_path / "mode_blurring.json").read_text())
    assert set(summary["schedules"]) == {"linear", "cosine"}
    linear = summary["schedules"]["linear"]
    assert linear["modes_at_0"] == 3 and linear["modes_at_T"] == 1
    assert linear["merge_t"] < summary["schedules"]["cosine"]["merge_t"]
    assert linear["merge_t"] == linear["merge_t_from_critical_sigma"]
    assert_png(tmp_path / "mode_blurring_gmm1d.png", plots.BLURRING_1D_SIZE)
    assert_png(tmp_path / "mode_blurring_counts.png", plots.COUNTS_SIZE)
    assert_png(tmp_path / "mode_blurring_gmm2d.png", plots.image_rows_size(2, 3))
    assert_png(tmp_path / "mode_blurring_digits.png", plots.image_rows_size(2, 3, cell=1.3))


def compose_lesson(name: str, overrides: list[str], monkeypatch: pytest.MonkeyPatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs" / "lessons"), version_base="1.3"):
        return compose(name, overrides=overrides)


def test_mode_collapse_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lesson as a library call: each way of losing modes shows, and the fix covers all."""
    from difforge.lessons import mode_collapse

    cfg = compose_lesson(
        "mode_collapse",
        [
            f"out_dir={tmp_path}",
            "num_samples=2000",
            "sampling_steps.algorithms=[ddim]",
            "sampling_steps.steps=[1,100]",
            "short_forward.num_timesteps=[20,1000]",
            "short_forward.max_steps=20",
            "figure.steps=1",
            "~training.runs.tiny",
            "~training.runs.trained",
            "training.runs.undertrained.steps=5",
            "training.sampler.steps=5",
        ],
        monkeypatch,
    )
    results = mode_collapse.run(cfg)
    one_d = results["gmm1d"]
    assert one_d["sampling_steps"]["ddim, 1 steps"]["modes_covered"] == 1  # the data mean
    assert one_d["sampling_steps"]["ddim, 100 steps"]["modes_covered"] == 3
    short, full = one_d["short_forward"]["T = 20"], one_d["short_forward"]["T = 1000"]
    # The same betas (unscaled) over 20 steps: q(x_T) keeps the data.
    unscaled = torch.prod(1 - torch.linspace(1e-4, 0.02, 20, dtype=torch.float64))
    assert short["abar_T"] == pytest.approx(float(unscaled), rel=1e-9)
    assert full["abar_T"] < 1e-4
    assert short["modes_of_q_T"] == 3 and full["modes_of_q_T"] == 1
    assert results["gmm2d"]["fixed"]["modes_covered"] == results["gmm2d"]["fixed"]["num_modes"]
    assert set(results["gmm2d"]["training"]) == {"undertrained"}
    assert (
        "| exact, ddim, full schedule (fixed) | 3/3 |"
        in (tmp_path / "mode_collapse.md").read_text()
    )
    assert_png(tmp_path / "mode_collapse.png", plots.collapse_size(4))
    assert_png(tmp_path / "mode_collapse_mass.png", plots.COLLAPSE_MASS_SIZE)


def test_nfe_sweep_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lesson 4 as a library call: the smallest NFE under the threshold, second order ahead;
    a grid given in ``options`` replaces the sampler's default."""
    from difforge.diffusion.samplers import SAMPLERS
    from difforge.lessons import nfe_sweep

    overrides = [
        f"out_dir={tmp_path}",
        "algorithms=[ddim,dpmpp_2m]",
        "options={ddim:{grid:linspace}}",
        "num_samples=3000",
        "steps=[2,8,32]",
        "threshold=0.1",
        "max_steps=64",
        "threshold_seeds=[0,1]",
        "floor_repeats=2",
        "sweep2d.steps=[2,8]",
        "sweep2d.num_samples=2000",
    ]
    summary = nfe_sweep.run(compose_lesson("nfe_sweep", overrides, monkeypatch))
    one_d = summary["gmm1d"]
    for record in one_d["smallest_nfe_records"].values():
        assert record["error"] <= 0.1
    assert one_d["smallest_nfe"]["dpmpp_2m"] < one_d["smallest_nfe"]["ddim"]
    assert {r["steps"] for r in summary["gmm2d"]["records"]} == {2, 8}
    defaults = SAMPLERS["dpmpp_2m"].defaults_for(LINEAR)  # the lesson's default schedule
    default = f"{defaults['grid']} ({defaults['final_sigma']})"
    assert summary["grids"] == {"ddim": "linspace (zero)", "dpmpp_2m": default}
    assert f"| dpmpp_2m | {default} |" in (tmp_path / "nfe_sweep.md").read_text()
    assert_png(tmp_path / "nfe_sweep.png", plots.nfe_sweep_size(2))


@pytest.fixture
def untrained_digits_checkpoint(tmp_path: Path) -> Path:
    """The default digits model (unet_tiny) untrained, saved as train.py's checkpoints are."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from difforge.training.build import build_module

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train")
    torch.manual_seed(0)
    module = build_module(cfg, (1, 8, 8))
    path = tmp_path / "untrained.ckpt"
    difforge = {"config": module.run_config, "data_shape": [1, 8, 8]}
    torch.save({"state_dict": module.state_dict(), "difforge": difforge}, path)
    return path


def test_nfe_sweep_fid_versus_nfe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, untrained_digits_checkpoint: Path
) -> None:
    """Lesson 4 with a checkpoint: FID at each target NFE, the steps that fit the target (two
    evaluations per Heun step) and the NFE counted, a figure and a table."""
    from difforge.lessons import nfe_sweep
    from difforge.training.build import module_from_checkpoint

    out = tmp_path / "out"
    overrides = [
        f"out_dir={out}",
        "algorithms=[ddim,heun]",
        "exact=false",
        f"ckpt_path={untrained_digits_checkpoint}",
        "images.nfe=[3,5]",
        "images.num_samples=16",
        "images.batch_size=8",
        f"images.cache_dir={tmp_path / 'fid_stats'}",
    ]
    summary = nfe_sweep.run(compose_lesson("nfe_sweep", overrides, monkeypatch))
    schedule = module_from_checkpoint(untrained_digits_checkpoint)[0].schedule
    counted = {(r["algorithm"], r["nfe_target"]): (r["steps"], r["nfe"]) for r in summary["images"]}
    assert counted[("ddim", 3)] == (3, 3) and counted[("ddim", 5)] == (5, 5)
    # Heun: two evaluations per step, one for a last step to sigma = 0.
    to_zero = Sampler("heun", 1).final_sigma_for(schedule) == "zero"
    assert counted[("heun", 5)] == ((3, 5) if to_zero else (2, 4))
    for record in summary["images"]:
        algorithm, steps, nfe = record["algorithm"], record["steps"], record["nfe"]
        assert nfe == Sampler(algorithm, steps).nfe(schedule) <= record["nfe_target"]
        assert Sampler(algorithm, steps + 1).nfe(schedule) > record["nfe_target"]  # the most
        assert math.isfinite(record["error"]) and record["error"] > 0
        assert 0 <= record["class_coverage"] <= 1
    assert set(summary) == {"images"} and not (out / "nfe_sweep.png").exists()  # exact=false
    table = (out / "nfe_sweep_fid.md").read_text()
    assert "| sampler \\ target NFE | 3 | 5 |" in table
    fid = summary["images"][-1]["error"]  # heun, target 5
    assert f"{fid:.4f}{'' if to_zero else ' (NFE 4)'} |\n" in table
    assert_png(out / "nfe_sweep_fid.png", plots.nfe_sweep_size(1))
    assert json.loads((out / "nfe_sweep_fid.json").read_text()) == summary["images"]
    assert list((tmp_path / "fid_stats").iterdir())  # the reference statistics were cached


def test_fid_versus_nfe_refuses_a_target_below_one() -> None:
    with pytest.raises(ValueError, match="target NFEs must be >= 1, got \\[0, 5\\]"):
        efficiency.fid_versus_nfe(None, None, ["ddim"], [0, 5], 16)


def test_every_sampler_has_its_own_line_style(monkeypatch: pytest.MonkeyPatch) -> None:
    """Listed or not (a new sampler needs no entry in ``SAMPLER_STYLES``), no two registered
    samplers share a line in the NFE figures."""
    from difforge.diffusion.samplers import SAMPLERS

    assert set(plots.SAMPLER_STYLES) <= set(SAMPLERS)
    for name in ("new_a", "new_b"):
        monkeypatch.setitem(SAMPLERS, name, SAMPLERS["euler"])
    styles = [plots.sampler_style(name) for name in SAMPLERS]
    assert len(set(styles)) == len(SAMPLERS)


def test_nfe_sweep_refuses_what_it_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from difforge.lessons import nfe_sweep

    overrides = [f"out_dir={tmp_path}", "algorithms=[ddim]", "options={eulr:{S_churn:40}}"]
    with pytest.raises(ValueError, match="options for 'eulr', which is not among"):
        nfe_sweep.run(compose_lesson("nfe_sweep", overrides, monkeypatch))
    with pytest.raises(ValueError, match="exact=false and no ckpt_path: nothing to run"):
        nfe_sweep.run(
            compose_lesson("nfe_sweep", [f"out_dir={tmp_path}", "exact=false"], monkeypatch)
        )


@pytest.mark.parametrize("name", ["mode_blurring", "reverse_flow", "mode_collapse", "nfe_sweep"])
def test_lesson_configs_compose(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose_lesson(name, ["+schedule@extra_schedule=cosine"], monkeypatch)
    assert cfg.extra_schedule._target_.endswith("CosineSchedule")
    assert "data" in cfg
