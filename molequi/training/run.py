"""The collaborators of a training run, built once before the loop: checked inputs, the model,
its EMA, optimizer, schedule and data loader, and the counters a checkpoint restores.

The loop itself (a step, an epoch, a validation) is in :mod:`molequi.training.trainer`.
"""

from __future__ import annotations

import functools
import sys
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch_geometric.loader import DataLoader

from molequi.errors import ConfigError, UnknownElementError
from molequi.models.config import ModelConfig
from molequi.models.io import build_model
from molequi.training.checkpoint import (
    data_identity,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from molequi.training.config import RESUMABLE_KEYS, TrainingConfig
from molequi.training.data import (
    PreparedData,
    load_graphs,
    prepare_data,
    prepare_streamed,
    trained_outputs,
)
from molequi.training.distributed import Distributed
from molequi.training.ema import ExponentialMovingAverage
from molequi.training.schedule import BudgetCosine

if TYPE_CHECKING:
    from molequi.training.finetune import WeightAnchor


def checkpoint_path(out_dir: str | Path, which: str = "last") -> Path:
    return Path(out_dir) / "checkpoints" / f"{which}.pt"


_MISSING = object()


def resume_settings(out_dir: str | Path, overrides: dict[str, Any] | None = None) -> tuple[TrainingConfig, list[str]]:
    """The config and data files of the run in ``out_dir`` (from ``checkpoints/last.pt``), with
    ``overrides`` applied to the settings that may change on resume (:data:`RESUMABLE_KEYS`).

    Raises:
        ConfigError: no checkpoint, or an override of a setting that must stay fixed.
    """
    path = checkpoint_path(out_dir)
    if not path.is_file():
        raise ConfigError(f"cannot resume: {path} does not exist (start the run without --resume)")
    state = load_checkpoint(path)
    values = state["config"]
    for key, value in (overrides or {}).items():
        if key not in RESUMABLE_KEYS:
            head, _, tail = key.partition(".")  # "model.channels" lives in values["model"]
            saved = values.get(head, {}).get(tail, _MISSING) if tail else values.get(key, _MISSING)
            if saved == value:
                continue
            raise ConfigError(
                f"cannot change '{key}' when resuming (the run continues with its saved settings); "
                f"only {', '.join(RESUMABLE_KEYS)} may change"
            )
        values[key] = value
    return TrainingConfig.from_dict(values), list(state["data"])


def _set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _make_optimizer(config: TrainingConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, amsgrad=False)


def _make_scheduler(config: TrainingConfig, optimizer: torch.optim.Optimizer):
    if config.scheduler == "budget":
        budget = None if config.max_minutes is None else 60.0 * config.max_minutes
        return BudgetCosine(optimizer, config.learning_rate, config.min_learning_rate, config.epoch_limit, budget,
                            config.decay_fraction)
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epoch_limit, eta_min=config.min_learning_rate)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience, min_lr=config.min_learning_rate
    )


# --- inputs: everything that can fail on user input, before anything is written -------------


@dataclass
class RunInputs:
    """A run's checked inputs: data, architecture, test set and (on resume) the saved state."""

    paths: list[str]
    test_paths: list[str] | None
    prepared: PreparedData
    model_config: ModelConfig
    outputs_trained: list[str]
    test_graphs: list | None
    state: dict[str, Any] | None
    data_sha256: list[str] = field(default_factory=list)  # content hashes of ``paths`` (checkpoint.data_identity)


def load_run_inputs(
    config: TrainingConfig, paths: list[str], out_dir: Path, test_paths: list[str] | None, resume: bool,
    overwrite: bool = False, init_weights: str | Path | None = None,
) -> RunInputs:
    """Read and check the data, the architecture and (on resume) the checkpoint.

    The model's normalisation (:data:`~molequi.models.config.NORMALISATION`) is fitted on the
    training data for a new model, restored from the checkpoint on resume, and taken from the
    model file ``init_weights`` for a warm start: a trained model's weights keep their meaning.

    Raises:
        ConfigError: an existing run without ``resume``, or a resume with changed settings.
        MolequiError subclasses for bad data or test data.
    """
    state = None
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: pass one of them")
    if not resume and not overwrite and checkpoint_path(out_dir).exists():
        raise ConfigError(
            f"{out_dir} already holds a training run ({checkpoint_path(out_dir)}); pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )
    if resume:
        state = load_checkpoint(checkpoint_path(out_dir))
        saved = TrainingConfig.from_dict(state["config"]).to_dict()
        current = config.to_dict()
        changed = [key for key in saved if key not in RESUMABLE_KEYS and saved[key] != current[key]]
        if changed:
            raise ConfigError(f"cannot resume with changed settings {changed}; only {', '.join(RESUMABLE_KEYS)} may change")
    data_sha256 = data_identity(paths)
    if state is not None:
        check_resume_data(state, paths, data_sha256, out_dir)
    outputs_trained = trained_outputs(
        config.energy_weight, config.forces_weight, config.property_weights, config.model.properties
    )
    if config.stream:
        prepared = prepare_streamed(paths, config.model, config.validation, config.seed, keys=config.label_keys,
                                    e0s=config.e0s)
    else:
        prepared = prepare_data(
            paths, config.model, config.validation, config.seed, outputs_trained, keys=config.label_keys,
            e0s=config.e0s, cache_dir=out_dir / "baseline_cache", allow_outliers=config.allow_outliers,
        )
    if state is not None:
        model_config = ModelConfig(**state["model_config"])
        if config.replay > 0:  # the same replayed structures as the run's start, for an exact continuation
            from molequi.training.finetune import add_replay, applied_shift

            add_replay(config, prepared, applied_shift(config, model_config), model_config.species)
    elif config.init is not None:
        from molequi.training.finetune import add_replay, fine_tuned_config

        model_config, shift = fine_tuned_config(config, prepared, outputs_trained)
        if config.replay > 0:
            added = add_replay(config, prepared, shift, model_config.species)
            print(f"replay: {added} structures of {config.replay_data} join the {len(prepared.train) - added} "
                  "training structures", file=sys.stderr)
    elif init_weights is not None:
        model_config = prepared.model_config.with_normalisation_of(initial_config(init_weights, prepared.model_config))
    else:
        model_config = prepared.model_config
    test_graphs = None
    if test_paths:
        test_graphs = load_graphs(
            test_paths,
            model_config.cutoff,
            properties=list(model_config.properties),
            require_energy="energy" in outputs_trained,
            require_forces="forces" in outputs_trained,
            keys=config.label_keys,
            baseline=model_config.baseline,
            cache_dir=out_dir / "baseline_cache",
        )
        _check_test_species(test_graphs, model_config)
    return RunInputs(paths, test_paths, prepared, model_config, outputs_trained, test_graphs, state, data_sha256)


def check_resume_data(state: dict[str, Any], paths: list[str], data_sha256: list[str], out_dir: Path) -> None:
    """Raise :class:`ConfigError` when the training data differ (by content) from those the run
    in ``out_dir`` started with; warn when the checkpoint predates data hashes."""
    import warnings

    from molequi.data.qm9 import is_qm9_spec
    from molequi.errors import InputFileError

    missing = [str(p) for p in paths if not Path(str(p)).exists() and not is_qm9_spec(str(p))]
    if missing:  # a relative path from another working folder: not a change of data
        raise InputFileError(
            f"cannot resume the run in {out_dir}: its training data {', '.join(missing)} is not found from "
            f"{Path.cwd()} (the run recorded the path as it was typed); run from the folder it was started in, "
            "or pass --data with the file's path")
    saved = state.get("data_sha256")
    if saved is None:
        warnings.warn(f"{out_dir}: the checkpoint records no data hashes (written by an older molequi); the resume "
                      "cannot check that the training data are unchanged", stacklevel=3)
        return
    if list(saved) == list(data_sha256):
        return
    old_paths = [str(p) for p in state.get("data", [])]
    if old_paths != [str(p) for p in paths]:
        what = f"--data {' '.join(map(str, paths))} instead of {' '.join(old_paths)}"
    else:
        what = "the contents of " + ", ".join(str(p) for p, a, b in zip(paths, saved, data_sha256) if a != b)
    raise ConfigError(f"cannot resume the run in {out_dir}: its training data changed ({what}); resume with the "
                      "original data or start a new run in another --out")


def _check_test_species(test_graphs: list, model_config: ModelConfig) -> None:
    present = {int(z) for graph in test_graphs for z in graph.numbers.unique().tolist()}
    unknown = sorted(present - set(model_config.species))
    if unknown:
        from ase.data import chemical_symbols

        raise UnknownElementError(
            f"the test data contain element(s) {', '.join(chemical_symbols[z] for z in unknown)} "
            f"that are not in the training data ({', '.join(chemical_symbols[z] for z in model_config.species)})"
        )


# --- the collaborators of a run ---------------------------------------------------------------


@dataclass
class Progress:
    """The counters of a run that a checkpoint restores (beside the optimizer, scheduler, EMA
    and RNG states)."""

    epoch: int = 0
    best_loss: float = math.inf
    best_epoch: int = 0
    stale: int = 0
    elapsed_before: float = 0.0  # wall seconds of earlier sessions of this run
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = ""


@dataclass
class TrainingRun:
    """Model, EMA, optimizer, schedule and data of one run: what a step, an epoch and a
    validation work with."""

    config: TrainingConfig
    model_config: ModelConfig
    model: torch.nn.Module
    trained: torch.nn.Module  # ``model``, or its DistributedDataParallel wrapper
    ema: ExponentialMovingAverage | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: DataLoader
    sampler: Any  # DistributedSampler under DDP, else None
    shuffle: torch.Generator
    validation: list  # this process's shard of the validation graphs
    properties: dict[str, str]  # head name -> kind
    weights: dict[str, float]
    with_forces: bool  # no force pass (≈2/3 of the cost) when the loss does not use forces
    device: torch.device
    dtype: torch.dtype
    ddp: Distributed
    anchor: WeightAnchor | None = None  # the pull towards the initial weights (``config.anchor``)

    @property
    def evaluation_model(self) -> torch.nn.Module:
        """The weights that are validated and exported: the EMA if there is one."""
        return self.ema.module if self.ema is not None else self.model

    def fresh_model(self) -> torch.nn.Module:
        return fresh_model(self.model_config, self.dtype, self.device)


def fresh_model(model_config: ModelConfig, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """An empty model of the given architecture; building it does not consume the training RNG."""
    with torch.random.fork_rng(devices=[]):
        return build_model(model_config, dtype).to(device)


def build_run(
    config: TrainingConfig,
    inputs: RunInputs,
    device: torch.device,
    dtype: torch.dtype,
    ddp: Distributed,
    init_weights: str | Path | None = None,
) -> TrainingRun:
    """Seed, build the model and its collaborators. The order of RNG use is fixed: an exact
    resume depends on it. ``init_weights``: a model file whose weights start the run (a warm
    start; a resumed run then restores its checkpoint over them)."""
    _set_seeds(config.seed)
    model_config = inputs.model_config
    model = build_model(model_config, dtype).to(device)
    if init_weights is not None:
        load_initial_weights(model, init_weights)
        from molequi.training.finetune import learns_a_correction, zero_energy_readouts

        if learns_a_correction(config):
            zero_energy_readouts(model)
    if config.freeze:
        from molequi.training.finetune import freeze_body

        freeze_body(model)
    anchor = weight_anchor(config, model_config, dtype, device, len(inputs.prepared.train))
    if config.compile:
        model.compile()  # the trained model only: validation and export stay eager
    factory = functools.partial(fresh_model, model_config, dtype, device)
    ema = ExponentialMovingAverage(model, config.ema_decay, factory) if config.ema_decay > 0 else None
    trained = model
    if ddp.active:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = _make_optimizer(config, model)
    scheduler = _make_scheduler(config, optimizer)
    properties = dict(model_config.properties)
    weights = {"energy": config.energy_weight, "forces": config.forces_weight}
    weights.update({name: config.property_weights.get(name, 1.0) for name in properties})
    shuffle = torch.Generator()
    shuffle.manual_seed(config.seed)
    sampler = None
    if ddp.active:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(
            inputs.prepared.train, num_replicas=ddp.world_size, rank=ddp.rank, shuffle=True, seed=config.seed
        )
    loader = DataLoader(
        inputs.prepared.train,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=shuffle if sampler is None else None,
        num_workers=config.num_workers,
        drop_last=False,
    )
    return TrainingRun(
        config=config,
        model_config=model_config,
        model=model,
        trained=trained,
        ema=ema,
        optimizer=optimizer,
        scheduler=scheduler,
        loader=loader,
        sampler=sampler,
        shuffle=shuffle,
        validation=inputs.prepared.validation[ddp.rank :: ddp.world_size],
        properties=properties,
        weights=weights,
        with_forces="forces" in inputs.outputs_trained,
        device=device,
        dtype=dtype,
        ddp=ddp,
        anchor=anchor,
    )


def initial_config(path: str | Path, ours: ModelConfig) -> ModelConfig:
    """The config of the model file ``path`` that starts a run whose data give ``ours``.

    Raises:
        ConfigError: the file was trained on other elements than the data hold.
    """
    from molequi.models.io import read_config

    theirs = read_config(path)
    if list(theirs.species) != list(ours.species):
        raise ConfigError(
            f"cannot start from {path}: it was trained on elements {list(theirs.species)}, the data hold {list(ours.species)}"
        )
    return theirs


def weight_anchor(config: TrainingConfig, model_config, dtype: torch.dtype, device: torch.device,
                  n_train: int) -> WeightAnchor | None:
    """The run's :class:`WeightAnchor` (None without ``anchor``): the weights of
    ``config.anchor_model`` (default ``config.init``) as the run starts from them, built afresh
    so that a resumed run pulls towards the same weights as the first."""
    if not config.anchor:
        return None
    from molequi.training.finetune import WeightAnchor, learns_a_correction, resolve_model, zero_energy_readouts

    reference = fresh_model(model_config, dtype, device)
    load_initial_weights(reference, resolve_model(config.anchor_model or config.init))
    if learns_a_correction(config):
        zero_energy_readouts(reference)
    weights = {name: parameter.detach().clone() for name, parameter in reference.named_parameters()}
    return WeightAnchor(weights, config.anchor / max(1, n_train))


def load_initial_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Copy the weights of the model file ``path`` into ``model`` (same architecture and species,
    and its normalisation: see :func:`load_run_inputs`). Used to warm-start a retraining on more data.

    Raises:
        ConfigError: the file's architecture or species differ from ``model``'s.
    """
    from molequi.models.io import load_model

    source = load_model(path, device=next(model.parameters()).device, dtype=next(model.parameters()).dtype)
    theirs, ours = source.model.config, model.model.config
    if list(theirs.species) != list(ours.species):
        raise ConfigError(
            f"cannot start from {path}: it was trained on elements {list(theirs.species)}, the data hold {list(ours.species)}"
        )
    state = {key: value for key, value in source.state_dict().items() if key != "model.e0"}
    own = model.state_dict()
    mismatched = [key for key, value in state.items() if key not in own or own[key].shape != value.shape]
    if mismatched or set(own) - set(state) - {"model.e0"}:
        raise ConfigError(f"cannot start from {path}: its architecture differs from the configured one ({mismatched[:3]} ...)")
    model.load_state_dict(state, strict=False)


def restore(run: TrainingRun, state: dict[str, Any]) -> Progress:
    """Load a checkpoint's states into ``run`` and return its counters."""
    run.model.load_state_dict(state["model"])
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], run.shuffle)
    stop_reason = str(state.get("stop_reason", ""))
    if not stop_reason.startswith("early stopping"):
        stop_reason = ""  # max_epochs / time budget: a resumed run may go on
    return Progress(
        epoch=int(state["epoch"]),
        best_loss=float(state["best_loss"]),
        best_epoch=int(state["best_epoch"]),
        stale=int(state["stale"]),
        elapsed_before=float(state["elapsed_s"]),
        history=[dict(row) for row in state["history"]],
        stop_reason=stop_reason,
    )


def snapshot(run: TrainingRun, progress: Progress, paths: list[str], elapsed_s: float,
             data_sha256: list[str] | None = None) -> dict[str, Any]:
    """The full state of a run after an epoch: what ``checkpoints/*.pt`` hold."""
    return {
        "epoch": progress.epoch,
        "model": run.model.state_dict(),
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "export": run.evaluation_model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": rng_state(run.shuffle),
        "best_loss": progress.best_loss,
        "best_epoch": progress.best_epoch,
        "stale": progress.stale,
        "elapsed_s": elapsed_s,
        "history": progress.history,
        "stop_reason": progress.stop_reason,
        "config": run.config.to_dict(),
        "model_config": run.model_config.to_dict(),
        "data": paths,
        "data_sha256": data_sha256 if data_sha256 is not None else data_identity(paths),
        "world_size": run.ddp.world_size,
    }
