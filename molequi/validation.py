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


MAX_ABS_ENERGY_PER_ATOM = 1.0e6
"""eV/atom: no electronic-structure energy comes near (iodine, all-electron, is ~2·10⁵ eV)."""
MAX_ABS_FORCE = 1.0e5
"""eV/Å: far beyond any force of a structure worth training on."""
MAX_ABS_PROPERTY = 1.0e9
"""Any graph-level label (eV, e·Å, ...): beyond this it is a unit or parsing mistake."""


def check_labels(name: str, n_atoms: int, energy: float | None = None, forces=None,
                 properties: dict[str, object] | None = None) -> None:
    """Raise :class:`~molequi.errors.DataFormatError` for a label no model should be fitted to
    or scored against: NaN or inf anywhere, an energy beyond :data:`MAX_ABS_ENERGY_PER_ATOM` per
    atom, a force beyond :data:`MAX_ABS_FORCE`, a property beyond :data:`MAX_ABS_PROPERTY`.

    Training and evaluation both call it (through :func:`molequi.data.graph.atoms_to_graph`),
    so a label that ``train`` refuses is never averaged into an ``evaluate`` metric.
    """
    import numpy as np

    from molequi.errors import DataFormatError

    if energy is not None:
        value = float(energy)
        if not math.isfinite(value):
            raise DataFormatError(f"{name}: the 'energy' label is not finite (NaN or inf)")
        if abs(value) > MAX_ABS_ENERGY_PER_ATOM * max(n_atoms, 1):
            raise DataFormatError(f"{name}: the 'energy' label {value:.6g} eV is beyond ±{MAX_ABS_ENERGY_PER_ATOM:g} "
                                  f"eV/atom for {n_atoms} atoms: wrong units or a corrupt file")
    if forces is not None:
        array = np.asarray(forces, dtype=np.float64)
        if not np.all(np.isfinite(array)):
            atoms = np.flatnonzero(~np.isfinite(array).all(axis=-1)) if array.ndim == 2 else []
            raise DataFormatError(f"{name}: the 'forces' label is not finite (NaN or inf) on atom(s) {[int(a) for a in atoms][:10]}")
        if array.size and float(np.abs(array).max()) > MAX_ABS_FORCE:
            raise DataFormatError(f"{name}: a force component of {float(np.abs(array).max()):.6g} eV/Å is beyond "
                                  f"{MAX_ABS_FORCE:g} eV/Å: wrong units or a corrupt file")
    for key, value in (properties or {}).items():
        array = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(array)):
            raise DataFormatError(f"{name}: the '{key}' label is not finite (NaN or inf)")
        if array.size and float(np.abs(array).max()) > MAX_ABS_PROPERTY:
            raise DataFormatError(f"{name}: the '{key}' label {float(np.abs(array).max()):.6g} is beyond "
                                  f"{MAX_ABS_PROPERTY:g}: wrong units or a corrupt file")
