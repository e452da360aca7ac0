"""Sampler options through the real CLI: zero terminal SNR from training to samples, grids, and
one-line errors for bad options."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import assert_clean_error, assert_ok, run_cli

ZERO_SNR = ("schedule=linear", "schedule.rescale_zero_terminal_snr=true")


def test_zero_terminal_snr_trains_with_v_and_samples(tmp_path):
    run = tmp_path / "run"
    assert_ok(
        run_cli(
            "train",
            "experiment=gmm1d",
            *ZERO_SNR,
            "parameterization=v",
            "trainer.max_steps=8",
            "logger=csv",
            "~callbacks.progress_bar",
            f"hydra.run.dir={run}",
        )
    )
    for grid, nfe in (("trailing", 4), ("karras", 4)):
        out = tmp_path / f"samples_{grid}"
        result = run_cli(
            "sample",
            f"ckpt_path={run}/checkpoints/last.ckpt",
            "sampler=dpmpp_2m",
            "sampler.steps=4",
            f"sampler.grid={grid}",
            "num_samples=64",
            f"hydra.run.dir={out}",
        )
        assert_ok(result)
        # The checkpoint's config groups, saved by the training run, in the config line.
        assert (
            "config: data=gmm1d model=mlp schedule=linear parameterization=v loss=simple "
            "noise_law=schedule sampler=dpmpp_2m (" in result.stderr + result.stdout
        ), result.stderr[-2000:]
        assert np.isfinite(np.load(out / "samples.npz")["arr_0"]).all()
        assert json.loads((out / "sampling.json").read_text())["nfe"] == nfe


def test_zero_terminal_snr_refuses_eps(tmp_path):
    result = run_cli(
        "train", "experiment=gmm1d", *ZERO_SNR, "trainer.max_steps=2", f"hydra.run.dir={tmp_path}"
    )
    assert_clean_error(result, "error: parameterization=eps cannot predict x0 from pure noise")


@pytest.mark.parametrize(
    "overrides,message",
    [
        (("sampler.grid=cosine",), "unknown sampler.grid 'cosine'; allowed: linspace, leading"),
        (("+sampler.S_chrun=1.0",), "sampler.S_chrun: sampler dpmpp_2m has no option 'S_chrun'"),
        (("sampler.final_sigma=none",), "unknown sampler.final_sigma 'none'; allowed: zero, min"),
        (("schedule=edm", "sampler.grid=trailing"), "sampler.grid='trailing' needs a discrete"),
    ],
)
def test_bad_sampler_options_are_one_line_errors(tmp_path, overrides, message):
    result = run_cli(
        "sample",
        "model=gmm_oracle",
        "data=gmm1d",
        "sampler=dpmpp_2m",
        "sampler.steps=5",
        "num_samples=10",
        *overrides,
        f"hydra.run.dir={tmp_path}",
    )
    assert_clean_error(result, f"error: {message}")


@pytest.mark.parametrize(
    "overrides,reason",
    [
        (("experiment=gmm1d",), "the data are vectors (no FID)"),
        ((), "this data's FID uses its own classifier's features, not Inception"),
        (("callbacks=none",), "this run has no FID callback"),
    ],
)
def test_inception_weights_that_cannot_apply_are_refused(tmp_path, overrides, reason):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"")
    result = run_cli(
        "train",
        *overrides,
        f"metrics.inception_weights={weights}",
        "trainer.max_steps=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert_clean_error(result, f"error: metrics.inception_weights={weights} cannot apply: {reason}")


@pytest.mark.parametrize("sampler,steps,nfe", [("dpmpp_2m", 10, 10), ("heun", 5, 10)])
def test_final_sigma_min_takes_every_step(tmp_path, sampler, steps, nfe):
    """Ending at sigma_min instead of 0: the same number of steps, each a full step (Heun's last
    one included, since its slope at sigma_min exists)."""
    assert_ok(
        run_cli(
            "sample",
            "model=gmm_oracle",
            "data=gmm1d",
            f"sampler={sampler}",
            f"sampler.steps={steps}",
            "sampler.final_sigma=min",
            "num_samples=10",
            f"hydra.run.dir={tmp_path}",
        )
    )
    assert json.loads((tmp_path / "sampling.json").read_text())["nfe"] == nfe
