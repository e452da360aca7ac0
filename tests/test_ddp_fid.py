"""FID/KID under real DDP: two gloo processes, each scoring its share of the same sample set,
gather their features and report exactly what one process reports on all of it."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from helpers import join_gloo, save_rank_result, single_and_two_gloo_ranks

pytestmark = pytest.mark.slow
NUM_SAMPLES = 101  # odd: the ranks' shares differ in size


def _score(rank: int, world: int, out_dir: str, port: int) -> None:
    from difforge.data.digits import DigitsDataModule
    from difforge.metrics.features import digits_classifier
    from difforge.metrics.images import FeatureMetrics, extract_features, reference_stats
    from difforge.training.fid_callback import gather_rows, rank_slice

    torch.set_num_threads(1)
    join_gloo(rank, world, port)
    datamodule = DigitsDataModule(batch_size=64)
    feature = digits_classifier()
    reference = reference_stats(datamodule, feature, "train", write=False)
    test = datamodule.reference_samples("test")
    noise = torch.randn(NUM_SAMPLES, *test.shape[1:], generator=torch.Generator().manual_seed(0))
    samples = (test[torch.arange(NUM_SAMPLES) % len(test)] + 0.3 * noise).clamp(-1, 1)
    start, count = rank_slice(NUM_SAMPLES, rank, world)
    local = extract_features(feature, samples[start : start + count], batch_size=16)

    def all_gather(tensor: torch.Tensor) -> torch.Tensor:
        if world == 1:
            return tensor[None]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    features = gather_rows(local, NUM_SAMPLES, world, all_gather)
    result = FeatureMetrics(reference.num_features, kid_subset_size=50, kid_subsets=20)(
        reference, features, seed=0
    )
    save_rank_result(out_dir, rank, world, {k: float(v) for k, v in result.items()})


def test_two_gloo_ranks_report_the_single_process_fid(tmp_path):
    single, ranks = single_and_two_gloo_ranks(_score, tmp_path)
    for rank, ranked in enumerate(ranks):
        for key in ("fid", "kid_mean", "kid_std"):
            assert ranked[key] == pytest.approx(single[key], rel=1e-6, abs=1e-9), (key, rank)
    assert single["fid"] > 0.1  # noisy samples: a non-trivial FID
