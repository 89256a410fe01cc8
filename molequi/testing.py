"""Physics checks for molequi potentials (and any model with the same calling convention).

Each ``assert_*`` function evaluates a model on a few transformed copies of a structure and
raises :class:`AssertionError` stating the measured error and the tolerance when a physical law
is broken. Use them on your own (trained or freshly built) models::

    from molequi import load_model
    from molequi.testing import assert_invariant_energy_equivariant_forces

    model = load_model("run/model.molequi")
    assert_invariant_energy_equivariant_forces(model, ase.io.read("mol.xyz"))

A model is anything called as ``model(batch, compute_forces=True, compute_stress=False)`` that
returns ``energy`` [num_graphs] (eV), ``energies`` [n_atoms] and ``forces`` [n_atoms, 3] (eV/Å)
(and ``stress`` [num_graphs, 3, 3], eV/Å³, when asked) — :class:`molequi.nn.ForceOutput` and
therefore every model from :func:`molequi.build_model`/:func:`molequi.load_model`. Its cutoff is
read from ``model.cutoff`` or ``model.model.config.cutoff``.

Tolerances default by the model's dtype: relative ``1e-8`` in float64 and ``1e-4`` in float32,
applied as ``error <= rtol * max(1, max|reference|)`` (eV, eV/Å).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Batch

from molequi.data.graph import atoms_to_graph, validate_atoms
from molequi.models.predict import split_outputs

__all__ = [
    "assert_additive_far_apart",
    "assert_batch_consistent",
    "assert_forces_match_finite_differences",
    "assert_invariant_energy_equivariant_forces",
    "assert_permutation_equivariant",
    "assert_smooth_at_cutoff",
    "assert_stress_matches_finite_differences",
    "default_rtol",
    "evaluate",
]

RTOL = {torch.float64: 1e-8, torch.float32: 1e-4}


# --------------------------------------------------------------------------------------------
# evaluation and comparison
# --------------------------------------------------------------------------------------------


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    return next(model.parameters()).dtype


def _cutoff(model: torch.nn.Module) -> float:
    cutoff = getattr(model, "cutoff", None)
    if cutoff is None:
        cutoff = model.model.config.cutoff
    return float(cutoff)


def default_rtol(model: torch.nn.Module) -> float:
    """Relative tolerance for exact symmetries: 1e-8 (float64) or 1e-4 (float32 and lower)."""
    return RTOL.get(_model_dtype(model), 1e-4)


def evaluate(
    model: torch.nn.Module, structures: Sequence[Atoms], compute_stress: bool = False, validate: bool = True
) -> list[dict]:
    """Energy (float), per-atom ``energies``, ``forces`` (and ``stress``) of each structure, as
    float64 numpy arrays, from one batched call of ``model``.

    ``validate=False`` skips :func:`~molequi.data.validate_atoms` (the checks below validate the
    structure they are given once, not each of its transformed copies).
    """
    cutoff = _cutoff(model)
    graphs = [
        atoms_to_graph(atoms, cutoff, with_labels=False, name=f"structure {k}", validate=validate)
        for k, atoms in enumerate(structures)
    ]
    batch = Batch.from_data_list(graphs)
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        batch = batch.to(device)
    outputs = model(batch, compute_forces=True, compute_stress=compute_stress)
    return split_outputs({key: value.detach().to(torch.float64) for key, value in outputs.items()}, batch)


def _assert_close(what: str, actual, expected, rtol: float, atol: float | None = None) -> None:
    """``max|actual - expected| <= atol + rtol * max|expected|`` (atol defaults to rtol)."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape} != expected shape {expected.shape}")
    atol = rtol if atol is None else atol
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    error = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    tolerance = atol + rtol * scale
    if not error <= tolerance:  # also catches NaN
        raise AssertionError(
            f"{what}: max abs error {error:.3e} exceeds tolerance {tolerance:.3e} "
            f"(rtol={rtol:.1e}, atol={atol:.1e}, reference scale {scale:.3e})"
        )


def _periodic(atoms: Atoms) -> bool:
    return bool(np.any(atoms.pbc))


def _transformed(atoms: Atoms, rotation: np.ndarray, translation: np.ndarray) -> Atoms:
    """Positions r' = r Rᵀ + t (rows are atoms); for periodic cells also cell' = cell Rᵀ."""
    moved = atoms.copy()
    moved.calc = None
    if _periodic(atoms):
        moved.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    moved.set_positions(atoms.get_positions() @ rotation.T + translation)
    return moved


def _random_rotations(n: int, seed: int) -> np.ndarray:
    from e3nn import o3

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return o3.rand_matrix(n, dtype=torch.float64).numpy()


# --------------------------------------------------------------------------------------------
# symmetry
# --------------------------------------------------------------------------------------------


def assert_invariant_energy_equivariant_forces(
    model: torch.nn.Module,
    atoms: Atoms,
    n_trials: int = 3,
    seed: int = 0,
    rtol: float | None = None,
) -> None:
    """E(3) symmetry: under r' = r Rᵀ + t with R a random rotation, and with -R (rotation plus
    inversion), the energy and per-atom energies are unchanged, forces rotate (F' = F Rᵀ) and,
    for periodic structures, the stress rotates (σ' = R σ Rᵀ)."""
    rtol = default_rtol(model) if rtol is None else rtol
    stress = bool(np.all(atoms.pbc))
    rng = np.random.default_rng(seed)
    rotations = _random_rotations(n_trials, seed)
    operations = []
    for k in range(n_trials):
        translation = rng.normal(scale=3.0, size=3)
        operations.append((f"rotation {k}", rotations[k], translation))
        operations.append((f"reflection {k} (-R)", -rotations[k], translation))
    operations.append(("translation", np.eye(3), rng.normal(scale=3.0, size=3)))
    structures = [atoms] + [_transformed(atoms, r, t) for _, r, t in operations]
    validate_atoms(atoms)
    results = evaluate(model, structures, compute_stress=stress, validate=False)
    reference = results[0]
    for (label, rotation, _), result in zip(operations, results[1:]):
        _assert_close(f"energy after {label}", result["energy"], reference["energy"], rtol)
        _assert_close(f"per-atom energies after {label}", result["energies"], reference["energies"], rtol)
        _assert_close(f"forces after {label} (expected F Rᵀ)", result["forces"], reference["forces"] @ rotation.T, rtol)
        if stress:
            expected = rotation @ reference["stress"] @ rotation.T
            _assert_close(f"stress after {label} (expected R σ Rᵀ)", result["stress"], expected, rtol)


def assert_permutation_equivariant(
    model: torch.nn.Module, atoms: Atoms, seed: int = 0, rtol: float | None = None
) -> None:
    """Relabelling the atoms permutes per-atom energies and forces and leaves the energy unchanged."""
    rtol = default_rtol(model) if rtol is None else rtol
    rng = np.random.default_rng(seed)
    permutation = rng.permutation(len(atoms))
    if len(atoms) > 1 and np.all(permutation == np.arange(len(atoms))):
        permutation = np.roll(permutation, 1)
    permuted = atoms[permutation]
    validate_atoms(atoms)
    reference, result = evaluate(model, [atoms, permuted], validate=False)
    _assert_close("energy after permuting atoms", result["energy"], reference["energy"], rtol)
    _assert_close("per-atom energies after permuting atoms", result["energies"], reference["energies"][permutation], rtol)
    _assert_close("forces after permuting atoms", result["forces"], reference["forces"][permutation], rtol)


# --------------------------------------------------------------------------------------------
# conservative forces and stress
# --------------------------------------------------------------------------------------------


def _as_float64(model: torch.nn.Module) -> torch.nn.Module:
    """Finite differences need float64: a float64 copy of a lower-precision model."""
    if _model_dtype(model) == torch.float64:
        return model
    return copy.deepcopy(model).to(torch.float64)


def assert_forces_match_finite_differences(
    model: torch.nn.Module,
    atoms: Atoms,
    delta: float = 1e-4,
    atom_indices: Sequence[int] | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-6,
) -> None:
    """Forces are -∂E/∂r: compare with central differences (step ``delta`` Å) of the energy,
    evaluated in float64 (a float32 model is copied to float64). The truncation error is
    O(delta²), hence the looser default tolerance (eV/Å)."""
    model = _as_float64(model)
    indices = range(len(atoms)) if atom_indices is None else list(atom_indices)
    structures = [atoms]
    for i in indices:
        for axis in range(3):
            for sign in (+1.0, -1.0):
                displaced = atoms.copy()
                displaced.calc = None
                positions = displaced.get_positions()
                positions[i, axis] += sign * delta
                displaced.set_positions(positions)
                structures.append(displaced)
    validate_atoms(atoms)
    results = evaluate(model, structures, validate=False)
    energies = np.array([r["energy"] for r in results[1:]]).reshape(-1, 3, 2)
    numerical = -(energies[:, :, 0] - energies[:, :, 1]) / (2.0 * delta)
    analytical = results[0]["forces"][list(indices)]
    _assert_close(f"forces vs central finite differences (delta={delta} Å)", analytical, numerical, rtol, atol)


def assert_stress_matches_finite_differences(
    model: torch.nn.Module,
    atoms: Atoms,
    delta: float = 1e-4,
    rtol: float = 1e-6,
    atol: float = 1e-7,
) -> None:
    """Stress is σ = (1/V) ∂E/∂ε (ASE sign convention, eV/Å³): compare with central differences
    of the energy under homogeneous strains r' = r (I + ε), cell' = cell (I + ε), for each of
    the 9 components ε_ab = ±delta, in float64."""
    if not np.all(atoms.pbc):
        raise ValueError("stress needs a fully periodic structure")
    model = _as_float64(model)
    volume = atoms.get_volume()
    structures = [atoms]
    for a in range(3):
        for b in range(3):
            for sign in (+1.0, -1.0):
                strain = np.eye(3)
                strain[a, b] += sign * delta
                strained = atoms.copy()
                strained.calc = None
                strained.set_cell(atoms.cell.array @ strain, scale_atoms=False)
                strained.set_positions(atoms.get_positions() @ strain)
                structures.append(strained)
    validate_atoms(atoms)
    results = evaluate(model, structures[:1], compute_stress=True) + evaluate(model, structures[1:], validate=False)
    energies = np.array([r["energy"] for r in results[1:]]).reshape(3, 3, 2)
    numerical = (energies[:, :, 0] - energies[:, :, 1]) / (2.0 * delta * volume)
    _assert_close(f"stress vs finite-difference strain (delta={delta})", results[0]["stress"], numerical, rtol, atol)


# --------------------------------------------------------------------------------------------
# locality and batching
# --------------------------------------------------------------------------------------------


def assert_batch_consistent(model: torch.nn.Module, structures: Sequence[Atoms], rtol: float | None = None) -> None:
    """Evaluating structures together in one batch gives what each gives alone."""
    rtol = default_rtol(model) if rtol is None else rtol
    structures = list(structures)
    batched = evaluate(model, structures)
    for k, atoms in enumerate(structures):
        (alone,) = evaluate(model, [atoms])
        _assert_close(f"structure {k}: batched vs alone energy", batched[k]["energy"], alone["energy"], rtol)
        _assert_close(f"structure {k}: batched vs alone forces", batched[k]["forces"], alone["forces"], rtol)
        _assert_close(f"structure {k}: batched vs alone per-atom energies", batched[k]["energies"], alone["energies"], rtol)


def assert_additive_far_apart(
    model: torch.nn.Module,
    atoms_a: Atoms,
    atoms_b: Atoms,
    separation: float = 100.0,
    rtol: float | None = None,
) -> None:
    """Two non-periodic molecules ``separation`` Å apart (far beyond any cutoff) in one structure:
    energies add and each molecule's forces are those it has alone."""
    rtol = default_rtol(model) if rtol is None else rtol
    if _periodic(atoms_a) or _periodic(atoms_b):
        raise ValueError("assert_additive_far_apart needs non-periodic structures")
    a, b = atoms_a.copy(), atoms_b.copy()
    a.calc = b.calc = None
    b.translate(a.get_positions().max(axis=0) - b.get_positions().min(axis=0) + np.array([separation, 0.0, 0.0]))
    combined = a + b
    alone_a, alone_b, together = evaluate(model, [a]) + evaluate(model, [b]) + evaluate(model, [combined])
    _assert_close(
        f"energy of two molecules {separation} Å apart vs sum of energies",
        together["energy"],
        alone_a["energy"] + alone_b["energy"],
        rtol,
    )
    expected_forces = np.concatenate([alone_a["forces"], alone_b["forces"]])
    _assert_close(f"forces of two molecules {separation} Å apart vs alone", together["forces"], expected_forces, rtol)


def assert_smooth_at_cutoff(
    model: torch.nn.Module,
    species: tuple[int, int] | None = None,
    steps: Sequence[float] = (1e-2, 1e-3, 1e-4),
    atol: float | None = None,
) -> None:
    """A dimer's energy is continuous and its force goes to zero as the distance crosses the
    cutoff r_c.

    At r_c - h for the smallest h in ``steps`` and at every distance beyond r_c, the energy
    differs from that of the separated atoms by at most ``atol`` (eV) and the force is at most
    ``atol`` (eV/Å); ``atol`` defaults to 1e-6 in float64 and 1e-4 in float32. Inside the
    cutoff both must also shrink as h shrinks (a smooth envelope gives O(h³) and O(h²)).
    """
    if atol is None:
        atol = 1e-6 if _model_dtype(model) == torch.float64 else 1e-4
    if species is None:
        known = list(getattr(model, "species", None) or model.model.species)
        species = (known[0], known[-1])
    cutoff = _cutoff(model)
    steps = sorted(steps, reverse=True)
    distances = [cutoff - h for h in steps] + [cutoff + h for h in reversed(steps)] + [cutoff + 5.0]
    dimers = [Atoms(numbers=list(species), positions=[[0.0, 0.0, 0.0], [r, 0.0, 0.0]]) for r in distances]
    results = evaluate(model, dimers, validate=False)
    separated = results[-1]["energy"]
    jumps = [abs(result["energy"] - separated) for result in results]
    forces = [float(np.max(np.abs(result["forces"]))) for result in results]
    checked = range(len(steps) - 1, len(distances))  # the closest point inside, and all outside
    for k in checked:
        where = f"dimer {tuple(species)} at r = r_c {distances[k] - cutoff:+.0e} Å (r_c = {cutoff} Å)"
        if not jumps[k] <= atol:
            raise AssertionError(
                f"{where}: energy differs from the separated atoms' by {jumps[k]:.3e} eV, tolerance {atol:.1e} eV "
                "(energy is not continuous at the cutoff)"
            )
        if not forces[k] <= atol:
            raise AssertionError(
                f"{where}: force {forces[k]:.3e} eV/Å, tolerance {atol:.1e} eV/Å (force does not vanish at the cutoff)"
            )
    inside = slice(0, len(steps))
    for name, values in (("|E(r_c - h) - E(inf)|", jumps[inside]), ("|F(r_c - h)|", forces[inside])):
        if any(later > earlier + atol * 1e-3 for earlier, later in zip(values, values[1:])):
            raise AssertionError(
                f"dimer {tuple(species)}: {name} = {[f'{v:.2e}' for v in values]} for h = {steps} Å does not "
                f"decrease as h -> 0 (slack {atol * 1e-3:.1e})"
            )
