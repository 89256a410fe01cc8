"""Readers that turn data files into labelled ``ase.Atoms`` (energy eV, forces eV/Å).

Every reader returns structures carrying their labels in a ``SinglePointCalculator``, the
way ASE itself carries them, so one converter (:func:`molequi.data.graph.atoms_to_graph`)
serves every format.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import ase.db
import ase.io
import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator

from molequi.data.graph import structure_labels
from molequi.errors import DataFormatError

KCAL_PER_MOL_IN_EV = units.kcal / units.mol
"""1 kcal/mol expressed in eV (≈ 0.0433641)."""

RMD17_KEYS = ("nuclear_charges", "coords", "energies", "forces")


def labelled_atoms(
    numbers: np.ndarray,
    positions: np.ndarray,
    energy: float | None,
    forces: np.ndarray | None,
    cell: np.ndarray | None = None,
    pbc: bool | np.ndarray = False,
) -> Atoms:
    """An ``ase.Atoms`` with its energy (eV) and forces (eV/Å) in a ``SinglePointCalculator``."""
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
    results = {}
    if energy is not None:
        results["energy"] = float(energy)
    if forces is not None:
        results["forces"] = np.asarray(forces, dtype=np.float64)
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def read_rmd17(path: str | Path) -> list[Atoms]:
    """Read a revised-MD17 ``.npz`` (keys ``nuclear_charges``, ``coords`` Å, ``energies``
    kcal/mol, ``forces`` kcal/mol/Å) and convert the labels to eV and eV/Å."""
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


def read_ase_db(path: str | Path) -> list[Atoms]:
    """Read every row of an ASE database (``.db``) with its stored energy and forces."""
    structures = []
    with ase.db.connect(str(path)) as database:
        for row in database.select():
            atoms = row.toatoms()
            atoms.info.update(row.key_value_pairs)
            structures.append(atoms)
    return structures


def read_structures(path: str | Path, index: str = ":") -> list[Atoms]:
    """Read labelled structures from any supported file.

    * ``.npz`` in the revised-MD17 layout (recognised by its keys),
    * ``.db`` ASE databases,
    * anything ``ase.io.read`` understands (extxyz first),
    * the QM9 data spec ``qm9[:train|validation|test|all][?n=N&seed=S]`` (bare ``qm9`` is the
      train split; see :mod:`molequi.data.qm9`; ``index`` is ignored), unless a file of exactly
      that name exists.

    Raises:
        DataFormatError: the file is missing, unreadable or holds no structures.
    """
    if str(path).startswith("qm9") and not Path(path).exists():
        from molequi.data import qm9  # imported here: molequi.data.qm9 imports this module

        if qm9.is_qm9_spec(str(path)):
            return qm9.read_qm9(str(path))
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{path}: no such file")
    try:
        if path.suffix == ".npz":
            structures = read_rmd17(path)
        elif path.suffix == ".db":
            structures = read_ase_db(path)
        else:
            result = ase.io.read(str(path), index=index)
            structures = result if isinstance(result, list) else [result]
    except DataFormatError:
        raise
    except (OSError, ValueError, KeyError, IndexError, StopIteration, zipfile.BadZipFile) as error:
        raise DataFormatError(f"{path}: cannot read structures ({type(error).__name__}: {error})") from error
    if not structures:
        raise DataFormatError(f"{path}: the file holds no structures")
    return structures


def require_labels(structures: list[Atoms], path: str | Path, energy: bool = True, forces: bool = True) -> None:
    """Raise :class:`DataFormatError` naming the first structure that lacks a required label."""
    for k, atoms in enumerate(structures):
        e, f = structure_labels(atoms)
        if energy and e is None:
            raise DataFormatError(f"{path}: structure {k} has no energy label (training needs energies)")
        if forces and f is None:
            raise DataFormatError(f"{path}: structure {k} has no forces label (training on forces needs them; for energies/properties only pass --forces-weight 0 or --target NAME)")
        if f is not None and f.shape != (len(atoms), 3):
            raise DataFormatError(f"{path}: structure {k} has forces of shape {f.shape}, expected ({len(atoms)}, 3)")
