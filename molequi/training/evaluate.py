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
from molequi.errors import ConfigError
from molequi.models.io import model_config
from molequi.nn.forces import ForceOutput
from molequi.training.metrics import MetricSums
from molequi.training.plots import parity_plot


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> CUDA if available else CPU; ``"cuda"`` without a GPU -> ConfigError."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device '{device}' requested but no CUDA GPU is available to torch "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False); use --device cpu"
        )
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got '{device}'")
    return device


def evaluate_graphs(
    model: ForceOutput,
    graphs: Sequence[Data],
    batch_size: int,
    device: torch.device,
    properties: Sequence[str] = (),
    weights: dict[str, float] | None = None,
    collect: bool = False,
) -> tuple[MetricSums, dict[str, np.ndarray] | None]:
    """Accumulate error sums of ``model`` (in eval mode) over labelled ``graphs``.

    With ``collect``, also return the reference and predicted energies (eV) and forces (eV/Å).
    """
    sums = MetricSums(properties, weights)
    arrays: dict[str, list[np.ndarray]] = {"energy_ref": [], "energy_pred": [], "forces_ref": [], "forces_pred": []}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(graphs), batch_size):
            batch = Batch.from_data_list(list(graphs[start : start + batch_size])).to(device)
            outputs = model(batch, compute_forces=True)
            sums.add(outputs, batch)
            if collect:
                arrays["energy_ref"].append(batch.energy.detach().cpu().numpy())
                arrays["energy_pred"].append(outputs["energy"].detach().to(torch.float64).cpu().numpy())
                arrays["forces_ref"].append(batch.forces.detach().cpu().numpy())
                arrays["forces_pred"].append(outputs["forces"].detach().to(torch.float64).cpu().numpy())
    finally:
        model.train(was_training)
    if not collect:
        return sums, None
    return sums, {key: np.concatenate(value) if value else np.zeros(0) for key, value in arrays.items()}


def evaluate_model(
    model: ForceOutput,
    structures: Sequence[Atoms],
    batch_size: int = 32,
    device: str | torch.device | None = None,
    plot: str | Path | None = None,
    source: str = "structures",
) -> dict[str, Any]:
    """Errors of ``model`` on labelled ``structures`` (energy eV and forces eV/Å labels).

    Returns ``energy_mae_meV``, ``energy_rmse_meV`` (total energy per structure, meV),
    ``forces_mae_meV_per_A``, ``forces_rmse_meV_per_A`` (per component, meV/Å),
    ``energy_per_atom_mae_meV``, ``n_structures``, ``n_atoms`` and ``<property>_mae``.
    With ``plot``, also write a two-panel parity plot PNG there.

    Raises:
        DataFormatError / InvalidStructureError: missing labels or broken structures (named by
            ``source`` and index); UnknownElementError: an element the model does not know.
    """
    device = resolve_device(device) if device is not None else model.device
    require_labels(list(structures), source)
    config = model_config(model)
    properties = [name for name in config.properties if all(name in atoms.info for atoms in structures)]
    graphs = [
        atoms_to_graph(
            atoms, config.cutoff, properties={p: atoms.info[p] for p in properties}, name=f"{source}: structure {k}"
        )
        for k, atoms in enumerate(structures)
    ]
    model = model.to(device)
    sums, arrays = evaluate_graphs(model, graphs, batch_size, device, properties, collect=True)
    metrics = sums.result()
    metrics.pop("loss")
    n_atoms = np.array([len(atoms) for atoms in structures], dtype=np.float64)
    metrics["energy_per_atom_mae_meV"] = float(
        1000.0 * np.mean(np.abs(arrays["energy_pred"] - arrays["energy_ref"]) / n_atoms)
    )
    metrics["n_atoms"] = int(n_atoms.sum())
    if plot is not None:
        parity_plot(
            arrays["energy_ref"], arrays["energy_pred"], arrays["forces_ref"], arrays["forces_pred"], plot,
            title=f"{source}: {len(structures)} structures",
        )
    return metrics
