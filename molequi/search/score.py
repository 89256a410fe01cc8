"""Scoring protocol and batched committee predictions.

A scorer is any object with ``species``, ``properties`` and ``predict`` (see
:class:`Scorer`); the adapter for trained molequi models lives elsewhere.
Predictions keep the units of the model (energies eV, dipole e·Å, gap eV...).
"""

from __future__ import annotations

from typing import Iterable, Protocol, Sequence, runtime_checkable

import ase
import numpy as np
from molequi.errors import ConfigError


@runtime_checkable
class Scorer(Protocol):
    """A (committee of) model(s) predicting molecular properties.

    ``species``: atomic numbers the model knows (``None`` = any element).
    ``properties``: names of the predicted properties, e.g. ``["energy", "gap"]``.
    ``predict(atoms)`` returns ``{property: array [n_members, n_molecules]}``;
    a committee has ``n_members > 1``, a single model ``n_members == 1``.
    An optional ``name`` attribute identifies the scorer in the run manifest.
    """

    species: set[int] | None
    properties: list[str]

    def predict(self, atoms: list[ase.Atoms]) -> dict[str, np.ndarray]: ...


def scorer_identity(scorer: Scorer) -> dict:
    """What the run manifest records about a scorer (name, properties, species, and its
    ``fingerprint`` -- a content hash of its models -- when it has one)."""
    species = getattr(scorer, "species", None)
    identity = {"name": str(getattr(scorer, "name", type(scorer).__name__)),
                "properties": list(scorer.properties),
                "species": sorted(species) if species is not None else None}
    fingerprint = getattr(scorer, "fingerprint", None)
    if fingerprint is not None:  # the models' content: a model replaced at the same path is another model
        identity["fingerprint"] = str(fingerprint)
    calibration = getattr(scorer, "calibration", None)
    if calibration is not None:  # calibrated stds are other stds: a resume must not mix them
        identity["calibration"] = {name: [fit.form, fit.a, fit.b] for name, fit in sorted(calibration.fits.items())}
    return identity


def prediction_units(scorers: Sequence[Scorer]) -> dict[str, str]:
    """Unit of each predicted property: a scorer's optional ``units`` mapping, else ``eV`` for
    ``energy`` and QM9's unit for QM9's label names, else ''."""
    units: dict[str, str] = {}
    for scorer in scorers:
        given = getattr(scorer, "units", None) or {}
        for prop in scorer.properties:
            units[prop] = given.get(prop) or _known_unit(prop)
    return units


def _known_unit(name: str) -> str:
    if name == "energy":
        return "eV"
    try:
        from molequi.data.qm9 import PROPERTY_UNITS
    except ImportError:  # the screening extra without the model stack
        return ""
    return PROPERTY_UNITS.get(name, "")


def check_scorers(scorers: Sequence[Scorer]) -> list[str]:
    """Validate scorers and return all property names (must be unique across scorers)."""
    names: list[str] = []
    for scorer in scorers:
        if not isinstance(scorer, Scorer):
            raise ConfigError(f"{scorer!r} is not a Scorer (needs species, properties, predict)")
        for prop in scorer.properties:
            if prop in names:
                raise ConfigError(f"property {prop!r} is predicted by two scorers; rename one")
            names.append(prop)
    return names


def common_species(scorers: Iterable[Scorer]) -> frozenset[int] | None:
    """Elements every scorer knows (intersection); ``None`` when all accept any element."""
    sets = [set(s.species) for s in scorers if getattr(s, "species", None) is not None]
    if not sets:
        return None
    return frozenset(set.intersection(*sets))


def _members(scorer: Scorer, atoms: list[ase.Atoms]) -> dict[str, np.ndarray]:
    """Call one scorer and check the shape ``[n_members, n_molecules]`` of its output."""
    out = scorer.predict(atoms)
    checked = {}
    for prop in scorer.properties:
        if prop not in out:
            raise ConfigError(f"scorer {scorer_identity(scorer)['name']} did not return {prop!r}")
        values = np.asarray(out[prop], dtype=np.float64)
        if values.ndim == 1:
            values = values[None, :]  # a single model may return [n_molecules]
        if values.ndim != 2 or values.shape[1] != len(atoms):
            raise ConfigError(f"scorer output {prop!r} has shape {values.shape}, "
                             f"expected [n_members, {len(atoms)}]")
        checked[prop] = values
    return checked


def predict_members(scorers: Sequence[Scorer], atoms: list[ase.Atoms],
                    batch_size: int = 64) -> dict[str, np.ndarray]:
    """All members' predictions, ``{property: [n_members, n_molecules]}``, in batches."""
    batches: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(atoms), batch_size):
        batch = atoms[start:start + batch_size]
        for scorer in scorers:
            for prop, values in _members(scorer, batch).items():
                batches.setdefault(prop, []).append(values)
    return {prop: np.concatenate(parts, axis=1) for prop, parts in batches.items()}


def score_atoms(scorers: Sequence[Scorer], atoms: list[ase.Atoms],
                batch_size: int = 64) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{property: (mean, std)}`` across committee members, each ``[n_molecules]``.

    ``std`` is the unbiased std over members (ddof 1), calibrated when the scorer has a
    ``calibration`` (``apply(property, std)``, e.g. a
    :class:`~molequi.models.uncertainty.Calibration` read from ``molequi calibrate``'s JSON).
    A single member gives no estimate: its std is NaN (written as an empty cell), never 0.
    """
    if not atoms:
        return {prop: (np.zeros(0), np.zeros(0)) for s in scorers for prop in s.properties}
    members = predict_members(scorers, atoms, batch_size)
    calibrations = {prop: getattr(s, "calibration", None) for s in scorers for prop in s.properties}
    scores = {}
    for prop, values in members.items():
        if len(values) < 2:
            std = np.full(values.shape[1], np.nan)
        else:
            std = values.std(axis=0, ddof=1)
            if calibrations.get(prop) is not None:
                std = np.asarray(calibrations[prop].apply(prop, std), dtype=np.float64)
        scores[prop] = (values.mean(axis=0), std)
    return scores


def calibrate_std_threshold(scorer: Scorer, atoms_list: list[ase.Atoms],
                            quantile: float = 0.95, batch_size: int = 64) -> dict[str, float]:
    """Per-property committee-std threshold = ``quantile`` of the std on validation molecules.

    Molecules whose std exceeds it during screening are flagged out of domain.
    The threshold is in the unit of each property (e.g. eV).
    """
    if not 0.0 < quantile <= 1.0:
        raise ConfigError(f"quantile must be in (0, 1], got {quantile}")
    if not atoms_list:
        raise ConfigError("calibration needs at least one validation molecule")
    scores = score_atoms([scorer], list(atoms_list), batch_size)
    return {prop: float(np.quantile(std, quantile)) for prop, (_, std) in scores.items()}
