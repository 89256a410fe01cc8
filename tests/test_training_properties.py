"""Property models: training without forces, --target, dipole magnitudes, property metrics.

The data are synthetic and QM9-shaped (energies and graph-level labels, no forces), so these
tests need neither qm9pack nor a long parse; the QM9 loader itself is tested in test_qm9.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from molequi.cli.main import main as cli_main
from molequi.errors import ConfigError, DataFormatError
from molequi.models import load_model
from molequi.training import evaluate_model, load_config, train
from molequi.training.targets import apply_targets, parse_target
from molequi.training.metrics import loss_terms, property_prediction

TINY = {
    "model": {"channels": 8, "l_max": 1, "num_layers": 1, "correlation": 2, "radial_hidden": [16], "readout_hidden": 8},
    "batch_size": 4,
    "validation": 6,
    "progress": False,
    "device": "cpu",
    "dtype": "float64",
    "learning_rate": 0.02,
}
CHARGES = {1: 0.25, 6: -0.1, 8: -0.5}
"""Fixed partial charges, e, that define the synthetic dipole labels."""


def qm9_like(n: int, seed: int = 0) -> list[Atoms]:
    """Displaced small molecules with an energy (eV), a ``gap`` (eV) and a ``dipole_norm``
    (e·Å, magnitude only, as in QM9), and no forces."""
    rng = np.random.default_rng(seed)
    bases = [molecule(name) for name in ("CH3CH2OH", "CH3OH", "H2O", "CH4")]
    structures = []
    for k in range(n):
        atoms = bases[k % len(bases)].copy()
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        charges = np.array([CHARGES[z] for z in atoms.numbers])
        charges -= charges.mean()  # neutral: the dipole does not depend on the origin
        dipole = charges @ atoms.positions
        distances = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1)
        atoms.info["gap"] = 6.0 + 2.0 * float(np.exp(-distances).sum()) / len(atoms)
        atoms.info["dipole_norm"] = float(np.linalg.norm(dipole))
        atoms.calc = SinglePointCalculator(atoms, energy=-10.0 * len(atoms) + float(rng.normal(0, 0.1)))
        structures.append(atoms)
    return structures


@pytest.fixture(scope="module")
def qm9_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("qm9like") / "train.extxyz"
    ase.io.write(path, qm9_like(40))
    return path


def test_parse_target_kinds():
    assert parse_target("gap") == ("gap", "intensive")
    assert parse_target("U0") == ("U0", None)
    assert parse_target("energy") == ("energy", None)
    assert parse_target("dipole_norm") == ("dipole_norm", "dipole")
    assert parse_target("alpha:extensive") == ("alpha", "extensive")
    with pytest.raises(ConfigError, match="unknown kind 'vector'"):
        parse_target("gap:vector")
    with pytest.raises(ConfigError, match="needs a name"):
        parse_target(":intensive")


def test_apply_targets_sets_weights_unless_given():
    values = apply_targets({}, ["gap"])
    assert values["model"]["properties"] == {"gap": "intensive"}
    assert values["forces_weight"] == 0.0 and values["energy_weight"] == 0.0
    values = apply_targets({"energy_weight": 0.5}, ["U0", "gap"])
    assert values["energy_weight"] == 0.5 and values["forces_weight"] == 0.0
    assert apply_targets({}, ["U0"])["energy_weight"] == 1.0
    with pytest.raises(ConfigError, match="reserved"):
        load_config(None, {**TINY, "model": {**TINY["model"], "properties": {"forces": "intensive"}}})
    with pytest.raises(ConfigError, match="every loss weight is 0"):
        load_config(None, {**TINY, "energy_weight": 0, "forces_weight": 0})


def test_dipole_magnitude_label_is_compared_through_the_norm():
    predicted = torch.tensor([[3.0, 4.0, 0.0]])
    assert torch.allclose(property_prediction(predicted, torch.tensor([[5.0]])), torch.tensor([[5.0]]))
    assert property_prediction(predicted, torch.zeros(1, 3)) is predicted  # vector labels: the vector


def test_loss_terms_skip_missing_labels():
    class Batch(dict):
        __getattr__ = dict.__getitem__

    batch = Batch(energy=torch.tensor([1.0]), ptr=torch.tensor([0, 2]))
    terms = loss_terms({"energy": torch.tensor([1.5])}, batch)
    assert set(terms) == {"energy"}
    assert float(terms["energy"]) == pytest.approx(0.25 / 4)


def test_property_model_trains_without_forces(qm9_file, tmp_path):
    """A gap + dipole-magnitude model on data without forces: the validation errors fall, no
    force metric is reported, and the untrained energy is not reported either."""
    config = load_config(None, {**TINY, "max_epochs": 8}, targets=["gap", "dipole_norm"])
    assert config.forces_weight == 0 and config.energy_weight == 0
    result = train(config, qm9_file, tmp_path / "run", test_data=[qm9_file], log=lambda message: None)
    first, last = result.history[0], result.history[-1]
    assert last["val_gap_mae"] < first["val_gap_mae"]
    assert last["val_dipole_norm_mae"] < first["val_dipole_norm_mae"]
    assert math.isnan(last["val_forces_mae_meV_per_A"])
    assert math.isnan(last["val_energy_mae_meV"])  # the data have energies, but the energy is not trained
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert {"gap_mae", "gap_rmse", "dipole_norm_mae", "dipole_norm_rmse", "n_structures"} <= set(metrics)
    assert not any(key.startswith(("energy_", "forces_")) for key in metrics)
    model = load_model(tmp_path / "run" / "model.molequi")
    config_saved = model.model.config
    assert config_saved.trained_outputs == ["gap", "dipole_norm"]
    gaps = np.array([atoms.info["gap"] for atoms in qm9_like(40)])
    assert config_saved.property_stats["gap"][0] == pytest.approx(gaps.mean(), abs=0.2)
    assert "dipole_norm" not in config_saved.property_stats  # a vector head is not shifted


def test_energy_target_trains_energy_without_forces(qm9_file, tmp_path):
    config = load_config(None, {**TINY, "max_epochs": 2}, targets=["U0"])
    result = train(config, qm9_file, tmp_path / "run", log=lambda message: None)
    assert math.isfinite(result.history[-1]["val_energy_mae_meV"])
    assert math.isnan(result.history[-1]["val_forces_mae_meV_per_A"])
    metrics = evaluate_model(load_model(tmp_path / "run" / "model.molequi"), qm9_like(5, seed=3), device="cpu")
    assert "energy_mae_meV" in metrics and "forces_mae_meV_per_A" not in metrics


def test_forces_required_when_trained(qm9_file, tmp_path):
    config = load_config(None, {**TINY, "max_epochs": 1})
    with pytest.raises(DataFormatError, match="no forces label.*--forces-weight 0"):
        train(config, qm9_file, tmp_path / "run", log=lambda message: None)
    assert not (tmp_path / "run").exists()


def test_cli_target_and_evaluate_report_property_mae(qm9_file, tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli_main(["train", "--data", str(qm9_file), "--out", str(out), "--target", "gap", "--max-epochs", "2",
                     "--validation", "6", "--channels", "8", "--l-max", "1", "--num-layers", "1", "--no-progress", "--device", "cpu"])
    assert code == 0
    capsys.readouterr()
    assert cli_main(["evaluate", str(out / "model.molequi"), str(qm9_file), "--plot", str(tmp_path / "p.png")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["gap_mae"] >= 0 and metrics["n_structures"] == 40
    assert metrics["property_units"] == {"gap": "eV"}
    assert "energy_mae_meV" not in metrics
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert cli_main(["train", "--data", str(qm9_file), "--out", str(tmp_path / "bad"), "--target", "gap:vector"]) == 2
    assert "unknown kind 'vector'" in capsys.readouterr().err


def test_statistics_without_forces_use_the_energy_spread(qm9_file):
    """Without forces the per-atom energy scale is the std of the per-atom residual energies
    (not the force RMS MACE uses, and not 1)."""
    from molequi.data import compute_statistics, species_of
    from molequi.training import load_graphs

    graphs = load_graphs(qm9_file, 5.0, require_forces=False)
    statistics = compute_statistics(graphs, species_of(graphs))
    residual = [
        (float(g.energy) - sum(statistics.e0s[int(z)] for z in g.numbers)) / g.num_nodes for g in graphs
    ]
    assert statistics.scale == pytest.approx(np.std(residual))
    assert 0 < statistics.scale < 0.1  # energies are -10 eV/atom + N(0, 0.1 eV) noise


def test_property_only_model_cannot_drive_md(qm9_file, tmp_path):
    from molequi.calculators import MolequiCalculator

    config = load_config(None, {**TINY, "max_epochs": 1}, targets=["gap"])
    train(config, qm9_file, tmp_path / "run", log=lambda message: None)
    with pytest.raises(ConfigError, match="trained on gap only"):
        MolequiCalculator(tmp_path / "run" / "model.molequi")
