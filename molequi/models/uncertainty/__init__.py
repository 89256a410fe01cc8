"""Uncertainty of committees and shallow ensembles, in one place: spreads, calibration and its metrics,
and the committee itself.

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

Modules: :mod:`~.spread` (spreads over members), :mod:`~.calibration` (``σ' = a σ^b``),
:mod:`~.metrics` (ranking and calibration metrics), :mod:`~.committee` (a committee or shallow
ensemble evaluated on the device for MD and the ASE calculator: means, spreads, calibrated spreads)
and :mod:`~.evaluation` (a committee on labelled structures: ``molequi evaluate`` and
``molequi calibrate``). The last two load models, so they are imported by their own names.
"""

from molequi.models.uncertainty.calibration import (
    CALIBRATION_FORMAT,
    CALIBRATION_VERSION,
    FLAT_EXPONENT,
    Calibration,
    CalibrationWarning,
    Fit,
    as_calibration,
    fit_calibration,
    fit_power,
    fit_scale,
    OutOfDomainWarning,
    structure_ranking,
)
from molequi.models.uncertainty.metrics import gaussian_nll, miscalibration_area, reliability_bins, uncertainty_metrics
from molequi.models.uncertainty.spread import MEMBERS, MIN_STD, forces_spread, members_of, spread

__all__ = [
    "CALIBRATION_FORMAT", "CALIBRATION_VERSION", "FLAT_EXPONENT", "MEMBERS", "MIN_STD", "Calibration",
    "CalibrationWarning", "Fit", "OutOfDomainWarning", "as_calibration", "structure_ranking",
    "fit_calibration", "fit_power", "fit_scale", "forces_spread", "gaussian_nll", "members_of",
    "miscalibration_area", "reliability_bins", "spread", "uncertainty_metrics",
]
