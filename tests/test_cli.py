"""The entry points driven as users drive them: subprocesses of src/train.py, sample.py, eval.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import QUICK_TRAIN, assert_clean_error, assert_ok, run_cli


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A short default training run: digits, unet_tiny, a checkpoint at the end."""
    run_dir = tmp_path_factory.mktemp("digits_run")
    assert_ok(run_cli("train", *QUICK_TRAIN, f"hydra.run.dir={run_dir}"))
    return run_dir


def test_train_writes_checkpoints_samples_and_metrics(digits_run):
    assert (digits_run / "checkpoints" / "last.ckpt").is_file()
    # shorter than an epoch: FID comes from the validation after fit, and is kept as best.ckpt
    assert (digits_run / "checkpoints" / "best.ckpt").is_file()
    assert (
        torch.load(digits_run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    )
    assert list((digits_run / "samples").glob("step_*.png"))
    metrics = (digits_run / "csv" / "version_0" / "metrics.csv").read_text()
    assert "train/loss" in metrics


def test_checkpoint_is_weights_only_loadable_and_holds_the_config(digits_run):
    checkpoint = torch.load(digits_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["difforge"]["config"]["model"]["_target_"] == "difforge.nets.unet.UNet"
    assert checkpoint["difforge"]["data_shape"] == [1, 8, 8]
    assert any(key.startswith("ema.net.") for key in checkpoint["state_dict"])


@pytest.mark.parametrize("sampler,steps,nfe", [("ddim", 4, 4), ("heun", 3, 5)])
def test_sample_from_checkpoint(digits_run, tmp_path, sampler, steps, nfe):
    out = tmp_path / "samples"
    result = run_cli(
        "sample",
        f"ckpt_path={digits_run}/checkpoints/last.ckpt",
        f"sampler={sampler}",
        f"sampler.steps={steps}",
        "num_samples=10",
        "batch_size=4",
        f"hydra.run.dir={out}",
    )
    assert_ok(result)
    array = np.load(out / "samples.npz")["arr_0"]
    assert array.dtype == np.uint8 and array.shape == (10, 8, 8, 1)
    assert (out / "samples.png").stat().st_size > 0
    assert json.loads((out / "sampling.json").read_text())["nfe"] == nfe


def test_eval_writes_metrics(digits_run, tmp_path):
    out = tmp_path / "eval"
    assert_ok(
        run_cli(
            "eval",
            f"ckpt_path={digits_run}/checkpoints/last.ckpt",
            "num_samples=20",
            "sampler.steps=3",
            "nll.num_points=4",
            f"hydra.run.dir={out}",
        )
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nfe"] == 3 and metrics["nll_bpd_vlb"] > 0


def test_sample_oracle_gmm1d(tmp_path):
    """The issue's command: the exact model of the seed's mixture, no checkpoint."""
    result = run_cli(
        "sample",
        "model=gmm_oracle",
        "data=gmm1d",
        "sampler=dpmpp_2m",
        "sampler.steps=10",
        "num_samples=20000",
        f"hydra.run.dir={tmp_path}",
    )
    assert_ok(result)
    array = np.load(tmp_path / "samples.npz")["arr_0"]
    assert array.dtype == np.float32 and array.shape == (20000, 1)
    assert (tmp_path / "samples.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "sampling.json").read_text())["nfe"] == 10
    assert '"nfe": 10' in result.stdout


def test_eval_oracle_gmm1d(tmp_path):
    assert_ok(
        run_cli(
            "eval",
            "model=gmm_oracle",
            "data=gmm1d",
            "sampler=heun",
            "sampler.steps=25",
            "num_samples=20000",
            "nll.num_points=200",
            f"hydra.run.dir={tmp_path}",
        )
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["mode_coverage"] == 1.0 and metrics["w1"] < 0.06
    assert abs(metrics["nll_bpd_ode"] - metrics["true_nll_bpd"]) < 0.02


@pytest.mark.parametrize(
    "overrides,fragments",
    [
        (["schedule=cosinus"], ["Could not find 'schedule/cosinus'", "cosine"]),
        (["sampler=heun", "sampler.steps=0"], ["sampler.steps must be a positive integer, got 0"]),
        (["sampler=heun", "sampler.steps=-2"], ["got -2"]),
        (["trainer.max_steps=ten"], ["trainer.max_steps", "ten"]),
        (["data.channels=3"], ["channels"]),
        (["data.image_size=12"], ["image_size"]),
        (["module.lr=-1"], ["lr must be > 0, got -1"]),
        (["module.guidance_scale=3.0"], ["guidance_scale=3.0 needs a class-conditional model"]),
        (["loss=hybrid", "schedule=edm"], ["needs a discrete schedule"]),
        (["ckpt_path=/nonexistent/x.ckpt"], ["/nonexistent/x.ckpt"]),
    ],
)
def test_bad_train_input_is_refused_clearly(overrides, fragments):
    assert_clean_error(
        run_cli("train", *QUICK_TRAIN, *overrides, "hydra.run.dir=/tmp/difforge_bad_input"),
        *fragments,
    )


@pytest.mark.parametrize(
    "overrides,fragments",
    [
        (["ckpt_path=/nonexistent/model.ckpt"], ["checkpoint not found: /nonexistent/model.ckpt"]),
        ([], ["give ckpt_path="]),
        (
            ["model=gmm_oracle", "data=gmm1d", "num_samples=0"],
            ["num_samples must be an integer >= 1, got 0"],
        ),
        (["model=gmm_oracle", "data=gmm1d", "sampler=plms"], ["Could not find 'sampler/plms'"]),
        (["model=gmm_oracle", "data=gmm1d", "device=tpu9"], ["device"]),
    ],
)
def test_bad_sample_input_is_refused_clearly(overrides, fragments, tmp_path):
    assert_clean_error(run_cli("sample", *overrides, f"hydra.run.dir={tmp_path}"), *fragments)


@pytest.mark.slow
def test_image_folder_model_trains_and_evaluates_offline(tmp_path):
    """An RGB image-folder model: FID with Inception-v3 from a local weights file (offline)."""
    from PIL import Image

    from helpers import random_inception_file

    images = tmp_path / "images"
    for label in ("cats", "dogs"):
        (images / label).mkdir(parents=True)
        for i in range(12):
            colour = (40 * i % 255, 200 if label == "cats" else 30, 90)
            Image.new("RGB", (20, 18), colour).save(images / label / f"{i}.png")
    weights = random_inception_file(tmp_path / "weights-inception-2015-12-05-6726825d.pth")
    common = (f"metrics.inception_weights={weights}",)
    run_dir = tmp_path / "run"
    assert_ok(
        run_cli(
            "train",
            *QUICK_TRAIN,
            "data=image_folder",
            f"data.root={images}",
            "data.image_size=16",
            "data.batch_size=8",
            "model=unet_small",
            "trainer.val_check_interval=3",
            *common,
            f"hydra.run.dir={run_dir}",
        )
    )
    out = tmp_path / "eval"
    assert_ok(
        run_cli(
            "eval",
            f"ckpt_path={run_dir}/checkpoints/last.ckpt",
            "num_samples=12",
            "sampler.steps=2",
            "nll.num_points=4",
            *common,
            f"hydra.run.dir={out}",
        )
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fid"] >= 0 and "kid_mean" in metrics and metrics["nll_bpd_vlb"] > 0


@pytest.mark.slow
def test_trained_gmm1d_model_evaluates_with_exact_metrics(tmp_path):
    run_dir = tmp_path / "run"
    assert_ok(run_cli("train", *QUICK_TRAIN, "experiment=gmm1d", f"hydra.run.dir={run_dir}"))
    out = tmp_path / "eval"
    assert_ok(
        run_cli(
            "eval",
            f"ckpt_path={run_dir}/checkpoints/last.ckpt",
            "num_samples=500",
            "sampler.steps=5",
            "nll.num_points=16",
            f"hydra.run.dir={out}",
        )
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"w1", "mode_coverage", "mode_mass_0", "nll_bpd_vlb"} <= metrics.keys()
