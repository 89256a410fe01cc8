"""Neighbor lists: vesin (O(N) cell lists in C++) for periodic structures, all pairs or a k-d
tree (scipy) for open ones, and all intra-molecule pairs on the device for batches of small
open molecules (no host round trip per molecule).

Why open structures do not go through vesin: its cell list spans the bounding box, so one atom
far from the others (a typo of 1e6 Å in a file) makes it divide by zero (SIGFPE, the process
dies without a message) or allocate and scan millions of cells for seconds. All pairs (small
molecules, faster than any cell list) and a k-d tree (large ones) do not depend on the extent.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from vesin import NeighborList

from molequi.errors import InvalidStructureError

DENSE_MAX_ATOMS = 64
"""Open structures up to this many atoms are searched by all pairs, larger ones by a k-d tree."""
MAX_PAIRS = 50_000_000
"""A periodic cell expected to give more neighbor pairs than this (~3 GB of edges) is refused."""
MIN_CELL_HEIGHT = 1e-2
"""Å: a periodic cell thinner than this in some direction is degenerate (zero volume)."""


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

    Raises:
        InvalidStructureError: non-finite positions or cell, mixed periodicity, or a degenerate
            or absurdly small periodic cell (checked before the search, which would crash on it).
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise InvalidStructureError(f"positions must have shape (n_atoms, 3), got {positions.shape}")
    if not np.all(np.isfinite(positions)):
        raise InvalidStructureError("non-finite (NaN/inf) coordinates")
    if not (math.isfinite(cutoff) and cutoff > 0):
        raise InvalidStructureError(f"neighbor cutoff must be a finite number > 0 Å, got {cutoff}")
    flags = np.zeros(3, dtype=bool) if pbc is None else np.asarray(pbc, dtype=bool).reshape(-1)
    if flags.any() and not flags.all():
        # vesin handles only fully periodic or fully open boxes; mixed pbc is rare in molecular
        # work and is better refused than silently treated as fully periodic.
        raise InvalidStructureError(f"mixed periodic boundary conditions (pbc={flags.tolist()}) are not supported: "
                                    "use a fully periodic or a fully open structure")
    if not flags.any():
        return open_neighbor_list(positions, cutoff)
    box = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    check_cell(box, len(positions), cutoff)
    calculator = NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shift_cells = calculator.compute(points=positions, box=box, periodic=True, quantities="ijS")
    edge_index = np.stack([i, j]).astype(np.int64)
    shifts = shift_cells.astype(np.float64) @ box
    return edge_index, shifts


def check_cell(cell: np.ndarray, n_atoms: int, cutoff: float) -> None:
    """Raise :class:`InvalidStructureError` for a periodic cell no neighbor search can use:
    non-finite, degenerate (a height below :data:`MIN_CELL_HEIGHT` Å) or so small for its atoms
    and ``cutoff`` that the list would exceed :data:`MAX_PAIRS` pairs."""
    if not np.all(np.isfinite(cell)):
        raise InvalidStructureError("non-finite cell (NaN/inf lattice vectors)")
    volume = abs(float(np.linalg.det(cell)))
    areas = [np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) for k in range(3)]
    heights = [volume / area if area > 0 else 0.0 for area in areas]
    if min(heights) < MIN_CELL_HEIGHT:
        raise InvalidStructureError(f"degenerate periodic cell (volume {volume:.3g} Å³, thinnest height "
                                    f"{min(heights):.3g} Å): give three independent lattice vectors, or pbc=False")
    expected = n_atoms * n_atoms * (4.0 / 3.0) * math.pi * cutoff**3 / volume
    if expected > MAX_PAIRS:
        raise InvalidStructureError(f"periodic cell of {volume:.3g} Å³ holds {n_atoms} atoms: a {cutoff:g} Å search "
                                    f"would give ~{expected:.2g} neighbor pairs; the cell is probably in the wrong "
                                    "units or too small")


def open_neighbor_list(positions: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`neighbor_list` of an open structure (no periodic images): all pairs for small
    structures, scipy's k-d tree for large ones; both independent of the spatial extent."""
    n = len(positions)
    if n <= DENSE_MAX_ATOMS:
        with np.errstate(over="ignore"):  # an atom 1e200 Å away: inf, simply not a neighbor
            distance2 = ((positions[:, None, :] - positions[None, :, :]) ** 2).sum(-1)
        close = distance2 < cutoff * cutoff
        np.fill_diagonal(close, False)
        i, j = np.nonzero(close)
    else:
        from scipy.spatial import cKDTree

        pairs = cKDTree(positions).query_pairs(cutoff, output_type="ndarray")
        with np.errstate(over="ignore"):
            lengths2 = ((positions[pairs[:, 1]] - positions[pairs[:, 0]]) ** 2).sum(-1)
        pairs = pairs[lengths2 < cutoff * cutoff]
        both = np.concatenate([pairs, pairs[:, ::-1]])
        both = both[np.lexsort((both[:, 1], both[:, 0]))]
        i, j = both[:, 0], both[:, 1]
    edge_index = np.stack([i, j]).astype(np.int64)
    return edge_index, np.zeros((edge_index.shape[1], 3), dtype=np.float64)


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
