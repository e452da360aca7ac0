"""Every setting of DiffusionModule is checked when it is built: a wrong type or a value out of
range is a one-line ValueError that names the key as the user writes it (``module.lr``) and the
value, and through the CLI a one-line ``error:`` (README, "Reliability")."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from difforge.diffusion.guidance import ClassifierFreeGuidance, check_guidance_scale
from difforge.diffusion.losses import DenoisingLoss
from difforge.diffusion.parameterization import Denoiser, EpsParameterization
from difforge.diffusion.samplers import Sampler
from difforge.diffusion.schedules import CosineSchedule
from difforge.nets.mlp import MLPDenoiser
from difforge.training.build import build_module
from difforge.training.module import DiffusionModule
from helpers import QUICK_TRAIN, assert_clean_error, run_cli
from test_configs import compose_train  # also sets PROJECT_ROOT for the configs


def build(num_classes: int = 0, **settings) -> DiffusionModule:
    """A module of 1-d data with a tiny MLP."""
    net = MLPDenoiser(dim=1, hidden_dim=8, num_layers=1, num_classes=num_classes)
    return DiffusionModule(
        net,
        CosineSchedule(10),
        EpsParameterization(),
        DenoisingLoss(),
        Sampler("ddim", 2),
        (1,),
        **settings,
    )


# (setting, bad value, the message's allowed part) for each setting: wrong types (a string as
# Hydra passes `module.lr=abc`, a bool where a number belongs, a number where a bool belongs)
# and values out of range, the ends of each interval included.
BAD = [
    ("lr", "abc", "must be a number > 0"),
    ("lr", True, "must be a number > 0"),
    ("lr", 0, "must be > 0"),
    ("lr", -1, "must be > 0"),
    ("lr", math.inf, "must be > 0"),
    ("lr", math.nan, "must be > 0"),
    ("betas", [0.9], "must be two numbers in [0, 1)"),
    ("betas", [0.9, 0.99, 0.999], "must be two numbers in [0, 1)"),
    ("betas", 0.9, "must be two numbers in [0, 1)"),
    ("betas", "ab", "must be two numbers in [0, 1)"),
    ("betas", [0.9, "abc"], "must be two numbers in [0, 1)"),
    ("betas", [0.9, 1.0], "must be two numbers in [0, 1)"),
    ("betas", [-0.1, 0.999], "must be two numbers in [0, 1)"),
    ("betas", OmegaConf.create([0.9]), "must be two numbers in [0, 1)"),
    ("weight_decay", "abc", "must be a number >= 0"),
    ("weight_decay", -0.1, "must be >= 0"),
    ("warmup_steps", "abc", "must be an integer >= 0"),
    ("warmup_steps", 1.5, "must be an integer >= 0"),
    ("warmup_steps", True, "must be an integer >= 0"),
    ("warmup_steps", -1, "must be an integer >= 0"),
    ("ema_decay", "abc", "must be a number in [0, 1)"),
    ("ema_decay", 1.0, "must be in [0, 1)"),
    ("ema_decay", -0.5, "must be in [0, 1)"),
    ("ema_warmup", "maybe", "must be true or false"),
    ("ema_warmup", 1, "must be true or false"),
    ("ema_warmup", None, "must be true or false"),
    ("class_dropout", "abc", "must be a number in [0, 1)"),
    ("class_dropout", 1.0, "must be in [0, 1)"),
    ("class_dropout", -0.1, "must be in [0, 1)"),
    ("guidance_scale", "abc", "must be a number >= 0 (0: unconditional, 1: no guidance)"),
    ("guidance_scale", -1, "must be >= 0 (0: unconditional, 1: no guidance)"),
    ("guidance_scale", math.inf, "must be >= 0 (0: unconditional, 1: no guidance)"),
    ("compile", "maybe", "must be true or false"),
    ("compile", 1, "must be true or false"),
    ("compile", None, "must be true or false"),
    ("channels_last", "maybe", "must be true, false or null (on for the U-Net on a CUDA GPU)"),
    ("channels_last", 0, "must be true, false or null (on for the U-Net on a CUDA GPU)"),
    ("max_nonfinite_skips", "abc", "must be an integer >= 0"),
    ("max_nonfinite_skips", 2.5, "must be an integer >= 0"),
    ("max_nonfinite_skips", -1, "must be an integer >= 0"),
    ("clip_denoised", 3, "must be true, false or null (on for images, off for vectors)"),
    ("clip_denoised", "yes", "must be true, false or null (on for images, off for vectors)"),
]


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
@pytest.mark.parametrize(("setting", "value", "allowed"), BAD)
def test_a_bad_setting_is_one_line_naming_key_value_and_range(setting, value, allowed, conditional):
    """The type and range come first: on an unconditional network too, a bad class_dropout or
    guidance_scale is named as such, not as "needs a class-conditional model"."""
    with pytest.raises(ValueError) as error:
        build(num_classes=2 if conditional else 0, **{setting: value})
    message = str(error.value)
    assert message == f"module.{setting} {allowed}, got {value!r}"
    assert "\n" not in message


def test_the_defaults_and_each_settings_edges_are_accepted():
    module = build(
        num_classes=2,
        lr=1,  # an int where a float is meant: YAML's `lr: 1`
        betas=OmegaConf.create([0, 0.5]),
        weight_decay=0,
        warmup_steps=0,
        ema_decay=0,
        ema_warmup=False,
        class_dropout=0,
        guidance_scale=0,  # the unconditional model
        compile=False,
        channels_last=False,
        max_nonfinite_skips=0,
        clip_denoised=True,
    )
    assert (module.lr, module.betas, module.weight_decay) == (1.0, (0.0, 0.5), 0.0)
    assert (module.class_dropout, module.guidance_scale, module.clip_denoised) == (0.0, 0.0, True)
    assert type(module.lr) is float and all(type(b) is float for b in module.betas)
    for default in (build(), build(num_classes=2)):
        assert default.betas == (0.9, 0.999) and default.clip_denoised is False


def test_the_default_configs_settings_are_accepted_as_given():
    cfg = compose_train()
    module = build_module(cfg, (1, 8, 8))
    settings = cfg.module
    assert module.lr == settings.lr and module.betas == tuple(settings.betas)
    assert module.weight_decay == settings.weight_decay
    assert module.warmup_steps == settings.warmup_steps
    assert module.ema.decay == settings.ema_decay and module.ema.warmup == settings.ema_warmup
    assert module.guidance_scale == settings.guidance_scale
    assert module.max_nonfinite_skips == settings.max_nonfinite_skips
    assert module.clip_denoised is True  # null: on for images


def test_guidance_scale_is_checked_where_guidance_is_built():
    denoiser = Denoiser(
        MLPDenoiser(dim=1, hidden_dim=8, num_layers=1, num_classes=2),
        CosineSchedule(10),
        EpsParameterization(),
    )
    with pytest.raises(ValueError, match=r"^guidance_scale must be >= 0 .*, got -0\.5$"):
        ClassifierFreeGuidance(denoiser, -0.5)
    assert ClassifierFreeGuidance(denoiser, 0).guidance_scale == 0.0
    with pytest.raises(ValueError, match=r"^guidance_scale must be a number >= 0 .*, got 'x'$"):
        check_guidance_scale("x")


def test_a_guidance_scale_on_an_unconditional_network_keeps_its_message():
    with pytest.raises(ValueError, match=r"^module\.guidance_scale=3\.0 needs a class-conditional"):
        build(guidance_scale=3.0)
    with pytest.raises(ValueError, match=r"^module\.class_dropout=0\.2 needs a class-conditional"):
        build(class_dropout=0.2)


@pytest.mark.parametrize(
    ("entry", "overrides", "fragment"),
    [
        ("train", [*QUICK_TRAIN, "module.lr=abc"], "module.lr must be a number > 0, got 'abc'"),
        (
            "train",
            [*QUICK_TRAIN, "module.betas=[0.9]"],
            "module.betas must be two numbers in [0, 1), got [0.9]",
        ),
        (
            "train",
            [*QUICK_TRAIN, "module.compile=maybe"],
            "module.compile must be true or false, got 'maybe'",
        ),
        (
            "sample",
            ["ckpt_path=/nonexistent.ckpt", "guidance_scale=-1"],
            "guidance_scale must be >= 0 (0: unconditional, 1: no guidance), got -1",
        ),
    ],
)
def test_a_bad_setting_through_the_cli_is_a_one_line_error(entry, overrides, fragment, tmp_path):
    result = run_cli(entry, *overrides, f"hydra.run.dir={tmp_path}", timeout=300)
    assert_clean_error(result, f"error: {fragment}")
