"""Convenience: energies, forces and properties of ``ase.Atoms`` from a loaded model."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Batch

from molequi.data.graph import structures_batch
from molequi.nn.forces import ForceOutput


def predict(
    model: ForceOutput,
    atoms: Atoms | Sequence[Atoms],
    batch_size: int = 64,
    compute_forces: bool = True,
) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
    """Predict ``energy`` (eV), ``forces`` (eV/Å) and property heads for one or many structures.

    Energies are float64 whatever the model dtype (a float32 network's residuals added to the
    float64 reference energies in float64, see :func:`molequi.nn.forces.energy_outputs`):
    ``energy``, ``energy_residual`` and ``energy_reference`` are Python floats (eV),
    ``energies`` a float64 array [n_atoms] (eV); forces are in the model dtype.

    Example::

        model = molequi.load_model("run/model.molequi")
        out = molequi.predict(model, ase.io.read("mol.xyz"))
        out["energy"], out["forces"]      # eV, [n_atoms, 3] eV/Å

    Returns one dict for one ``Atoms``, a list of dicts for a sequence. Every array is a copy.
    """
    single = isinstance(atoms, Atoms)
    structures = [atoms] if single else list(atoms)
    cutoff = model.model.config.cutoff
    results: list[dict[str, np.ndarray]] = []
    # without forces no autograd graph is needed: inference mode is ~2x faster on a CPU
    context = contextlib.nullcontext() if compute_forces else torch.inference_mode()
    for start in range(0, len(structures), batch_size):
        batch = structures_batch(structures[start : start + batch_size], cutoff, model.device, start)
        with context:
            outputs = model(batch, compute_forces=compute_forces)
        results.extend(split_outputs(outputs, batch))
    return results[0] if single else results


def split_outputs(outputs: dict[str, torch.Tensor], batch: Batch) -> list[dict[str, np.ndarray]]:
    """Per-structure numpy copies of batched outputs (atom-level arrays split by ``batch.ptr``)."""
    ptr = batch.ptr.tolist()
    host = {key: value.detach().cpu().numpy() for key, value in outputs.items()}  # one copy each
    per_structure = []
    for k in range(batch.num_graphs):
        result = {}
        for key, value in host.items():
            if key in ("energies", "forces"):
                result[key] = value[ptr[k] : ptr[k + 1]].copy()
            elif key in ("energy", "energy_residual", "energy_reference"):
                result[key] = float(value[k])
            else:
                result[key] = value[k].copy()
        per_structure.append(result)
    return per_structure
