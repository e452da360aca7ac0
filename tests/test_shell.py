"""The shell as a new user meets it: one-line "did you mean" errors for typos, no Lightning import
before the config is valid, and a quiet training log (no YAML dump, each line once, no
dependency noise) with the full config saved in the run directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from difforge.cli.common import choices_line, quiet_third_party
from difforge.cli.overrides import added_key_error, check_overrides, command_line_overrides
from difforge.diffusion.schedules import LinearSchedule
from helpers import QUICK_TRAIN, ROOT, assert_clean_error, assert_ok, run_cli

# ``python -X importtime`` through the environment: every import is listed on stderr.
IMPORT_TIME = {"PYTHONPROFILEIMPORTTIME": "1"}
LIGHTNING_IMPORT = re.compile(r"^import time:.*\|\s*lightning(\.\S+)?$")
ORACLE = ("model=gmm_oracle", "data=gmm1d")


def user_lines(result: subprocess.CompletedProcess) -> list[str]:
    """What the user sees, without the import-time listing."""
    output = result.stdout + result.stderr
    return [line for line in output.splitlines() if line and not line.startswith("import time:")]


def imported_lightning(result: subprocess.CompletedProcess) -> bool:
    return any(LIGHTNING_IMPORT.match(line) for line in result.stderr.splitlines())


@pytest.mark.parametrize(
    "entry,overrides,fragments",
    [
        (
            "train",
            ["schedul=cosine"],
            ["schedul: no such config group or key", "did you mean schedule?"],
        ),
        (
            "train",
            ["schedule=cosin"],
            [
                "did you mean schedule=cosine?",
                "options of schedule: cosine, edm, linear, rectified_flow",
            ],
        ),
        (
            "train",
            ["trainer.max_step=5"],
            ["trainer.max_step: no such key; did you mean trainer.max_steps?"],
        ),
        ("eval", ["metrics.fid_reff=x"], ["did you mean metrics.fid_ref?", "+metrics.fid_reff=x"]),
        ("train", ["trainr.max_steps=5"], ["did you mean trainer.max_steps?"]),
        (
            "train",
            ["~trainer.max_stepz"],
            ["trainer.max_stepz: no such key; did you mean trainer.max_steps?"],
        ),
        ("train", ["experiment=gmm1d", "data.n_sampels=10"], ["data.n_sampels: no such key"]),
        ("train", ["-m", "schedule=cosin,edm"], ["did you mean schedule=cosine?"]),
        ("sample", ["model=gmm_oracle", "sampler=ddpn"], ["did you mean sampler=ddpm?"]),
        ("sample", ["model=gmm_oracle", "num_sample=5"], ["did you mean num_samples?"]),
        ("eval", ["ckpt_pth=x.ckpt"], ["did you mean ckpt_path?"]),
        (
            "sample",
            [*ORACLE, "sampler=ddim", "sampler.etaa=0.5"],
            ["error: sampler.etaa: no such key; did you mean sampler.eta?"],
        ),
        (
            "sample",
            [*ORACLE, "sampler=ddim", "+sampler.etaa=0.5"],
            ["error: sampler.etaa: sampler ddim has no option 'etaa'; did you mean sampler.eta?"],
        ),
        (
            "eval",
            [*ORACLE, "++sampler.S_chrun=1"],
            ["sampler dpmpp_2m has no option 'S_chrun' (its options: algorithm, final_sigma,"],
        ),
        (
            "train",
            ["experiment=gmm1d", "+model.hiden_dim=64"],
            [
                "model.hiden_dim: MLPDenoiser has no option 'hiden_dim'; did you mean model.hidden_dim?"
            ],
        ),
        (
            "sample",
            [*ORACLE, "+schedule.num_timestep=10", "schedule=cosine"],
            ["CosineSchedule has no option 'num_timestep'; did you mean schedule.num_timesteps?"],
        ),
        (
            "train",
            ["module.net=mlp"],
            ["error: module.net is the model group (module.net: ${model}); set model=mlp instead"],
        ),
        (
            "train",
            ["module.sampler.steps=10"],
            ["module.sampler.steps: module.sampler is the sampler group", "set sampler.steps=10"],
        ),
        ("train", ["module.ema=0.9"], ["module.ema: no such key; did you mean module.ema_decay?"]),
        ("train", ["module.Lr=1"], ["module.Lr: no such key; did you mean module.lr?"]),
        ("sample", [*ORACLE, "module.lr=3"], ["module.lr: this command's config has no module"]),
        (
            "sample",
            ["ckpt_path=/x/epoch=0-step=20.ckpt"],
            [
                "error: ckpt_path=/x/epoch=0-step=20.ckpt: a value holding '=' must be quoted: "
                "'ckpt_path=\"/x/epoch=0-step=20.ckpt\"'"
            ],
        ),
    ],
)
def test_typo_is_one_line_with_the_closest_valid_name(entry, overrides, fragments):
    result = run_cli(entry, *overrides, env=IMPORT_TIME)
    assert_clean_error(result, *fragments)
    assert result.returncode == 1
    lines = user_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not imported_lightning(result), "a config error imported Lightning"


@pytest.mark.parametrize(
    "entry,overrides,add_hint",
    [
        ("train", ["trainer.max_step=5"], False),
        ("sample", ["sampler=ddim", "sampler.etaa=0.5"], False),
        ("eval", ["metrics.fid_reff=x"], True),
        ("train", ["schedul=cosine"], True),
    ],
)
def test_add_hint_only_where_a_new_key_can_apply(capsys, entry, overrides, add_hint):
    """A near miss of an option of an object (``sampler.etaa``) is a typo: no "+key" hint, which
    would only lead to the next error; a plain node may take a new key."""
    with pytest.raises(SystemExit):
        check_overrides(str(ROOT / "configs"), entry, [*ORACLE[1:], *overrides])
    message = capsys.readouterr().err
    assert "did you mean" in message
    assert ("to add a new key: +" in message) == add_hint, message


def test_the_arguments_the_builder_supplies_are_not_module_options(capsys):
    """``data_shape`` and ``run_config`` come from the data and the run, not from the config."""
    with pytest.raises(SystemExit):
        check_overrides(str(ROOT / "configs"), "train", ["+module.data_shape=[1,8,8]"])
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: module.data_shape: DiffusionModule has no option")
    assert "run_config" not in message and "lr, max_nonfinite_skips" in message


def test_added_key_is_checked_against_the_object_it_configures():
    """``+key`` into a node with a ``_target_``: the class's keyword options (and a Sampler's
    algorithm's); a class taking ``**kwargs`` (other than Sampler) is not checked."""
    sampler = {"_target_": "difforge.diffusion.samplers.Sampler", "algorithm": "ddim", "steps": 5}
    config = OmegaConf.create({"sampler": {**sampler, "eta": 0.5, "etaa": 0.5}, "plain": {"x": 1}})
    assert added_key_error("sampler.eta", config) is None
    assert added_key_error("plain.x", config) is None
    assert added_key_error("sampler.etaa", config) == (
        "sampler.etaa: sampler ddim has no option 'etaa'; did you mean sampler.eta?"
    )
    config.sampler.algorithm = "heun"  # heun has no eta
    assert "sampler heun has no option 'eta'" in str(added_key_error("sampler.eta", config))
    config.sampler.algorithm = "no_such_solver"  # the Sampler refuses it when built
    assert added_key_error("sampler.etaa", config) is None
    anything = OmegaConf.create({"d": {"_target_": "builtins.dict", "anything": 1}})
    assert added_key_error("d.anything", anything) is None


def test_config_line_names_every_group_defaults_included():
    hydra_choices = {
        "hydra/launcher": "basic",
        "paths": "default",
        "sampler": "ddim",
        "schedule": None,
        "model": "gmm_oracle",
        "data": "gmm1d",
    }
    assert choices_line(hydra_choices, {}) == "data=gmm1d model=gmm_oracle sampler=ddim"
    oracle = {"data": "gmm1d", "model": "gmm_oracle", "schedule": "edm"}
    assert choices_line(hydra_choices, oracle) == (
        "data=gmm1d model=gmm_oracle schedule=edm sampler=ddim"
    )


@pytest.mark.parametrize(
    "entry,overrides,line",
    [
        ("sample", [], "config: data=gmm1d model=gmm_oracle schedule=edm sampler=dpmpp_2m ("),
        (
            "eval",
            ["schedule=cosine"],
            "config: data=gmm1d model=gmm_oracle schedule=cosine sampler",
        ),
    ],
)
def test_exact_model_runs_name_their_schedule_without_lightning(tmp_path, entry, overrides, line):
    """The exact model's config line names its default schedule; sampling and evaluating it needs
    no Lightning (its mixture comes from the data options, not from the data module)."""
    result = run_cli(
        entry,
        *ORACLE,
        *overrides,
        "num_samples=20",
        "nll.enabled=false" if entry == "eval" else "seed=0",
        f"hydra.run.dir={tmp_path}",
        env=IMPORT_TIME,
    )
    assert_ok(result)
    assert any(text.startswith(line) or f"] - {line}" in text for text in user_lines(result)), (
        user_lines(result)
    )
    assert not imported_lightning(result)


def test_help_does_not_import_lightning():
    result = run_cli("train", "--help", env=IMPORT_TIME)
    assert_ok(result)
    assert "== Config ==" in result.stdout or "Config groups" in result.stdout
    assert not imported_lightning(result)


def test_lightning_import_is_detected():
    """The import check above can fail: a run that does import Lightning is seen."""
    result = subprocess.run(
        [sys.executable, "-c", "import lightning"],
        capture_output=True,
        text=True,
        env={**os.environ, **IMPORT_TIME},
        timeout=120,
    )
    assert imported_lightning(result)


def test_valid_overrides_pass_the_check():
    configs = str(ROOT / "configs")
    check_overrides(configs, "train", ["experiment=gmm1d", "trainer.max_steps=5", "~callbacks.fid"])
    check_overrides(
        configs, "train", ["-m", "schedule=cosine,edm", "+extra=1", "hydra.run.dir=/tmp/x"]
    )
    check_overrides(configs, "train", ["-m", "sampler=glob(*)", "seed=range(1,3)"])
    check_overrides(configs, "sample", ["model=gmm_oracle", "data=gmm1d", "num_samples=100"])


def test_command_line_overrides_skips_hydra_flags():
    assert command_line_overrides(["-m", "a=1,2", "--cfg", "job", "-p", "trainer", "b=2"]) == [
        "a=1,2",
        "b=2",
    ]
    assert command_line_overrides(["a=1", "--help"]) is None
    assert command_line_overrides(["--config-name=other", "a=1"]) is None


def test_noise_filters_keep_difforge_warnings():
    """The third-party filters are exact: difforge's own warnings (a schedule that does not end in
    noise) still reach the user."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        LinearSchedule(num_timesteps=10, beta_start=1e-4, beta_end=1e-3)
        warnings.warn("'set_vital' is deprecated, please do not call", UserWarning, stacklevel=1)
    messages = [str(w.message) for w in caught]
    assert any("abar_T" in m for m in messages), messages
    assert not any("set_vital" in m for m in messages), messages


def run_directory(output: str) -> Path:
    found = re.search(r"run directory: (\S+)", output)
    assert found, output[-3000:]
    return Path(found.group(1))


def test_short_training_run_is_quiet_and_saves_the_config(tmp_path):
    result = run_cli("train", *QUICK_TRAIN, "experiment=gmm1d", f"hydra.run.dir={tmp_path}")
    assert_ok(result)
    output = result.stdout + result.stderr
    assert "_target_" not in output, "the resolved config was printed"
    assert re.search(r"config: .*data=gmm1d.*model=", output), output[-3000:]
    lightning_lines = [line for line in output.splitlines() if "GPU available:" in line]
    assert len(lightning_lines) == 1, lightning_lines
    assert not any(line.startswith("INFO: ") for line in output.splitlines()), output[-3000:]
    for noise in (
        "Tip:",
        "weights_only",
        "set_vital",
        "LeafSpec",
        "transfer_batch_to_device",
        "at the start of training",
    ):
        assert noise not in output, noise
    run_dir = run_directory(output)
    assert run_dir == tmp_path
    assert "_target_" in (run_dir / ".hydra" / "config.yaml").read_text()
    tree = (run_dir / "config_tree.log").read_text()
    assert "── model" in tree and "_target_" in tree


def test_print_config_prints_the_tree(tmp_path):
    result = run_cli(
        "train",
        *QUICK_TRAIN,
        "experiment=gmm1d",
        "print_config=true",
        "train=false",
        f"hydra.run.dir={tmp_path}",
    )
    assert_ok(result)
    assert "── model" in result.stdout and "_target_" in result.stdout


def test_fid_callback_steps_are_its_samplers(capsys):
    """configs/callbacks/fid.yaml is a plain node: the FID sampler's step count is set in one
    place, ``callbacks.fid.sampler.steps``; the old overriding ``callbacks.fid.steps`` is gone."""
    configs = str(ROOT / "configs")
    check_overrides(configs, "train", ["callbacks.fid.sampler.steps=5"])
    with pytest.raises(SystemExit):
        check_overrides(configs, "train", ["+callbacks.fid.steps=5"])
    assert "callbacks.fid.steps: FIDCallback has no option 'steps'" in capsys.readouterr().err
