"""Δ-learning on GFN2-xTB: the network learns label − xTB, and every runtime adds xTB back."""

from __future__ import annotations

import dataclasses
import sys

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from conftest import make_ethanol, random_model
from molequi.cli.main import main
from molequi.data.graph import atoms_to_graph
from molequi.errors import ConfigError, MissingDependencyError
from molequi.models import build_model
from molequi.models.baseline import XTBBaseline, baseline_labels, structures_hash
from molequi.models.io import load_model, read_header, save_model

pytest.importorskip("tblite.interface", reason="tblite (GFN2-xTB) is not installed")


def xtb_model(tmp_path):
    """A tiny random model that records the xTB baseline, saved and loaded again."""
    net = random_model(l_max=1, correlation=2, num_layers=1)
    config = dataclasses.replace(net.model.config, baseline="xtb")
    model = build_model(config, torch.float64)
    model.load_state_dict(net.state_dict())
    path = save_model(model, tmp_path / "delta.molequi")
    return net, path


def test_energy_and_forces_are_xtb_plus_network(tmp_path):
    net, path = xtb_model(tmp_path)
    assert read_header(path)["config"]["baseline"] == "xtb"
    loaded = load_model(path)
    atoms = make_ethanol()
    graph = atoms_to_graph(atoms, 5.0)
    total = loaded(graph)
    alone = net(graph)
    energy, energies, forces = XTBBaseline()(atoms.numbers, atoms.positions)
    assert total["energy"].dtype == torch.float64
    assert float(total["energy"][0]) == pytest.approx(float(alone["energy"][0]) + energy, abs=1e-9)
    assert float(total["energies"].sum()) == pytest.approx(float(total["energy"][0]), abs=1e-8)
    np.testing.assert_allclose(total["forces"].numpy(), alone["forces"].numpy() + forces, atol=1e-9)
    # xTB forces are real forces: they match a finite difference of xTB's own energy
    shifted = atoms.positions.copy()
    shifted[0, 0] += 1e-4
    minus = atoms.positions.copy()
    minus[0, 0] -= 1e-4
    finite = -(XTBBaseline()(atoms.numbers, shifted)[0] - XTBBaseline()(atoms.numbers, minus)[0]) / 2e-4
    assert forces[0, 0] == pytest.approx(finite, abs=2e-3)


def test_calculator_and_predict_add_the_baseline(tmp_path):
    from molequi.calculators import MolequiCalculator
    from molequi.models.predict import predict

    net, path = xtb_model(tmp_path)
    atoms = make_ethanol()
    energy, _, forces = XTBBaseline()(atoms.numbers, atoms.positions)
    network = predict(net, atoms)
    predicted = predict(load_model(path), atoms)
    assert predicted["energy"] == pytest.approx(network["energy"] + energy, abs=1e-8)
    atoms.calc = MolequiCalculator(str(path))
    assert atoms.get_potential_energy() == pytest.approx(network["energy"] + energy, abs=1e-8)
    np.testing.assert_allclose(atoms.get_forces(), network["forces"] + forces, atol=1e-8)


def test_missing_tblite_is_one_clear_error(tmp_path, monkeypatch, capsys):
    _, path = xtb_model(tmp_path)
    monkeypatch.setitem(sys.modules, "tblite.interface", None)  # import now raises ImportError
    with pytest.raises(MissingDependencyError, match="tblite"):
        load_model(path)
    xyz = tmp_path / "mol.xyz"
    ase.io.write(xyz, make_ethanol())
    code = main(["md", str(path), str(xyz), "--steps", "2", "--dt", "0.5", "--out", str(tmp_path / "md")])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "tblite" in err


def test_periodic_structures_are_refused(tmp_path):
    from conftest import make_water_box

    _, path = xtb_model(tmp_path)
    with pytest.raises(ConfigError, match="open space"):
        load_model(path)(atoms_to_graph(make_water_box(), 5.0))


def test_labels_are_cached_by_structure_hash(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    atoms = make_ethanol()
    positions = [atoms.positions + rng.normal(0, 0.02, atoms.positions.shape) for _ in range(3)]
    numbers = [atoms.numbers] * 3
    energies, forces = baseline_labels("xtb", numbers, positions, tmp_path)
    cached = list(tmp_path.glob("xtb_*.npz"))
    assert len(cached) == 1 and structures_hash(numbers, positions)[:24] in cached[0].name

    def fail(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr("molequi.models.baseline.make_baseline", fail)
    again_e, again_f = baseline_labels("xtb", numbers, positions, tmp_path)
    np.testing.assert_array_equal(again_e, energies)
    for a, b in zip(again_f, forces):
        np.testing.assert_array_equal(a, b)
    moved = [p.copy() for p in positions]
    moved[1][0, 0] += 1e-3  # other structures: another key, so a fresh computation
    with pytest.raises(AssertionError, match="cache"):
        baseline_labels("xtb", numbers, moved, tmp_path)


def test_train_with_baseline_learns_the_difference(tmp_path, capsys):
    rng = np.random.default_rng(1)
    structures = []
    for _ in range(10):
        atoms = make_ethanol()
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        structures.append(atoms)
    data = tmp_path / "train.extxyz"
    ase.io.write(data, structures)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"channels": 4, "l_max": 0, "num_layers": 1, "correlation": 1, "radial_hidden": [8], "readout_hidden": 4},
        "batch_size": 4, "validation": 2, "progress": False,
    }))
    out = tmp_path / "run"
    code = main(["train", "--data", str(data), "--out", str(out), "--config", str(config), "--max-epochs", "1",
                 "--device", "cpu", "--dtype", "float64", "--baseline", "xtb"])
    assert code == 0
    assert len(list((out / "baseline_cache").glob("xtb_*.npz"))) == 1
    model = load_model(out / "model.molequi")
    assert model.model.config.baseline == "xtb" and model.baseline is not None
    # The network part alone predicts the labels minus xTB; the loaded model the labels themselves.
    net = build_model(model.model.config, torch.float64)
    net.load_state_dict(model.state_dict())
    graph = atoms_to_graph(structures[0], 5.0)
    xtb_energy = XTBBaseline()(structures[0].numbers, structures[0].positions)[0]
    assert float(model(graph)["energy"][0]) == pytest.approx(float(net(graph)["energy"][0]) + xtb_energy, abs=1e-8)
    # the per-element reference energies were fitted to label − xTB (≈ a few eV per atom off the totals)
    residual_mean = np.mean([s.get_potential_energy() - XTBBaseline()(s.numbers, s.positions)[0] for s in structures])
    reference = float(net(graph)["energy_reference"][0])
    assert abs(reference - residual_mean) < abs(reference - structures[0].get_potential_energy())


def test_export_refuses_a_baseline_model(tmp_path, capsys):
    _, path = xtb_model(tmp_path)
    code = main(["export", str(path), "--out", str(tmp_path / "model.pt"), "--device", "cpu"])
    assert code == 2 and "baseline" in capsys.readouterr().err
    assert not (tmp_path / "model.pt").exists()
