"""Physical baselines for Δ-learning: the network learns ``label − baseline`` only.

With ``molequi train --baseline xtb`` the training labels become the difference between the
reference energies/forces and GFN2-xTB (computed with tblite), so the network models only
what xTB gets wrong. The model file records the baseline (``baseline`` in its config); the
loaded model, the ASE calculator, ``predict`` and ``molequi md`` add it back at run time.

GFN2-xTB here: open boundaries only, neutral closed-shell molecules (total charge 0, no
unpaired electrons), tblite's default accuracy. Energies are float64 eV, forces eV/Å.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from molequi.data.batch import GraphBatch
from molequi.errors import ConfigError, MissingDependencyError

BASELINES = ("xtb",)
"""Names accepted by ``--baseline``."""

HARTREE_EV = 27.211386245988  # CODATA 2018, eV per Hartree (the value ASE uses)
BOHR_ANGSTROM = 0.5291772105638411  # Å per Bohr (ASE's)


def check_baseline(name: str | None) -> str | None:
    """``name`` if it is a known baseline (or None), else :class:`ConfigError`."""
    if name is None or name in BASELINES:
        return name
    raise ConfigError(f"unknown baseline '{name}'; choose one of {', '.join(BASELINES)} (or none)")


def _tblite():
    try:
        from tblite.interface import Calculator
    except ImportError as error:
        raise MissingDependencyError(
            "this model needs GFN2-xTB (--baseline xtb) but tblite is not installed: pip install tblite"
        ) from error
    return Calculator


class XTBBaseline:
    """GFN2-xTB energies and forces of molecules, through tblite.

    One tblite calculator is kept per atom ordering (atomic numbers), and each call restarts
    the SCF from the previous density, which makes consecutive MD steps cheap (~10 ms for a
    21-atom molecule on one core).
    """

    name = "xtb"

    def __init__(self) -> None:
        self._calculator_class = _tblite()
        self._numbers: np.ndarray | None = None
        self._calculator = None
        self._result = None

    def batch_outputs(self, graph: GraphBatch):
        """Baseline energy [G] (float64 eV), per-atom energies [N] (float64 eV) and forces [N, 3]
        (float64 eV/Å) of a batch of molecules in open space (one tblite call per molecule)."""
        import torch

        z = graph.numbers.detach().cpu().numpy()
        r = graph.pos.detach().cpu().to(torch.float64).numpy()
        owner = graph.batch.detach().cpu().numpy()
        energy = np.zeros(graph.num_graphs)
        energies = np.zeros(len(z))
        forces = np.zeros((len(z), 3))
        for g in range(graph.num_graphs):
            atoms = np.flatnonzero(owner == g)
            energy[g], energies[atoms], forces[atoms] = self(z[atoms], r[atoms])
        device = graph.pos.device
        return tuple(torch.from_numpy(a).to(device) for a in (energy, energies, forces))

    def __deepcopy__(self, memo) -> XTBBaseline:
        return XTBBaseline()  # a fresh calculator: tblite's own objects cannot be copied

    def __call__(self, numbers: np.ndarray, positions: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Energy of one molecule.

        Args:
            numbers: [n] atomic numbers.
            positions: [n, 3] positions, Å.

        Returns:
            (energy eV, per-atom energies [n] eV, forces [n, 3] eV/Å), all float64.
        """
        numbers = np.asarray(numbers, dtype=np.int64)
        bohr = np.asarray(positions, dtype=np.float64) / BOHR_ANGSTROM
        if self._numbers is None or not np.array_equal(numbers, self._numbers):
            self._calculator = self._calculator_class("GFN2-xTB", numbers, bohr)
            self._calculator.set("verbosity", 0)
            self._numbers, self._result = numbers.copy(), None
        else:
            self._calculator.update(positions=bohr)
        try:
            self._result = self._calculator.singlepoint(self._result) if self._result is not None else self._calculator.singlepoint()
        except RuntimeError as error:  # SCF failure or an element tblite does not parametrise
            self._numbers = None
            raise ConfigError(f"GFN2-xTB failed on a structure of {len(numbers)} atoms: {error}") from error
        energy = float(self._result.get("energy")) * HARTREE_EV
        energies = np.asarray(self._result.get("energies"), dtype=np.float64) * HARTREE_EV
        forces = -np.asarray(self._result.get("gradient"), dtype=np.float64) * (HARTREE_EV / BOHR_ANGSTROM)
        return energy, energies, forces


def make_baseline(name: str | None) -> XTBBaseline | None:
    """The baseline called ``name`` (None for none); raises when its package is missing."""
    if check_baseline(name) is None:
        return None
    return XTBBaseline()


def structures_hash(numbers: Sequence[np.ndarray], positions: Sequence[np.ndarray]) -> str:
    """SHA-256 of the atomic numbers and positions (float64, Å) of every structure, in order."""
    from molequi.utils import arrays_digest

    return arrays_digest((np.asarray(z, dtype=np.int64), np.asarray(r, dtype=np.float64))
                         for z, r in zip(numbers, positions))


def baseline_labels(
    name: str,
    numbers: Sequence[np.ndarray],
    positions: Sequence[np.ndarray],
    cache_dir: str | Path | None = None,
    progress=None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Baseline energies [S] (eV) and forces (list of [n_i, 3], eV/Å) of S structures.

    With ``cache_dir`` the results are stored in ``cache_dir/<name>_<hash>.npz``, keyed by a
    hash of the structures (:func:`structures_hash`), and read back instead of recomputed.
    ``progress(done, total)`` is called now and then during a computation.
    """
    key = structures_hash(numbers, positions)
    path = None if cache_dir is None else Path(cache_dir) / f"{name}_{key[:24]}.npz"
    if path is not None and path.is_file():
        with np.load(path) as cached:
            if str(cached["hash"]) == key:
                sizes = np.cumsum([len(z) for z in numbers])[:-1]
                return cached["energy"].astype(np.float64), np.split(cached["forces"].astype(np.float64), sizes)
    baseline = make_baseline(name)
    energies, forces = np.empty(len(numbers)), []
    for k, (z, r) in enumerate(zip(numbers, positions)):
        energies[k], _, f = baseline(z, r)
        forces.append(f)
        if progress is not None and (k + 1) % 100 == 0:
            progress(k + 1, len(numbers))
    if path is not None:
        from molequi.utils import atomic_write

        path.parent.mkdir(parents=True, exist_ok=True)
        flat = np.concatenate(forces) if forces else np.empty((0, 3))

        def write(temporary: Path) -> None:
            with open(temporary, "wb") as handle:
                np.savez(handle, energy=energies, forces=flat, hash=np.array(key))

        atomic_write(path, write)
    return energies, forces
