"""What a run records, through the front door: one logger run per sweep job, difforge's lines
once under DDP, and final metrics measured on the final weights at the step they name."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from helpers import QUICK_TRAIN, assert_ok, read_wandb_records, run_cli

pytestmark = pytest.mark.slow

# gmm1d for seconds-long runs; every logger at once (W&B offline: run_cli sets WANDB_MODE).
GMM_ALL_LOGGERS = (
    *(o for o in QUICK_TRAIN if not o.startswith(("trainer.max_steps", "logger="))),
    "experiment=gmm1d",
    "trainer.max_steps=3",
    "logger=many",
)


def csv_rows(job: Path) -> list[dict[str, str]]:
    (metrics,) = job.glob("csv/version_*/metrics.csv")
    with open(metrics) as file:
        return list(csv.DictReader(file))


def csv_values(job: Path, name: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every CSV row that holds ``name``."""
    return [(int(r["step"]), float(r[name])) for r in csv_rows(job) if r.get(name)]


def tensorboard_values(job: Path, name: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (version,) = job.glob("tensorboard/version_*")
    events = EventAccumulator(str(version))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(name)]


def wandb_run(job: Path) -> tuple[str, list[dict], dict]:
    """The job's one offline W&B run: its id, its history rows and its config."""
    runs = sorted(job.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1, f"{job}: {runs}"
    records = read_wandb_records(runs[0])
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    history = [
        {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in r.history.item
        }
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    config = {
        item.key: json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "config"
        for item in r.config.update
    }
    return run.run_id, history, config


# --- one logger run per sweep job -------------------------------------------------------------
@pytest.mark.parametrize(
    "sweep",
    [
        ("seed=1,2",),
        ("hparams_search=optuna", "hydra.sweeper.n_trials=2"),
        ("seed=1,2", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"),
    ],
    ids=["basic", "optuna", "submitit_local"],
)
def test_every_sweep_job_gets_its_own_wandb_tensorboard_and_csv_run(sweep, tmp_path):
    """Before: in a basic or Optuna sweep (jobs in one process) every job after the first logged
    into the first job's W&B run, and its own ``wandb/`` held no run."""
    result = run_cli("train", "-m", *GMM_ALL_LOGGERS, *sweep, f"hydra.sweep.dir={tmp_path}")
    assert_ok(result)
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 2
    ids = set()
    for job in jobs:
        run_id, history, config = wandb_run(job)
        ids.add(run_id)
        job_config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        assert config["seed"] == job_config["seed"]
        assert config["module"]["lr"] == job_config["module"]["lr"]
        val_loss = csv_values(job, "val/loss")
        assert len(val_loss) == 1
        wandb_val = [
            (row["trainer/global_step"], row["val/loss"]) for row in history if "val/loss" in row
        ]
        assert wandb_val == val_loss
        board = tensorboard_values(job, "val/loss")
        assert [step for step, _ in board] == [step for step, _ in val_loss]
        assert [value for _, value in board] == pytest.approx([v for _, v in val_loss], rel=1e-6)
    assert len(ids) == 2
    # The jobs measured different things (seeds or learning rates), so a shared run would show.
    assert csv_values(jobs[0], "val/loss") != csv_values(jobs[1], "val/loss")


# --- difforge's lines once under DDP ------------------------------------------------------------
def test_a_two_process_ddp_run_prints_difforges_lines_once(tmp_path):
    """Before: every DDP rank printed the config line, the W&B line, the effective batch size,
    the CPU-processes warning, the run directory and difforge's Python warnings."""
    result = run_cli(
        "train",
        *(o for o in GMM_ALL_LOGGERS if o != "logger=many"),
        "logger=wandb",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        # a schedule whose q(x_T) keeps the data: difforge's own Python warning
        "schedule.num_timesteps=100",
        "schedule.scale_to_num_timesteps=false",
        f"hydra.run.dir={tmp_path}",
    )
    assert_ok(result)
    lines = (result.stdout + result.stderr).splitlines()
    assert any("GLOBAL_RANK: 1" in line for line in lines)  # two processes did run
    for fragment in (
        "[difforge][INFO] - config: ",
        "W&B runs offline into",
        "effective batch size 1024 (per device 512 x 2 devices",
        "2 training processes will share",
        "schedule linear: abar_T = ",
        "run directory: ",
    ):
        assert sum(fragment in line for line in lines) == 1, (fragment, lines)
    # the run's log file, which every rank appends to, says each once too
    log_file = (tmp_path / "train.log").read_text()
    assert log_file.count("effective batch size") == 1


# --- a run's metrics are its final weights' ---------------------------------------------------
@pytest.mark.parametrize(
    "max_steps, fid_steps",
    [(7, [3, 6, 7]), (6, [3, 6])],
    ids=["interval-does-not-divide", "last-validation-at-the-end"],
)
def test_final_metrics_are_measured_on_the_final_weights_at_the_step_they_name(
    max_steps, fid_steps, tmp_path
):
    """Before: with the FID every 3 steps and 7 steps, ``final_metrics.json`` gave the FID and
    validation loss of step 6 beside a ``last.ckpt`` of step 7, and named no step. A run whose
    last validation falls on its last step is not validated twice."""
    result = run_cli(
        "train",
        *(o for o in QUICK_TRAIN if not o.startswith("trainer.max_steps")),
        f"trainer.max_steps={max_steps}",
        "trainer.val_check_interval=3",
        "callbacks.fid.every_n_steps=3",
        "callbacks.model_checkpoint.save_top_k=-1",  # step_<step>.ckpt every 3 steps
        f"hydra.run.dir={tmp_path}",
    )
    assert_ok(result)
    # the step a validation logs names its own rows only, never a later checkpoint
    periodic = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.ckpt"))
    assert periodic == [f"step_{step:07d}.ckpt" for step in (3, 6)]

    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == max_steps
    summary = json.loads((tmp_path / "final_metrics.json").read_text())
    assert summary["global_step"] == max_steps
    # The logged metrics: one FID row per evaluation, each at its step; the final one is the
    # value in final_metrics.json.
    fids = csv_values(tmp_path, "val/fid")
    assert [step for step, _ in fids] == fid_steps
    assert fids[-1][1] == pytest.approx(summary["metrics"]["val/fid"], rel=1e-6)
    assert [step for step, _ in csv_values(tmp_path, "val/loss")] == [3, 6, 7][: len(fid_steps)]
    for name in ("val/fid", "val/kid", "val/class_coverage", "val/loss"):
        assert summary["metric_steps"][name] == max_steps, summary["metric_steps"]
    assert summary["metric_steps"]["train/loss"] == max_steps - 1  # logged before the last update
    output = result.stdout + result.stderr
    assert [output.count(f"step {step}: FID") for step in fid_steps] == [1] * len(fid_steps)
    # best.ckpt: the weights of the lowest FID, the final evaluation's included
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["global_step"] == min(fids, key=lambda row: row[1])[0]
