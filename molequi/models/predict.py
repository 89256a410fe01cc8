"""Convenience: energies, forces and properties of ``ase.Atoms`` from a loaded model."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Batch

from molequi.data.graph import structures_batch
from molequi.models.uncertainty import MEMBERS, Calibration, as_calibration, forces_spread, members_of, spread
from molequi.nn.forces import ForceOutput


def predict(
    model: ForceOutput | Sequence[ForceOutput],
    atoms: Atoms | Sequence[Atoms],
    batch_size: int = 64,
    compute_forces: bool = True,
    calibration: Calibration | str | Path | None = None,
) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
    """Predict ``energy`` (eV), ``forces`` (eV/Å) and property heads for one or many structures.

    Energies are float64 whatever the model dtype (a float32 network's residuals added to the
    float64 reference energies in float64, see :func:`molequi.nn.forces.energy_outputs`):
    ``energy``, ``energy_residual`` and ``energy_reference`` are Python floats (eV),
    ``energies`` a float64 array [n_atoms] (eV); forces are in the model dtype.

    Uncertainty: ``model`` may be a list (a committee), and a model with ``ensemble_heads`` K ≥ 2
    is a shallow ensemble of K heads. Whenever there are two or more members, the results are
    the means over members and carry ``energy_std`` (eV), ``forces_std`` ([n_atoms] eV/Å, per
    atom sqrt of the mean over x, y, z of the variance) and ``<property>_std`` (unbiased, ddof
    1; calibrated by ``calibration``, a :class:`~molequi.models.uncertainty.Calibration` or the
    JSON file of ``molequi calibrate``), and every member's values as ``energy_members`` [M],
    ``forces_members`` [M, n_atoms, 3] and ``<property>_members``. With one member there is no
    ``*_std`` key at all.

    Example::

        model = molequi.load_model("run/model.molequi")
        out = molequi.predict(model, ase.io.read("mol.xyz"))
        out["energy"], out["forces"]      # eV, [n_atoms, 3] eV/Å

    Returns one dict for one ``Atoms``, a list of dicts for a sequence. Every array is a copy.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        from molequi.errors import ConfigError

        raise ConfigError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    if not isinstance(model, ForceOutput):
        return _predict_committee(list(model), atoms, batch_size, compute_forces, calibration)
    single = isinstance(atoms, Atoms)
    structures = [atoms] if single else list(atoms)
    cutoff = model.model.config.cutoff
    results: list[dict[str, np.ndarray]] = []
    # without forces no autograd graph is needed: inference mode is ~2x faster on a CPU
    # (a shallow ensemble's per-head forces need the graph even then: no_grad is not enough)
    context = contextlib.nullcontext() if compute_forces else torch.inference_mode()
    for start in range(0, len(structures), batch_size):
        batch = structures_batch(structures[start : start + batch_size], cutoff, model.device, start)
        with context:
            outputs = model(batch, compute_forces=compute_forces)
        results.extend(split_outputs(outputs, batch))
    if model.model.config.ensemble_heads > 1:
        calibration = as_calibration(calibration, [model])
        results = [_with_spread(result, [result], model.model.config.properties, calibration) for result in results]
    return results[0] if single else results


def _predict_committee(models, atoms, batch_size, compute_forces, calibration):
    """:func:`predict` of a committee: means and spreads over all members of all models."""
    if not models:
        raise ValueError("predict needs at least one model")
    calibration = as_calibration(calibration, models)
    per_model = [predict(m, atoms, batch_size, compute_forces) for m in models]
    if isinstance(atoms, Atoms):
        per_model = [[r] for r in per_model]
    properties = models[0].model.config.properties
    combined = [_with_spread(results[0], list(results), properties, calibration, mean=True) for results in zip(*per_model)]
    return combined[0] if isinstance(atoms, Atoms) else combined


def _with_spread(result, member_results, properties, calibration, mean: bool = False):
    """``result`` with the means (``mean``) and unbiased spreads of the members found in
    ``member_results`` (one model's dict per model; shallow ensembles count K members each)."""
    result = {key: value for key, value in result.items() if not key.endswith(MEMBERS)}
    keys = ["energy"] + (["forces"] if "forces" in result else []) + list(properties)
    for key in keys:
        members = np.concatenate([members_of(r, key) for r in member_results])
        result[f"{key}{MEMBERS}"] = members
        if mean:
            result[key] = float(members.mean(0)) if key == "energy" else members.mean(0).astype(np.asarray(result[key]).dtype)
        if len(members) < 2:
            continue
        std = forces_spread(members) if key == "forces" else spread(members)
        if key == "energy":
            std = float(std)
        result[f"{key}_std"] = calibration.apply(key, std) if calibration else std
    return result


def split_outputs(outputs: dict[str, torch.Tensor], batch: Batch) -> list[dict[str, np.ndarray]]:
    """Per-structure numpy copies of batched outputs (atom-level arrays split by ``batch.ptr``;
    a shallow ensemble's ``*_members`` [K, ...] split along their second axis)."""
    ptr = batch.ptr.tolist()
    host = {key: value.detach().cpu().numpy() for key, value in outputs.items()}  # one copy each
    per_structure = []
    for k in range(batch.num_graphs):
        result = {}
        for key, value in host.items():
            if key in ("energies", "forces"):
                result[key] = value[ptr[k] : ptr[k + 1]].copy()
            elif key == "forces" + MEMBERS:
                result[key] = value[:, ptr[k] : ptr[k + 1]].copy()
            elif key.endswith(MEMBERS):
                result[key] = value[:, k].copy()
            elif key in ("energy", "energy_residual", "energy_reference"):
                result[key] = float(value[k])
            else:
                result[key] = value[k].copy()
        per_structure.append(result)
    return per_structure
