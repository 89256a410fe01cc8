"""The one model input: a batch of structures as plain tensors.

Every path into a model — the trainer, ``predict``, the ASE calculator, the batched MD engine,
torch-sim, the screening scorer — hands the network one :class:`GraphBatch`. A new input (a
total charge, a spin, a field) is a field here, filled by the reader that knows it and read by
the layer that uses it; nothing in between threads it through.

A ``torch_geometric`` ``Batch`` (what the data loaders and :func:`molequi.data.graph.atoms_to_graph`
make) becomes a :class:`GraphBatch` with :meth:`GraphBatch.of`; the calculator and the MD engine
build one directly and keep it on the device between steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class GraphBatch:
    """A batch of S structures with N atoms and E edges in all (one disconnected graph).

    Attributes:
        pos: [N, 3] positions, Å (float64 preferred: the model forms edge vectors in this dtype).
        numbers: [N] atomic numbers (int64).
        edge_index: [2, E] row 0 = centre atom i, row 1 = neighbor j.
        shifts: [E, 3] periodic image shifts, Å, so that r_ij = pos[j] - pos[i] + shifts.
        batch: [N] index of the structure of each atom (int64).
        num_graphs: S, the number of structures (a Python int: sizes of pooled outputs).
        cell: [S, 3, 3] lattice vectors as rows, Å (zeros for a structure in open space).
        charge: [S] total charge, e, or None when the data carries none (neutral).
        spin: [S] spin multiplicity 2S+1, or None when the data carries none.
    """

    pos: torch.Tensor
    numbers: torch.Tensor
    edge_index: torch.Tensor
    shifts: torch.Tensor
    batch: torch.Tensor
    num_graphs: int
    cell: torch.Tensor
    charge: torch.Tensor | None = None
    spin: torch.Tensor | None = None

    @classmethod
    def of(cls, graph: Any) -> GraphBatch:
        """The :class:`GraphBatch` of a ``torch_geometric`` ``Data``/``Batch`` (or itself).

        A single ``Data`` (no ``batch`` vector) is one structure; optional fields absent from
        ``graph`` stay None."""
        if isinstance(graph, GraphBatch):
            return graph
        numbers = graph.numbers
        batch = getattr(graph, "batch", None)
        num_graphs = int(graph.num_graphs) if batch is not None and hasattr(graph, "num_graphs") else 1
        cell = getattr(graph, "cell", None)
        if cell is None:
            cell = torch.zeros(num_graphs, 3, 3, dtype=torch.float64, device=numbers.device)
        return cls(
            pos=graph.pos,
            numbers=numbers,
            edge_index=graph.edge_index,
            shifts=graph.shifts,
            batch=batch if batch is not None else torch.zeros_like(numbers),
            num_graphs=num_graphs,
            cell=cell.reshape(-1, 3, 3),
            charge=getattr(graph, "charge", None),
            spin=getattr(graph, "spin", None),
        )

    def replace(self, **changes: Any) -> GraphBatch:
        """A copy with some fields replaced (the tensors themselves are shared, not copied)."""
        return dataclasses.replace(self, **changes)
