"""Bad input and injected faults, fed to the CLIs as a user would: each exits non-zero with one line
naming the bad value, never a traceback, never a silent wrong result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import QUICK_TRAIN, assert_clean_error, assert_ok, run_cli


def test_injected_nan_stops_the_run_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    """A learning rate of 1e30 blows the weights up after one step: the loss turns non-finite."""
    result = run_cli(
        "train",
        *QUICK_TRAIN,
        "module.lr=1e30",
        "module.warmup_steps=0",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        f"hydra.run.dir={tmp_path}",
    )
    assert_clean_error(
        result,
        "non-finite training loss",
        "at global step 1",
        "timesteps t = [",
        "the last checkpoint is intact",
    )
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 1


def test_nonfinite_steps_can_be_skipped_up_to_a_bound(tmp_path):
    result = run_cli(
        "train",
        *QUICK_TRAIN,
        "module.lr=1e30",
        "module.warmup_steps=0",
        "module.max_nonfinite_skips=2",
        f"hydra.run.dir={tmp_path}",
    )
    assert_clean_error(
        result, "after skipping 2 such step(s), the limit module.max_nonfinite_skips=2"
    )
    assert (result.stdout + result.stderr).count("skipping a step") == 2


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    folders = {name: root / name for name in ("empty", "mixed", "broken")}
    for folder in folders.values():
        folder.mkdir()
    Image.new("RGB", (16, 16)).save(folders["mixed"] / "a.png")
    Image.new("RGB", (20, 12)).save(folders["mixed"] / "b.png")
    Image.new("RGB", (16, 16)).save(folders["broken"] / "good.png")
    (folders["broken"] / "bad.png").write_bytes(b"not a png at all")
    (folders["empty"] / "notes.txt").write_text("no images here")
    return folders


@pytest.mark.parametrize(
    "overrides,fragments",
    [
        (
            ["data=image_folder", "data.root=/tmp/difforge_missing_folder"],
            ["/tmp/difforge_missing_folder does not exist"],
        ),
        (["data=image_folder", "data.root={empty}"], ["{empty}", "no images"]),
        (
            ["data=image_folder", "data.root={mixed}", "data.image_size=null"],
            ["different sizes", "data.image_size"],
        ),
        (
            [
                "data=image_folder",
                "data.root={broken}",
                "data.image_size=16",
                "model.attn_resolutions=[8]",
            ],
            ["bad.png"],
        ),
        (
            ["data=mnist", "data.root=/tmp/difforge_no_mnist"],
            ["MNIST not found", "data.download=true", "/tmp/difforge_no_mnist/MNIST/raw"],
        ),
        (
            ["data=cifar10", "data.root=/tmp/difforge_no_cifar"],
            ["/tmp/difforge_no_cifar", "data.download=true"],
        ),
        (["model=mlp"], ["model MLPDenoiser is for vector data", "use model=unet_tiny"]),
        (["data=gmm1d"], ["model UNet is for images", "use model=mlp"]),
        (["data.image_size=6"], ["image_size=6"]),
        (["model.in_channels=3"], ["the data has 1 channel(s) but model.in_channels=3"]),
        (
            ["sampler=ddpm", "sampler.variance=learned"],
            ["sampler.variance='learned' needs a model trained with a learned variance"],
        ),
        (
            ["sampler=ddpm", "sampler.variance=huge"],
            ["unknown sampler.variance 'huge'; allowed: small, large, learned"],
        ),
        (["schedule.num_timesteps=0"], ["schedule.num_timesteps must be an integer >= 2, got 0"]),
        (["data.batch_size=0"], ["batch_size"]),
    ],
)
def test_bad_input_is_refused_with_the_value_named(overrides, fragments, image_folders, tmp_path):
    overrides = [o.format(**image_folders) for o in overrides]
    fragments = [f.format(**image_folders) for f in fragments]
    assert_clean_error(
        run_cli("train", *QUICK_TRAIN, *overrides, f"hydra.run.dir={tmp_path}"), *fragments
    )


def test_traceback_flag_shows_the_full_trace(tmp_path):
    result = run_cli(
        "train", *QUICK_TRAIN, "sampler.steps=0", "traceback=true", f"hydra.run.dir={tmp_path}"
    )
    assert result.returncode != 0 and "Traceback (most recent call last)" in result.stderr


def test_checkpoint_whose_weights_do_not_fit_its_config_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    assert_ok(run_cli("train", *QUICK_TRAIN, f"hydra.run.dir={run_dir}"))
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["difforge"]["config"]["model"]["base_channels"] = 32
    edited = tmp_path / "edited.ckpt"
    torch.save(checkpoint, edited)
    assert_clean_error(
        run_cli("sample", f"ckpt_path={edited}", f"hydra.run.dir={tmp_path / 's'}"),
        str(edited),
        "does not match",
    )
