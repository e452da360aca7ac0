"""The everyday paths through the CLI (issue 12): flags that must change the result or be refused,
guidance with a learned variance, labelled samples, documented commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import QUICK_TRAIN, assert_clean_error, assert_ok, run_cli

GMM_QUICK = tuple(o for o in QUICK_TRAIN if not o.startswith("trainer.max_steps"))


@pytest.fixture(scope="module")
def conditional_hybrid(tmp_path_factory) -> Path:
    """A class-conditional gmm1d MLP with a learned variance (loss=hybrid), a few steps."""
    run_dir = tmp_path_factory.mktemp("conditional_hybrid")
    assert_ok(
        run_cli(
            "train",
            *GMM_QUICK,
            "experiment=gmm1d",
            "trainer.max_steps=4",
            "model.num_classes=3",
            "model.hidden_dim=32",
            "loss=hybrid",
            "model.learned_variance=true",
            f"hydra.run.dir={run_dir}",
        )
    )
    return run_dir / "checkpoints" / "last.ckpt"


def sample(ckpt: Path, out: Path, *overrides: str) -> dict[str, np.ndarray]:
    assert_ok(
        run_cli(
            "sample",
            f"ckpt_path={ckpt}",
            "sampler.steps=4",
            "num_samples=12",
            "device=cpu",
            *overrides,
            f"hydra.run.dir={out}",
        )
    )
    with np.load(out / "samples.npz") as arrays:
        return dict(arrays)


def evaluate(ckpt: Path, out: Path, *overrides: str) -> dict[str, float]:
    assert_ok(
        run_cli(
            "eval",
            f"ckpt_path={ckpt}",
            "sampler.steps=4",
            "num_samples=200",
            "device=cpu",
            "nll.enabled=false",
            *overrides,
            f"hydra.run.dir={out}",
        )
    )
    return json.loads((out / "metrics.json").read_text())


# --- 2. flags that were silently ignored ----------------------------------------------------------
def test_use_ema_changes_the_samples_and_the_sample_metrics(conditional_hybrid, tmp_path):
    """Before: ``use_ema=false`` still sampled the EMA weights (same samples, same W1)."""
    ema = sample(conditional_hybrid, tmp_path / "ema")["arr_0"]
    raw = sample(conditional_hybrid, tmp_path / "raw", "use_ema=false")["arr_0"]
    assert not np.array_equal(ema, raw)
    w1_ema = evaluate(conditional_hybrid, tmp_path / "eval_ema")["w1"]
    w1_raw = evaluate(conditional_hybrid, tmp_path / "eval_raw", "use_ema=false")["w1"]
    assert w1_ema != w1_raw


ORACLE = ("model=gmm_oracle", "data=gmm1d", "num_samples=10")


@pytest.mark.parametrize(
    "entry,overrides,fragments",
    [
        ("sample", (*ORACLE, "use_ema=false"), ["use_ema=False needs a trained checkpoint"]),
        ("sample", (*ORACLE, "guidance_scale=2"), ["guidance_scale=2 needs a trained checkpoint"]),
        ("eval", (*ORACLE, "class_label=1"), ["class_label=1 needs a trained checkpoint"]),
        (
            "sample",
            ("model=gmm_oracle", "data=moons"),
            ["needs data with a known Gaussian mixture"],
        ),
        (
            "eval",
            (*ORACLE, "schedule=linear", "nll.ode_steps=10"),
            ["nll.ode_steps=10 applies to nll.method=ode"],
        ),
        (
            "eval",
            (*ORACLE, "schedule=edm", "nll.method=vlb"),
            [
                "nll.method=vlb needs a discrete schedule (linear, cosine, sigmoid), got "
                "schedule='edm'; use nll.method=ode"
            ],
        ),
        (
            "eval",
            (*ORACLE, "metrics.inception_weights=/x.pth", "nll.enabled=false"),
            ["metrics.inception_weights is for FID of images"],
        ),
        (
            "train",
            (*QUICK_TRAIN, "module.class_dropout=0.2"),
            ["module.class_dropout=0.2 needs a class-conditional model"],
        ),
        (
            "train",
            (*QUICK_TRAIN, "experiment=gmm1d", "module.channels_last=true"),
            ["module.channels_last=true is a memory layout for images"],
        ),
    ],
)
def test_options_that_cannot_apply_are_refused(entry, overrides, fragments, tmp_path):
    assert_clean_error(run_cli(entry, *overrides, f"hydra.run.dir={tmp_path}"), *fragments)


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (("nll.num_points=abc",), "nll.num_points must be an integer >= 1, got 'abc'"),
        (("nll.num_points=0",), "nll.num_points must be an integer >= 1, got 0"),
        (("nll.enabled=maybe",), "nll.enabled must be true or false, got 'maybe'"),
        (("nll.method=foo",), "nll.method must be one of auto, vlb, ode, got 'foo'"),
        (("nll.ode_steps=0",), "nll.ode_steps must be an integer >= 1, got 0"),
    ],
)
def test_bad_nll_options_are_refused_before_sampling(overrides, fragment, tmp_path):
    """They were tracebacks after the sampling (``num_points=abc``, ``=0``) or silently taken."""
    result = run_cli("eval", *ORACLE, *overrides, f"hydra.run.dir={tmp_path}")
    assert_clean_error(result, fragment)
    assert "sampling" not in result.stdout + result.stderr


def test_a_setting_of_the_wrong_type_names_its_config_node():
    """A class that does not check a setting's type itself (a string compared with a number):
    the one line names the config node to look at, by its group."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from difforge.cli.common import user_error_message

    cfg = OmegaConf.create(
        {
            "schedule": {
                "_target_": "difforge.diffusion.schedules.LinearSchedule",
                "beta_start": "abc",
            },
            "module": {"_target_": "builtins.dict", "schedule": "${schedule}"},
        }
    )
    with pytest.raises(InstantiationException) as caught:
        instantiate(cfg.module)
    message = user_error_message(caught.value)
    assert message is not None and "\n" not in message
    assert message.startswith("schedule: a setting has the wrong type (")
    assert "LinearSchedule; check the schedule.* values given" in message


def test_model_and_data_cannot_be_chosen_beside_a_checkpoint(conditional_hybrid, tmp_path):
    """Before: ``model=``/``data=``/``schedule=`` beside ``ckpt_path`` were silently ignored."""
    result = run_cli(
        "sample", f"ckpt_path={conditional_hybrid}", "schedule=cosine", f"hydra.run.dir={tmp_path}"
    )
    assert_clean_error(result, "schedule cannot be chosen with ckpt_path")


# --- 3. guidance with a learned variance ----------------------------------------------------------
def test_guided_ancestral_sampling_with_a_learned_variance(conditional_hybrid, tmp_path):
    """Before: AttributeError, the guidance wrapper had no ``predict``."""
    guided = sample(
        conditional_hybrid,
        tmp_path / "guided",
        "sampler=ddpm",
        "sampler.variance=learned",
        "guidance_scale=3",
    )["arr_0"]
    plain = sample(
        conditional_hybrid, tmp_path / "plain", "sampler=ddpm", "sampler.variance=learned"
    )["arr_0"]
    assert np.isfinite(guided).all() and not np.array_equal(guided, plain)


# --- 9. samples carry their labels ------------------------------------------------------------
def test_conditional_samples_carry_their_labels(conditional_hybrid, tmp_path):
    """Before: ``samples.npz`` held ``arr_0`` only."""
    cycled = sample(conditional_hybrid, tmp_path / "cycled")
    np.testing.assert_array_equal(cycled["arr_1"], np.arange(12) % 3)
    one = sample(conditional_hybrid, tmp_path / "one", "class_label=2")
    np.testing.assert_array_equal(one["arr_1"], np.full(12, 2))
    assert_clean_error(
        run_cli(
            "sample",
            f"ckpt_path={conditional_hybrid}",
            "class_label=3",
            f"hydra.run.dir={tmp_path / 'bad'}",
        ),
        "class_label must be an integer in [0, 3), got 3",
    )


def test_eval_honours_class_label(conditional_hybrid, tmp_path):
    """Before: ``class_label`` was ignored by eval (the same metrics for every label). With a
    label, the samples of that class are compared with its mixture component."""
    everything = evaluate(conditional_hybrid, tmp_path / "all")
    component = evaluate(conditional_hybrid, tmp_path / "two", "class_label=2")
    assert component["class_label"] == 2 and "class_label" not in everything
    assert component["w1"] != everything["w1"]


# --- 4. the forward process ends in noise for any T -------------------------------------------
def test_a_short_linear_schedule_ends_in_noise(tmp_path):
    """Before: T = 100 kept DDPM's betas, abar_T = 0.36, and even the exact denoiser had W1 0.99
    on gmm1d. Now the betas scale with 1000 / T; unscaled ones are reported with abar_T."""
    common = (
        "model=gmm_oracle",
        "data=gmm1d",
        "schedule=linear",
        "schedule.num_timesteps=100",
        "sampler=ddpm",
        "sampler.steps=100",
        "num_samples=4000",
        "nll.enabled=false",
    )
    result = run_cli("eval", *common, f"hydra.run.dir={tmp_path / 'scaled'}")
    assert_ok(result)
    assert "abar_T" not in result.stderr
    assert json.loads((tmp_path / "scaled" / "metrics.json").read_text())["w1"] < 0.1
    result = run_cli(
        "eval",
        *common,
        "schedule.scale_to_num_timesteps=false",
        f"hydra.run.dir={tmp_path / 'unscaled'}",
    )
    assert_ok(result)
    assert "abar_T = 0.3" in result.stderr
    assert json.loads((tmp_path / "unscaled" / "metrics.json").read_text())["w1"] > 0.5


# --- 6. documented pairings ---------------------------------------------------------------------
def test_the_exact_model_of_gmm2d_samples(tmp_path):
    """Before: ``TypeError('must be real number, not NoneType')``: the oracle read data.weights,
    null for the ring layout, instead of the data module's mixture. (Every documented command
    runs in tests/test_docs_commands.py, marked slow.)"""
    result = run_cli(
        "sample",
        "model=gmm_oracle",
        "data=gmm2d",
        "sampler=heun",
        "sampler.steps=5",
        "num_samples=50",
        f"hydra.run.dir={tmp_path}",
    )
    assert_ok(result)
    assert np.load(tmp_path / "samples.npz")["arr_0"].shape == (50, 2)


# --- 7. sweeps of short runs ----------------------------------------------------------------
def test_a_run_shorter_than_an_epoch_returns_its_optimized_metric(tmp_path):
    """Before: a run that ended before its first validation returned None (Optuna: "Return value
    must be float-castable"), and warned "val/fid was not logged" even with FID off."""
    result = run_cli(
        "train", *GMM_QUICK, "experiment=gmm1d", "trainer.max_steps=3", f"hydra.run.dir={tmp_path}"
    )
    assert_ok(result)
    assert "val/fid was not logged" not in result.stdout + result.stderr
    summary = json.loads((tmp_path / "final_metrics.json").read_text())
    assert summary["global_step"] == 3 and np.isfinite(summary["metrics"]["val/loss"])
    result = run_cli(
        "train",
        *GMM_QUICK,
        "experiment=gmm1d",
        "trainer.max_steps=3",
        "optimized_metric=val/fid",
        f"hydra.run.dir={tmp_path / 'fid'}",
    )
    assert_clean_error(result, "optimized_metric=val/fid was not logged by this run", "val/loss")


def test_summarize_sweep_refuses_a_metric_no_run_logged(tmp_path):
    """Before: an empty summary.png when val/loss was never logged."""
    import subprocess
    import sys

    from helpers import ROOT

    job = tmp_path / "0"
    job.mkdir()
    summary = {"metrics": {"train/loss": 1.0}, "choices": {"schedule": "linear"}, "global_step": 3}
    (job / "final_metrics.json").write_text(json.dumps(summary))
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "summarize_sweep.py"), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "no run of" in result.stderr and "val/loss" in result.stderr
    assert not (tmp_path / "summary.png").exists()


@pytest.mark.slow
def test_an_optuna_sweep_of_short_runs_completes(tmp_path):
    """The issue's command: every trial failed and the sweep ended in a raw ValueError."""
    result = run_cli(
        "train",
        "-m",
        *GMM_QUICK,
        "experiment=gmm1d",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "trainer.max_steps=10",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert_ok(result)
    assert (
        "Best value" in result.stdout + result.stderr
        or (tmp_path / "optimization_results.yaml").is_file()
    )


# --- 8. launch --------------------------------------------------------------------------------
def test_several_cpu_processes_are_announced_before_they_start(tmp_path):
    """Before: ``trainer.devices=4`` without GPUs silently started four CPU processes."""
    result = run_cli(
        "train",
        *GMM_QUICK,
        "experiment=gmm1d",
        "trainer.accelerator=auto",
        "trainer.devices=2",
        "train=false",
        f"hydra.run.dir={tmp_path}",
    )
    assert_ok(result)
    assert "2 training processes will share" in result.stdout + result.stderr


@pytest.mark.parametrize("devices", ["2", "auto"])
def test_a_basic_multirun_is_guarded_on_the_resolved_device_count(devices, tmp_path):
    """The guard reads the process count Lightning resolved (here: 2 CPU processes are refused,
    ``auto`` on a CPU is one process and runs). ``-1``/``auto`` on a multi-GPU machine resolve to
    the GPU count and are refused the same way."""
    result = run_cli(
        "train",
        "-m",
        *GMM_QUICK,
        "experiment=gmm1d",
        "trainer.accelerator=cpu",
        f"trainer.devices={devices}",
        "trainer.max_steps=2",
        f"hydra.sweep.dir={tmp_path}",
    )
    if devices == "2":
        assert_clean_error(result, "re-launch the whole sweep", "(2 processes per run)")
    else:
        assert_ok(result)


def test_guidance_on_an_unconditional_checkpoint_is_refused(tmp_path):
    """Before: ``guidance_scale=3`` on an unconditional checkpoint was silently ignored."""
    assert_ok(
        run_cli(
            "train",
            *GMM_QUICK,
            "experiment=gmm1d",
            "trainer.max_steps=2",
            "model.hidden_dim=16",
            f"hydra.run.dir={tmp_path}",
        )
    )
    result = run_cli(
        "sample",
        f"ckpt_path={tmp_path}/checkpoints/last.ckpt",
        "guidance_scale=3",
        f"hydra.run.dir={tmp_path / 'sample'}",
    )
    assert_clean_error(result, "guidance_scale=3 needs a class-conditional model")


# --- 6. the NLL says what it computes before it starts, and shows its progress -----------------
@pytest.mark.parametrize(
    "model,overrides,announced",
    [
        # A trained discrete-schedule model with a learned variance: the VLB through predict().
        (
            "checkpoint",
            ("nll.num_points=5",),
            "NLL: the VLB (1000 terms, one network evaluation each) on 5 test points",
        ),
        # The exact mixture on the EDM schedule: the probability-flow ODE.
        (
            "oracle",
            ("nll.num_points=6", "nll.ode_steps=3"),
            "NLL: the probability-flow ODE (3 RK4 steps, 12 network evaluations with gradients) "
            "on 6 test points",
        ),
    ],
)
def test_the_nll_announces_its_cost_and_shows_progress(
    conditional_hybrid, tmp_path, model, overrides, announced
):
    """Before: the default NLL (256 points x 1000 VLB terms) ran for minutes after the sampling
    bar with nothing printed. Now one line names the work and the keys that shrink or skip it,
    and a bar counts the network evaluations."""
    given = (f"ckpt_path={conditional_hybrid}",) if model == "checkpoint" else ORACLE
    result = run_cli(
        "eval", *given, "sampler.steps=2", "num_samples=10", *overrides, f"hydra.run.dir={tmp_path}"
    )
    assert_ok(result)
    output = result.stdout + result.stderr
    assert f"{announced}; nll.num_points=N takes fewer points, nll.enabled=false skips it" in output
    method = "vlb" if model == "checkpoint" else "ode"
    points = overrides[0].split("=")[1]
    (bar,) = [line for line in output.splitlines() if f"NLL ({method}, {points} points)" in line]
    assert "100%" in bar  # it counted as many network evaluations as announced
    assert output.index("NLL: ") < output.index("wrote ")
    assert f"nll_bpd_{method}" in json.loads((tmp_path / "metrics.json").read_text())
