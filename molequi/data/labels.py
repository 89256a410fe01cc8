"""Labels carried by ``ase.Atoms``: energy (eV), forces (eV/Å) and stress (eV/Å³).

Every reader returns structures whose labels sit in a ``SinglePointCalculator``, the way ASE
itself carries them, so one converter (:func:`molequi.data.graph.atoms_to_graph`) serves every
format. This module is a leaf (it imports no reader), so readers and data sets both use it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from molequi.errors import DataFormatError


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


def structure_labels(atoms: Atoms) -> tuple[float | None, np.ndarray | None]:
    """Energy (eV) and forces [n_atoms, 3] (eV/Å) attached to ``atoms``, or None where absent.

    Labels are read from an attached calculator's stored results (as ``ase.io.read`` of extxyz or
    an ASE database gives them), falling back to ``atoms.info["energy"]`` and
    ``atoms.arrays["forces"]``.
    """
    energy, forces = None, None
    results = getattr(atoms.calc, "results", None) or {}
    if "energy" in results:
        energy = float(results["energy"])
    elif "energy" in atoms.info:
        energy = float(atoms.info["energy"])
    if "forces" in results:
        forces = np.asarray(results["forces"], dtype=np.float64)
    elif "forces" in atoms.arrays:
        forces = np.asarray(atoms.arrays["forces"], dtype=np.float64)
    return energy, forces


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
