"""Scale-out through the front door: DDP on CPU processes, Hydra multiruns, Optuna, submitit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from helpers import QUICK_TRAIN, ROOT, assert_clean_error, assert_ok, run_cli

pytestmark = pytest.mark.slow
WITH_VALIDATION = (*QUICK_TRAIN, "trainer.val_check_interval=3")


def test_two_process_ddp_training_completes_and_its_checkpoint_loads(tmp_path):
    result = run_cli(
        "train",
        *QUICK_TRAIN,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"hydra.run.dir={tmp_path}",
    )
    assert_ok(result)
    assert "effective batch size 256 (per device 128 x 2 devices" in result.stdout + result.stderr
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 6
    out = tmp_path / "sample"
    assert_ok(
        run_cli(
            "sample",
            f"ckpt_path={tmp_path}/checkpoints/last.ckpt",
            "sampler.steps=2",
            "num_samples=4",
            f"hydra.run.dir={out}",
        )
    )


def test_multirun_2x2_makes_four_runs_and_a_summary(tmp_path):
    result = run_cli(
        "train",
        "-m",
        *WITH_VALIDATION,
        "schedule=linear,cosine",
        "model=unet_tiny,unet_small",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert_ok(result)
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 4
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
    summary = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "summarize_sweep.py"), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert summary.returncode == 0, summary.stderr
    per_run_table = summary.stdout.split("\n\n")[0]  # then the metric per schedule x model
    rows = [
        line
        for line in per_run_table.splitlines()
        if line.startswith("| ") and "job" not in line and "---" not in line
    ]
    assert len(rows) == 4
    assert {("linear" in r, "unet_small" in r) for r in rows} == {
        (True, True),
        (True, False),
        (False, True),
        (False, False),
    }
    assert (tmp_path / "summary.png").stat().st_size > 0


def test_ddp_inside_a_basic_multirun_is_refused_clearly(tmp_path):
    result = run_cli(
        "train",
        "-m",
        *QUICK_TRAIN,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "schedule=linear,cosine",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert_clean_error(result, "re-launch the whole sweep", "submitit")


def test_optuna_sweep_returns_a_best_value(tmp_path):
    result = run_cli(
        "train",
        *WITH_VALIDATION,
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert_ok(result)
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert (
        best["name"] == "optuna"
        and isinstance(best["best_value"], float)
        and best["best_value"] > 0
    )
    assert len([p for p in tmp_path.iterdir() if p.is_dir() and p.name.isdigit()]) == 2


def test_submitit_local_launches_a_run(tmp_path):
    result = run_cli(
        "train",
        "-m",
        *QUICK_TRAIN,
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert_ok(result)
    summary = json.loads((tmp_path / "0" / "final_metrics.json").read_text())
    assert summary["global_step"] == 6


def test_resume_under_a_different_device_count(tmp_path):
    assert_ok(run_cli("train", *QUICK_TRAIN, f"hydra.run.dir={tmp_path}"))
    result = run_cli(
        "train",
        *[o for o in QUICK_TRAIN if not o.startswith("trainer.max_steps")],
        "trainer.max_steps=10",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "ckpt_path=last",
        f"hydra.run.dir={tmp_path}",
    )
    assert_ok(result)
    assert (
        torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    )
