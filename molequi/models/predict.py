"""Convenience: energies, forces and properties of ``ase.Atoms`` from a loaded model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Batch

from molequi.data.graph import atoms_to_graph
from molequi.nn.forces import ForceOutput


def predict(
    model: ForceOutput,
    atoms: Atoms | Sequence[Atoms],
    batch_size: int = 64,
    compute_forces: bool = True,
) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
    """Predict ``energy`` (eV), ``forces`` (eV/Å) and property heads for one or many structures.

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
    for start in range(0, len(structures), batch_size):
        chunk = structures[start : start + batch_size]
        graphs = [atoms_to_graph(a, cutoff, with_labels=False, name=f"structure {start + k}") for k, a in enumerate(chunk)]
        batch = Batch.from_data_list(graphs).to(model.device)
        outputs = model(batch, compute_forces=compute_forces)
        results.extend(split_outputs(outputs, batch))
    return results[0] if single else results


def split_outputs(outputs: dict[str, torch.Tensor], batch: Batch) -> list[dict[str, np.ndarray]]:
    """Per-structure numpy copies of batched outputs (atom-level arrays split by ``batch.ptr``)."""
    ptr = batch.ptr.tolist()
    per_structure = []
    for k in range(batch.num_graphs):
        result = {}
        for key, value in outputs.items():
            value = value.detach().cpu().numpy()
            if key in ("energies", "forces"):
                result[key] = value[ptr[k] : ptr[k + 1]].copy()
            elif key == "energy":
                result[key] = float(value[k])
            else:
                result[key] = value[k].copy()
        per_structure.append(result)
    return per_structure
