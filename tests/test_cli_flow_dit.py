"""The rectified-flow and DiT options through the training CLI, and their refused combinations."""

from __future__ import annotations

import pytest
import torch

from helpers import QUICK_TRAIN, assert_clean_error, assert_ok, run_cli


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
