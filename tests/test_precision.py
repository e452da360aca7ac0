"""Every training precision the config accepts, on every path: train, sample grids, FID,
checkpoint, resume and src/sample.py; the EMA in float32 whatever the precision."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from lightning.pytorch.plugins.precision import DoublePrecision, HalfPrecision
from torch import nn

from difforge.training.build import PRECISIONS
from difforge.training.ema import EMA
from helpers import QUICK_TRAIN, assert_clean_error, assert_ok, run_cli


class Holder(nn.Module):
    """A network and its EMA in one module, as the LightningModule holds them."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Conv2d(1, 2, 3)
        self.ema = EMA(self.net, decay=0.999, warmup=False)


@pytest.mark.parametrize(
    "plugin,dtype",
    [
        (HalfPrecision("bf16-true"), torch.bfloat16),
        (HalfPrecision("16-true"), torch.float16),
        (DoublePrecision(), torch.float64),
    ],
)
def test_lightning_true_precisions_leave_the_ema_in_float32(plugin, dtype):
    holder = plugin.convert_module(Holder())
    assert {p.dtype for p in holder.net.parameters()} == {dtype}
    assert {p.dtype for p in holder.ema.net.parameters()} == {torch.float32}
    holder.to(memory_format=torch.channels_last)  # other conversions still apply
    assert holder.ema.net.weight.is_contiguous(memory_format=torch.channels_last)
    assert holder.ema.net.weight.dtype == torch.float32


def test_a_small_ema_update_is_not_rounded_away_under_bf16_true():
    """EMA at 1, network at 1 + 2^-7 (exact in bf16), decay 0.999: the average moves by
    0.001 * 2^-7 = 7.8e-6, below bf16's half-spacing at 1 (2^-8 = 3.9e-3), so a bf16 average stays
    at 1 (the fault); the float32 one moves by the update to float32 rounding (float64 reference)."""
    holder = HalfPrecision("bf16-true").convert_module(Holder())
    with torch.no_grad():
        holder.net.weight.fill_(1 + 2**-7)
        holder.ema.net.weight.fill_(1.0)
    holder.ema.update(holder.net)
    expected = 1.0 + 0.001 * 2**-7
    assert torch.tensor(expected, dtype=torch.bfloat16).item() == 1.0  # what bf16 would keep
    assert holder.ema.net.weight.dtype == torch.float32
    torch.testing.assert_close(
        holder.ema.net.weight.double(),
        torch.full_like(holder.ema.net.weight, expected, dtype=torch.float64),
        rtol=0,
        atol=2**-23,
    )


# --- through the CLI ---------------------------------------------------------------------------
# What the CPU can run: every accepted value but Transformer Engine's (refused below).
CPU_PRECISIONS = [p for p in PRECISIONS if not p.startswith("transformer-engine")]
FAST = "bf16-true"  # the representative: bf16 network, float32 EMA and sampler
TINY = (
    *[o for o in QUICK_TRAIN if not o.startswith("trainer.max_steps")],
    "data.batch_size=8",
    "trainer.val_check_interval=2",  # validation (with FID) at step 2, inside the fit
)


@pytest.mark.parametrize(
    "precision",
    [p if p == FAST else pytest.param(p, marks=pytest.mark.slow) for p in CPU_PRECISIONS],
)
def test_every_precision_trains_samples_resumes_and_loads(precision, tmp_path):
    """Train 2 steps (FID at step 2, a sample grid at the end), resume to 3, then src/sample.py.
    Before the fix bf16-true, 16-true, 64-true and 64 crashed at the end of fit in the sample
    grid (float32 noise into a bf16/fp16/float64 network) and kept the EMA in bf16 or fp16."""
    run = tmp_path / "run"
    first = run_cli(
        "train",
        *TINY,
        "trainer.max_steps=2",
        f"trainer.precision={precision}",
        f"hydra.run.dir={run}",
    )
    assert_ok(first)
    metrics = json.loads((run / "final_metrics.json").read_text())["metrics"]
    assert math.isfinite(metrics["val/fid"]) and math.isfinite(metrics["val/loss"])
    assert (run / "samples" / "step_0000002.png").stat().st_size > 0
    assert_ok(
        run_cli(
            "train",
            *TINY,
            "trainer.max_steps=3",
            f"trainer.precision={precision}",
            "ckpt_path=last",
            f"hydra.run.dir={run}",
        )
    )
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 3
    ema = {v.dtype for k, v in checkpoint["state_dict"].items() if k.startswith("ema.net.")}
    assert ema == {torch.float32}
    assert (run / "samples" / "step_0000003.png").stat().st_size > 0
    out = tmp_path / "samples"
    sampled = run_cli(
        "sample",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        "sampler=ddim",
        "sampler.steps=3",
        "num_samples=4",
        f"hydra.run.dir={out}",
    )
    assert_ok(sampled)
    assert np.load(out / "samples.npz")["arr_0"].shape == (4, 8, 8, 1)


@pytest.mark.parametrize(
    "precision,message",
    [
        (
            "transformer-engine",
            "error: trainer.precision=transformer-engine needs an NVIDIA GPU and the "
            "transformer_engine package (no CUDA GPU is in use, trainer.accelerator=cpu)",
        ),
        (
            "transformer-engine-float16",
            "error: trainer.precision=transformer-engine-float16 needs an NVIDIA GPU",
        ),
        ("8-true", "error: trainer.precision=8-true is not a precision; use one of auto, 32-true"),
        ("null", "error: trainer.precision=None is not a precision"),
    ],
)
def test_a_precision_that_cannot_run_here_is_refused_in_one_line(precision, message, tmp_path):
    result = run_cli(
        "train", *QUICK_TRAIN, f"trainer.precision={precision}", f"hydra.run.dir={tmp_path}"
    )
    assert_clean_error(result, message)
    assert not (tmp_path / "checkpoints").exists()
