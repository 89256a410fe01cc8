"""Adapter from trained molequi models to the screening :class:`~molequi.search.score.Scorer`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import ase
import numpy as np

from molequi.models import load_model, predict
from molequi.models.heads import head
from molequi.nn.forces import ForceOutput


class ModelScorer:
    """A committee of molequi models of the same kind, as a screening scorer.

    Predicts ``energy`` (eV, total; only if the models were trained on energies) and every property head of the models (e.g. ``gap`` eV,
    ``dipole_norm`` e·Å from a ``dipole`` head). Members must share species and properties.
    """

    def __init__(self, models: Sequence[ForceOutput], name: str = "molequi", batch_size: int = 64) -> None:
        if not models:
            raise ValueError("a ModelScorer needs at least one model")
        configs = [m.model.config for m in models]
        if any(c.species != configs[0].species or c.properties != configs[0].properties for c in configs):
            raise ValueError("committee members must share species and property heads")
        self.models = list(models)
        self.name = name
        self.batch_size = batch_size
        self.species = set(configs[0].species)
        self.heads = dict(configs[0].properties)
        self.with_energy = "energy" in configs[0].trained_outputs  # a gap-only model's energy is untrained
        self.properties = (["energy"] if self.with_energy else []) + [_scored_name(n, k) for n, k in self.heads.items()]
        self.units = {"energy": "eV"} | {_scored_name(n, k): head(k).unit for n, k in self.heads.items() if head(k).unit}

    def predict(self, atoms: list[ase.Atoms]) -> dict[str, np.ndarray]:
        """``{property: [n_members, n_molecules]}``; forces are not needed for scoring."""
        per_member = [predict(model, atoms, self.batch_size, compute_forces=False) for model in self.models]
        out = {}
        if self.with_energy:
            out["energy"] = np.array([[r["energy"] for r in results] for results in per_member])
        for name, kind in self.heads.items():
            values = np.array([[np.asarray(r[name]) for r in results] for results in per_member])
            scored, scalars = head(kind).scored(name, values)
            out[scored] = scalars
        return out


def load_scorers(paths: Sequence[str | Path], device: str = "cpu") -> list[ModelScorer]:
    """All ``--model`` paths as one committee scorer (its std is the committee's spread)."""
    models = [load_model(path, device=device) for path in paths]
    return [ModelScorer(models, name="+".join(Path(p).name for p in paths))]


def _scored_name(name: str, kind: str) -> str:
    """The screening property of a head (its kind's :meth:`~molequi.models.heads.HeadKind.scored`:
    a dipole head ``mu`` is scored by its magnitude ``mu_norm``)."""
    return head(kind).scored(name, np.zeros((1, head(kind).components)))[0]
