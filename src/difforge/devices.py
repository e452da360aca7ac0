"""A device the user names, checked against the machine: one that is not there is an error, never
silently replaced by the CPU (torch moves a tensor to ``cuda`` only to fail later, and a sampler
that falls back samples on the CPU with no word). ``auto`` means whatever is there.

Names are torch's (``cpu``, ``cuda``, ``cuda:N``, ``mps``) for sampling and the Python API, and
Lightning's accelerators (``cpu``, ``gpu``, ``cuda``, ``mps``, ``auto``) for training.
"""

from __future__ import annotations

import re

import torch

from difforge.errors import DifforgeError

DEVICE_NAMES = "auto, cpu, cuda, cuda:N, mps"
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def available_devices() -> str:
    """The devices of this machine, as a user would name them (``cpu, cuda:0, cuda:1``)."""
    names = ["cpu"]
    names += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return ", ".join(names)


def _absent(key: str, value: object, what: str) -> DifforgeError:
    return DifforgeError(
        f"{key}={value}: {what} on this machine; available: {available_devices()} "
        "(auto: whatever is there)"
    )


def resolve_device(name: str | torch.device, key: str = "device") -> torch.device:
    """The torch device ``name`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a
    ``torch.device``), which must be on this machine; ``auto``: CUDA, else MPS, else the CPU.
    ``key`` names the setting in the error.

    Raises DifforgeError (one line) for a name that is no device or a device that is absent.
    """
    if isinstance(name, str) and name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(name, (str, torch.device)) or (
        isinstance(name, str) and not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name)
    ):
        raise DifforgeError(f"{key} must be one of {DEVICE_NAMES}, got {name!r}")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise _absent(key, name, "no CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise _absent(key, name, f"no CUDA GPU {device.index}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise _absent(key, name, "no MPS (Apple GPU)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DifforgeError(f"{key} must be one of {DEVICE_NAMES}, got {name!r}")
    return device


def check_accelerator(accelerator: object, key: str = "trainer.accelerator") -> str:
    """Lightning's ``accelerator`` (one of ``ACCELERATORS``), which must be on this machine:
    ``gpu``/``cuda`` need a CUDA GPU, ``mps`` an Apple GPU.

    Raises DifforgeError (one line) otherwise."""
    if not isinstance(accelerator, str) or accelerator not in ACCELERATORS:
        raise DifforgeError(f"{key} must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise _absent(key, accelerator, "no CUDA GPU")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise _absent(key, accelerator, "no MPS (Apple GPU)")
    return accelerator
