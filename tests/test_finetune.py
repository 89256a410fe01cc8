"""Fine-tuning from a trained model, the total-charge input, reproducible budgets and the
pretrained-model registry."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from molequi.cli.main import main
from molequi.errors import InvalidStructureError, ModelFileError

from conftest import SPECIES

FIT = ["--dtype", "float64", "--device", "cpu", "--no-progress", "--batch-size", "4", "--validation", "2"]
TINY = ["--channels", "8", "--l-max", "0", "--edge-l-max", "1", "--num-layers", "2", *FIT]
SHIFT = {1: 0.37, 6: -1.25, 8: 2.1}
"""A per-element offset (eV) standing for a change of level of theory."""


def labelled(model, structures: list[Atoms], shift: dict[int, float] | None = None) -> list[Atoms]:
    """``structures`` labelled by ``model`` (energies eV, forces eV/Å), energies moved by ``shift``."""
    from molequi.calculators.ase import MolequiCalculator

    calculator = MolequiCalculator(model)
    out = []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calculator
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        energy += sum((shift or {}).get(int(z), 0.0) for z in atoms.numbers)
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        out.append(atoms)
    return out


def mixed_molecules(count: int, seed: int = 0) -> list[Atoms]:
    """Rattled copies of small H/C/O molecules of different compositions (a full-rank count matrix)."""
    rng = np.random.default_rng(seed)
    names = ["CH4", "H2O", "CH3OH", "CH3CH2OH", "H2CO", "C2H6", "CO2"]
    out = []
    for k in range(count):
        atoms = molecule(names[k % len(names)])
        atoms.positions += rng.normal(scale=0.04, size=atoms.positions.shape)
        out.append(atoms)
    return out


@pytest.fixture(scope="module")
def initial(tmp_path_factory):
    """A trained-looking starting model (random weights, float64) saved to a file."""
    from molequi.models import ModelConfig, build_model
    from molequi.models.io import save_model

    config = ModelConfig(species=list(SPECIES), channels=8, l_max=0, edge_l_max=1, radial_hidden=[16],
                         readout_hidden=8, avg_num_neighbors=3.0, energy_scale=0.7, ensemble_heads=2,
                         e0s={"1": -13.0, "6": -1030.0, "8": -2040.0})
    torch.manual_seed(3)
    model = build_model(config, torch.float64).eval()
    path = tmp_path_factory.mktemp("init") / "initial.molequi"
    save_model(model, path)
    return model, path


@pytest.fixture(scope="module")
def shifted_data(initial, tmp_path_factory) -> str:
    """Structures labelled by the initial model at a 'new level of theory' (energies + SHIFT)."""
    model, _ = initial
    path = tmp_path_factory.mktemp("data") / "shifted.extxyz"
    write(path, labelled(model, mixed_molecules(14), SHIFT))
    return str(path)


def test_reference_refit_recovers_a_per_element_shift(initial, shifted_data):
    from molequi.training.data import load_graphs
    from molequi.training.finetune import reference_shift

    model, _ = initial
    graphs = load_graphs([shifted_data], model.model.config.cutoff)
    fitted = reference_shift(model, graphs, list(SPECIES))
    for z, value in SHIFT.items():
        assert fitted.elements[z] == pytest.approx(value, abs=1e-6)


def test_fine_tuning_keeps_normalisation_and_moves_references(initial, shifted_data, tmp_path):
    from molequi.models.io import load_model

    model, path = initial
    out = tmp_path / "ft"
    code = main(["train", "--init", str(path), "--data", shifted_data, "--out", str(out), "--max-epochs", "1",
                 "--lr", "1e-12", *FIT])
    assert code == 0
    tuned = load_model(out / "model.molequi").model.config
    start = model.model.config
    assert tuned.energy_scale == start.energy_scale and tuned.avg_num_neighbors == start.avg_num_neighbors
    assert tuned.channels == start.channels and tuned.ensemble_heads == start.ensemble_heads
    for z, value in SHIFT.items():
        assert float(tuned.e0s[str(z)]) - float(start.e0s[str(z)]) == pytest.approx(value, abs=1e-5)
    # with a vanishing learning rate the fine-tuned model reproduces the shifted labels
    from ase.io import read

    from molequi.calculators.ase import MolequiCalculator

    atoms = read(shifted_data, index=3)
    reference = atoms.get_potential_energy()
    atoms.calc = MolequiCalculator(out / "model.molequi")
    assert atoms.get_potential_energy() == pytest.approx(reference, abs=1e-4)


def test_freeze_trains_only_the_heads(initial, shifted_data, tmp_path):
    from molequi.models.io import load_model

    model, path = initial
    out = tmp_path / "frozen"
    assert main(["train", "--init", str(path), "--freeze", "--data", shifted_data, "--out", str(out),
                 "--max-epochs", "2", "--lr", "0.05", "--no-progress", "--validation", "2", "--batch-size", "4",
                 "--dtype", "float64"]) == 0
    tuned = load_model(out / "model.molequi").state_dict()
    start = model.state_dict()
    heads = [k for k in start if ".readouts." in k and start[k].is_floating_point()]
    body = [k for k in start if k not in heads and "e0" not in k and start[k].is_floating_point()]
    assert heads and body
    assert all(torch.equal(tuned[k], start[k]) for k in body)
    assert any(not torch.equal(tuned[k], start[k]) for k in heads)


def test_replay_adds_shifted_pretraining_structures(initial, shifted_data, tmp_path, capsys):
    _, path = initial
    out = tmp_path / "replay"
    assert main(["train", "--init", str(path), "--replay", "0.5", "--replay-data", shifted_data, "--data",
                 shifted_data, "--out", str(out), "--max-epochs", "1", "--no-progress", "--validation", "2",
                 "--dtype", "float64"]) == 0
    assert "replay: 6 structures" in capsys.readouterr().err


def test_fine_tuning_refuses_what_cannot_work(initial, shifted_data, tmp_path, capsys):
    model, path = initial
    nitrogen = tmp_path / "n.extxyz"
    write(nitrogen, labelled(model, mixed_molecules(4)) + [_labelled_nh3()])
    cases = [
        (["--init", str(path), "--channels", "16", "--data", shifted_data], "channels 16 (the model has 8)"),
        (["--freeze", "--data", shifted_data], "freeze, anchor and replay need init"),
        (["--anchor", "10", "--data", shifted_data], "freeze, anchor and replay need init"),
        (["--init", str(path), "--anchor", "-1", "--data", shifted_data], "anchor must be ≥ 0"),
        (["--init", str(tmp_path / "missing.molequi"), "--data", shifted_data], "no such model file"),
        (["--init", str(path), "--data", str(nitrogen), "--validation", "1"], "contain N, which it was never trained"),
    ]
    for k, (args, message) in enumerate(cases):
        assert main(["train", *args, "--out", str(tmp_path / f"run{k}"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def _labelled_nh3() -> Atoms:
    atoms = molecule("NH3")
    atoms.calc = SinglePointCalculator(atoms, energy=-10.0, forces=np.zeros((4, 3)))
    return atoms


def test_same_seed_and_epoch_budget_give_the_same_model(shifted_data, tmp_path):
    from molequi.models.io import content_digest, load_model

    digests = []
    for name in ("one", "two"):
        out = tmp_path / name
        assert main(["train", "--data", shifted_data, "--out", str(out), "--max-epochs", "2", "--seed", "5",
                     *TINY]) == 0
        digests.append(content_digest(load_model(out / "model.molequi")))
    assert digests[0] == digests[1]


# ---------------------------------------------------------------- total charge


def charged_model():
    from molequi.models import ModelConfig, build_model

    torch.manual_seed(0)
    config = ModelConfig(species=list(SPECIES), channels=8, l_max=1, radial_hidden=[16], readout_hidden=8,
                         charge_input=True)
    return build_model(config, torch.float64).eval()


def test_charge_changes_the_energy_only_with_charge_input(ethanol):
    from molequi.calculators.ase import MolequiCalculator

    for model, differs in ((charged_model(), True), (__import__("conftest").random_model(), False)):
        atoms = ethanol.copy()
        atoms.calc = MolequiCalculator(model)
        neutral = atoms.get_potential_energy()
        atoms.info["charge"] = -1
        anion = atoms.get_potential_energy()  # the calculator notices the new total charge
        assert (abs(anion - neutral) > 1e-6) == differs


def test_charged_energies_stay_invariant_and_forces_match_the_gradient(ethanol):
    from molequi.calculators.ase import MolequiCalculator
    from scipy.spatial.transform import Rotation

    atoms = ethanol.copy()
    atoms.info["charge"] = 1
    atoms.calc = MolequiCalculator(charged_model())
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    rotation = Rotation.random(random_state=4).as_matrix()
    turned = atoms.copy()
    turned.positions = atoms.positions @ rotation.T
    turned.calc = MolequiCalculator(charged_model())
    assert turned.get_potential_energy() == pytest.approx(energy, abs=1e-9)
    assert np.allclose(turned.get_forces(), forces @ rotation.T, atol=1e-8)
    step = 1e-5
    moved = atoms.copy()
    moved.calc = MolequiCalculator(charged_model())
    moved.positions[2, 0] += step
    plus = moved.get_potential_energy()
    moved.positions[2, 0] -= 2 * step
    minus = moved.get_potential_energy()
    assert -(plus - minus) / (2 * step) == pytest.approx(forces[2, 0], abs=1e-5)


def with_charge(atoms: Atoms, charge: int) -> Atoms:
    atoms = atoms.copy()
    atoms.info["charge"] = charge
    return atoms


def test_the_charge_reference_adds_a_q_plus_b_q2_and_leaves_forces(ethanol):
    """a·Q + b·Q² on the total energy of each structure of a batch, none on the forces."""
    import dataclasses

    from molequi.calculators.ase import MolequiCalculator
    from molequi.models import build_model

    plain = charged_model()
    config = dataclasses.replace(plain.model.config, charge_energies=[-2.5, 0.75])
    shifted = build_model(config, torch.float64).eval()
    shifted.load_state_dict(plain.state_dict())
    for charge in (-1, 0, 1, 2):
        atoms = with_charge(ethanol, charge)
        before, after = atoms.copy(), atoms.copy()
        before.calc, after.calc = MolequiCalculator(plain), MolequiCalculator(shifted)
        expected = -2.5 * charge + 0.75 * charge**2
        assert after.get_potential_energy() - before.get_potential_energy() == pytest.approx(expected, abs=1e-9)
        assert np.allclose(after.get_forces(), before.get_forces(), atol=1e-12)


def test_the_charge_reference_is_fitted_with_the_e0s():
    """Least squares on neutral, anionic and cationic structures recovers E0s and [a, b]."""
    from torch_geometric.data import Data

    from molequi.data.statistics import compute_statistics

    e0s, terms = {1: -13.5, 6: -1030.25, 8: -2040.75}, (4.5, 1.25)
    graphs = []
    for k, (counts, charge) in enumerate([((4, 1, 0), 0), ((2, 0, 1), 0), ((6, 2, 1), 0), ((4, 2, 0), 1),
                                          ((3, 1, 2), -1), ((2, 1, 2), -1), ((5, 1, 0), 1), ((0, 1, 2), 0)]):
        numbers = torch.tensor([z for z, n in zip(e0s, counts) for _ in range(n)])
        energy = sum(e0s[z] * n for z, n in zip(e0s, counts)) + terms[0] * charge + terms[1] * charge**2
        graphs.append(Data(numbers=numbers, energy=torch.tensor([energy], dtype=torch.float64),
                           charge=torch.tensor([float(charge)], dtype=torch.float64),
                           edge_index=torch.zeros((2, 0), dtype=torch.long), num_nodes=len(numbers)))
    statistics = compute_statistics(graphs, [1, 6, 8], charge_terms=True)
    assert statistics.charge_energies == pytest.approx(list(terms), abs=1e-8)
    for z, value in e0s.items():
        assert statistics.e0s[z] == pytest.approx(value, abs=1e-8)
    assert statistics.shift == pytest.approx(0.0, abs=1e-8)
    assert compute_statistics(graphs, [1, 6, 8]).charge_energies is None


def test_fine_tuning_refits_the_charge_reference(tmp_path):
    """Labels of a new level of theory that moves anions by 3 eV and cations by −1 eV: the
    refit moves [a, b] by (−2, 1), and the fine-tuned file predicts the moved energies."""
    from molequi.training.data import load_graphs
    from molequi.training.finetune import reference_shift

    wrapped = charged_model()
    structures = [with_charge(atoms, charge) for atoms, charge in zip(mixed_molecules(12), [0, -1, 1] * 4)]
    shifted = labelled(wrapped, structures)
    for atoms in shifted:
        charge = atoms.info["charge"]
        move = 3.0 if charge == -1 else -1.0 if charge == 1 else 0.0
        energy = atoms.get_potential_energy() + move
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=atoms.get_forces())
    path = tmp_path / "charged.extxyz"
    write(path, shifted)
    graphs = load_graphs([str(path)], wrapped.model.config.cutoff)
    fitted = reference_shift(wrapped, graphs, list(SPECIES), charge_terms=True)
    assert fitted.charge == pytest.approx((-2.0, 1.0), abs=1e-6)
    assert all(abs(v) < 1e-6 for v in fitted.elements.values())


def test_a_fractional_charge_is_refused(ethanol):
    from molequi.data.labels import total_charge

    ethanol.info["charge"] = 0.5
    with pytest.raises(InvalidStructureError, match="whole number"):
        total_charge(ethanol)


def test_md_states_carry_the_charge(ethanol):
    from molequi.md.state import state_from_atoms

    charged = ethanol.copy()
    charged.info["charge"] = 1
    state = state_from_atoms([ethanol, charged], temperature=300.0)
    assert state.charge.tolist() == [0.0, 1.0]
    assert state.select(torch.tensor([False, True])).charge.tolist() == [1.0]


# ---------------------------------------------------------------- the registry


def test_pretrained_names_resolve_and_unknown_names_are_refused(tmp_path):
    from molequi import pretrained

    assert "organic-xtb" in pretrained.names()
    assert pretrained.resolve("organic-xtb").name == "organic_xtb.molequi"
    assert pretrained.resolve(tmp_path / "mine.molequi") == tmp_path / "mine.molequi"
    with pytest.raises(ModelFileError, match="no pretrained model named 'orgnic-xtb'; shipped: organic-xtb"):
        pretrained.get("orgnic-xtb")


def test_md_and_the_calculator_run_the_shipped_model_when_none_is_given(tmp_path, capsys, ethanol, monkeypatch):
    from molequi import pretrained
    from molequi.calculators.ase import MolequiCalculator

    monkeypatch.setattr(pretrained, "_ANNOUNCED", set())  # said once per process: earlier tests may have used it

    structure = tmp_path / "ethanol.xyz"
    write(structure, ethanol)
    assert main(["md", str(structure), "--steps", "5", "--dt", "0.5", "--out", str(tmp_path / "md"),
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "pretrained model 'organic-xtb'" in err and "GFN2-xTB" in err
    log = (tmp_path / "md" / "system_0000.csv").read_text().splitlines()
    assert log[0].endswith(",in_domain") and log[1].endswith(",1")  # its shipped calibration judged the run
    ethanol.calc = MolequiCalculator()
    assert np.isfinite(ethanol.get_potential_energy())
    assert "energy_std" in ethanol.calc.results  # its ensemble heads give a σ
    model = pretrained.load("organic-xtb")
    assert sorted(model.model.config.species) == [1, 6, 7, 8, 9, 16, 17, 35]
    assert model.model.config.charge_input
    assert pretrained.get("organic-xtb").path.stat().st_size <= 10 * 1024 * 1024
    assert pretrained.get("organic-xtb").card.is_file()


def test_a_calculator_without_the_force_spread_gives_the_same_forces(ethanol):
    from molequi.calculators.ase import MolequiCalculator

    full, lean = ethanol.copy(), ethanol.copy()
    full.calc, lean.calc = MolequiCalculator(), MolequiCalculator(force_spread=False)
    assert np.allclose(full.get_forces(), lean.get_forces(), atol=1e-5)
    assert lean.get_potential_energy() == pytest.approx(full.get_potential_energy(), abs=1e-6)
    assert lean.calc.results["energy_std"] == pytest.approx(full.calc.results["energy_std"])
    assert "forces_std" in full.calc.results and "forces_std" not in lean.calc.results
    assert lean.calc.results["in_domain"] is None  # no force σ, no verdict


@pytest.mark.parametrize("heads", [1, 3])
def test_a_delta_run_from_a_whole_energy_model_starts_at_zero_correction(ethanol, heads):
    """Zeroed energy readouts: no correction at the start (residuals and forces 0), the body kept,
    and each head of a shallow ensemble still gets a gradient of its own."""
    import copy

    from molequi.data.batch import GraphBatch
    from molequi.data.graph import atoms_to_graph
    from molequi.models import ModelConfig, build_model
    from molequi.training.finetune import zero_energy_readouts

    torch.manual_seed(0)
    config = ModelConfig(species=list(SPECIES), channels=8, l_max=1, radial_hidden=[16], readout_hidden=8,
                         ensemble_heads=heads)
    model = build_model(config, torch.float64)
    before = copy.deepcopy(model.model.layers.state_dict())
    zero_energy_readouts(model)
    graph = GraphBatch.of(atoms_to_graph(ethanol, config.cutoff))
    out = model(graph)
    assert torch.all(out["energy_residual"] == 0) and torch.all(out["forces"] == 0)
    for key, value in model.model.layers.state_dict().items():
        assert torch.equal(value, before[key]), key
    if heads > 1:
        model.zero_grad()
        label = torch.tensor([1.0], dtype=torch.float64)
        ((out["energy_members"] - out["energy_reference"] - label) ** 2).sum().backward()
        gradient = model.model.readouts[-1].out_weight.grad
        assert not torch.allclose(gradient[0], gradient[1])


def test_predict_and_the_calculator_agree_on_charged_molecules(ethanol):
    from molequi.calculators.ase import MolequiCalculator
    from molequi.models.predict import predict

    model = charged_model()
    structures = [with_charge(ethanol, charge) for charge in (-1, 0, 1)]
    for atoms, result in zip(structures, predict(model, structures)):
        atoms.calc = MolequiCalculator(model)
        assert result["energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
    assert len({round(r["energy"], 6) for r in predict(model, structures)}) == 3


def _weight_change(tuned: dict, start: dict) -> float:
    """Σ (θ − θ₀)² over the floating-point weights (the reference energies left out)."""
    return sum(float((tuned[k] - start[k]).square().sum()) for k in start
               if start[k].is_floating_point() and "e0" not in k)


def test_the_anchor_holds_the_weights_near_the_initial_model(initial, shifted_data, tmp_path):
    from molequi.models.io import load_model

    model, path = initial
    change = {}
    for anchor in (0.0, 1e4):
        out = tmp_path / f"anchor_{anchor:g}"
        assert main(["train", "--init", str(path), "--anchor", str(anchor), "--data", shifted_data, "--out", str(out),
                     "--max-epochs", "3", "--lr", "0.01", "--no-progress", "--validation", "2", "--batch-size", "4",
                     "--dtype", "float64"]) == 0
        change[anchor] = _weight_change(load_model(out / "model.molequi").state_dict(), model.state_dict())
    assert change[0.0] > 0 and change[1e4] < 0.1 * change[0.0], change


def test_the_anchor_penalty_is_its_weight_over_the_structures_times_the_squared_change(initial):
    from molequi.training.finetune import WeightAnchor

    model, _ = initial
    reference = {name: p.detach().clone() for name, p in model.named_parameters()}
    anchor = WeightAnchor(reference, scale=50.0 / 10)
    assert float(anchor.penalty(model)) == 0.0
    moved = copy.deepcopy(model)
    name, parameter = next(iter(moved.named_parameters()))
    with torch.no_grad():
        parameter.add_(0.1)
    assert float(anchor.penalty(moved)) == pytest.approx(5.0 * 0.01 * parameter.numel())
    parameter.requires_grad_(False)  # a frozen weight is not pulled
    assert float(anchor.penalty(moved)) == pytest.approx(0.0)
    for other in moved.parameters():
        other.requires_grad_(False)
    assert float(anchor.penalty(moved)) == 0.0  # nothing trained: no pull, no error
