"""The worked examples of docs/architecture.md ("Adding a variant") run as written.

Each fenced block titled with a file (```python title="src/difforge/...py"```, ```yaml
title="configs/<group>/<name>.yaml"```) is written to a temporary directory: a unit becomes the
module its path names (in ``sys.modules``, for this test only), a config file goes into an extra
config directory on Hydra's search path, and the block titled ``add to ...registry.py`` is run
against the real registry, its ``SamplerSpec`` entered into ``SAMPLERS`` with monkeypatch. The
``python src/train.py`` commands of the section are composed as written (Hydra's normal
defaults, plus ``hydra.searchpath``); the last one, all four variants together, trains a few
steps through the real entry point. A broken example fails here.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import logging
import math
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import difforge.diffusion.samplers.registry as registry
from difforge.data.options import DataConfigError
from difforge.diffusion.losses import DenoisingLoss
from difforge.diffusion.parameterization import (
    Denoiser,
    EpsParameterization,
    X0Parameterization,
)
from difforge.diffusion.samplers import SAMPLERS, Sampler
from difforge.diffusion.schedules import CosineSchedule, EDMSchedule, LinearSchedule
from difforge.lessons import plots
from difforge.training.build import build_module
from helpers import (
    QUICK_TRAIN,
    ROOT,
    assert_reproduces_mixture,
    mixture_w1_floor,
)

DOC = ROOT / "docs" / "architecture.md"
SECTION = "## Adding a variant"
REGISTRATION = "add to src/difforge/diffusion/samplers/registry.py"
# The files the section shows, one unit and one config per variant.
EXPECTED = {
    "src/difforge/diffusion/samplers/rk2.py",
    REGISTRATION,
    "configs/sampler/rk2.yaml",
    "src/difforge/diffusion/p2_loss.py",
    "configs/loss/p2.yaml",
    "src/difforge/nets/concat_mlp.py",
    "configs/model/concat_mlp.yaml",
    "src/difforge/data/checkerboard.py",
    "configs/data/checkerboard.yaml",
}
BLOCK = re.compile(r'^```\w+ title="([^"]+)"\n(.*?)^```$', re.M | re.S)


def section() -> str:
    text = DOC.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def titled_blocks() -> dict[str, str]:
    blocks: dict[str, str] = {}
    for title, body in BLOCK.findall(section()):
        assert title not in blocks, f"two blocks titled {title}"
        blocks[title] = body
    return blocks


def documented_overrides(*choices: str) -> list[str]:
    """The overrides of the section's one ``python src/train.py`` command that makes exactly
    these config choices (``loss=p2``...), as written."""
    commands = re.findall(r"^python src/train\.py [^\n]*", section(), flags=re.M)
    for command in commands:
        overrides = shlex.split(command)[2:]
        made = {o for o in overrides if o.split("=", 1)[0] in ("sampler", "loss", "model", "data")}
        if made == set(choices):
            return overrides
    raise AssertionError(f"no command with exactly {choices} among {commands}")


@dataclass
class Examples:
    config_dir: Path
    modules: dict[str, object]

    def compose(self, *overrides: str):
        """``configs/train.yaml`` with the examples' config directory on the search path."""
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            return compose("train", overrides=[self.searchpath, *overrides])

    @property
    def searchpath(self) -> str:
        return f"hydra.searchpath=[file://{self.config_dir}]"


def load_unit(path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> object:
    """``path`` imported as the module ``name`` (as if it were in src/), for this test only."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    package, _, leaf = name.rpartition(".")
    monkeypatch.setattr(importlib.import_module(package), leaf, module, raising=False)
    return module


def register(code: str, monkeypatch: pytest.MonkeyPatch) -> list[registry.SamplerSpec]:
    """Run the registration block in registry.py's namespace: its imports, then its entries."""
    namespace = dict(vars(registry))
    specs = []
    for statement in ast.parse(code).body:
        if isinstance(statement, ast.Expr):
            value = eval(compile(ast.Expression(statement.value), REGISTRATION, "eval"), namespace)
            specs += list(value) if isinstance(value, tuple) else [value]
        else:
            exec(compile(ast.Module([statement], []), REGISTRATION, "exec"), namespace)
    for spec in specs:
        assert isinstance(spec, registry.SamplerSpec)
        assert spec.name not in SAMPLERS, f"{spec.name} is registered already"
        monkeypatch.setitem(SAMPLERS, spec.name, spec)
    return specs


@pytest.fixture
def examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Examples:
    blocks = titled_blocks()
    assert set(blocks) == EXPECTED
    modules = {}
    for title, body in blocks.items():
        if title.startswith("add to "):
            continue
        path = tmp_path / title
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
        if title.endswith(".py"):
            name = ".".join(Path(title).relative_to("src").with_suffix("").parts)
            modules[name] = load_unit(path, name, monkeypatch)
    specs = register(blocks[REGISTRATION], monkeypatch)
    assert [spec.name for spec in specs] == ["rk2"]
    return Examples(tmp_path / "configs", modules)


# --------------------------------------------------------------------------------------- sampler
# The seed's mixture's probability-flow ODE from sigma = 80 to 0.02 on EDM's grid, in float64,
# through ``Sampler`` (grid, prior, NFE count), from 7 starting points spread over the prior.
ODE_SCHEDULE = EDMSchedule(sigma_min=0.02, sigma_max=80.0)
ODE_NOISE = torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None]


def solve_ode(denoiser, algorithm: str, steps: int, **options) -> torch.Tensor:
    sampler = Sampler(algorithm, steps, grid="karras", final_sigma="min", **options)
    result = sampler(denoiser, ODE_SCHEDULE, (7, 1), dtype=torch.float64, noise=ODE_NOISE)
    assert result.nfe == sampler.nfe(ODE_SCHEDULE) == SAMPLERS[algorithm].evals_per_step * steps
    return result.samples


def test_sampler_with_alpha_one_is_heun(examples, oracle1d):
    """alpha = 1 is Heun's method (Karras et al. 2022, algorithm 1): the library's ``heun``."""
    torch.testing.assert_close(
        solve_ode(oracle1d, "rk2", 12, alpha=1.0),
        solve_ode(oracle1d, "heun", 12),
        rtol=1e-12,
        atol=1e-12,
    )


def test_sampler_with_alpha_half_is_the_midpoint_method(examples, oracle1d):
    """One step from sigma = 2 to 1 with alpha = 1/2: x + h f(x + h f(x) / 2, sigma + h / 2),
    f(x, sigma) = (x - D(x, sigma)) / sigma, h = -1."""
    sample_rk2 = examples.modules["difforge.diffusion.samplers.rk2"].sample_rk2  # type: ignore[attr-defined]
    x = ODE_NOISE * 2
    sigma = torch.ones(7, dtype=torch.float64)

    def slope(x: torch.Tensor, level: float) -> torch.Tensor:
        return (x - oracle1d(x, level * sigma)) / level

    midpoint = x - slope(x - slope(x, 2.0) / 2, 1.5)
    step = sample_rk2(oracle1d, x, torch.tensor([2.0, 1.0], dtype=torch.float64), alpha=0.5)
    torch.testing.assert_close(step, midpoint, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alpha", [1.0, 2 / 3, 0.5])
def test_sampler_converges_at_second_order(examples, oracle1d, alpha):
    """Against Heun with 4096 steps (error ~1e-6), halving the step divides the error by 4
    (within 0.85 - 1.25 of it; first order gives 2, third 8). Measured 3.99 - 4.09. On the
    mixture, not on Gaussian data: there the ODE is linear and the midpoint member's h^2 error
    term cancels (it shows order 3)."""
    reference = solve_ode(oracle1d, "heun", 4096)
    errors = [
        (solve_ode(oracle1d, "rk2", steps, alpha=alpha) - reference).abs().max().item()
        for steps in (64, 128)
    ]
    ratio = errors[0] / errors[1]
    assert 0.85 * 4 < ratio < 1.25 * 4, (errors, ratio)


def test_sampler_config_samples_the_mixture(examples, gmm1d, oracle1d):
    """The documented command's sampler (``sampler=rk2 sampler.alpha=0.5``, its config's 20 steps)
    on the exact denoiser of the seed's three-Gaussian mixture and the command's schedule
    reproduces the mixture: W1 and each mode's mass within the statistical floor of 4000 draws."""
    cfg = examples.compose(*documented_overrides("sampler=rk2"))
    sampler = instantiate(cfg.sampler)
    assert (sampler.algorithm, sampler.options, sampler.steps) == ("rk2", {"alpha": 0.5}, 20)
    n = 4000
    result = sampler(
        oracle1d, instantiate(cfg.schedule), (n, 1), generator=torch.Generator().manual_seed(0)
    )
    assert result.nfe == 2 * 20 - 1 == sampler.nfe(instantiate(cfg.schedule))
    assert_reproduces_mixture(result.samples, gmm1d, mixture_w1_floor(gmm1d, n))


@pytest.mark.parametrize(
    "schedule", [LinearSchedule(), CosineSchedule(), EDMSchedule()], ids=lambda s: s.name
)
def test_sampler_defaults_reach_the_mixture_at_100_nfe(examples, schedule, gmm1d, oracle1d):
    """What tests/test_samplers.py asks of every registered sampler's defaults (its grid per kind
    of schedule): the mixture within the statistical floor of 20000 draws at 100 NFE."""
    sampler = Sampler("rk2", 1)
    sampler = sampler.replace(steps=sampler.steps_for_nfe(100, schedule))
    generator = torch.Generator().manual_seed(0)
    result = sampler(oracle1d, schedule, (20_000, 1), dtype=torch.float64, generator=generator)
    assert result.nfe <= 100
    assert_reproduces_mixture(result.samples, gmm1d, mixture_w1_floor(gmm1d, 20_000))


def test_sampler_has_its_own_line_style(examples):
    """What tests/test_lessons.py asks of every registered sampler, without an entry for rk2."""
    assert "rk2" not in plots.SAMPLER_STYLES
    assert len({plots.sampler_style(name) for name in SAMPLERS}) == len(SAMPLERS)


def test_sampler_options_are_its_signature_and_checked(examples):
    cfg = OmegaConf.to_container(OmegaConf.load(examples.config_dir / "sampler" / "rk2.yaml"))
    del cfg["_target_"]
    settings = {"algorithm", "steps", "grid", "final_sigma", "sigma_min", "sigma_max", "rho"}
    assert set(cfg) - settings == set(SAMPLERS["rk2"].options) == {"alpha"}
    for alpha in (0.0, 1.5, -1.0):
        with pytest.raises(ValueError, match=r"sampler\.alpha must be in \(0, 1\]"):
            Sampler("rk2", 10, alpha=alpha)
    with pytest.raises(ValueError, match=r"unknown option 'alhpa'.*did you mean 'alpha'"):
        Sampler("rk2", 10, alhpa=0.5)


# ------------------------------------------------------------------------------------------ loss
SIGMAS = torch.tensor([0.03, 0.3, 1.0, 3.0, 30.0], dtype=torch.float64)


@pytest.mark.parametrize("k,gamma", [(1.0, 1.0), (1.0, 0.5), (2.0, 0.0)])
def test_loss_weight_is_p2(examples, k, gamma):
    """Choi et al.'s weight on the noise-prediction loss, 1 / (k + SNR)^gamma with SNR =
    alphas_cumprod / (1 - alphas_cumprod), computed here from alphas_cumprod = 1 / (1 + sigma^2):
    the class's weight under eps-prediction; under x0-prediction it is SNR times that."""
    loss = examples.modules["difforge.diffusion.p2_loss"].P2Loss(k=k, gamma=gamma)  # type: ignore[attr-defined]
    alphas_cumprod = 1 / (1 + SIGMAS**2)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    paper = (k + snr) ** -gamma
    eps = SimpleNamespace(parameterization=EpsParameterization())
    x0 = SimpleNamespace(parameterization=X0Parameterization())
    torch.testing.assert_close(loss.target_weight(eps, SIGMAS), paper, rtol=1e-12, atol=0)
    torch.testing.assert_close(loss.target_weight(x0, SIGMAS), snr * paper, rtol=1e-12, atol=0)


def test_loss_config_trains_and_gamma_zero_is_l_simple(examples):
    """The documented command's loss (``loss=p2 loss.gamma=0.5``) builds into the module and
    takes an optimizer step; with gamma = 0 under eps-prediction it equals L_simple."""
    cfg = examples.compose(*documented_overrides("loss=p2"))
    module = build_module(cfg, (1,))
    assert type(module.loss_fn).__name__ == "P2Loss" and module.loss_fn.gamma == 0.5
    x0 = torch.randn(64, 1, generator=torch.Generator().manual_seed(0))
    sigma = module.schedule.sample_training_sigmas(64)
    noise = torch.randn_like(x0)
    optimizer = torch.optim.SGD(module.denoiser.parameters(), lr=1e-2)
    loss = module.loss_fn(module.denoiser, x0, sigma, noise).mean()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in module.denoiser.parameters())
    assert cfg.parameterization._target_.endswith("EpsParameterization")
    unweighted = type(module.loss_fn)(k=1.0, gamma=0.0)
    torch.testing.assert_close(
        unweighted(module.denoiser, x0, sigma, noise),
        DenoisingLoss()(module.denoiser, x0, sigma, noise),
    )
    for bad in ({"k": 0.0}, {"gamma": -1.0}):
        with pytest.raises(ValueError, match=r"loss\.k must be > 0 and loss\.gamma >= 0"):
            type(module.loss_fn)(**bad)


def test_loss_is_finite_on_every_schedule_and_parameterization(examples):
    """What tests/test_configs.py asks of every loss config once p2.yaml is in configs/loss."""
    options = lambda group: sorted(p.stem for p in (ROOT / "configs" / group).glob("*.yaml"))  # noqa: E731
    for schedule in options("schedule"):
        for parameterization in options("parameterization"):
            cfg = examples.compose(
                "data=gmm1d",
                "model=mlp",
                f"schedule={schedule}",
                f"parameterization={parameterization}",
                "loss=p2",
            )
            net = instantiate(cfg.model, learned_variance=False)
            denoiser = Denoiser(net, instantiate(cfg.schedule), instantiate(cfg.parameterization))
            x0 = torch.randn(8, 1)
            sigma = denoiser.schedule.sample_training_sigmas(8)
            loss = instantiate(cfg.loss)(denoiser, x0, sigma, torch.randn_like(x0))
            assert torch.isfinite(loss).all(), (schedule, parameterization)


# --------------------------------------------------------------------------------------- network
def test_network_config_fits_vector_data(examples):
    """``data=gmm2d model=concat_mlp`` as documented: the net takes ``dim`` from the data, the
    module denoises a batch; a learned variance (loss=hybrid) doubles its outputs; class labels
    (``model.num_classes``) and wrong shapes behave as the network interface says."""
    cfg = examples.compose(*documented_overrides("data=gmm2d", "model=concat_mlp"))
    module = build_module(cfg, (2,))
    net = module.denoiser.net
    assert type(net).__name__ == "ConcatMLP" and (net.dim, net.out_channels) == (2, 2)
    x = torch.randn(5, 2)
    assert module.denoiser(x, torch.full((5,), 0.7)).shape == (5, 2)
    hybrid = build_module(examples.compose("data=gmm2d", "model=concat_mlp", "loss=hybrid"), (2,))
    assert hybrid.denoiser.learned_variance and hybrid.denoiser.net.out_channels == 4
    conditional = instantiate(cfg.model, num_classes=8)
    labels = torch.arange(5)
    assert conditional(x, torch.zeros(5), labels).shape == (5, 2)
    null = conditional(x, torch.zeros(5))
    torch.testing.assert_close(null, conditional(x, torch.zeros(5), torch.full((5,), 8)))
    assert not torch.allclose(
        null, conditional(x, torch.zeros(5), torch.zeros(5, dtype=torch.long))
    )
    assert not torch.allclose(net(x, torch.zeros(5)), net(x, torch.ones(5)))
    with pytest.raises(ValueError, match=r"ConcatMLP takes x \(B, 2\)"):
        net(torch.randn(5, 3), torch.zeros(5))
    with pytest.raises(ValueError, match="class_labels out of range"):
        conditional(x, torch.zeros(5), torch.full((5,), 9))
    with pytest.raises(ValueError, match=r"model\.dim must be an integer >= 1"):
        type(net)(dim=0)


# --------------------------------------------------------------------------------------- dataset
def test_dataset_config_draws_the_checkerboard(examples):
    """``data=checkerboard model=mlp`` as documented: every point lies on a dark square (column +
    row even), each of the 8 squares holds 1/8 of the points (within 5 binomial standard
    deviations), splits are disjoint draws fixed by the seed, and the data contract holds."""
    overrides = documented_overrides("data=checkerboard", "model=mlp")
    cfg = examples.compose(*overrides, "data.num_train=8000", "data.batch_size=64")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    assert (datamodule.data_shape, datamodule.num_classes, datamodule.kind) == ((2,), 0, "vector")
    assert datamodule.config_name == "checkerboard"
    for key in ("_target_", "batch_size", "num_workers", "pin_memory", "seed", "num_classes"):
        assert key in cfg.data  # as tests/test_data.py asks of every data config
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.shape == (64, 2) and x.dtype == torch.float32 and (y == 0).all()
    train = datamodule.reference_samples("train")
    assert train.shape == (8000, 2) and train.abs().max() <= 2
    square = (train + 2).floor().long()
    assert ((square.sum(dim=1) % 2) == 0).all()
    counts = torch.bincount(square[:, 0] * 4 + square[:, 1], minlength=16)
    dark = counts[counts > 0]
    n = len(train)
    assert len(dark) == 8
    assert ((dark - n / 8).abs() < 5 * math.sqrt(n * (1 / 8) * (7 / 8))).all(), counts
    val = datamodule.reference_samples("val")
    assert not set(map(tuple, val.tolist())) & set(map(tuple, train.tolist()))
    again = instantiate(cfg.data)
    torch.testing.assert_close(again.reference_samples("train"), train)
    other = instantiate(cfg.data, seed=1)
    assert not torch.equal(other.reference_samples("train"), train)
    module = build_module(cfg, tuple(datamodule.data_shape))
    assert module.data_shape == (2,)
    with pytest.raises(DataConfigError, match=r"data\.dim must be 2, got 3"):
        type(datamodule)(dim=3)
    with pytest.raises(DataConfigError, match="checkerboard is unlabelled"):
        type(datamodule)(num_classes=2)


# ------------------------------------------------------------------------------ all four, trained
def test_all_four_train_through_the_entry_point(examples, tmp_path, monkeypatch):
    """The section's last command, ``python src/train.py`` with the four new choices, run in this
    process (so the registration applies) for 6 steps: it writes a finite validation loss, the
    end-of-training sample figure (drawn with the module's sampler) and a checkpoint whose saved
    config names the new units."""
    overrides = documented_overrides(
        "data=checkerboard", "model=concat_mlp", "loss=p2", "sampler=rk2"
    )
    run_dir = tmp_path / "run"
    argv = [
        "src/train.py",
        *overrides,
        *QUICK_TRAIN,
        "data.num_train=2000",
        "data.num_val=256",
        "data.num_test=256",
        "data.batch_size=64",
        examples.searchpath,
        f"hydra.run.dir={run_dir}",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))
    monkeypatch.chdir(ROOT)
    # Hydra sets up the run's logging (a log file in the run directory): restored afterwards.
    root = logging.getLogger()
    before = list(root.handlers)
    monkeypatch.setattr(root, "handlers", list(before))
    monkeypatch.setattr(root, "level", root.level)
    try:
        runpy.run_path(str(ROOT / "src" / "train.py"), run_name="__main__")
    finally:
        for handler in set(root.handlers) - set(before):
            handler.close()
    summary = json.loads((run_dir / "final_metrics.json").read_text())
    assert summary["global_step"] == 6 and math.isfinite(summary["metrics"]["val/loss"])
    assert {k: summary["choices"][k] for k in ("data", "model", "loss", "sampler")} == {
        "data": "checkerboard",
        "model": "concat_mlp",
        "loss": "p2",
        "sampler": "rk2",
    }
    assert (run_dir / "samples" / "step_0000006.png").is_file()  # drawn with the module's rk2
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["difforge"]
    assert saved["config"]["loss"]["_target_"] == "difforge.diffusion.p2_loss.P2Loss"
    assert saved["config"]["sampler"]["algorithm"] == "rk2"
