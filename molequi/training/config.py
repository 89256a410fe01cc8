"""Training settings: one typed, validated object, read from YAML and command-line overrides.

The YAML file mirrors :class:`TrainingConfig`: top-level training keys plus a ``model:``
section with the architecture keys of :class:`~molequi.models.config.ModelConfig`. The
shipped ``default.yaml`` (next to this module) lists every key with its default and a
comment; a test keeps the two from drifting apart.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from molequi.data.labels import LabelKeys
from molequi.errors import ConfigError
from molequi.models.config import LATER_FIELDS, ModelConfig
from molequi.training.targets import apply_targets
from molequi.utils import closest_name

DEFAULT_YAML = Path(__file__).with_name("default.yaml")
"""The shipped, commented defaults file."""

DERIVED_MODEL_KEYS = ("species", "e0s", "e0s_basis", "charge_energies", "energy_shift", "energy_scale",
                      "avg_num_neighbors", "property_stats", "trained_outputs")
"""ModelConfig fields computed from the training data, never set by hand."""

ARCHITECTURE_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in DERIVED_MODEL_KEYS)
"""ModelConfig fields a training config may set (the ``model:`` section)."""

RESERVED_PROPERTY_NAMES = ("energy", "energies", "forces", "stress", "pos", "numbers", "cell", "pbc", "edge_index",
                           "shifts", "batch", "ptr", "index")
"""Names a property head cannot take: they are the model's outputs or fields of a graph."""

SCHEDULERS = ("plateau", "cosine", "budget")  # learning-rate schedules (see TrainingConfig)

RESUMABLE_KEYS = ("max_epochs", "max_minutes", "device", "num_workers", "progress", "eval_batch_size", "compile")
"""Settings that may change when a run is resumed (the rest would break exact continuation)."""


def default_model() -> ModelConfig:
    """The default architecture: :class:`ModelConfig`'s own defaults (the one place they are
    set; ``default.yaml`` is a commented copy that a test keeps equal)."""
    return ModelConfig()


DEFAULT_MAX_EPOCHS = 500
"""The epoch limit of a run given neither ``max_epochs`` nor ``max_minutes``."""
NO_EPOCH_LIMIT = 10**9
"""The epoch limit of a run given ``max_minutes`` and no ``max_epochs``: none in practice."""


@dataclass
class TrainingConfig:
    """How to train a molequi potential. Every field has a documented default.

    Attributes:
        optimizer: ``"adam"`` or ``"adamw"`` (decoupled weight decay).
        learning_rate: initial learning rate of the optimizer. 3e-2 with batches of 16 and EMA
            learns faster per CPU minute than 1e-2 on rMD17 ethanol (docs/benchmarks.md, "What moves the
            numbers", ``scripts/bench_recipe.py``); lower it for much smaller batches.
        weight_decay: L2 penalty (adam) or decoupled weight decay (adamw); 0 disables.
        batch_size: structures per optimizer step and per process (under torchrun the global
            batch is ``batch_size × WORLD_SIZE``). On a CPU a step has a large fixed cost, so 16
            small molecules per step learn faster per minute than 4.
        eval_batch_size: structures per batch when validating and testing (memory only).
        max_epochs: stop after this many passes over the training set; ``null`` (the default)
            means 500 without ``max_minutes`` and no epoch limit with it (the time budget is
            then the limit, so a small data set is not stopped early by an epoch count nobody
            asked for). :attr:`epoch_limit` is the limit in force.
        max_minutes: wall-clock budget of one invocation, minutes (``null`` = none). When it
            runs out the current epoch is cut short, validated, and every output written.
        scheduler: ``"plateau"`` (multiply the learning rate by ``plateau_factor`` when the
            validation loss has not improved for ``plateau_patience`` validations) or
            ``"cosine"`` (cosine decay from ``learning_rate`` to ``min_learning_rate`` over
            ``max_epochs``, stepped once an epoch) or ``"budget"`` (the same decay set before
            every step from the spent fraction of the budget: epochs of ``max_epochs`` or
            minutes of ``max_minutes``, whichever is further along: constant, then a cosine
            over the last ``decay_fraction`` of the budget, reaching ``min_learning_rate`` when
            the run ends; see :mod:`molequi.training.schedule`).
        decay_fraction: the final part of the budget over which ``budget`` decays the rate, in (0, 1].
        plateau_factor: learning-rate factor of the plateau scheduler, in (0, 1).
        plateau_patience: validations without improvement before the plateau scheduler acts.
        min_learning_rate: floor of both schedulers.
        grad_clip: maximum global gradient norm; 0 disables clipping.
        ema_decay: decay of the exponential moving average of the weights (warmed up as
            ``min(decay, (1 + n) / (10 + n))`` after n steps); the average is what is validated,
            checkpointed as best and exported. 0 disables the average.
        early_stopping_patience: stop after this many validations without improvement of the
            validation loss; 0 disables early stopping.
        energy_weight: weight of the per-atom energy MSE (eV²/atom²) in the loss. 0 trains no
            energy (a property-only model); the energy labels are then optional.
        forces_weight: weight of the force-component MSE ((eV/Å)²) in the loss. 0 (or training
            data without any forces, such as QM9) trains on energies/properties only: no forces
            are needed, computed or reported.
        property_weights: property name -> weight of its MSE, for property heads declared in
            ``model.properties`` (labels are read from each structure's ``atoms.info``);
            properties not listed get weight 1. At least one weight (energy, forces or a
            property) must be positive.
        validation: structures held out for validation: a count (int ≥ 1) or a fraction in
            (0, 1). The split is a pure function of the data size, this value and ``seed``.
        seed: seeds the split, the weight initialisation and the shuffling.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"`` or ``"cuda"``/``"cuda:N"``.
        dtype: ``"float32"`` or ``"float64"`` for the network's weights and arithmetic. Energies
            are float64 either way (float64 reference energies and sums, residual loss), so
            float32 costs no energy resolution; it is faster per step and its forces differ
            from float64 ones of the same weights by far less than any trained error
            (``scripts/bench_precision.py``). float64 for bit-exact comparisons.
        eval_interval: validate every this many epochs (the last epoch is always validated).
        num_workers: DataLoader worker processes (0 = load in the training process).
        compile: train through ``torch.compile`` (energy, forces and the force loss's gradients
            as one compiled graph, :mod:`molequi.nn.compiled`): the first step compiles (about a
            minute on a CPU), later steps are faster (``scripts/bench_train.py``); eager, with one
            warning, where compilation fails. Results equal the eager ones within float round-off.
        progress: show a tqdm progress bar per epoch (rank 0 only).
        ensemble_loss: how a shallow ensemble (``model.ensemble_heads`` ≥ 2) is trained:
            ``"heads"`` (the mean over heads of each head's usual loss) or ``"nll"`` (the
            Gaussian negative log-likelihood of the labels under the heads' mean and variance).
            ``heads`` is the default: on ethanol MD frames (``scripts/bench_ensemble_heads.py``)
            its spread ranks force errors better and its mean is more accurate; its raw spread
            is far too small, which ``molequi calibrate`` corrects, while ``nll`` sizes the
            spread about right uncalibrated but ranks errors worse.
        ensemble_bootstrap: with ``ensemble_loss: heads``, weigh each head's errors per structure
            by its own Bayesian-bootstrap weights (Exp(1), fixed per structure and head), so the
            heads of one body differ in the data they fit as a committee's members do.
        ensemble_nll_weight: with ``ensemble_loss: heads``, add this weight × the Gaussian NLL of
            the force labels under the heads' mean and variance (nats per component), so the
            spread is trained as well as each head; 0: none.
        energy_key: key of the energy label (eV) in the data: calculator results or
            ``atoms.info`` (MACE-style files: ``REF_energy``).
        forces_key: key of the forces label (eV/Å): calculator results or ``atoms.arrays``.
        stress_key: key of the stress label (eV/Å³): calculator results or ``atoms.info``. Read
            and carried with the structures; no stress is fitted.
        e0s: per-element reference energies: ``fit`` (least squares on the training energies),
            ``average`` (MACE's name for the same fit) or a JSON file ``{symbol or Z: eV}``.
        allow_outliers: train on structures whose energy per atom (after the E0s) or largest
            force lies more than 20 MADs from the median (refused otherwise, naming them: a label
            in kcal/mol or Hartree among eV labels).
        init: a model file, or a pretrained model's name (``organic-xtb``), that starts the run
            (fine-tuning, see :mod:`molequi.training.finetune`): its architecture and
            normalisation are kept, its reference energies refitted on the data.
        freeze: with ``init``, train only the readout heads (the body keeps its weights).
        anchor: with ``init``, add ``anchor / N · Σ (θ − θ₀)²`` to the loss (N training
            structures): a pull towards the initial weights, keeping what the labels do not show.
        anchor_model: the model ``anchor`` pulls towards (default ``init``).
        replay: with ``init`` and ``replay_data``, add this fraction (of the training set's size)
            of pretraining structures to the training set, against forgetting.
        replay_data: the pretraining data file replayed (extxyz with energies and forces).
        stream: read the training structures from disk as batches need them (one .xyz/.extxyz
            file; memory does not grow with its size), fitting the normalisation on a sample;
            no outlier check, no baseline, no replay.
        model: the architecture (a ``model:`` section of :class:`ModelConfig` keys; species,
            E0s, energy shift/scale and average neighbor count come from the training data).
    """

    optimizer: str = "adam"
    learning_rate: float = 3e-2
    weight_decay: float = 0.0
    batch_size: int = 16
    eval_batch_size: int = 32
    max_epochs: int | None = None
    max_minutes: float | None = None
    scheduler: str = "plateau"
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    min_learning_rate: float = 1e-5
    decay_fraction: float = 0.2
    grad_clip: float = 10.0
    ema_decay: float = 0.99
    early_stopping_patience: int = 50
    energy_weight: float = 1.0
    forces_weight: float = 100.0
    property_weights: dict[str, float] = field(default_factory=dict)
    validation: int | float = 50
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    eval_interval: int = 1
    num_workers: int = 0
    compile: bool = False
    progress: bool = True
    ensemble_loss: str = "heads"
    ensemble_bootstrap: bool = False
    ensemble_nll_weight: float = 0.0
    energy_key: str = "energy"
    forces_key: str = "forces"
    stress_key: str = "stress"
    e0s: str = "fit"
    allow_outliers: bool = False
    init: str | None = None
    freeze: bool = False
    anchor: float = 0.0
    anchor_model: str | None = None
    replay: float = 0.0
    replay_data: str | None = None
    stream: bool = False
    model: ModelConfig = field(default_factory=default_model)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def epoch_limit(self) -> int:
        """The epoch count that ends the run: ``max_epochs``, or when that is null 500 without
        a time budget and :data:`NO_EPOCH_LIMIT` with one."""
        if self.max_epochs is not None:
            return self.max_epochs
        return DEFAULT_MAX_EPOCHS if self.max_minutes is None else NO_EPOCH_LIMIT

    def validate(self) -> None:
        """Coerce YAML-ish values to their types and raise :class:`ConfigError` for bad ones."""
        for f in dataclasses.fields(self):
            if f.name != "model":
                setattr(self, f.name, _coerce(f.name, getattr(self, f.name), f.type))
        if isinstance(self.model, dict):
            self.model = model_from_dict(self.model)
        if not isinstance(self.model, ModelConfig):
            raise ConfigError(f"model must be a mapping of architecture settings, got {self.model!r}")
        checks = [
            (self.optimizer in ("adam", "adamw"), f"optimizer must be 'adam' or 'adamw', got '{self.optimizer}'"),
            (self.scheduler in SCHEDULERS, f"scheduler must be one of {', '.join(SCHEDULERS)}, got '{self.scheduler}'"),
            (self.ensemble_loss in ("heads", "nll"), f"ensemble_loss must be 'heads' or 'nll', got '{self.ensemble_loss}'"),
            (self.dtype in ("float32", "float64"), f"dtype must be 'float32' or 'float64', got '{self.dtype}'"),
            (0 <= self.replay <= 1, f"replay must be a fraction in [0, 1], got {self.replay}"),
            (self.init is not None or not (self.freeze or self.replay or self.anchor), "freeze, anchor and replay need init (--init MODEL)"),
            (self.anchor >= 0, f"anchor must be ≥ 0, got {self.anchor}"),
            (self.anchor_model is None or self.anchor > 0, "anchor_model needs anchor > 0 (--anchor W)"),
            (not (self.stream and (self.model.baseline or self.replay)),
             "stream reads structures from disk as they are needed: it works without baseline and replay"),
            ((self.replay > 0) == (self.replay_data is not None),
             "replay needs replay_data (--replay-data FILE) and replay_data needs replay > 0"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (self.weight_decay >= 0, f"weight_decay must be ≥ 0, got {self.weight_decay}"),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be ≥ 1, got {self.eval_batch_size}"),
            (self.max_epochs is None or self.max_epochs >= 1, f"max_epochs must be ≥ 1, got {self.max_epochs}"),
            (not (self.scheduler == "cosine" and self.max_epochs is None and self.max_minutes is not None),
             "scheduler 'cosine' decays over max_epochs: set max_epochs, or use scheduler 'budget' to decay over "
             "max_minutes"),
            (self.max_minutes is None or self.max_minutes > 0, f"max_minutes must be > 0 (or null), got {self.max_minutes}"),
            (0 < self.plateau_factor < 1, f"plateau_factor must be in (0, 1), got {self.plateau_factor}"),
            (self.plateau_patience >= 0, f"plateau_patience must be ≥ 0, got {self.plateau_patience}"),
            (0 < self.decay_fraction <= 1, f"decay_fraction must be in (0, 1], got {self.decay_fraction}"),
            (self.min_learning_rate >= 0, f"min_learning_rate must be ≥ 0, got {self.min_learning_rate}"),
            (self.grad_clip >= 0, f"grad_clip must be ≥ 0 (0 disables), got {self.grad_clip}"),
            (0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1) (0 disables), got {self.ema_decay}"),
            (self.early_stopping_patience >= 0, f"early_stopping_patience must be ≥ 0, got {self.early_stopping_patience}"),
            (self.energy_weight >= 0, f"energy_weight must be ≥ 0, got {self.energy_weight}"),
            (self.ensemble_nll_weight >= 0, f"ensemble_nll_weight must be ≥ 0, got {self.ensemble_nll_weight}"),
            (self.forces_weight >= 0, f"forces_weight must be ≥ 0, got {self.forces_weight}"),
            (self.eval_interval >= 1, f"eval_interval must be ≥ 1, got {self.eval_interval}"),
            (self.num_workers >= 0, f"num_workers must be ≥ 0, got {self.num_workers}"),
            (
                self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
                f"device must be 'auto', 'cpu' or 'cuda[:N]', got '{self.device}'",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for name in ("energy_key", "forces_key", "stress_key"):
            if not getattr(self, name).strip():
                raise ConfigError(f"{name} must name a label key, got an empty string")
        if self.e0s not in ("fit", "average") and not self.e0s.endswith(".json"):
            raise ConfigError(f"e0s must be 'fit', 'average' or a JSON file of reference energies, got '{self.e0s}'")
        if isinstance(self.validation, float) and not 0 < self.validation < 1:
            raise ConfigError(f"validation must be a count ≥ 1 or a fraction in (0, 1), got {self.validation}")
        if isinstance(self.validation, int) and self.validation < 1:
            raise ConfigError(f"validation must be a count ≥ 1 or a fraction in (0, 1), got {self.validation}")
        for name, weight in self.property_weights.items():
            if name not in self.model.properties:
                raise ConfigError(
                    f"property_weights names '{name}', which is not a property head in model.properties"
                    f"{closest_name(name, self.model.properties)}"
                )
            if weight < 0:
                raise ConfigError(f"property_weights['{name}'] must be ≥ 0, got {weight}")
        for name in self.model.properties:
            if name in RESERVED_PROPERTY_NAMES:
                raise ConfigError(
                    f"a property head cannot be named '{name}' (reserved for the model's inputs/outputs); "
                    "for the total energy use energy_weight (or --target energy)"
                )
        total = self.energy_weight + self.forces_weight + sum(
            self.property_weights.get(name, 1.0) for name in self.model.properties
        )
        if total <= 0:
            raise ConfigError(
                "every loss weight is 0 (energy_weight, forces_weight and property_weights): nothing to train; "
                "set at least one positive weight"
            )

    @property
    def label_keys(self) -> LabelKeys:
        """The label keys as one object."""
        return LabelKeys(self.energy_key, self.forces_key, self.stress_key)

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping in the YAML layout (architecture keys only under ``model``)."""
        values = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "model"}
        values["model"] = architecture_dict(self.model)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingConfig:
        """Build from a mapping in the YAML layout, naming the closest valid key for a misspelt one."""
        if not isinstance(values, dict):
            raise ConfigError(f"a training config must be a mapping of settings, got {type(values).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                suggestion = closest_name(str(key), known + list(ARCHITECTURE_KEYS))
                if key in ARCHITECTURE_KEYS:
                    suggestion = " (it is a model setting: put it under 'model:')"
                raise ConfigError(f"unknown training setting '{key}'{suggestion}")
        values = dict(values)
        if "model" in values:
            values["model"] = model_from_dict(values["model"] or {})
        try:
            return cls(**values)
        except TypeError as error:  # pragma: no cover - keys are checked above
            raise ConfigError(str(error)) from error


def architecture_dict(model: ModelConfig) -> dict[str, Any]:
    """The architecture keys of a :class:`ModelConfig` as plain values."""
    values = model.to_dict()
    return {key: _plain(values[key]) for key in ARCHITECTURE_KEYS}


def model_from_dict(values: dict[str, Any]) -> ModelConfig:
    """A :class:`ModelConfig` from a ``model:`` section, rejecting data-derived and unknown keys."""
    if isinstance(values, ModelConfig):
        return values
    if not isinstance(values, dict):
        raise ConfigError(f"the 'model' section must be a mapping of architecture settings, got {values!r}")
    # a run's config.yaml written while a data-derived field was still listed among the settings
    # holds it at its default: nothing was set by hand, so it is dropped, not refused
    values = {key: value for key, value in values.items() if LATER_FIELDS.get(key, ...) != value}
    for key in values:
        if key in DERIVED_MODEL_KEYS:
            raise ConfigError(f"model setting '{key}' is computed from the training data; remove it from the config")
        if key not in ARCHITECTURE_KEYS:
            raise ConfigError(f"unknown model setting '{key}'{closest_name(str(key), ARCHITECTURE_KEYS)}")
    base = architecture_dict(default_model())
    base.update(values)
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    typed = {key: _coerce(f"model.{key}", value, fields[key].type) for key, value in base.items()}
    try:
        return ModelConfig(**typed)
    except TypeError as error:
        raise ConfigError(f"invalid model settings: {error}") from error


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, targets: Sequence[str] = ()
) -> TrainingConfig:
    """Read a YAML training config (or start from the defaults) and apply ``overrides``.

    Args:
        path: YAML file mirroring :class:`TrainingConfig` (``model:`` section for the
            architecture), or None for the defaults.
        overrides: top-level keys (``{"learning_rate": 1e-3}``), a ``"model"`` mapping, or dotted
            model keys (``{"model.channels": 64}``); they win over the file.
        targets: ``--target`` specs applied last (see :func:`apply_targets`).

    Raises:
        ConfigError: unreadable YAML, unknown keys (naming the closest valid one) or bad values.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            loaded = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from error
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a training config must be a mapping of settings")
        values = loaded
    values = merge_overrides(values, overrides or {})
    if targets:
        values = apply_targets(values, targets)
    try:
        return TrainingConfig.from_dict(values)
    except ConfigError as error:
        if path is None:
            raise
        # blame the file only for its own values: a bad flag value is the command line's
        try:
            TrainingConfig.from_dict(loaded)
        except ConfigError as own:
            if str(own) == str(error):
                raise ConfigError(f"{path}: {error}") from error
        raise ConfigError(f"{error} (given on the command line; {path} itself is valid)") from error






def merge_overrides(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``values`` with ``overrides`` applied (``model`` sections merged key by key)."""
    merged = dict(values)
    model = dict(merged.get("model") or {})
    for key, value in overrides.items():
        if key.startswith("model."):
            model[key.removeprefix("model.")] = value
        elif key == "model":
            model.update(value or {})
        else:
            merged[key] = value
    if model or "model" in merged:
        merged["model"] = model
    return merged


def save_config(config: TrainingConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (loadable again with :func:`load_config`), atomically."""
    from molequi.utils import atomic_write

    text = "# Resolved molequi training config (load it again with --config).\n" + yaml.safe_dump(
        config.to_dict(), sort_keys=False
    )
    return atomic_write(path, lambda temporary: temporary.write_text(text))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(name: str, value: Any, annotation: str) -> Any:
    """Check ``value`` against a field annotation (as a string), coercing harmless spellings
    (``"5e-3"`` and ints for floats; PyYAML reads ``5e-3`` without a dot as a string)."""
    annotation = str(annotation).replace(" ", "")

    def number(v: Any, integer: bool) -> int | float:
        if isinstance(v, bool):
            raise ConfigError(f"{name} must be a number, got {v!r}")
        if isinstance(v, str):
            try:
                v = float(v) if not integer else int(v)
            except ValueError:
                raise ConfigError(f"{name} must be a{'n integer' if integer else ' number'}, got {v!r}") from None
        if integer:
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if not isinstance(v, int):
                raise ConfigError(f"{name} must be an integer, got {v!r}")
            return v
        if not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise ConfigError(f"{name} must be a finite number, got {v!r}")
        return float(v)

    if annotation.endswith("|None") and value is None:
        return None
    base = annotation.removesuffix("|None")
    if base == "float":
        return number(value, integer=False)
    if base == "int":
        return number(value, integer=True)
    if base == "int|float":
        if isinstance(value, str):
            value = number(value, integer=False)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return value
    if base == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if base == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    if base.startswith("list[int]"):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list of integers, got {value!r}")
        return [number(v, integer=True) for v in value]
    if base.startswith("dict[str,float]"):
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping of names to numbers, got {value!r}")
        return {str(k): number(v, integer=False) for k, v in value.items()}
    if base.startswith("dict[str,str]"):
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{name} must be a mapping of names to strings, got {value!r}")
        return {str(k): v for k, v in value.items()}
    return value
