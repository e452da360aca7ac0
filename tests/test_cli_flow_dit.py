"""The rectified-flow and DiT options through the training CLI, and their refused combinations."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir

from difforge.training.build import build_module
from helpers import QUICK_TRAIN, ROOT, assert_clean_error, assert_ok, run_cli


def test_flow_dit_logit_normal_trains_and_keeps_its_config(tmp_path):
    result = run_cli(
        "train",
        *QUICK_TRAIN,
        "model=dit_tiny",
        "parameterization=flow",
        "schedule=rectified_flow",
        "schedule.shift=2.0",
        "noise_law=logit_normal",
        "sampler=euler",
        "sampler.grid=flow",
        f"hydra.run.dir={tmp_path}",
    )
    assert_ok(result)
    config = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["difforge"][
        "config"
    ]
    assert config["model"]["_target_"] == "difforge.nets.dit.DiT"
    assert config["noise_law"]["_target_"].endswith("LogitNormalLaw")
    assert config["parameterization"]["_target_"].endswith("FlowParameterization")


@pytest.mark.parametrize(
    "overrides,fragments",
    [
        (
            ["noise_law=discrete_t", "schedule=edm"],
            ["noise_law=discrete_t needs a discrete schedule"],
        ),
        (
            ["model=dit_tiny", "model.patch_size=3"],
            ["image_size=8 is not divisible by patch_size=3"],
        ),
        (["model=dit_s", "data=gmm1d"], ["is for images"]),
        (["schedule=rectified_flow", "schedule.shift=0"], ["schedule.shift must be > 0, got 0"]),
        (["noise_law=logit_normal", "noise_law.s=-1"], ["noise_law.s must be > 0, got -1"]),
        (["sampler=euler", "sampler.grid=flw"], ["unknown sampler.grid 'flw'", "flow"]),
    ],
)
def test_bad_flow_and_dit_options_are_refused_clearly(overrides, fragments, tmp_path):
    assert_clean_error(
        run_cli("train", *QUICK_TRAIN, *overrides, f"hydra.run.dir={tmp_path}"), *fragments
    )


@pytest.mark.parametrize("objective", ["eps", "v", "edm", "flow"])
@pytest.mark.parametrize("model", ["unet_tiny", "dit_tiny"])
def test_objectives_build_and_train_one_step_on_digits(objective, model):
    """The objectives_sweep options: each objective sets schedule, parameterization, loss and noise
    law together, and trains either network."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"objective={objective}", f"model={model}"])
    expected = {
        "eps": ("CosineSchedule", "EpsParameterization", "ScheduleLaw"),
        "v": ("CosineSchedule", "VParameterization", "ScheduleLaw"),
        "edm": ("EDMSchedule", "EDMParameterization", "ScheduleLaw"),
        "flow": ("RectifiedFlowSchedule", "FlowParameterization", "LogitNormalLaw"),
    }[objective]
    module = build_module(cfg, (1, 8, 8))
    names = (module.schedule, module.denoiser.parameterization, module.noise_law)
    assert tuple(type(o).__name__ for o in names) == expected
    x0 = torch.rand(16, 1, 8, 8) * 2 - 1
    sigma = module.noise_law.sample(module.schedule, 16)
    loss = module.loss_fn(module.denoiser, x0, sigma, torch.randn_like(x0)).mean()
    loss.backward()
    assert torch.isfinite(loss)


def test_summarize_sweep_tables_fid_per_objective_and_model(tmp_path):
    fids = {("eps", "unet_tiny"): 3.0, ("flow", "unet_tiny"): 2.0, ("eps", "dit_tiny"): 5.0}
    for job, ((objective, model), fid) in enumerate(fids.items()):
        (tmp_path / str(job)).mkdir()
        (tmp_path / str(job) / "final_metrics.json").write_text(
            json.dumps(
                {
                    "choices": {"objective": objective, "model": model, "data": "digits"},
                    "global_step": 10,
                    "metrics": {"val/fid": fid, "val/loss": 0.1},
                }
            )
        )
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "summarize_sweep.py"),
            str(tmp_path),
            "--metric",
            "val/fid",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "| objective | dit_tiny | unet_tiny |" in result.stdout
    assert "| eps | 5 | 3 |" in result.stdout and "| flow | nan | 2 |" in result.stdout
    assert (tmp_path / "summary.png").is_file()
