"""Bond topology of molecules, and an MD watch that stops a system whose molecule falls apart.

A pair of atoms is bonded when closer than the sum of their covalent radii (Cordero et al., as in
``ase.data.covalent_radii``) plus :data:`BOND_MARGIN`, the convention of Open Babel and Jmol.
Without the margin most bonds are missed: a C–H bond (1.09 Å) is longer than 0.76 + 0.31 Å.

A run fails when a bond of the start structure is stretched or compressed by more than the
tolerance (0.5 Å: a broken bond, the criterion of MD-stability benchmarks) or, optionally, when
two atoms that were not bonded come closer than the sum of their covalent radii (a new bond).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols, covalent_radii
from ase.neighborlist import neighbor_list

from molequi.md.engine import StopEvent
from molequi.md.output import append_frames

BOND_MARGIN = 0.45
"""Å added to the sum of two covalent radii below which a pair counts as bonded."""

BOND_TOLERANCE = 0.5
"""Å a bond may deviate from its start length before the run counts as broken."""

BROKEN_BONDS_FILE = "broken_bonds.extxyz"
"""Where a :class:`BondWatch` given a folder writes each stopped system's last frame."""


def bonded_pairs(atoms: Atoms, margin: float = BOND_MARGIN) -> np.ndarray:
    """[B, 2] bonded atom pairs (i < j, sorted by i then j) of a molecule: distance < r_i + r_j +
    ``margin`` (Å)."""
    radii = covalent_radii[atoms.numbers] + margin / 2  # neighbor_list pairs i, j within c_i + c_j
    i, j = neighbor_list("ij", atoms, radii, self_interaction=False)
    keep = i < j
    order = np.lexsort((j[keep], i[keep]))  # neighbor_list's order within a centre is its own
    return np.stack([i[keep][order], j[keep][order]], axis=1).astype(np.int64).reshape(-1, 2)


class BondTopology:
    """The bonds of a start structure and the test of a later geometry against them.

    Args:
        atoms: the start structure (positions, Å).
        tolerance: how far (Å) a bond length may deviate from its start value.
        new_bonds: also fail when two unbonded atoms come closer than the sum of their covalent
            radii.
    """

    def __init__(self, atoms: Atoms, tolerance: float = BOND_TOLERANCE, new_bonds: bool = True) -> None:
        if atoms.pbc.any():
            raise ValueError("the bond watch is for molecules: positions are compared without a periodic cell")
        self.symbols = [chemical_symbols[z] for z in atoms.numbers]
        self.bonds = bonded_pairs(atoms)
        self.lengths = self.bond_lengths(atoms.positions)
        self.tolerance = tolerance
        self.closest: np.ndarray | None = None
        if new_bonds:
            radii = covalent_radii[atoms.numbers]
            closest = radii[:, None] + radii[None]
            np.fill_diagonal(closest, 0.0)
            closest[self.bonds[:, 0], self.bonds[:, 1]] = closest[self.bonds[:, 1], self.bonds[:, 0]] = 0.0
            self.closest = closest  # [N, N] Å; 0 where a pair is exempt

    def bond_lengths(self, positions: np.ndarray) -> np.ndarray:
        """[B] lengths (Å) of the start structure's bonds at ``positions``."""
        return np.linalg.norm(positions[self.bonds[:, 1]] - positions[self.bonds[:, 0]], axis=1)

    def failure(self, positions: np.ndarray) -> str | None:
        """Why ``positions`` (Å, [N, 3]) break the molecule, or None when they do not."""
        if len(self.bonds):
            deviation = self.bond_lengths(positions) - self.lengths
            worst = int(np.argmax(np.abs(deviation)))
            if abs(deviation[worst]) > self.tolerance:
                i, j = self.bonds[worst]
                return (f"bond {self.symbols[i]}{i}–{self.symbols[j]}{j} "
                        f"{'stretched' if deviation[worst] > 0 else 'compressed'} by {abs(deviation[worst]):.2f} Å")
        if self.closest is not None:
            distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
            close = np.argwhere(distances < self.closest)
            if len(close):
                i, j = sorted(close[0].tolist())
                return f"new bond {self.symbols[i]}{i}–{self.symbols[j]}{j} ({distances[i, j]:.2f} Å)"
        return None


class BondWatch:
    """An MD observer for either engine: every ``every`` steps, stop each system whose molecule
    broke (see :class:`BondTopology`), with the reason as its :class:`StopEvent`.

    Args:
        starts: the start structure of each system, in system order (``state.system_ids``).
        tolerance: bond-length deviation (Å) that counts as broken.
        new_bonds: also stop a system when a new bond forms.
        every: check interval in steps.
        folder: if given, the last frame of each stopped system is appended to
            ``folder/broken_bonds.extxyz`` (``info['reason']`` says what broke).
    """

    def __init__(self, starts: Sequence[Atoms], tolerance: float = BOND_TOLERANCE, new_bonds: bool = True,
                 every: int = 10, folder: str | Path | None = None) -> None:
        self.topologies = [BondTopology(atoms, tolerance, new_bonds) for atoms in starts]
        self.every = every
        self.path = Path(folder) / BROKEN_BONDS_FILE if folder is not None else None
        self.failures: dict[int, tuple[float, str]] = {}  # system -> (time fs, reason)

    def __call__(self, engine) -> None:
        state = engine.state
        if state.step % self.every or state.num_systems == 0:
            return
        positions = state.positions.detach().cpu().numpy()
        batch = state.batch.cpu().numpy()
        broken = torch.zeros(state.num_systems, dtype=torch.bool)
        events, reasons = [], {}
        for slot, system in enumerate(state.system_ids.tolist()):
            reason = self.topologies[system].failure(positions[batch == slot])
            if reason is not None:
                broken[slot] = True
                reasons[slot] = {"reason": reason}
                self.failures[system] = (engine.time, reason)
                events.append(StopEvent(system, state.step, reason))
        if events:
            if self.path is not None:  # before the stop takes the systems out of the state
                append_frames(engine, list(reasons), self.path, reasons)
            engine.stop_systems(broken.to(state.positions.device), events)
