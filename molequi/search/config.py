"""Settings of a screening run, validated when built.

Two groups of settings are kept apart on purpose:

* :class:`StageConfig` -- everything that changes the per-chunk work
  (standardisation, filters, 3D).  It is shipped to Dask workers and hashed
  into the run manifest: an output folder made with other stage settings is
  refused (unless ``overwrite``), because its chunk files would be wrong.
* the ranking / report settings of :class:`ScreenConfig` -- they only act at
  the merge, which is redone on every run, so a finished folder can be
  re-ranked with another objective without recomputing the chunks.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Literal, Sequence

from molequi.errors import ConfigError

#: Alert sets of RDKit's FilterCatalog that users may pick (lower-case names).
ALERT_SETS: tuple[str, ...] = (
    "pains", "pains_a", "pains_b", "pains_c", "brenk", "nih", "zinc",
    "chembl", "chembl_bms", "chembl_lint", "chembl_mlsmr",
)

_OBJECTIVE_RE = re.compile(
    r"^(?P<name>[A-Za-z_][\w.\-]*):"
    r"(?:(?P<dir>max|min)|target=(?P<lo>[-+0-9.eE]+)\.\.(?P<hi>[-+0-9.eE]+))$"
)


@dataclass(frozen=True)
class Objective:
    """One ranking objective on a column (a prediction or a filter value).

    ``kind`` is ``"max"``, ``"min"`` or ``"target"`` (keep the value inside the
    window ``[lo, hi]``, in the unit of the column, e.g. eV for a gap).
    """

    name: str
    kind: Literal["max", "min", "target"]
    lo: float = math.nan
    hi: float = math.nan
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str, weight: float = 1.0) -> "Objective":
        """Parse ``name:max``, ``name:min`` or ``name:target=LO..HI``."""
        match = _OBJECTIVE_RE.match(text.strip())
        if match is None:
            raise ConfigError(
                f"bad objective {text!r}: expected 'name:max', 'name:min' or "
                "'name:target=LO..HI' (e.g. 'gap:max', 'sa_score:min', 'gap:target=3..5')"
            )
        if not (weight > 0 and math.isfinite(weight)):
            raise ConfigError(f"objective weight must be a finite number > 0, got {weight!r}")
        if match["dir"]:
            return cls(match["name"], match["dir"], weight=float(weight))
        try:
            lo, hi = float(match["lo"]), float(match["hi"])
        except ValueError as exc:
            raise ConfigError(f"bad window in objective {text!r}: {exc}") from None
        if not lo <= hi:
            raise ConfigError(f"objective {text!r}: window needs LO <= HI")
        return cls(match["name"], "target", lo, hi, float(weight))

    def __str__(self) -> str:
        if self.kind == "target":
            return f"{self.name}:target={self.lo:g}..{self.hi:g}"
        return f"{self.name}:{self.kind}"


@dataclass(frozen=True)
class StageConfig:
    """Per-molecule work done in chunks (possibly on Dask workers).

    Units: ``sa_max`` is an SA score (unitless, 1 easy .. 10 hard);
    ``embed_timeout`` is in seconds; ``mmff_max_iters`` is a step count.
    ``None`` disables a filter.  ``all_values`` computes the slow filter values
    (SA score, alerts, purchasability) also for molecules a cheap rule already
    rejected (slower; by default they are left empty for those).
    """

    tautomers: bool = False
    sa_max: float | None = 4.5
    alerts: tuple[str, ...] = ("pains", "brenk")
    lipinski_max_violations: int | None = 1
    veber: bool = True
    max_ring_size: int | None = 8
    heavy_atoms: tuple[int, int] | None = (1, 100)
    allowed_elements: frozenset[int] | None = None
    purchasable: bool = False
    all_values: bool = False
    embed_3d: bool = True
    embed_seed: int = 0xF00D
    embed_timeout: float = 10.0
    embed_retries: int = 1
    mmff_max_iters: int = 2000

    def __post_init__(self) -> None:
        if self.sa_max is not None and not 1.0 <= self.sa_max <= 10.0:
            raise ConfigError(f"sa_max must be within the SA score range 1..10, got {self.sa_max}")
        unknown = [a for a in self.alerts if a not in ALERT_SETS]
        if unknown:
            raise ConfigError(f"unknown alert set(s) {unknown}; choose from {list(ALERT_SETS)}")
        if self.lipinski_max_violations is not None and not 0 <= self.lipinski_max_violations <= 4:
            raise ConfigError("lipinski_max_violations must be within 0..4 (or None to disable)")
        if self.max_ring_size is not None and self.max_ring_size < 3:
            raise ConfigError("max_ring_size must be >= 3 (or None to disable)")
        if self.heavy_atoms is not None:
            lo, hi = self.heavy_atoms
            if not 0 <= lo <= hi:
                raise ConfigError(f"heavy_atoms range must satisfy 0 <= lo <= hi, got {self.heavy_atoms}")
        if self.embed_timeout <= 0:
            raise ConfigError("embed_timeout (s) must be > 0")
        if self.embed_retries < 0 or self.mmff_max_iters < 1:
            raise ConfigError("embed_retries must be >= 0 and mmff_max_iters >= 1")

    def to_json(self) -> dict:
        """JSON-friendly dict (sets sorted) used for hashing and the report."""
        data = dataclasses.asdict(self)
        if self.allowed_elements is not None:
            data["allowed_elements"] = sorted(self.allowed_elements)
        data["alerts"] = list(self.alerts)
        data["heavy_atoms"] = list(self.heavy_atoms) if self.heavy_atoms else None
        return data


@dataclass(frozen=True)
class ScreenConfig:
    """All settings of :func:`molequi.search.screen`, validated when built.

    ``objective`` is one objective string or several; several objectives are
    combined by ``multi`` = ``"desirability"`` (weighted mean of per-objective
    desirabilities in [0, 1]) or ``"pareto"`` (non-dominated sorting).
    ``kappa`` (>= 0, in units of the committee std) shifts predictions to
    ``mean + kappa*std`` (``uncertainty="optimistic"``) or ``mean - kappa*std``
    (``"pessimistic"``) in the direction of the objective.
    ``std_threshold`` (in the unit of each property) flags molecules whose
    committee std is above it as out of domain; a float applies to every
    property, a dict per property.
    """

    stage: StageConfig = field(default_factory=StageConfig)
    objective: tuple[str, ...] = ("qed:max",)
    weights: tuple[float, ...] | None = None
    multi: Literal["desirability", "pareto"] = "desirability"
    kappa: float = 0.0
    uncertainty: Literal["optimistic", "pessimistic"] = "pessimistic"
    std_threshold: float | dict[str, float] | None = None
    drop_out_of_domain: bool = False
    top: int = 100
    diverse: bool = False
    diversity_pool: int = 5
    batch_size: int = 64
    chunk_size: int = 1000
    workers: int = 1
    scheduler: str | None = None
    smiles_column: str | None = None
    id_column: str | None = None
    overwrite: bool = False
    progress: bool = True
    plots: bool = True

    def __post_init__(self) -> None:
        objective = (self.objective,) if isinstance(self.objective, str) else tuple(self.objective)
        object.__setattr__(self, "objective", objective)
        if not objective:
            raise ConfigError("at least one objective is needed, e.g. 'qed:max'")
        self.objectives()  # raises ValueError on bad syntax or weights
        if self.multi not in ("desirability", "pareto"):
            raise ConfigError(f"multi must be 'desirability' or 'pareto', got {self.multi!r}")
        if not (self.kappa >= 0 and math.isfinite(self.kappa)):
            raise ConfigError(f"kappa must be a finite number >= 0, got {self.kappa!r}")
        if self.uncertainty not in ("optimistic", "pessimistic"):
            raise ConfigError("uncertainty must be 'optimistic' or 'pessimistic'")
        thresholds = (self.std_threshold.values() if isinstance(self.std_threshold, dict)
                      else [] if self.std_threshold is None else [self.std_threshold])
        if any(not (t >= 0) for t in thresholds):
            raise ConfigError("std_threshold must be >= 0")
        for name, value in (("top", self.top), ("batch_size", self.batch_size),
                            ("chunk_size", self.chunk_size), ("workers", self.workers),
                            ("diversity_pool", self.diversity_pool)):
            if int(value) != value or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")

    def objectives(self) -> list[Objective]:
        """The parsed objectives, with their weights."""
        weights = self.weights or (1.0,) * len(self.objective)
        if len(weights) != len(self.objective):
            raise ConfigError(
                f"{len(weights)} weights given for {len(self.objective)} objectives")
        return [Objective.parse(o, w) for o, w in zip(self.objective, weights)]

    def to_json(self) -> dict:
        """JSON-friendly dict of every setting (for the manifest and the report)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "stage"}
        data["objective"] = list(self.objective)
        data["weights"] = list(self.weights) if self.weights else None
        data["stage"] = self.stage.to_json()
        return data


def parse_alerts(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"pains,brenk"`` or ``["pains"]`` -> ``("pains", "brenk")``; ``""``/``"none"`` -> ``()``."""
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(i.strip().lower() for i in items if i.strip())
    return () if names in ((), ("none",)) else names
