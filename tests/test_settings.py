"""Issue 21, items 1 and 2: every key of sample.yaml, eval.yaml and train.yaml (and the trainer's)
is declared by type and range in ``difforge.cli.settings``; a bad value is one line naming the key,
the value and what is allowed, before anything is imported beyond Hydra or written. A device the
machine lacks is an error everywhere a device can be named, never the CPU in its place."""

from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from difforge.cli.settings import SETTINGS, check_settings
from difforge.devices import check_accelerator, resolve_device
from difforge.diffusion.samplers import Sampler
from difforge.errors import DifforgeError
from helpers import ROOT, assert_clean_error, run_cli
from test_configs import options  # also sets PROJECT_ROOT for the configs

CONFIGS = ROOT / "configs"
ORACLE = ("model=gmm_oracle", "data=gmm1d", "num_samples=10")
# The trainer's keys checked elsewhere: precision by resolve_precision and Lightning, plugins are
# objects.
TRAINER_KEYS_CHECKED_ELSEWHERE = {"trainer.precision", "trainer.plugins"}
# Lightning's limits that the trainer configs leave out: declared for when a user adds them.
OPTIONAL_TRAINER_KEYS = {"trainer.limit_train_batches", "trainer.limit_test_batches"}

BAD_VALUES = (0, -1, 0.5, "abc", None)
# Of BAD_VALUES, those each key allows (a path is any text, a name any text or number, null is
# "off" or "the default" where the comment in the config says so).
NAME = {0, -1, 0.5, "abc"}
OPTIONAL_PATH = {"abc", None}
ALLOWED = {
    "task_name": NAME,
    "run_name": NAME,
    "seed": {0},
    "class_label": {0, None},
    "guidance_scale": {0, 0.5, None},
    "ckpt_path": OPTIONAL_PATH,
    "pretrained": OPTIONAL_PATH,
    "noise": OPTIONAL_PATH,
    "input": OPTIONAL_PATH,
    "sigma_y": {0, 0.5},
    "metrics.fid": {None},
    "optimized_metric": OPTIONAL_PATH,
    "metrics.inception_weights": OPTIONAL_PATH,
    "metrics.fid_ref": OPTIONAL_PATH,
    "metrics.dinov2_weights": OPTIONAL_PATH,
    "metrics.dinov2_ref": OPTIONAL_PATH,
    "metrics.precision_recall": {None},
    "nll.ode_steps": {None},
    "sigma_data": {0.5},
    "trainer.default_root_dir": {"abc"},
    "trainer.devices": {-1},
    "trainer.max_steps": {-1},
    "trainer.max_epochs": {-1, None},
    "trainer.gradient_clip_val": {0, 0.5, None},
    "trainer.val_check_interval": {0.5, None},
    "trainer.check_val_every_n_epoch": {None},
    "trainer.limit_train_batches": {0, 0.5},
    "trainer.limit_val_batches": {0, 0.5},
    "trainer.limit_test_batches": {0, 0.5},
    "trainer.benchmark": {None},
}


def compose_command(command: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(command, overrides=list(overrides))


@pytest.fixture(scope="module")
def composed() -> dict[str, DictConfig]:
    return {
        "sample": compose_command("sample", *ORACLE),
        "eval": compose_command("eval", *ORACLE),
        "train": compose_command("train"),
        "restore": compose_command("restore", *ORACLE[:2]),
    }


def own_keys(node: dict, prefix: str = "") -> set[str]:
    """The leaf keys of a config file's own settings (no defaults list, no ``_target_``)."""
    keys: set[str] = set()
    for key, value in node.items():
        if key == "defaults" or str(key).startswith("_"):
            continue
        if isinstance(value, dict):
            keys |= own_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def config_file(*path: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONFIGS.joinpath(*path)))  # type: ignore[return-value]


@pytest.mark.parametrize("command", ["sample", "eval", "train", "restore"])
def test_every_key_of_the_command_is_declared(command, composed):
    """A key added to a command's config without a declared type and range fails here."""
    keys = own_keys(config_file(f"{command}.yaml"))
    if command == "train":
        trainer = config_file("trainer", "default.yaml")
        keys |= own_keys(trainer, "trainer.") - TRAINER_KEYS_CHECKED_ELSEWHERE
    assert keys <= set(SETTINGS[command]), keys - set(SETTINGS[command])
    stale = {key for key in SETTINGS[command] if not has_key(composed[command], key)}
    assert stale <= OPTIONAL_TRAINER_KEYS, stale


def has_key(cfg: DictConfig, key: str) -> bool:
    node, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, node) if node else cfg
    return isinstance(parent, DictConfig) and leaf in parent


@pytest.mark.parametrize(
    ("command", "key"), [(command, key) for command, table in SETTINGS.items() for key in table]
)
def test_each_key_with_zero_negative_fractional_text_and_null(command, key, composed):
    """Each bad value is one line that starts with the key and shows the value; the values the
    key allows (``ALLOWED``) pass."""
    for bad in BAD_VALUES:
        cfg = composed[command].copy()
        with open_dict(cfg):
            OmegaConf.update(cfg, key, bad, force_add=True)
        if bad in ALLOWED.get(key, set()):
            check_settings(command, cfg)
            continue
        with pytest.raises((ValueError, DifforgeError)) as caught:
            check_settings(command, cfg)
        message = str(caught.value)
        assert message.startswith(f"{key} must be "), message
        assert f"got {bad!r}" in message and "\n" not in message, message


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_and_trainer_cpu_pass(experiment):
    check_settings("train", compose_command("train", f"experiment={experiment}", "trainer=cpu"))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("seed", 2**32, "seed must be an integer in [0, 4294967295], got 4294967296"),
        (
            "trainer.max_steps",
            0,
            "trainer.max_steps must be an integer >= 1 or -1 (no limit), got 0",
        ),
        ("trainer.devices", [0, -1], "trainer.devices[1] must be an integer >= 0, got -1"),
        ("trainer.limit_val_batches", 1.5, "in [0, 1], got 1.5"),
        ("trainer.deterministic", "yes", "trainer.deterministic must be true, false or warn"),
        ("sigma_data", math.inf, "sigma_data must be > 0, got inf"),
        ("tags", ["a", 3], "tags[1] must be a non-empty text, got 3"),
        ("tags", "dev", "tags must be a list of texts ([a, b]), got 'dev'"),
    ],
)
def test_the_edges_of_the_trainer_and_train_keys(key, value, message, composed):
    cfg = composed["train"].copy()
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, force_add=True)
    with pytest.raises((ValueError, DifforgeError)) as caught:
        check_settings("train", cfg)
    assert message in str(caught.value)


# Through the real CLI: zero and negative counts reached torch (``range() arg 3 must not be
# zero``, ``torch.cat(): expected a non-empty list of Tensors``), a fractional seed was a
# traceback, a negative seed numpy's message; now one line each, in about a second, before
# Hydra makes the run directory.
@pytest.mark.parametrize(
    ("entry", "overrides", "message"),
    [
        ("sample", (*ORACLE, "batch_size=0"), "batch_size must be an integer >= 1, got 0"),
        ("sample", (*ORACLE, "batch_size=-3"), "batch_size must be an integer >= 1, got -3"),
        ("sample", (*ORACLE, "seed=1.5"), "seed must be an integer in [0, 4294967295], got 1.5"),
        ("sample", (*ORACLE, "num_samples=null"), "num_samples must be an integer >= 1, got None"),
        ("eval", (*ORACLE, "batch_size=-1"), "batch_size must be an integer >= 1, got -1"),
        ("eval", (*ORACLE, "seeds=0"), "seeds must be an integer >= 1, got 0"),
        (
            "eval",
            (*ORACLE, "nll.num_points=0.5"),
            "nll.num_points must be an integer >= 1, got 0.5",
        ),
        (
            "train",
            ("trainer.log_every_n_steps=0",),
            "trainer.log_every_n_steps must be an integer >= 1, got 0",
        ),
        ("train", ("seed=-1",), "seed must be an integer in [0, 4294967295], got -1"),
        ("train", ("sigma_data=0",), "sigma_data must be > 0, got 0"),
    ],
)
def test_a_bad_count_through_the_cli_names_its_key(entry, overrides, message, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(entry, *overrides, f"hydra.run.dir={run_dir}")
    assert_clean_error(result, f"error: {message}")
    assert not run_dir.exists()


@pytest.mark.slow
def test_a_bad_count_in_a_sweep_job_names_its_key(tmp_path):
    """A swept value is composed job by job: the run's own check names it."""
    result = run_cli("sample", "-m", *ORACLE, "batch_size=5,0", f"hydra.sweep.dir={tmp_path}")
    assert_clean_error(result, "error: batch_size must be an integer >= 1, got 0")


# --- a device that is not there ------------------------------------------------------------------
def machine(monkeypatch, cuda: int, mps: bool) -> None:
    """Pretend this machine has ``cuda`` CUDA GPUs and (or not) an Apple GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "mps", torch.device("cuda")])
def test_an_absent_device_is_refused_on_a_cpu_machine(monkeypatch, name):
    machine(monkeypatch, cuda=0, mps=False)
    with pytest.raises(DifforgeError, match=r"^device=.*: no .* on this machine; available: cpu "):
        resolve_device(name)


def test_auto_is_whatever_is_there(monkeypatch):
    machine(monkeypatch, cuda=0, mps=False)
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    machine(monkeypatch, cuda=0, mps=True)
    assert resolve_device("auto") == torch.device("mps")
    machine(monkeypatch, cuda=2, mps=False)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DifforgeError, match=r"^device=cuda:2: no CUDA GPU 2 on this machine"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["gpu", "tpu", "cuda:x", "", 0, None])
def test_a_name_that_is_no_device_is_refused(name):
    with pytest.raises(DifforgeError, match=r"^device must be one of auto, cpu, cuda, cuda:N, mps"):
        resolve_device(name)


def test_an_absent_accelerator_is_refused(monkeypatch):
    machine(monkeypatch, cuda=0, mps=False)
    for name in ("gpu", "cuda", "mps"):
        with pytest.raises(DifforgeError, match=rf"^trainer.accelerator={name}: no .* on this"):
            check_accelerator(name)
    assert check_accelerator("auto") == "auto" and check_accelerator("cpu") == "cpu"
    with pytest.raises(DifforgeError, match=r"must be one of auto, cpu, gpu, cuda, mps, got 'tpu'"):
        check_accelerator("tpu")
    machine(monkeypatch, cuda=1, mps=False)
    assert check_accelerator("gpu") == "gpu"


no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
no_mps = pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")


@no_cuda
@pytest.mark.parametrize(
    ("entry", "overrides", "message"),
    [
        ("sample", (*ORACLE, "device=cuda"), "device=cuda: no CUDA GPU on this machine"),
        # ~13 s each under load (the check imports torch to look for the device)
        pytest.param(
            "eval",
            (*ORACLE, "device=cuda:0"),
            "device=cuda:0: no CUDA GPU on this machine",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "train",
            ("trainer=gpu",),
            "trainer.accelerator=gpu: no CUDA GPU on this machine",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "train",
            ("trainer.accelerator=cuda",),
            "trainer.accelerator=cuda: no CUDA GPU",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_an_absent_device_through_the_cli(entry, overrides, message, tmp_path):
    """``sample.py device=cuda`` sampled on the CPU and exited 0."""
    run_dir = tmp_path / "run"
    result = run_cli(entry, *overrides, f"hydra.run.dir={run_dir}")
    assert_clean_error(result, f"error: {message}", "available: cpu")
    assert not run_dir.exists()


@no_mps
@pytest.mark.slow
def test_trainer_mps_is_refused_where_there_is_none(tmp_path):
    result = run_cli("train", "trainer=mps", f"hydra.run.dir={tmp_path / 'run'}")
    assert_clean_error(result, "error: trainer.accelerator=mps: no MPS (Apple GPU) on this machine")


@no_cuda
def test_the_python_api_refuses_an_absent_device(tmp_path):
    """Checked before the path is read, and ``Model.to`` leaves the model where it was."""
    import difforge
    from difforge.api import Model
    from test_module_settings import build

    with pytest.raises(DifforgeError, match=r"^device=cuda: no CUDA GPU on this machine"):
        difforge.load(tmp_path / "no_such_run", device="cuda")
    model = Model(build(), tmp_path, "difforge")
    with pytest.raises(DifforgeError, match=r"^device=cuda:0: no CUDA GPU on this machine"):
        model.to("cuda:0")
    assert model.device == torch.device("cpu")
    assert model.to("auto").device == torch.device("cpu")


@no_cuda
@pytest.mark.slow
@pytest.mark.parametrize("script", ["bench_sampling_peer", "bench_gpu"])
def test_scripts_that_take_a_device_refuse_an_absent_one(script):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / f"{script}.py"), "--device", "cuda"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert_clean_error(result, "error: --device=cuda: no CUDA GPU on this machine")


# --- the settings of the objects the config groups build -----------------------------------------
GROUPS = (
    "data",
    "model",
    "schedule",
    "parameterization",
    "loss",
    "noise_law",
    "sampler",
    "callbacks",
)


def typed_leaves(node: DictConfig, prefix: str) -> list[tuple[str, object]]:
    """``(key, default)`` for each number or true/false setting under ``node`` (interpolations,
    nulls, texts and lists left out)."""
    found = []
    for key in node:
        if str(key).startswith("_") or OmegaConf.is_interpolation(node, key):
            continue
        value = node[key]
        if isinstance(value, DictConfig):
            found += typed_leaves(value, f"{prefix}{key}.")
        elif isinstance(value, (bool, int, float)):
            found.append((f"{prefix}{key}", value))
    return found


@pytest.mark.parametrize(
    ("group", "option"), [(group, option) for group in GROUPS for option in options(group)]
)
def test_each_group_option_refuses_text_and_fractions_naming_the_key(group, option):
    """``schedule.sigma_min=abc`` was ``'<' not supported between 'int' and 'str'``,
    ``data.pin_memory=abc`` and ``schedule.scale_to_num_timesteps=abc`` were kept: every number
    or true/false setting of every option refuses a text (and a true/false one a number), in one
    line that starts with the key, before any object is built."""
    from difforge.cli.settings import check_object_settings

    cfg = compose_command("train", f"{group}={option}")
    check_object_settings("train", cfg)  # the option as shipped passes
    for key, default in typed_leaves(cfg[group], f"{group}."):
        for bad in ("abc", *((0.5, -1) if isinstance(default, bool) else ())):
            changed = cfg.copy()
            OmegaConf.update(changed, key, bad)
            with pytest.raises(ValueError) as caught:
                check_object_settings("train", changed)
            message = str(caught.value)
            assert message.startswith(f"{key} must be ") and f"got {bad!r}" in message, message


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Sampler("euler", 5, sigma_min=0), "sampler.sigma_min must be > 0, got 0"),
        (lambda: Sampler("ddim", 5, sigma_max=-1), "sampler.sigma_max must be > 0, got -1"),
        (
            lambda: Sampler("heun", 5, sigma_min=2.0, sigma_max=1.0),
            "sampler.sigma_min=2.0 must be below sampler.sigma_max=1.0",
        ),
        (lambda: gmm2d(radius=0), "data.radius must be > 0, got 0"),
        (lambda: gmm2d(radius=-1), "data.radius must be > 0, got -1"),
    ],
)
def test_ranges_the_walk_found_accepted(build, message):
    """``sampler.sigma_min=0``/``-1`` and ``data.radius=0``/``-1`` (all eight gmm2d means on one
    point) were accepted."""
    with pytest.raises(ValueError) as caught:
        build()
    assert str(caught.value) == message


def gmm2d(**options):
    from difforge.data.toys import GaussianMixture2dDataModule

    return GaussianMixture2dDataModule(**options)


@pytest.mark.slow
def test_a_group_objects_setting_of_the_wrong_type_through_the_cli(tmp_path):
    """Was ``schedule: a setting has the wrong type ('<' not supported between instances of
    'int' and 'str')``."""
    result = run_cli(
        "sample", *ORACLE, "schedule=edm", "schedule.sigma_min=abc", f"hydra.run.dir={tmp_path}"
    )
    assert_clean_error(result, "error: schedule.sigma_min must be a number, got 'abc'")
