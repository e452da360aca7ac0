"""FID/KID under real DDP: two gloo processes, each scoring its share of the same sample set,
gather their features and report exactly what one process reports on all of it."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow
NUM_SAMPLES = 101  # odd: the ranks' shares differ in size


def _score(rank: int, world: int, out_dir: str, port: int) -> None:
    from difforge.data.digits import DigitsDataModule
    from difforge.metrics.features import digits_classifier
    from difforge.metrics.images import FeatureMetrics, extract_features, reference_stats
    from difforge.training.fid_callback import gather_rows, rank_slice

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
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
    Path(out_dir, f"world{world}_rank{rank}.json").write_text(
        json.dumps({k: float(v) for k, v in result.items()})
    )
    if world > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_report_the_single_process_fid(tmp_path):
    _score(0, 1, str(tmp_path), 0)
    mp.spawn(_score, args=(2, str(tmp_path), _free_port()), nprocs=2, join=True)
    single = json.loads((tmp_path / "world1_rank0.json").read_text())
    for rank in (0, 1):
        ranked = json.loads((tmp_path / f"world2_rank{rank}.json").read_text())
        for key in ("fid", "kid_mean", "kid_std"):
            assert ranked[key] == pytest.approx(single[key], rel=1e-6, abs=1e-9), (key, rank)
    assert single["fid"] > 0.1  # noisy samples: a non-trivial FID
