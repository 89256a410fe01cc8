"""One set of value checks for every entry point (data → training → predict/calculator → MD).

A value a user gave (a setting, a label, a coordinate) is checked here, once, the same way
wherever it enters, and a bad one raises a :class:`~molequi.errors.MolequiError` subclass with a
one-line message naming the value, its unit and the accepted range.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

from molequi.errors import ConfigError


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_number(
    name: str,
    value: object,
    unit: str = "",
    low: float = -math.inf,
    high: float = math.inf,
    low_inclusive: bool = True,
    error: type[Exception] = ConfigError,
) -> float:
    """``value`` as a float if it is a finite real number in ``[low, high]`` (``(low, high]``
    when not ``low_inclusive``); ``high = inf`` also admits infinity. Raises ``error``."""
    unit_text = f" {unit}" if unit else ""
    if not _is_real(value):
        raise error(f"{name} must be a number{' in ' + unit if unit else ''}, got {value!r}")
    number = float(value)
    if math.isnan(number) or (math.isinf(number) and not (number > 0 and high == math.inf)):
        raise error(f"{name} must be a finite number, got {value}{unit_text}")
    too_low = number < low or (number == low and not low_inclusive)
    if too_low or number > high:
        opening = "[" if low_inclusive else "("
        low_text = "-inf" if low == -math.inf else f"{low:g}"
        high_text = "inf" if high == math.inf else f"{high:g}"
        raise error(f"{name} must be in {opening}{low_text}, {high_text}]{unit_text}, got {number:g}{unit_text}")
    return number


def check_count(name: str, value: object, low: int = 0, high: int = 2**62, error: type[Exception] = ConfigError) -> int:
    """``value`` if it is a whole number in ``[low, high]``; raises ``error`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if _is_real(value) and float(value).is_integer():
            value = int(value)
        else:
            raise error(f"{name} must be a whole number, got {value!r}")
    if not low <= int(value) <= high:
        raise error(f"{name} must be a whole number in [{low}, {high}], got {value}")
    return int(value)


def check_choice(name: str, value: object, choices: Iterable[str], error: type[Exception] = ConfigError) -> str:
    """``value`` if it is one of ``choices``; raises ``error`` naming the closest one."""
    from molequi.utils import closest_name

    choices = list(choices)
    if value not in choices:
        raise error(f"{name} must be one of {', '.join(choices)}, got {value!r}{closest_name(str(value), choices)}")
    return str(value)
