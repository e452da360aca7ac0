"""difforge: diffusion models with PyTorch Lightning and Hydra.

The notebook API (``docs/api.md``): ``difforge.load(path)`` for a difforge checkpoint or a
diffusers pipeline folder, ``difforge.load_exact(data)`` for the exact model of a mixture, and
the evaluation metrics on features. They are imported on first use, so
``import difforge.diffusion`` stays free of Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load": "difforge.api",
    "load_exact": "difforge.api",
    "Model": "difforge.api",
    "frechet_distance": "difforge.metrics.reference_files",
    "feature_statistics": "difforge.metrics.reference_files",
    "load_reference_file": "difforge.metrics.reference_files",
    "inception_score": "difforge.metrics.protocol",
    "precision_recall": "difforge.metrics.protocol",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'difforge' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
