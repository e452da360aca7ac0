"""Post-hoc EMA (EDM2): power-function averages, their reconstruction, and snapshots across resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from difforge.training.posthoc_ema import (
    PostHocEMA,
    gamma_to_sigma_rel,
    load_snapshots,
    posthoc_coefficients,
    reconstruct,
    sigma_rel_to_gamma,
)
from helpers import QUICK_TRAIN, ROOT, assert_ok, run_cli


def test_sigma_rel_and_gamma_are_edm2_eq3():
    # EDM2 sec. 3.1: sigma_rel 0.10 is gamma 6.94, sigma_rel 0.05 is gamma 16.97.
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.005)
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.005)
    for sigma_rel in (0.01, 0.05, 0.13, 0.28):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(sigma_rel)) == pytest.approx(sigma_rel)
    for bad in (0.0, 0.3, -0.1):
        with pytest.raises(ValueError, match="sigma_rel must be in"):
            sigma_rel_to_gamma(bad)


class Vector(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size, dtype=torch.float64))


def run_trajectory(trajectory: torch.Tensor, callback: PostHocEMA, every: int = 0) -> list[dict]:
    """Feed ``trajectory[t - 1]`` as the weights of step t; snapshots (in memory) every ``every``."""
    net, snapshots = Vector(trajectory.shape[1]), []
    for theta in trajectory:
        net.weight.data.copy_(theta)
        callback.update(net)
        if every and callback.step % every == 0:
            averages = {
                k: {n: v.clone() for n, v in a.items()} for k, a in callback.averages.items()
            }
            snapshots.append(
                {"step": callback.step, "sigma_rels": callback.sigma_rels, "averages": averages}
            )
    return snapshots


def test_power_ema_weighs_each_step_by_the_profile_integral(tmp_path):
    """With theta_t the t-th basis vector, the average is the weight of each step:
    (tau^(g+1) - (tau-1)^(g+1)) / T^(g+1), the integral of p_T over [tau - 1, tau]."""
    T, sigma_rel = 300, 0.1
    callback = PostHocEMA(tmp_path, sigma_rels=[sigma_rel])
    run_trajectory(torch.eye(T, dtype=torch.float64), callback)
    weights = callback.averages["sigma_rel=0.1"]["weight"].double()
    g = sigma_rel_to_gamma(sigma_rel)
    tau = torch.arange(1, T + 1, dtype=torch.float64)
    expected = (tau ** (g + 1) - (tau - 1) ** (g + 1)) / T ** (g + 1)
    # The averages are kept in float32.
    torch.testing.assert_close(weights, expected, rtol=0, atol=2e-6)


def profile_l1_residual(steps, gammas, x, T, gamma_star, points=200_000) -> float:
    s = (torch.arange(points, dtype=torch.float64) + 0.5) * (T / points)
    approx = torch.zeros_like(s)
    for t, g, c in zip(steps, gammas, x.tolist(), strict=True):
        approx += c * torch.where(s <= t, (g + 1) * s**g / t ** (g + 1), 0.0)
    target = (gamma_star + 1) * s**gamma_star / T ** (gamma_star + 1)
    return float((approx - target).abs().sum() * (T / points))


def test_reconstruction_matches_a_directly_tracked_average(tmp_path):
    """Track sigma_rel 0.05 and 0.10 with snapshots every 40 of 2000 steps, reconstruct 0.07 and
    compare with 0.07 tracked directly. Stated tolerance: the error is bounded by the profile's
    L1 residual times max |theta| (module docstring), and that residual is below 1%."""
    T, every, target = 2000, 40, 0.07
    g = torch.Generator().manual_seed(0)
    # A random walk with drift, as SGD iterates wander: 500 coordinates.
    trajectory = torch.cumsum(torch.randn(T, 500, generator=g, dtype=torch.float64), 0) / 30
    trajectory += torch.linspace(0, 3, T, dtype=torch.float64)[:, None]
    snapshots = run_trajectory(trajectory, PostHocEMA(tmp_path, [0.05, 0.10]), every)
    direct = PostHocEMA(tmp_path, [target])
    run_trajectory(trajectory, direct)
    rebuilt = reconstruct(snapshots, target)["weight"].double()
    tracked = direct.averages["sigma_rel=0.07"]["weight"].double()

    steps = [s["step"] for s in snapshots for _ in (0.05, 0.10)]
    gammas = [sigma_rel_to_gamma(r) for _ in snapshots for r in (0.05, 0.10)]
    x = posthoc_coefficients(steps, gammas, T, target)
    residual = profile_l1_residual(steps, gammas, x, T, sigma_rel_to_gamma(target))
    assert residual < 0.01
    bound = residual * trajectory.abs().max() + 1e-5  # + float32 storage of the averages
    assert (rebuilt - tracked).abs().max() <= bound
    # And the reconstruction is far closer to the tracked 0.07 than either tracked length is.
    error = (rebuilt - tracked).norm()
    for other in (0.05, 0.10):
        distance = (snapshots[-1]["averages"][f"sigma_rel={other:g}"]["weight"] - tracked).norm()
        assert error < 0.05 * distance


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="snapshot_every must be an integer >= 1, got 0"):
        PostHocEMA(tmp_path, snapshot_every=0)
    with pytest.raises(ValueError, match="sigma_rel must be in"):
        PostHocEMA(tmp_path, sigma_rels=[0.5])
    with pytest.raises(ValueError, match="decays must lie in"):
        PostHocEMA(tmp_path, decays=[1.0])
    with pytest.raises(FileNotFoundError, match="no post-hoc EMA snapshots"):
        load_snapshots(tmp_path)


# --- through the training CLI ------------------------------------------------------------------

TOTAL_STEPS = 12
POSTHOC = (
    *[o for o in QUICK_TRAIN if not o.startswith("trainer.max_steps")],
    "callbacks=[default,posthoc_ema]",
    "callbacks.posthoc_ema.snapshot_every=2",
    "callbacks.posthoc_ema.decays=[0.9]",
    "trainer.deterministic=true",
    "data.repeat=1",
    "seed=3",
)


def snapshots_of(run_dir) -> dict[int, dict]:
    return {s["step"]: s for s in load_snapshots(run_dir / "checkpoints" / "posthoc_ema")}


def assert_same_snapshots(a: dict[int, dict], b: dict[int, dict]) -> None:
    assert sorted(a) == sorted(b) == list(range(2, TOTAL_STEPS + 1, 2))
    for step in a:
        for key, state in a[step]["averages"].items():
            for name, value in state.items():
                assert torch.equal(value, b[step]["averages"][key][name]), (step, key, name)


def resume_to_the_end(run_dir: Path) -> dict[int, dict]:
    """Resume the run in ``run_dir`` from its last checkpoint to TOTAL_STEPS; its snapshots."""
    assert_ok(
        run_cli(
            "train",
            *POSTHOC,
            f"trainer.max_steps={TOTAL_STEPS}",
            "ckpt_path=last",
            f"hydra.run.dir={run_dir}",
        )
    )
    return snapshots_of(run_dir)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("posthoc_straight")
    assert_ok(
        run_cli("train", *POSTHOC, f"trainer.max_steps={TOTAL_STEPS}", f"hydra.run.dir={run_dir}")
    )
    return run_dir


@pytest.fixture(scope="module")
def straight_snapshots(straight_run) -> dict[int, dict]:
    return snapshots_of(straight_run)


def test_script_picks_the_best_sigma_rel_by_fid(straight_run, tmp_path):
    checkpoint = straight_run / "checkpoints" / "last.ckpt"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "posthoc_ema.py"),
            str(checkpoint),
            "--sigma-rels",
            "0.05",
            "0.15",
            "--num-samples",
            "40",
            "--json",
            str(tmp_path / "posthoc.json"),
            "--out",
            str(tmp_path / "best.ckpt"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((tmp_path / "posthoc.json").read_text())
    assert set(table["results"]) == {"sigma_rel=0.05", "sigma_rel=0.15", "decay=0.9"}
    fids = {name: r["fid"] for name, r in table["results"].items()}
    assert table["best"] == min(fids, key=fids.__getitem__) and table["step"] == TOTAL_STEPS
    best = torch.load(tmp_path / "best.ckpt", weights_only=True)["state_dict"]
    expected = (
        reconstruct(list(snapshots_of(straight_run).values()), float(table["best"].split("=")[1]))
        if table["best"].startswith("sigma_rel")
        else snapshots_of(straight_run)[TOTAL_STEPS]["averages"]["decay=0.9"]
    )
    for name, value in expected.items():
        assert torch.equal(best[f"ema.net.{name}"], value), name


def test_script_refuses_a_run_without_snapshots(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "posthoc_ema.py"), str(tmp_path / "last.ckpt")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=120,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"error: no post-hoc EMA snapshots (step_*.pt) in {tmp_path / 'posthoc_ema'}"
    )


def test_snapshots_survive_stop_and_resume(straight_snapshots, tmp_path):
    assert_ok(run_cli("train", *POSTHOC, "trainer.max_steps=6", f"hydra.run.dir={tmp_path}"))
    assert_same_snapshots(resume_to_the_end(tmp_path), straight_snapshots)


@pytest.mark.slow
def test_snapshots_survive_kill_and_resume(straight_snapshots, tmp_path):
    """SIGKILL after the first checkpoint (step 3): snapshots written after it belong to lost
    steps and are replaced when the resumed run redoes them."""
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "src" / "train.py"),
            *POSTHOC,
            "trainer.max_steps=100000",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while not (tmp_path / "checkpoints" / "last.ckpt").is_file():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    process.kill()
    process.wait()
    assert_same_snapshots(resume_to_the_end(tmp_path), straight_snapshots)
    assert math.isfinite(
        float(reconstruct(list(straight_snapshots.values()), 0.08)["conv_in.weight"].sum())
    )
