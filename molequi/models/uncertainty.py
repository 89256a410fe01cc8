"""Uncertainty of committees and shallow ensembles: spreads, calibration and its metrics.

Members are the models of a committee and the heads of a shallow ensemble (a model with
``ensemble_heads`` K ≥ 2: its outputs carry ``*_members``); a committee of M such models has
M·K members. The spread is the unbiased standard deviation over members (ddof 1): with 2–4
members the population std (ddof 0) is 13–29 % too small. With one member there is *no*
estimate: callers leave std columns empty (None / NaN), never 0.

Committee spreads rank errors well but are too small in size (true force RMSE ≈ 1.6–1.9 × the
predicted std on ethanol MD frames); :class:`Calibration` maps a raw std σ to
``σ' = a · σ^b`` fitted on held-out labelled structures (``molequi calibrate``).

Metrics (:func:`uncertainty_metrics`) follow Tran et al. 2020 (uncertainty-toolbox):
Spearman rank correlation of error and std, RMSE ÷ RMS(std), the miscalibration area, and the
Gaussian negative log-likelihood.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize, stats

from molequi.errors import ConfigError

MEMBERS = "_members"
CALIBRATION_FORMAT = "molequi-calibration"
CALIBRATION_VERSION = 1
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 names it trapz
MIN_STD = 1e-12  # stds below this (identical members) carry no information and are left out of fits


def spread(members: np.ndarray) -> np.ndarray | None:
    """Unbiased std (ddof 1) over axis 0 (the members), or None for a single member."""
    members = np.asarray(members, dtype=np.float64)
    if members.shape[0] < 2:
        return None
    return members.std(axis=0, ddof=1)


def forces_spread(members: np.ndarray) -> np.ndarray | None:
    """[n_atoms] per-atom force spread from member forces [M, n_atoms, 3], eV/Å:
    sqrt(mean over x, y, z of the unbiased variance over members); None for one member."""
    members = np.asarray(members, dtype=np.float64)
    if members.shape[0] < 2:
        return None
    return np.sqrt(members.var(axis=0, ddof=1).mean(axis=-1))


def members_of(result: Mapping[str, Any], key: str) -> np.ndarray:
    """One model's members of output ``key``: its heads' ``<key>_members`` [K, ...] for a
    shallow ensemble, else the output itself as one member [1, ...]."""
    if f"{key}{MEMBERS}" in result:
        return np.asarray(result[f"{key}{MEMBERS}"], dtype=np.float64)
    return np.asarray(result[key], dtype=np.float64)[None]


# --- calibration ---------------------------------------------------------------------------------


@dataclass
class Fit:
    """``σ' = a · σ^b`` for one output (``form`` ``"scale"`` has b = 1)."""

    form: str
    a: float
    b: float = 1.0

    def __call__(self, std):
        """Calibrated std (numpy array or torch tensor, same unit as the raw std)."""
        if std is None:
            return None
        return self.a * std if self.b == 1.0 else self.a * std**self.b


@dataclass
class Calibration:
    """Per-output calibrations of committee/ensemble stds, read from ``molequi calibrate``'s JSON.

    ``fits``: output name (``energy`` eV, ``forces`` eV/Å per atom, or a property head) ->
    :class:`Fit`; ``info``: the fit metrics and provenance written beside them.
    """

    fits: dict[str, Fit] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def apply(self, name: str, std):
        """The calibrated std of output ``name`` (unchanged when it has no fit; None stays None)."""
        fit = self.fits.get(name)
        return std if fit is None or std is None else fit(std)

    def to_dict(self) -> dict[str, Any]:
        outputs = {}
        for name, fit in self.fits.items():
            outputs[name] = {"form": fit.form, "a": fit.a, "b": fit.b, **self.info.get("outputs", {}).get(name, {})}
        rest = {key: value for key, value in self.info.items() if key != "outputs"}
        return {"format": CALIBRATION_FORMAT, "format_version": CALIBRATION_VERSION, **rest, "outputs": outputs}

    def save(self, path: str | Path) -> Path:
        from molequi.utils import atomic_write

        text = json.dumps(self.to_dict(), indent=2) + "\n"
        return atomic_write(path, lambda temporary: Path(temporary).write_text(text))

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a calibration file (:class:`ConfigError` naming the file when it is not one)."""
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such calibration file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"{path}: not a calibration file ({error})") from None
        if not isinstance(values, dict) or values.get("format") != CALIBRATION_FORMAT:
            raise ConfigError(f"{path}: not a molequi calibration file (write one with 'molequi calibrate')")
        fits = {}
        try:
            for name, entry in values["outputs"].items():
                fit = Fit(str(entry["form"]), float(entry["a"]), float(entry.get("b", 1.0)))
                if not (fit.a > 0 and math.isfinite(fit.a) and math.isfinite(fit.b)):
                    raise ValueError(f"{name}: a = {fit.a}, b = {fit.b}")
                fits[name] = fit
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ConfigError(f"{path}: corrupt calibration ({error})") from None
        info = {key: value for key, value in values.items() if key not in ("format", "format_version")}
        return cls(fits, info)


def as_calibration(calibration: Calibration | str | Path | None) -> Calibration | None:
    """A :class:`Calibration` from itself, a file path, or None."""
    if calibration is None or isinstance(calibration, Calibration):
        return calibration
    return Calibration.load(calibration)


def gaussian_nll(errors: np.ndarray, std: np.ndarray) -> float:
    """Mean negative log-likelihood of ``errors`` under N(0, std²) (nats; lower is better)."""
    errors, std = np.asarray(errors, np.float64), np.asarray(std, np.float64)
    return float(np.mean(0.5 * math.log(2 * math.pi) + np.log(std) + 0.5 * (errors / std) ** 2))


def fit_scale(errors: np.ndarray, std: np.ndarray) -> Fit:
    """``σ' = a σ`` of least Gaussian NLL: a² = mean(e²/σ²) (closed form)."""
    ratio = np.asarray(errors, np.float64) / np.asarray(std, np.float64)
    return Fit("scale", float(np.sqrt(np.mean(ratio**2))))


def fit_power(errors: np.ndarray, std: np.ndarray) -> Fit:
    """``σ' = a σ^b`` of least Gaussian NLL. For a given b the best a is closed form
    (a² = mean(e²/σ^{2b})), so only b is searched (bounded to 0.05–3)."""
    errors, log_std = np.asarray(errors, np.float64), np.log(np.asarray(std, np.float64))

    def profile(b: float) -> float:
        scaled = np.exp(b * log_std)
        a = np.sqrt(np.mean((errors / scaled) ** 2))
        return gaussian_nll(errors, a * scaled)

    b = float(optimize.minimize_scalar(profile, bounds=(0.05, 3.0), method="bounded").x)
    a = float(np.sqrt(np.mean((errors / np.exp(b * log_std)) ** 2)))
    return Fit("power", a, b)


def fit_calibration(errors: np.ndarray, std: np.ndarray, groups: np.ndarray | None = None, seed: int = 0) -> tuple[Fit, dict[str, Any]]:
    """Choose and fit ``σ' = a σ`` or ``σ' = a σ^b`` for one output.

    The choice is by Gaussian NLL on held-out data: the structures (``groups``: the structure
    index of each error, so that the atoms of one structure stay together) are split in two
    halves, each form is fitted on one half and scored on the other, both ways round; the power
    law is kept only if its held-out NLL is lower. The chosen form is then refitted on all data.

    Returns the fit and its metrics (held-out NLL of each form, and the metrics of
    :func:`uncertainty_metrics` before and after on all data)."""
    errors, std = np.asarray(errors, np.float64).ravel(), np.asarray(std, np.float64).ravel()
    groups = np.arange(len(errors)) if groups is None else np.asarray(groups).ravel()
    keep = np.isfinite(errors) & np.isfinite(std) & (std > MIN_STD)
    errors, std, groups = errors[keep], std[keep], groups[keep]
    if len(errors) < 4:
        raise ConfigError(f"calibration needs at least 4 values with a spread > 0, got {len(errors)}")
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    first = np.isin(groups, rng.permutation(unique)[: max(1, len(unique) // 2)])
    held_out = {}
    for name, fitter in (("scale", fit_scale), ("power", fit_power)):
        scores = []
        for train, test in ((first, ~first), (~first, first)):
            if train.sum() and test.sum():
                scores.append(gaussian_nll(errors[test], fitter(errors[train], std[train])(std[test])))
        held_out[name] = float(np.mean(scores)) if scores else math.nan
    form = "power" if held_out["power"] < held_out["scale"] else "scale"
    fit = (fit_power if form == "power" else fit_scale)(errors, std)
    info = {
        "held_out_nll": held_out,
        "chosen_by": "held-out Gaussian NLL (two halves of the structures, each fitted on the other)",
        "n_values": int(len(errors)),
        "before": uncertainty_metrics(np.abs(errors), std, errors=errors),
        "after": uncertainty_metrics(np.abs(errors), fit(std), errors=errors),
    }
    return fit, info


# --- metrics -------------------------------------------------------------------------------------


def miscalibration_area(errors: np.ndarray, std: np.ndarray, bins: int = 100) -> float:
    """Area between the observed and the expected fraction of errors inside centred Gaussian
    intervals, over expected fractions p in [0, 1] (Tran et al. 2020; uncertainty-toolbox's
    ``miscalibration_area``). 0 is perfectly calibrated, 0.5 the worst; over- and
    under-confidence both count."""
    z = np.abs(np.asarray(errors, np.float64) / np.asarray(std, np.float64)).ravel()
    expected = np.linspace(0.0, 1.0, bins + 1)
    bounds = stats.norm.ppf(0.5 + expected / 2.0)  # half-width of the central interval, in stds
    observed = np.array([np.mean(z <= bound) for bound in bounds])
    return float(_trapezoid(np.abs(observed - expected), expected))


def uncertainty_metrics(abs_errors: np.ndarray, std: np.ndarray, errors: np.ndarray | None = None) -> dict[str, float]:
    """Ranking and calibration of ``std`` against the errors (same shape and unit).

    Returns ``spearman`` (rank correlation of |error| and std), ``rmse_over_std`` (RMSE ÷
    RMS(std): 1 when calibrated, > 1 over-confident), ``miscalibration_area`` and ``nll``
    (Gaussian, needs signed ``errors``; |errors| give the same value)."""
    abs_errors, std = np.abs(np.asarray(abs_errors, np.float64)).ravel(), np.asarray(std, np.float64).ravel()
    errors = abs_errors if errors is None else np.asarray(errors, np.float64).ravel()
    keep = np.isfinite(abs_errors) & np.isfinite(std) & (std > MIN_STD)
    abs_errors, std, errors = abs_errors[keep], std[keep], errors[keep]
    if len(std) < 2:
        return {}
    return {
        "spearman": float(stats.spearmanr(abs_errors, std).statistic),
        "rmse_over_std": float(np.sqrt(np.mean(abs_errors**2)) / np.sqrt(np.mean(std**2))),
        "miscalibration_area": miscalibration_area(errors, std),
        "nll": gaussian_nll(errors, std),
    }


def reliability_bins(abs_errors: np.ndarray, std: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reliability diagram points: values sorted by std into ``bins`` equal-count bins; returns
    each bin's RMS std, its error RMSE and its count (a calibrated std lies on y = x)."""
    abs_errors, std = np.abs(np.asarray(abs_errors, np.float64)).ravel(), np.asarray(std, np.float64).ravel()
    keep = np.isfinite(abs_errors) & np.isfinite(std)
    order = np.argsort(std[keep])
    parts = [part for part in np.array_split(order, min(bins, max(1, len(order)))) if len(part)]
    x = np.array([np.sqrt(np.mean(std[keep][part] ** 2)) for part in parts])
    y = np.array([np.sqrt(np.mean(abs_errors[keep][part] ** 2)) for part in parts])
    return x, y, np.array([len(part) for part in parts])
