"""Neighbor lists: vesin (O(N) cell lists in C++) for any structure, and all intra-molecule
pairs on the device for batches of small open molecules (no host round trip per molecule)."""

from __future__ import annotations

import numpy as np
import torch
from vesin import NeighborList


def neighbor_list(
    positions: np.ndarray,
    cutoff: float,
    cell: np.ndarray | None = None,
    pbc: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Full neighbor list of all pairs closer than ``cutoff``.

    Args:
        positions: [n_atoms, 3] Cartesian positions, Å.
        cutoff: radius, Å.
        cell: [3, 3] lattice vectors as rows, Å (ignored where ``pbc`` is all False).
        pbc: [3] periodicity flags.

    Returns:
        edge_index: [2, n_edges] int64, row 0 = centre atom i, row 1 = neighbor j.
        shifts: [n_edges, 3] float64 Cartesian shift vectors, Å, so that the edge vector is
            ``r_ij = positions[j] - positions[i] + shifts``.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    periodic = bool(pbc is not None and np.any(pbc))
    if periodic and not np.all(pbc):
        # vesin handles only fully periodic or fully open boxes; mixed pbc is rare in molecular
        # work and is better refused than silently treated as fully periodic.
        raise NotImplementedError("mixed periodic boundary conditions are not supported")
    box = np.asarray(cell, dtype=np.float64) if periodic else np.zeros((3, 3))
    calculator = NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shift_cells = calculator.compute(points=positions, box=box, periodic=periodic, quantities="ijS")
    edge_index = np.stack([i, j]).astype(np.int64)
    shifts = shift_cells.astype(np.float64) @ box
    return edge_index, shifts


def dense_candidate_pairs(sizes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """All ordered pairs (i, j), i ≠ j, inside each structure: [2, Σ n_k (n_k − 1)] global indices.

    Args:
        sizes: [K] atoms per structure; offsets: [K] index of each structure's first atom.
    """
    squares = sizes * sizes
    owner = torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device), squares)  # [P]
    start = torch.cumsum(squares, 0) - squares
    local = torch.arange(int(squares.sum()), device=sizes.device) - start[owner]
    a, b = local // sizes[owner], local % sizes[owner]
    keep = a != b
    base = offsets[owner]
    return torch.stack([base[keep] + a[keep], base[keep] + b[keep]])
