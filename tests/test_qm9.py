"""QM9 loader: size, splits, units, cache, subsampling and the ``qm9:...`` data spec.

Skipped when qm9pack (``pip install 'molequi[qm9]'``) is not installed. The data are parsed
once per session into a temporary cache folder, so the user's cache is never touched.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest
from ase import units

from molequi.data.graph import atoms_to_graph, structure_labels
from molequi.errors import DataFormatError

if importlib.util.find_spec("qm9pack") is None:
    pytest.skip("qm9pack not installed (pip install 'molequi[qm9]')", allow_module_level=True)

from molequi.data import qm9  # noqa: E402
from molequi.data.readers import read_structures  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache folder, filled by one timed parse; ``MOLEQUI_CACHE`` points at its parent."""
    root = tmp_path_factory.mktemp("molequi_cache")
    directory = root / "qm9"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOLEQUI_CACHE", str(root))
        start = time.perf_counter()
        arrays = qm9.load_qm9_arrays(directory)
        parse_seconds = time.perf_counter() - start
        yield {"dir": directory, "arrays": arrays, "parse_s": parse_seconds}


@pytest.fixture(scope="module")
def arrays(cache):
    return cache["arrays"]


def test_all_holds_130831_molecules(cache):
    arrays = cache["arrays"]
    assert len(arrays) == qm9.QM9_SIZE == 130_831
    assert np.all(np.diff(arrays.index) > 0)  # ordered by QM9 index, unique
    assert arrays.index[0] == 1 and arrays.index[-1] == 133_885
    assert arrays.offsets[-1] == len(arrays.numbers) == len(arrays.positions)
    assert set(np.unique(arrays.numbers).tolist()) == {1, 6, 7, 8, 9}
    assert len(qm9.qm9_split_rows("all")) == 130_831
    # building all 130,831 ase.Atoms takes ~30 s here: check the "all" loader on a subsample
    assert len(qm9.load_qm9("all", n=7, cache_dir=cache["dir"])) == 7


def test_split_sizes_disjoint_and_covering():
    rows = {split: qm9.qm9_split_rows(split, seed=0) for split in ("train", "validation", "test")}
    assert {k: len(v) for k, v in rows.items()} == {"train": 110_000, "validation": 10_000, "test": 10_831}
    union = np.concatenate(list(rows.values()))
    assert len(np.unique(union)) == qm9.QM9_SIZE  # disjoint and covering
    assert np.array_equal(np.sort(union), np.arange(qm9.QM9_SIZE))


def test_split_is_a_pure_function_of_the_seed():
    assert np.array_equal(qm9.qm9_split_rows("test", seed=3), qm9.qm9_split_rows("test", seed=3))
    assert not np.array_equal(qm9.qm9_split_rows("test", seed=0), qm9.qm9_split_rows("test", seed=1))


def test_subsample_is_a_nested_subset_of_its_split(cache):
    test_rows = set(qm9.qm9_split_rows("test").tolist())
    small, large = qm9.qm9_split_rows("test", n=100), qm9.qm9_split_rows("test", n=1000)
    assert set(small.tolist()) <= set(large.tolist()) <= test_rows
    molecules = qm9.load_qm9("test", n=20, cache_dir=cache["dir"])
    ids = {int(cache["arrays"].index[k]) for k in test_rows}
    assert len(molecules) == 20 and {a.info["index"] for a in molecules} <= ids
    again = qm9.load_qm9("test", n=20, cache_dir=cache["dir"])
    assert [a.info["index"] for a in again] == [a.info["index"] for a in molecules]


def test_methane_labels_in_molequi_units(arrays):
    methane = arrays.atoms(0)
    assert methane.info["index"] == 1 and methane.info["smiles"] == "C"
    assert methane.get_chemical_formula() == "CH4"
    energy, forces = structure_labels(methane)
    assert forces is None  # QM9 geometries are minima: no force labels
    assert energy == pytest.approx(-40.47893 * units.Hartree, abs=1e-9)
    assert energy == pytest.approx(-1101.4878, abs=1e-3)
    assert methane.info["U0"] == energy
    assert methane.info["U"] == pytest.approx(-40.476062 * units.Hartree)
    assert methane.info["H"] == pytest.approx(-40.475117 * units.Hartree)
    assert methane.info["G"] == pytest.approx(-40.498597 * units.Hartree)
    assert methane.info["homo"] == pytest.approx(-0.3877 * units.Hartree)
    assert methane.info["lumo"] == pytest.approx(0.1171 * units.Hartree)
    assert methane.info["gap"] == pytest.approx(13.7363, abs=1e-3)  # 0.5048 Ha in eV
    assert methane.info["zpve"] == pytest.approx(0.044749 * units.Hartree)
    assert methane.info["dipole_norm"] == 0.0
    assert methane.info["alpha"] == pytest.approx(13.21)
    assert methane.info["cv"] == pytest.approx(6.469)
    assert np.linalg.norm(methane.positions[1] - methane.positions[0]) == pytest.approx(1.0919, abs=1e-3)  # C–H, Å
    water = arrays.atoms(int(np.flatnonzero(arrays.index == 3)[0]))
    assert water.info["smiles"] == "O"
    assert water.info["dipole_norm"] == pytest.approx(1.8511 * qm9.DEBYE_IN_E_ANGSTROM)


def test_gap_is_lumo_minus_homo(arrays):
    p = arrays.properties
    assert np.allclose(p["gap"], p["lumo"] - p["homo"], atol=2e-3 * units.Hartree)
    assert 0 < p["gap"].min() and p["gap"].max() < 25  # eV


def test_cache_gives_identical_data_faster(cache):
    path = qm9.cache_file(cache["dir"])
    assert path.is_file() and qm9.qm9pack_version() in path.name
    assert not list(cache["dir"].glob("*.tmp"))  # written atomically, nothing left over
    start = time.perf_counter()
    cached = qm9.load_qm9_arrays(cache["dir"])
    load_seconds = time.perf_counter() - start
    parsed = cache["arrays"]
    for field in ("index", "smiles", "offsets", "numbers", "positions"):
        assert np.array_equal(getattr(cached, field), getattr(parsed, field)), field
    for name in qm9.PROPERTY_UNITS:
        assert np.array_equal(cached.properties[name], parsed.properties[name]), name
    assert load_seconds < cache["parse_s"] / 2, (load_seconds, cache["parse_s"])


def test_unreadable_cache_is_ignored(tmp_path):
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable QM9 cache"):
        assert qm9._read_cache(broken) is None


def test_data_spec_through_read_structures(cache):
    molecules = read_structures("qm9:test?n=3")
    direct = qm9.load_qm9("test", n=3, cache_dir=cache["dir"])
    assert [a.info["index"] for a in molecules] == [a.info["index"] for a in direct]
    assert molecules[0].get_potential_energy() == direct[0].get_potential_energy()
    assert [a.info["index"] for a in read_structures("qm9?n=2")] == [
        a.info["index"] for a in qm9.load_qm9("train", n=2, cache_dir=cache["dir"])
    ]
    seeded = read_structures("qm9:val?n=2&seed=5")
    assert [a.info["index"] for a in seeded] == [
        a.info["index"] for a in qm9.load_qm9("validation", n=2, seed=5, cache_dir=cache["dir"])
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("qm9", {"split": "train", "n": None, "seed": 0}),
        ("qm9:all", {"split": "all", "n": None, "seed": 0}),
        ("qm9:test?n=5000", {"split": "test", "n": 5000, "seed": 0}),
        ("qm9:validation?seed=2&n=10", {"split": "validation", "n": 10, "seed": 2}),
    ],
)
def test_parse_spec(spec, expected):
    assert qm9.is_qm9_spec(spec)
    assert qm9.parse_qm9_spec(spec) == expected


@pytest.mark.parametrize("spec", ["qm9:tset", "qm9:test?n=abc", "qm9:test?m=3", "qm9:test?n=20000", "qm9:test?n=0"])
def test_bad_spec_is_a_data_format_error(spec):
    with pytest.raises(DataFormatError):
        read_structures(spec)


def test_qm9_named_file_is_not_a_spec(tmp_path):
    assert not qm9.is_qm9_spec("qm9.xyz") and not qm9.is_qm9_spec("qm9_train.extxyz")
    with pytest.raises(DataFormatError, match="no such file"):
        read_structures("qm9.xyz")


def test_property_labels_become_graph_labels(arrays):
    atoms = arrays.atoms(10)
    graph = atoms_to_graph(atoms, 5.0, properties={"gap": atoms.info["gap"], "U0": atoms.info["U0"]})
    assert graph.gap.shape == (1, 1) and float(graph.gap) == pytest.approx(atoms.info["gap"])
    assert float(graph.energy) == pytest.approx(atoms.info["U0"])
    assert not hasattr(graph, "forces") or graph.forces is None


def test_qm9_smiles(cache):
    pool = qm9.qm9_smiles(cache["dir"])
    assert next(pool) == (1, "C")
    assert next(pool) == (2, "N")
    assert sum(1 for _ in pool) == qm9.QM9_SIZE - 2


def test_missing_qm9pack_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "qm9pack" else real(name, *a))
    with pytest.raises(qm9.QM9NotInstalledError, match=r"QM9 needs the qm9pack package: pip install 'molequi\[qm9\]'"):
        qm9.load_qm9("test", n=1)
    assert issubclass(qm9.QM9NotInstalledError, DataFormatError)
