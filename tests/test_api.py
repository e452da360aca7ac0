"""difforge.load on a difforge training run: the notebook API reads checkpoints too."""

from __future__ import annotations

import pytest
import torch

import difforge
from difforge.errors import DifforgeError
from helpers import QUICK_TRAIN, ROOT, assert_ok, run_cli


@pytest.mark.slow
def test_load_a_training_run_and_sample(tmp_path):
    assert_ok(run_cli("train", *QUICK_TRAIN, f"hydra.run.dir={tmp_path}"))
    model = difforge.load(tmp_path)
    assert model.kind == "difforge" and model.source == tmp_path / "checkpoints" / "last.ckpt"
    draws = torch.randn(3, *model.data_shape, generator=torch.Generator().manual_seed(0))
    first = model.sample(3, "ddim", 4, noise=draws)
    assert first.shape == (3, *model.data_shape) and torch.isfinite(first).all()
    assert torch.equal(first, model.sample(3, "ddim", 4, noise=draws, seed=7))
    with pytest.raises(DifforgeError, match="noise has shape"):
        model.sample(2, "ddim", 4, noise=draws)


@pytest.mark.slow
def test_model_evaluate_runs_the_protocol(tmp_path):
    import numpy as np

    from diffusers_fixtures import train_pipeline
    from helpers import random_inception_file
    from test_metrics_protocol import write_edm_fid_ref

    model = difforge.load(train_pipeline(tmp_path / "pipe", "v_prediction", steps=5))
    reference = write_edm_fid_ref(
        tmp_path / "ref.npz", np.random.default_rng(0).normal(size=(20, 2048))
    )
    result = model.evaluate(
        reference,
        num_samples=10,
        sampler="ddim",
        steps=2,
        seeds=2,
        batch_size=5,
        inception_weights=random_inception_file(tmp_path / "inception.pth"),
        progress=False,
    )
    assert result["seeds"] == [0, 1] and result["reference_layout"] == "edm"
    assert result["fid_min"] <= result["fid_mean"] and result["inception_score_min"] >= 1.0
    assert "no reference images" in result["precision_recall"]
    assert model.module.sampler.algorithm == "dpmpp_2m"  # the model's own sampler is restored


def test_load_exact_reads_a_data_config_file_or_refuses_in_one_line(tmp_path):
    model = difforge.load_exact(ROOT / "configs" / "data" / "gmm2d.yaml")
    assert model.data_shape == (2,) and model.sample(8).shape == (8, 2)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    for bad in (tmp_path / "missing.yaml", tmp_path / "list.yaml"):
        with pytest.raises(DifforgeError, match="not a data config file"):
            difforge.load_exact(bad)
