"""Which total energies a model can compare: those whose per-element reference energies its
training data determined.

The reference energies (E0s) are fitted by least squares to the training energies. Data of one
composition (an MD data set of ethanol) determine only that composition's sum of E0s, not each
element's: the model's total energy of methanol or acetic acid then rests on an arbitrary split
of that sum, and comparing it with ethanol's (or ranking such molecules) means nothing. The
compositions whose reference is determined are the linear combinations of the training
compositions: a model records an orthonormal basis of them (``ModelConfig.e0s_basis``), or
None when they are every composition of its elements (or when E0s were given, not fitted).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TOLERANCE = 1e-6
"""Relative distance from the determined compositions below which a composition counts as one."""


def composition_counts(numbers: Sequence[int] | np.ndarray, species: Sequence[int]) -> np.ndarray | None:
    """Atoms of each element of ``species`` in a structure, or None when it holds another element."""
    numbers = np.asarray(numbers, dtype=np.int64).ravel()
    column = {int(z): k for k, z in enumerate(species)}
    counts = np.zeros(len(species))
    for z in numbers:
        if int(z) not in column:
            return None
        counts[column[int(z)]] += 1
    return counts


def composition_basis(counts: np.ndarray) -> list[list[float]] | None:
    """Orthonormal rows spanning the rows of ``counts`` [structures, species]; None when they span
    every composition (each element's reference energy is determined)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.size == 0:
        return None
    _, singular, vt = np.linalg.svd(counts, full_matrices=False)
    rank = int((singular > 1e-9 * max(float(singular.max()), 1.0)).sum())
    if rank >= counts.shape[1]:
        return None
    return [[float(v) for v in row] for row in vt[:rank]]


def energy_determined(basis: Sequence[Sequence[float]] | None, species: Sequence[int],
                      numbers: Sequence[int] | np.ndarray) -> bool:
    """Whether the reference energy of a structure of atomic ``numbers`` is determined by
    training compositions spanned by ``basis`` (True for ``basis`` None; False for an element
    outside ``species``)."""
    if basis is None:
        return True
    counts = composition_counts(numbers, species)
    if counts is None:
        return False
    rows = np.asarray(basis, dtype=np.float64).reshape(-1, len(species))
    residual = counts - rows.T @ (rows @ counts)
    return float(np.linalg.norm(residual)) <= TOLERANCE * max(float(np.linalg.norm(counts)), 1.0)


def formula_of(numbers: Sequence[int] | np.ndarray) -> str:
    """Hill formula of atomic ``numbers`` (``C2H6O``)."""
    from ase.formula import Formula
    from ase.data import chemical_symbols

    return Formula("".join(chemical_symbols[int(z)] for z in np.asarray(numbers).ravel())).format("hill")


def undetermined_note(formula: str, basis: Sequence[Sequence[float]], species: Sequence[int]) -> str:
    """Why the total energy of ``formula`` is not comparable across compositions, in words."""
    from ase.data import chemical_symbols

    spanned = " ".join("(" + " ".join(f"{v:+.2f} {chemical_symbols[int(z)]}" for v, z in zip(row, species)
                                      if abs(v) > 1e-9) + ")" for row in basis)
    return (f"the total energy of {formula} rests on per-element reference energies the training data did not "
            f"determine (they fix only the combinations {spanned}): compare it only with energies of the same "
            "composition")


# Refitting the reference energies of a trained model on new labels: a fine-tuning run (a new
# level of theory shifts every element's energy) and each round of the learning loop (the
# energy's constant drifts) both fold ``label − prediction`` into the E0s this way.

def composition_offsets(residuals: np.ndarray, counts: np.ndarray, energies: np.ndarray | None = None) -> np.ndarray:
    """Per-element energy changes (eV, one per column of ``counts``) that remove the median
    residual (label − prediction, eV) of each composition over its structures lowest in
    ``energies`` (the labels, eV: the lower half, at least one; all when None): least squares
    over the compositions (rows of ``counts``: atoms of each element), each weighted by
    √(its structures), and the minimum-norm solution where compositions leave elements undetermined."""
    compositions, index = np.unique(counts, axis=0, return_inverse=True)
    index = np.asarray(index).ravel()
    if energies is None:
        medians = np.array([np.median(residuals[index == k]) for k in range(len(compositions))])
    else:
        energies = np.asarray(energies, dtype=np.float64)
        medians = np.array([lower_half_median(residuals[index == k], energies[index == k])
                            for k in range(len(compositions))])
    weights = np.sqrt(np.bincount(index))
    return np.linalg.lstsq(compositions * weights[:, None], medians * weights, rcond=None)[0]


def lower_half_median(residuals: np.ndarray, energies: np.ndarray) -> float:
    """The median of ``residuals`` over the structures in the lower half of ``energies`` (ties
    and an odd count keep the middle one)."""
    order = np.argsort(energies, kind="stable")
    return float(np.median(residuals[order[: (len(order) + 1) // 2]]))


def shifted_e0s(e0s: dict[str, float], shift: dict[int, float]) -> dict[str, float]:
    """Reference energies ``e0s`` (atomic number as str -> eV) with each element in ``shift``
    (atomic number -> eV) moved by it; the others unchanged."""
    moved = {key: float(value) for key, value in e0s.items()}
    for z, change in shift.items():
        moved[str(int(z))] = moved.get(str(int(z)), 0.0) + float(change)
    return moved


def shifted_charge_energies(current: Sequence[float] | None, change: Sequence[float]) -> list[float]:
    """A charge reference ``[a, b]`` (eV per e, per e²; None counts as zeros) moved by ``change``."""
    return [float(a) + float(b) for a, b in zip(current or (0.0, 0.0), change)]
