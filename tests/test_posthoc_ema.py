"""Post-hoc EMA (EDM2): power-function averages, their reconstruction, and snapshots across resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import difforge
from difforge.plotting import to_uint8_images
from difforge.training.posthoc_ema import (
    PostHocEMA,
    gamma_to_sigma_rel,
    load_snapshots,
    posthoc_coefficients,
    reconstruct,
    sigma_rel_to_gamma,
)
from helpers import QUICK_TRAIN, ROOT, assert_clean_error, assert_ok, run_cli


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
                {
                    "step": callback.step,
                    "start": callback.start,
                    "sigma_rels": callback.sigma_rels,
                    "averages": averages,
                }
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


def test_averages_added_mid_run_weigh_only_the_steps_seen(tmp_path):
    """Added at step 40 of a resumed run (no state in its checkpoint), the power EMA at step T is
    that of the steps 41..T alone, t counted from 41: with theta_t the t-th basis vector, steps up
    to 40 weigh exactly 0 and step 40 + tau weighs (tau^(g+1) - (tau-1)^(g+1)) / (T-40)^(g+1)."""
    T, start, sigma_rel = 300, 40, 0.1
    callback = PostHocEMA(tmp_path, sigma_rels=[sigma_rel])
    trainer = SimpleNamespace(global_step=start, is_global_zero=True)
    callback.on_train_start(trainer, None)  # type: ignore[arg-type]
    assert (callback.start, callback.step) == (start, start)
    run_trajectory(torch.eye(T, dtype=torch.float64)[start:], callback)
    weights = callback.averages["sigma_rel=0.1"]["weight"].double()
    g = sigma_rel_to_gamma(sigma_rel)
    tau = torch.arange(1, T - start + 1, dtype=torch.float64)
    expected = (tau ** (g + 1) - (tau - 1) ** (g + 1)) / (T - start) ** (g + 1)
    assert torch.equal(weights[:start], torch.zeros(start, dtype=torch.float64))
    torch.testing.assert_close(weights[start:], expected, rtol=0, atol=2e-6)


def test_a_request_outside_the_history_is_refused(tmp_path):
    """Snapshots every 40 of 200 constant-weight steps (every average is 1): at a snapshot step
    the reconstruction is 1 within the bound of the module docstring (profile L1 residual times
    max |theta|); a step past the last snapshot, before the first, or between two is refused.
    Before the fix they were accepted: step 400 gave weights of 0.0007, step 220 of 0.37."""
    sigma_rels, target = [0.05, 0.10], 0.08
    trajectory = torch.ones(200, 3, dtype=torch.float64)
    snapshots = run_trajectory(trajectory, PostHocEMA(tmp_path, sigma_rels), every=40)
    for step in (200, 120):
        used = [s["step"] for s in snapshots if s["step"] <= step for _ in sigma_rels]
        gammas = [sigma_rel_to_gamma(r) for _ in range(len(used) // 2) for r in sigma_rels]
        x = posthoc_coefficients(used, gammas, step, target)
        residual = profile_l1_residual(used, gammas, x, step, sigma_rel_to_gamma(target))
        rebuilt = reconstruct(snapshots, target, step)["weight"].double()
        assert (rebuilt - 1).abs().max() <= residual + 1e-6, (step, residual)
    for step in (400, 220, 201, 20, 100, 0, -40):
        with pytest.raises(
            ValueError, match=f"step {step} is not a snapshot step of the recorded post-hoc EMA"
        ):
            reconstruct(snapshots, target, step)


def test_reconstruction_uses_the_last_uninterrupted_history(tmp_path):
    """Snapshots of an earlier averaging (start 0) beside those of a later one (start 100) are
    not mixed: the reconstruction at the last step uses the later ones, and the earlier steps
    are outside its history."""
    early = run_trajectory(torch.ones(100, 2, dtype=torch.float64), PostHocEMA(tmp_path), 50)
    late_callback = PostHocEMA(tmp_path)
    late_callback.on_train_start(SimpleNamespace(global_step=100, is_global_zero=True), None)  # type: ignore[arg-type]
    late = run_trajectory(torch.full((100, 2), 3.0, dtype=torch.float64), late_callback, 50)
    mixed, alone = reconstruct([*early, *late], 0.08), reconstruct(late, 0.08)
    assert torch.equal(mixed["weight"], alone["weight"])
    # The later weights (3) up to the fit of two snapshots, not pulled towards the earlier (1).
    assert (alone["weight"] - 3).abs().max() < 0.1
    with pytest.raises(ValueError, match="averaged from step 100"):
        reconstruct([*early, *late], 0.08, 100)


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
    assert not [k for k in best if k.startswith("ema_denoiser.")]  # the EMA network saved once


def run_script(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "posthoc_ema.py"), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"},
        timeout=600,
    )


def test_script_refuses_a_run_without_snapshots(straight_run, tmp_path):
    (tmp_path / "last.ckpt").write_bytes((straight_run / "checkpoints" / "last.ckpt").read_bytes())
    result = run_script(tmp_path / "last.ckpt")
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"error: no post-hoc EMA snapshots (step_*.pt) in {tmp_path / 'posthoc_ema'}"
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--step", "13"],
            "error: step 13 is not a snapshot step of the recorded post-hoc EMA history: "
            "reconstructions are made at the snapshot steps 2, 4, 6, 8, 10, 12",
        ),
        (
            ["--step", "5"],
            "error: step 5 is not a snapshot step of the recorded post-hoc EMA history",
        ),
        (
            ["--step", "0"],
            "error: step 0 is not a snapshot step of the recorded post-hoc EMA history",
        ),
        (["--sigma-rels", "0.5"], "error: sigma_rel must be in (0, 0.2887)"),
        (
            ["--out", "/nonexistent/best.ckpt"],
            "error: --out /nonexistent/best.ckpt: the folder /nonexistent does not exist",
        ),
        (["--num-samples", "0"], "error: argument --num-samples: must be an integer >= 2, got 0"),
        (["--num-samples", "x"], "error: argument --num-samples: must be an integer >= 2, got 'x'"),
        (["--sigma-rels"], "error: argument --sigma-rels: expected at least one argument"),
    ],
)
def test_script_refuses_bad_requests_in_one_line(straight_run, args, message):
    result = run_script(straight_run / "checkpoints" / "last.ckpt", *args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1


def test_script_on_an_earlier_checkpoint_ignores_later_snapshots(straight_run, tmp_path):
    """A checkpoint of step 6 beside snapshots up to step 12 (best.ckpt is kept so): the steps
    after 6 are another state of the run, outside this checkpoint's history."""
    import shutil

    shutil.copytree(straight_run / "checkpoints" / "posthoc_ema", tmp_path / "posthoc_ema")
    checkpoint = torch.load(straight_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["global_step"] = 6
    torch.save(checkpoint, tmp_path / "best.ckpt")
    result = run_script(tmp_path / "best.ckpt", "--step", "8")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: step 8 is not a snapshot step of the recorded post-hoc EMA history: reconstructions are made "
        "at the snapshot steps 2, 4, 6"
    )


def test_script_refuses_a_missing_or_broken_checkpoint_in_one_line(tmp_path):
    for path, message in (
        (tmp_path / "none.ckpt", f"error: checkpoint not found: {tmp_path / 'none.ckpt'}"),
        (tmp_path / "empty.ckpt", f"error: checkpoint {tmp_path / 'empty.ckpt'} is corrupt"),
    ):
        if path.name == "empty.ckpt":
            path.write_bytes(b"")
        result = run_script(path)
        assert result.returncode == 1 and result.stderr.startswith(message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


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


# --- the whole workflow as a user runs it ------------------------------------------------------


def test_out_checkpoint_samples_with_the_reconstruction(straight_run, tmp_path):
    """Train with callbacks=[default,posthoc_ema] (straight_run), write --out, and use it as a
    user does: difforge.load gives the reconstruction as the EMA network (not the run's EMA), and
    src/sample.py draws from the same start noise exactly the images of that network. Before the
    fix the EMA network was saved twice and the untouched copy, the old EMA, won at load."""
    last = straight_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "best.ckpt"
    result = run_script(last, "--sigma-rels", "0.15", "--num-samples", "20", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = reconstruct(list(snapshots_of(straight_run).values()), 0.15)
    loaded, old = difforge.load(out), difforge.load(last)
    ema, old_ema = loaded.module.ema.net.state_dict(), old.module.ema.net.state_dict()
    assert set(ema) == set(expected)
    for name, value in expected.items():
        assert torch.equal(ema[name], value), name
    assert any(not torch.equal(ema[n], old_ema[n]) for n in ema if ema[n].is_floating_point())
    saved = torch.load(out, weights_only=True)["state_dict"]
    assert not [k for k in saved if k.startswith("ema_denoiser.")]

    noise = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    np.save(tmp_path / "noise.npy", noise.numpy())
    images = {}
    for name, checkpoint in (("best", out), ("last", last)):
        assert_ok(
            run_cli(
                "sample",
                f"ckpt_path={checkpoint}",
                "sampler=ddim",
                "sampler.steps=3",
                "num_samples=6",
                f"noise={tmp_path / 'noise.npy'}",
                f"hydra.run.dir={tmp_path / name}",
            )
        )
        images[name] = np.load(tmp_path / name / "samples.npz")["arr_0"]
    direct = to_uint8_images(loaded.sample(6, "ddim", 3, noise=noise))
    assert np.array_equal(images["best"], direct)
    assert not np.array_equal(images["best"], images["last"])


@pytest.mark.slow
def test_checkpoint_with_the_ema_saved_twice_still_loads_and_resumes(straight_run, tmp_path):
    """A checkpoint from before the fix holds the EMA network also as ema_denoiser.net.*; one the
    old script rewrote holds the new EMA in ema.net.* and the old one there. It loads ema.net.*
    (the rewritten one), and a run resumes from it."""
    checkpoint = torch.load(straight_run / "checkpoints" / "last.ckpt", weights_only=True)
    weights = checkpoint["state_dict"]
    ema_keys = [k for k in weights if k.startswith("ema.net.")]
    rewritten = {
        k: weights[k] + 1 if weights[k].is_floating_point() else weights[k] for k in ema_keys
    }
    for key in ema_keys:
        weights["ema_denoiser." + key.removeprefix("ema.")] = weights[key]  # the old copy
        weights[key] = rewritten[key]
    legacy = tmp_path / "legacy" / "checkpoints" / "last.ckpt"
    legacy.parent.mkdir(parents=True)
    torch.save(checkpoint, legacy)
    state = difforge.load(legacy).module.ema.net.state_dict()
    for key in ema_keys:
        assert torch.equal(state[key.removeprefix("ema.net.")], rewritten[key]), key
    assert_ok(
        run_cli(
            "train",
            *POSTHOC,
            f"trainer.max_steps={TOTAL_STEPS + 2}",
            f"ckpt_path={legacy}",
            f"hydra.run.dir={tmp_path / 'resumed'}",
        )
    )


@pytest.mark.slow
def test_callback_added_to_a_resumed_run_snapshots_only_steps_seen(tmp_path):
    """Trained 6 steps without the callback, resumed to 12 with it: snapshots at 8, 10, 12 only
    (before the fix: 2, 4, ..., 12, the first three of weights it never saw), a reconstruction at
    step 12, and a refusal of step 6, which it did not average."""
    plain = [o for o in POSTHOC if not o.startswith(("callbacks=", "callbacks.posthoc"))]
    assert_ok(run_cli("train", *plain, "trainer.max_steps=6", f"hydra.run.dir={tmp_path}"))
    result = resume_to_the_end(tmp_path)
    assert sorted(result) == [8, 10, 12]
    assert all(s["start"] == 6 for s in result.values())
    last = tmp_path / "checkpoints" / "last.ckpt"
    refused = run_script(last, "--step", "6")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "error: step 6 is not a snapshot step of the recorded post-hoc EMA history: reconstructions are made "
        "at the snapshot steps 8, 10, 12 (averaged from step 6)"
    )
    assert_ok(run_script(last, "--sigma-rels", "0.1", "--num-samples", "20"))


@pytest.mark.slow
def test_vector_data_are_refused_by_the_callback_and_the_script(tmp_path):
    vector = [o for o in POSTHOC if o != "data.repeat=1"]  # gmm1d draws its data, no repeat
    result = run_cli(
        "train",
        *vector,
        "experiment=gmm1d",
        "trainer.max_steps=4",
        f"hydra.run.dir={tmp_path / 'gmm'}",
    )
    assert_clean_error(
        result,
        "error: callbacks.posthoc_ema: the data are vectors of shape (1,); post-hoc EMA "
        "snapshots are ranked by FID",
    )
    assert not (tmp_path / "gmm" / "checkpoints").exists()
    plain = [o for o in vector if not o.startswith(("callbacks=", "callbacks.posthoc"))]
    assert_ok(
        run_cli(
            "train",
            *plain,
            "experiment=gmm1d",
            "trainer.max_steps=4",
            f"hydra.run.dir={tmp_path / 'v'}",
        )
    )
    script = run_script(tmp_path / "v" / "checkpoints" / "last.ckpt")
    assert script.returncode == 1
    assert script.stderr.strip() == (
        f"error: {tmp_path / 'v' / 'checkpoints' / 'last.ckpt'}: the data are vectors of shape "
        "(1,); this script ranks EMA lengths by FID, which needs image data"
    )
