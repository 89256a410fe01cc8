"""ASE databases (``.db``): every row with its stored energy, forces and key-value pairs."""

from __future__ import annotations

from pathlib import Path

import ase.db
from ase import Atoms

from molequi.data.readers.base import Reader


def read_ase_db(path: str | Path, index: str = ":") -> list[Atoms]:
    """Read every row of an ASE database with its stored labels; key-value pairs go to
    ``atoms.info`` (``index`` unused)."""
    structures = []
    with ase.db.connect(str(path)) as database:
        for row in database.select():
            atoms = row.toatoms()
            atoms.info.update(row.key_value_pairs)
            structures.append(atoms)
    return structures


READER = Reader(
    name="ase-db",
    description="ASE database (.db)",
    claims=lambda source: source.endswith(".db"),
    read=read_ase_db,
)
