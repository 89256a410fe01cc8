"""The atomic-graph record: one structure as a ``torch_geometric.data.Data``.

A batch is one large disconnected graph (torch-geometric's design), so every consumer — the
trainer, the ASE calculator, the MD engine and the screening scorer — goes through
``ase.Atoms -> atoms_to_graph -> model``.

Fields of a graph (per structure; a batch concatenates them):

=================  ==================  ==============================================
field              shape               meaning, unit
=================  ==================  ==============================================
``pos``            [n_atoms, 3]        Cartesian positions, Å (float64)
``numbers``        [n_atoms]           atomic numbers (int64)
``cell``           [1, 3, 3]           lattice vectors as rows, Å (zeros if open)
``pbc``            [1, 3]              periodicity flags (bool)
``edge_index``     [2, n_edges]        row 0 = centre atom i, row 1 = neighbor j
``shifts``         [n_edges, 3]        r_ij = pos[j] - pos[i] + shifts, Å
``energy``         [1]                 total energy label, eV (optional)
``forces``         [n_atoms, 3]        force labels, eV/Å (optional)
``<property>``     [1, k]              graph-level labels such as ``gap`` (eV) or ``dipole`` (e·Å)
=================  ==================  ==============================================
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Data

from molequi.data.neighbors import neighbor_list
from molequi.errors import DataFormatError, InvalidStructureError

MIN_DISTANCE = 0.1
"""Two atoms closer than this (Å) are treated as a broken structure, not as physics."""


def validate_atoms(atoms: Atoms, name: str = "structure") -> None:
    """Raise :class:`InvalidStructureError` if ``atoms`` cannot be a physical structure.

    Checks: at least one atom, finite coordinates (and cell), atomic numbers in 1..118, and no
    pair of atoms closer than :data:`MIN_DISTANCE` Å (including periodic images).
    """
    if len(atoms) == 0:
        raise InvalidStructureError(f"{name}: empty structure (no atoms)")
    positions = atoms.get_positions()
    if not np.all(np.isfinite(positions)):
        bad = np.flatnonzero(~np.all(np.isfinite(positions), axis=1))
        raise InvalidStructureError(f"{name}: non-finite (NaN/inf) coordinates on atom(s) {bad[:10].tolist()}")
    numbers = atoms.get_atomic_numbers()
    if np.any(numbers < 1) or np.any(numbers > 118):
        raise InvalidStructureError(f"{name}: atomic numbers must be in 1..118, got {sorted(set(numbers.tolist()))}")
    if np.any(atoms.pbc) and not np.all(np.isfinite(atoms.cell.array)):
        raise InvalidStructureError(f"{name}: non-finite cell")
    if len(atoms) > 1:
        edge_index, shifts = neighbor_list(positions, MIN_DISTANCE, atoms.cell.array, atoms.pbc)
        if edge_index.shape[1] > 0:
            i, j = edge_index[:, 0]
            distance = np.linalg.norm(positions[j] - positions[i] + shifts[0])
            raise InvalidStructureError(
                f"{name}: atoms {i} and {j} are {distance:.3f} Å apart (closer than {MIN_DISTANCE} Å)"
            )


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


def atoms_to_graph(
    atoms: Atoms,
    cutoff: float,
    *,
    with_labels: bool = True,
    properties: Mapping[str, float | np.ndarray] | None = None,
    name: str = "structure",
    validate: bool = True,
) -> Data:
    """Convert one ``ase.Atoms`` into an atomic graph with a ``cutoff`` (Å) neighbor list.

    Args:
        atoms: the structure (positions Å).
        cutoff: neighbor-list radius, Å.
        with_labels: attach the energy/forces labels found on ``atoms`` (see
            :func:`structure_labels`); missing labels are simply left out.
        properties: extra graph-level labels, stored as ``[1, k]`` float64 tensors.
        name: how to refer to the structure in error messages.
        validate: run :func:`validate_atoms` first.
    """
    if validate:
        validate_atoms(atoms, name)
    positions = atoms.get_positions()
    cell = atoms.cell.array if np.any(atoms.pbc) else np.zeros((3, 3))
    edge_index, shifts = neighbor_list(positions, cutoff, cell, atoms.pbc)
    graph = Data(
        pos=torch.tensor(positions, dtype=torch.float64),
        numbers=torch.tensor(atoms.get_atomic_numbers(), dtype=torch.long),
        cell=torch.tensor(cell, dtype=torch.float64).unsqueeze(0),
        pbc=torch.tensor(np.asarray(atoms.pbc, dtype=bool)).unsqueeze(0),
        edge_index=torch.from_numpy(edge_index),
        shifts=torch.from_numpy(shifts),
    )
    if with_labels:
        energy, forces = structure_labels(atoms)
        if energy is not None:
            graph.energy = torch.tensor([energy], dtype=torch.float64)
        if forces is not None:
            if forces.shape != (len(atoms), 3):
                raise DataFormatError(f"{name}: forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
            graph.forces = torch.tensor(forces, dtype=torch.float64)
    for key, value in (properties or {}).items():
        graph[key] = torch.as_tensor(np.asarray(value, dtype=np.float64)).reshape(1, -1)
    return graph
