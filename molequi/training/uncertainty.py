"""``molequi evaluate`` of a committee or shallow ensemble: its error and spread metrics (see
:mod:`molequi.models.uncertainty.evaluation` for their definitions), parity panels and the
reliability diagram."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from molequi.models.uncertainty import Calibration, reliability_bins
from molequi.models.uncertainty.evaluation import OutputErrors, committee_errors, error_metrics, member_count, uncertainty_report
from molequi.nn.forces import ForceOutput








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
    calibration = as_calibration(calibration, models)
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


