"""The atomic-graph record: one structure as a ``torch_geometric.data.Data``.

A batch is one large disconnected graph (torch-geometric's design), so every consumer — the
trainer, the ASE calculator, the MD engine and the screening scorer — goes through
``ase.Atoms -> atoms_to_graph -> model``.

Fields of a graph (per structure; a batch concatenates them):

=================  ==================  ==============================================
field              shape               meaning, unit
=================  ==================  ==============================================
``pos``            [n_atoms, 3]        Cartesian positions, Å (float64)
``numbers``        [n_atoms]           atomic numbers (int64)
``cell``           [1, 3, 3]           lattice vectors as rows, Å (zeros if open)
``pbc``            [1, 3]              periodicity flags (bool)
``edge_index``     [2, n_edges]        row 0 = centre atom i, row 1 = neighbor j
``shifts``         [n_edges, 3]        r_ij = pos[j] - pos[i] + shifts, Å
``charge``         [1]                 total charge, e (``atoms.info["charge"]``, else 0)
``energy``         [1]                 total energy label, eV (optional)
``forces``         [n_atoms, 3]        force labels, eV/Å (optional)
``<property>``     [1, k]              graph-level labels such as ``gap`` (eV) or ``dipole`` (e·Å)
=================  ==================  ==============================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Batch, Data

from molequi.data.labels import structure_labels, total_charge  # re-exported: graphs carry these labels
from molequi.data.neighbors import check_cell, dense_candidate_pairs, neighbor_list
from molequi.errors import DataFormatError, InvalidStructureError

MIN_DISTANCE = 0.1
#: Radius (Å) of the neighbor search behind the close-contact check.  vesin's cells are as wide
#: as its cutoff: a search at 0.1 Å builds ~10⁶ cells for a 10 Å molecule (8 ms a molecule,
#: measured), at 1 Å ~10³ (0.14 ms); the few pairs below 1 Å are then filtered by distance.
CONTACT_SEARCH_RADIUS = 1.0
"""Two atoms closer than this (Å) are treated as a broken structure, not as physics."""


def validate_atoms(atoms: Atoms, name: str = "structure", check_contacts: bool = True) -> None:
    """Raise :class:`InvalidStructureError` if ``atoms`` cannot be a physical structure.

    Checks: at least one atom, finite coordinates (and cell), atomic numbers in 1..118, and (with
    ``check_contacts``) no pair of atoms closer than :data:`MIN_DISTANCE` Å (including periodic
    images).
    """
    if len(atoms) == 0:
        raise InvalidStructureError(f"{name}: empty structure (no atoms)")
    positions = atoms.get_positions()
    if not np.all(np.isfinite(positions)):
        bad = np.flatnonzero(~np.all(np.isfinite(positions), axis=1))
        raise InvalidStructureError(f"{name}: non-finite (NaN/inf) coordinates on atom(s) {bad[:10].tolist()}")
    numbers = atoms.get_atomic_numbers()
    if np.any(numbers < 1) or np.any(numbers > 118):
        raise InvalidStructureError(f"{name}: atomic numbers must be in 1..118, got {sorted(set(numbers.tolist()))}")
    if np.any(atoms.pbc):
        if not np.all(atoms.pbc):
            raise InvalidStructureError(f"{name}: mixed periodic boundary conditions (pbc={atoms.pbc.tolist()}) are "
                                        "not supported: use a fully periodic or a fully open structure")
        try:
            check_cell(atoms.cell.array, len(atoms), CONTACT_SEARCH_RADIUS)
        except InvalidStructureError as error:
            raise InvalidStructureError(f"{name}: {error}") from None
    if check_contacts and len(atoms) > 1:
        edge_index, shifts = neighbor_list(positions, CONTACT_SEARCH_RADIUS, atoms.cell.array, atoms.pbc)
        check_close_contacts(positions, edge_index, shifts, name)


def check_close_contacts(positions: np.ndarray, edge_index: np.ndarray, shifts: np.ndarray,
                         name: str = "structure") -> None:
    """Raise :class:`InvalidStructureError` if an edge of a neighbor list (positions and shifts
    in Å, any cutoff ≥ :data:`MIN_DISTANCE`) is shorter than :data:`MIN_DISTANCE` Å."""
    if edge_index.shape[1] == 0:
        return
    i, j = edge_index
    distances = np.linalg.norm(positions[j] - positions[i] + shifts, axis=1)
    close = np.flatnonzero(distances < MIN_DISTANCE)
    if close.size:
        k = close[0]
        raise InvalidStructureError(
            f"{name}: atoms {i[k]} and {j[k]} are {distances[k]:.3f} Å apart (closer than {MIN_DISTANCE} Å)"
        )


def atoms_to_graph(
    atoms: Atoms,
    cutoff: float,
    *,
    with_labels: bool = True,
    properties: Mapping[str, float | np.ndarray] | None = None,
    name: str = "structure",
    validate: bool = True,
) -> Data:
    """Convert one ``ase.Atoms`` into an atomic graph with a ``cutoff`` (Å) neighbor list.

    Args:
        atoms: the structure (positions Å).
        cutoff: neighbor-list radius, Å.
        with_labels: attach the energy/forces labels found on ``atoms`` (see
            :func:`structure_labels`); missing labels are simply left out.
        properties: extra graph-level labels, stored as ``[1, k]`` float64 tensors.
        name: how to refer to the structure in error messages.
        validate: run :func:`validate_atoms` first.
    """
    if validate:  # close contacts are found in the graph's own neighbor list below
        validate_atoms(atoms, name, check_contacts=cutoff < MIN_DISTANCE)
    positions = atoms.get_positions()
    cell = atoms.cell.array if np.any(atoms.pbc) else np.zeros((3, 3))
    edge_index, shifts = neighbor_list(positions, cutoff, cell, atoms.pbc)
    if validate and cutoff >= MIN_DISTANCE:
        check_close_contacts(positions, edge_index, shifts, name)
    graph = Data(
        pos=torch.tensor(positions, dtype=torch.float64),
        numbers=torch.tensor(atoms.get_atomic_numbers(), dtype=torch.long),
        cell=torch.tensor(cell, dtype=torch.float64).unsqueeze(0),
        pbc=torch.tensor(np.asarray(atoms.pbc, dtype=bool)).unsqueeze(0),
        edge_index=torch.from_numpy(edge_index),
        shifts=torch.from_numpy(shifts),
        charge=torch.tensor([total_charge(atoms, name)], dtype=torch.float64),
    )
    if with_labels:
        energy, forces = structure_labels(atoms)
        if energy is not None:
            graph.energy = torch.tensor([energy], dtype=torch.float64)
        if forces is not None:
            if forces.shape != (len(atoms), 3):
                raise DataFormatError(f"{name}: forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
            graph.forces = torch.tensor(forces, dtype=torch.float64)
    for key, value in (properties or {}).items():
        try:
            graph[key] = torch.as_tensor(np.asarray(value, dtype=np.float64)).reshape(1, -1)
        except (TypeError, ValueError):
            raise DataFormatError(f"{name}: the '{key}' label {value!r} is not a number") from None
    if with_labels or properties:
        from molequi.validation import check_labels

        check_labels(name, len(atoms), energy=float(graph.energy) if "energy" in graph else None,
                     forces=graph.forces.numpy() if "forces" in graph else None,
                     properties={key: graph[key].numpy() for key in (properties or {})})
    return graph


#: Open structures up to this many atoms are batched by :func:`open_structures_batch`.
MAX_DEVICE_BATCH_ATOMS = 256


def device_batchable(structures: Sequence[Atoms]) -> bool:
    """Whether every structure is open (no periodic direction) and small enough for
    :func:`open_structures_batch`."""
    return all(0 < len(a) <= MAX_DEVICE_BATCH_ATOMS and not np.any(a.pbc) for a in structures)


def open_structures_batch(
    structures: Sequence[Atoms], cutoff: float, device: torch.device | str = "cpu", first_index: int = 0
) -> Batch:
    """Batch of open molecules whose edges are found on ``device`` from all intra-molecule pairs.

    The same graphs (up to edge order) and the same checks as
    ``Batch.from_data_list([atoms_to_graph(a, cutoff, with_labels=False) ...])``, without a
    neighbor-list call and a dozen small tensors per molecule on the host: ~0.4 ms a molecule
    there, the limit of GPU scoring.  For screening-sized molecules (≤ 256 atoms) the n² pairs are
    cheap.  Errors name the structure as ``structure {first_index + k}``.
    """
    if not structures:
        raise InvalidStructureError("no structures to batch")
    for k, a in enumerate(structures):
        if len(a) == 0:
            raise InvalidStructureError(f"structure {first_index + k}: empty structure (no atoms)")
    sizes_np = np.array([len(a) for a in structures], dtype=np.int64)
    owner_np = np.repeat(np.arange(len(structures)), sizes_np)
    positions = np.concatenate([a.positions for a in structures]).astype(np.float64)
    numbers = np.concatenate([a.numbers for a in structures]).astype(np.int64)
    finite = np.isfinite(positions).all(axis=1)
    if not finite.all():
        k = int(owner_np[np.argmin(finite)])
        validate_atoms(structures[k], f"structure {first_index + k}")  # raises with the details
    if numbers.min() < 1 or numbers.max() > 118:
        k = int(owner_np[np.argmax((numbers < 1) | (numbers > 118))])
        validate_atoms(structures[k], f"structure {first_index + k}")

    device = torch.device(device)
    pos = torch.as_tensor(positions, device=device)
    sizes = torch.as_tensor(sizes_np, device=device)
    offsets = torch.cumsum(sizes, 0) - sizes
    pairs = dense_candidate_pairs(sizes, offsets)
    distance2 = (pos[pairs[1]] - pos[pairs[0]]).square().sum(dim=1)
    if bool((distance2 < MIN_DISTANCE**2).any()):  # one sync per batch, for a clear error
        k = int(owner_np[int(pairs[0][distance2 < MIN_DISTANCE**2][0])])
        validate_atoms(structures[k], f"structure {first_index + k}")
    edge_index = pairs[:, distance2 < cutoff**2]
    count = len(structures)
    charges = [total_charge(a, f"structure {first_index + k}") for k, a in enumerate(structures)]
    return Batch(
        charge=torch.tensor(charges, dtype=torch.float64, device=device),
        pos=pos,
        numbers=torch.as_tensor(numbers, device=device),
        cell=torch.zeros(count, 3, 3, dtype=torch.float64, device=device),
        pbc=torch.zeros(count, 3, dtype=torch.bool, device=device),
        edge_index=edge_index,
        shifts=torch.zeros(edge_index.shape[1], 3, dtype=torch.float64, device=device),
        batch=torch.repeat_interleave(torch.arange(count, device=device), sizes),
        ptr=torch.cat([torch.zeros(1, dtype=torch.long, device=device), torch.cumsum(sizes, 0)]),
    )


def structures_batch(
    structures: Sequence[Atoms], cutoff: float, device: torch.device | str = "cpu", first_index: int = 0
) -> Batch:
    """Unlabelled batch for inference: :func:`open_structures_batch` where it applies, else
    :func:`atoms_to_graph` per structure (periodic or large ones)."""
    if device_batchable(structures):
        return open_structures_batch(structures, cutoff, device, first_index)
    graphs = [atoms_to_graph(a, cutoff, with_labels=False, name=f"structure {first_index + k}")
              for k, a in enumerate(structures)]
    return Batch.from_data_list(graphs).to(device)
