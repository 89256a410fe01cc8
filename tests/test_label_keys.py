"""Label keys (MACE's REF_energy / REF_forces convention) and the --e0s choices."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from molequi.data import LabelKeys, atoms_to_graph, compute_statistics, read_structures, require_labels, species_of
from molequi.data.statistics import read_e0s_file
from molequi.errors import ConfigError, DataFormatError
from molequi.training.config import TrainingConfig

MACE_KEYS = LabelKeys("REF_energy", "REF_forces", "REF_stress")


def _frames(n: int = 4) -> list:
    frames = []
    rng = np.random.default_rng(0)
    for k in range(n):
        atoms = molecule("H2O") if k % 2 else molecule("CH4")
        atoms.positions += rng.normal(scale=0.02, size=atoms.positions.shape)
        atoms.info["REF_energy"] = -10.0 * len(atoms) + 0.1 * k
        atoms.arrays["REF_forces"] = rng.normal(size=(len(atoms), 3))
        frames.append(atoms)
    return frames


@pytest.fixture
def mace_style(tmp_path):
    path = tmp_path / "mace.extxyz"
    ase.io.write(path, _frames(), format="extxyz")
    return path


def test_default_keys_name_the_keys_found(mace_style):
    structures = read_structures(mace_style)
    with pytest.raises(DataFormatError) as info:
        require_labels(structures, mace_style)
    message = str(info.value)
    assert "structure 0 has no energy label under the key 'energy'" in message
    assert "REF_energy" in message and "REF_forces" in message and "--energy-key REF_energy" in message


def test_ref_keys_read_energy_and_forces(mace_style):
    raw = ase.io.read(mace_style, ":")
    structures = read_structures(mace_style, keys=MACE_KEYS)
    require_labels(structures, mace_style, keys=MACE_KEYS)
    for atoms, original in zip(structures, raw):
        graph = atoms_to_graph(atoms, 5.0)
        assert float(graph.energy) == pytest.approx(original.info["REF_energy"], abs=1e-12)
        np.testing.assert_allclose(graph.forces.numpy(), original.arrays["REF_forces"], atol=1e-12)


def test_ref_keys_win_over_the_calculator(tmp_path):
    atoms = molecule("H2O")
    atoms.info["REF_energy"] = -7.0
    atoms.arrays["REF_forces"] = np.ones((3, 3))
    atoms.calc = SinglePointCalculator(atoms, energy=99.0, forces=np.zeros((3, 3)))
    path = tmp_path / "both.extxyz"
    ase.io.write(path, atoms, format="extxyz")
    (read,) = read_structures(path, keys=MACE_KEYS)
    assert read.get_potential_energy() == -7.0
    np.testing.assert_array_equal(read.get_forces(), np.ones((3, 3)))
    (default,) = read_structures(path)
    assert default.get_potential_energy() == 99.0


def test_missing_forces_key_is_named(mace_style):
    keys = LabelKeys("REF_energy", "DFT_forces")
    structures = read_structures(mace_style, keys=keys)
    with pytest.raises(DataFormatError, match=r"no forces label under the key 'DFT_forces'.*--forces-key REF_forces"):
        require_labels(structures, mace_style, keys=keys)


def _graphs(frames):
    return [atoms_to_graph(a, 5.0) for a in read_structures_list(frames)]


def read_structures_list(frames):
    for atoms in frames:
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.info["REF_energy"], forces=atoms.arrays["REF_forces"])
    return frames


def test_e0s_fit_average_and_file(tmp_path):
    graphs = _graphs(_frames(6))
    species = species_of(graphs)
    fit = compute_statistics(graphs, species, "fit")
    average = compute_statistics(graphs, species, "average")
    assert fit == average  # MACE's "average" is the same least-squares fit
    given = {"H": -1.5, "6": -20.0, "O": -30.0}
    path = tmp_path / "e0s.json"
    path.write_text(json.dumps(given))
    from_file = compute_statistics(graphs, species, str(path))
    assert from_file.e0s == {1: -1.5, 6: -20.0, 8: -30.0}
    # the shift is what the given E0s leave: mean of (E - Σ E0) / N
    residual = [(float(g.energy) - sum(from_file.e0s[int(z)] for z in g.numbers)) / g.num_nodes for g in graphs]
    assert from_file.shift == pytest.approx(np.mean(residual), rel=1e-12)
    assert read_e0s_file(path) == {1: -1.5, 6: -20.0, 8: -30.0}


def test_e0s_file_errors(tmp_path):
    graphs = _graphs(_frames(2))
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"H": -1.0, "C": -2.0}))
    with pytest.raises(DataFormatError, match="no reference energy for O"):
        compute_statistics(graphs, species_of(graphs), str(path))
    path.write_text(json.dumps({"Xx": -1.0}))
    with pytest.raises(DataFormatError, match="'Xx' is neither"):
        read_e0s_file(path)
    with pytest.raises(DataFormatError, match="no such file"):
        read_e0s_file(tmp_path / "absent.json")
    with pytest.raises(ConfigError, match="e0s must be"):
        TrainingConfig(e0s="mean")


def test_cli_train_and_evaluate_with_ref_keys(mace_style, tmp_path, capsys):
    from molequi.cli.main import main

    out = tmp_path / "run"
    base = ["train", "--data", str(mace_style), "--out", str(out), "--max-epochs", "1", "--validation", "1",
            "--channels", "4", "--no-progress", "--device", "cpu"]
    assert main(base) == 2
    assert "REF_energy" in capsys.readouterr().err
    assert main(base + ["--energy-key", "REF_energy", "--forces-key", "REF_forces", "--e0s", "average"]) == 0
    assert main(["evaluate", str(out / "model.molequi"), str(mace_style), "--device", "cpu"]) == 2
    assert "--energy-key" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["evaluate", str(out / "model.molequi"), str(mace_style), "--device", "cpu",
                 "--energy-key", "REF_energy", "--forces-key", "REF_forces"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_structures"] == 4 and np.isfinite(metrics["forces_mae_meV_per_A"])
