"""What machine a measurement came from, for benchmark reports, and the clock barrier timings need."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import torch


def machine_info(**extra: Any) -> dict[str, Any]:
    """Core count, CPU model, torch version and threads, Python version, and ``extra`` entries."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        **extra,
    }


def sync(device: torch.device) -> None:
    """Wait for the GPU (a no-op on the CPU), so that a clock read covers the work queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
