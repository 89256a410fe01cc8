"""Shallow ensembles (``ensemble_heads`` K ≥ 2): K readouts on one body, mean ± std from one model."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from scipy.spatial.transform import Rotation

from molequi.calculators import MolequiCalculator
from molequi.models import ModelConfig, build_model, load_model, predict, save_model
from molequi.nn import forces as forces_module


def ensemble(k: int = 4, properties=None, seed: int = 0, dtype=torch.float64):
    config = ModelConfig(species=[1, 6, 8], channels=8, l_max=1, num_layers=2, correlation=2, radial_hidden=[16],
                         readout_hidden=8, avg_num_neighbors=6.0, ensemble_heads=k, properties=properties or {},
                         e0s={"1": -13.6, "6": -1029.0, "8": -2041.0})
    torch.manual_seed(seed)
    return build_model(config, dtype).eval()


def ethanol(seed: int = 1):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=seed)
    return atoms


def test_heads_give_mean_and_spread_and_survive_a_file(tmp_path):
    model = ensemble(4, properties={"gap": "intensive", "mu": "dipole"})
    out = predict(model, ethanol())
    assert out["energy_members"].shape == (4,) and out["forces_members"].shape == (4, 9, 3)
    assert out["energy"] == pytest.approx(out["energy_members"].mean(), abs=1e-9)
    np.testing.assert_allclose(out["forces"], out["forces_members"].mean(0), atol=1e-12)
    assert out["energy_std"] == pytest.approx(out["energy_members"].std(ddof=1)) and out["energy_std"] > 0
    assert out["forces_std"].shape == (9,) and np.all(out["forces_std"] > 0)
    assert out["gap_std"].shape == (1,) and out["gap_std"][0] > 0 and out["mu_std"].shape == (3,)
    path = save_model(model, tmp_path / "ensemble.molequi")
    again = predict(load_model(path), ethanol())
    assert again["energy"] == out["energy"]
    np.testing.assert_array_equal(again["forces_std"], out["forces_std"])
    assert load_model(path).model.config.ensemble_heads == 4


def test_each_head_is_a_conservative_potential():
    """Head k's forces are −∂E_k/∂r (finite differences of its own energy)."""
    model = ensemble(3)
    atoms = ethanol()
    out = predict(model, atoms)
    step = 1e-5
    for atom, axis in ((0, 0), (4, 2)):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += step
        minus.positions[atom, axis] -= step
        numeric = -(predict(model, plus)["energy_members"] - predict(model, minus)["energy_members"]) / (2 * step)
        np.testing.assert_allclose(out["forces_members"][:, atom, axis], numeric, atol=1e-6)


def test_mean_forces_and_spread_are_equivariant():
    model = ensemble(4)
    atoms = ethanol()
    rotation = Rotation.random(random_state=3).as_matrix()
    turned = atoms.copy()
    turned.positions = atoms.positions @ rotation.T + np.array([1.0, -2.0, 0.5])
    a, b = predict(model, atoms), predict(model, turned)
    np.testing.assert_allclose(b["forces"], a["forces"] @ rotation.T, atol=1e-9)
    np.testing.assert_allclose(b["forces_std"], a["forces_std"], atol=1e-9)
    assert b["energy_std"] == pytest.approx(a["energy_std"], abs=1e-9)


def test_calculator_md_and_committee_of_ensembles():
    model = ensemble(3)
    atoms = ethanol()
    atoms.calc = MolequiCalculator(model)
    atoms.get_forces()
    assert atoms.calc.results["energy_std"] > 0 and np.all(atoms.calc.results["forces_std"] > 0)
    pair = MolequiCalculator([model, ensemble(3, seed=1)])
    pair.get_forces(atoms)
    members = np.concatenate([predict(m, atoms)["energy_members"] for m in (model, ensemble(3, seed=1))])
    assert pair.results["energy_std"] == pytest.approx(members.std(ddof=1))  # 6 members
    together = predict([model, ensemble(3, seed=1)], atoms)  # predict takes a committee too
    assert together["energy"] == pytest.approx(members.mean()) and together["energy_std"] == pytest.approx(members.std(ddof=1))
    np.testing.assert_allclose(together["forces_std"], pair.results["forces_std"], atol=1e-10)


def test_batched_member_gradients_match_the_loop(monkeypatch):
    model = ensemble(4)
    monkeypatch.setattr(forces_module, "MEMBER_GRADIENTS", "loop")
    loop = predict(model, [ethanol(1), ethanol(2)])
    monkeypatch.setattr(forces_module, "MEMBER_GRADIENTS", "batched")
    try:
        batched = predict(model, [ethanol(1), ethanol(2)])
    except RuntimeError as error:  # vmap over a backward the ops do not support
        pytest.skip(f"is_grads_batched unsupported here: {error}")
    for a, b in zip(loop, batched):
        np.testing.assert_allclose(a["forces_members"], b["forces_members"], atol=1e-10)


@pytest.mark.parametrize("loss", ["heads", "nll", "heads+bootstrap+nll"])
def test_training_an_ensemble_end_to_end(tmp_path, loss):
    from molequi.training import load_config, train

    rng = np.random.default_rng(0)
    structures = []
    for _ in range(16):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        structures.append(atoms)
    ase.io.write(tmp_path / "train.extxyz", structures)
    config = load_config(None, {"model": {"channels": 8, "l_max": 1, "num_layers": 1, "correlation": 2, "radial_hidden": [16],
                                          "readout_hidden": 8, "ensemble_heads": 3},
                                "batch_size": 4, "validation": 4, "progress": False, "device": "cpu", "dtype": "float64",
                                "max_epochs": 3, "ensemble_loss": loss.split("+")[0],
                                "ensemble_bootstrap": "bootstrap" in loss,
                                "ensemble_nll_weight": 0.5 if loss.endswith("+nll") else 0.0})
    ase.io.write(tmp_path / "test.extxyz", structures[:6])
    result = train(config, tmp_path / "train.extxyz", tmp_path / "run", test_data=tmp_path / "test.extxyz",
                   log=lambda message: None)
    assert np.isfinite(result.history[-1]["val_forces_mae_meV_per_A"])
    model = load_model(tmp_path / "run" / "model.molequi")
    assert model.model.config.ensemble_heads == 3
    out = predict(model, structures[0])
    assert out["energy_std"] > 0 and np.all(out["forces_std"] > 0)
    if loss == "heads":  # evaluate takes one ensemble model like a committee
        import json

        from molequi.cli.main import main

        assert main(["evaluate", str(tmp_path / "run" / "model.molequi"), str(tmp_path / "train.extxyz"),
                     "--out", str(tmp_path / "m.json")]) == 0
        metrics = json.loads((tmp_path / "m.json").read_text())
        assert metrics["n_members"] == 3 and "forces_std_spearman" in metrics and "miscalibration_area" in metrics
        assert "forces_mae_meV_per_A" in metrics
        # train --test-data reports the same spread metrics as evaluate on the same structures
        assert main(["evaluate", str(tmp_path / "run" / "model.molequi"), str(tmp_path / "test.extxyz"),
                     "--out", str(tmp_path / "t.json")]) == 0
        evaluated = json.loads((tmp_path / "t.json").read_text())
        tested = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
        for key in ("forces_std_spearman", "forces_rmse_over_std", "miscalibration_area"):
            assert tested[key] == pytest.approx(evaluated[key], rel=1e-9), key


def test_bootstrap_weights_are_per_head_fixed_per_structure_and_weigh_the_loss():
    """Each head reweighs the structures with its own Exp(1) weights, the same at every call (a
    function of the coordinates); weights of 1 give the plain per-head loss; the force NLL term
    is the Gaussian NLL of the labels under the heads' mean and variance."""
    from types import SimpleNamespace

    from molequi.training.metrics import bootstrap_weights, forces_nll_term, loss_terms

    rng = np.random.default_rng(0)
    n_graphs, atoms = 400, 3
    pos = torch.tensor(rng.normal(size=(n_graphs * atoms, 3)))
    batch = SimpleNamespace(pos=pos, batch=torch.arange(n_graphs).repeat_interleave(atoms), num_graphs=n_graphs)
    weights = bootstrap_weights(batch, 4, seed=0)
    assert weights.shape == (4, n_graphs) and torch.all(weights > 0)
    assert abs(float(weights.mean()) - 1.0) < 0.1 and abs(float(weights.std()) - 1.0) < 0.15  # Exp(1)
    assert torch.equal(weights, bootstrap_weights(batch, 4, seed=0))
    assert not torch.allclose(weights[0], weights[1]) and not torch.equal(weights, bootstrap_weights(batch, 4, seed=1))
    shuffled = torch.randperm(n_graphs)
    moved = SimpleNamespace(pos=pos.reshape(n_graphs, atoms, 3)[shuffled].reshape(-1, 3), batch=batch.batch,
                            num_graphs=n_graphs)
    torch.testing.assert_close(bootstrap_weights(moved, 4), weights[:, shuffled])  # follows the structure, not its place

    members = torch.tensor(rng.normal(size=(4, n_graphs * atoms, 3)))
    outputs = {"forces": members.mean(0), "forces_members": members}

    class Batch(SimpleNamespace):
        def __contains__(self, key):
            return getattr(self, key, None) is not None

        def __getitem__(self, key):
            return getattr(self, key)

    labelled = Batch(pos=pos, batch=batch.batch, num_graphs=n_graphs, forces=torch.zeros(n_graphs * atoms, 3))
    plain = loss_terms(outputs, labelled)["forces"]
    ones = loss_terms(outputs, labelled, head_weights=torch.ones(4, n_graphs))["forces"]
    weighted = loss_terms(outputs, labelled, head_weights=weights)["forces"]
    torch.testing.assert_close(plain, ones)
    expected = ((members**2) * weights[:, batch.batch][..., None]).mean()
    torch.testing.assert_close(weighted, expected)
    variance = members.var(0, correction=1)
    torch.testing.assert_close(forces_nll_term(outputs, labelled),
                               0.5 * (variance.log() + members.mean(0) ** 2 / variance).mean())
