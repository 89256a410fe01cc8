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

import warnings
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
from molequi.models.uncertainty.calibration import (DOMAIN_QUANTILE, Calibration, CalibrationWarning,
                                                    fit_calibration)
from molequi.models.uncertainty.metrics import uncertainty_metrics
from molequi.models.uncertainty.spread import forces_spread, spread
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
        raise ConfigError("an uncertainty needs two or more members: repeat --model (--model a.molequi --model b.molequi) "
                          "or a model trained with --ensemble-heads K")
    structures = list(structures)
    require_labels(structures, source, energy=False, forces=False)
    config = models[0].model.config
    trained = set(config.trained_outputs)
    labels = [structure_labels(atoms) for atoms in structures]
    with_forces = "forces" in trained and all(f is not None for _, f in labels)
    # one committee prediction: every member's values as ``<output>_members`` [M, ...] (float64)
    results = predict(models, structures, batch_size, compute_forces=with_forces)
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
        result = results[k]
        if "energy" in trained and energy is not None:
            members = result["energy_members"]  # [M]
            add("energy", members.mean(0), energy, spread(members), k)
        if with_forces:
            members = result["forces_members"]  # [M, n, 3]
            add("forces", members.mean(0), forces, forces_spread(members)[:, None], k)
        for name, kind in config.properties.items():
            if name not in trained or name not in atoms.info:
                continue
            label = torch.as_tensor(np.atleast_1d(np.asarray(atoms.info[name], dtype=np.float64)))
            members = result[f"{name}_members"]  # [M, components]
            comparable = head(kind).comparable(torch.as_tensor(members), label.unsqueeze(0)).numpy()
            add(name, comparable.mean(0), label.numpy(), spread(comparable), k)
    if not out:
        raise DataFormatError(f"{source}: the structures carry no label the models were trained on "
                              f"({', '.join(config.trained_outputs)})")
    units = {"energy": "eV", "forces": "eV/Å"}
    return {key: OutputErrors(np.concatenate(e), np.concatenate(s), np.concatenate(g),
                              units.get(key) or property_unit(key, config.properties.get(key)), np.concatenate(r))
            for key, (e, s, g, r) in out.items()}


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
    :func:`~molequi.models.uncertainty.fit_calibration`), with its fit metrics, its Spearman
    ranking and warnings (a flat power law or a ranking that is not significant, each also
    issued as a :class:`CalibrationWarning`), each output's ``in_domain_std`` (the 95th
    percentile of the calibrated std over the calibration data, the out-of-domain threshold
    ``molequi screen`` uses by default, in the output's unit), and ``domain``: the threshold of
    the per-structure verdict of the calculator and MD (see :func:`domain_threshold`)."""
    fits, outputs = {}, {}
    for key, value in errors.items():
        fit, info = fit_calibration(value.errors, value.std, value.groups)
        fits[key] = fit
        for note in info["warnings"]:
            warnings.warn(f"{key} calibration: {note}", CalibrationWarning, stacklevel=2)
        calibrated = fit(value.std[np.isfinite(value.std)])
        outputs[key] = {"unit": value.unit, "in_domain_std": float(np.quantile(calibrated, 0.95)), **info}
    extra = {}
    if "forces" in errors:
        extra["domain"] = domain_threshold(errors["forces"], fits["forces"])
    return Calibration(fits, {**(provenance or {}), **extra, "outputs": outputs})


def structure_sigma(std: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per structure (``groups``), the largest of its values of ``std``: the per-structure force
    std (eV/Å) from per-component stds, in the order of ``np.unique(groups)``."""
    _, index = np.unique(groups, return_inverse=True)
    largest = np.full(index.max() + 1, -np.inf)
    np.maximum.at(largest, index, std)
    return largest


def domain_threshold(forces: OutputErrors, fit, quantile: float = DOMAIN_QUANTILE) -> dict[str, Any]:
    """The in-domain threshold: the ``quantile`` of the per-structure calibrated force std (the
    largest calibrated per-atom std of each structure, eV/Å) over the held-out calibration
    structures, and what it means."""
    keep = np.isfinite(forces.std)
    sigma = structure_sigma(fit(forces.std[keep]), forces.groups[keep])
    return {"statistic": "largest calibrated per-atom force std of a structure", "unit": "eV/Å",
            "quantile": quantile, "threshold": float(np.quantile(sigma, quantile)), "n_structures": int(len(sigma))}


def load_committee(spec: str | Sequence[str | Path], device: str | torch.device = "cpu") -> list[ForceOutput]:
    """Models from a list of paths (or one path); members must share species and heads.

    Raises:
        ConfigError: no path, a comma-joined string of several paths, or members that differ."""
    from molequi.models.uncertainty.committee import load_models

    if isinstance(spec, str) and "," in spec:
        raise ConfigError(f"a committee is a list of model files, not one comma-joined string: "
                          f"load_committee({[p for p in spec.split(',') if p]!r})")
    paths = [spec] if isinstance(spec, (str, Path)) else list(spec)
    if not paths:
        raise ConfigError("no model given")
    models = load_models(paths, device=device)
    first = models[0].model.config
    for path, model in zip(paths, models):
        config = model.model.config
        if config.species != first.species or config.properties != first.properties:
            raise ConfigError(f"{path}: committee members must share species and property heads ({paths[0]} differs)")
    return models
