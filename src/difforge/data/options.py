"""The data errors and the checks of data options: the standard library only (no torch, no Lightning), so that
what needs a data option without the data (the exact model's mixture, :mod:`difforge.data.mixtures`)
loads fast."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from difforge import checks
from difforge.errors import DataError


# --------------------------------------------------------------------------------------- errors
class DataConfigError(DataError, ValueError):
    """An invalid data option (the message names the ``data.<key>`` to change)."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """Dataset files are missing; the message says which, where they go and how to get them."""


class DatasetDownloadError(DataError, RuntimeError):
    """A requested download failed (typically: no internet)."""


class ImageReadError(DataError, OSError):
    """An image file could not be read or decoded; the message names the file."""


# ----------------------------------------------------------------------------------- validation
def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``, else a :class:`DataConfigError` naming ``data.name``."""
    return checks.check_int(f"data.{name}", value, minimum, DataConfigError)


def check_fraction(name: str, value: Any) -> float:
    return checks.check_real(f"data.{name}", value, 0, 1, high_open=True, error=DataConfigError)


def check_fractions(val_fraction: Any, test_fraction: Any) -> tuple[float, float]:
    val, test = (
        check_fraction("val_fraction", val_fraction),
        check_fraction("test_fraction", test_fraction),
    )
    if val + test >= 1:
        raise DataConfigError(
            f"data.val_fraction + data.test_fraction must be < 1 (the rest is the train split), "
            f"got {val} + {test}"
        )
    return val, test


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    return checks.check_choice(f"data.{name}", value, choices, DataConfigError)


def check_num_classes(value: Any, native: int, dataset: str) -> int:
    """Labelled data accept their number of classes, or 0 to drop the labels (``y`` all zero);
    unlabelled data (``native`` 0) accept 0 only."""
    if value not in (native, 0) or isinstance(value, bool):
        if not native:
            raise DataConfigError(
                f"{dataset} is unlabelled: data.num_classes must be 0, got {value!r}"
            )
        raise DataConfigError(
            f"{dataset} has {native} classes: data.num_classes must be {native} "
            f"(class labels) or 0 (unlabelled), got {value!r}"
        )
    return int(value)
