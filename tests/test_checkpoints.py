"""Checkpoints are written atomically, and loaded safely: damaged or malicious files are refused."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from difforge.errors import CheckpointError
from difforge.training.checkpoint import AtomicCheckpointIO, load_checkpoint
from helpers import QUICK_TRAIN, assert_clean_error, assert_ok, run_cli


def test_failed_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)

    def disk_full(obj, file, *args, **kwargs):
        file.write(b"PK\x03\x04 partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    assert_ok(run_cli("train", *QUICK_TRAIN, f"hydra.run.dir={run_dir}"))
    return run_dir / "checkpoints" / "last.ckpt"


def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_does_not_run(
    tmp_path, trained_checkpoint
):
    marker = tmp_path / "pwned"
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    checkpoint["payload"] = _RunsCodeWhenUnpickled(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint, evil)
    with pytest.raises(CheckpointError, match="refused to load checkpoint"):
        load_checkpoint(evil)
    assert not marker.exists()
    for entry, extra in (("sample", []), ("eval", []), ("train", [*QUICK_TRAIN])):
        result = run_cli(entry, *extra, f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / entry}")
        assert_clean_error(result, "refused to load checkpoint", str(evil))
        assert not marker.exists()


def test_a_plain_pickle_payload_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.ckpt"
    evil.write_bytes(pickle.dumps(_RunsCodeWhenUnpickled(marker)))
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    assert not marker.exists()


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_checkpoints_are_refused_with_the_file_named(
    tmp_path, trained_checkpoint, fraction
):
    data = trained_checkpoint.read_bytes()
    truncated = tmp_path / f"cut_{fraction}.ckpt"
    truncated.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match=f"checkpoint {truncated} is corrupt or truncated"):
        load_checkpoint(truncated)


def test_truncated_checkpoint_given_to_the_cli_is_one_line(tmp_path, trained_checkpoint):
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(trained_checkpoint.read_bytes()[:5000])
    assert_clean_error(
        run_cli("sample", f"ckpt_path={truncated}", f"hydra.run.dir={tmp_path / 's'}"),
        str(truncated),
        "corrupt or truncated",
    )


def test_foreign_checkpoints_are_refused(tmp_path):
    foreign = tmp_path / "diffusers_unet.bin"
    torch.save({"conv_in.weight": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a difforge/Lightning checkpoint"):
        load_checkpoint(foreign)
    lightning_only = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "epoch": 0}, lightning_only)
    with pytest.raises(CheckpointError, match="was not written by difforge"):
        load_checkpoint(lightning_only)


@pytest.mark.parametrize(
    "weighting,expected",
    [("uniform", "DenoisingLoss"), ("min_snr", "MinSNRLoss"), ("edm", "EDMLoss")],
)
def test_a_checkpoint_saved_with_the_old_config_spelling_still_loads(
    tmp_path, trained_checkpoint, weighting, expected
):
    """Configs written before the loss classes and grid names changed (DenoisingLoss(weighting=),
    sampler.grid=discrete with rho 7, class_dropout 0.1 on an unconditional net) load as before."""
    from difforge.training.build import module_from_checkpoint

    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    config = checkpoint["difforge"]["config"]
    config["loss"] = {"_target_": "difforge.diffusion.losses.DenoisingLoss", "weighting": weighting}
    if weighting == "edm":
        config["loss"]["sigma_data"] = config.get("sigma_data", 0.5)
    config["sampler"].update(grid="discrete", rho=7.0)
    config["module"]["class_dropout"] = 0.1
    # Before the module node was a config group: a partial with no parts, and no noise_law group.
    config["module"]["_partial_"] = True
    del config["noise_law"]
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    module, cfg = module_from_checkpoint(old)
    assert type(module.loss_fn).__name__ == expected
    assert module.sampler.grid == "linspace" and module.sampler.rho is None
    assert cfg.module.class_dropout is None
    assert type(module.noise_law).__name__ == "ScheduleLaw"


def test_a_checkpoint_saves_each_part_of_the_module_once(trained_checkpoint):
    """The module node is saved with its own settings only; its parts (network, schedule, ...)
    stay under their groups, so a sampler given at load time is the one the module uses."""
    from difforge.training.build import module_from_checkpoint
    from difforge.training.config import MODULE_PARTS

    config = torch.load(trained_checkpoint, weights_only=True)["difforge"]["config"]
    assert not set(MODULE_PARTS) & set(config["module"])
    assert config["module"]["_target_"] == "difforge.training.module.DiffusionModule"
    assert all(group in config for group in MODULE_PARTS.values())
    sampler = OmegaConf.create(
        {"_target_": config["sampler"]["_target_"], "algorithm": "euler", "steps": 3}
    )
    module, _ = module_from_checkpoint(trained_checkpoint, sampler)
    assert (module.sampler.algorithm, module.sampler.steps) == ("euler", 3)
