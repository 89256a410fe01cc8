"""The batched MD engine: energy conservation, thermostat, replicas, agreement with ASE,
committees, restarts, safety stops, neighbor lists, the CLI."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import molecule
from ase.md.verlet import VelocityVerlet

from molequi.calculators import MolequiCalculator
from molequi.md import (
    BatchedMD,
    BatchedNeighborList,
    MDOutput,
    Potential,
    gaussian_noise,
    instantaneous_temperature,
    load_models,
    read_log,
    state_from_atoms,
)
from molequi.errors import ConfigError
from molequi.md.state import kinetic_energy
from molequi.models import ModelConfig, build_model, save_model

RMD17 = Path(__file__).resolve().parents[2] / "shared" / "data" / "rmd17" / "rmd17_ethanol_train_01.npz"


def fit_tiny_model(seconds: float = 20.0, n_structures: int = 200) -> torch.nn.Module:
    """Fit a small model to rMD17 ethanol energies and forces for ``seconds`` (float32, Adam),
    then return it in float64 — bound, smooth and good enough to keep ethanol together."""
    from torch_geometric.data import Batch

    from molequi.data.graph import atoms_to_graph
    from molequi.data.readers import read_rmd17

    torch.manual_seed(0)
    frames = read_rmd17(RMD17)[:n_structures]
    energies = np.array([a.get_potential_energy() for a in frames])
    forces_rms = float(np.sqrt(np.mean(np.concatenate([a.get_forces().ravel() for a in frames]) ** 2)))
    config = ModelConfig(
        species=[1, 6, 8], cutoff=4.0, channels=8, l_max=1, correlation=2, radial_hidden=[16],
        avg_num_neighbors=8.0, energy_shift=float(energies.mean() / 9), energy_scale=forces_rms,
    )
    model = build_model(config, torch.float32).train()
    graphs = [atoms_to_graph(a, config.cutoff) for a in frames]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    start, generator = time.perf_counter(), torch.Generator().manual_seed(0)
    while time.perf_counter() - start < seconds:
        for index in torch.randperm(len(graphs), generator=generator).split(10):
            batch = Batch.from_data_list([graphs[i] for i in index])
            out = model(batch)
            loss = ((out["energy"] - batch.energy.float()) / 9 / forces_rms).pow(2).mean() + (
                (out["forces"] - batch.forces.float()) / forces_rms
            ).pow(2).mean() * 10
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if time.perf_counter() - start > seconds:
                break
    return model.eval().to(torch.float64)


@pytest.fixture(scope="session")
def trained_model():
    if not RMD17.exists():
        from conftest import rmd17_missing

        pytest.skip(rmd17_missing(RMD17))
    return fit_tiny_model()


@pytest.fixture(scope="session")
def random_model():
    torch.manual_seed(3)
    config = ModelConfig(species=[1, 6, 8], cutoff=4.0, channels=8, l_max=1, correlation=2, radial_hidden=[16], avg_num_neighbors=8.0)
    return build_model(config, torch.float64).eval()


def ethanol(seed: int = 0) -> Atoms:
    if RMD17.exists():
        from molequi.data.readers import read_rmd17

        atoms = read_rmd17(RMD17)[seed]
        atoms.calc = None
        return atoms
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=seed)
    return atoms


def potential_of(*models) -> Potential:
    return Potential(load_models(list(models)))


# ------------------------------------------------------------------ physics
@pytest.mark.slow
def test_nve_conserves_energy(trained_model):
    """2,000 steps of 0.5 fs in float64 for 4 ethanol systems: bounded drift, no stops."""
    state = state_from_atoms([ethanol(k) for k in range(4)], temperature=300.0, seed=0)
    engine = BatchedMD(potential_of(trained_model), state, dt=0.5, ensemble="nve")
    initial = engine.total_energy().clone()
    totals = []
    for _ in range(20):
        engine.run(100)
        totals.append(engine.total_energy().clone())
    assert engine.stopped == [] and engine.state.step == 2000
    totals = torch.stack(totals)
    n_atoms = 9
    drift = (totals[-1] - initial).abs() / n_atoms  # eV/atom
    fluctuation = engine.max_deviation / n_atoms
    print(f"NVE drift {drift * 1000} meV/atom, max deviation {fluctuation * 1000} meV/atom")
    assert torch.all(drift < 1e-3), drift  # < 1 meV/atom over 1 ps
    assert torch.all(fluctuation < 5e-3), fluctuation
    assert engine.neighbors.builds < 2000


@pytest.mark.slow
def test_langevin_reaches_the_target_temperature(trained_model):
    """Time and replica average of T (3N − 3 degrees of freedom) within 5 % of the target."""
    target = 400.0
    state = state_from_atoms([ethanol(0)] * 16, temperature=100.0, friction=0.1, seed=5)
    state.temperature.fill_(target)
    engine = BatchedMD(potential_of(trained_model), state, dt=0.5, ensemble="nvt")
    engine.run(200)  # equilibrate (1/γ = 10 fs)
    samples = []
    for _ in range(600):
        engine.step()
        samples.append(instantaneous_temperature(engine.state))
    mean = torch.stack(samples).mean()
    assert abs(float(mean) / target - 1) < 0.05, float(mean)
    # the thermostat does not move the centre of mass
    momentum = torch.zeros(16, 3, dtype=torch.float64).index_add_(0, engine.state.batch, engine.state.masses[:, None] * engine.state.velocities)
    assert momentum.abs().max() < 1e-10


def test_noise_is_standard_normal_and_depends_only_on_seed_step_atom():
    state = state_from_atoms([ethanol(0)] * 400, seed=11)
    noise = gaussian_noise(state)
    assert abs(float(noise.mean())) < 0.03 and abs(float(noise.std()) - 1) < 0.03
    state.step += 1
    later = gaussian_noise(state)
    assert abs(float(torch.corrcoef(torch.stack([noise.flatten(), later.flatten()]))[0, 1])) < 0.03
    alone = state_from_atoms([ethanol(0)], seed=11 + 7)
    alone.step = state.step
    np.testing.assert_array_equal(gaussian_noise(alone), later[state.batch == 7])


def test_initial_velocities_have_no_centre_of_mass_motion():
    state = state_from_atoms([ethanol(0), molecule("H2O")], temperature=300.0, seed=1)
    momentum = torch.zeros(2, 3, dtype=torch.float64).index_add_(0, state.batch, state.masses[:, None] * state.velocities)
    assert momentum.abs().max() < 1e-12
    assert torch.all(kinetic_energy(state) > 0)


@pytest.mark.parametrize("ensemble", ["nve", "nvt"])
def test_replicas_equal_separate_runs(random_model, ensemble):
    """System k of a batch with seed s runs exactly as a lone system with seed s + k."""
    structures = [ethanol(0), ethanol(1), ethanol(2)]
    batched = BatchedMD(potential_of(random_model), state_from_atoms(structures, temperature=300.0, friction=0.05, seed=10), dt=0.5, ensemble=ensemble)
    batched.run(30)
    for k, atoms in enumerate(structures):
        alone = BatchedMD(potential_of(random_model), state_from_atoms([atoms], temperature=300.0, friction=0.05, seed=10 + k), dt=0.5, ensemble=ensemble)
        alone.run(30)
        mask = batched.state.batch == k
        np.testing.assert_allclose(batched.state.positions[mask], alone.state.positions, atol=1e-9)
        np.testing.assert_allclose(batched.state.velocities[mask], alone.state.velocities, atol=1e-9)


def test_a_new_ensemble_is_one_registry_line(random_model, monkeypatch):
    """An ensemble registered once runs in both engines and is accepted by the runner's settings."""
    from molequi.md import ENSEMBLES, Ensemble, MDSettings, register
    from molequi.md.ensembles import _ase_verlet
    from molequi.md.integrators import velocity_verlet_step

    calls = []

    def counted_step(state, dt, compute):
        calls.append(dt)
        velocity_verlet_step(state, dt, compute)

    monkeypatch.setitem(ENSEMBLES, "nve", ENSEMBLES["nve"])  # restored afterwards, with the new one removed
    monkeypatch.delitem(ENSEMBLES, "counted", raising=False)
    register(Ensemble("counted", "NVE", "counted velocity Verlet", counted_step, _ase_verlet, thermostatted=False))
    MDSettings(steps=3, dt=0.5, ensemble="counted").validate()
    engine = BatchedMD(potential_of(random_model), state_from_atoms([ethanol(0)], temperature=300.0, seed=1),
                       dt=0.5, ensemble="counted")
    engine.run(3)
    assert calls == [0.5, 0.5, 0.5]
    ENSEMBLES.pop("counted")
    with pytest.raises(ValueError, match="ensemble must be one of nve, nvt"):
        BatchedMD(potential_of(random_model), state_from_atoms([ethanol(0)], temperature=300.0, seed=1),
                  dt=0.5, ensemble="counted")


def test_engine_agrees_with_ase_velocity_verlet(random_model):
    atoms = ethanol(3)
    state = state_from_atoms([atoms], temperature=300.0, seed=4)
    engine = BatchedMD(potential_of(random_model), state, dt=0.5, ensemble="nve")
    atoms.set_velocities(state.velocities.numpy() / units.fs)  # Å/fs -> ASE units
    atoms.calc = MolequiCalculator(random_model)
    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    for _ in range(30):
        dynamics.run(1)
        engine.step()
        np.testing.assert_allclose(engine.state.positions.numpy(), atoms.positions, atol=1e-9)
        np.testing.assert_allclose(engine.state.velocities.numpy(), atoms.get_velocities() * units.fs, atol=1e-9)
        assert float(engine.state.energy[0]) == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
        assert float(kinetic_energy(engine.state)[0]) == pytest.approx(atoms.get_kinetic_energy(), abs=1e-9)


def test_batched_neighbor_list_equals_vesin_including_periodic(random_model):
    from molequi.data.neighbors import neighbor_list

    box = molecule("CH3CH2OH")
    box.set_cell([6.0, 6.5, 7.0])
    box.pbc = True
    structures = [ethanol(0), box, ethanol(1)]
    state = state_from_atoms(structures, seed=0)
    neighbors = BatchedNeighborList(state.batch, state.cell, state.pbc, cutoff=3.0, skin=0.5)
    neighbors.build(state.positions)
    for k, atoms in enumerate(structures):
        start = int((state.batch < k).sum())
        mask = state.batch[neighbors.edge_index[0]] == k
        got = {(int(i) - start, int(j) - start, *np.round(s.numpy(), 6)) for (i, j), s in zip(neighbors.edge_index[:, mask].T, neighbors.shifts[mask])}
        pairs, shifts = neighbor_list(atoms.positions, 3.5, atoms.cell.array, atoms.pbc)
        want = {(int(i), int(j), *np.round(s, 6)) for (i, j), s in zip(pairs.T, shifts)}
        assert got == want
    # the periodic system in the engine gives the calculator's forces
    engine = BatchedMD(potential_of(random_model), state, dt=0.5)
    mask = engine.state.batch == 1
    np.testing.assert_allclose(engine.state.forces[mask].numpy(), MolequiCalculator(random_model).get_forces(box), atol=1e-10)


def test_committee_spread_in_the_engine_and_its_log(random_model, tmp_path):
    torch.manual_seed(4)
    other = build_model(random_model.model.config, torch.float64).eval()
    engine = BatchedMD(potential_of(random_model, other), state_from_atoms([ethanol(0)] * 2, seed=0), dt=0.5)
    output = MDOutput(tmp_path, 2, committee=True, log_every=5, traj_every=0, restart_every=0)
    engine.run(10, [output])
    output.close(plot=False)
    log = read_log(tmp_path / "system_0000.csv")
    assert np.all(log["energy_std_eV"] > 0) and np.all(log["forces_std_max_eV_per_A"] > 0)
    same = BatchedMD(potential_of(random_model, random_model), state_from_atoms([ethanol(0)], seed=0), dt=0.5)
    assert float(same.outputs["energy_std"].abs().max()) == 0.0
    assert float(same.outputs["forces_std"].abs().max()) == 0.0


def test_one_model_logs_empty_spread_columns(random_model, tmp_path):
    """One plain model has no spread estimate: the log's std columns exist and are empty
    (read back as NaN), never 0."""
    engine = BatchedMD(potential_of(random_model), state_from_atoms([ethanol(0)], seed=0), dt=0.5)
    assert "energy_std" not in engine.outputs
    output = MDOutput(tmp_path, 1, log_every=5, traj_every=0, restart_every=0)
    engine.run(5, [output])
    output.close(plot=False)
    header, first = (tmp_path / "system_0000.csv").read_text().splitlines()[:2]
    assert header.endswith("energy_std_eV,forces_std_max_eV_per_A,in_domain") and first.endswith(",,,")
    assert np.all(np.isnan(read_log(tmp_path / "system_0000.csv")["energy_std_eV"]))


# ------------------------------------------------------------------ restarts and safety
def run_with_output(model, folder, steps, resume=False):
    if resume:
        engine, _ = BatchedMD.from_restart(Path(folder) / "restart.safetensors", potential_of(model))
        output = MDOutput(folder, 2, traj_every=4, log_every=2, restart_every=10, resume=True)
    else:
        state = state_from_atoms([ethanol(0), ethanol(5)], temperature=300.0, friction=0.05, seed=3)
        engine = BatchedMD(potential_of(model), state, dt=0.5, ensemble="nvt")
        output = MDOutput(folder, 2, traj_every=4, log_every=2, restart_every=10)
        output(engine)
    engine.run(steps - engine.state.step, [output])
    output.close(plot=False)
    return engine


def test_restart_reproduces_the_uninterrupted_run(random_model, tmp_path):
    whole = run_with_output(random_model, tmp_path / "whole", 40)
    # "killed" at step 27: the last restart point is step 20, files hold rows up to 27
    run_with_output(random_model, tmp_path / "split", 27)
    resumed = run_with_output(random_model, tmp_path / "split", 40, resume=True)
    assert resumed.state.step == 40
    np.testing.assert_array_equal(resumed.state.positions.numpy(), whole.state.positions.numpy())
    np.testing.assert_array_equal(resumed.state.velocities.numpy(), whole.state.velocities.numpy())
    for name in ("system_0000.csv", "system_0001.csv", "system_0000.extxyz"):
        assert (tmp_path / "split" / name).read_text() == (tmp_path / "whole" / name).read_text(), name


def test_safety_stops_broken_systems_and_the_others_continue(random_model):
    collapsed = ethanol(0)
    collapsed.positions[1] = collapsed.positions[0] + [0.3, 0.0, 0.0]
    hot = ethanol(1)
    broken = ethanol(2)
    structures = [ethanol(3), collapsed, hot, broken]
    state = state_from_atoms(structures, temperature=300.0, seed=0)
    state.velocities[state.batch == 2] *= 30.0  # ~270,000 K
    state.positions[(state.batch == 3).nonzero()[0]] = float("nan")
    engine = BatchedMD(potential_of(random_model), state, dt=0.5)
    reasons = {event.system: event.reason for event in engine.stopped}
    assert set(reasons) == {1, 2, 3}
    assert "apart" in reasons[1] and "temperature" in reasons[2] and "non-finite" in reasons[3]
    engine.run(5)
    assert engine.state.num_systems == 1 and engine.state.system_ids.tolist() == [0]
    assert torch.isfinite(engine.state.positions).all()


# ------------------------------------------------------------------ command line
def test_cli_runs_nve_with_replicas_and_resumes(random_model, tmp_path, capsys):
    from ase.io import read, write

    from molequi.cli.main import main

    model_path = save_model(random_model, tmp_path / "model.molequi")
    write(tmp_path / "ethanol.xyz", ethanol(0))
    out = tmp_path / "md"
    args = ["md", str(model_path), str(tmp_path / "ethanol.xyz"), "--steps", "20", "--dt", "0.5", "--replicas", "2",
            "--out", str(out), "--traj-every", "10", "--log-every", "5", "--restart-every", "10", "--no-progress",
            "--min-distance", "0.2"]  # the random model lets two atoms of replica 1 meet at 0.5 Å
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "meV/atom" in printed and "system 1" in printed
    assert (out / "energy.png").exists() and (out / "restart.safetensors").exists()
    assert len(read(out / "system_0001.extxyz", ":")) == 3  # steps 0, 10, 20
    assert main(args[:4] + ["40"] + args[5:] + ["--resume"]) == 0
    assert read_log(out / "system_0000.csv")["step"].tolist() == list(range(0, 41, 5))


def test_cli_ase_engine_and_errors(random_model, tmp_path, capsys):
    from ase.io import write

    from molequi.cli.main import main

    model_path = save_model(random_model, tmp_path / "model.molequi")
    write(tmp_path / "ethanol.xyz", ethanol(0))
    out = tmp_path / "ase"
    assert main(["md", "--model", str(model_path), "--model", str(model_path), str(tmp_path / "ethanol.xyz"), "--steps", "6", "--dt", "0.5",
                 "--engine", "ase", "--ensemble", "nvt", "--out", str(out), "--log-every", "3", "--no-progress"]) == 0
    log = read_log(out / "system_0000.csv")
    assert log["step"].tolist() == [0, 3, 6] and np.all(log["energy_std_eV"] == 0)
    write(tmp_path / "chloro.xyz", molecule("CH3Cl"))
    assert main(["md", str(model_path), str(tmp_path / "chloro.xyz"), "--steps", "2", "--dt", "0.5", "--out", str(out), "--no-progress"]) == 2
    assert "Cl" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_engine_matches_cpu(random_model):
    structures = [ethanol(0), ethanol(1)]
    cpu = BatchedMD(potential_of(random_model), state_from_atoms(structures, seed=0), dt=0.5, ensemble="nvt")
    gpu = BatchedMD(Potential(load_models(random_model, device="cuda")), state_from_atoms(structures, seed=0), dt=0.5, ensemble="nvt")
    cpu.run(20)
    gpu.run(20)
    np.testing.assert_allclose(gpu.state.positions.cpu().numpy(), cpu.state.positions.numpy(), atol=1e-8)


def test_one_runner_both_engines_write_the_same_log(random_model, tmp_path):
    from molequi.md import MDSettings, run_md

    potential = potential_of(random_model)
    for engine in ("batched", "ase"):
        settings = MDSettings(steps=6, dt=0.5, engine=engine, log_every=2, traj_every=3, restart_every=0, progress=False)
        result = run_md(potential, [ethanol(0), ethanol(1)], settings, tmp_path / engine)
        assert not result.stopped and len(result.summary_lines()) == 3
    for k in (0, 1):
        batched, ase = (read_log(tmp_path / engine / f"system_{k:04d}.csv") for engine in ("batched", "ase"))
        assert batched["step"].tolist() == ase["step"].tolist() == [0, 2, 4, 6]
        np.testing.assert_allclose(ase["total_eV"], batched["total_eV"], atol=1e-9)
        np.testing.assert_allclose(ase["temperature_K"], batched["temperature_K"], rtol=1e-9)


@pytest.mark.parametrize("engine", ["batched", "ase"])
def test_md_leaves_the_domain_warns_once_and_can_stop(random_model, tmp_path, engine):
    """With a calibration threshold every system is judged at each logged step: in the domain
    (1) under a generous threshold, out (0) under a tiny one, warned once for the run; with
    stop_out_of_domain the systems stop at their first step out and their last frames are written."""
    import ase.io

    from molequi.md import MDSettings, run_md
    from molequi.models.uncertainty import Calibration, Fit, OutOfDomainWarning

    torch.manual_seed(4)
    other = build_model(random_model.model.config, torch.float64).eval()

    def potential(threshold):
        calibration = Calibration({"forces": Fit("scale", 1.0)}, {"domain": {"threshold": threshold}})
        return Potential(load_models([random_model, other]), calibration=calibration)

    settings = dict(steps=6, dt=0.5, engine=engine, log_every=2, traj_every=0, restart_every=0, progress=False)
    result = run_md(potential(1e6), [ethanol(0), ethanol(1)], MDSettings(**settings), tmp_path / "in")
    assert read_log(tmp_path / "in" / "system_0000.csv")["in_domain"].tolist() == [1, 1, 1, 1]
    assert all(r.left_domain_step is None for r in result.systems)
    with pytest.warns(OutOfDomainWarning, match="left the domain at step 0") as caught:
        result = run_md(potential(1e-9), [ethanol(0), ethanol(1)], MDSettings(**settings), tmp_path / "out")
    assert len([w for w in caught if issubclass(w.category, OutOfDomainWarning)]) == 1
    assert read_log(tmp_path / "out" / "system_0001.csv")["in_domain"].tolist() == [0, 0, 0, 0]
    assert [r.left_domain_step for r in result.systems] == [0, 0] and not result.stopped
    assert "out of the domain: 2 of 2" in "\n".join(result.summary_lines())
    with pytest.warns(OutOfDomainWarning):
        result = run_md(potential(1e-9), [ethanol(0), ethanol(1)], MDSettings(**settings, stop_out_of_domain=True),
                        tmp_path / "stop")
    assert len(result.stopped) == 2 and all("left the domain" in event.reason for event in result.stopped)
    assert read_log(tmp_path / "stop" / "system_0000.csv")["in_domain"].tolist() == [0]  # the step it left
    frames = ase.io.read(tmp_path / "stop" / "out_of_domain.extxyz", ":")
    assert sorted(a.info["system"] for a in frames) == [0, 1] and all(a.info["sigma_forces"] > 1e-9 for a in frames)
    with pytest.raises(ConfigError, match="needs a committee"):
        run_md(potential_of(random_model), [ethanol(0)], MDSettings(**settings, stop_out_of_domain=True), tmp_path / "x")
