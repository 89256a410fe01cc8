"""Neighbor lists with a skin, reused between MD steps.

A list built with radius ``cutoff + skin`` stays valid (holds every pair closer than ``cutoff``)
until some atom has moved more than ``skin / 2`` from where it was at the build: two atoms can
then have approached each other by at most ``skin``. Pairs between ``cutoff`` and
``cutoff + skin`` cost a little work but contribute exactly zero energy.

* :class:`SkinNeighborList` — one structure, host side, vesin (the ASE calculator).
* :class:`BatchedNeighborList` — many structures on the device (the batched engine): open
  molecules use all intra-molecule pairs (block-diagonal, built once) filtered by distance at
  each rebuild; periodic or very large structures go through vesin on the host at a rebuild.
"""

from __future__ import annotations

import numpy as np
import torch

from molequi.data.neighbors import dense_candidate_pairs, neighbor_list

MAX_DENSE_ATOMS = 1024
"""Open structures up to this many atoms use the on-device all-pairs candidate list (n² pairs)."""


class SkinNeighborList:
    """Verlet list of one structure (numpy, vesin), rebuilt only when needed.

    Args:
        cutoff: the potential's cutoff, Å.
        skin: extra radius, Å; the list is rebuilt when an atom moved more than skin / 2.
    """

    def __init__(self, cutoff: float, skin: float = 1.0) -> None:
        if skin < 0:
            raise ValueError(f"skin must be ≥ 0 Å, got {skin}")
        self.cutoff, self.skin = float(cutoff), float(skin)
        self.reference: np.ndarray | None = None  # [n_atoms, 3] positions at the last build, Å
        self.cell: np.ndarray | None = None
        self.pbc: np.ndarray | None = None
        self.edge_index: np.ndarray | None = None  # [2, n_edges]
        self.shifts: np.ndarray | None = None  # [n_edges, 3] Å
        self.builds = 0

    def needs_rebuild(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> bool:
        if self.reference is None or self.reference.shape != positions.shape:
            return True
        if not (np.array_equal(cell, self.cell) and np.array_equal(pbc, self.pbc)):
            return True
        displacement2 = np.einsum("ij,ij->i", positions - self.reference, positions - self.reference)
        return bool(displacement2.max(initial=0.0) > (0.5 * self.skin) ** 2)

    def update(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> bool:
        """Rebuild if needed; returns whether it did. ``cell`` [3, 3] Å, ``pbc`` [3] bool."""
        if not self.needs_rebuild(positions, cell, pbc):
            return False
        self.edge_index, self.shifts = neighbor_list(positions, self.cutoff + self.skin, cell, pbc)
        self.reference = positions.copy()
        self.cell, self.pbc = np.array(cell, copy=True), np.array(pbc, copy=True)
        self.builds += 1
        return True


class BatchedNeighborList:
    """Neighbor list of a batch of independent structures, rebuilt on the device with a skin.

    Args:
        batch: [N] structure index of each atom (atoms of a structure are contiguous).
        cell: [S, 3, 3] Å; pbc: [S, 3] bool (each structure fully periodic or fully open).
        cutoff, skin: Å.
    """

    def __init__(
        self, batch: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, cutoff: float, skin: float = 1.0
    ) -> None:
        if skin < 0:
            raise ValueError(f"skin must be ≥ 0 Å, got {skin}")
        self.cutoff, self.skin = float(cutoff), float(skin)
        self.device = batch.device
        num_graphs = cell.shape[0]
        self.sizes = torch.bincount(batch, minlength=num_graphs)  # [S]
        self.offsets = torch.cumsum(self.sizes, 0) - self.sizes  # [S]
        self.cell, self.pbc = cell, pbc
        periodic = pbc.any(dim=1)
        dense = ~periodic & (self.sizes <= MAX_DENSE_ATOMS)
        # Host-side (vesin) structures: periodic ones and large open ones.
        self.host_systems = torch.nonzero(~dense).flatten().tolist()
        dense_ids = torch.nonzero(dense).flatten()
        self.candidates = dense_candidate_pairs(self.sizes[dense_ids], self.offsets[dense_ids])  # [2, P]
        self.reference: torch.Tensor | None = None  # [N, 3] positions at the last build, Å
        self.edge_index = torch.empty(2, 0, dtype=torch.long, device=self.device)
        self.shifts = torch.empty(0, 3, dtype=torch.float64, device=self.device)
        self.builds = 0

    def needs_rebuild(self, positions: torch.Tensor) -> torch.Tensor:
        """0-d bool tensor on the device: has any atom moved more than skin / 2 since the build?"""
        if self.reference is None:
            return torch.ones((), dtype=torch.bool, device=self.device)
        displacement2 = ((positions - self.reference) ** 2).sum(-1)
        return displacement2.max() > (0.5 * self.skin) ** 2

    def build(self, positions: torch.Tensor) -> None:
        """Rebuild from ``positions`` [N, 3] Å (float64)."""
        radius2 = (self.cutoff + self.skin) ** 2
        i, j = self.candidates
        close = ((positions[j] - positions[i]) ** 2).sum(-1) < radius2
        edges = [self.candidates[:, close]]
        shifts = [torch.zeros(edges[0].shape[1], 3, dtype=torch.float64, device=self.device)]
        for system in self.host_systems:
            start, size = int(self.offsets[system]), int(self.sizes[system])
            cell = self.cell[system].detach().cpu().numpy()
            pbc = self.pbc[system].detach().cpu().numpy()
            local, shift = neighbor_list(positions[start : start + size].detach().cpu().numpy(), self.cutoff + self.skin, cell, pbc)
            edges.append(torch.from_numpy(local).to(self.device) + start)
            shifts.append(torch.from_numpy(shift).to(self.device))
        self.edge_index = torch.cat(edges, dim=1)
        self.shifts = torch.cat(shifts)
        self.reference = positions.detach().clone()
        self.builds += 1
