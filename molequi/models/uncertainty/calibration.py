"""Calibration of committee and ensemble spreads: ``σ' = a · σ^b`` fitted on held-out labelled structures (``molequi calibrate``) and read back from its JSON file."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize

from molequi.errors import ConfigError
from molequi.models.uncertainty.metrics import gaussian_nll, uncertainty_metrics
from molequi.models.uncertainty.spread import MIN_STD


CALIBRATION_FORMAT = "molequi-calibration"


CALIBRATION_VERSION = 1


FLAT_EXPONENT = 0.3
"""A power law ``σ' = a σ^b`` with b below this is nearly a constant: it no longer follows the
spread, so a calibration that fits one falls back to ``σ' = a σ`` and says so."""


RANKING_ALPHA = 0.05
"""One-sided significance level of the Spearman ranking (structure mean |error| vs mean std)
below which a calibration's std is reported not to rank the errors."""


DOMAIN_QUANTILE = 0.99
"""The quantile of the calibrated per-structure force std over held-out data that is stored as
the in-domain threshold (a structure above it is out of the domain)."""


class CalibrationWarning(UserWarning):
    """A calibration that fell back to a scale, or whose std does not rank the errors."""


class OutOfDomainWarning(UserWarning):
    """A structure whose calibrated force std is above the calibration's in-domain threshold."""


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
    source: str = field(default="", compare=False)
    """The file it was read from ('' for one made in memory)."""

    def check_models(self, models) -> None:
        """Refuse (:class:`ConfigError`, one line) models other than those the calibration was fitted
        on, compared by content (``models_sha256``: :func:`~molequi.models.io.model_digest` of each,
        and ``heads``: each model's ensemble heads, in any order). A file from before these were
        recorded is applied with a warning; a calibration made in memory without them, silently."""
        recorded, heads = self.info.get("models_sha256"), self.info.get("heads")
        name = self.source or "the calibration"
        if recorded is None:
            if self.source:
                warnings.warn(f"{name} records no model hashes (written by an older molequi calibrate): it cannot "
                              "be checked against these models; rerun molequi calibrate to make one that can",
                              stacklevel=3)
            return
        identity = models_identity(models)
        if not isinstance(recorded, list) or not isinstance(heads, list) or len(heads) != len(recorded):
            raise ConfigError(f"{name}: corrupt calibration (models_sha256 and heads must be lists of one length)")
        if sorted(zip(map(str, recorded), map(str, heads))) != sorted(zip(identity["models_sha256"],
                                                                          map(str, identity["heads"]))):
            fitted = ", ".join(str(d)[:12] for d in recorded)
            given = ", ".join(d[:12] for d in identity["models_sha256"])
            raise ConfigError(f"{name} was fitted on other models ({len(recorded)} with heads {heads}, sha256 {fitted}) "
                              f"than these ({len(identity['heads'])} with heads {identity['heads']}, sha256 {given}); "
                              "fit one for them with molequi calibrate")

    def warnings(self) -> list[str]:
        """The fit's warnings, one line each, naming their output (empty for a sound calibration)."""
        return [f"{name}: {text}" for name, entry in self.info.get("outputs", {}).items()
                for text in (entry.get("warnings") or []) if isinstance(entry, dict)]

    @property
    def domain_threshold(self) -> float | None:
        """The in-domain threshold of the per-structure calibrated force std (eV/Å; the largest
        calibrated per-atom std of a structure), or None when the file records none."""
        value = (self.info.get("domain") or {}).get("threshold") if isinstance(self.info.get("domain"), dict) else None
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else None

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
        calibration = cls(fits, info, source=str(path))
        for line in calibration.warnings():  # a fallback is said wherever the file is used, not only when fitted
            warnings.warn(f"{path}: {line}", CalibrationWarning, stacklevel=2)
        return calibration


def models_identity(models) -> dict[str, list]:
    """What a calibration records of the models it was fitted on: ``models_sha256`` (the content
    hash of each, :func:`~molequi.models.io.model_digest` at the precision it was saved in) and
    ``heads`` (each model's ensemble heads), in the committee's order."""
    from molequi.models.io import content_digest

    models = list(models)
    return {"models_sha256": [content_digest(model) for model in models],
            "heads": [int(getattr(model, "module", model).model.config.ensemble_heads) for model in models]}


def as_calibration(calibration: Calibration | str | Path | None, models=None) -> Calibration | None:
    """A :class:`Calibration` from itself, a file path, or None; with ``models``, checked to
    belong to them (see :meth:`Calibration.check_models`)."""
    if calibration is not None and not isinstance(calibration, Calibration):
        calibration = Calibration.load(calibration)
    if calibration is not None and models is not None:
        calibration.check_models(models)
    return calibration


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
    ranking = structure_ranking(errors, std, groups)
    notes = []
    if fit.form == "power" and fit.b < FLAT_EXPONENT:
        notes.append(f"the fitted power law is flat (σ' = {fit.a:.3g}·σ^{fit.b:.2f}, exponent < {FLAT_EXPONENT}): "
                     "it would give nearly one std to every structure; fell back to a scale σ' = a·σ")
    if not ranking["significant"]:
        notes.append(f"the std does not rank the errors (Spearman {ranking['spearman']:.2f} over "
                     f"{ranking['n_structures']} structures, one-sided p = {ranking['p_value']:.2g} ≥ {RANKING_ALPHA}): "
                     "the calibrated std gives the size of the errors only, not which structure is worse"
                     + ("; fell back to a scale σ' = a·σ" if fit.form == "power" and not notes else ""))
    if notes and fit.form == "power":
        fit = fit_scale(errors, std)
    info = {
        "held_out_nll": held_out,
        "chosen_by": "held-out Gaussian NLL (two halves of the structures, each fitted on the other)",
        "spearman": ranking["spearman"], "spearman_p": ranking["p_value"], "n_structures": ranking["n_structures"],
        "warnings": notes, "fell_back_to_scale": bool(notes and form == "power"),
        "n_values": int(len(errors)),
        "before": uncertainty_metrics(np.abs(errors), std, errors=errors),
        "after": uncertainty_metrics(np.abs(errors), fit(std), errors=errors),
    }
    return fit, info


def structure_ranking(errors: np.ndarray, std: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """How well ``std`` ranks the errors, per structure (``groups``): Spearman of each structure's
    mean |error| and mean std, its one-sided p-value (H0: no positive ranking), the count of
    structures, and ``significant`` (p < :data:`RANKING_ALPHA`)."""
    from scipy import stats

    _, index = np.unique(groups, return_inverse=True)
    count = np.bincount(index)
    mean_error = np.bincount(index, np.abs(errors)) / count
    mean_std = np.bincount(index, std) / count
    if len(count) < 3 or np.ptp(mean_std) == 0 or np.ptp(mean_error) == 0:
        return {"spearman": math.nan, "p_value": 1.0, "n_structures": int(len(count)), "significant": False}
    result = stats.spearmanr(mean_error, mean_std, alternative="greater")
    rho, p = float(result.statistic), float(result.pvalue)
    return {"spearman": rho, "p_value": p, "n_structures": int(len(count)),
            "significant": bool(math.isfinite(p) and p < RANKING_ALPHA)}
