"""Classifier-free guidance needs an unconditional branch: a model trained with no label dropout
(``module.class_dropout=0``) never trained its null label, so guidance (w != 1) on it is refused
at training and at every sampling entry (sample.py, eval.py, the Python API)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import QUICK_TRAIN, assert_clean_error, assert_ok, run_cli

GMM_CONDITIONAL = (
    *(o for o in QUICK_TRAIN if not o.startswith("trainer.max_steps")),
    "experiment=gmm1d",
    "trainer.max_steps=2",
    "model.num_classes=3",
    "model.hidden_dim=16",
)
REFUSAL = "needs an unconditional branch"


def train(run_dir: Path, *overrides: str) -> Path:
    assert_ok(run_cli("train", *GMM_CONDITIONAL, *overrides, f"hydra.run.dir={run_dir}"))
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def no_dropout(tmp_path_factory) -> Path:
    """A class-conditional gmm1d MLP trained without label dropout (and without guidance)."""
    return train(tmp_path_factory.mktemp("no_dropout"), "module.class_dropout=0")


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["3", "0", "0.5"])
def test_guidance_without_label_dropout_is_refused_at_training(tmp_path, scale):
    """Before: trained, and its sample grids and FID were guided by an untrained null label."""
    result = run_cli(
        "train",
        *GMM_CONDITIONAL,
        "module.class_dropout=0",
        f"module.guidance_scale={scale}",
        f"hydra.run.dir={tmp_path}",
    )
    assert_clean_error(result, f"module.guidance_scale={scale} {REFUSAL}", "module.class_dropout=0")
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["sample", "eval"])
def test_guidance_on_a_checkpoint_without_label_dropout_is_refused(no_dropout, tmp_path, entry):
    """Before: ``guidance_scale=3`` sampled with the untrained null label and exited 0."""
    common = (f"ckpt_path={no_dropout}", "sampler.steps=2", "num_samples=8", "device=cpu")
    extra = ("nll.enabled=false",) if entry == "eval" else ()
    refused = run_cli(
        entry, *common, *extra, "guidance_scale=3", f"hydra.run.dir={tmp_path / 'bad'}"
    )
    assert_clean_error(refused, f"guidance_scale=3 {REFUSAL}", "module.class_dropout=0")
    assert_ok(
        run_cli(entry, *common, *extra, "guidance_scale=1", f"hydra.run.dir={tmp_path / 'ok'}")
    )


@pytest.mark.slow
def test_guidance_through_the_api_needs_label_dropout(no_dropout, tmp_path):
    import difforge

    model = difforge.load(no_dropout)
    with pytest.raises(ValueError, match=f"^guidance_scale=3 {REFUSAL}"):
        model.sample(4, "ddim", 2, guidance_scale=3.0)
    with pytest.raises(ValueError, match=f"^guidance_scale=2 {REFUSAL}"):
        model.module.guidance_scale = 2.0  # set by hand: refused where guidance is built
        model.sample(4, "ddim", 2)
    model.module.guidance_scale = 1.0
    assert model.sample(4, "ddim", 2, guidance_scale=1.0).shape == (4, 1)
    # With label dropout (the default 0.1) the same request is guidance, and runs.
    dropped = difforge.load(train(tmp_path / "dropout"))
    assert dropped.module.class_dropout == 0.1
    guided = dropped.sample(4, "ddim", 2, guidance_scale=3.0, class_labels=None)
    assert guided.shape == (4, 1) and dropped.module.guidance_scale == 1.0
