"""The paper protocol's metrics against closed forms and hand-computed values, the published
reference layouts, DINOv2 from an exported file, and 2 gloo ranks against 1 process."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from difforge.errors import DifforgeError
from difforge.metrics.protocol import (
    Extractors,
    Ranks,
    evaluate_protocol,
    inception_score,
    precision_recall,
    summarize,
)
from difforge.metrics.reference_files import (
    feature_statistics,
    frechet_distance,
    load_reference_file,
)
from helpers import join_gloo, save_rank_result, single_and_two_gloo_ranks


# --------------------------------------------------------------------------- Frechet distance
def _rotation(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return q


def test_frechet_distance_of_commuting_gaussians_is_the_closed_form():
    # sigma_i = R diag(s_i) R^T commute: FD = |mu1 - mu2|^2 + sum_k (sqrt(s1_k) - sqrt(s2_k))^2.
    d = 6
    rotation = _rotation(d, 0)
    s1 = torch.tensor([0.5, 1.0, 2.0, 3.0, 0.1, 4.0], dtype=torch.float64)
    s2 = torch.tensor([1.5, 0.2, 2.0, 1.0, 0.9, 0.3], dtype=torch.float64)
    mu1 = torch.arange(d, dtype=torch.float64)
    mu2 = mu1.flip(0) * 0.5
    fd = frechet_distance(
        mu1, rotation @ s1.diag() @ rotation.T, mu2, rotation @ s2.diag() @ rotation.T
    )
    expected = float((mu1 - mu2).square().sum() + (s1.sqrt() - s2.sqrt()).square().sum())
    assert fd == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu1, s1.diag(), mu1, s1.diag()) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_of_non_commuting_gaussians_matches_scipy_sqrtm():
    import scipy.linalg

    g = torch.Generator().manual_seed(1)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    b = torch.randn(5, 5, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T + 0.1 * torch.eye(5), b @ b.T + 0.1 * torch.eye(5)
    mu1, mu2 = torch.randn(5, generator=g, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    root = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = float((mu1 - mu2).square().sum()) + float(
        np.trace(s1.numpy() + s2.numpy() - 2 * root)
    )
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_feature_statistics_are_the_published_ones():
    features = torch.randn(40, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mu, sigma = feature_statistics(features)
    assert torch.allclose(mu, torch.from_numpy(features.numpy().mean(0)), atol=1e-14)
    assert torch.allclose(
        sigma, torch.from_numpy(np.cov(features.numpy(), rowvar=False)), atol=1e-13
    )


# ----------------------------------------------------------------------------- Inception Score
def test_inception_score_of_sharp_uniform_predictions_is_the_class_count():
    k, n = 10, 200
    logits = 60.0 * torch.nn.functional.one_hot(torch.arange(n) % k, k).to(torch.float64)
    mean, std = inception_score(logits, splits=4)
    assert mean == pytest.approx(k, rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-9)
    same = torch.zeros(n, k, dtype=torch.float64)
    assert inception_score(same, splits=4)[0] == pytest.approx(1.0, abs=1e-12)


def test_inception_score_matches_a_hand_computation():
    logits = torch.randn(30, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    p = np.exp(logits.numpy())
    p /= p.sum(1, keepdims=True)
    scores = []
    for part in np.split(p, 3):  # contiguous splits, no shuffling
        marginal = part.mean(0)
        kl = (part * (np.log(part) - np.log(marginal))).sum(1)
        scores.append(math.exp(kl.mean()))
    mean, std = inception_score(logits, splits=3)
    assert mean == pytest.approx(np.mean(scores), rel=1e-12)
    assert std == pytest.approx(np.std(scores), rel=1e-10)


# --------------------------------------------------------------------- precision and recall
def test_precision_recall_on_a_hand_computed_set():
    # Real: (0..4, 0); their 3-NN radii are 3, 2, 2, 2, 3, so their balls cover x in [-3, 7] on
    # the axis. Fake: four points near the origin (radii 0.3, 0.2, 0.2, 0.3) and (0, 50), whose
    # 3-NN radius sqrt(0.2^2 + 50^2) reaches real (0, 0) (distance 50) but not (1, 0).
    real = torch.tensor([[float(i), 0.0] for i in range(5)])
    fake = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.2, 0.0], [0.3, 0.0], [0.0, 50.0]])
    precision, recall = precision_recall(real, fake, k=3)
    assert precision == pytest.approx(4 / 5)
    assert recall == pytest.approx(1 / 5)


def test_precision_recall_match_a_brute_force_count():
    g = torch.Generator().manual_seed(4)
    real = torch.randn(30, 3, generator=g, dtype=torch.float64)
    fake = torch.randn(25, 3, generator=g, dtype=torch.float64) * 0.6 + 0.8

    def covered(points, centres, k):
        radii = [sorted(float((c - o).norm()) for o in centres)[k] for c in centres]
        return np.mean(
            [
                any(float((p - c).norm()) <= r for c, r in zip(centres, radii, strict=True))
                for p in points
            ]
        )

    precision, recall = precision_recall(real, fake, k=3, batch_size=7)
    assert precision == pytest.approx(covered(fake, real, 3))
    assert recall == pytest.approx(covered(real, fake, 3))
    assert 0 < precision < 1 and 0 < recall < 1


def test_summary_reports_min_and_mean():
    assert summarize([{"fid": 3.0}, {"fid": 1.0}, {"fid": 2.0}]) == {
        "fid_min": 1.0,
        "fid_mean": 2.0,
    }


# ------------------------------------------------------------------------- reference layouts
def write_guided_diffusion_batch(path: Path, images: np.ndarray, features: np.ndarray) -> Path:
    """guided-diffusion's reference batch: images, and np.mean / np.cov statistics."""
    np.savez(
        path,
        arr_0=images,
        mu=features.mean(0),
        sigma=np.cov(features, rowvar=False),
        mu_s=features[:, :3].mean(0),
        sigma_s=np.cov(features[:, :3], rowvar=False),
    )
    return path


def write_edm_fid_ref(path: Path, features: np.ndarray) -> Path:
    """EDM's ``fid.py ref``: running sums, then mu and the unbiased sigma."""
    n = len(features)
    mu = features.sum(0) / n
    sigma = (features.T @ features - np.outer(mu, mu) * n) / (n - 1)
    np.savez(path, mu=mu, sigma=sigma)
    return path


def test_both_published_layouts_read_to_the_same_statistics(tmp_path):
    features = np.random.default_rng(5).normal(size=(64, 12))
    images = np.random.default_rng(6).integers(0, 256, size=(64, 8, 8, 3), dtype=np.uint8)
    guided = load_reference_file(write_guided_diffusion_batch(tmp_path / "g.npz", images, features))
    edm = load_reference_file(write_edm_fid_ref(tmp_path / "e.npz", features))
    assert (guided.layout, edm.layout) == ("guided-diffusion", "edm")
    mu, sigma = feature_statistics(torch.from_numpy(features))
    for ref in (guided, edm):
        assert torch.allclose(ref.mu, mu, atol=1e-13)
        assert torch.allclose(ref.sigma, sigma, atol=1e-12)
    assert edm.images is None and guided.images is not None
    assert guided.images.shape == (64, 3, 8, 8)
    assert guided.images.dtype == torch.uint8
    assert np.array_equal(guided.images.permute(0, 2, 3, 1).numpy(), images)


def test_bad_reference_files_are_one_line_errors(tmp_path):
    with pytest.raises(DifforgeError, match="no such file"):
        load_reference_file(tmp_path / "missing.npz")
    np.savez(tmp_path / "nomu.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(DifforgeError, match="no 'mu'/'sigma'"):
        load_reference_file(tmp_path / "nomu.npz")
    np.savez(tmp_path / "shape.npz", mu=np.zeros(3), sigma=np.zeros((3, 2)))
    with pytest.raises(DifforgeError, match=r"not \(d,\) and \(d, d\)"):
        load_reference_file(tmp_path / "shape.npz")
    (tmp_path / "junk.npz").write_text("not an archive")
    with pytest.raises(DifforgeError, match=r"not a \.npz"):
        load_reference_file(tmp_path / "junk.npz")


# -------------------------------------------------------------------- the protocol end to end
class TinyInception(nn.Module):
    """A stand-in with Inception's interface: pool features (N, 16) and logits (N, 10)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def pool_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool = torch.tanh(self.conv(x[:, :1])).mean(dim=(2, 3)) * 4
        return pool, self.head(pool) * 3


def tiny_model():
    """An untrained difforge U-Net on 1x8x8 images with a 2-step deterministic DDIM."""
    from difforge.diffusion.losses import DenoisingLoss
    from difforge.diffusion.parameterization import EpsParameterization
    from difforge.diffusion.samplers import Sampler
    from difforge.diffusion.schedules import CosineSchedule
    from difforge.nets.unet import UNet
    from difforge.training.module import DiffusionModule

    torch.manual_seed(0)
    net = UNet(
        in_channels=1,
        image_size=8,
        base_channels=8,
        channel_mult=[1, 2],
        num_res_blocks=1,
        attn_resolutions=[],
    )
    return DiffusionModule(
        net,
        CosineSchedule(100),
        EpsParameterization(),
        DenoisingLoss(),
        Sampler("ddim", 2),
        (1, 8, 8),
    )


def reference_batch(path: Path) -> Path:
    from diffusers_fixtures import digits_images

    images = digits_images(40)
    pool, _ = TinyInception().pool_and_logits(images)
    uint8 = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return write_guided_diffusion_batch(path, uint8, pool.detach().double().numpy())


def _protocol(rank: int, world: int, out_dir: str, port: int) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    torch.set_num_threads(1)
    join_gloo(rank, world, port)
    reference = load_reference_file(Path(out_dir) / "ref.npz")
    result = evaluate_protocol(
        tiny_model(),
        reference,
        Extractors(TinyInception()),
        num_samples=23,  # 5 batches of 5 (the last of 3): 3 on rank 0, 2 on rank 1
        batch_size=5,
        seeds=[0, 1],
        device=torch.device("cpu"),
        ranks=Ranks(rank, world),
        progress=False,
    )
    save_rank_result(out_dir, rank, world, result)


@pytest.mark.slow
def test_two_gloo_ranks_give_the_single_process_numbers(tmp_path):
    reference_batch(tmp_path / "ref.npz")
    single, ranks = single_and_two_gloo_ranks(_protocol, tmp_path)
    assert single["seeds"] == [0, 1] and single["num_samples"] == 23 and single["nfe"] == 2
    assert {"fid_min", "fid_mean", "inception_score_min", "precision_mean", "recall_min"} <= set(
        single
    )
    assert single["per_seed"][0]["fid"] != single["per_seed"][1]["fid"]  # the seeds differ
    for rank, ranked in enumerate(ranks):
        assert ranked["world_size"] == 2
        for run_1, run_2 in zip(single["per_seed"], ranked["per_seed"], strict=True):
            for key, value in run_1.items():
                assert run_2[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (key, rank)


def test_protocol_on_an_edm_reference_refuses_precision_recall_when_asked(tmp_path):
    features = np.random.default_rng(8).normal(size=(20, 16))
    reference = load_reference_file(write_edm_fid_ref(tmp_path / "e.npz", features))

    def protocol(**options: bool) -> dict:
        return evaluate_protocol(
            tiny_model(),
            reference,
            Extractors(TinyInception()),
            num_samples=10,
            batch_size=5,
            seeds=[0],
            device=torch.device("cpu"),
            progress=False,
            **options,
        )

    with pytest.raises(DifforgeError, match="needs reference images"):
        protocol(precision_recall_enabled=True)
    result = protocol()
    assert "precision" not in result and "no reference images" in result["precision_recall"]
    assert result["fid"] > 0 and result["reference_layout"] == "edm"


# ------------------------------------------------------------------------------------ DINOv2
class TinyViTStandIn(nn.Module):
    """(N, 3, 224, 224) -> (N, 8): stands in for DINOv2's class-token output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(9)
        self.proj = nn.Conv2d(3, 8, 14, stride=14)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).mean(dim=(2, 3))


def test_dinov2_from_an_exported_file_gives_fd_dinov2(tmp_path):
    from difforge.metrics.dinov2 import IMAGENET_MEAN, IMAGENET_STD, load_dinov2

    net = TinyViTStandIn().eval()
    program = torch.export.export(
        net, (torch.zeros(2, 3, 224, 224),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, tmp_path / "dino.pt2")
    dinov2 = load_dinov2(tmp_path / "dino.pt2")
    images = torch.rand(3, 3, 8, 8) * 2 - 1
    # EDM2's preprocessing written out: uint8 pixels, bicubic antialiased 224, ImageNet normalization.
    pixels = ((images + 1) * 127.5).round()
    resized = torch.nn.functional.interpolate(
        pixels, size=(224, 224), mode="bicubic", antialias=True
    )
    normalized = (resized / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(
        IMAGENET_STD
    )[:, None, None]
    assert torch.allclose(dinov2(images), net(normalized), atol=1e-5)
    reference = load_reference_file(reference_batch(tmp_path / "ref.npz"))
    result = evaluate_protocol(
        tiny_model(),
        reference,
        Extractors(TinyInception(), dinov2),
        num_samples=10,
        batch_size=5,
        seeds=[0],
        device=torch.device("cpu"),
        progress=False,
    )
    assert result["fd_dinov2"] > 0


def test_dinov2_file_errors_are_one_line(tmp_path):
    from difforge.metrics.dinov2 import load_dinov2

    with pytest.raises(DifforgeError, match="no such file"):
        load_dinov2(tmp_path / "none.pt2")
    torch.save({"w": torch.zeros(1)}, tmp_path / "state.pt")
    with pytest.raises(DifforgeError, match=r"is not a torch\.export program"):
        load_dinov2(tmp_path / "state.pt")


def test_seeds_flag_becomes_a_hydra_override():
    from difforge.cli.overrides import seeds_flag_to_override

    assert seeds_flag_to_override(["eval.py", "a=1", "--seeds", "3", "b=2"]) == [
        "eval.py",
        "a=1",
        "seeds=3",
        "b=2",
    ]
    assert seeds_flag_to_override(["eval.py", "--seeds=3"]) == ["eval.py", "seeds=3"]
