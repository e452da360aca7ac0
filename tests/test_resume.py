"""Nothing trained is lost: stopped, killed or pre-empted runs resume to the same weights as a run
that never stopped (deterministic mode on CPU)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import QUICK_TRAIN, ROOT, assert_clean_error, assert_ok, run_cli

TOTAL_STEPS = 16  # digits with data.repeat=1: 12 batches per epoch, so the runs cross an epoch
DETERMINISTIC = (
    *[
        o
        for o in QUICK_TRAIN
        if not o.startswith(("trainer.max_steps", "callbacks.model_checkpoint.every_n_train_steps"))
    ],
    "trainer.deterministic=true",
    "data.repeat=1",
    "seed=7",
    "callbacks.model_checkpoint.every_n_train_steps=4",
)


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def final_state(run_dir: Path) -> dict:
    checkpoint = last_checkpoint(run_dir)
    assert checkpoint["global_step"] == TOTAL_STEPS
    return checkpoint


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    state_a, state_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for index in state_a:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state_a[index][name], state_b[index][name]), (index, name)


def training_overrides(run_dir: Path, max_steps: int, *extra: str) -> tuple[str, ...]:
    return (*DETERMINISTIC, f"trainer.max_steps={max_steps}", *extra, f"hydra.run.dir={run_dir}")


def train(run_dir: Path, max_steps: int, *extra: str) -> None:
    assert_ok(run_cli("train", *training_overrides(run_dir, max_steps, *extra)))


def resume_to_the_end(run_dir: Path, straight_run: dict) -> None:
    """Resume the run in ``run_dir`` to ``TOTAL_STEPS``: it ends as the straight run did."""
    train(run_dir, TOTAL_STEPS, "ckpt_path=last")
    assert_same_training_state(final_state(run_dir), straight_run)


@pytest.fixture(scope="module")
def straight_run_dir(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight")
    train(run_dir, TOTAL_STEPS)
    return run_dir


@pytest.fixture(scope="module")
def straight_run(straight_run_dir) -> dict:
    return final_state(straight_run_dir)


def test_deterministic_runs_are_bitwise_identical(straight_run, tmp_path):
    train(tmp_path, TOTAL_STEPS)
    assert_same_training_state(final_state(tmp_path), straight_run)


@pytest.mark.parametrize(
    "stop_at,cadence",
    [
        (6, 4),  # mid-epoch, after a periodic checkpoint
        (6, 1000),  # mid-epoch, before the first periodic checkpoint
        (12, 1000),  # at the end of the first epoch
    ],
)
def test_stopped_and_resumed_equals_straight_through(straight_run, tmp_path, stop_at, cadence):
    """Whatever the checkpoint cadence and wherever in an epoch the first segment stops, the
    extended run ends bitwise equal to the straight one."""
    train(tmp_path, stop_at, f"callbacks.model_checkpoint.every_n_train_steps={cadence}")
    resume_to_the_end(tmp_path, straight_run)


def start_training_until_a_checkpoint(run_dir: Path, timeout: float = 120) -> subprocess.Popen:
    """A long run in a subprocess (output in ``stdout``), returned once it has saved
    ``last.ckpt``."""
    environment = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
    }
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "src" / "train.py"), *training_overrides(run_dir, 10_000)],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + timeout
    while not (run_dir / "checkpoints" / "last.ckpt").is_file():
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    return process


@pytest.mark.slow
def test_sigkill_then_resume_equals_straight_through(straight_run, tmp_path):
    """SIGKILL gives no chance to save: the run resumes from its last periodic checkpoint."""
    process = start_training_until_a_checkpoint(tmp_path)
    time.sleep(0.5)
    process.kill()
    process.wait()
    killed_at = last_checkpoint(tmp_path)["global_step"]
    assert 0 < killed_at < TOTAL_STEPS and killed_at % 4 == 0
    resume_to_the_end(tmp_path, straight_run)


@pytest.mark.slow
def test_sigterm_saves_and_stops_cleanly_then_resumes(straight_run, tmp_path):
    process = start_training_until_a_checkpoint(tmp_path)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    assert "stopped by SIGTERM" in output
    stopped_at = last_checkpoint(tmp_path)["global_step"]
    assert stopped_at >= 4
    if stopped_at < TOTAL_STEPS:
        resume_to_the_end(tmp_path, straight_run)


GMM_QUICK = tuple(o for o in QUICK_TRAIN if not o.startswith("trainer.max_steps"))


def test_resume_reuses_the_runs_config_with_new_overrides_on_top(tmp_path):
    """The rule: a resumed run is the saved run's overrides with this command's on top, so
    ``experiment=gmm1d`` need not be repeated (before: the defaults' U-Net was built and the MLP's
    weights loaded into it, a state-dict traceback)."""
    assert_ok(
        run_cli(
            "train",
            *GMM_QUICK,
            "experiment=gmm1d",
            "trainer.max_steps=3",
            f"hydra.run.dir={tmp_path}",
        )
    )
    assert_ok(
        run_cli(
            "train",
            *GMM_QUICK,
            "trainer.max_steps=5",
            "ckpt_path=last",
            f"hydra.run.dir={tmp_path}",
        )
    )
    checkpoint = last_checkpoint(tmp_path)
    assert checkpoint["global_step"] == 5
    assert checkpoint["difforge"]["config"]["model"]["_target_"].endswith("MLPDenoiser")
    overrides = (tmp_path / ".hydra" / "overrides.yaml").read_text()
    assert "experiment=gmm1d" in overrides and "trainer.max_steps=5" in overrides
    # A resumed run cannot change the network it loads: refused, naming the key.
    result = run_cli(
        "train",
        *GMM_QUICK,
        "trainer.max_steps=7",
        "experiment=gmm1d",
        "model.hidden_dim=64",
        "ckpt_path=last",
        f"hydra.run.dir={tmp_path}",
    )
    assert_clean_error(result, "model.hidden_dim: 256 in the checkpoint, 64 now")


def test_last_without_a_run_dir_resumes_only_a_run_with_the_same_choices(tmp_path):
    """Before: ``ckpt_path=last`` took the newest run of any experiment (a gmm1d MLP loaded into the
    digits U-Net)."""
    logs = f"paths.log_dir={tmp_path}"
    assert_ok(run_cli("train", *GMM_QUICK, "experiment=gmm1d", "trainer.max_steps=3", logs))
    (gmm_run,) = (tmp_path / "train" / "runs").glob("*")
    result = run_cli("train", *GMM_QUICK, "ckpt_path=last", logs)
    assert_clean_error(result, "no run with data=digits model=unet_tiny", "looked in")
    result = run_cli(
        "train", *GMM_QUICK, "experiment=gmm1d", "trainer.max_steps=5", "ckpt_path=last", logs
    )
    assert_ok(result)
    assert f"resuming from {gmm_run}/checkpoints/last.ckpt" in result.stdout + result.stderr


def test_a_sweep_job_resumes_only_its_own_directory(tmp_path):
    result = run_cli("train", "-m", *GMM_QUICK, "ckpt_path=last", f"hydra.sweep.dir={tmp_path}")
    assert_clean_error(result, "a sweep job resumes only its own directory")


def run_files(run_dir: Path) -> dict[str, bytes]:
    """What a run keeps of its training: checkpoints, run.json, final_metrics.json, byte for byte."""
    files = [*(run_dir / "checkpoints").glob("*.ckpt"), run_dir / "run.json"]
    files.append(run_dir / "final_metrics.json")
    return {str(f.relative_to(run_dir)): f.read_bytes() for f in files}


@pytest.fixture
def finished_copy(straight_run_dir, tmp_path) -> Path:
    """A copy of the finished straight run (at ``TOTAL_STEPS``), for one test to resume."""
    run_dir = tmp_path / "run"
    shutil.copytree(straight_run_dir, run_dir)
    return run_dir


@pytest.mark.parametrize(
    "override,difference",
    [
        # The trial's case: rc 0, then best.ckpt rewritten with a LinearSchedule around the
        # cosine-trained weights and run.json saying schedule: linear.
        (
            "schedule=linear",
            "noise schedule differs from this run's (schedule: 'cosine' in the checkpoint, 'linear' now)",
        ),
        ("parameterization=v", "parameterization: 'eps' in the checkpoint, 'v' now"),
        ("data.num_classes=0", "data.num_classes: 10 in the checkpoint, 0 now"),
        ("data.image_size=16", "data.image_size: 8 in the checkpoint, 16 now"),
        ("schedule.num_timesteps=500", "schedule.num_timesteps: 1000 in the checkpoint, 500 now"),
    ],
)
def test_resuming_another_model_is_refused_before_anything_is_written(
    finished_copy, override, difference
):
    before = run_files(finished_copy)
    result = run_cli(
        "train", *training_overrides(finished_copy, TOTAL_STEPS + 4, "ckpt_path=last", override)
    )
    assert_clean_error(result, difference, "of data only batch_size, num_workers")
    assert run_files(finished_copy) == before


def test_loss_and_loading_may_change_on_resume(finished_copy):
    """Fine-tuning with another loss weighting (EDM2-like) and another batch size is allowed;
    the change of loss is announced."""
    result = run_cli(
        "train",
        *training_overrides(
            finished_copy, TOTAL_STEPS + 2, "ckpt_path=last", "loss=min_snr", "data.batch_size=64"
        ),
    )
    assert_ok(result)
    assert "resuming with another loss (loss: 'simple' in the checkpoint, 'min_snr' now)" in (
        result.stdout + result.stderr
    )
    checkpoint = last_checkpoint(finished_copy)
    assert checkpoint["global_step"] == TOTAL_STEPS + 2
    assert checkpoint["difforge"]["config"]["loss"]["_target_"].endswith("MinSNRLoss")


def test_a_finished_run_says_nothing_is_left_and_writes_nothing(finished_copy):
    """Before: Lightning trained 0 steps, then the end of the run validated and rewrote best.ckpt,
    last.ckpt and final_metrics.json."""
    before = run_files(finished_copy)
    result = run_cli("train", *training_overrides(finished_copy, TOTAL_STEPS, "ckpt_path=last"))
    assert_ok(result)
    output = result.stdout + result.stderr
    assert (
        f"is at step {TOTAL_STEPS}, trainer.max_steps={TOTAL_STEPS}; raise trainer.max_steps"
        in output
    )
    assert run_files(finished_copy) == before


@pytest.mark.slow
def test_a_run_without_checkpoint_callbacks_resumes_from_lightnings_checkpoint(tmp_path):
    """README, "Where outputs go": with ``callbacks=none`` the only checkpoint is Lightning's
    ``csv/version_0/checkpoints/epoch=*-step=*.ckpt``; the quoted ``ckpt_path`` the README shows
    resumes it, and unquoted the one line names the quoting."""
    common = ("experiment=gmm1d", "callbacks=none", "logger=csv", f"hydra.run.dir={tmp_path}")
    assert_ok(run_cli("train", *common, "trainer.max_steps=4"))
    (checkpoint,) = (tmp_path / "csv" / "version_0" / "checkpoints").glob("epoch=*-step=4.ckpt")
    assert not (tmp_path / "checkpoints").exists()
    unquoted = run_cli("train", *common, "trainer.max_steps=8", f"ckpt_path={checkpoint}")
    assert_clean_error(unquoted, "a value holding '=' must be quoted")
    assert_ok(run_cli("train", *common, "trainer.max_steps=8", f'ckpt_path="{checkpoint}"'))
    resumed = torch.load(
        next((tmp_path / "csv").glob("version_*/checkpoints/epoch=*-step=8.ckpt")),
        weights_only=True,
    )
    assert resumed["global_step"] == 8
