"""Each round's calibration and domain verdict: with test data, the round's committee is
calibrated on them (``molequi calibrate``'s fit, energy and forces apart, with its Spearman and
warnings) and every MD frame it explored carries its calibrated per-structure force std and
whether it lies inside the domain of those data (at most their 99th percentile)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms


def round_calibration(members: Sequence[Path], test_structures: Sequence[Atoms], path: Path, device: str = "cpu"):
    """Fit, write (``path``, JSON) and return the calibration of the committee ``members`` on
    ``test_structures``, and its warnings (one line each)."""
    from molequi.models.uncertainty import CalibrationWarning
    from molequi.models.uncertainty.calibration import models_identity
    from molequi.models.uncertainty.evaluation import committee_errors, fit_committee_calibration, load_committee

    models = load_committee([str(m) for m in members], device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)  # returned, and said by the loop
        calibration = fit_committee_calibration(
            committee_errors(models, list(test_structures), source="--test-data"),
            {"models": [str(m) for m in members], **models_identity(models), "data": "--test-data",
             "n_structures": len(test_structures)})
    calibration.save(path)
    return calibration, calibration.warnings()


def calibration_columns(calibration) -> dict[str, Any]:
    """The rounds table's view of a calibration: each output's Spearman and whether its fit fell
    back to a scale, and the in-domain threshold (eV/Å)."""
    columns: dict[str, Any] = {}
    for name in ("energy", "forces"):
        entry = calibration.info.get("outputs", {}).get(name)
        if entry:
            columns[f"{name}_spearman"] = entry.get("spearman")
            columns[f"{name}_calibration_fallback"] = int(bool(entry.get("warnings")))
    if calibration.domain_threshold is not None:
        columns["domain_threshold"] = calibration.domain_threshold
    return columns


def mark_domain(candidates: Sequence[Atoms], calibration) -> int:
    """Set ``info["sigma_forces"]`` (calibrated largest per-atom force std, eV/Å) and
    ``info["in_domain"]`` (1/0) of each MD frame; returns how many are out of the domain."""
    threshold = calibration.domain_threshold
    fit = calibration.fits.get("forces")
    out = 0
    for atoms in candidates:
        sigma = float(fit(np.float64(atoms.info["std_max"]))) if fit is not None else float(atoms.info["std_max"])
        atoms.info["sigma_forces"] = sigma
        if threshold is not None:
            atoms.info["in_domain"] = int(sigma <= threshold)
            out += sigma > threshold
    return int(out)
