"""Uncertainty: unbiased spreads, calibration fits with known answers, metrics with known
answers, and the evaluate / calibrate commands on a committee."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from conftest import random_model
from molequi.errors import ConfigError
from molequi.models import save_model
from molequi.models.uncertainty import (
    Calibration,
    Fit,
    fit_calibration,
    fit_scale,
    forces_spread,
    miscalibration_area,
    reliability_bins,
    spread,
    uncertainty_metrics,
)
from molequi.models.uncertainty.metrics import _trapezoid


def test_spread_is_unbiased_and_absent_for_one_member():
    members = np.array([[1.0, 2.0], [3.0, 2.0]])
    np.testing.assert_allclose(spread(members), [np.sqrt(2.0), 0.0])  # ddof 1: |Δ|/√2
    assert spread(members[:1]) is None and forces_spread(np.zeros((1, 4, 3))) is None
    forces = np.random.default_rng(0).normal(size=(4, 5, 3))
    np.testing.assert_allclose(forces_spread(forces), np.sqrt(forces.var(0, ddof=1).mean(-1)))


def synthetic(n: int, a: float, b: float, seed: int = 0):
    """Errors drawn from N(0, (a σ^b)²) for stds σ spread over two decades."""
    rng = np.random.default_rng(seed)
    std = np.exp(rng.uniform(np.log(0.01), np.log(1.0), n))
    return rng.normal(0.0, a * std**b), std


def test_calibration_recovers_a_known_scale():
    errors, std = synthetic(20000, 3.0, 1.0)
    fit, info = fit_calibration(errors, std)
    assert fit.form == "scale" and fit.a == pytest.approx(3.0, rel=0.03)
    assert info["before"]["rmse_over_std"] == pytest.approx(3.0, rel=0.05)
    assert info["after"]["rmse_over_std"] == pytest.approx(1.0, rel=0.05)
    assert info["after"]["miscalibration_area"] < 0.02 < info["before"]["miscalibration_area"]
    assert info["after"]["nll"] < info["before"]["nll"]


def test_calibration_chooses_a_power_law_when_the_data_follow_one():
    errors, std = synthetic(20000, 0.5, 0.5, seed=1)
    fit, info = fit_calibration(errors, std)
    assert fit.form == "power" and fit.b == pytest.approx(0.5, abs=0.05) and fit.a == pytest.approx(0.5, rel=0.1)
    assert info["held_out_nll"]["power"] < info["held_out_nll"]["scale"]
    assert fit_scale(errors, std).a > 0


def test_metrics_with_known_answers():
    std = np.linspace(0.1, 1.0, 50)
    doubled = 2.0 * std * np.where(np.arange(50) % 2, 1.0, -1.0)
    metrics = uncertainty_metrics(np.abs(doubled), std, errors=doubled)
    assert metrics["rmse_over_std"] == pytest.approx(2.0) and metrics["spearman"] == pytest.approx(1.0)
    # every |z| = 2: inside every interval wider than 2σ, outside the others
    expected = np.linspace(0, 1, 2001)
    observed = (2.0 <= __import__("scipy").stats.norm.ppf(0.5 + expected / 2)).astype(float)
    assert metrics["miscalibration_area"] == pytest.approx(_trapezoid(np.abs(observed - expected), expected), abs=0.01)
    # zero errors: observed fraction 1 everywhere -> area ∫(1 − p) dp = 0.5; huge errors -> ∫p dp = 0.5
    assert miscalibration_area(np.zeros(100), np.ones(100)) == pytest.approx(0.5, abs=0.01)
    assert miscalibration_area(np.full(100, 1e6), np.ones(100)) == pytest.approx(0.5, abs=0.01)
    gaussian = np.random.default_rng(2).normal(size=200000)
    assert miscalibration_area(gaussian, np.ones_like(gaussian)) < 0.005
    x, y, count = reliability_bins(np.abs(doubled), std, bins=5)
    np.testing.assert_allclose(y, 2.0 * x)
    np.testing.assert_array_equal(count, [10] * 5)


def test_calibration_file_round_trip_and_refusals(tmp_path):
    path = Calibration({"forces": Fit("power", 0.7, 0.8)}, {"outputs": {"forces": {"in_domain_std": 0.3}}}).save(tmp_path / "c.json")
    loaded = Calibration.load(path)
    assert loaded.fits["forces"] == Fit("power", 0.7, 0.8)
    assert loaded.apply("forces", np.array([1.0]))[0] == pytest.approx(0.7)
    assert loaded.apply("energy", 2.0) == 2.0 and loaded.apply("forces", None) is None
    (tmp_path / "bad.json").write_text('{"format": "molequi-calibration", "outputs": {"forces": {"form": "scale", "a": -1}}}')
    with pytest.raises(ConfigError, match="corrupt calibration"):
        Calibration.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="not a molequi calibration"):
        Calibration.load(_write(tmp_path / "x.json", "[]"))
    with pytest.raises(ConfigError, match="no such calibration file"):
        Calibration.load(tmp_path / "missing.json")


def _write(path, text):
    path.write_text(text)
    return path


def emt_structures(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    structures = []
    for _ in range(n):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        structures.append(atoms)
    return structures


@pytest.mark.slow
def test_evaluate_and_calibrate_a_committee(tmp_path, capsys):
    """evaluate on a committee reports uncertainty metrics and draws reliability diagrams;
    calibrate writes a file that evaluate --calibration then uses (RMSE/std moves to 1); one
    model reports no uncertainty metric."""
    from molequi.cli.main import main

    paths = [str(save_model(random_model(l_max=1, num_layers=1, seed=s), tmp_path / f"m{s}.molequi")) for s in (0, 1, 2)]
    data = tmp_path / "data.extxyz"
    ase.io.write(data, emt_structures(12))
    committee = [arg for path in paths for arg in ("--model", path)]
    assert main(["evaluate", *committee, str(data), "--plot", str(tmp_path / "p.png")]) == 0
    raw = json.loads(capsys.readouterr().out)
    assert {"forces_std_spearman", "forces_rmse_over_std", "miscalibration_area", "energy_rmse_over_std"} <= set(raw)
    assert raw["n_members"] == 3 and raw["forces_mae_meV_per_A"] > 0 and raw["calibrated"] is False
    assert (tmp_path / "p.png").stat().st_size > 5000
    assert main(["calibrate", *committee, str(data), "--out", str(tmp_path / "cal.json")]) == 0
    capsys.readouterr()
    saved = json.loads((tmp_path / "cal.json").read_text())
    assert saved["format"] == "molequi-calibration" and {"energy", "forces"} <= set(saved["outputs"])
    forces = saved["outputs"]["forces"]
    assert forces["form"] in ("scale", "power") and {"held_out_nll", "before", "after", "in_domain_std"} <= set(forces)
    assert main(["evaluate", *committee, str(data), "--calibration", str(tmp_path / "cal.json")]) == 0
    calibrated = json.loads(capsys.readouterr().out)
    assert abs(np.log(calibrated["forces_rmse_over_std"])) < abs(np.log(raw["forces_rmse_over_std"]))
    assert abs(np.log(calibrated["forces_rmse_over_std"])) < 0.2
    assert main(["evaluate", paths[0], str(data)]) == 0
    single = json.loads(capsys.readouterr().out)
    assert "forces_std_spearman" not in single and "miscalibration_area" not in single
    assert main(["calibrate", paths[0], str(data)]) == 2
    assert "two or more members" in capsys.readouterr().err
    assert main(["evaluate", ",".join(paths[:2]), str(data)]) == 2  # the comma form is refused ...
    fix = capsys.readouterr().err.split("run: ")[-1].strip()  # ... with the command line to type instead
    assert fix == f"molequi evaluate --model {paths[0]} --model {paths[1]} {data}"


def test_screening_scorer_uses_ensemble_heads_and_a_calibration(tmp_path):
    """A one-file shallow ensemble scores like a committee; a calibration scales its stds and
    its in_domain_std becomes the default out-of-domain threshold of a screen."""
    import dataclasses

    from test_ensemble_heads import ensemble

    from molequi.search import build_config
    from molequi.search.models import ModelScorer
    from molequi.search.pipeline import _calibrated
    from molequi.search.score import score_atoms, scorer_identity

    model = ensemble(4, properties={"gap": "intensive", "mu": "dipole"})
    molecules = [molecule(name) for name in ("CH3CH2OH", "CH3OH", "H2O")]
    raw = ModelScorer([model])
    assert raw.predict(molecules)["gap"].shape == (4, 3) and raw.properties == ["energy", "gap", "mu_norm"]
    _, raw_std = score_atoms([raw], molecules)["gap"]
    assert np.all(raw_std > 0)
    info = {"outputs": {"gap": {"in_domain_std": 0.123}}}
    path = Calibration({"gap": Fit("scale", 3.0), "mu": Fit("scale", 2.0)}, info).save(tmp_path / "cal.json")
    calibrated = ModelScorer([model], calibration=path)
    _, std = score_atoms([calibrated], molecules)["gap"]
    np.testing.assert_allclose(std, 3.0 * raw_std)
    _, mu_raw = score_atoms([raw], molecules)["mu_norm"]
    np.testing.assert_allclose(score_atoms([calibrated], molecules)["mu_norm"][1], 2.0 * mu_raw)
    assert calibrated.in_domain_std == {"gap": 0.123}
    assert scorer_identity(calibrated)["calibration"]["gap"] == ["scale", 3.0, 1.0]
    config = build_config(objective="gap:max")
    assert _calibrated(config, [calibrated], None, 0.95).std_threshold == {"gap": 0.123}
    given = dataclasses.replace(config, std_threshold=0.5)
    assert _calibrated(given, [calibrated], None, 0.95).std_threshold == 0.5  # an explicit threshold wins


def test_a_flat_power_law_falls_back_to_a_scale_and_says_so():
    """Errors that do not grow with the std: the power law would fit σ' ≈ constant; the fit falls
    back to σ' = a·σ and records why (flat exponent, ranking not significant)."""
    rng = np.random.default_rng(3)
    std = np.exp(rng.uniform(np.log(0.01), np.log(1.0), 4000))
    errors = rng.normal(0.0, 0.1, 4000)  # unrelated to std
    fit, info = fit_calibration(errors, std)
    assert fit.form == "scale" and info["fell_back_to_scale"]
    assert any("flat" in note for note in info["warnings"]) and any("does not rank" in note for note in info["warnings"])
    assert abs(info["spearman"]) < 0.1 and info["spearman_p"] > 0.05


def test_a_weak_but_ranked_power_law_is_flagged_as_flat_only():
    errors, std = synthetic(20000, 0.1, 0.15, seed=4)
    fit, info = fit_calibration(errors, std)
    assert fit.form == "scale" and info["fell_back_to_scale"]
    assert len(info["warnings"]) == 1 and "flat" in info["warnings"][0]
    assert info["spearman"] > 0 and info["spearman_p"] < 0.05


def test_a_sound_calibration_has_no_warning():
    errors, std = synthetic(5000, 0.5, 0.8, seed=5)
    fit, info = fit_calibration(errors, std)
    assert info["warnings"] == [] and not info["fell_back_to_scale"] and info["spearman"] > 0.3


def test_committee_calibration_warns_per_output_and_stores_a_domain_threshold(tmp_path):
    """Energy and forces are fitted and judged apart: a flat energy calibration warns (and its
    file says so) while the forces' does not; the in-domain threshold is the 99th percentile
    of the per-structure largest calibrated force std."""
    from molequi.models.uncertainty import CalibrationWarning
    from molequi.models.uncertainty.evaluation import OutputErrors, fit_committee_calibration

    rng = np.random.default_rng(6)
    n, atoms = 300, 5
    energy_std = np.exp(rng.uniform(-5, -1, n))
    energy = OutputErrors(rng.normal(0, 0.05, n), energy_std, np.arange(n), "eV", np.zeros(n))
    atom_std = np.exp(rng.uniform(-4, 0, (n, atoms)))
    force_std = np.repeat(atom_std, 3, axis=1).ravel()
    forces = OutputErrors(rng.normal(0, 2.0 * force_std), force_std, np.repeat(np.arange(n), 3 * atoms), "eV/Å",
                          np.zeros(n * atoms * 3))
    with pytest.warns(CalibrationWarning, match="energy calibration: the fitted power law is flat"):
        calibration = fit_committee_calibration({"energy": energy, "forces": forces})
    assert calibration.fits["energy"].form == "scale"
    assert calibration.info["outputs"]["forces"]["warnings"] == []
    expected = np.quantile(calibration.fits["forces"](atom_std).max(axis=1), 0.99)
    assert calibration.domain_threshold == pytest.approx(expected)
    with pytest.warns(CalibrationWarning, match="c.json: energy: the fitted power law is flat"):
        loaded = Calibration.load(calibration.save(tmp_path / "c.json"))
    assert loaded.domain_threshold == pytest.approx(expected)
    assert loaded.warnings() and all(line.startswith("energy: ") for line in loaded.warnings())
