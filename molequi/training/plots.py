"""Figures: the learning curve of a run and parity plots of a model on a data set (PNG, Agg)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from molequi.utils import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def learning_curve(history: Sequence[Mapping[str, object]], path: str | Path) -> Path:
    """Every validation MAE in the history (forces meV/Å, energy meV, properties in their
    unit) against the epoch, log y axis."""
    plt = _pyplot()
    keys = sorted({key for row in history for key in row if key.startswith("val_") and key.endswith("_mae") or
                   key in ("val_forces_mae_meV_per_A", "val_energy_mae_meV")}, key=_curve_order)
    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    plotted = False
    for key in keys:
        points = [(int(row["epoch"]), _number(row.get(key))) for row in history]
        points = [(epoch, value) for epoch, value in points if value is not None and value > 0]
        if points:
            axis.plot(*zip(*points), "o-", ms=3, label=_curve_label(key))
            plotted = True
    if plotted:
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


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _curve_order(key: str) -> tuple[int, str]:
    return ({"val_forces_mae_meV_per_A": 0, "val_energy_mae_meV": 1}.get(key, 2), key)


def _curve_label(key: str) -> str:
    return {"val_forces_mae_meV_per_A": "forces MAE, meV/Å", "val_energy_mae_meV": "energy MAE, meV"}.get(
        key, key.removeprefix("val_").removesuffix("_mae") + " MAE"
    )


@dataclass
class ParityPanel:
    """One parity panel: reference and predicted values of a quantity in ``unit``; the MAE is
    printed in ``mae_unit`` (``mae_factor`` × the unit, e.g. 1000 for meV from eV)."""

    label: str
    unit: str
    reference: np.ndarray
    predicted: np.ndarray
    mae_unit: str = ""
    mae_factor: float = 1.0
    centre: bool = False  # subtract the mean reference (total energies are large numbers)


def parity_plot(panels: Sequence[ParityPanel], path: str | Path, title: str = "") -> Path:
    """Side-by-side parity panels (predicted vs reference, the y = x line, the MAE in each)."""
    plt = _pyplot()
    panels = list(panels) or [ParityPanel("no labels", "", np.zeros(0), np.zeros(0))]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), dpi=120, squeeze=False)
    for axis, panel in zip(axes[0], panels):
        reference, predicted = np.ravel(panel.reference), np.ravel(panel.predicted)
        label = panel.label
        if panel.centre and len(reference):
            shift = float(np.mean(reference))
            reference, predicted, label = reference - shift, predicted - shift, f"{label} − {shift:.3f} {panel.unit}"
        axis.scatter(reference, predicted, s=4, alpha=0.5, edgecolors="none")
        if len(reference):
            low, high = float(min(reference.min(), predicted.min())), float(max(reference.max(), predicted.max()))
            axis.plot([low, high], [low, high], "k--", lw=0.8)
            mae = panel.mae_factor * float(np.mean(np.abs(predicted - reference)))
            axis.text(0.04, 0.94, f"MAE {mae:.3g} {panel.mae_unit or panel.unit}", transform=axis.transAxes, va="top")
        unit = f", {panel.unit}" if panel.unit else ""
        axis.set_xlabel(f"reference {label}{unit}")
        axis.set_ylabel(f"predicted {label}{unit}")
        axis.set_aspect("equal", adjustable="datalim")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    try:
        return atomic_write(path, lambda temporary: figure.savefig(temporary, format="png"))
    finally:
        plt.close(figure)
