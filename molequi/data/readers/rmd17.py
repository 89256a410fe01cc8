"""Revised MD17 (``.npz`` with ``nuclear_charges``, ``coords`` Å, ``energies`` kcal/mol,
``forces`` kcal/mol/Å), converted to eV and eV/Å."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms, units

from molequi.data.labels import labelled_atoms
from molequi.data.readers.base import Reader
from molequi.errors import DataFormatError

KCAL_PER_MOL_IN_EV = units.kcal / units.mol
"""1 kcal/mol expressed in eV (≈ 0.0433641)."""

RMD17_KEYS = ("nuclear_charges", "coords", "energies", "forces")


def read_rmd17(path: str | Path, index: str = ":") -> list[Atoms]:
    """Read a revised-MD17 ``.npz`` and convert the labels to eV and eV/Å (``index`` unused)."""
    path = Path(path)
    with np.load(path) as archive:
        missing = [key for key in RMD17_KEYS if key not in archive.files]
        if missing:
            raise DataFormatError(
                f"{path}: .npz lacks the rMD17 keys {missing} (found {sorted(archive.files)}); "
                "molequi reads .npz files in the revised-MD17 layout only"
            )
        numbers = np.asarray(archive["nuclear_charges"], dtype=np.int64)
        coords = np.asarray(archive["coords"], dtype=np.float64)
        energies = np.asarray(archive["energies"], dtype=np.float64) * KCAL_PER_MOL_IN_EV
        forces = np.asarray(archive["forces"], dtype=np.float64) * KCAL_PER_MOL_IN_EV
    n_frames, n_atoms = len(energies), len(numbers)
    expected = {"coords": (n_frames, n_atoms, 3), "forces": (n_frames, n_atoms, 3)}
    for key, array in (("coords", coords), ("forces", forces)):
        if array.shape != expected[key]:
            raise DataFormatError(f"{path}: '{key}' has shape {array.shape}, expected {expected[key]}")
    return [labelled_atoms(numbers, coords[k], energies[k], forces[k]) for k in range(n_frames)]


READER = Reader(
    name="rmd17",
    description="revised-MD17 .npz (kcal/mol -> eV)",
    claims=lambda source: source.endswith(".npz"),
    read=read_rmd17,
)
