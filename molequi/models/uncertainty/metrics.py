"""How good a spread is: Spearman ranking, RMSE ÷ RMS(std), miscalibration area and Gaussian NLL (Tran et al. 2020, uncertainty-toolbox), and the reliability diagram's bins."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from molequi.models.uncertainty.spread import MIN_STD


_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 names it trapz


def gaussian_nll(errors: np.ndarray, std: np.ndarray) -> float:
    """Mean negative log-likelihood of ``errors`` under N(0, std²) (nats; lower is better)."""
    errors, std = np.asarray(errors, np.float64), np.asarray(std, np.float64)
    return float(np.mean(0.5 * math.log(2 * math.pi) + np.log(std) + 0.5 * (errors / std) ** 2))


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
