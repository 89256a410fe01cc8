"""The model's hyper-parameters: a typed object built once and validated when built."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from molequi.errors import ConfigError
from molequi.models.heads import HEADS
from molequi.utils import closest_name


@dataclass
class ModelConfig:
    """Architecture of a molequi potential. Every field has a documented default.

    These defaults are the architecture ``molequi train`` uses without ``--config`` (and
    ``molequi/training/default.yaml`` lists them): small enough to learn fast on a 2-core CPU.
    Measured on rMD17 ethanol (950 train / 50 validation, 2 threads, float32, batch 16, lr 1e-2):
    47 epochs in 3 minutes, test force MAE 41 meV/Å, energy MAE 16 meV. l_max 2 costs ~2.8× per
    step on a CPU; channels 32 cost only ~1.2× over 16 and learn better.

    Attributes:
        species: atomic numbers the model knows, sorted (set from the training data).
        cutoff: neighbor cutoff radius, Å. 5 Å suits molecules; larger costs O(r³) edges.
        channels: feature channels per irrep. 32–64 trade speed for accuracy.
        l_max: highest rotation order of the hidden features passed between layers (0–3).
            l_max = 0 passes scalars only (MACE's ``64x0e`` layout); 1–2 carry directions too.
        edge_l_max: highest rotation order of the edge spherical harmonics and of the messages
            the body-order product works on (0–3; below l_max it is raised to l_max), or None to
            tie it to l_max (the layout of files written before this setting). Above l_max, the
            product resolves angular detail up to edge_l_max and contracts it to the l ≤ l_max
            features a layer passes on, computing only those in its last step.
        num_layers: message-passing layers (≥ 1); 2 with correlation 3 matches MACE's design.
        num_radial: Bessel functions in the radial basis.
        cutoff_p: exponent of the polynomial cutoff envelope (smoothness at the cutoff).
        radial_hidden: hidden sizes of the radial MLP that maps the basis to path weights.
        correlation: body order of the node-feature product (1 = none; 2–3 = MACE-style).
        species_product: scale each body order of the product per element, channel and irrep
            (MACE-style species-dependent contraction weights; a few parameters, no measurable
            cost). On rMD17 ethanol at the same 5-minute budget it lowers the test force error
            by about a tenth (``scripts/bench_recipe.py``).
        readout_hidden: hidden size of the last layer's non-linear energy readout.
        trainable_radial: learn the Bessel frequencies.
        properties: extra outputs beside the energy, name -> kind, where kind is a registered
            head kind (:mod:`molequi.models.heads`): ``"intensive"`` (mean over atoms, e.g.
            HOMO–LUMO gap, eV), ``"extensive"`` (sum over atoms, e.g. U0, eV) or ``"dipole"``
            (Σ q_i r_i with learned neutral partial charges, e·Å).
        ensemble_heads: readouts per output on the one shared body (a shallow ensemble). With
            K ≥ 2 every output is the mean of K heads and comes with their spread (an
            uncertainty from one model); 1 is a plain model.
        charge_input: feed each structure's total charge (e) to the network: a learned scalar
            per channel times the charge is added to every atom's first features, so one set of
            atoms in two charge states gets two energies. The charge comes from
            ``atoms.info["charge"]`` (0 when absent). Off for models saved before this setting.
        baseline: a physical model the network corrects (Δ-learning), or None: ``"xtb"``
            (GFN2-xTB through tblite). The network is trained on ``label − baseline`` and a
            loaded model adds the baseline back (energies eV, forces eV/Å), so tblite is needed
            wherever such a model runs. Molecules in open space only.
        avg_num_neighbors: mean neighbor count (from the training data); normalises messages.
        e0s: atomic number (as str, for JSON) -> reference energy, eV.
        e0s_basis: orthonormal rows (over ``species``) spanning the compositions whose reference
            energy the training data determined (see :mod:`molequi.models.references`); None when
            that is every composition of ``species`` (or for a model saved before this field).
        charge_energies: ``[a, b]`` of the reference energy a·Q + b·Q² (eV) of a structure of
            total charge Q (e), beside the E0s, of a ``charge_input`` model (fitted with the E0s
            by least squares): adding or removing an electron shifts the total energy by an
            ionisation-sized constant that per-atom readouts would have to spread over the atoms.
            None (or a model saved before this field): no such term.
        energy_shift: per-atom energy shift, eV.
        energy_scale: per-atom energy scale, eV (the force RMS of the training data).
        property_stats: property name -> ``[shift, scale]`` (set from the training labels) of an
            intensive or extensive head: its per-atom output is ``scale · raw + shift`` before
            pooling (intensive: mean and std of the label; extensive: of the label per atom).
            Heads not listed (dipoles, models saved before this field) are not rescaled.
        trained_outputs: the outputs the training loss fitted (set by ``molequi train``):
            ``energy``, ``forces`` and property names. A model trained on a gap alone predicts
            an energy too, but an untrained one; ``molequi evaluate`` reports only these.
    """

    species: list[int] = field(default_factory=list)
    cutoff: float = 5.0
    channels: int = 32
    l_max: int = 1
    edge_l_max: int | None = 2
    num_layers: int = 2
    num_radial: int = 8
    cutoff_p: int = 6
    radial_hidden: list[int] = field(default_factory=lambda: [32, 32])
    correlation: int = 2
    species_product: bool = True
    readout_hidden: int = 16
    trainable_radial: bool = False
    ensemble_heads: int = 1
    charge_input: bool = False
    properties: dict[str, str] = field(default_factory=dict)
    baseline: str | None = None
    avg_num_neighbors: float = 1.0
    e0s: dict[str, float] = field(default_factory=dict)
    e0s_basis: list[list[float]] | None = None
    charge_energies: list[float] | None = None
    energy_shift: float = 0.0
    energy_scale: float = 1.0
    property_stats: dict[str, list[float]] = field(default_factory=dict)
    trained_outputs: list[str] = field(default_factory=lambda: ["energy", "forces"])

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values the architecture cannot use.

        Types and finiteness first (a model file's header is data: ``"32"``, ``NaN`` or ``inf``
        must not reach the network), then ranges, including upper bounds that keep a model
        buildable (see :data:`LIMITS`): a header asking for 5,000 layers or 2·10⁵ channels is
        refused before anything is allocated.
        """
        _check_types(self)
        checks = [
            (self.cutoff > 0, f"cutoff must be > 0 Å, got {self.cutoff}"),
            (self.channels >= 1, f"channels must be ≥ 1, got {self.channels}"),
            (0 <= self.l_max <= 3, f"l_max must be in 0..3, got {self.l_max}"),
            (self.edge_l_max is None or 0 <= self.edge_l_max <= 3,
             f"edge_l_max must be in 0..3 or null, got {self.edge_l_max}"),
            (self.num_layers >= 1, f"num_layers must be ≥ 1, got {self.num_layers}"),
            (self.num_radial >= 1, f"num_radial must be ≥ 1, got {self.num_radial}"),
            (self.cutoff_p >= 2, f"cutoff_p must be ≥ 2, got {self.cutoff_p}"),
            (1 <= self.correlation <= 4, f"correlation must be in 1..4, got {self.correlation}"),
            (all(int(z) >= 1 for z in self.species), f"species must be atomic numbers, got {self.species}"),
            (self.energy_scale > 0, f"energy_scale must be > 0, got {self.energy_scale}"),
            (self.avg_num_neighbors > 0, f"avg_num_neighbors must be > 0, got {self.avg_num_neighbors}"),
            (len(set(self.species)) == len(self.species) and all(int(z) <= 118 for z in self.species),
             f"species must be distinct atomic numbers in 1..118, got {self.species}"),
            (all(h >= 1 for h in self.radial_hidden), f"radial_hidden sizes must be ≥ 1, got {self.radial_hidden}"),
            (self.readout_hidden >= 1, f"readout_hidden must be ≥ 1, got {self.readout_hidden}"),
            (int(self.ensemble_heads) >= 1, f"ensemble_heads must be ≥ 1, got {self.ensemble_heads}"),
        ]
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            largest = max(value, default=0) if isinstance(value, list) else value
            if largest > limit:
                checks.append((False, f"{name} must be ≤ {limit:g}, got {value}"))
        if len(self.radial_hidden) > 8:
            checks.append((False, f"radial_hidden may have at most 8 layers, got {len(self.radial_hidden)}"))
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.ensemble_heads = int(self.ensemble_heads)
        from molequi.models.baseline import check_baseline

        check_baseline(self.baseline)
        for name, kind in self.properties.items():
            if kind not in HEADS:
                raise ConfigError(f"property '{name}' has kind '{kind}'; choose one of {sorted(HEADS)}")
        for name, stats in self.property_stats.items():
            if name not in self.properties:
                raise ConfigError(f"property_stats names '{name}', which is not a property head")
            if len(stats) != 2 or not float(stats[1]) > 0:
                raise ConfigError(f"property_stats['{name}'] must be [shift, scale > 0], got {stats}")
        self.property_stats = {str(k): [float(v) for v in stats] for k, stats in self.property_stats.items()}
        self.species = sorted(int(z) for z in self.species)
        self.trained_outputs = [str(name) for name in self.trained_outputs]
        unknown = [name for name in self.trained_outputs if name not in ("energy", "forces", *self.properties)]
        if unknown:
            raise ConfigError(f"trained_outputs names {unknown}, which are neither energy, forces nor a property head")

    @property
    def message_l_max(self) -> int:
        """The rotation order of the edge harmonics and messages actually built: ``edge_l_max``,
        raised to ``l_max`` when below it (messages must carry every order a layer passes on)."""
        return self.l_max if self.edge_l_max is None else max(self.l_max, self.edge_l_max)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the :data:`LATER_FIELDS` still at their defaults: what a model's
        content digest covers, so that files (and calibrations) written before a field existed
        keep their identity."""
        values = self.to_dict()
        for name, default in LATER_FIELDS.items():
            if values.get(name) == default:
                values.pop(name)
        return values

    def with_normalisation_of(self, other: ModelConfig) -> ModelConfig:
        """This config with ``other``'s normalisation (:data:`NORMALISATION`): what a trained model
        carries and a further training keeps, so that its weights mean what they meant."""
        return dataclasses.replace(self, **{name: copy.deepcopy(getattr(other, name)) for name in NORMALISATION})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build from a mapping, naming the closest valid key for a misspelt one."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(f"unknown model setting '{key}'{closest_name(key, known)}")
        return cls(**values)


LATER_FIELDS: dict[str, Any] = {"charge_energies": None}
"""Fields added after model files first recorded their content digest, with their defaults."""

NORMALISATION = ("e0s", "e0s_basis", "charge_energies", "energy_shift", "energy_scale", "avg_num_neighbors", "property_stats")
"""The fields a model learns from its first training data and keeps for life: per-element reference
energies (eV), the per-atom energy shift (eV) and scale, the mean neighbour count that normalises
messages, and each property head's ``[shift, scale]``. Loading, evaluating or training a model
further never recomputes them."""

LIMITS = {"cutoff": 30.0, "channels": 1024, "num_layers": 16, "num_radial": 128, "cutoff_p": 64,
          "radial_hidden": 4096, "readout_hidden": 4096, "ensemble_heads": 64}
"""Upper bounds of the architecture: far beyond any useful molecular potential, low enough that a
model always fits in memory (cutoff Å)."""

_INTEGERS = ("channels", "l_max", "num_layers", "num_radial", "cutoff_p", "correlation", "readout_hidden",
             "ensemble_heads")
_REALS = ("cutoff", "avg_num_neighbors", "energy_shift", "energy_scale")


def _check_types(config: ModelConfig) -> None:
    """Raise :class:`ConfigError` for a value of the wrong type or a non-finite number."""
    import math
    import numbers

    def whole(value: object) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    def real(value: object) -> bool:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))

    for name in _INTEGERS:
        if not whole(getattr(config, name)):
            raise ConfigError(f"{name} must be a whole number, got {getattr(config, name)!r}")
    if config.edge_l_max is not None and not whole(config.edge_l_max):
        raise ConfigError(f"edge_l_max must be a whole number or null, got {config.edge_l_max!r}")
    for name in _REALS:
        if not real(getattr(config, name)):
            raise ConfigError(f"{name} must be a finite number, got {getattr(config, name)!r}")
    for name in ("trainable_radial", "species_product", "charge_input"):
        if not isinstance(getattr(config, name), bool):
            raise ConfigError(f"{name} must be true or false, got {getattr(config, name)!r}")
    lists = {"species": config.species, "radial_hidden": config.radial_hidden}
    for name, values in lists.items():
        if not isinstance(values, (list, tuple)) or not all(whole(v) for v in values):
            raise ConfigError(f"{name} must be a list of whole numbers, got {values!r}")
    config.species, config.radial_hidden = list(config.species), list(config.radial_hidden)
    mappings = {"properties": config.properties, "e0s": config.e0s, "property_stats": config.property_stats}
    for name, mapping in mappings.items():
        if not isinstance(mapping, dict):
            raise ConfigError(f"{name} must be a mapping, got {mapping!r}")
    for element, energy in config.e0s.items():
        if not real(energy):
            raise ConfigError(f"e0s['{element}'] must be a finite energy (eV), got {energy!r}")
    if config.e0s_basis is not None:
        rows = config.e0s_basis
        if not isinstance(rows, (list, tuple)) or not all(
                isinstance(row, (list, tuple)) and len(row) == len(config.species) and all(real(v) for v in row)
                for row in rows):
            raise ConfigError(f"e0s_basis must be null or rows of {len(config.species)} finite numbers (one per "
                              f"species), got {rows!r}")
        config.e0s_basis = [[float(v) for v in row] for row in rows]
    if config.charge_energies is not None:
        terms = config.charge_energies
        if not isinstance(terms, (list, tuple)) or len(terms) != 2 or not all(real(v) for v in terms):
            raise ConfigError(f"charge_energies must be null or two finite energies [a, b] (eV per e, eV per e²), "
                              f"got {terms!r}")
        config.charge_energies = [float(v) for v in terms]
    for name, stats in config.property_stats.items():
        if not isinstance(stats, (list, tuple)) or not all(real(v) for v in stats):
            raise ConfigError(f"property_stats['{name}'] must be finite numbers, got {stats!r}")
    if not isinstance(config.trained_outputs, (list, tuple)):
        raise ConfigError(f"trained_outputs must be a list of names, got {config.trained_outputs!r}")
