"""Figures: parity and learning-curve content (titles, labels, density mode) and PNG files."""

from __future__ import annotations

import math

import numpy as np

from molequi.training.plots import (
    HEXBIN_ABOVE,
    ParityPanel,
    data_title,
    learning_curve,
    learning_curve_figure,
    parity_figure,
    parity_plot,
)


def _panels(n_forces: int):
    rng = np.random.default_rng(0)
    energy = rng.normal(-97000.0, 2.0, 50)
    forces = rng.normal(0.0, 1.0, n_forces)
    return [
        ParityPanel("energy per structure", "eV", energy, energy + 0.01, "meV", 1000.0, centre=True),
        ParityPanel("force components", "eV/Å", forces, forces + rng.normal(0, 0.05, n_forces), "meV/Å", 1000.0),
    ]


def test_parity_square_axes_mae_rmse_and_centred_energy(tmp_path):
    figure = parity_figure(_panels(100), title=data_title("/very/long/absolute/path/ethanol.extxyz", 50))
    assert figure._suptitle.get_text() == "ethanol.extxyz: 50 structures"
    energy, forces = figure.axes[:2]
    text = " ".join(t.get_text() for t in energy.texts)
    assert "MAE 10 meV" in text and "RMSE 10 meV" in text and "mean reference -9699" in text
    assert "− mean" in energy.get_xlabel() and energy.get_xlabel().endswith(", eV")
    assert abs(energy.get_xlim()[1]) < 100  # centred: not around -97000 eV
    for axis in (energy, forces):
        assert axis.get_xlim() == axis.get_ylim() and axis.get_aspect() == 1.0
    assert forces.collections and type(forces.collections[0]).__name__ == "PathCollection"  # a scatter
    path = parity_plot(_panels(100), tmp_path / "parity.png", title="t")
    assert path.stat().st_size > 1000


def test_parity_density_above_threshold():
    figure = parity_figure(_panels(HEXBIN_ABOVE + 1))
    forces = figure.axes[1]
    assert type(forces.collections[0]).__name__ == "PolyCollection"  # hexbin
    assert any(axis.get_ylabel() == "points per cell" for axis in figure.axes)  # its colour bar


def test_data_title_keeps_non_paths():
    assert data_title("qm9:test?n=100", 100) == "qm9:test?n=100: 100 structures"


def _history(epochs: int = 6):
    rows = []
    for epoch in range(1, epochs + 1):
        row = {"epoch": epoch, "lr": 1e-3 / epoch, "train_loss": 1.0 / epoch, "train_energy_mae_meV": 50.0 / epoch,
               "train_forces_mae_meV_per_A": 90.0 / epoch, "val_loss": math.nan}
        if epoch % 2 == 0:
            row.update(val_loss=1.2 / epoch, val_energy_mae_meV=60.0 / epoch, val_forces_mae_meV_per_A=99.0 / epoch,
                       val_gap_mae=0.5 / epoch, val_mystery_mae=0.1)
        rows.append(row)
    return rows


def test_learning_curve_train_validation_lr_and_units(tmp_path):
    figure = learning_curve_figure(_history(), units={"mystery": "kcal/mol"})
    *errors, loss, rate = figure.axes
    labels = [line.get_label() for axis in errors for line in axis.lines]
    assert "forces MAE, meV/Å (train)" in labels and "forces MAE, meV/Å (validation)" in labels
    assert "energy MAE, meV (validation)" in labels
    assert "gap MAE, eV (validation)" in labels  # known unit of a QM9 label
    assert "mystery MAE, kcal/mol (validation)" in labels  # unit given by the caller
    for axis in errors:  # one unit per axis: meV/Å, meV, eV and kcal/mol each get a panel
        unit = axis.get_ylabel().removeprefix("MAE, ")
        assert all(line.get_label().split(" (")[0].endswith(f", {unit}") for line in axis.lines), axis.get_ylabel()
    assert len(errors) == 4
    assert [line.get_label() for line in loss.lines] == ["train loss", "validation loss"]
    assert rate.get_ylabel() == "learning rate" and len(rate.lines[0].get_xdata()) == 6
    validation = next(line for line in loss.lines if line.get_label() == "validation loss")
    assert list(validation.get_xdata()) == [2, 4, 6]  # epochs without validation are skipped
    assert learning_curve(_history(), tmp_path / "lc.png").stat().st_size > 1000


def test_learning_curve_of_empty_history(tmp_path):
    assert learning_curve([], tmp_path / "lc.png").stat().st_size > 1000
