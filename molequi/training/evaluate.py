"""Evaluate a model on labelled structures: error metrics and parity plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Batch, Data

from molequi.data import atoms_to_graph, require_labels
from molequi.data.labels import found_label_keys
from molequi.devices import resolve_device  # noqa: F401  (re-exported: molequi.training.resolve_device)
from molequi.errors import DataFormatError
from molequi.models.config import ModelConfig
from molequi.models.heads import property_unit, property_units
from molequi.models.io import model_config
from molequi.nn.forces import ForceOutput
from molequi.training.data import check_uniform_labels
from molequi.training.metrics import MetricSums, has_label, property_prediction
from molequi.training.plots import ParityPanel, data_title, parity_plot


def evaluate_graphs(
    model: ForceOutput,
    graphs: Sequence[Data],
    batch_size: int,
    device: torch.device,
    properties: dict[str, str] | Sequence[str] = (),
    weights: dict[str, float] | None = None,
    collect: bool = False,
    compute_forces: bool | None = None,
) -> tuple[MetricSums, dict[str, np.ndarray] | None]:
    """Accumulate error sums of ``model`` (in eval mode) over labelled ``graphs``.

    ``compute_forces`` None: when the graphs carry forces. With ``collect``, also return the
    reference and predicted values (``<key>_ref`` / ``<key>_pred``) of the energies (eV),
    forces (eV/Å) and ``properties`` present.
    """
    if compute_forces is None:
        compute_forces = bool(graphs) and "forces" in graphs[0]
    sums = MetricSums(properties, weights)
    arrays: dict[str, list[np.ndarray]] = {}

    def keep(key: str, reference: torch.Tensor, predicted: torch.Tensor) -> None:
        arrays.setdefault(f"{key}_ref", []).append(reference.detach().to(torch.float64).cpu().numpy())
        arrays.setdefault(f"{key}_pred", []).append(predicted.detach().to(torch.float64).cpu().numpy())

    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(graphs), batch_size):
            batch = Batch.from_data_list(list(graphs[start : start + batch_size])).to(device)
            outputs = model(batch, compute_forces=compute_forces)
            sums.add(outputs, batch)
            if not collect:
                continue
            if has_label(batch, "energy"):
                keep("energy", batch.energy, outputs["energy"])
            if "forces" in outputs and has_label(batch, "forces"):
                keep("forces", batch.forces, outputs["forces"])
            for name, kind in sums.kinds.items():
                keep(name, batch[name], property_prediction(outputs[name], batch[name], kind))
    finally:
        model.train(was_training)
    if not collect:
        return sums, None
    return sums, {key: np.concatenate(value) for key, value in arrays.items()}


def reported_metrics(metrics: dict[str, Any], config: ModelConfig) -> dict[str, Any]:
    """``metrics`` without the loss and without the energy/force errors of a model whose
    training did not fit them (its energy is untrained: an error of it would mislead)."""
    kept = {key: value for key, value in metrics.items() if key != "loss"}
    for output in ("energy", "forces"):
        if output not in config.trained_outputs:
            kept = {key: value for key, value in kept.items() if not key.startswith(f"{output}_")}
    return kept


def parity_panels(arrays: dict[str, np.ndarray], config: ModelConfig) -> list[ParityPanel]:
    """Parity panels for the trained outputs found in ``arrays`` (from :func:`evaluate_graphs`)."""
    panels = []
    if "energy" in config.trained_outputs and "energy_ref" in arrays:
        panels.append(ParityPanel("energy per structure", "eV", arrays["energy_ref"], arrays["energy_pred"], "meV", 1000.0, centre=True))
    if "forces" in config.trained_outputs and "forces_ref" in arrays:
        panels.append(ParityPanel("force components", "eV/Å", arrays["forces_ref"], arrays["forces_pred"], "meV/Å", 1000.0))
    for name, kind in config.properties.items():
        if f"{name}_ref" in arrays:
            panels.append(ParityPanel(name, property_unit(name, kind), arrays[f"{name}_ref"], arrays[f"{name}_pred"]))
    return panels


def evaluate_model(
    model: ForceOutput,
    structures: Sequence[Atoms],
    batch_size: int = 32,
    device: str | torch.device | None = None,
    plot: str | Path | None = None,
    source: str = "structures",
) -> dict[str, Any]:
    """Errors of ``model`` on labelled ``structures``, for the outputs the model was trained on.

    Energy-and-force models: ``energy_mae_meV``, ``energy_rmse_meV`` (total energy per
    structure, meV), ``forces_mae_meV_per_A``, ``forces_rmse_meV_per_A`` (per component,
    meV/Å), ``energy_per_atom_mae_meV``. Property heads whose label is in every structure's
    ``atoms.info``: ``<name>_mae`` and ``<name>_rmse`` in the label's unit (QM9: eV for
    energies and the gap, e·Å for the dipole magnitude). Always ``n_structures`` and
    ``n_atoms``. With ``plot``, also write a parity plot PNG there (one panel per output).

    Raises:
        DataFormatError / InvalidStructureError: missing labels or broken structures (named by
            ``source`` and index); UnknownElementError: an element the model does not know.
    """
    device = resolve_device(device) if device is not None else model.device
    config = model_config(model)
    structures = list(structures)
    properties = {name: kind for name, kind in config.properties.items() if all(name in atoms.info for atoms in structures)}
    require_labels(structures, source, energy=False, forces=False)  # shapes; what is present is evaluated
    graphs = [
        atoms_to_graph(
            atoms, config.cutoff, properties={p: atoms.info[p] for p in properties}, name=f"{source}: structure {k}"
        )
        for k, atoms in enumerate(structures)
    ]
    check_uniform_labels(graphs, [source])
    with_forces = "forces" in config.trained_outputs and bool(graphs) and "forces" in graphs[0]
    model = model.to(device)
    sums, arrays = evaluate_graphs(model, graphs, batch_size, device, properties, collect=True, compute_forces=with_forces)
    metrics = reported_metrics(sums.result(), config)
    if not any(key.endswith("_mae") or key.endswith("_mae_meV") or key.endswith("_per_A") for key in metrics):
        wanted = ", ".join(config.trained_outputs)
        raise DataFormatError(
            f"{source}: the structures carry no label the model was trained on ({wanted}); structure 0 has "
            f"{found_label_keys(structures[0])} (name other keys with --energy-key / --forces-key)"
        )
    n_atoms = np.array([len(atoms) for atoms in structures], dtype=np.float64)
    if "energy_mae_meV" in metrics:
        metrics["energy_per_atom_mae_meV"] = float(
            1000.0 * np.mean(np.abs(arrays["energy_pred"] - arrays["energy_ref"]) / n_atoms)
        )
    metrics["n_atoms"] = int(n_atoms.sum())
    if properties:
        metrics["property_units"] = property_units(properties)
    if plot is not None:
        parity_plot(parity_panels(arrays, config), plot, title=data_title(source, len(structures)))
    return metrics
