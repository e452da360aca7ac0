"""Reading checkpoints safely.

Checkpoints are loaded with ``torch.load(weights_only=True)``: PyTorch's restricted unpickler
accepts tensors and plain containers (dict, list, str, numbers) and refuses any other object,
so a checkpoint crafted to run code when unpickled is refused before that code runs.
difforge writes only such plain data (the run's config is stored as a dict).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from difforge.errors import CheckpointError


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file onto the CPU, refusing unsafe or damaged files with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error) or "weights_only" in str(error):
            raise CheckpointError(
                f"refused to load checkpoint {path}: it contains objects other than tensors and plain "
                "containers (a pickle that could run code); difforge loads only weights-only checkpoints"
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({error})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{path} is not a difforge/Lightning checkpoint (no 'state_dict' entry)"
        )
    if not isinstance(checkpoint.get("difforge"), dict) or not checkpoint["difforge"].get("config"):
        raise CheckpointError(
            f"{path} was not written by difforge's train.py (no 'difforge' config entry); "
            "difforge cannot rebuild its model"
        )
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside its target, flushes it to disk, then
    renames it over the target (``os.replace`` is atomic on POSIX). A crash or a full disk during
    a save leaves the previous checkpoint whole, never a truncated one. (Lightning's default goes
    through a temporary file in the system temp directory, which on another filesystem turns the
    rename into a copy.)"""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
