"""Rotatable bonds and rotamers (molequi.md.torsions): the right bonds turn, bond lengths hold,
no two atoms end on top of each other, and a ring or a rigid molecule is left alone."""

from __future__ import annotations

import numpy as np
from ase.build import molecule

from molequi.md.bonds import bonded_pairs
from molequi.md.torsions import clashes, random_rotamer, rotatable_bonds, turned


def bond_lengths(atoms, pairs: np.ndarray) -> np.ndarray:
    return np.linalg.norm(atoms.positions[pairs[:, 0]] - atoms.positions[pairs[:, 1]], axis=1)


def test_ethanol_has_two_rotatable_bonds_and_benzene_none():
    ethanol = molecule("CH3CH2OH")
    found = {frozenset(ethanol.get_chemical_symbols()[k] for k in (b.i, b.j)) for b in rotatable_bonds(ethanol)}
    assert found == {frozenset({"C"}), frozenset({"C", "O"})}
    benzene = molecule("C6H6")
    assert rotatable_bonds(benzene) == []  # ring bonds, and C–H ends in a lone H
    assert np.allclose(random_rotamer(benzene, np.random.default_rng(0)).positions, benzene.positions)


def test_random_rotamers_keep_bonds_and_turn_dihedrals():
    butane = molecule("trans-butane")
    pairs = bonded_pairs(butane)
    rng = np.random.default_rng(1)
    bonds = rotatable_bonds(butane)
    dihedrals = []
    for _ in range(6):
        rotamer = random_rotamer(butane, rng)
        np.testing.assert_allclose(bond_lengths(rotamer, pairs), bond_lengths(butane, pairs), atol=1e-8)
        np.testing.assert_array_equal(rotamer.numbers, butane.numbers)
        distances = rotamer.get_all_distances() + 9 * np.eye(len(rotamer))
        assert distances.min() > 0.9  # no two atoms on top of each other (C–H 1.09 Å is the closest pair)
        dihedrals.append([rotamer.get_dihedral(b.a, b.i, b.j, b.d) for b in bonds])
    assert np.ptp(np.array(dihedrals), axis=0).min() > 30.0  # every bond's angle varies between rotamers


def test_a_turn_that_puts_atoms_on_top_of_each_other_clashes():
    ethanol = molecule("CH3CH2OH")
    bond = next(b for b in rotatable_bonds(ethanol) if {ethanol.numbers[b.i], ethanol.numbers[b.j]} == {6, 8})
    assert not clashes(ethanol, bond)
    assert not clashes(turned(ethanol, bond, 120.0), bond)
    hydroxyl_h = next(k for k in np.flatnonzero(bond.side) if k != bond.j)
    methyl = next(k for k in range(len(ethanol)) if not bond.side[k] and k != bond.i and ethanol.numbers[k] == 6)
    on_top = ethanol.copy()
    on_top.positions[hydroxyl_h] = on_top.positions[methyl] + 0.3
    assert clashes(on_top, bond)
