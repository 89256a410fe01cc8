"""Figures: the learning curve of a run and parity plots of a model on a data set (PNG, Agg).

Each figure has a ``*_figure`` function returning a :class:`matplotlib.figure.Figure` (built
without pyplot: no global state, no display) and a writer that saves it atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from molequi.utils import atomic_write

HEXBIN_ABOVE = 2000
"""Parity panels with more points than this are drawn as a density (hexbin): a scatter of
10^5 force components is a solid blob that hides where most points lie."""

DPI = 100


FIGURE_FORMATS = ("png", "pdf", "svg")
"""The formats a figure is written in, named by the file's extension."""


def save_figure(figure, path: str | Path) -> Path:
    """Write ``figure`` to ``path`` atomically (nothing half-written on a crash), in the format its
    extension names (.png, .pdf or .svg; any other is refused: never PNG bytes in a ``.xyz``)."""
    from molequi.errors import OutputPathError

    kind = Path(path).suffix.lower().removeprefix(".")
    if kind not in FIGURE_FORMATS:
        raise OutputPathError(f"{path}: a figure is written as .png, .pdf or .svg, so its name must end in one of them")
    return atomic_write(path, lambda temporary: figure.savefig(temporary, format=kind, dpi=DPI, bbox_inches="tight"))


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


# --- learning curve -------------------------------------------------------------------------

_ERROR_CURVES = (  # (train column, validation column, label)
    ("train_forces_mae_meV_per_A", "val_forces_mae_meV_per_A", "forces MAE, meV/Å"),
    ("train_energy_mae_meV", "val_energy_mae_meV", "energy MAE, meV"),
)


def learning_curve_figure(history: Sequence[Mapping[str, object]], units: Mapping[str, str] | None = None):
    """Errors (top panels) and loss with the learning rate (bottom) against the epoch.

    Top: the MAE of each trained quantity, training batches dashed (running error of the
    weights being trained) and validation solid (EMA weights), one panel per unit so that no
    axis mixes units: forces in meV/Å, energy in meV, properties in their unit (``units[name]``,
    else the known unit of the label name). Bottom: training and validation loss (log) and, on
    the right axis, the learning rate.
    """
    curves = _ERROR_CURVES + _property_curves(history, units)
    by_unit: dict[str, list[tuple[str, str, str, str]]] = {}
    for k, (train_key, val_key, label) in enumerate(curves):
        if any(_points(history, key) for key in (train_key, val_key) if key):
            by_unit.setdefault(_unit_of(label), []).append((train_key, val_key, label, f"C{k % 10}"))
    panels = max(1, len(by_unit))
    figure = _new_figure(6.4, 2.8 + 2.2 * panels)
    *tops, bottom = figure.subplots(panels + 1, 1, sharex=True, height_ratios=(3,) * panels + (2,))
    for top, (unit, group) in zip(tops, by_unit.items()):
        for train_key, val_key, label, colour in group:
            for key, style, kind in ((val_key, "o-", "validation"), (train_key, "--", "train")):
                points = _points(history, key) if key else []
                if points:
                    top.plot(*zip(*points), style, ms=3, color=colour, label=f"{label} ({kind})")
        _log_if_positive(top)
        top.set_ylabel(f"MAE, {unit}" if unit else "MAE (the label's unit)")
        top.grid(True, which="both", alpha=0.3)
        top.legend(fontsize=8)
    if not by_unit:
        tops[0].text(0.5, 0.5, "no errors logged yet", transform=tops[0].transAxes, ha="center", va="center")
    tops[0].set_title("learning curve: train (running) and validation (EMA weights)", fontsize=10)

    for key, style, label in (("train_loss", "--", "train loss"), ("val_loss", "o-", "validation loss")):
        points = _points(history, key)
        if points:
            bottom.plot(*zip(*points), style, ms=3, color="k" if key == "val_loss" else "0.5", label=label)
    _log_if_positive(bottom)
    bottom.set_ylabel("loss (weighted, dimensionless)")
    bottom.set_xlabel("epoch")
    bottom.grid(True, which="both", alpha=0.3)
    rate = bottom.twinx()
    points = _points(history, "lr")
    if points:
        rate.plot(*zip(*points), "-", color="C3", lw=1.2, label="learning rate")
        _log_if_positive(rate)
    rate.set_ylabel("learning rate", color="C3")
    rate.tick_params(axis="y", colors="C3")
    handles = bottom.get_legend_handles_labels()[0] + rate.get_legend_handles_labels()[0]
    if handles:
        bottom.legend(handles=handles, fontsize=8)
    return figure


def _unit_of(label: str) -> str:
    """The unit at the end of a curve label (``"forces MAE, meV/Å"`` -> ``"meV/Å"``; '' if none)."""
    return label.rsplit(", ", 1)[1] if ", " in label else ""


def learning_curve(history: Sequence[Mapping[str, object]], path: str | Path,
                   units: Mapping[str, str] | None = None) -> Path:
    """Write :func:`learning_curve_figure` of ``history`` (rows of ``log.csv``) to ``path``."""
    return save_figure(learning_curve_figure(history, units), path)


def _property_curves(history: Sequence[Mapping[str, object]], units: Mapping[str, str] | None):
    keys = sorted({key for row in history for key in row if key.startswith("val_") and key.endswith("_mae")})
    curves = []
    for key in keys:
        name = key.removeprefix("val_").removesuffix("_mae")
        unit = (units or {}).get(name) or _known_unit(name)
        train_key = f"train_{name}_mae" if any(f"train_{name}_mae" in row for row in history) else ""
        curves.append((train_key, key, f"{name} MAE" + (f", {unit}" if unit else "")))
    return tuple(curves)


def _known_unit(name: str) -> str:
    from molequi.models.heads import property_unit

    return property_unit(name)


def _points(history: Sequence[Mapping[str, object]], key: str) -> list[tuple[int, float]]:
    points = [(int(row["epoch"]), _number(row.get(key))) for row in history if "epoch" in row]
    return [(epoch, value) for epoch, value in points if value is not None]


def _log_if_positive(axis) -> None:
    values = [y for line in axis.lines for y in np.asarray(line.get_ydata(), dtype=float)]
    if values and min(values) > 0:
        axis.set_yscale("log")


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# --- parity -----------------------------------------------------------------------------------


@dataclass
class ParityPanel:
    """One parity panel: reference and predicted values of a quantity in ``unit``; the MAE and
    RMSE are printed in ``mae_unit`` (``mae_factor`` × the unit, e.g. 1000 for meV from eV)."""

    label: str
    unit: str
    reference: np.ndarray
    predicted: np.ndarray
    mae_unit: str = ""
    mae_factor: float = 1.0
    centre: bool = False  # subtract the mean reference (total energies are large numbers)


@dataclass
class ReliabilityPanel:
    """A reliability diagram: per bin of predicted std (equal counts), the RMS predicted std
    (x) and the RMSE of the true errors (y), in ``unit``; calibrated stds lie on y = x."""

    label: str
    unit: str
    std: np.ndarray
    rmse: np.ndarray
    count: np.ndarray


def _reliability_panel(figure, axis, panel: ReliabilityPanel) -> None:
    x, y = np.asarray(panel.std, np.float64), np.asarray(panel.rmse, np.float64)
    if len(x):
        high = 1.08 * float(max(x.max(), y.max())) or 1.0
        axis.plot([0, high], [0, high], "k--", lw=0.8, label="ideal (y = x)")
        axis.plot(x, y, "o-", ms=4, label=f"{len(x)} bins of ≈{int(np.median(panel.count))} values")
        axis.set_xlim(0, high)
        axis.set_ylim(0, high)
        ratio = float(np.sqrt(np.sum(panel.count * y**2) / np.sum(panel.count * x**2)))
        axis.text(0.04, 0.96, f"RMSE / RMS(std) {ratio:.3g}", transform=axis.transAxes, va="top", fontsize=9,
                  bbox=dict(facecolor="white", alpha=0.8, edgecolor="none"))
        axis.legend(loc="lower right", fontsize=8)
    unit = f", {panel.unit}" if panel.unit else ""
    axis.set_xlabel(f"predicted std of {panel.label}{unit}")
    axis.set_ylabel(f"RMSE of {panel.label}{unit}")
    axis.set_aspect("equal", adjustable="box")
    axis.grid(True, alpha=0.3)


def parity_figure(panels: Sequence[ParityPanel], title: str = ""):
    """Side-by-side square parity panels: predicted vs reference, the y = x line, MAE and RMSE
    (and :class:`ReliabilityPanel` reliability diagrams among them).

    Panels with more than :data:`HEXBIN_ABOVE` points are drawn as a log-scaled density.
    A ``centre`` panel shows each value minus the mean reference (the mean is printed).
    """
    panels = list(panels) or [ParityPanel("no labels", "", np.zeros(0), np.zeros(0))]
    figure = _new_figure(4.2 * len(panels), 4.5 if title else 4.2)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, panel in zip(axes, panels):
        (_reliability_panel if isinstance(panel, ReliabilityPanel) else _parity_panel)(figure, axis, panel)
    if title:
        figure.suptitle(title, fontsize=11)
    return figure


def parity_plot(panels: Sequence[ParityPanel], path: str | Path, title: str = "") -> Path:
    """Write :func:`parity_figure` of ``panels`` to ``path``."""
    return save_figure(parity_figure(panels, title), path)


def _parity_panel(figure, axis, panel: ParityPanel) -> None:
    reference = np.ravel(np.asarray(panel.reference, dtype=np.float64))
    predicted = np.ravel(np.asarray(panel.predicted, dtype=np.float64))
    label, note = panel.label, ""
    if panel.centre and len(reference):
        shift = float(np.mean(reference))
        reference, predicted = reference - shift, predicted - shift
        label, note = f"{label} − mean", f"\nmean reference {shift:.6g} {panel.unit}".rstrip()
    if len(reference):
        low, high = float(min(reference.min(), predicted.min())), float(max(reference.max(), predicted.max()))
        pad = 0.03 * (high - low) or 1.0
        low, high = low - pad, high + pad
        if len(reference) > HEXBIN_ABOVE:
            cells = axis.hexbin(reference, predicted, gridsize=60, bins="log", mincnt=1, cmap="viridis",
                                extent=(low, high, low, high))
            figure.colorbar(cells, ax=axis, shrink=0.8, label="points per cell")
        else:
            axis.scatter(reference, predicted, s=6, alpha=0.6, edgecolors="none")
        axis.plot([low, high], [low, high], "k--", lw=0.8)
        axis.set_xlim(low, high)
        axis.set_ylim(low, high)
        error = predicted - reference
        mae = panel.mae_factor * float(np.mean(np.abs(error)))
        rmse = panel.mae_factor * float(np.sqrt(np.mean(error**2)))
        unit = panel.mae_unit or panel.unit
        axis.text(0.04, 0.96, f"MAE {mae:.3g} {unit}\nRMSE {rmse:.3g} {unit}\nn = {len(reference)}{note}",
                  transform=axis.transAxes, va="top", fontsize=9,
                  bbox=dict(facecolor="white", alpha=0.8, edgecolor="none"))
    unit = f", {panel.unit}" if panel.unit else ""
    axis.set_xlabel(f"reference {label}{unit}")
    axis.set_ylabel(f"predicted {label}{unit}")
    axis.set_aspect("equal", adjustable="box")
    axis.grid(True, alpha=0.3)


def data_title(source: str, n_structures: int) -> str:
    """A short figure title for a data set: the file name (not its absolute path) and its size."""
    name = source
    if "/" in source or "\\" in source:
        name = Path(source).name or source
    return f"{name}: {n_structures} structures"
