"""Metrics: FID/KID and class coverage for images (``images``), their feature networks
(``features``, ``dinov2``), exact distances for Gaussian mixtures (``mixture``), published
reference files and the Frechet distance (``reference_files``), and the paper protocol with the
Inception Score and precision/recall (``protocol``).

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
    "frechet_distance": "reference_files",
    "feature_statistics": "reference_files",
    "load_reference_file": "reference_files",
    "ReferenceFile": "reference_files",
    "inception_score": "protocol",
    "precision_recall": "protocol",
    "evaluate_protocol": "protocol",
    "load_dinov2": "dinov2",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'difforge.metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(f"difforge.metrics.{module}"), name)
