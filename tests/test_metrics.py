"""Image metrics: feature networks, FID/KID, class coverage, the reference cache, the FID callback
(single process and simulated DDP ranks), the W&B logger. CPU only, no downloads."""

from __future__ import annotations

import importlib.util
import itertools
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from difforge.data.digits import DigitsDataModule
from difforge.errors import DifforgeError
from difforge.metrics import features as F
from difforge.metrics.images import (
    FeatureInput,
    ReferenceStats,
    extract_features,
    fid_kid,
    image_metrics,
    reference_stats,
)
from difforge.training.fid_callback import FIDCallback, gather_rows, rank_slice
from helpers import random_inception_file, read_wandb_records

REPO = Path(__file__).resolve().parents[1]
STATED_TEST_ACCURACY = 0.95  # the digits classifier's claim (it scores 179/180 = 0.9944)
FAST_KID = {"kid_subset_size": 100, "kid_subsets": 10}


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule()
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def classifier() -> F.SmallClassifier:
    return F.digits_classifier()


@pytest.fixture(scope="module")
def train_reference(digits, classifier, tmp_path_factory) -> ReferenceStats:
    return reference_stats(digits, classifier, "train", cache_dir=tmp_path_factory.mktemp("stats"))


# --------------------------------------------------------------------------- feature networks
def test_digits_classifier_accuracy_and_interface(digits, classifier):
    x_test = digits.reference_samples("test")
    y_test = digits.split_dataset("test").y
    accuracy = (classifier.predict(x_test) == y_test).double().mean().item()
    assert accuracy >= STATED_TEST_ACCURACY
    assert classifier.test_accuracy == pytest.approx(accuracy)  # the stored number is true
    assert F.digits_classifier_path().stat().st_size < 1_000_000
    assert classifier.num_features == 64 and not classifier.training
    assert not any(p.requires_grad for p in classifier.parameters())
    feats = classifier(x_test[:5])
    assert feats.shape == (5, 64) and classifier.logits(x_test[:5]).shape == (5, 10)
    # trained on the train split only: a held-out split scores like the test split, not 100%
    assert digits.split_index["train"].size == 1437


def test_digits_classifier_resizes_other_sizes():
    dm16 = DigitsDataModule(image_size=16)
    dm16.setup()
    model = F.digits_classifier()
    x = dm16.reference_samples("test")
    assert x.shape[-1] == 16
    assert model(x).shape == (180, 64)
    assert (model.predict(x) == dm16.split_dataset("test").y).double().mean() >= 0.9


def test_train_script_is_deterministic(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "tdc", REPO / "scripts/train_digits_classifier.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # type: ignore[union-attr]
    outs = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    threads = torch.get_num_threads()
    try:
        for out in outs:
            assert script.main(["--epochs", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    a, b = (F.load_classifier(out) for out in outs)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert a.cache_id == b.cache_id and a.test_accuracy is not None


def test_inception_offline_from_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(F.INCEPTION_WEIGHTS_ENV, raising=False)
    weights = random_inception_file(tmp_path / F.INCEPTION_FILENAME)
    net = F.inception(weights)
    assert net.num_features == 2048 and not net.training
    assert not any(p.requires_grad for p in net.parameters())
    gray = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out_gray = net(gray)
    out_rgb = net(gray.repeat(1, 3, 1, 1))  # grayscale is repeated to 3 channels
    assert out_gray.shape == (2, 2048) and torch.isfinite(out_gray).all()
    torch.testing.assert_close(out_gray, out_rgb, rtol=1e-5, atol=0)
    # the same file through the environment variable, and the feature choice for RGB data
    monkeypatch.setenv(F.INCEPTION_WEIGHTS_ENV, str(weights))
    assert isinstance(F.feature_network_for("cifar10"), F.InceptionFeatures)


def test_inception_missing_weights_is_one_line_error(tmp_path, monkeypatch):
    import urllib.error

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.delenv(F.INCEPTION_WEIGHTS_ENV, raising=False)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(fe, "load_state_dict_from_url", offline)
    with pytest.raises(DifforgeError) as error:
        F.inception()
    message = str(error.value)
    assert "\n" not in message and F.INCEPTION_URL in message
    assert "metrics.inception_weights=" in message
    with pytest.raises(DifforgeError, match="no such file"):
        F.inception(tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"weight": torch.zeros(3)}, wrong)
    with pytest.raises(DifforgeError, match="not torch-fidelity"):
        F.inception(wrong)


def test_feature_network_for_picks_by_data(digits, tmp_path, monkeypatch):
    assert isinstance(F.feature_network_for(digits), F.SmallClassifier)
    assert F.feature_network_for("digits").dataset == "digits"
    # an mnist classifier is used when present in <data_dir>/classifiers/
    F.digits_classifier().save(tmp_path / "mnist.safetensors")
    found = F.feature_network_for("mnist", classifier_dir=tmp_path)
    assert isinstance(found, F.SmallClassifier)
    # absent, mnist falls back to Inception (here: offline and without weights -> clear error)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.delenv(F.INCEPTION_WEIGHTS_ENV, raising=False)
    with (
        mock.patch(
            "torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url",
            side_effect=OSError("offline"),
        ),
        pytest.raises(DifforgeError, match="Inception-v3 weights are not available"),
    ):
        F.feature_network_for("mnist", classifier_dir=tmp_path / "none")


# ------------------------------------------------------------------------------- FID and KID
def test_fid_zero_against_itself_and_monotone_in_noise(digits, classifier, train_reference):
    train = digits.reference_samples("train")
    generator = torch.Generator().manual_seed(0)
    fids = []
    for sigma in (0.0, 0.1, 0.2, 0.4, 0.8):
        noisy = (train + sigma * torch.randn(train.shape, generator=generator)).clamp(-1, 1)
        fids.append(
            fid_kid(train_reference, extract_features(classifier, noisy), **FAST_KID)["fid"]
        )
    assert fids[0] < 1e-6
    assert all(a < b for a, b in itertools.pairwise(fids)), fids


def test_kid_unbiased_sign_checks():
    generator = torch.Generator().manual_seed(0)
    d = 16
    reference = ReferenceStats.from_features(torch.randn(2000, d, generator=generator))
    same, shifted = [], []
    for seed in range(6):
        fake = torch.randn(500, d, generator=generator)
        same.append(fid_kid(reference, fake, seed=seed, kid_subset_size=200, kid_subsets=20))
        shifted.append(
            fid_kid(reference, fake + 0.3, seed=seed, kid_subset_size=200, kid_subsets=20)
        )
    same_means = torch.tensor([m["kid_mean"] for m in same])
    # same law: centred on 0 (an unbiased estimator goes negative), far below the shifted law
    assert (same_means < 0).any() and (same_means > 0).any()
    assert abs(float(same_means.mean())) < 3 * float(same_means.std()) + 1e-3
    assert all(m["kid_mean"] > 10 * abs(float(same_means.mean())) for m in shifted)
    assert all(m["kid_mean"] > 3 * m["kid_std"] > 0 for m in shifted)
    assert all(s["fid"] < t["fid"] for s, t in zip(same, shifted, strict=True))
    # KID is seeded: the same features and seed give the same number
    assert fid_kid(reference, fake, seed=3) == fid_kid(reference, fake, seed=3)


def test_floor_and_noise_fid_with_class_coverage(digits, tmp_path):
    """The numbers in the issue's closing note: held-out test vs train (the floor) and noise."""
    test = digits.reference_samples("test")
    floor = image_metrics(test, digits, seed=0, cache_dir=tmp_path, **FAST_KID)
    noise = torch.rand(1000, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noisy = image_metrics(noise, digits, seed=0, cache_dir=tmp_path, **FAST_KID)
    print(
        f"\ndigits FID floor (test vs train) {floor['fid']:.4f}, uniform noise {noisy['fid']:.4f}"
    )
    assert floor["fid"] < 0.5 and noisy["fid"] > 5.0 and noisy["fid"] > 30 * floor["fid"]
    assert noisy["kid_mean"] > 0.3 > abs(floor["kid_mean"])
    assert floor["class_coverage"] == 1.0 and floor["num_reference"] == 1437
    shares = [floor[f"class_share_{k}"] for k in range(10)]
    assert sum(shares) == pytest.approx(1.0)
    # mode collapse is a number: drop the 3s and coverage loses that class
    y = digits.split_dataset("test").y
    dropped = image_metrics(test[y != 3], digits, seed=0, cache_dir=tmp_path, **FAST_KID)
    assert dropped["class_coverage"] == pytest.approx(0.9)
    assert dropped["class_share_3"] < 0.05


class CountingFeature(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0
        self.num_features, self.cache_id = inner.num_features, inner.cache_id

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_reference_cache_written_once_and_reused(digits, classifier, tmp_path):
    counting = CountingFeature(classifier)
    first = reference_stats(digits, counting, "train", cache_dir=tmp_path)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and counting.calls > 0
    mtime, calls = files[0].stat().st_mtime_ns, counting.calls
    second = reference_stats(digits, counting, "train", cache_dir=tmp_path)
    assert counting.calls == calls and files[0].stat().st_mtime_ns == mtime
    assert torch.equal(first.features_cov_sum, second.features_cov_sum)
    assert second.num_samples == 1437 and "digits-train-8x8" in files[0].name
    # another key (split, number of images) is another file
    reference_stats(digits, counting, "train", 500, cache_dir=tmp_path)
    reference_stats(digits, counting, "val", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    # the whole split asked by its size shares the file of num_images=None
    reference_stats(digits, counting, "train", 10_000, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3


# ------------------------------------------------------------------------------- FID callback
def test_rank_slices_cover_everything_once():
    for total, world in ((101, 2), (7, 3), (2, 3), (1000, 8)):
        slices = [rank_slice(total, r, world) for r in range(world)]
        covered = [i for start, count in slices for i in range(start, start + count)]
        assert covered == list(range(total))


class ThreadCollective:
    """all_gather/barrier among threads standing in for DDP ranks."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.barrier_ = threading.Barrier(world, timeout=60)
        self.slots: list = [None] * world

    def all_gather(self, rank: int):
        def gather(tensor):
            self.barrier_.wait()
            self.slots[rank] = tensor.clone()
            self.barrier_.wait()
            out = torch.stack(list(self.slots))
            self.barrier_.wait()
            return out

        return gather

    def barrier(self, *args) -> None:
        self.barrier_.wait()


def run_ranks(world: int, fn):
    results, errors = [None] * world, []

    def target(rank):
        try:
            results[rank] = fn(rank)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return results


def test_gathered_features_give_the_single_process_fid(train_reference, classifier, digits):
    images = digits.reference_samples("val")[:101]
    all_features = extract_features(classifier, images)
    single = fid_kid(train_reference, all_features, seed=0, **FAST_KID)
    for world in (2, 3):
        collective = ThreadCollective(world)

        def rank_fn(rank, world=world, collective=collective):
            start, count = rank_slice(len(images), rank, world)
            local = all_features[start : start + count]
            gathered = gather_rows(local, len(images), world, collective.all_gather(rank))
            return gathered, fid_kid(train_reference, gathered, seed=0, **FAST_KID)

        results = run_ranks(world, rank_fn)
        for gathered, metrics in results:
            assert torch.equal(gathered, all_features)  # nothing dropped or counted twice
            assert metrics == single  # identical FID/KID on every rank


class IndexedModule:
    """A stand-in LightningModule whose sample for global index i is a fixed image: the class
    labels the callback passes (arange(M) % num_classes with num_classes > M) are the indices."""

    def __init__(self, images, rank=0, all_gather=None):
        self.images, self.num_classes, self.sampler = images, 10**6, None
        self.device = torch.device("cpu")
        self.all_gather = all_gather or (lambda t: t)

    def generate(
        self, num_samples, *, sampler=None, class_labels=None, generator=None, batch_size=256
    ):
        assert class_labels is not None and len(class_labels) == num_samples
        return SimpleNamespace(samples=self.images[class_labels])


def _fake_trainer(dm, rank, world, collective=None):
    barrier = collective.barrier if collective else (lambda *a: None)
    return SimpleNamespace(
        datamodule=dm,
        global_rank=rank,
        world_size=world,
        is_global_zero=rank == 0,
        strategy=SimpleNamespace(barrier=barrier),
        sanity_checking=False,
        global_step=10,
        current_epoch=0,
    )


def test_callback_under_simulated_ddp_matches_one_process(digits, tmp_path):
    images = torch.cat([digits.reference_samples("val"), digits.reference_samples("test")])[:301]
    options = {"num_samples": 301, "cache_dir": tmp_path, "seed": 0, **FAST_KID}
    one = FIDCallback(**options)
    single = one.evaluate(_fake_trainer(digits, 0, 1), IndexedModule(images))
    world = 2
    collective = ThreadCollective(world)
    callbacks = [FIDCallback(**options) for _ in range(world)]

    def rank_fn(rank):
        module = IndexedModule(images, rank, collective.all_gather(rank))
        return callbacks[rank].evaluate(_fake_trainer(digits, rank, world, collective), module)

    results = run_ranks(world, rank_fn)
    assert results[0] == results[1]  # identical on every rank
    for key in ("fid", "kid", "kid_std", "class_coverage"):
        assert results[0][key] == pytest.approx(single[key], rel=1e-6, abs=1e-9), key
    assert single["class_coverage"] == 1.0


def make_tiny_module(train):
    """A LightningModule with ``generate``: train images plus noise of a per-epoch amplitude."""
    import lightning as L

    from difforge.diffusion.samplers import SampleResult

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))
            self.num_classes, self.sampler = 0, None
            self.noise_by_epoch = [0.6, 0.05, 0.9]
            self.seen_generators = []

        def training_step(self, batch, batch_idx):
            return (self.w - 1).square().sum()

        def validation_step(self, batch, batch_idx):
            self.log("val/loss", (self.w - 1).square().sum())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def generate(
            self, num_samples, *, sampler=None, class_labels=None, generator=None, batch_size=256
        ):
            self.seen_generators.append(generator.initial_seed())
            noise = self.noise_by_epoch[self.current_epoch]
            x = train[:num_samples] + noise * torch.randn(
                train[:num_samples].shape, generator=generator
            )
            return SampleResult(x.clamp(-1, 1), 1, torch.zeros(2))

    return Tiny()


def _best_checkpoint(directory):
    from hydra.utils import instantiate

    cfg = OmegaConf.load(REPO / "configs/callbacks/best_checkpoint.yaml")
    cfg.best_checkpoint.dirpath = str(directory)
    return instantiate(cfg.best_checkpoint)


def _trainer(tmp_path, callbacks, epochs=3):
    import lightning as L

    return L.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, limit_train_batches=2,
        limit_val_batches=1, num_sanity_val_steps=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, default_root_dir=tmp_path,
    )  # fmt: skip


def test_callback_in_a_trainer_logs_and_keeps_best(digits, tmp_path):
    import lightning as L
    from hydra.utils import instantiate

    module = make_tiny_module(digits.reference_samples("train"))
    best = _best_checkpoint(tmp_path / "checkpoints")
    fid_cfg = OmegaConf.load(REPO / "configs/callbacks/fid.yaml")
    fid_cfg.fid.cache_dir = str(tmp_path / "stats")
    fid_cfg.fid.classifier_dir = str(tmp_path / "classifiers")
    fid_cfg.fid.inception_weights = None
    fid_cfg.fid.num_samples = 300
    fid_cfg.fid.every_n_steps = None  # every epoch
    fid_cfg.fid.kid_subset_size, fid_cfg.fid.kid_subsets = 100, 5
    fid = instantiate(fid_cfg.fid)
    assert fid.sampler.algorithm == "ddim" and fid.sampler.steps == 20
    seen = []

    class Recorder(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                seen.append(float(trainer.callback_metrics["val/fid"]))

    trainer = _trainer(tmp_path, [fid, Recorder(), best])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=64))
    assert len(seen) == 3 and len(module.seen_generators) == 3  # not in the sanity check
    assert seen[1] < seen[0] < seen[2]
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    assert float(best.best_model_score) == pytest.approx(seen[1])
    assert torch.load(best.best_model_path, weights_only=False)["epoch"] == 1
    assert {"val/kid", "val/kid_std", "val/class_coverage"} <= set(trainer.callback_metrics)


def test_callback_disables_itself_on_vector_data():
    callback = FIDCallback(num_samples=10)
    trainer = SimpleNamespace(datamodule=SimpleNamespace(kind="vector"))
    with pytest.warns(UserWarning, match="not image data"):
        callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    assert not callback.enabled
    with pytest.raises(DifforgeError):
        FIDCallback(every_n_epochs=None, every_n_steps=None)


# ------------------------------------------------------------------------------------ W&B
def test_wandb_logger_offline_run_is_readable(tmp_path, monkeypatch):
    import json

    from difforge.training.loggers import wandb_should_be_offline

    assert wandb_should_be_offline({})
    assert not wandb_should_be_offline({"WANDB_API_KEY": "x"})
    assert not wandb_should_be_offline({"WANDB_MODE": "online"})
    assert wandb_should_be_offline({"WANDB_MODE": "offline", "WANDB_API_KEY": "x"})
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_CACHE_DIR"):
        monkeypatch.setenv(name, "")  # recorded, so the logger's own settings are undone after
        monkeypatch.delenv(name)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = OmegaConf.load(REPO / "configs/logger/wandb.yaml")
    cfg = OmegaConf.merge(
        cfg,
        {"paths": {"output_dir": str(tmp_path)}, "run_name": "digits-test", "tags": ["t1", "t2"]},
    )
    from hydra.utils import instantiate

    logger = instantiate(cfg.wandb)
    assert os.environ["WANDB_DIR"] == str(tmp_path)
    logger.log_hyperparams({"lr": 0.001})
    logger.log_metrics({"val/fid": 1.5, "val/kid": 0.25}, step=3)
    logger.log_metrics({"val/fid": 1.25, "train/loss": 0.5}, step=7)
    logger.experiment.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    records = read_wandb_records(runs[0])
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.display_name == "digits-test" and list(run.tags) == ["t1", "t2"]
    assert run.project == "difforge"
    history = [
        {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in r.history.item
        }
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    fids = [(row["trainer/global_step"], row["val/fid"]) for row in history if "val/fid" in row]
    assert fids == [(3, 1.5), (7, 1.25)]
    assert any(row.get("val/kid") == 0.25 for row in history)
    config = [r.config for r in records if r.WhichOneof("record_type") == "config"]
    assert any(
        item.key == "lr" and json.loads(item.value_json) == 0.001
        for c in config
        for item in c.update
    )


def test_logger_and_callback_configs_compose():
    many = OmegaConf.load(REPO / "configs/logger/many.yaml")
    assert list(many.defaults) == ["csv", "tensorboard", "wandb"]
    for name in many.defaults:
        assert (REPO / "configs/logger" / f"{name}.yaml").is_file()
    fid = OmegaConf.load(REPO / "configs/callbacks/fid.yaml")
    assert fid.fid._target_ == "difforge.training.fid_callback.FIDCallback"
    assert (
        OmegaConf.select(
            OmegaConf.merge(fid, {"paths": {"data_dir": "d"}}), "fid.inception_weights"
        )
        is None
    )


def test_feature_input_has_num_features():
    assert FeatureInput(7).num_features == 7


def test_callback_schedule_by_epochs_or_steps():
    from lightning.pytorch.trainer.states import TrainerFn

    def trainer(step, epoch, sanity=False, max_steps=-1, fn=TrainerFn.FITTING):
        return SimpleNamespace(
            global_step=step,
            current_epoch=epoch,
            sanity_checking=sanity,
            max_steps=max_steps,
            state=SimpleNamespace(fn=fn),
        )

    by_steps = FIDCallback(every_n_steps=100)
    assert not by_steps.should_evaluate(trainer(0, 0, sanity=True))
    assert by_steps.should_evaluate(trainer(30, 0))  # the first validation of a fit
    by_steps.last_step = 30
    assert not by_steps.should_evaluate(trainer(90, 1))
    assert by_steps.should_evaluate(trainer(90, 1, max_steps=90))  # the fit's last step
    assert by_steps.should_evaluate(trainer(90, 1, fn=TrainerFn.VALIDATING))  # after the fit
    assert not by_steps.should_evaluate(trainer(30, 1, fn=TrainerFn.VALIDATING))  # evaluated
    assert by_steps.should_evaluate(trainer(130, 2))
    by_epochs = FIDCallback(every_n_epochs=2)
    by_epochs.last_step = 10
    assert [by_epochs.should_evaluate(trainer(10 * (e + 2), e)) for e in range(1, 5)] == [
        True,
        False,
        True,
        False,
    ]


def test_best_checkpoint_waits_for_its_metric(digits, tmp_path):
    """Without val/fid (no FID callback, or vector data) the best checkpoint warns once, not fails."""
    best = _best_checkpoint(tmp_path / "checkpoints")
    module = make_tiny_module(digits.reference_samples("train"))
    with pytest.warns(UserWarning, match="no FID callback is on for this run"):
        _trainer(tmp_path, [best], epochs=2).fit(module, datamodule=DigitsDataModule(batch_size=64))
    assert not (tmp_path / "checkpoints" / "best.ckpt").exists()
