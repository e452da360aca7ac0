"""Metrics: FID/KID and class coverage for images (``images``), their feature networks
(``features``), exact distances for Gaussian mixtures (``mixture``).

Submodules are imported on first use (``from difforge.metrics import image_metrics`` works), so
importing ``difforge.metrics.mixture`` does not pull in torchmetrics.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "image_metrics": "images",
    "reference_stats": "images",
    "fid_kid": "images",
    "extract_features": "images",
    "ReferenceStats": "images",
    "FeatureMetrics": "images",
    "class_coverage": "images",
    "digits_classifier": "features",
    "inception": "features",
    "feature_network_for": "features",
    "load_classifier": "features",
    "SmallClassifier": "features",
    "mixture_metrics": "mixture",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'difforge.metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(f"difforge.metrics.{module}"), name)
