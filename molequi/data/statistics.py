"""Dataset statistics that set the model's energy reference and scale."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase.data import atomic_numbers, chemical_symbols
from torch_geometric.data import Data

from molequi.errors import DataFormatError


@dataclass(frozen=True)
class EnergyStatistics:
    """Per-element reference energies and the scale/shift of the learned per-atom energies.

    Attributes:
        e0s: atomic number -> reference energy, eV (least-squares fit of E ≈ Σ_i E0[Z_i], or
            given; see :func:`resolve_e0s`).
        shift: mean per-atom energy left after subtracting the E0s, eV/atom.
        scale: RMS of the force components, eV/Å, the natural unit for the network's per-atom
            energy outputs (as in MACE). Without forces (QM9-style data): the standard deviation
            of the per-atom residual energies left after the E0s and the shift, eV/atom. 1.0 when
            that is ~0 or there are no energies either.
        avg_num_neighbors: mean number of neighbors within the cutoff; messages are divided by it.
        charge_energies: ``[a, b]`` of the per-structure reference a·Q + b·Q² (eV, Q the total
            charge in e), fitted with the E0s (see :func:`fit_references`); None when not asked.
    """

    e0s: dict[int, float]
    shift: float
    scale: float
    avg_num_neighbors: float
    charge_energies: list[float] | None = None


def fit_e0s(graphs: Sequence[Data], species: Sequence[int]) -> dict[int, float]:
    """Least-squares per-element reference energies E0 (eV) from total energies.

    Solves ``counts @ e0 ≈ energies`` where ``counts[k, s]`` is the number of atoms of species
    ``s`` in structure ``k``. With a single composition (an MD data set) the system is rank
    deficient; ``lstsq`` then returns the minimum-norm solution, which still removes the mean
    energy exactly.
    """
    return fit_references(graphs, species, charge_terms=False)[0]


def charge_columns(charges: np.ndarray) -> np.ndarray:
    """[n, 2] the columns ``Q, Q²`` of the charge reference a·Q + b·Q² for total charges ``charges`` (e)."""
    charges = np.asarray(charges, dtype=np.float64).reshape(-1, 1)
    return np.hstack([charges, charges**2])


def graph_charge(graph: Data) -> float:
    """A graph's total charge (e); 0 when it carries none."""
    return float(graph.charge) if "charge" in graph else 0.0


def fit_references(graphs: Sequence[Data], species: Sequence[int],
                   charge_terms: bool) -> tuple[dict[int, float], list[float] | None]:
    """Least-squares E0s (eV per atom of each element) and, with ``charge_terms``, the charge
    reference ``[a, b]`` of a·Q + b·Q² (eV; :attr:`ModelConfig.charge_energies`), fitted together.

    The charge columns join the element counts (:func:`fit_e0s`); where the data do not determine
    them (only neutral structures, or one charge state beside the neutral), the minimum-norm
    solution gives them what the data ask and 0 elsewhere.
    """
    species = list(species)
    column = {z: c for c, z in enumerate(species)}
    counts = np.zeros((len(graphs), len(species)))
    energies = np.zeros(len(graphs))
    for k, graph in enumerate(graphs):
        if "energy" not in graph:
            raise DataFormatError(f"structure {k} has no energy label; E0s need energies")
        for z, n in zip(*np.unique(graph.numbers.numpy(), return_counts=True)):
            counts[k, column[int(z)]] = n
        energies[k] = float(graph.energy)
    if charge_terms:
        counts = np.hstack([counts, charge_columns([graph_charge(graph) for graph in graphs])])
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    e0s = {z: float(solution[column[z]]) for z in species}
    return e0s, [float(v) for v in solution[len(species):]] if charge_terms else None


E0S_METHODS = ("fit", "average")
"""Ways to compute the per-element reference energies from the training data. Both are the
least-squares fit of :func:`fit_e0s`: ``average`` is MACE's name for that same fit
(``E0s="average"`` in MACE solves the same least-squares problem), accepted so that MACE
settings carry over."""


def read_e0s_file(path: str | Path) -> dict[int, float]:
    """Per-element reference energies from a JSON object ``{symbol or Z: eV}``
    (``{"H": -13.6, "8": -2041.8}``)."""
    path = Path(path)
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataFormatError(f"--e0s {path}: no such file (use fit, average or a JSON file {{symbol or Z: eV}})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataFormatError(f"{path}: not a JSON object of reference energies ({error})") from error
    if not isinstance(table, dict):
        raise DataFormatError(f"{path}: E0s must be a JSON object {{symbol or Z: eV}}, got {type(table).__name__}")
    e0s = {}
    for key, value in table.items():
        key = str(key).strip()
        z = int(key) if key.isdigit() else atomic_numbers.get(key)
        if z is None or not 1 <= z <= 118:
            raise DataFormatError(f"{path}: '{key}' is neither an element symbol nor an atomic number")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise DataFormatError(f"{path}: the E0 of {key} must be a finite number of eV, got {value!r}")
        e0s[z] = float(value)
    return e0s


def resolve_e0s(graphs: Sequence[Data], species: Sequence[int], e0s: str = "fit") -> dict[int, float]:
    """Reference energies (eV) of ``species``: ``fit``/``average`` (:data:`E0S_METHODS`) fit them
    to the energies of ``graphs``; anything else is a JSON file read by :func:`read_e0s_file`,
    which must name every element of ``species``."""
    if e0s in E0S_METHODS:
        return fit_e0s(graphs, species)
    table = read_e0s_file(e0s)
    missing = [chemical_symbols[z] for z in species if z not in table]
    if missing:
        raise DataFormatError(f"{e0s}: no reference energy for {', '.join(missing)} (present in the training data)")
    return {int(z): table[int(z)] for z in species}


def compute_statistics(graphs: Sequence[Data], species: Sequence[int], e0s: str = "fit",
                       charge_terms: bool = False) -> EnergyStatistics:
    """E0s, per-atom shift, energy scale and mean neighbor count of ``graphs``; with
    ``charge_terms`` (a model given the total charge) and fitted E0s, the charge reference too
    (:func:`fit_references`).

    The scale is the force RMS when the graphs carry forces, else the standard deviation of the
    per-atom residual energies (after the E0s). Without energy labels at all (a model trained
    on property heads only) the E0s and the shift are 0 and the scale is the force RMS or 1.
    ``e0s`` is ``fit``, ``average`` or a JSON file (see :func:`resolve_e0s`).
    """
    if not graphs:
        raise DataFormatError("cannot compute statistics of an empty training set")
    with_energy = all("energy" in graph for graph in graphs)
    charge_energies = None
    if with_energy and charge_terms and e0s in E0S_METHODS:
        e0s, charge_energies = fit_references(graphs, species, charge_terms=True)
    elif with_energy:
        e0s = resolve_e0s(graphs, species, e0s)
    else:
        e0s = {int(z): 0.0 for z in species}
    residual_per_atom, force_squares, n_force_components, n_neighbors, n_atoms = [], 0.0, 0, 0, 0
    for graph in graphs:
        if with_energy:
            reference = sum(e0s[int(z)] for z in graph.numbers)
            if charge_energies is not None:
                reference += float(charge_columns([graph_charge(graph)])[0] @ np.asarray(charge_energies))
            residual_per_atom.append((float(graph.energy) - reference) / graph.num_nodes)
        if "forces" in graph:
            force_squares += float((graph.forces**2).sum())
            n_force_components += graph.forces.numel()
        n_neighbors += graph.edge_index.shape[1]
        n_atoms += graph.num_nodes
    if n_force_components:
        scale = float(np.sqrt(force_squares / n_force_components))
    elif len(residual_per_atom) > 1:
        scale = float(np.std(residual_per_atom))
    else:
        scale = 1.0
    return EnergyStatistics(
        e0s=e0s,
        shift=float(np.mean(residual_per_atom)) if residual_per_atom else 0.0,
        scale=scale if scale > 1e-8 else 1.0,
        avg_num_neighbors=max(n_neighbors / n_atoms, 1.0),
        charge_energies=charge_energies,
    )


def species_of(graphs: Sequence[Data]) -> list[int]:
    """Sorted atomic numbers present in ``graphs``."""
    return sorted({int(z) for graph in graphs for z in torch.unique(graph.numbers)})
