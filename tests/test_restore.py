"""Restoration with a diffusion prior: ``Model.restore``, ``difforge.load_exact`` and
``python src/restore.py`` as the README writes it, its files loaded back and checked against the
operator and the exact posterior."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import difforge
from difforge.data.mixtures import known_mixture
from difforge.diffusion.gaussian_mixture import GaussianMixture
from difforge.errors import DifforgeError
from difforge.posterior.exact import mixture_posterior
from difforge.posterior.operators.base import DENSE_LIMIT, LinearOperator
from difforge.posterior.operators.registry import build_operator
from difforge.posterior.samplers import PosteriorSampler
from helpers import QUICK_TRAIN, ROOT, assert_clean_error, assert_ok, run_cli
from test_docs_commands import documented_commands

TWO_MODES = GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], [0.5, 0.5])


def data_config(name: str) -> dict:
    config = OmegaConf.load(ROOT / "configs" / "data" / f"{name}.yaml")
    return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]


# --- the API ---------------------------------------------------------------------------------------
def test_load_exact_reads_the_law_of_a_data_config():
    config = data_config("gmm2d")
    model = difforge.load_exact(config)
    law = known_mixture(config)
    assert law is not None and model.mixture is not None
    assert model.kind == "exact" and model.data_shape == (2,) and model.source is None
    assert torch.equal(model.mixture.means, law.means)
    assert torch.equal(model.mixture.weights, law.weights)
    with pytest.raises(DifforgeError, match="needs data with a known Gaussian mixture"):
        difforge.load_exact(data_config("digits"))


def test_restore_draws_each_rows_posterior():
    """Two measurements far apart, restored in batches of one row: each row's draws have its own
    exact posterior mean (the rows are not mixed up by the batching), and a seed repeats them."""
    prior = difforge.load_exact(TWO_MODES)
    A = build_operator("matrix", (2,), A=[[1.0, 1.0]])
    y = torch.tensor([[1.5], [-2.5]])
    draws = prior.restore(y, A, "pigdm", n=400, sigma_y=0.1, steps=30, batch_size=300)
    assert draws.shape == (2, 400, 2)
    for i in range(2):
        exact = mixture_posterior(prior.mixture, A, y[i], 0.1).mean()
        assert (draws[i].double().mean(0) - exact).abs().max() < 0.1, (i, draws[i].mean(0), exact)
    again = prior.restore(y, A, "pigdm", n=400, sigma_y=0.1, steps=30, batch_size=300)
    assert torch.equal(draws, again)
    built = PosteriorSampler("pigdm", 30)
    assert torch.equal(draws, prior.restore(y, A, built, n=400, sigma_y=0.1, batch_size=300))
    other = prior.restore(y, A, "pigdm", n=400, sigma_y=0.1, steps=30, seed=1, batch_size=300)
    assert not torch.equal(draws, other)


def test_restore_refuses_what_does_not_fit():
    prior = difforge.load_exact(TWO_MODES)
    A = build_operator("matrix", (2,), A=[[1.0, 1.0]])
    y = torch.tensor([[1.5]])
    with pytest.raises(DifforgeError, match=r"built for x_shape \(3,\); this model's data have"):
        prior.restore(y, build_operator("denoise", (3,)), sigma_y=0.1)
    with pytest.raises(DifforgeError, match=r"y must have shape \(N, 1\)"):
        prior.restore(torch.zeros(1, 2), A, sigma_y=0.1, steps=2)
    with pytest.raises(DifforgeError, match="built already"):
        prior.restore(y, A, PosteriorSampler("dps", 2), sigma_y=0.1, steps=5)
    with pytest.raises(ValueError, match=r"sigma_y must be >= 0, got -0\.1"):
        prior.restore(y, A, "dps", sigma_y=-0.1, steps=2)
    with pytest.raises(ValueError, match="inpaint_box needs images"):
        prior.restore(y, "inpaint_box", sigma_y=0.1)
    with pytest.raises(ValueError, match="posterior=repaint needs an inpainting mask operator"):
        prior.restore(y, A, "repaint", sigma_y=0.1, steps=2)


class Doubling(LinearOperator):
    """``A x = 2 x`` on vectors too long for a dense matrix: an operator without an SVD."""

    name = "doubling"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x.reshape(x.shape[0], -1)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return 2 * y.reshape(y.shape[0], *self.x_shape)


def test_a_method_that_needs_an_svd_refuses_an_operator_without_one():
    d = DENSE_LIMIT + 1
    prior = difforge.load_exact(GaussianMixture([1.0], [[0.0] * d], [[1.0] * d]))
    with pytest.raises(ValueError, match="posterior=ddrm needs the operator's SVD"):
        prior.restore(torch.zeros(1, d), Doubling((d,), d), "ddrm", sigma_y=0.1, steps=2)


# --- the command -----------------------------------------------------------------------------------
def load_run(run: Path) -> tuple[dict, dict]:
    with np.load(run / "restore.npz") as file:
        record = {key: file[key] for key in file.files}
    assert (run / "restore.png").stat().st_size > 0
    return record, json.loads((run / "metrics.json").read_text())


def check_consistency(record: dict, metrics: dict, forward) -> None:
    """``consistency`` and ``consistency_clean`` recomputed from the saved arrays."""
    samples, y, sigma_y = record["samples"], record["y"], float(record["sigma_y"])
    n = samples.shape[1]
    flat = samples.reshape(-1, *samples.shape[2:]).astype(np.float64)
    residual = np.linalg.norm(np.repeat(y, n, axis=0) - forward(flat), axis=1)
    assert metrics["consistency"] == pytest.approx(residual.mean() / sigma_y, rel=1e-4)
    clean = np.linalg.norm(y - forward(record["x"].astype(np.float64)), axis=1)
    assert metrics["consistency_clean"] == pytest.approx(clean.mean() / sigma_y, rel=1e-4)


def check_mixture_run(record: dict, metrics: dict, data: str) -> None:
    """A mixture prior's record: its law, A, and the exact posterior weights of every input."""
    law = known_mixture(data_config(data))
    assert law is not None
    np.testing.assert_array_equal(record["mixture_weights"], law.weights.numpy())
    np.testing.assert_array_equal(record["mixture_means"], law.means.numpy())
    np.testing.assert_array_equal(record["mixture_stds"], law.stds.numpy())
    A = record["A"]
    check_consistency(record, metrics, lambda x: x.reshape(len(x), -1) @ A.T)
    for i, y in enumerate(record["y"]):
        posterior = mixture_posterior(
            law, torch.from_numpy(A), torch.from_numpy(y), float(record["sigma_y"])
        )
        np.testing.assert_allclose(record["posterior_weights"][i], posterior.weights, atol=1e-5)
    assert record["sample_weights"].shape == record["posterior_weights"].shape
    assert metrics["sw"] > 0 and metrics["sw_floor"] > 0
    assert 0 <= metrics["component_weight_tv"] <= 1


def test_restore_command_on_the_exact_mixture(tmp_path):
    result = run_cli(
        "restore",
        "model=gmm_oracle",
        "data=gmm2d",
        "operator=random_projection",
        "operator.d_y=1",
        "posterior=pigdm",
        "posterior.steps=20",
        "num_inputs=3",
        "num_samples_per_input=50",
        f"hydra.run.dir={tmp_path}",
    )
    assert_ok(result)
    record, metrics = load_run(tmp_path)
    assert record["samples"].shape == (3, 50, 2) and record["y"].shape == (3, 1)
    assert record["x"].shape == (3, 2) and record["A"].shape == (1, 2)
    assert str(record["operator"]) == "random_projection" and int(record["operator_d_y"]) == 1
    assert metrics["nfe"] == 20 and metrics["posterior"] == "pigdm"
    check_mixture_run(record, metrics, "gmm2d")


@pytest.mark.parametrize(
    "overrides,fragments",
    [
        (["operator=inpaint_box"], ["operator inpaint_box needs images", "(2,)"]),
        (["sigma_y=-1"], ["sigma_y must be >= 0, got -1"]),
        (["posterior=repaint"], ["posterior=repaint needs an inpainting mask operator"]),
        (["num_input=3"], ["num_input", "did you mean num_inputs"]),
        (["metrics.fid=true"], ["metrics.fid=true needs a checkpoint trained on images"]),
        (["data=gmm1d", "operator=inpaint_random", "operator.p=0.9"], ["observes nothing"]),
        (["input=/nonexistent.npy"], ["input=/nonexistent.npy: no such file"]),
    ],
)
def test_bad_restore_input_is_one_line(overrides, fragments, tmp_path):
    arguments = ["model=gmm_oracle", "data=gmm2d", "operator=random_projection", "operator.d_y=1"]
    given = {o.split("=")[0] for o in overrides}
    arguments = [a for a in arguments if a.split("=")[0] not in given]
    if "operator" in given:
        arguments = [a for a in arguments if not a.startswith("operator.")]
    result = run_cli("restore", *arguments, *overrides, f"hydra.run.dir={tmp_path}")
    assert_clean_error(result, *fragments)


# --- the README's commands, as written -------------------------------------------------------------
README_TEXT = " ".join((ROOT / "README.md").read_text().replace("\\\n", " ").split())
README_COMMANDS = [
    c for c in documented_commands() if c.startswith("python src/restore.py") and c in README_TEXT
]


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory) -> str:
    run = tmp_path_factory.mktemp("digits")
    assert_ok(run_cli("train", *QUICK_TRAIN, f"hydra.run.dir={run}"))
    return str(run / "checkpoints" / "last.ckpt")


def test_the_readme_shows_both_restore_commands():
    assert len(README_COMMANDS) == 2
    assert "ckpt_path=CKPT" in README_COMMANDS[0] and "model=gmm_oracle" in README_COMMANDS[1]


@pytest.mark.slow
@pytest.mark.parametrize("command", README_COMMANDS)
def test_readme_restore_command_runs_as_written(command, digits_checkpoint, tmp_path):
    run = tmp_path / "run"
    words = shlex.split(command.replace("CKPT", digits_checkpoint).replace("DIR", str(run)))
    assert_ok(run_cli("restore", *words[2:]))
    record, metrics = load_run(run)
    options = dict(w.split("=", 1) for w in words[2:])
    n, k = int(options["num_inputs"]), int(options["num_samples_per_input"])
    assert record["samples"].shape[:2] == (n, k) and record["y"].shape[0] == n
    assert float(record["sigma_y"]) == float(options.get("sigma_y", 0.05))
    if "model" in options:
        check_mixture_run(record, metrics, options["data"])
        return
    mask = record["mask"]
    assert record["samples"].shape[2:] == mask.shape == record["x"].shape[1:]
    assert record["labels"].shape == (n,) and record["y"].shape == (n, int(mask.sum()))
    check_consistency(record, metrics, lambda x: x[:, mask])
    assert 0 <= metrics["classifier_accuracy"] <= 1 and metrics["classifier_accuracy_clean"] > 0.5
    assert metrics["fid"] >= 0
    # The same clean signals from a file are measured and restored alike.
    np.save(tmp_path / "x.npy", record["x"])
    again = tmp_path / "again"
    arguments = [w for w in words[2:] if not w.startswith("hydra.run.dir=")]
    assert_ok(
        run_cli("restore", *arguments, f"input={tmp_path / 'x.npy'}", f"hydra.run.dir={again}")
    )
    from_file, _ = load_run(again)
    np.testing.assert_array_equal(from_file["y"], record["y"])
    np.testing.assert_array_equal(from_file["samples"], record["samples"])
    assert "labels" not in from_file


@pytest.mark.slow
def test_restore_command_on_a_diffusers_pipeline(tmp_path):
    """A pipeline folder has no test split: ``input=`` gives the clean signals; an exact-data
    method (DDNM) restores them, every draw agreeing with the measurement."""
    from diffusers_fixtures import digits_images, train_pipeline

    pipeline = train_pipeline(tmp_path / "pipe", "epsilon", steps=5)
    assert_clean_error(
        run_cli("restore", f"pretrained={pipeline}", f"hydra.run.dir={tmp_path / 'refused'}"),
        "give input=FILE.npy",
    )
    x = digits_images()[:3].numpy().astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run = tmp_path / "run"
    result = run_cli(
        "restore",
        f"pretrained={pipeline}",
        f"input={tmp_path / 'x.npy'}",
        "num_inputs=3",
        "num_samples_per_input=2",
        "operator=inpaint_half",
        "posterior=ddnm",
        "posterior.steps=10",
        "sigma_y=0",
        f"hydra.run.dir={run}",
    )
    assert_ok(result)
    record, metrics = load_run(run)
    mask = record["mask"]
    np.testing.assert_array_equal(record["x"], x)
    np.testing.assert_array_equal(record["y"], x[:, mask])
    assert record["samples"].shape == (3, 2, *x.shape[1:]) and "labels" not in record
    assert "consistency" not in metrics  # sigma_y = 0: the residual norm alone
    samples = record["samples"].reshape(-1, *x.shape[1:])
    residual = np.linalg.norm(np.repeat(record["y"], 2, axis=0) - samples[:, mask], axis=1)
    assert metrics["residual_norm"] == pytest.approx(residual.mean(), abs=1e-6)
    assert metrics["residual_norm"] < 1e-6  # DDNM's last step imposes y on the observed pixels
