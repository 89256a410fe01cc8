"""Figures: the learning curve of a run and parity plots of a model on a data set (PNG, Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from molequi.utils import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def learning_curve(history: Sequence[Mapping[str, object]], path: str | Path) -> Path:
    """Validation force MAE (meV/Å) and energy MAE (meV) against the epoch, log y axis."""
    plt = _pyplot()
    rows = [row for row in history if row.get("val_forces_mae_meV_per_A") not in (None, "")]
    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    if rows:
        epochs = [int(row["epoch"]) for row in rows]
        axis.plot(epochs, [float(row["val_forces_mae_meV_per_A"]) for row in rows], "o-", ms=3, label="forces MAE, meV/Å")
        axis.plot(epochs, [float(row["val_energy_mae_meV"]) for row in rows], "s-", ms=3, label="energy MAE, meV")
        axis.set_yscale("log")
        axis.legend()
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation error")
    axis.set_title("molequi learning curve (validation, EMA weights)")
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    try:
        return atomic_write(path, lambda temporary: figure.savefig(temporary, format="png"))
    finally:
        plt.close(figure)


def parity_plot(
    energy_reference: np.ndarray,
    energy_predicted: np.ndarray,
    forces_reference: np.ndarray,
    forces_predicted: np.ndarray,
    path: str | Path,
    title: str = "",
) -> Path:
    """Two panels: predicted vs reference total energies (eV, shifted by the mean reference
    energy) and force components (eV/Å), with the y = x line and the MAE in each panel."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.6), dpi=120)
    shift = float(np.mean(energy_reference)) if len(energy_reference) else 0.0
    panels = [
        (left, np.asarray(energy_reference) - shift, np.asarray(energy_predicted) - shift,
         f"energy − {shift:.3f} eV", "eV", "meV"),
        (right, np.ravel(forces_reference), np.ravel(forces_predicted), "force components", "eV/Å", "meV/Å"),
    ]
    for axis, reference, predicted, label, unit, small_unit in panels:
        axis.scatter(reference, predicted, s=4, alpha=0.5, edgecolors="none")
        if len(reference):
            low, high = float(min(reference.min(), predicted.min())), float(max(reference.max(), predicted.max()))
            axis.plot([low, high], [low, high], "k--", lw=0.8)
            mae = 1000.0 * float(np.mean(np.abs(predicted - reference)))
            axis.text(0.04, 0.94, f"MAE {mae:.2f} {small_unit}", transform=axis.transAxes, va="top")
        axis.set_xlabel(f"reference {label}, {unit}")
        axis.set_ylabel(f"predicted {label}, {unit}")
        axis.set_aspect("equal", adjustable="datalim")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    try:
        return atomic_write(path, lambda temporary: figure.savefig(temporary, format="png"))
    finally:
        plt.close(figure)
