"""Checks of user-given settings, shared by the data, the networks, the samplers and the module.

Each returns the value as a plain Python type or raises a one-line error
``"<key> must be <what is allowed>, got <value>"``, with ``key`` as the user writes it
(``module.lr``, ``data.batch_size``, ``sampler.corrector``); ``error`` is the ValueError subclass
to raise (``DataConfigError`` for data options). A bool is not a number here: Python counts True
as 1, a config never means it. Imports the standard library only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any


def check_int(
    key: str,
    value: object,
    minimum: int = 0,
    error: type[ValueError] = ValueError,
    maximum: int | None = None,
) -> int:
    """``value`` as an int ``>= minimum`` (and ``<= maximum`` if given; numpy integers too)."""
    allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or int(value) < minimum
        or (maximum is not None and int(value) > maximum)
    ):
        raise error(f"{key} must be an integer {allowed}, got {value!r}")
    return int(value)


def check_real(
    key: str,
    value: object,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    meaning: str = "",
    error: type[ValueError] = ValueError,
) -> float:
    """``value`` as a finite float in the interval from ``low`` to ``high`` (each end closed
    unless ``*_open``); ``meaning`` (e.g. "0: off") follows the range in the message."""
    if high < math.inf:
        allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    else:
        allowed = f"{'>' if low_open else '>='} {low:g}"
    if meaning:
        allowed += f" ({meaning})"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{key} must be a number {allowed}, got {value!r}")
    number = float(value)
    above = number > low if low_open else number >= low
    below = number < high if high_open else number <= high
    if not (math.isfinite(number) and above and below):
        raise error(f"{key} must be {allowed}, got {value!r}")
    return number


def check_flag(key: str, value: object) -> bool:
    """``value`` if it is a bool (not 0/1, not a string such as "yes")."""
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def check_optional_flag(key: str, value: object, null_means: str) -> bool | None:
    """``value`` if it is a bool or None; ``null_means`` says what None chooses."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{key} must be true, false or null ({null_means}), got {value!r}")
    return value


def check_choice(
    key: str, value: Any, allowed: Sequence[Any], error: type[ValueError] = ValueError
) -> Any:
    """``value`` if it is one of ``allowed``."""
    if isinstance(value, bool) or value not in allowed:
        raise error(f"{key} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    return value
