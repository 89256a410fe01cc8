"""The ASE calculator: agreement with the model, physics (finite differences, stress), caching,
the skin neighbor list, committees, ASE dynamics/optimisers, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.constraints import FixAtoms
from ase.md.langevin import Langevin
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS, FIRE

from molequi.calculators import MolequiCalculator
from molequi.errors import UnknownElementError
from molequi.models import ModelConfig, build_model, predict, save_model


def tiny_model(seed: int = 0, dtype=torch.float64, cutoff: float = 4.0):
    """A small random-weight model for H, C, O (fast; exact comparisons need no training)."""
    torch.manual_seed(seed)
    config = ModelConfig(
        species=[1, 6, 8], cutoff=cutoff, channels=8, l_max=1, correlation=2, radial_hidden=[16],
        avg_num_neighbors=6.0, energy_scale=0.5,
    )
    return build_model(config, dtype).eval()


def ethanol(seed: int = 0) -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=seed)
    return atoms


def periodic_box() -> Atoms:
    """Two ethanol molecules in a small triclinic box (neighbors across the boundary)."""
    first, second = ethanol(1), ethanol(2)
    second.translate([3.0, 2.5, 0.5])
    atoms = first + second
    atoms.set_cell([[7.5, 0.0, 0.0], [0.6, 7.0, 0.0], [0.3, -0.4, 6.8]])
    atoms.pbc = True
    atoms.wrap()
    return atoms


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_energy_and_forces_equal_the_model(model):
    atoms = ethanol()
    atoms.calc = MolequiCalculator(model)
    reference = predict(model, atoms)
    assert atoms.get_potential_energy() == pytest.approx(reference["energy"], abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), reference["forces"], atol=1e-10)
    np.testing.assert_allclose(atoms.calc.results["energies"].sum(), reference["energy"], atol=1e-10)
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()


def test_model_file_and_loaded_model_agree(model, tmp_path):
    path = save_model(model, tmp_path / "model.molequi")
    atoms = ethanol()
    from_file = MolequiCalculator(path).get_potential_energy(atoms)
    assert from_file == pytest.approx(MolequiCalculator(model).get_potential_energy(atoms), abs=1e-12)


def test_forces_are_minus_the_energy_gradient(model):
    atoms = ethanol()
    atoms.calc = MolequiCalculator(model)
    numerical = calculate_numerical_forces(atoms, eps=1e-4)
    np.testing.assert_allclose(atoms.get_forces(), numerical, atol=1e-6)


def test_stress_matches_numerical_stress():
    atoms = periodic_box()
    atoms.calc = MolequiCalculator(tiny_model())
    numerical = calculate_numerical_stress(atoms, eps=1e-5)
    np.testing.assert_allclose(atoms.get_stress(), numerical, atol=1e-7)


def test_stress_on_an_open_system_is_a_clear_error(model):
    atoms = ethanol()
    atoms.calc = MolequiCalculator(model)
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        atoms.get_stress()


def test_results_are_cached_until_the_structure_changes(model):
    atoms = ethanol()
    calculator = MolequiCalculator(model)
    atoms.calc = calculator
    calls = []
    calculator.potential = _Counting(calculator.potential, calls)
    forces = atoms.get_forces()
    atoms.get_potential_energy()
    atoms.get_forces()
    assert len(calls) == 1
    atoms.positions[0, 0] += 0.01
    atoms.get_potential_energy()
    assert len(calls) == 2
    # results are copies: the array handed out before is untouched by the new step
    assert not np.shares_memory(forces, atoms.get_forces())
    assert not np.allclose(forces, atoms.get_forces())


class _Counting:
    def __init__(self, potential, calls):
        self._potential, self._calls = potential, calls

    def __getattr__(self, name):
        return getattr(self._potential, name)

    def __call__(self, *args, **kwargs):
        self._calls.append(1)
        return self._potential(*args, **kwargs)


def test_skin_neighbor_list_matches_a_fresh_list_along_a_trajectory(model):
    atoms = ethanol()
    atoms.calc = MolequiCalculator(model, skin=1.0)
    atoms.set_velocities(np.random.default_rng(0).normal(0, 0.3, (len(atoms), 3)))  # Å per ASE time unit
    dynamics = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    fresh = MolequiCalculator(model, skin=0.0)
    for _ in range(5):
        dynamics.run(10)
        np.testing.assert_allclose(atoms.get_forces(), fresh.get_forces(atoms), atol=1e-10)
        assert atoms.get_potential_energy() == pytest.approx(fresh.get_potential_energy(atoms), abs=1e-10)
    assert 2 <= atoms.calc.neighbors.builds < 25  # reused, and rebuilt when atoms moved > skin / 2
    assert fresh.neighbors.builds == 5


def test_periodic_skin_list_matches_a_fresh_list():
    atoms = periodic_box()
    model = tiny_model()
    atoms.calc = MolequiCalculator(model, skin=1.0)
    atoms.set_velocities(np.random.default_rng(1).normal(0, 0.3, (len(atoms), 3)))
    VelocityVerlet(atoms, timestep=1.0 * units.fs).run(20)
    assert atoms.calc.neighbors.builds >= 2
    fresh = MolequiCalculator(model, skin=0.0)
    np.testing.assert_allclose(atoms.get_forces(), fresh.get_forces(atoms), atol=1e-10)
    np.testing.assert_allclose(atoms.get_stress(), fresh.get_stress(atoms), atol=1e-10)


def test_pairs_beyond_the_cutoff_contribute_exactly_nothing(model):
    """The premise of the skin: a list with a much larger radius gives the same results."""
    atoms = ethanol()
    near, far = MolequiCalculator(model, skin=0.0), MolequiCalculator(model, skin=6.0)
    assert far.get_potential_energy(atoms) == pytest.approx(near.get_potential_energy(atoms), abs=1e-12)
    np.testing.assert_allclose(far.get_forces(atoms), near.get_forces(atoms), atol=1e-12)
    assert far.neighbors.edge_index.shape[1] > near.neighbors.edge_index.shape[1]


def test_optimisers_and_dynamics_with_constraints(model):
    for optimizer in (BFGS, FIRE):
        atoms = ethanol()
        atoms.set_constraint(FixAtoms(indices=[0, 1]))
        fixed = atoms.positions[:2].copy()
        atoms.calc = MolequiCalculator(model)
        optimizer(atoms, logfile=None).run(fmax=0.05, steps=20)
        np.testing.assert_array_equal(atoms.positions[:2], fixed)
    atoms = ethanol()
    atoms.calc = MolequiCalculator(model)
    Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs, rng=np.random.default_rng(0)).run(10)
    assert np.isfinite(atoms.get_potential_energy())


def test_unknown_elements_are_named_before_any_computation(model):
    atoms = molecule("CH3Cl")
    atoms.calc = MolequiCalculator(model)
    with pytest.raises(UnknownElementError, match="Cl"):
        atoms.get_potential_energy()


def test_implemented_properties_is_a_class_attribute_left_alone(model):
    committee = MolequiCalculator([model, tiny_model(seed=1)])
    committee.get_potential_energy(ethanol())
    assert MolequiCalculator.implemented_properties == ["energy", "free_energy", "forces", "energies", "stress"]
    assert "implemented_properties" not in vars(committee)


def test_committee_mean_and_spread(model):
    other = tiny_model(seed=1)
    atoms = ethanol()
    calculator = MolequiCalculator([model, other])
    energy = calculator.get_potential_energy(atoms)
    members = [predict(m, atoms) for m in (model, other)]
    assert energy == pytest.approx(np.mean([m["energy"] for m in members]), abs=1e-10)
    np.testing.assert_allclose(calculator.get_forces(atoms), np.mean([m["forces"] for m in members], 0), atol=1e-10)
    # unbiased (ddof 1): for two members |ΔE|/√2, not the population |ΔE|/2
    assert calculator.results["energy_std"] == pytest.approx(abs(members[0]["energy"] - members[1]["energy"]) / np.sqrt(2), abs=1e-10)
    expected = np.sqrt(np.var([m["forces"] for m in members], axis=0, ddof=1).mean(-1))
    np.testing.assert_allclose(calculator.results["forces_std"], expected, atol=1e-10)
    assert calculator.results["forces_std"].shape == (len(atoms),)
    assert np.all(calculator.results["forces_std"] > 0)

    identical = MolequiCalculator([model, model])
    identical.get_forces(atoms)
    assert identical.results["energy_std"] == 0.0
    assert np.all(identical.results["forces_std"] == 0.0)


def test_one_model_has_no_spread_keys(model):
    """One plain model has no uncertainty estimate: no *_std key, rather than a 0."""
    calculator = MolequiCalculator(model)
    calculator.get_forces(ethanol())
    assert "energy_std" not in calculator.results and "forces_std" not in calculator.results
    assert "energy_std" not in predict(model, ethanol())


def test_calibration_scales_the_committee_spread(model, tmp_path):
    from molequi.models.uncertainty import Calibration, Fit

    atoms = ethanol()
    raw = MolequiCalculator([model, tiny_model(seed=1)])
    raw.get_forces(atoms)
    path = Calibration({"energy": Fit("scale", 2.0), "forces": Fit("power", 0.5, 2.0)}).save(tmp_path / "c.json")
    calibrated = MolequiCalculator([model, tiny_model(seed=1)], calibration=path)
    calibrated.get_forces(atoms)
    assert calibrated.results["energy_std"] == pytest.approx(2.0 * raw.results["energy_std"])
    np.testing.assert_allclose(calibrated.results["forces_std"], 0.5 * raw.results["forces_std"] ** 2)
    np.testing.assert_allclose(calibrated.get_forces(atoms), raw.get_forces(atoms))  # the mean is untouched


def test_dtype_conversion_copies_the_callers_model(model):
    calculator = MolequiCalculator(model, dtype=torch.float32)
    assert model.dtype == torch.float64
    energy32 = calculator.get_potential_energy(ethanol())
    assert energy32 == pytest.approx(MolequiCalculator(model).get_potential_energy(ethanol()), abs=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(model):
    atoms = periodic_box()
    cpu, gpu = MolequiCalculator(model), MolequiCalculator(model, device="cuda")
    assert gpu.get_potential_energy(atoms) == pytest.approx(cpu.get_potential_energy(atoms), abs=1e-8)
    np.testing.assert_allclose(gpu.get_forces(atoms), cpu.get_forces(atoms), atol=1e-8)
    np.testing.assert_allclose(gpu.get_stress(atoms), cpu.get_stress(atoms), atol=1e-8)


def test_domain_verdict_per_structure(model, tmp_path):
    """A committee reports the per-structure calibrated force std and, against the threshold the
    calibration stores, whether the structure is in the domain; without a threshold (or with one
    model) the verdict is unknown (None), never a guess."""
    import ase.io

    from molequi.models.uncertainty import Calibration, Fit

    atoms = ethanol()
    unknown = MolequiCalculator([model, tiny_model(seed=1)])
    unknown.get_forces(atoms)
    sigma = unknown.results["sigma_forces"]
    assert sigma == pytest.approx(unknown.results["forces_std"].max()) and unknown.results["in_domain"] is None
    single = MolequiCalculator(model)
    single.get_forces(atoms)
    assert single.results["in_domain"] is None and "sigma_forces" not in single.results
    for threshold, verdict in ((2.0 * 3.0 * sigma, True), (0.5 * 3.0 * sigma, False)):
        calibration = Calibration({"forces": Fit("scale", 3.0)}, {"domain": {"threshold": threshold}})
        calculator = MolequiCalculator([model, tiny_model(seed=1)], calibration=calibration)
        calculator.get_forces(atoms)
        assert calculator.results["sigma_forces"] == pytest.approx(3.0 * sigma)
        assert calculator.results["in_domain"] is verdict
    atoms.calc = unknown
    ase.io.write(tmp_path / "frame.extxyz", atoms)  # the verdict keys do not break writing
    assert len(ase.io.read(tmp_path / "frame.extxyz")) == len(atoms)
