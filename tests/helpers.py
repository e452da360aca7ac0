"""Running the entry points as users do: subprocesses of ``python src/<entry>.py``."""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch

from difforge.diffusion.gaussian_mixture import GaussianMixture
from difforge.metrics.mixture import mixture_metrics, mode_mass_tolerance, wasserstein1_1d

ROOT = Path(__file__).resolve().parents[1]


def run_cli(
    entry: str, *overrides: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python src/<entry>.py overrides...`` from the repository root; output captured as text."""
    environment = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    environment.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / f"{entry}.py"), *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
    )


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Non-zero exit, every fragment in the message, and no Python traceback."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in:\n{output[-3000:]}"
    assert "Traceback (most recent call last)" not in output, output[-3000:]


# Overrides that make a training run take seconds: few steps, small sample grids, no progress bar.
QUICK_TRAIN = (
    "trainer.max_steps=6",
    "trainer.log_every_n_steps=1",
    "trainer.accelerator=cpu",
    "trainer.limit_val_batches=1",
    "callbacks.sample_grid.every_n_steps=1000",
    "callbacks.sample_grid.num_samples=4",
    "callbacks.model_checkpoint.every_n_train_steps=3",
    "sampler.steps=3",
    "~callbacks.progress_bar",
    "logger=csv",
    "callbacks.fid.num_samples=16",
    "callbacks.fid.sampler.steps=2",
    "callbacks.fid.kid_subset_size=8",
    "callbacks.fid.kid_subsets=2",
    "print_config=false",
)


def random_inception_file(path: Path) -> Path:
    """Random Inception-v3 weights in the format torch-fidelity reads (no download)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with (
        mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None),
    ):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)
    return path


def gaussian_ode_solution(
    x: torch.Tensor, sigma_from: float, sigma_to: float, mean: float, std: float
) -> torch.Tensor:
    """Exact probability-flow ODE map (VE frame) for N(mean, std^2) data: x(sigma) - mean scales
    with the marginal's standard deviation sqrt(std^2 + sigma^2)."""
    return mean + (x - mean) * math.sqrt((std**2 + sigma_to**2) / (std**2 + sigma_from**2))


# The allowance for discretisation error on top of the statistical floor of the mixture tests:
# 0.01 in W1 and 0.01 in each mode's mass.
DISCRETISATION_ALLOWANCE = 0.01


def mixture_w1_floor(mixture: GaussianMixture, n: int) -> float:
    """W1 of ``n`` exact draws from the mixture: mean + 4 standard deviations over 20 seeds. A
    perfect sampler's W1 exceeds this with probability well below 1e-3."""
    values = torch.tensor(
        [
            wasserstein1_1d(mixture.sample(n, torch.Generator().manual_seed(100 + s))[0], mixture)
            for s in range(20)
        ]
    )
    return float(values.mean() + 4 * values.std())


def assert_reproduces_mixture(
    samples: torch.Tensor, mixture: GaussianMixture, w1_floor: float
) -> None:
    """W1 and every mode's mass within the statistical floor plus ``DISCRETISATION_ALLOWANCE``."""
    n = samples.shape[0]
    metrics = mixture_metrics(samples, mixture)
    assert metrics["w1"] < w1_floor + DISCRETISATION_ALLOWANCE, metrics
    for k in range(len(mixture.weights)):
        tolerance = mode_mass_tolerance(metrics[f"true_mass_{k}"], n) + DISCRETISATION_ALLOWANCE
        assert abs(metrics[f"mode_mass_{k}"] - metrics[f"true_mass_{k}"]) < tolerance, metrics
    assert metrics["mode_coverage"] == 1.0


# --- two gloo ranks against one process -----------------------------------------------------------
def join_gloo(rank: int, world: int, port: int) -> None:
    """Join a ``world``-process gloo group on localhost as ``rank``; nothing when ``world`` is 1."""
    if world > 1:
        import torch.distributed as dist

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)


def save_rank_result(out_dir: str, rank: int, world: int, result: dict) -> None:
    """Write ``result`` as ``world{world}_rank{rank}.json`` in ``out_dir``, then leave the group."""
    Path(out_dir, f"world{world}_rank{rank}.json").write_text(json.dumps(result))
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


def single_and_two_gloo_ranks(
    rank_fn: Callable[[int, int, str, int], None], out_dir: Path
) -> tuple[dict, list[dict]]:
    """Run ``rank_fn(rank, world, out_dir, port)`` alone (world 1), then as two gloo ranks; it
    ends with :func:`save_rank_result`. Returns the single process's result and the two ranks'."""
    import torch.multiprocessing as mp

    rank_fn(0, 1, str(out_dir), 0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(rank_fn, args=(2, str(out_dir), port), nprocs=2, join=True)

    def read(world: int, rank: int) -> dict:
        return json.loads((out_dir / f"world{world}_rank{rank}.json").read_text())

    return read(1, 0), [read(2, rank) for rank in (0, 1)]


def read_wandb_records(path: Path, timeout: float = 60.0):
    """The protobuf records of a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then
    LevelDB-log blocks of 32 KiB, each record a 7-byte header (crc32, length, type) and data.

    wandb's service process writes the file after ``finish()`` returns, slower on a loaded machine:
    the file is read again until it holds the run record, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        records = _wandb_records(path)
        if any(r.WhichOneof("record_type") == "run" for r in records):
            return records
        if time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def _wandb_records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if len(data) < 7:
        return []
    assert data[:4] == b":W&B"
    offset, block, pending, records = 7, 32768, b"", []
    while offset + 7 <= len(data):
        room = block - offset % block
        if room < 7:
            offset += room
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        if kind == 0 and length == 0:
            break
        chunk = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records
