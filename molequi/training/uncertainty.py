"""Uncertainty of a committee or shallow ensemble on labelled structures: its metrics
(``molequi evaluate``), its calibration (``molequi calibrate``) and the reliability diagram.

Definitions (units of the output: eV for energies, eV/Å for forces, the label's for properties):

* forces: errors per Cartesian component; the predicted std of a component is its atom's
  spread (sqrt of the mean over x, y, z of the unbiased variance over members).
* ``forces_std_spearman``: Spearman correlation, over structures, of the mean |force error| and
  the mean predicted force std of each structure.
* ``<output>_rmse_over_std``: RMSE ÷ RMS(predicted std): 1 when the size is right, > 1 when the
  spread is too small (over-confident).
* ``<output>_miscalibration_area``: area between the observed and the expected fraction of errors
  within centred Gaussian intervals (Tran et al. 2020), 0 … 0.5.
* ``<output>_nll``: mean Gaussian negative log-likelihood, nats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms

from molequi.data import require_labels
from molequi.data.labels import structure_labels
from molequi.errors import ConfigError, DataFormatError
from molequi.models.heads import head, property_unit
from molequi.models.predict import predict
from molequi.models.uncertainty import (
    Calibration,
    fit_calibration,
    forces_spread,
    members_of,
    reliability_bins,
    spread,
    uncertainty_metrics,
)
from molequi.nn.forces import ForceOutput


@dataclass
class OutputErrors:
    """Errors of the members' mean and the members' spread for one output, flattened.

    ``errors`` signed (mean − label), ``std`` the raw spread of each value, ``groups`` the
    structure index of each value, ``unit`` the output's unit, ``reference`` the labels."""

    errors: np.ndarray
    std: np.ndarray
    groups: np.ndarray
    unit: str
    reference: np.ndarray


def member_count(models: Sequence[ForceOutput]) -> int:
    """Members of a committee: its models, each counting its ensemble heads."""
    return sum(model.model.config.ensemble_heads for model in models)


def committee_errors(
    models: Sequence[ForceOutput], structures: Sequence[Atoms], batch_size: int = 32, source: str = "structures"
) -> dict[str, OutputErrors]:
    """Mean-prediction errors and spreads of ``models`` (a committee, or one shallow ensemble)
    on labelled ``structures``, for each trained output the structures carry a label of:
    ``energy`` (eV, per structure), ``forces`` (eV/Å, per component) and property heads."""
    models = list(models)
    if member_count(models) < 2:
        raise ConfigError("an uncertainty needs two or more members: give several models (comma-separated) "
                          "or a model trained with --ensemble-heads K")
    structures = list(structures)
    require_labels(structures, source, energy=False, forces=False)
    config = models[0].model.config
    trained = set(config.trained_outputs)
    labels = [structure_labels(atoms) for atoms in structures]
    with_forces = "forces" in trained and all(f is not None for _, f in labels)
    per_model = [predict(model, structures, batch_size, compute_forces=with_forces) for model in models]
    out: dict[str, list] = {}

    def add(key: str, predicted, label, std, index: int) -> None:
        label = np.atleast_1d(np.asarray(label, dtype=np.float64))
        errors = np.atleast_1d(predicted).astype(np.float64) - label
        std = np.atleast_1d(std).astype(np.float64)
        entry = out.setdefault(key, [[], [], [], []])
        entry[0].append(errors.ravel())
        entry[1].append(np.broadcast_to(std, errors.shape).ravel())
        entry[2].append(np.full(errors.size, index))
        entry[3].append(np.broadcast_to(label, errors.shape).ravel())

    for k, (atoms, (energy, forces)) in enumerate(zip(structures, labels)):
        results = [r[k] for r in per_model]
        if "energy" in trained and energy is not None:
            members = np.concatenate([members_of(r, "energy") for r in results])
            add("energy", members.mean(0), energy, spread(members), k)
        if with_forces:
            members = np.concatenate([members_of(r, "forces") for r in results])  # [M, n, 3]
            add("forces", members.mean(0), forces, forces_spread(members)[:, None], k)
        for name, kind in config.properties.items():
            if name not in trained or name not in atoms.info:
                continue
            label = torch.as_tensor(np.atleast_1d(np.asarray(atoms.info[name], dtype=np.float64)))
            members = np.concatenate([members_of(r, name) for r in results])  # [M, components]
            comparable = head(kind).comparable(torch.as_tensor(members), label.unsqueeze(0)).numpy()
            add(name, comparable.mean(0), label.numpy(), spread(comparable), k)
    if not out:
        raise DataFormatError(f"{source}: the structures carry no label the models were trained on "
                              f"({', '.join(config.trained_outputs)})")
    units = {"energy": "eV", "forces": "eV/Å"}
    return {key: OutputErrors(np.concatenate(e), np.concatenate(s), np.concatenate(g),
                              units.get(key) or property_unit(key, config.properties.get(key)), np.concatenate(r))
            for key, (e, s, g, r) in out.items()}


def parity_panels(errors: dict[str, OutputErrors]) -> list:
    """Parity panels (members' mean vs label) of every output in ``errors``."""
    from molequi.training.plots import ParityPanel

    panels = []
    for key, value in errors.items():
        predicted = value.reference + value.errors
        if key == "energy":
            panels.append(ParityPanel("energy per structure", "eV", value.reference, predicted, "meV", 1000.0, centre=True))
        elif key == "forces":
            panels.append(ParityPanel("force components", "eV/Å", value.reference, predicted, "meV/Å", 1000.0))
        else:
            panels.append(ParityPanel(key, value.unit, value.reference, predicted))
    return panels


def error_metrics(errors: dict[str, OutputErrors]) -> dict[str, Any]:
    """MAE/RMSE of the members' mean, with the names and units of ``molequi evaluate``."""
    metrics: dict[str, Any] = {}
    for key, value in errors.items():
        mae, rmse = float(np.mean(np.abs(value.errors))), float(np.sqrt(np.mean(value.errors**2)))
        if key == "energy":
            metrics.update(energy_mae_meV=1000 * mae, energy_rmse_meV=1000 * rmse)
        elif key == "forces":
            metrics.update(forces_mae_meV_per_A=1000 * mae, forces_rmse_meV_per_A=1000 * rmse)
        else:
            metrics.update({f"{key}_mae": mae, f"{key}_rmse": rmse})
    return metrics


def uncertainty_report(errors: dict[str, OutputErrors], calibration: Calibration | None = None) -> dict[str, Any]:
    """``<output>_std_spearman``, ``<output>_rmse_over_std``, ``<output>_miscalibration_area`` and
    ``<output>_nll`` of each output (stds calibrated by ``calibration``); ``miscalibration_area``
    is the forces' (else the first output's). For forces the Spearman correlation is per
    structure (mean |error| vs mean std)."""
    metrics: dict[str, Any] = {}
    for key, value in errors.items():
        std = calibration.apply(key, value.std) if calibration else value.std
        result = uncertainty_metrics(np.abs(value.errors), std, errors=value.errors)
        if key == "forces" and len(np.unique(value.groups)) > 1:
            count = np.bincount(value.groups)
            keep = count > 0
            mean_error = np.bincount(value.groups, np.abs(value.errors))[keep] / count[keep]
            mean_std = np.bincount(value.groups, std)[keep] / count[keep]
            result["spearman"] = uncertainty_metrics(mean_error, mean_std).get("spearman", float("nan"))
        for name, number in result.items():
            metrics[f"{key}_std_spearman" if name == "spearman" else f"{key}_{name}"] = number
    first = "forces" if "forces" in errors else next(iter(errors))
    if f"{first}_miscalibration_area" in metrics:
        metrics["miscalibration_area"] = metrics[f"{first}_miscalibration_area"]
    metrics["calibrated"] = calibration is not None
    return metrics


def fit_committee_calibration(errors: dict[str, OutputErrors], provenance: dict[str, Any] | None = None) -> Calibration:
    """A :class:`Calibration` of every output in ``errors`` (see
    :func:`~molequi.models.uncertainty.fit_calibration`), with its fit metrics and each output's
    ``in_domain_std``: the 95th percentile of the calibrated std over the calibration data (the
    out-of-domain threshold ``molequi screen`` uses by default), in the output's unit."""
    fits, outputs = {}, {}
    for key, value in errors.items():
        fit, info = fit_calibration(value.errors, value.std, value.groups)
        fits[key] = fit
        calibrated = fit(value.std[np.isfinite(value.std)])
        outputs[key] = {"unit": value.unit, "in_domain_std": float(np.quantile(calibrated, 0.95)), **info}
    return Calibration(fits, {**(provenance or {}), "outputs": outputs})


def reliability_panels(errors: dict[str, OutputErrors], calibration: Calibration | None = None) -> list:
    """Reliability-diagram panels (binned RMSE vs binned std, ideal y = x) for :mod:`plots`."""
    from molequi.training.plots import ReliabilityPanel

    panels = []
    for key, value in errors.items():
        std = calibration.apply(key, value.std) if calibration else value.std
        x, y, count = reliability_bins(np.abs(value.errors), std)
        label = {"forces": "force components"}.get(key, key) + (" (calibrated)" if calibration else "")
        panels.append(ReliabilityPanel(label, value.unit, x, y, count))
    return panels


def evaluate_committee(
    models: Sequence[ForceOutput],
    structures: Sequence[Atoms],
    batch_size: int = 32,
    calibration: Calibration | str | Path | None = None,
    plot: str | Path | None = None,
    source: str = "structures",
) -> dict[str, Any]:
    """Errors of a committee's (or one shallow ensemble's) mean and the metrics of its spread.

    Returns the error metrics of :func:`~molequi.training.evaluate.evaluate_model` (for a
    committee, of the members' mean), ``n_members``, and per output ``<output>_std_spearman``,
    ``<output>_rmse_over_std``, ``<output>_miscalibration_area``, ``<output>_nll`` (see
    :func:`uncertainty_report`), with stds calibrated by ``calibration`` (a
    :class:`Calibration` or the JSON of ``molequi calibrate``). ``plot``: a PNG with the
    parity panels and a reliability diagram per output.
    """
    from molequi.models.uncertainty import as_calibration
    from molequi.training.evaluate import evaluate_model
    from molequi.training.plots import data_title, parity_plot

    models, structures = list(models), list(structures)
    calibration = as_calibration(calibration)
    errors = committee_errors(models, structures, batch_size, source)
    if len(models) == 1:  # one shallow ensemble: its usual metrics (its outputs are the heads' mean)
        metrics = evaluate_model(models[0], structures, batch_size=batch_size, device=models[0].device, source=source)
    else:
        metrics = error_metrics(errors)
        metrics.update(n_structures=len(structures), n_atoms=int(sum(len(a) for a in structures)))
    metrics["n_members"] = member_count(models)
    metrics.update(uncertainty_report(errors, calibration))
    if plot:
        panels = parity_panels(errors) + reliability_panels(errors, calibration)
        parity_plot(panels, plot, title=data_title(source, len(structures)))
    return metrics


def load_committee(spec: str | Sequence[str | Path], device: str | torch.device = "cpu") -> list[ForceOutput]:
    """Models from ``"a.molequi,b.molequi"`` or a list of paths; members must share species and heads."""
    from molequi.models import load_model

    paths = [p for p in spec.split(",") if p] if isinstance(spec, str) else list(spec)
    if not paths:
        raise ConfigError("no model given")
    models = [load_model(path, device=device) for path in paths]
    first = models[0].model.config
    for path, model in zip(paths, models):
        config = model.model.config
        if config.species != first.species or config.properties != first.properties:
            raise ConfigError(f"{path}: committee members must share species and property heads ({paths[0]} differs)")
    return models
