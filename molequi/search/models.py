"""Adapter from trained molequi models to the screening :class:`~molequi.search.score.Scorer`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import ase
import numpy as np

from molequi.errors import ConfigError
from molequi.models import predict
from molequi.models.uncertainty.committee import load_models
from molequi.models.heads import head
from molequi.models.uncertainty import Calibration, as_calibration
from molequi.nn.forces import ForceOutput


class ModelScorer:
    """A committee of molequi models of the same kind, as a screening scorer.

    Predicts ``energy`` (eV, total; only if the models were trained on energies) and every property head of the models (e.g. ``gap`` eV,
    ``dipole_norm`` e·Å from a ``dipole`` head). Members must share species and properties.
    """

    def __init__(self, models: Sequence[ForceOutput], name: str = "molequi", batch_size: int = 64,
                 calibration: Calibration | str | Path | None = None) -> None:
        if not models:
            raise ConfigError("a ModelScorer needs at least one model")
        configs = [m.model.config for m in models]
        if any(c.species != configs[0].species or c.properties != configs[0].properties for c in configs):
            raise ConfigError("committee members must share species and property heads")
        self.models = list(models)
        self.name = name
        self.batch_size = batch_size
        self.species = set(configs[0].species)
        self.heads = dict(configs[0].properties)
        self.with_energy = "energy" in configs[0].trained_outputs  # a gap-only model's energy is untrained
        self.properties = (["energy"] if self.with_energy else []) + [_scored_name(n, k) for n, k in self.heads.items()]
        self.units = {"energy": "eV"} | {_scored_name(n, k): head(k).unit for n, k in self.heads.items() if head(k).unit}
        self.heads_of = {"energy": "energy"} | {_scored_name(n, k): n for n, k in self.heads.items()}
        self.calibration = _ScoredCalibration(as_calibration(calibration, self.models), self.heads_of) if calibration is not None else None
        self.in_domain_std = self.calibration.thresholds() if self.calibration is not None else {}
        self.fingerprint = models_fingerprint(self.models)

    def energy_undetermined(self, atoms: list[ase.Atoms]) -> list[str]:
        """Per molecule, '' when its total energy is comparable across compositions, else its
        formula: a member's training data did not determine the reference energies it rests on
        (see :mod:`molequi.models.references`)."""
        from molequi.models.references import energy_determined, formula_of

        configs = [model.model.config for model in self.models if model.model.config.e0s_basis is not None]
        if not self.with_energy or not configs:
            return [""] * len(atoms)
        return [formula_of(molecule.numbers) if any(not energy_determined(c.e0s_basis, c.species, molecule.numbers)
                                                    for c in configs) else "" for molecule in atoms]

    def predict(self, atoms: list[ase.Atoms]) -> dict[str, np.ndarray]:
        """``{property: [n_members, n_molecules]}``; forces are not needed for scoring. A
        shallow-ensemble model (``ensemble_heads`` K) contributes its K heads as members."""
        # one committee prediction: each molecule's ``<output>_members`` [members, ...]
        results = predict(self.models, atoms, self.batch_size, compute_forces=False)
        out = {}
        if self.with_energy:
            out["energy"] = np.stack([r["energy_members"] for r in results], axis=1)
        for name, kind in self.heads.items():
            values = np.stack([r[f"{name}_members"] for r in results], axis=1)
            scored, scalars = head(kind).scored(name, values)  # values [members, molecules, components]
            out[scored] = scalars
        return out


def models_fingerprint(models: Sequence[ForceOutput]) -> str:
    """SHA-256 (hex) of the models' content (:func:`molequi.models.io.model_digest` of each: its
    configuration and every weight, in order). A screening resume compares it, so a model file
    replaced at the same path (or the same file renamed) is recognised by what it holds."""
    from molequi.models.io import model_digest
    from molequi.utils import text_digest

    return text_digest(":".join(model_digest(model) for model in models))


def load_scorers(paths: Sequence[str | Path], device: str = "cpu",
                 calibration: Calibration | str | Path | None = None) -> list[ModelScorer]:
    """All ``--model`` paths as one committee scorer (its std is the spread over the models and
    their ensemble heads, calibrated by ``calibration``)."""
    models = load_models(paths, device=device)
    return [ModelScorer(models, name="+".join(Path(p).name for p in paths), calibration=calibration)]


class _ScoredCalibration:
    """A :class:`Calibration` keyed by the model's output names, applied to the screening
    property of each head (a dipole head ``mu`` is screened as ``mu_norm``)."""

    def __init__(self, calibration: Calibration, heads_of: dict[str, str]) -> None:
        self.inner, self.heads_of = calibration, heads_of
        self.fits = {scored: calibration.fits[name] for scored, name in heads_of.items() if name in calibration.fits}

    def apply(self, prop: str, std):
        return self.inner.apply(self.heads_of.get(prop, prop), std)

    def thresholds(self) -> dict[str, float]:
        """Out-of-domain std thresholds recorded by ``molequi calibrate`` (``in_domain_std``)."""
        outputs = self.inner.info.get("outputs", {})
        return {scored: float(outputs[name]["in_domain_std"]) for scored, name in self.heads_of.items()
                if "in_domain_std" in outputs.get(name, {})}


def _scored_name(name: str, kind: str) -> str:
    """The screening property of a head (its kind's :meth:`~molequi.models.heads.HeadKind.scored`:
    a dipole head ``mu`` is scored by its magnitude ``mu_norm``)."""
    return head(kind).scored(name, np.zeros((1, head(kind).components)))[0]
