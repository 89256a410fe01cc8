"""The torch-sim adapter: same energies and forces as molequi, and torch-sim's Langevin NVT
holds the temperature molequi's own engine holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule

from conftest import make_ethanol, make_water_box, random_model
from molequi import predict
from molequi.models import ModelConfig, build_model

ts = pytest.importorskip("torch_sim", reason="torch-sim is not installed (pip install 'molequi[torchsim]')")
from molequi.calculators.torchsim import TorchSimModel  # noqa: E402

E0S = (("1", -13.6), ("6", -1029.8), ("8", -2041.3))


def test_open_molecules_match_predict():
    model = random_model(e0s=E0S)
    molecules = [make_ethanol(), molecule("H2O"), molecule("CH3COOH")]
    adapter = TorchSimModel(model, device="cpu")
    out = adapter(ts.io.atoms_to_state(molecules, torch.device("cpu"), torch.float64))
    reference = predict(model, molecules)
    np.testing.assert_allclose(out["energy"].numpy(), [r["energy"] for r in reference], rtol=1e-12)
    np.testing.assert_allclose(out["forces"].numpy(), np.concatenate([r["forces"] for r in reference]), atol=1e-10)


def test_periodic_box_matches_the_ase_calculator():
    from molequi.calculators import MolequiCalculator

    model = random_model(e0s=E0S)
    box = make_water_box()
    adapter = TorchSimModel(model, device="cpu", compute_stress=True, memory_scales_with="n_atoms_x_density")
    out = adapter(ts.io.atoms_to_state([box], torch.device("cpu"), torch.float64))
    box.calc = MolequiCalculator(model)
    assert float(out["energy"][0]) == pytest.approx(box.get_potential_energy(), rel=1e-12)
    np.testing.assert_allclose(out["forces"].numpy(), box.get_forces(), atol=1e-10)
    from ase.stress import full_3x3_to_voigt_6_stress

    np.testing.assert_allclose(full_3x3_to_voigt_6_stress(out["stress"][0].numpy()), box.get_stress(), atol=1e-10)


@pytest.mark.slow
def test_nvt_temperature_agrees_with_molequi_engine():
    from molequi.md import BatchedMD, Potential, instantaneous_temperature, state_from_atoms

    config = ModelConfig(species=[1, 6, 8], cutoff=4.0, channels=8, l_max=1, num_layers=1, radial_hidden=[8],
                         readout_hidden=8, avg_num_neighbors=8.0, e0s=dict(E0S))
    torch.manual_seed(0)
    model = build_model(config, dtype=torch.float64).eval()
    systems, steps, burn_in, dt_fs, friction = 12, 300, 100, 0.5, 0.05  # γ: 20 fs relaxation
    molecules = [make_ethanol() for _ in range(systems)]

    adapter = TorchSimModel(model, device="cpu")
    fs = 1e-3 * ts.units.MetalUnits.time  # 1 fs in torch-sim's internal time unit
    init, update = ts.nvt_langevin(adapter, dt=torch.tensor(dt_fs * fs, dtype=torch.float64),
                                   kT=torch.tensor(300.0 * ts.units.MetalUnits.temperature, dtype=torch.float64),
                                   gamma=torch.tensor(friction / fs, dtype=torch.float64), seed=0)
    state = init(ts.io.atoms_to_state(molecules, torch.device("cpu"), torch.float64))
    theirs = []
    for step in range(steps):
        state = update(state)
        if step >= burn_in:  # torch-sim thermalises all 3N degrees of freedom
            theirs.append(ts.quantities.calc_temperature(masses=state.masses, momenta=state.momenta,
                                                         system_idx=state.system_idx).mean().item())

    engine = BatchedMD(Potential([model]), state_from_atoms(molecules, temperature=300.0, friction=friction, seed=0),
                       dt=dt_fs, ensemble="nvt")
    ours = []
    for step in range(steps):
        engine.step()
        if step >= burn_in:  # molequi keeps the centre of mass still: 3N − 3 degrees of freedom
            ours.append(instantaneous_temperature(engine.state).mean().item())
    theirs_mean, ours_mean = float(np.mean(theirs)), float(np.mean(ours))
    # 12 × 9 atoms, 200 correlated samples: the standard error of either mean is ~5 K
    assert theirs_mean == pytest.approx(300.0, abs=25.0)
    assert ours_mean == pytest.approx(300.0, abs=25.0)
    assert theirs_mean == pytest.approx(ours_mean, abs=30.0)


def test_charge_input_model_takes_the_adapter_charge_per_system():
    model = random_model(e0s=E0S, l_max=1, charge_input=True, charge_energies=(-1.5, 2.0))
    molecules = [make_ethanol(), molecule("H2O"), molecule("CH3COOH")]
    state = ts.io.atoms_to_state(molecules, torch.device("cpu"), torch.float64)
    charges = [-1.0, 0.0, 1.0]
    out = TorchSimModel(model, device="cpu", charge=charges)(state)
    for atoms, charge in zip(molecules, charges):
        atoms.info["charge"] = charge
    reference = predict(model, molecules)
    np.testing.assert_allclose(out["energy"].numpy(), [r["energy"] for r in reference], rtol=1e-12)
    np.testing.assert_allclose(out["forces"].numpy(), np.concatenate([r["forces"] for r in reference]), atol=1e-10)
    neutral = TorchSimModel(model, device="cpu")(state)["energy"].numpy()
    assert abs(neutral[0] - out["energy"][0].item()) > 1e-6 and neutral[1] == pytest.approx(out["energy"][1].item())
    with pytest.raises(ValueError, match="one total charge"):
        TorchSimModel(model, device="cpu", charge=[1.0, 0.0])(state)
