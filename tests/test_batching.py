"""Inference batches of open molecules built on the device equal the per-structure graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from torch_geometric.data import Batch

from conftest import make_water_box, random_model
from molequi.data.graph import atoms_to_graph, open_structures_batch, structures_batch
from molequi.errors import InvalidStructureError
from molequi.models import predict

NAMES = ("CH3CH2OH", "H2O", "CH4", "C6H6", "CH3COOH", "C2H2", "HCOOH", "CH3OCH3")


def molecules(seed: int = 0) -> list[Atoms]:
    structures = []
    for k, name in enumerate(NAMES):
        atoms = molecule(name)
        atoms.rattle(0.05, seed=seed + k)
        atoms.translate(np.random.default_rng(k).normal(scale=20.0, size=3))  # far from the origin
        structures.append(atoms)
    return structures


def edge_sets(batch: Batch) -> list[set[tuple[int, int]]]:
    """Edges of each structure, as pairs of local atom indices."""
    ptr = batch.ptr.tolist()
    owner = batch.batch[batch.edge_index[0]].tolist()
    sets: list[set[tuple[int, int]]] = [set() for _ in range(len(ptr) - 1)]
    for (i, j), k in zip(batch.edge_index.t().tolist(), owner):
        sets[k].add((i - ptr[k], j - ptr[k]))
    return sets


@pytest.mark.parametrize("cutoff", [1.2, 2.5, 5.0])
def test_device_batch_has_the_neighbor_list_edges(cutoff):
    structures = molecules()
    fast = open_structures_batch(structures, cutoff)
    reference = Batch.from_data_list([atoms_to_graph(a, cutoff, with_labels=False) for a in structures])
    assert edge_sets(fast) == edge_sets(reference)
    assert torch.equal(fast.ptr, reference.ptr) and torch.equal(fast.batch, reference.batch)
    assert torch.equal(fast.numbers, reference.numbers) and torch.allclose(fast.pos, reference.pos)
    assert fast.num_graphs == len(structures) and fast.shifts.abs().max() == 0


def test_device_batch_carries_each_total_charge():
    """A charge-input model must see each molecule's charge through the fast batch too."""
    structures = molecules()
    structures[1].info["charge"] = -1
    structures[-1].info["charge"] = 2
    fast = open_structures_batch(structures, 5.0)
    reference = Batch.from_data_list([atoms_to_graph(a, 5.0, with_labels=False) for a in structures])
    assert fast.charge.tolist() == reference.charge.tolist() == [a.info.get("charge", 0) for a in structures]


@pytest.mark.parametrize("compute_forces", [False, True])
def test_predictions_through_both_batches_agree(compute_forces):
    model = random_model(properties=(("gap", "intensive"), ("dipole", "dipole")))
    structures = molecules(seed=3)
    cutoff = model.model.config.cutoff
    fast = model(open_structures_batch(structures, cutoff), compute_forces=compute_forces)
    slow = model(Batch.from_data_list([atoms_to_graph(a, cutoff, with_labels=False) for a in structures]),
                 compute_forces=compute_forces)
    for key in slow:
        torch.testing.assert_close(fast[key], slow[key], rtol=1e-10, atol=1e-10, msg=key)


def test_predict_uses_inference_batches_and_keeps_forces():
    model = random_model()
    structures = molecules(seed=5)
    without = predict(model, structures, batch_size=3, compute_forces=False)
    with_forces = predict(model, structures, batch_size=3, compute_forces=True)
    for a, b, atoms in zip(without, with_forces, structures):
        assert a["energy"] == pytest.approx(b["energy"], rel=1e-12)
        assert "forces" not in a and b["forces"].shape == (len(atoms), 3)


def test_periodic_structures_fall_back_to_the_neighbor_list():
    box = make_water_box()
    batch = structures_batch([box, molecule("H2O")], 3.0)
    reference = Batch.from_data_list([atoms_to_graph(a, 3.0, with_labels=False) for a in (box, molecule("H2O"))])
    assert edge_sets(batch) == edge_sets(reference)
    assert batch.shifts.abs().max() > 0  # periodic images kept


@pytest.mark.parametrize("spoil, message", [
    (lambda s: s[2].positions.__setitem__((1, 0), np.nan), "structure 7: non-finite"),
    (lambda s: s[2].positions.__setitem__(1, s[2].positions[0] + 0.05), "structure 7: atoms 0 and 1"),
])
def test_bad_structures_are_named(spoil, message):
    structures = molecules()
    spoil(structures)
    with pytest.raises(InvalidStructureError, match=message):
        open_structures_batch(structures, 5.0, first_index=5)


def test_empty_structure_is_refused():
    with pytest.raises(InvalidStructureError, match="structure 1: empty"):
        open_structures_batch([molecule("H2O"), Atoms()], 5.0)


def test_graph_batch_is_the_one_model_input():
    """A torch-geometric batch becomes one GraphBatch: per-atom fields concatenated, per-structure
    fields (cell, and an optional total charge a reader filled) one row per structure."""
    from molequi.data.batch import GraphBatch
    from molequi.nn.forces import ForceOutput

    graphs = [atoms_to_graph(molecule(name), 4.0, with_labels=False) for name in ("H2O", "CH4")]
    graphs[0].charge, graphs[1].charge = torch.tensor([-1.0]), torch.tensor([0.0])
    batch = GraphBatch.of(Batch.from_data_list(graphs))
    assert batch.num_graphs == 2 and batch.pos.shape == (8, 3) and batch.cell.shape == (2, 3, 3)
    assert batch.batch.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert batch.charge.tolist() == [-1.0, 0.0] and batch.spin is None
    single = GraphBatch.of(graphs[1])
    assert single.num_graphs == 1 and single.batch.tolist() == [0] * 5 and single.cell.shape == (1, 3, 3)

    seen = []

    class Recorder(torch.nn.Module):  # an energy model that sees exactly what ForceOutput hands it
        species = [1, 6, 8]

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

        def forward(self, graph):
            seen.append(graph)
            return {"energies": self.weight * (graph.pos**2).sum(-1)}

    ForceOutput(Recorder())(Batch.from_data_list(graphs))
    assert isinstance(seen[0], GraphBatch) and seen[0].charge.tolist() == [-1.0, 0.0]
