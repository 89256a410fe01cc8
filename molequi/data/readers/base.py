"""The reader interface: one :class:`Reader` per data format, registered in
:mod:`molequi.data.readers`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ase import Atoms


@dataclass(frozen=True)
class Reader:
    """A data format: which sources it claims and how it reads them.

    Attributes:
        name: short name, shown in error messages and ``molequi train --help``.
        description: what the format is, one phrase.
        claims: ``claims(source)`` is True when this reader handles ``source`` (a path or a data
            spec such as ``qm9:test``); readers are asked in registry order, first claim wins.
        read: ``read(source, index)`` -> labelled structures (energy eV, forces eV/Å in a
            ``SinglePointCalculator``); ``index`` is an ASE-style slice string (``":"``) that
            formats without frames may ignore.
        needs_file: the source must be an existing file (checked before ``read``).
    """

    name: str
    description: str
    claims: Callable[[str], bool]
    read: Callable[[str, str], list[Atoms]]
    needs_file: bool = True
