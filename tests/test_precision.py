"""Mixed precision: a float32 network, float64 energies.

Totals of organic molecules are ~10^4 eV, where one float32 step is ~1 meV: a float32 model
must still give totals that do not depend on the order of the atoms, the orientation or the
origin (to 10 µeV for 20 atoms, 100 µeV for 1,000), float64 energies from ``predict`` and the
MD engine, and a training loss that sees the small residual energies, not float32-rounded totals.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from ase import Atoms
from torch_geometric.data import Batch

from molequi.data.graph import atoms_to_graph
from molequi.models import ModelConfig, build_model
from molequi.models.predict import predict
from molequi.training.metrics import loss_terms

# Realistic isolated-atom energies (eV), so that totals are ~-10^4 eV as in rMD17 or QM9.
E0S = {"1": -13.6, "6": -1030.0, "7": -1485.0, "8": -2040.0}
FORMULA = "C7H8N2O3"  # 20 atoms, total reference ~ -16,400 eV
SHIFT = -0.37  # eV/atom, in the float64 reference too


@functools.lru_cache(maxsize=None)
def model64():
    config = ModelConfig(
        species=[1, 6, 7, 8], cutoff=4.0, channels=8, l_max=1, num_layers=2, correlation=2,
        radial_hidden=[16], readout_hidden=8, avg_num_neighbors=8.0, e0s=dict(E0S),
        energy_shift=SHIFT, energy_scale=0.8,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return build_model(config, torch.float64).eval()


@functools.lru_cache(maxsize=None)
def model32():
    """The same weights as :func:`model64`, cast to float32 (what training gives by default)."""
    return copy.deepcopy(model64()).to(torch.float32).eval()


def molecule20(seed: int = 0) -> Atoms:
    """A compact random C7H8N2O3 (atoms ≥ 1.1 Å apart inside a 4.5 Å cube)."""
    rng = np.random.default_rng(seed)
    positions: list[np.ndarray] = []
    while len(positions) < 20:
        trial = rng.uniform(0.0, 4.5, size=3)
        if all(np.linalg.norm(trial - p) >= 1.1 for p in positions):
            positions.append(trial)
    return Atoms(FORMULA, positions=positions)


def cluster(copies: int = 50, spacing: float = 12.0, seed: int = 1) -> tuple[Atoms, list[Atoms]]:
    """``copies`` randomly rotated copies of :func:`molecule20` on a grid ``spacing`` Å apart
    (further apart than the cutoff): 1,000 atoms, ~-8·10^5 eV; and the copies alone."""
    rng = np.random.default_rng(seed)
    base = molecule20()
    grid = [np.array([i, j, k]) * spacing for i in range(4) for j in range(4) for k in range(4)][:copies]
    parts = []
    for offset in grid:
        part = base.copy()
        part.rotate(rng.uniform(0, 360), rng.normal(size=3), center="COM")
        part.translate(offset)
        parts.append(part)
    whole = parts[0].copy()
    for part in parts[1:]:
        whole += part
    return whole, parts


def energy(model, atoms: Atoms) -> float:
    return predict(model, atoms, compute_forces=False)["energy"]


def transformed(atoms: Atoms, seed: int) -> dict[str, Atoms]:
    """The structure with its atoms permuted, rotated about its centre, and translated."""
    rng = np.random.default_rng(seed)
    permuted = atoms[rng.permutation(len(atoms))]
    rotated = atoms.copy()
    rotated.rotate(rng.uniform(0, 360), rng.normal(size=3), center="COM")
    translated = atoms.copy()
    translated.translate([13.7, -21.3, 8.9])
    return {"permutation": permuted, "rotation": rotated, "translation": translated}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float32_total_energy_invariant_20_atoms(seed):
    atoms = molecule20(seed)
    reference = energy(model32(), atoms)
    assert reference < -1.5e4  # realistic magnitude: the float32 step there is ~2 meV
    for name, moved in transformed(atoms, seed).items():
        assert abs(energy(model32(), moved) - reference) <= 1e-5, name


def test_float32_total_energy_invariant_1000_atoms():
    whole, parts = cluster()
    assert len(whole) == 1000
    reference = energy(model32(), whole)
    assert reference < -8e5
    for name, moved in transformed(whole, 7).items():
        assert abs(energy(model32(), moved) - reference) <= 1e-4, name
    # the copies are beyond the cutoff: the total is the sum of the copies' energies
    alone = predict(model32(), parts, compute_forces=False)
    assert abs(sum(r["energy"] for r in alone) - reference) <= 1e-4


def test_predict_returns_exact_float64_energies():
    """Isolated atoms: each energy is E0 + shift + a one-body residual; the total of many must be
    their float64 sum, and the E0s must not be rounded to float32 (−13.6 is not a float32)."""
    model = model32()
    singles = {z: predict(model, Atoms(numbers=[z]))["energy"] for z in (1, 6, 7, 8)}
    outputs = model(Batch.from_data_list([atoms_to_graph(Atoms(numbers=[1]), 4.0)]), compute_forces=False)
    assert outputs["energy"].dtype == torch.float64 and outputs["energies"].dtype == torch.float64
    residual_h = float(outputs["energy_residual"][0].detach())
    assert float(outputs["energy_reference"][0]) == -13.6 + SHIFT
    assert singles[1] == (-13.6 + SHIFT) + residual_h
    assert float(np.float32(residual_h)) == residual_h  # the residual is the float32 network's
    numbers = [1, 6, 7, 8] * 5 + [8] * 3
    spread = Atoms(numbers=numbers, positions=[[10.0 * k, 0.0, 0.0] for k in range(len(numbers))])
    result = predict(model, spread)
    assert result["energies"].dtype == np.float64
    assert isinstance(result["energy"], float)
    expected = sum(singles[z] for z in numbers)
    assert abs(result["energy"] - expected) <= 1e-9 * abs(expected)
    assert abs(result["energies"].sum() - result["energy"]) <= 1e-9 * abs(expected)


def test_float32_and_float64_models_agree_on_the_residual():
    """Same weights: the float32 total differs from the float64 one by the float32 error of the
    residual (a few µeV here), not by the rounding of a -16,000 eV total (~1 meV)."""
    for seed in range(3):
        atoms = molecule20(seed)
        out32, out64 = predict(model32(), atoms), predict(model64(), atoms)
        assert out32["energy_reference"] == out64["energy_reference"]
        scale = max(1.0, abs(out64["energy_residual"]))
        assert abs(out32["energy_residual"] - out64["energy_residual"]) <= 2e-6 * scale
        assert abs(out32["energy"] - out64["energy"]) <= 2e-6 * scale
        np.testing.assert_allclose(out32["forces"], out64["forces"], atol=1e-4)


def labelled_batch(count: int = 8) -> Batch:
    """``count`` molecules labelled with the float64 model's energies and forces."""
    graphs = []
    for seed in range(count):
        atoms = molecule20(seed)
        out = predict(model64(), atoms)
        atoms.info["energy"] = out["energy"]
        atoms.arrays["forces"] = out["forces"]
        graphs.append(atoms_to_graph(atoms, 4.0))
    return Batch.from_data_list(graphs)


def test_training_loss_sees_float64_residuals():
    """A float32 model against labels from the float64 model of the same weights: its energy
    error is µeV, and the loss must see µeV, not the ~1 meV rounding of float32 totals."""
    batch = labelled_batch()
    model = copy.deepcopy(model32()).train()
    outputs = model(batch, compute_forces=True)
    terms = loss_terms(outputs, batch)
    n_atoms = 20
    energy_rms = float(terms["energy"]) ** 0.5 * n_atoms  # eV per structure
    assert energy_rms < 1e-4
    # a 0.1 meV label error is resolved to within 5 % (float32 totals step by ~2 meV here)
    shifted = batch.clone()
    shifted.energy = batch.energy + 1e-4
    shifted_rms = float(loss_terms(outputs, shifted)["energy"]) ** 0.5 * n_atoms
    assert shifted_rms == pytest.approx(1e-4, rel=0.05)
    assert terms["energy"].dtype == torch.float64 and terms["forces"].dtype == torch.float32
    loss = terms["energy"] + terms["forces"]
    loss.backward()
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    assert gradients and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in gradients)


def test_md_energies_are_float64(tmp_path):
    """The batched engine and its log carry the float64 totals of a float32 model."""
    from molequi.md import BatchedMD, MDOutput, Potential, read_log, state_from_atoms

    atoms = molecule20(0)
    state = state_from_atoms([atoms, transformed(atoms, 0)["permutation"]], temperature=10.0, seed=0)
    engine = BatchedMD(Potential([model32()]), state, dt=0.1, max_temperature=1e6, min_distance=0.1)
    assert engine.state.energy.dtype == torch.float64
    expected = energy(model32(), atoms)
    assert abs(float(engine.state.energy[0]) - expected) <= 1e-9 * abs(expected)
    assert abs(float(engine.state.energy[1]) - expected) <= 1e-5  # the same molecule, permuted
    output = MDOutput(tmp_path, 2, traj_every=0, log_every=1, restart_every=0)
    engine.run(2, observers=[output])
    output.close(plot=False)
    log = read_log(output.log_path(0))
    assert log["potential_eV"][-1] == float(engine.state.energy[0])  # written to the last bit


def test_calculator_and_evaluate_use_float64_energies():
    """The ASE calculator's energy of a float32 model is the float64 total, independent of the
    atom order; ``evaluate`` measures µeV errors against float64 labels of the same weights."""
    from molequi.calculators import MolequiCalculator
    from molequi.training.evaluate import evaluate_model

    atoms = molecule20(0)
    atoms.calc = MolequiCalculator(model32())
    expected = energy(model32(), atoms)
    assert abs(atoms.get_potential_energy() - expected) <= 1e-9 * abs(expected)
    permuted = transformed(atoms, 0)["permutation"]
    permuted.calc = MolequiCalculator(model32())
    assert abs(permuted.get_potential_energy() - expected) <= 1e-5
    labelled = []
    for seed in range(4):
        structure = molecule20(seed)
        out = predict(model64(), structure)
        structure.info["energy"] = out["energy"]
        structure.arrays["forces"] = out["forces"]
        labelled.append(structure)
    metrics = evaluate_model(model32(), labelled, batch_size=2)
    assert metrics["energy_mae_meV"] < 0.01  # float32 totals alone would be off by ~0.5 meV
