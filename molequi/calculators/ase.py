"""ASE calculator for molequi potentials (one model or a committee).

Example::

    from ase.md.verlet import VelocityVerlet
    from molequi.calculators import MolequiCalculator

    atoms.calc = MolequiCalculator("run/model.molequi", device="cuda")
    VelocityVerlet(atoms, timestep=0.5 * ase.units.fs).run(1000)

Per step the calculator copies only the positions to the device: the neighbor list (radius
cutoff + skin, vesin) is reused until an atom has moved more than skin / 2, and the atomic
numbers, cell and edge tensors stay on the device until they change.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from molequi.data.graph import check_close_contacts, validate_atoms
from molequi import pretrained
from molequi.data.labels import total_charge
from molequi.data.skin import SkinNeighborList
from molequi.data.batch import GraphBatch
from molequi.models.uncertainty.committee import ModelSpec, Potential, load_models


def in_domain_of(outputs: dict[str, torch.Tensor], system: int) -> bool | None:
    """The domain verdict of one structure of :class:`Potential`'s outputs: True, False or None
    (unknown: one model, or no threshold)."""
    verdict = outputs.get("in_domain")
    if verdict is None or not torch.isfinite(verdict[system]):
        return None
    return bool(verdict[system] > 0.5)


def shipped_or_given(model: ModelSpec | Sequence[ModelSpec] | None) -> list[ModelSpec]:
    """``model`` as a list with each pretrained name (and None: the default one) replaced by its
    shipped file (see :func:`molequi.pretrained.file_of`)."""
    if model is None:
        model = pretrained.DEFAULT
    specs = [model] if isinstance(model, (str, Path)) or not isinstance(model, Sequence) else list(model)
    return [pretrained.file_of(spec) for spec in specs]


def shipped_calibration(specs: Sequence[ModelSpec]) -> Path | None:
    """The calibration shipped with a lone pretrained model (by name or file), else None."""
    return pretrained.calibration_of(specs[0]) if len(specs) == 1 else None


class MolequiCalculator(Calculator):
    """ASE calculator: ``energy``/``free_energy`` (eV), ``forces`` (eV/Å), per-atom ``energies``
    (eV) and ``stress`` (eV/Å³, Voigt order xx yy zz yz xz xy, fully periodic cells only).

    A committee (``model`` a list) or a shallow ensemble (a model trained with
    ``--ensemble-heads K``) gives the mean energy and forces and adds ``energy_std`` (eV) and
    ``forces_std`` ([n_atoms] eV/Å, per atom sqrt of the mean over x, y, z of the unbiased
    variance over members) to :attr:`results`, calibrated when ``calibration`` is given, with the
    per-structure verdict: ``sigma_forces`` (eV/Å, the largest per-atom ``forces_std``) and
    ``in_domain`` (True/False against the calibration's threshold, None when unknown: no
    calibration, or one without a threshold). One plain model has no uncertainty: :attr:`results`
    then has no ``*_std`` keys (never a 0) and ``in_domain`` is None.

    Args:
        model: a model file path, a pretrained model's name (``"organic-xtb"``), a loaded model,
            or a list of these (a committee); None runs the pretrained
            :data:`molequi.pretrained.DEFAULT` (saying so once on stderr).
        device: ``"cpu"``, ``"cuda"``, ...
        dtype: ``torch.float32``/``torch.float64`` (or their names); default: the model's own.
        skin: neighbor-list skin, Å (0 rebuilds the list at every step).
        calibration: a :class:`~molequi.models.uncertainty.Calibration` or the JSON file
            written by ``molequi calibrate`` (scales ``energy_std`` and ``forces_std``).
        compile: evaluate through ``torch.compile`` (:meth:`~molequi.nn.forces.ForceOutput.compile`):
            the first call compiles (tens of seconds on a CPU), later ones cost a fraction of an
            eager call (``scripts/bench_md.py``); eager, with one warning, where compilation fails.
            The caller's model objects are not changed (they share the weights).
        force_spread: compute each member's forces for ``forces_std``, ``sigma_forces`` and
            ``in_domain``; False keeps ``energy_std`` only and spares a shallow ensemble of K
            heads K − 1 backward passes a call (faster MD; ``scripts/bench_pretrained.py``).
    """

    implemented_properties = ["energy", "free_energy", "forces", "energies", "stress"]

    def __init__(
        self,
        model: ModelSpec | Sequence[ModelSpec] | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        skin: float = 1.0,
        calibration=None,
        compile: bool = False,
        force_spread: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        specs = shipped_or_given(model)
        if calibration is None:
            calibration = shipped_calibration(specs)
        models = load_models(specs, device=device, dtype=dtype)
        if compile:
            models = [copy.copy(member).compile() for member in models]  # a shallow copy shares the weights
        self.potential = Potential(models, calibration=calibration, force_spread=force_spread)
        self.device = self.potential.device
        self.neighbors = SkinNeighborList(self.potential.cutoff, skin)
        self._numbers: np.ndarray | None = None  # atomic numbers the device tensors were made for
        self._charge = 0.0  # total charge (e) they were made for
        self._graph: GraphBatch | None = None
        self._reference_warned: set[str] = set()  # compositions already warned about (see _check_reference)

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """ASE's changes since the last call, plus ``"charge"`` when ``atoms.info["charge"]`` changed
        (ASE compares positions, numbers, cell and per-atom charges, not the total charge)."""
        changes = super().check_state(atoms, tol)
        if self.atoms is not None and self.atoms.info.get("charge", 0) != atoms.info.get("charge", 0):
            changes = [*changes, "charge"]
        return changes

    def calculate(
        self, atoms: Atoms | None = None, properties: Sequence[str] = ("energy",), system_changes=all_changes
    ) -> None:
        super().calculate(atoms, properties, system_changes)  # sets self.atoms; resets results
        atoms = self.atoms
        compute_stress = "stress" in properties
        if compute_stress and not atoms.pbc.all():
            raise PropertyNotImplementedError(
                "stress needs a fully periodic cell; this structure has pbc="
                f"{atoms.pbc.tolist()} (stress is undefined for a molecule in open space)"
            )
        graph = self._prepare(atoms)
        outputs = self.potential(graph, compute_stress=compute_stress)
        # .cpu() on a CPU tensor is the tensor itself and .numpy() shares its memory: copy.
        energy = float(outputs["energy"][0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": outputs["energies"].cpu().numpy().copy(),
            "forces": outputs["forces"].cpu().numpy().copy(),
        }
        if compute_stress:
            s = outputs["stress"][0].cpu().numpy()
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        if "energy_std" in outputs:
            self.results["energy_std"] = float(outputs["energy_std"][0])
        if "forces_std" in outputs:
            self.results["forces_std"] = outputs["forces_std"].cpu().numpy().copy()
            self.results["sigma_forces"] = float(outputs["sigma_forces"][0])
        self.results["in_domain"] = in_domain_of(outputs, 0)

    def _check_reference(self, atoms: Atoms) -> None:
        """Warn once per composition whose total energy rests on reference energies a member's
        training data did not determine (forces and energy differences within it are unaffected)."""
        from molequi.models.references import energy_determined, formula_of, undetermined_note

        if all(model.model.config.e0s_basis is None for model in self.potential.models):
            return  # every composition of its elements is determined (the common case)
        formula = formula_of(atoms.numbers)
        if formula in self._reference_warned:
            return
        self._reference_warned.add(formula)
        for model in self.potential.models:
            config = model.model.config
            if not energy_determined(config.e0s_basis, config.species, atoms.numbers):
                warnings.warn(undetermined_note(formula, config.e0s_basis, config.species), stacklevel=3)
                return

    def _prepare(self, atoms: Atoms) -> GraphBatch:
        """The model inputs for ``atoms``, reusing whatever did not change since the last call."""
        numbers = atoms.get_atomic_numbers()
        charge = total_charge(atoms)
        if self._numbers is None or not np.array_equal(numbers, self._numbers) or charge != self._charge:
            validate_atoms(atoms, "structure", check_contacts=False)  # empty, atomic numbers, coordinates
            numbers_tensor = torch.as_tensor(numbers, dtype=torch.long, device=self.device)
            self.potential.check_species(numbers_tensor)  # before any computation, once
            self._check_reference(atoms)  # once per new set of atoms, not per MD step
            self._numbers, self._charge = numbers.copy(), charge
            self.neighbors.reference = None  # force a rebuild
            self._graph = GraphBatch(
                pos=torch.empty(len(atoms), 3, dtype=torch.float64, device=self.device),
                numbers=numbers_tensor,
                batch=torch.zeros(len(atoms), dtype=torch.long, device=self.device),
                num_graphs=1,
                cell=torch.zeros(1, 3, 3, dtype=torch.float64, device=self.device),
                edge_index=torch.empty(2, 0, dtype=torch.long, device=self.device),
                shifts=torch.empty(0, 3, dtype=torch.float64, device=self.device),
                charge=torch.tensor([charge], dtype=torch.float64, device=self.device),
            )
        graph = self._graph
        positions = atoms.get_positions()
        if not np.all(np.isfinite(positions)):
            validate_atoms(atoms, "structure", check_contacts=False)  # raises, naming the atoms
        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = atoms.cell.array if pbc.any() else np.zeros((3, 3))
        if self.neighbors.update(positions, cell, pbc):
            graph.edge_index = torch.from_numpy(self.neighbors.edge_index).to(self.device)
            graph.shifts = torch.from_numpy(self.neighbors.shifts).to(self.device)
            graph.cell = torch.as_tensor(cell, dtype=torch.float64, device=self.device).reshape(1, 3, 3)
        # the same structure checks as predict(): overlapping atoms are an error, not a NaN
        check_close_contacts(positions, self.neighbors.edge_index, self.neighbors.shifts)
        graph.pos = torch.from_numpy(positions).to(self.device)
        return graph
