"""Anything ``ase.io.read`` understands (extxyz first): the fallback reader.

extxyz frames keep their labels where ASE puts them: ``energy``/``forces``/``stress`` in a
``SinglePointCalculator``, other keys (``REF_energy``, ``REF_forces`` ...) in ``atoms.info`` /
``atoms.arrays``, from where :func:`molequi.data.labels.apply_label_keys` picks them.
"""

from __future__ import annotations

from pathlib import Path

import ase.io
from ase import Atoms

from molequi.data.readers.base import Reader


def read_ase(path: str | Path, index: str = ":") -> list[Atoms]:
    """Frames ``index`` (ASE slice syntax) of any file ``ase.io.read`` understands."""
    result = ase.io.read(str(path), index=index)
    return result if isinstance(result, list) else [result]


READER = Reader(
    name="ase",
    description="any ase.io format (extxyz, xyz, traj, ...)",
    claims=lambda source: True,
    read=read_ase,
)
