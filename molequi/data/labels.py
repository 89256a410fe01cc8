"""Labels carried by ``ase.Atoms``: energy (eV), forces (eV/Å) and stress (eV/Å³).

Every reader returns structures whose labels sit in a ``SinglePointCalculator``, the way ASE
itself carries them, so one converter (:func:`molequi.data.graph.atoms_to_graph`) serves every
format. This module is a leaf (it imports no reader), so readers and data sets both use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from molequi.errors import DataFormatError, InvalidStructureError


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


@dataclass(frozen=True)
class LabelKeys:
    """Where a data file keeps its labels (MACE's ``--energy_key`` convention).

    A key names an entry of the attached calculator's results, of ``atoms.info`` (energy,
    stress) or of ``atoms.arrays`` (forces); the defaults are ASE's own names. MACE-style
    extxyz files use ``REF_energy`` / ``REF_forces`` / ``REF_stress``.
    """

    energy: str = "energy"
    forces: str = "forces"
    stress: str = "stress"

    def is_default(self) -> bool:
        return self == LabelKeys()


def _lookup(atoms: Atoms, key: str, table: dict) -> Any:
    results = getattr(atoms.calc, "results", None) or {}
    if key in results:
        return results[key]
    return table.get(key)


def apply_label_keys(structures: list[Atoms], keys: LabelKeys | None) -> list[Atoms]:
    """Put the labels found under ``keys`` into each structure's ``SinglePointCalculator``
    (as ``energy``, ``forces``, ``stress``), replacing what was there; a key a structure lacks
    leaves that label absent (so :func:`require_labels` names it). Default keys: unchanged."""
    if keys is None or keys.is_default():
        return structures
    for atoms in structures:
        found = {
            "energy": _lookup(atoms, keys.energy, atoms.info),
            "forces": _lookup(atoms, keys.forces, atoms.arrays),
            "stress": _lookup(atoms, keys.stress, atoms.info),
        }
        results = {name: value for name, value in found.items() if value is not None}
        if "energy" in results:
            results["energy"] = float(results["energy"])
        for name in ("forces", "stress"):
            if name in results:
                results[name] = np.asarray(results[name], dtype=np.float64)
        atoms.calc = SinglePointCalculator(atoms, **results) if results else None
        if keys.energy != "energy":  # not read back by structure_labels' fallback
            atoms.info.pop("energy", None)
        if keys.forces != "forces" and "forces" in atoms.arrays:
            del atoms.arrays["forces"]
    return structures


def found_label_keys(atoms: Atoms) -> str:
    """The label-like keys a structure carries, for error messages."""
    results = sorted(getattr(atoms.calc, "results", None) or {})
    info = sorted(str(k) for k in atoms.info)
    arrays = sorted(k for k in atoms.arrays if k not in ("numbers", "positions"))
    parts = [f"{where}: {', '.join(names)}" for where, names in
             (("calculator results", results), ("info", info), ("arrays", arrays)) if names]
    return "; ".join(parts) if parts else "no labels at all"


def _hint(atoms: Atoms, table: dict, word: str, flag: str) -> str:
    candidates = [str(k) for k in table if word in str(k).lower()]
    return f"; pass {flag} {candidates[0]}" if candidates else ""


def require_labels(
    structures: list[Atoms], path: str | Path, energy: bool = True, forces: bool = True, keys: LabelKeys | None = None,
    purpose: str = "training",
) -> None:
    """Raise :class:`DataFormatError` naming the first structure that lacks a required label,
    the key it was looked up under and the keys the structure does carry. ``purpose`` says who
    needs the labels: ``training`` (the default) or ``evaluation`` (a label key the user named)."""
    keys = keys or LabelKeys()
    training = purpose == "training"
    for k, atoms in enumerate(structures):
        e, f = structure_labels(atoms)
        if energy and e is None:
            needs = "training needs energies" if training else f"--energy-key {keys.energy} was given"
            raise DataFormatError(
                f"{path}: structure {k} has no energy label under the key '{keys.energy}' ({needs}; "
                f"found {found_label_keys(atoms)}){_hint(atoms, atoms.info, 'energy', '--energy-key')}"
            )
        if forces and f is None:
            needs = "; to train on energies/properties only pass --forces-weight 0 or --target NAME" if training else (
                f"; --forces-key {keys.forces} was given")
            raise DataFormatError(
                f"{path}: structure {k} has no forces label under the key '{keys.forces}' (found "
                f"{found_label_keys(atoms)}){_hint(atoms, atoms.arrays, 'force', '--forces-key')}{needs}"
            )
        if f is not None and f.shape != (len(atoms), 3):
            raise DataFormatError(f"{path}: structure {k} has forces of shape {f.shape}, expected ({len(atoms)}, 3)")


def total_charge(atoms: Atoms, name: str = "structure") -> float:
    """The total charge of ``atoms``, e: ``atoms.info["charge"]`` (ASE's and tblite's key), 0 when absent.

    Raises:
        InvalidStructureError: the value is not a finite whole number.
    """
    value = atoms.info.get("charge", 0)
    try:
        charge = float(value)
    except (TypeError, ValueError):
        raise InvalidStructureError(f"{name}: info['charge'] must be a whole number of e, got {value!r}") from None
    if not np.isfinite(charge) or charge != round(charge):
        raise InvalidStructureError(f"{name}: info['charge'] must be a whole number of e, got {value!r}")
    return charge
