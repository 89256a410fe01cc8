"""CUDA-graph bookkeeping of the batched engine: fixed-capacity neighbor buffers whose padding
changes nothing, and the fallback when a rebuilt list exceeds the capacity (on a CPU the padded
call runs without a capture; the capture itself is checked on a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule

from molequi.md import BatchedMD, Potential, load_models, state_from_atoms
from molequi.md.graphs import PAD_DISTANCE, EdgeBuffers, GraphedForces
from molequi.models import ModelConfig, build_model


@pytest.fixture(scope="module")
def potential():
    torch.manual_seed(3)
    config = ModelConfig(species=[1, 6, 8], cutoff=4.0, channels=8, l_max=1, correlation=2, radial_hidden=[16],
                         avg_num_neighbors=8.0)
    return Potential(load_models(build_model(config, torch.float64).eval()))


def molecules(count: int = 3):
    structures = []
    for seed in range(count):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.05, seed=seed)
        structures.append(atoms)
    return structures


def test_buffers_pad_with_far_edges_and_refuse_what_does_not_fit():
    buffers = EdgeBuffers(5, "cpu")
    edges = torch.tensor([[0, 1, 2], [1, 0, 0]])
    shifts = torch.ones(3, 3, dtype=torch.float64)
    assert buffers.fill(edges, shifts) and buffers.count == 3
    assert buffers.edge_index[:, :3].equal(edges) and buffers.edge_index[:, 3:].eq(0).all()
    assert buffers.shifts[3:, 0].eq(PAD_DISTANCE).all() and buffers.shifts[3:, 1:].eq(0).all()
    assert not buffers.fill(torch.zeros(2, 6, dtype=torch.long), torch.zeros(6, 3, dtype=torch.float64))
    assert buffers.count == 3 and buffers.edge_index[:, :3].equal(edges)  # unchanged
    assert EdgeBuffers.for_edges(100, "cpu").capacity == 150 and EdgeBuffers.for_edges(0, "cpu").capacity == 1
    with pytest.raises(ValueError, match="capacity"):
        EdgeBuffers(0, "cpu")


@pytest.mark.parametrize("ensemble", ["nve", "nvt"])
def test_padded_buffers_give_the_eager_trajectory(potential, ensemble):
    """A small skin rebuilds the list often: every rebuild refills the same buffers."""
    runs = []
    for graphs in (False, True):
        state = state_from_atoms(molecules(), temperature=300.0, friction=0.05, seed=4)
        engine = BatchedMD(potential, state, dt=0.5, ensemble=ensemble, skin=0.05, cuda_graphs=graphs)
        engine.run(25)
        runs.append(engine)
    eager, padded = runs
    assert padded.neighbors.builds > 3 and padded.graphed is not None and padded.graphed.graph is None
    assert padded.graphed.buffers.capacity > padded.graphed.buffers.count  # padding was used
    np.testing.assert_allclose(padded.state.positions, eager.state.positions, atol=1e-10)
    np.testing.assert_allclose(padded.state.forces, eager.state.forces, atol=1e-10)
    np.testing.assert_allclose(padded.total_energy(), eager.total_energy(), atol=1e-10)


def test_a_list_beyond_the_capacity_ends_replay_with_one_warning(potential):
    state = state_from_atoms(molecules(), temperature=300.0, seed=4)
    reference = BatchedMD(potential, state_from_atoms(molecules(), temperature=300.0, seed=4), dt=0.5, skin=0.0)
    engine = BatchedMD(potential, state, dt=0.5, skin=0.0, cuda_graphs=True)  # skin 0: a rebuild every step
    buffers = engine.graphed.buffers
    engine.graphed.buffers = EdgeBuffers(buffers.count - 1, "cpu")  # as if the molecules had grown denser
    with pytest.warns(UserWarning, match="CUDA graph replay ended: the neighbor list grew"):
        engine.run(3)
    assert engine.graphed is None and not engine.cuda_graphs
    reference.run(3)
    np.testing.assert_allclose(engine.state.positions, reference.state.positions, atol=1e-10)


def test_removing_a_system_captures_again(potential):
    structures = molecules()
    state = state_from_atoms(structures, temperature=300.0, seed=0)
    state.positions[(state.batch == 1).nonzero()[0]] = float("nan")  # stopped at once
    engine = BatchedMD(potential, state, dt=0.5, cuda_graphs=True)
    assert engine.state.num_systems == 2
    engine.run(2)
    assert engine.graphed is not None and engine.graphed.positions.shape[0] == engine.state.positions.shape[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_captured_graph_replays_the_eager_forces():
    torch.manual_seed(3)
    config = ModelConfig(species=[1, 6, 8], cutoff=4.0, channels=8, l_max=1, correlation=2, radial_hidden=[16],
                         avg_num_neighbors=8.0)
    potential = Potential(load_models(build_model(config, torch.float64).eval(), device="cuda"))
    runs = []
    for graphs in (False, True):
        state = state_from_atoms(molecules(), temperature=300.0, seed=4)
        engine = BatchedMD(potential, state, dt=0.5, cuda_graphs=graphs)
        engine.run(20)
        runs.append(engine)
    assert isinstance(runs[1].graphed, GraphedForces) and runs[1].graphed.graph is not None
    torch.testing.assert_close(runs[1].state.positions, runs[0].state.positions, atol=1e-9, rtol=0)


def test_cuda_graphs_without_a_gpu_is_a_clear_error(potential, tmp_path):
    from molequi.errors import ConfigError
    from molequi.md.runner import MDSettings, run_md

    with pytest.raises(ConfigError, match="--cuda-graphs needs the batched engine on a CUDA device"):
        run_md(potential, molecules(1), MDSettings(steps=2, dt=0.5), tmp_path / "md", cuda_graphs=True)


def test_the_padded_call_gives_a_charged_system_its_charge():
    torch.manual_seed(5)
    config = ModelConfig(species=[1, 6, 8], cutoff=4.0, channels=8, l_max=1, correlation=2, radial_hidden=[16],
                         avg_num_neighbors=8.0, charge_input=True)
    charged = Potential(load_models(build_model(config, torch.float64).eval()))
    structures = molecules(2)
    structures[1].info["charge"] = 1
    energies = []
    for graphs in (False, True):
        engine = BatchedMD(charged, state_from_atoms(structures, temperature=300.0, seed=4), dt=0.5,
                           cuda_graphs=graphs)
        engine.run(2)
        energies.append(engine.state.energy)
    np.testing.assert_allclose(energies[1], energies[0], atol=1e-10)
