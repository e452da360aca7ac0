"""difforge.load on a difforge training run: the notebook API reads checkpoints too."""

from __future__ import annotations

import pytest
import torch

import difforge
from difforge.errors import DifforgeError
from helpers import QUICK_TRAIN, assert_ok, run_cli


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
