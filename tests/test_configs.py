"""Every config composes and instantiates: each experiment, each data x model pairing that fits,
and every schedule x parameterization x loss x sampler combination."""

from __future__ import annotations

import os

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from difforge.diffusion.samplers import Sampler
from difforge.training.build import build_module
from helpers import ROOT

os.environ.setdefault("PROJECT_ROOT", str(ROOT))
CONFIGS = ROOT / "configs"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = compose_train(f"experiment={experiment}")
    for group in ("data", "schedule", "parameterization", "loss", "sampler"):
        assert "_target_" in cfg[group], group
    instantiate(cfg.schedule)
    instantiate(cfg.sampler)


IMAGE_DATA = {
    "digits": (1, 8),
    "mnist": (1, 32),
    "fashion_mnist": (1, 32),
    "cifar10": (3, 32),
    "image_folder": (3, 64),
}
FITTING_MODELS = {
    "digits": ["unet_tiny", "unet_small"],
    "mnist": ["unet_small", "unet_base"],
    "fashion_mnist": ["unet_small"],
    "cifar10": ["unet_small", "unet_base"],
    "image_folder": ["unet_base"],
}


@pytest.mark.parametrize(
    "data,model", [(d, m) for d, models in FITTING_MODELS.items() for m in models]
)
def test_image_data_and_model_presets_build_a_module(data, model):
    channels, size = IMAGE_DATA[data]
    cfg = compose_train(f"data={data}", f"model={model}")
    datamodule = instantiate(cfg.data)  # no file access before setup()
    assert (cfg.data.channels, cfg.data.image_size) == (channels, size)
    module = build_module(cfg, (channels, size, size))
    assert module.data_shape == (channels, size, size)
    assert datamodule.config_name == data  # the name features and caches key the data by


@pytest.mark.parametrize("data", ["gmm1d", "gmm2d", "moons", "swiss_roll"])
def test_vector_data_with_the_mlp(data):
    cfg = compose_train(f"data={data}", "model=mlp")
    datamodule = instantiate(cfg.data)
    assert datamodule.config_name == data
    datamodule.setup("fit")
    module = build_module(cfg, tuple(datamodule.data_shape))
    x, _ = next(iter(datamodule.train_dataloader()))
    sigma = module.schedule.sample_training_sigmas(len(x))
    loss = module.loss_fn(module.denoiser, x, sigma, torch.randn_like(x))
    assert loss.shape == (len(x),) and torch.isfinite(loss).all()


@pytest.mark.parametrize("schedule", options("schedule"))
@pytest.mark.parametrize("parameterization", options("parameterization"))
def test_schedule_parameterization_loss_sampler_combinations(schedule, parameterization):
    for loss in options("loss"):
        if loss == "hybrid" and schedule in ("edm", "rectified_flow"):
            continue  # refused with a clear message (test_cli)
        cfg = compose_train(
            "data=gmm1d",
            "model=mlp",
            f"schedule={schedule}",
            f"parameterization={parameterization}",
            f"loss={loss}",
        )
        module = build_module(cfg, (1,))
        x0 = torch.randn(8, 1)
        sigma = module.schedule.sample_training_sigmas(8)
        assert torch.isfinite(
            module.loss_fn(module.denoiser, x0, sigma, torch.randn_like(x0))
        ).all()
        for sampler_name in options("sampler"):
            sampler_cfg = OmegaConf.load(CONFIGS / "sampler" / f"{sampler_name}.yaml")
            sampler: Sampler = instantiate(sampler_cfg, steps=2)
            if sampler.options.get("variance") == "learned" and loss != "hybrid":
                continue
            result = module.generate(4, sampler=sampler)
            assert result.samples.shape == (4, 1) and torch.isfinite(result.samples).all()


def test_slurm_launcher_config_composes_with_ddp_settings():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "hydra/launcher=slurm_ddp",
                "trainer=ddp_multinode",
                "trainer.devices=4",
                "trainer.num_nodes=2",
            ],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.num_nodes == 2


def test_images_are_sampled_with_clipped_estimates_and_vectors_without():
    from difforge.diffusion.parameterization import ClippedDenoiser

    image_module = build_module(compose_train(), (1, 8, 8))
    vector_module = build_module(compose_train("data=gmm1d", "model=mlp"), (1,))
    assert isinstance(image_module.sampling_denoiser(), ClippedDenoiser)
    assert not isinstance(vector_module.sampling_denoiser(), ClippedDenoiser)


# The groups whose options are whole recipes, setting several groups (``@package _global_``).
RECIPE_GROUPS = {"experiment", "objective", "debug", "hparams_search", "hydra"}


@pytest.mark.parametrize(
    "group", sorted(p.name for p in CONFIGS.iterdir() if p.is_dir() and p.name not in RECIPE_GROUPS)
)
def test_group_options_are_local_nodes(group):
    """The config tree is the object tree: an option of a group configures that group's node, and
    rewrites no other (a loss does not set the model)."""
    for option in options(group):
        text = (CONFIGS / group / f"{option}.yaml").read_text()
        assert "@package" not in text, f"{group}/{option}.yaml"


@pytest.mark.parametrize(
    "loss,overrides,learned",
    [
        ("hybrid", [], True),
        ("simple", [], False),
        ("hybrid", ["model.learned_variance=true"], True),
    ],
)
def test_the_network_learns_the_variance_the_loss_trains(loss, overrides, learned):
    """``model.learned_variance: null`` follows the loss: improved DDPM's hybrid loss gets a
    network with a learned variance, without the loss config touching the model."""
    cfg = compose_train("experiment=gmm1d", f"loss={loss}", *overrides)
    assert cfg.model.learned_variance is (True if overrides else None)
    module = build_module(cfg, (1,))
    assert module.denoiser.learned_variance is learned
    assert cfg.model.learned_variance is learned  # saved resolved in the checkpoint's config


@pytest.mark.parametrize(
    "loss,value,message",
    [("hybrid", "false", "HybridLoss needs a network"), ("simple", "true", "cannot train")],
)
def test_an_explicit_learned_variance_the_loss_cannot_train_is_refused(loss, value, message):
    cfg = compose_train("experiment=gmm1d", f"loss={loss}", f"model.learned_variance={value}")
    with pytest.raises(ValueError, match=message):
        build_module(cfg, (1,))


def test_images_end_in_their_range_even_on_a_grid_ending_at_sigma_min():
    image_module = build_module(compose_train(), (1, 8, 8))
    sampler = Sampler("dpmpp_2m", 3, final_sigma="min")
    generator = torch.Generator().manual_seed(0)
    images = image_module.generate(4, sampler=sampler, generator=generator).samples
    assert images.abs().max() <= 1.0
    vector_module = build_module(compose_train("data=gmm1d", "model=mlp"), (1,))
    vectors = vector_module.generate(64, sampler=sampler, generator=generator).samples
    assert vectors.abs().max() > 1.0  # no range to clamp to


def test_the_module_node_is_the_object_tree():
    """configs/module/diffusion.yaml names every argument of DiffusionModule but the two the
    builder supplies (data_shape, run_config): each part references its group, the rest are the
    module's own settings; instantiating the node builds what the groups say."""
    import inspect

    from hydra.utils import get_class

    from difforge.training.config import BUILDER_ARGUMENTS, MODULE_PARTS
    from difforge.training.module import DiffusionModule

    node = OmegaConf.to_container(OmegaConf.load(CONFIGS / "module" / "diffusion.yaml"))
    arguments = set(inspect.signature(DiffusionModule.__init__).parameters) - {"self"}
    assert set(node) - {"_target_"} == arguments - set(BUILDER_ARGUMENTS)
    assert {argument: node[argument] for argument in MODULE_PARTS} == {
        argument: f"${{{group}}}" for argument, group in MODULE_PARTS.items()
    }
    cfg = compose_train(
        "schedule=edm", "parameterization=edm", "loss=edm", "noise_law=log_normal", "module.lr=3e-4"
    )
    module = instantiate(cfg.module, data_shape=(1, 8, 8))
    built = {
        "model": module.denoiser.net,
        "schedule": module.schedule,
        "parameterization": module.denoiser.parameterization,
        "loss": module.loss_fn,
        "noise_law": module.noise_law,
        "sampler": module.sampler,
    }
    for group, part in built.items():
        assert type(part) is get_class(cfg[group]._target_), group
    assert module.sampler.algorithm == cfg.sampler.algorithm and module.lr == 3e-4


# Data configs of every shape the presets are for: 8x8x1, 32x32x1, 32x32x3, 64x64x3, 2-D vectors.
SHAPED_DATA = ("digits", "mnist", "cifar10", "image_folder", "gmm2d")
# Models that are not networks: the exact denoiser of a mixture, built from the data's law.
EXACT_MODELS = {"gmm_oracle"}


@pytest.mark.parametrize("model", [m for m in options("model") if m not in EXACT_MODELS])
def test_every_model_config_builds_its_network_for_some_data(model):
    """A model config is checked without being listed anywhere: its network builds for at least
    one data config (on the meta device: shapes only, no memory, so DiT-XL costs nothing), and
    for each data config it does not fit, it says why in a ValueError."""
    from hydra.errors import InstantiationException

    from difforge.training.build import check_model_config_fits_data, resolve_learned_variance
    from difforge.training.module import check_network_fits_data

    fits = []
    for data in SHAPED_DATA:
        cfg = compose_train(f"data={data}", f"model={model}")
        resolve_learned_variance(cfg)
        shape = (
            (cfg.data.dim,)
            if "dim" in cfg.data
            else tuple(cfg.data[key] for key in ("channels", "image_size", "image_size"))
        )
        try:
            check_model_config_fits_data(cfg.model, shape)
            with torch.device("meta"):
                net = instantiate(cfg.model)
            check_network_fits_data(net, shape)
        except InstantiationException as error:
            assert isinstance(error.__cause__, ValueError), error
            continue
        except ValueError:
            continue
        fits.append(data)
    assert fits, f"model={model} builds for none of {SHAPED_DATA}"


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.num_classes=5"], r"model.num_classes=5 but the data have 10 classes"),
        (["model.num_classes=20"], r"model.num_classes=20 but the data have 10 classes"),
        (["data=swiss_roll", "model=mlp", "model.num_classes=3"], r"data are unlabelled"),
        (["model.num_classes=${data.num_classes}"], None),
        (["data=gmm2d", "model=mlp", "model.num_classes=${data.num_classes}"], None),
        ([], None),
    ],
)
def test_a_conditional_network_has_one_label_per_class_of_the_data(overrides, message):
    from difforge.training.build import check_classes_fit_data

    cfg = compose_train(*overrides)
    if message is None:
        check_classes_fit_data(cfg)
    else:
        with pytest.raises(ValueError, match=message):
            check_classes_fit_data(cfg)
