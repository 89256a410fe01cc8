"""Data layer: rMD17 units, neighbor lists vs brute force, readers, validation, E0s, splits."""

from __future__ import annotations

import itertools

import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from torch_geometric.data import Data

from molequi.data import (
    KCAL_PER_MOL_IN_EV,
    atoms_to_graph,
    compute_statistics,
    fit_e0s,
    neighbor_list,
    read_rmd17,
    read_structures,
    require_labels,
    structure_labels,
    train_validation_split,
    validate_atoms,
)
from molequi.errors import ConfigError, DataFormatError, InvalidStructureError

# --------------------------------------------------------------------------------------------
# rMD17
# --------------------------------------------------------------------------------------------


def test_kcal_per_mol_constant():
    assert KCAL_PER_MOL_IN_EV == pytest.approx(units.kcal / units.mol, rel=1e-15)
    assert KCAL_PER_MOL_IN_EV == pytest.approx(0.0433641, rel=1e-6)


@pytest.mark.parametrize("name", ["ethanol", "aspirin"])
def test_rmd17_units_against_raw_npz(rmd17_dir, name):
    path = rmd17_dir / f"rmd17_{name}_train_01.npz"
    if not path.exists():
        from conftest import rmd17_missing

        pytest.skip(rmd17_missing(path))
    raw = np.load(path)
    structures = read_rmd17(path)
    assert len(structures) == len(raw["energies"])
    kcal_mol = units.kcal / units.mol
    for k in (0, 1, len(structures) // 2, len(structures) - 1):
        atoms = structures[k]
        energy, forces = structure_labels(atoms)
        np.testing.assert_array_equal(atoms.get_atomic_numbers(), raw["nuclear_charges"])
        np.testing.assert_array_equal(atoms.get_positions(), raw["coords"][k])  # Å, unchanged
        assert energy == pytest.approx(float(raw["energies"][k]) * kcal_mol, rel=1e-12)
        np.testing.assert_allclose(forces, raw["forces"][k] * kcal_mol, rtol=1e-12, atol=0)
        assert not np.any(atoms.pbc)
    # read_structures dispatches .npz to the same reader
    via_dispatch = read_structures(path)
    assert structure_labels(via_dispatch[3])[0] == structure_labels(structures[3])[0]


def test_rmd17_rejects_foreign_npz(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, R=np.zeros((2, 3, 3)), E=np.zeros(2))
    with pytest.raises(DataFormatError, match="rMD17 keys") as info:
        read_structures(path)
    assert str(path) in str(info.value)


def test_rmd17_rejects_inconsistent_shapes(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, nuclear_charges=np.array([1, 1]), coords=np.zeros((2, 3, 3)), energies=np.zeros(2), forces=np.zeros((2, 2, 3)))
    with pytest.raises(DataFormatError, match="coords"):
        read_rmd17(path)


# --------------------------------------------------------------------------------------------
# neighbor lists vs an O(N²) reference
# --------------------------------------------------------------------------------------------


def brute_force_pairs(positions, cutoff, cell=None, pbc=False, n_images=3):
    """Set of (i, j, shift-cell tuple, distance) with |r_j - r_i + S·cell| < cutoff, i≠j or S≠0."""
    pairs = {}
    images = list(itertools.product(range(-n_images, n_images + 1), repeat=3)) if pbc else [(0, 0, 0)]
    for i, j in itertools.product(range(len(positions)), repeat=2):
        for image in images:
            if i == j and image == (0, 0, 0):
                continue
            shift = np.asarray(image, dtype=float) @ cell if pbc else np.zeros(3)
            distance = np.linalg.norm(positions[j] - positions[i] + shift)
            if distance < cutoff:
                pairs[(i, j, tuple(round(x, 6) for x in shift))] = distance
    return pairs


def molequi_pairs(positions, cutoff, cell=None, pbc=None):
    edge_index, shifts = neighbor_list(positions, cutoff, cell, pbc)
    assert edge_index.dtype == np.int64 and edge_index.shape[0] == 2
    assert shifts.shape == (edge_index.shape[1], 3)
    pairs = {}
    for (i, j), shift in zip(edge_index.T, shifts):
        key = (int(i), int(j), tuple(round(x, 6) for x in shift))
        assert key not in pairs, f"duplicate edge {key}"
        pairs[key] = np.linalg.norm(positions[j] - positions[i] + shift)
    return pairs


def assert_same_pairs(got, expected, cutoff):
    # pairs within 1e-9 Å of the cutoff may fall either way
    borderline = {k for k, d in {**got, **expected}.items() if abs(d - cutoff) < 1e-9}
    missing = set(expected) - set(got) - borderline
    extra = set(got) - set(expected) - borderline
    assert not missing and not extra, f"missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}"
    for key in set(got) & set(expected):
        assert got[key] == pytest.approx(expected[key], abs=1e-10)


def test_neighbor_list_open_boundaries():
    rng = np.random.default_rng(0)
    positions = rng.uniform(0.0, 8.0, size=(30, 3))
    for cutoff in (1.5, 3.0, 5.0):
        assert_same_pairs(molequi_pairs(positions, cutoff), brute_force_pairs(positions, cutoff), cutoff)
    # pbc all False with a cell given: still open
    assert_same_pairs(
        molequi_pairs(positions, 3.0, np.eye(3) * 4.0, np.array([False] * 3)), brute_force_pairs(positions, 3.0), 3.0
    )


@pytest.mark.parametrize(
    ("cell", "cutoff"),
    [
        (np.eye(3) * 6.0, 5.0),  # cutoff below the box, images of other atoms matter
        (np.eye(3) * 3.0, 4.0),  # cutoff above the box: atoms see their own images, several times
        (np.array([[4.0, 0.0, 0.0], [1.5, 3.5, 0.0], [0.5, -0.8, 3.8]]), 4.5),  # triclinic
    ],
)
def test_neighbor_list_periodic(cell, cutoff):
    rng = np.random.default_rng(1)
    fractional = rng.uniform(0.0, 1.0, size=(7, 3))
    positions = fractional @ cell
    expected = brute_force_pairs(positions, cutoff, cell, pbc=True)
    if cutoff > np.linalg.norm(cell, axis=1).min():
        assert any(key[0] == key[1] for key in expected), "the test should include self-images"
    assert any(key[2] != (0.0, 0.0, 0.0) for key in expected), "the test should include periodic images"
    assert_same_pairs(molequi_pairs(positions, cutoff, cell, np.array([True] * 3)), expected, cutoff)


def test_neighbor_list_periodic_positions_outside_cell():
    cell = np.eye(3) * 5.0
    rng = np.random.default_rng(2)
    positions = rng.uniform(-4.0, 9.0, size=(6, 3))  # not wrapped into the cell
    expected = brute_force_pairs(positions, 3.5, cell, pbc=True, n_images=4)
    assert_same_pairs(molequi_pairs(positions, 3.5, cell, np.array([True] * 3)), expected, 3.5)


def test_neighbor_list_refuses_mixed_pbc():
    with pytest.raises(InvalidStructureError, match="mixed periodic"):
        neighbor_list(np.zeros((2, 3)) + [[0, 0, 0], [1, 0, 0]], 2.0, np.eye(3) * 5, np.array([True, True, False]))


def test_graph_edges_match_neighbor_list(water_box):
    graph = atoms_to_graph(water_box, 4.0)
    edge_index, shifts = neighbor_list(water_box.positions, 4.0, water_box.cell.array, water_box.pbc)
    np.testing.assert_array_equal(graph.edge_index.numpy(), edge_index)
    vectors = graph.pos[graph.edge_index[1]] - graph.pos[graph.edge_index[0]] + graph.shifts
    assert float(vectors.norm(dim=1).max()) < 4.0
    assert graph.cell.shape == (1, 3, 3) and graph.pbc.shape == (1, 3)
    assert graph.pos.dtype == torch.float64 and graph.numbers.dtype == torch.long


# --------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------


def labelled(atoms: Atoms, seed: int) -> Atoms:
    rng = np.random.default_rng(seed)
    atoms = atoms.copy()
    atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal(-100, 5)), forces=rng.normal(size=(len(atoms), 3)))
    return atoms


def test_extxyz_round_trip(tmp_path, water_box):
    originals = [labelled(molecule("CH3CH2OH"), 0), labelled(molecule("H2O"), 1), labelled(water_box, 2)]
    path = tmp_path / "data.extxyz"
    ase.io.write(path, originals)
    read = read_structures(path)
    assert len(read) == 3
    for original, copy in zip(originals, read):
        np.testing.assert_array_equal(copy.numbers, original.numbers)
        np.testing.assert_allclose(copy.positions, original.positions, atol=1e-8)
        np.testing.assert_array_equal(copy.pbc, original.pbc)
        energy, forces = structure_labels(copy)
        assert energy == pytest.approx(original.get_potential_energy(), abs=1e-8)
        np.testing.assert_allclose(forces, original.get_forces(), atol=1e-8)
    np.testing.assert_allclose(read[2].cell.array, water_box.cell.array)
    require_labels(read, path)
    graph = atoms_to_graph(read[0], 5.0)
    assert graph.energy.shape == (1,) and graph.forces.shape == (9, 3)


def test_ase_db_reader(tmp_path):
    originals = [labelled(molecule("CH4"), 3), labelled(molecule("CO2"), 4)]
    path = tmp_path / "data.db"
    with ase.db.connect(str(path)) as database:
        for atoms in originals:
            database.write(atoms, tag="x")
    read = read_structures(path)
    assert len(read) == 2
    for original, copy in zip(originals, read):
        energy, forces = structure_labels(copy)
        assert energy == pytest.approx(original.get_potential_energy())
        np.testing.assert_allclose(forces, original.get_forces())
        np.testing.assert_allclose(copy.positions, original.positions)
        assert copy.info["tag"] == "x"


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DataFormatError, match="no such file"):
        read_structures(tmp_path / "absent.xyz")
    garbage = tmp_path / "garbage.extxyz"
    garbage.write_text("this is not\nan xyz file\n")
    with pytest.raises(DataFormatError, match="garbage.extxyz"):
        read_structures(garbage)


def test_labels_from_info_and_arrays():
    atoms = molecule("H2O")
    atoms.info["energy"] = -3.5
    atoms.arrays["forces"] = np.ones((3, 3))
    energy, forces = structure_labels(atoms)
    assert energy == -3.5 and forces.shape == (3, 3)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def test_validate_accepts_normal_structures(water_box):
    validate_atoms(molecule("CH3CH2OH"))
    validate_atoms(water_box)
    validate_atoms(Atoms("H", positions=[[0, 0, 0]]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_validate_rejects_non_finite_coordinates(bad):
    atoms = molecule("H2O")
    atoms.positions[1, 2] = bad
    with pytest.raises(InvalidStructureError, match=r"frame 7: non-finite.*\[1\]"):
        validate_atoms(atoms, name="frame 7")
    with pytest.raises(InvalidStructureError, match="frame 7"):
        atoms_to_graph(atoms, 5.0, name="frame 7")


def test_validate_rejects_overlapping_atoms():
    atoms = Atoms("HHO", positions=[[0, 0, 0], [0.05, 0, 0], [1.0, 0, 0]])
    with pytest.raises(InvalidStructureError, match=r"mol 3: atoms [01] and [01] are 0\.050 Å apart"):
        validate_atoms(atoms, name="mol 3")


def test_validate_rejects_overlap_across_periodic_boundary():
    atoms = Atoms("HH", positions=[[0.02, 1, 1], [4.97, 1, 1]], cell=np.eye(3) * 5.0, pbc=True)
    with pytest.raises(InvalidStructureError, match="0.050 Å apart"):
        validate_atoms(atoms, name="crystal")
    atoms.pbc = False  # open: 4.95 Å apart, fine
    validate_atoms(atoms)


def test_validate_rejects_empty_structure():
    with pytest.raises(InvalidStructureError, match="empty-one: empty structure"):
        validate_atoms(Atoms(), name="empty-one")


def test_validate_rejects_non_finite_cell():
    atoms = Atoms("H", positions=[[0, 0, 0]], cell=np.eye(3) * 5.0, pbc=True)
    atoms.cell[0, 0] = np.nan
    with pytest.raises(InvalidStructureError, match="non-finite cell"):
        validate_atoms(atoms)


def test_bad_forces_shape_is_a_data_format_error(tmp_path):
    good = labelled(molecule("H2O"), 0)
    bad = molecule("H2O")
    bad.calc = SinglePointCalculator(bad, energy=1.0, forces=np.zeros((2, 3)))
    with pytest.raises(DataFormatError, match=r"set\.xyz: structure 1 has forces of shape \(2, 3\), expected \(3, 3\)"):
        require_labels([good, bad], tmp_path / "set.xyz")
    with pytest.raises(DataFormatError, match="water: forces have shape"):
        atoms_to_graph(bad, 5.0, name="water")


def test_missing_labels_are_named():
    no_energy = molecule("H2O")
    no_energy.arrays["forces"] = np.zeros((3, 3))
    no_forces = molecule("H2O")
    no_forces.info["energy"] = 1.0
    good = labelled(molecule("H2O"), 0)
    with pytest.raises(DataFormatError, match="train.xyz: structure 1 has no energy label"):
        require_labels([good, no_energy], "train.xyz")
    with pytest.raises(DataFormatError, match="train.xyz: structure 2 has no forces label"):
        require_labels([good, good, no_forces], "train.xyz")
    require_labels([no_forces], "train.xyz", forces=False)


# --------------------------------------------------------------------------------------------
# E0s and statistics
# --------------------------------------------------------------------------------------------

E0S = {1: -13.6, 6: -1029.5, 8: -2041.3}


def synthetic_graphs(compositions, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    graphs = []
    for counts in compositions:
        numbers = torch.tensor([z for z, n in zip(E0S, counts) for _ in range(n)])
        energy = sum(E0S[z] * n for z, n in zip(E0S, counts)) + noise * rng.normal()
        graphs.append(
            Data(
                numbers=numbers,
                energy=torch.tensor([energy], dtype=torch.float64),
                edge_index=torch.zeros((2, 2 * len(numbers)), dtype=torch.long),
                num_nodes=len(numbers),
            )
        )
    return graphs


def test_fit_e0s_recovers_known_values():
    compositions = [(2, 1, 0), (4, 1, 0), (2, 0, 1), (6, 2, 1), (0, 1, 2), (4, 2, 0), (3, 3, 3)]
    e0s = fit_e0s(synthetic_graphs(compositions), [1, 6, 8])
    for z, value in E0S.items():
        assert e0s[z] == pytest.approx(value, abs=1e-8)
    noisy = fit_e0s(synthetic_graphs(compositions * 5, noise=0.01, seed=1), [1, 6, 8])
    for z, value in E0S.items():
        assert noisy[z] == pytest.approx(value, abs=0.05)


def test_fit_e0s_single_composition_removes_mean():
    graphs = synthetic_graphs([(6, 2, 1)] * 5, noise=0.1, seed=2)
    e0s = fit_e0s(graphs, [1, 6, 8])
    predicted = 6 * e0s[1] + 2 * e0s[6] + e0s[8]
    mean = np.mean([float(g.energy) for g in graphs])
    assert predicted == pytest.approx(mean, abs=1e-8)


def test_fit_e0s_needs_energies():
    graphs = synthetic_graphs([(2, 0, 1)])
    del graphs[0].energy
    with pytest.raises(DataFormatError, match="no energy label"):
        fit_e0s(graphs, [1, 6, 8])


def test_compute_statistics():
    compositions = [(2, 1, 0), (4, 1, 0), (2, 0, 1), (6, 2, 1)]
    graphs = synthetic_graphs(compositions)
    for g in graphs:
        g.forces = torch.full((g.num_nodes, 3), 0.5, dtype=torch.float64)
    stats = compute_statistics(graphs, [1, 6, 8])
    assert stats.shift == pytest.approx(0.0, abs=1e-8)
    assert stats.scale == pytest.approx(0.5)
    assert stats.avg_num_neighbors == pytest.approx(2.0)
    with pytest.raises(DataFormatError):
        compute_statistics([], [1])


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------


def test_split_is_seeded_and_disjoint():
    train, validation = train_validation_split(100, 10, seed=42)
    again_train, again_validation = train_validation_split(100, 10, seed=42)
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(validation, again_validation)
    assert len(validation) == 10 and len(train) == 90
    assert not set(train) & set(validation)
    assert set(train) | set(validation) == set(range(100))
    _, other_validation = train_validation_split(100, 10, seed=43)
    assert not np.array_equal(validation, other_validation)


def test_split_fraction_and_errors():
    train, validation = train_validation_split(50, 0.2, seed=0)
    assert len(validation) == 10 and len(train) == 40
    for n_validation in (0, 50, 60):
        with pytest.raises(ConfigError, match="impossible"):
            train_validation_split(50, n_validation, seed=0)
