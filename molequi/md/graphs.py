"""CUDA graphs for the batched engine's force call: fixed-capacity neighbor buffers, one capture,
a replay per step.

A GPU step of a few small molecules is launch-bound: hundreds of tiny kernels, each costing more
to launch than to run. A CUDA graph records them once and replays them with one launch, but only
over tensors whose addresses and shapes never change. So the neighbor list goes into buffers of
a fixed capacity (:class:`EdgeBuffers`), padded with edges that contribute exactly nothing: a
pad is a self-pair of atom 0 shifted :data:`PAD_DISTANCE` Å away, far beyond any cutoff, where
the envelope (and its derivative) is exactly zero and the radial MLP has no bias, so energies,
forces and the safety check's shortest distance are those of the unpadded list. The list is
still rebuilt on the Verlet skin; a rebuild that needs more than the capacity ends the replay,
and the engine evaluates eagerly from then on (:attr:`GraphedForces.fallback` says why).

Capture needs a GPU; on a CPU :class:`GraphedForces` runs the same padded call directly, so the
bookkeeping is exercised (and tested) without one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

PAD_DISTANCE = 1000.0
"""Length of a padding edge, Å: beyond any cutoff, so the edge contributes exactly zero."""
HEADROOM = 1.5
"""Capacity over the edge count at capture: room for the list to grow as molecules move."""


class EdgeBuffers:
    """Neighbor-list tensors of a fixed capacity, refilled in place at each rebuild.

    Args:
        capacity: edges the buffers hold.
        device: where they live.
    """

    def __init__(self, capacity: int, device: torch.device | str) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be ≥ 1 edge, got {capacity}")
        self.capacity = int(capacity)
        self.edge_index = torch.zeros(2, self.capacity, dtype=torch.long, device=device)  # [2, C]
        self.shifts = torch.zeros(self.capacity, 3, dtype=torch.float64, device=device)  # [C, 3], Å
        self.count = 0  # real edges in the buffers

    @classmethod
    def for_edges(cls, n_edges: int, device: torch.device | str, headroom: float = HEADROOM) -> EdgeBuffers:
        """Buffers for ``n_edges`` edges and ``headroom`` times as many (at least one more)."""
        return cls(max(n_edges + 1, math.ceil(n_edges * headroom)), device)

    def fits(self, n_edges: int) -> bool:
        return n_edges <= self.capacity

    def fill(self, edge_index: torch.Tensor, shifts: torch.Tensor) -> bool:
        """Copy a neighbor list ([2, E] and [E, 3] Å) in, padding the rest; False (buffers
        unchanged) when E exceeds the capacity."""
        n_edges = edge_index.shape[1]
        if not self.fits(n_edges):
            return False
        self.edge_index[:, :n_edges].copy_(edge_index)
        self.edge_index[:, n_edges:].zero_()
        self.shifts[:n_edges].copy_(shifts)
        self.shifts[n_edges:].zero_()
        self.shifts[n_edges:, 0] = PAD_DISTANCE
        self.count = n_edges
        return True


def cuda_graphs_available(device: torch.device | str) -> bool:
    """Whether ``device`` can capture CUDA graphs (a CUDA device of a CUDA build)."""
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


class GraphedForces:
    """``call(positions) -> outputs`` of a force call over fixed buffers, replayed as a CUDA graph.

    Args:
        function: ``function(positions, edge_index, shifts) -> dict`` of tensors (the potential on
            the engine's graph); it is captured once, so it must take no host decision that
            depends on the values (the compiled call takes none).
        positions: [N, 3] Å, the current positions (the number of atoms is fixed by them).
        edge_index, shifts: the current neighbor list.
        capture: record a CUDA graph (default: when the device can); otherwise each call runs
            ``function`` on the padded buffers (the same results, for CPUs and tests).
    """

    def __init__(
        self,
        function: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
        positions: torch.Tensor,
        edge_index: torch.Tensor,
        shifts: torch.Tensor,
        capture: bool | None = None,
    ) -> None:
        self.function = function
        self.positions = positions.detach().clone()  # the static input
        self.buffers = EdgeBuffers.for_edges(edge_index.shape[1], positions.device)
        self.buffers.fill(edge_index, shifts)
        self.fallback: str | None = None  # why replay ended, once it did
        self.graph = None
        self.outputs: dict[str, torch.Tensor] = {}
        self.replays = 0
        if capture if capture is not None else cuda_graphs_available(positions.device):
            try:
                self._capture()
            except RuntimeError as error:  # a host sync in the call (e.g. a run-time baseline) cannot be captured
                self.graph, self.outputs = None, {}
                self.fallback = f"the force call cannot be captured ({str(error).strip().splitlines()[0][:200]})"

    def _capture(self) -> None:
        """Warm up on a side stream (CUDA's rule before a capture), then record one call."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self.function(self.positions, self.buffers.edge_index, self.buffers.shifts)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self.function(self.positions, self.buffers.edge_index, self.buffers.shifts)

    @property
    def active(self) -> bool:
        return self.fallback is None

    def rebuilt(self, edge_index: torch.Tensor, shifts: torch.Tensor) -> bool:
        """Take a rebuilt neighbor list; False (and replay ends for good) when it exceeds the capacity."""
        if self.fallback is not None:
            return False
        if not self.buffers.fill(edge_index, shifts):
            self.fallback = (f"the neighbor list grew to {edge_index.shape[1]} edges, beyond the "
                             f"{self.buffers.capacity} the graph was captured with")
            self.graph = None
            return False
        return True

    def __call__(self, positions: torch.Tensor) -> dict[str, torch.Tensor]:
        """The outputs at ``positions`` [N, 3] Å (the graph's own tensors: read or copy them
        before the next call)."""
        self.positions.copy_(positions)
        self.replays += 1
        if self.graph is None:
            return self.function(self.positions, self.buffers.edge_index, self.buffers.shifts)
        self.graph.replay()
        return self.outputs
