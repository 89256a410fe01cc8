"""Rotatable bonds of a molecule and its rotamers: every rotatable bond turned to a new angle.

A bond is rotatable when it lies in no ring and both its atoms are bonded to another atom (the
bond topology of :mod:`molequi.md.bonds`). Turning it moves the atoms on one side about the bond
axis; a turn that puts an atom of that side within half the van der Waals contact of an atom of
the other side (two atoms on top of each other: forces of ~100 eV/Å) :func:`clashes` and is drawn
again. MD at a few hundred K rarely crosses a torsion barrier in the picoseconds a learning
round runs, so rotamers are how an exploration reaches the other conformers of a molecule.

ASE's ``Atoms.set_dihedral`` does the turning; RDKit's conformer tools would need bond orders
that an xyz structure does not carry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.data import vdw_radii

from molequi.md.bonds import bonded_pairs

CLASH_FRACTION = 0.5
"""A turn clashes when two atoms come closer than this fraction of their van der Waals contact."""


@dataclass(frozen=True)
class RotatableBond:
    """A rotatable bond i–j, its dihedral a–i–j–d (atom indices) and the atoms on j's side
    (a bool mask over the molecule), which a turn moves."""

    a: int
    i: int
    j: int
    d: int
    side: np.ndarray


def side_of(bonds: np.ndarray, n: int, i: int, j: int) -> np.ndarray | None:
    """The atoms on j's side of bond i–j (a bool mask over ``n`` atoms), or None when the bond
    is in a ring (j's side reaches i without it)."""
    adjacency: dict[int, set[int]] = {k: set() for k in range(n)}
    for a, b in bonds.tolist():
        if {a, b} != {i, j}:
            adjacency[a].add(b)
            adjacency[b].add(a)
    seen, stack = {j}, [j]
    while stack:
        for other in adjacency[stack.pop()] - seen:
            seen.add(other)
            stack.append(other)
    if i in seen:
        return None
    return np.isin(np.arange(n), sorted(seen))


def rotatable_bonds(atoms: Atoms) -> list[RotatableBond]:
    """The rotatable bonds of a molecule, ordered by their atom pair (i < j)."""
    bonds = bonded_pairs(atoms)
    degree = np.bincount(bonds.ravel(), minlength=len(atoms))
    found = []
    for i, j in bonds.tolist():
        side = side_of(bonds, len(atoms), i, j)
        if side is None or degree[i] < 2 or degree[j] < 2:
            continue
        a = next(b if a == i else a for a, b in bonds.tolist() if i in (a, b) and j not in (a, b))
        d = next(b if a == j else a for a, b in bonds.tolist() if j in (a, b) and i not in (a, b))
        found.append(RotatableBond(a, i, j, d, side))
    return found


def clashes(atoms: Atoms, bond: RotatableBond) -> bool:
    """Whether an atom of ``bond``'s turned side sits within :data:`CLASH_FRACTION` of the van der
    Waals contact of an atom of the other side (the bond's own two atoms left out)."""
    turned, other = bond.side.copy(), ~bond.side
    turned[[bond.i, bond.j]] = False
    other[[bond.i, bond.j]] = False
    distance = np.linalg.norm(atoms.positions[turned][:, None] - atoms.positions[other][None], axis=-1)
    radii = vdw_radii[atoms.numbers]
    return bool((distance < CLASH_FRACTION * (radii[turned][:, None] + radii[other][None])).any())


def turned(atoms: Atoms, bond: RotatableBond, degrees: float) -> Atoms:
    """A copy of ``atoms`` with ``bond``'s dihedral increased by ``degrees`` (its side moved)."""
    copy = atoms.copy()
    copy.set_dihedral(bond.a, bond.i, bond.j, bond.d, copy.get_dihedral(bond.a, bond.i, bond.j, bond.d) + degrees,
                      mask=bond.side.astype(int))
    return copy


def random_rotamer(atoms: Atoms, rng: np.random.Generator, tries: int = 20) -> Atoms:
    """``atoms`` with each rotatable bond in turn set to a uniformly random angle; a turn that
    :func:`clashes` is drawn again, up to ``tries`` times, then that bond is left as it was.
    A molecule without rotatable bonds comes back unchanged (a copy)."""
    rotamer = Atoms(numbers=atoms.numbers, positions=atoms.positions)
    for bond in rotatable_bonds(atoms):
        for _ in range(tries):
            candidate = turned(rotamer, bond, rng.uniform(0.0, 360.0))
            if not clashes(candidate, bond):
                rotamer = candidate
                break
    return rotamer
