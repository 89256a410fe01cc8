"""Labels that make sense: structures whose labels lie far outside the rest (a unit mix-up) and
identical structures (copies that would otherwise sit on both sides of a train/validation split).

Outliers are found with a robust z-score: the distance from the median in units of the median
absolute deviation (MAD), which one wrong label cannot inflate as it inflates a standard deviation.
Energies are compared per atom after the per-element reference energies (the E0s), so data sets
of many compositions are compared fairly; forces by each structure's largest force.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch_geometric.data import Data

OUTLIER_MADS = 20.0
"""A label further than this many MADs from the median is an outlier."""

MAD_FLOORS = {"energy": 1e-3, "forces": 0.05}
"""Smallest MAD used (eV/atom, eV/Å): labels that barely vary (copies of one structure) must not
turn an ordinary difference into an outlier."""

UNITS_PER_EV = (("kcal/mol", 23.0605), ("Hartree", 1 / 27.2114), ("kJ/mol", 96.4853), ("meV", 1000.0))
"""1 eV in other energy units, to name the likely mix-up behind an outlying energy."""

FORCE_UNITS_PER_EV_PER_A = (("kcal/mol/Å", 23.0605), ("Hartree/Bohr", 1 / 51.4221), ("kJ/mol/Å", 96.4853),
                            ("meV/Å", 1000.0))


def robust_outliers(values: np.ndarray, floor: float, high_only: bool = False) -> np.ndarray:
    """Mask of ``values`` more than :data:`OUTLIER_MADS` MADs (at least ``floor``) from their
    median (``high_only``: only above it)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 3:
        return np.zeros(len(values), dtype=bool)
    median = np.median(values)
    mad = max(float(np.median(np.abs(values - median))), floor)
    deviation = values - median if high_only else np.abs(values - median)
    return deviation > OUTLIER_MADS * mad


def _likely_unit(ratio: float, units: Sequence[tuple[str, float]], base: str, tolerance: float) -> str:
    """The mix-up a ratio (label / what the others give) points to, in words ('' when none)."""
    for name, factor in units:
        if abs(ratio / factor - 1) < tolerance:
            return f"a label in {name} among {base} labels?"
        if abs(ratio * factor - 1) < tolerance:
            return f"a label in {base} among {name} labels?"
    return ""


def energy_outliers(graphs: Sequence[Data], e0s: dict[int, float]) -> list[tuple[int, str]]:
    """``(position, why)`` of each structure whose energy per atom, after the reference energies
    ``e0s`` (eV), lies far from the others'; ``why`` gives its energy, its ratio to what the other
    structures give for its composition, and the likely unit mix-up."""
    reference = np.array([sum(e0s[int(z)] for z in graph.numbers) for graph in graphs])
    atoms = np.array([graph.num_nodes for graph in graphs], dtype=np.float64)
    energies = np.array([float(graph.energy) for graph in graphs])
    residual = (energies - reference) / atoms
    found = []
    for k in np.flatnonzero(robust_outliers(residual, MAD_FLOORS["energy"])):
        expected = reference[k] + float(np.median(residual)) * atoms[k]  # what the others give for it
        ratio = energies[k] / expected if abs(expected) > 1e-12 else float("inf")
        guess = _likely_unit(ratio, UNITS_PER_EV, "eV", 0.05) if np.isfinite(ratio) else ""
        found.append((int(k), f"energy {energies[k]:.6g} eV, {ratio:.4g}× what the others give"
                      + (f": {guess}" if guess else "")))
    return found


def force_outliers(graphs: Sequence[Data]) -> list[tuple[int, str]]:
    """``(position, why)`` of each structure whose largest force lies far above the others'."""
    largest = np.array([float(graph.forces.norm(dim=1).max()) if graph.num_nodes else 0.0 for graph in graphs])
    found = []
    median = float(np.median(largest)) if len(largest) else 0.0
    for k in np.flatnonzero(robust_outliers(largest, MAD_FLOORS["forces"], high_only=True)):
        ratio = largest[k] / median if median > 0 else float("inf")
        guess = _likely_unit(ratio, FORCE_UNITS_PER_EV_PER_A, "eV/Å", 0.25) if np.isfinite(ratio) else ""
        found.append((int(k), f"largest force {largest[k]:.4g} eV/Å, {ratio:.3g}× the median structure's"
                      + (f": {guess}" if guess else "")))
    return found


def outliers_message(found: Sequence[tuple[int, str]], names: Sequence[str], total: int) -> str:
    """One line naming the outlying structures (at most five), why, and what to do."""
    shown = "; ".join(f"{names[k]} ({why})" for k, why in list(found)[:5]) + ("; ..." if len(found) > 5 else "")
    # a unit mix-up is named only where a ratio matched one; otherwise the labels may be right
    # (a strongly distorted structure) and only the user can tell
    cause = ("likely a unit mix-up (1 eV = 23.06 kcal/mol, 1 Hartree = 27.21 eV)" if any("?" in why for _, why in found)
             else "no unit mix-up matches their ratios: check whether they are broken or merely far from the rest")
    return (f"{len(found)} of {total} training structures have labels far outside the rest (more than "
            f"{OUTLIER_MADS:g} MADs from the median after the per-element reference energies), {cause}: {shown}; "
            "fix or remove them, or pass --allow-outliers (allow_outliers: true) to train on them")


def structure_groups(graphs: Sequence[Data]) -> np.ndarray:
    """A group label per structure: identical structures (same atoms in the same order at the same
    positions, same cell) share one; the label is the position of the group's first structure."""
    from molequi.utils import arrays_digest

    first: dict[str, int] = {}
    labels = np.empty(len(graphs), dtype=np.int64)
    for k, graph in enumerate(graphs):
        arrays = [graph.numbers.numpy(), graph.pos.detach().numpy()]
        if "cell" in graph:
            arrays.append(graph.cell.detach().numpy())
        labels[k] = first.setdefault(arrays_digest([arrays]), k)
    return labels


def duplicates_message(groups: np.ndarray, names: Sequence[str]) -> str | None:
    """One line naming the copies among the structures (None when there are none)."""
    copies = [np.flatnonzero(groups == label) for label in np.unique(groups)]
    copies = [members for members in copies if len(members) > 1]
    if not copies:
        return None
    extra = sum(len(members) - 1 for members in copies)
    shown = "; ".join(f"{names[members[0]]} = " + ", ".join(names[k].rsplit(": ", 1)[-1] for k in members[1:6])
                      + (", ..." if len(members) > 6 else "") for members in copies[:3])
    return (f"{extra} training structures are exact copies of others ({shown}{'; ...' if len(copies) > 3 else ''}); "
            "they weigh more in the loss, and each set of copies is kept on one side of the train/validation split")
