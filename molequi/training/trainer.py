"""The training loop: optimizer, schedule, clipping, EMA, early stopping, checkpoints, DDP.

Single process::

    config = load_config("train.yaml", {"max_minutes": 4})
    result = train(config, "data/train.extxyz", "runs/ethanol")

Several processes (one per GPU, or CPU processes with gloo): launch the same command under
``torchrun --nproc_per_node K -m molequi.cli.main train ...``. ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK`` are read from the environment; each process sees a disjoint shard of the
training data (``DistributedSampler``), gradients are averaged by ``DistributedDataParallel``,
metrics are summed over processes, and only rank 0 writes files and shows progress.

Files in the output directory (each written atomically)::

    config.yaml            the resolved training config
    log.csv                one row per epoch
    learning_curve.png     validation errors against the epoch
    checkpoints/last.pt    full state after the last completed epoch (resume from it)
    checkpoints/best.pt    full state at the best validation loss
    model.molequi          the best EMA weights, with provenance in ``extra``
    test_metrics.json      with test data (and test_parity.png)

``log.csv`` columns: ``epoch``; ``time_s`` (cumulative wall time, s, across resumes); ``lr``;
``train_loss`` (mean of the batch losses); ``train_energy_mae_meV`` / ``train_forces_mae_meV_per_A``
(running errors of the training batches); ``val_loss`` and ``val_energy_mae_meV``,
``val_energy_rmse_meV`` (total energy, meV), ``val_forces_mae_meV_per_A``,
``val_forces_rmse_meV_per_A`` (per component, meV/Å) of the EMA weights; ``val_<property>_mae``
per property head (its unit); ``train_structures`` (structures processed in the epoch, summed
over processes: each once, plus DistributedSampler's padding to a multiple of the world size).
Validation columns are empty in epochs without validation (``eval_interval``).

Exact resume: the shuffling generator, all RNG states, the
optimizer, scheduler, EMA and early-stopping counters are checkpointed after every epoch, so a
run killed and resumed reproduces the uninterrupted one (bit for bit on the same machine), as long
as it was stopped between epochs: a run cut short by ``max_minutes`` saves a partial epoch, and with
``eval_interval > 1`` the forced validation of a run's final epoch feeds the plateau scheduler.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch_geometric.loader import DataLoader

from molequi.errors import ConfigError, UnknownElementError
from molequi.models.config import ModelConfig
from molequi.models.io import DTYPES, build_model, save_model
from molequi.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from molequi.training.config import RESUMABLE_KEYS, TrainingConfig, save_config
from molequi.training.data import load_graphs, prepare_data, trained_outputs
from molequi.training.evaluate import (
    evaluate_graphs,
    parity_panels,
    property_units,
    reported_metrics,
    resolve_device,
)
from molequi.training.metrics import MetricSums, loss_terms, weighted_loss
from molequi.training.plots import learning_curve, parity_plot
from molequi.utils import atomic_write

LOG_COLUMNS = [
    "epoch",
    "time_s",
    "lr",
    "train_loss",
    "train_energy_mae_meV",
    "train_forces_mae_meV_per_A",
    "val_loss",
    "val_energy_mae_meV",
    "val_energy_rmse_meV",
    "val_forces_mae_meV_per_A",
    "val_forces_rmse_meV_per_A",
    "train_structures",
]

VALIDATION_KEYS = ("loss", "energy_mae_meV", "energy_rmse_meV", "forces_mae_meV_per_A", "forces_rmse_meV_per_A")
"""Validation metrics logged every evaluation (NaN where the data or the loss lack that label)."""


class ExponentialMovingAverage:
    """An exponential moving average of a model's parameters (buffers are copied).

    ``factory`` builds an empty model of the same architecture to hold the average (preferred
    over ``copy.deepcopy``, which changes the state_dict keys of e3nn's compiled modules).

    ``decay_n = min(decay, (1 + n) / (10 + n))`` after n updates, so the average follows the
    fast early changes of the weights instead of lagging behind the random initialisation.
    """

    def __init__(self, model: torch.nn.Module, decay: float, factory: Callable[[], torch.nn.Module] | None = None) -> None:
        self.decay = decay
        self.num_updates = 0
        if factory is None:
            self.module = copy.deepcopy(model)
        else:  # a fresh build: e3nn's compiled modules gain extra buffers when deep-copied
            self.module = factory()
            self.module.load_state_dict(model.state_dict())
        self.module.eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        # matched by name: a deep copy of e3nn modules need not list parameters in the same order
        parameters = dict(model.named_parameters())
        for name, average in self.module.named_parameters():
            average.lerp_(parameters[name].detach(), 1.0 - decay)
        buffers = dict(model.named_buffers())
        for name, average in self.module.named_buffers():
            if name in buffers:
                average.copy_(buffers[name])

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])


@dataclass
class Distributed:
    """This process's place in a ``torchrun`` job (world size 1 without one)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, device: torch.device) -> Distributed:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        initialized_here = False
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            initialized_here = True
        return cls(world_size, rank, local_rank, initialized_here)

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process if ``flag`` is true on any (a collective: call it everywhere)."""
        if not self.active:
            return flag
        tensor = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item() > 0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class TrainResult:
    """What a run produced."""

    out_dir: Path
    model_path: Path | None
    history: list[dict[str, Any]]
    best_epoch: int
    epochs: int
    minutes: float
    validation_metrics: dict[str, Any]
    test_metrics: dict[str, Any] | None = None
    stop_reason: str = ""
    files: dict[str, Path] = field(default_factory=dict)


def checkpoint_path(out_dir: str | Path, which: str = "last") -> Path:
    return Path(out_dir) / "checkpoints" / f"{which}.pt"


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
            if key in values and values[key] == value:
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
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.max_epochs, eta_min=config.min_learning_rate)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience, min_lr=config.min_learning_rate
    )


def _write_log(history: Sequence[dict[str, Any]], columns: Sequence[str], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({key: _format(row.get(key)) for key in columns})
    text = buffer.getvalue()
    atomic_write(path, lambda temporary: temporary.write_text(text))


def _format(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.10g}"
    return value


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda temporary: temporary.write_text(text))


def train(
    config: TrainingConfig,
    data: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    test_data: str | Path | Sequence[str | Path] | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a potential on ``data`` and write every output into ``out_dir``.

    Args:
        config: the training settings (see :class:`TrainingConfig`).
        data: training file(s) with energies (eV) and forces (eV/Å); ``config.validation`` of
            them are held out for validation.
        out_dir: output directory (created after the data and config were checked).
        test_data: optional test file(s), evaluated with the exported model at the end.
        resume: continue from ``out_dir/checkpoints/last.pt``; ``config`` must equal the saved
            one except for :data:`RESUMABLE_KEYS` (use :func:`resume_settings`).
        log: where one-line progress messages go (default: print to stdout on rank 0).

    Raises:
        MolequiError subclasses for bad data, settings or checkpoints, before anything is written.
    """
    out_dir = Path(out_dir)
    paths = [str(p) for p in ([data] if isinstance(data, (str, Path)) else data)]
    test_paths = None if test_data is None else [str(p) for p in ([test_data] if isinstance(test_data, (str, Path)) else test_data)]
    device = resolve_device(config.device)
    dtype = DTYPES[config.dtype]
    ddp = Distributed.from_environment(device)
    if ddp.active and device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank)
    say = log if log is not None else (lambda message: print(message, flush=True))
    say = say if ddp.is_main else (lambda message: None)
    try:
        return _train(config, paths, out_dir, test_paths, resume, device, dtype, ddp, say)
    finally:
        ddp.close()


def _train(
    config: TrainingConfig,
    paths: list[str],
    out_dir: Path,
    test_paths: list[str] | None,
    resume: bool,
    device: torch.device,
    dtype: torch.dtype,
    ddp: Distributed,
    say: Callable[[str], None],
) -> TrainResult:
    started = time.monotonic()
    deadline = None if config.max_minutes is None else started + 60.0 * config.max_minutes

    # --- everything that can fail on user input happens before anything is written --------
    state = None
    if not resume and checkpoint_path(out_dir).exists():
        raise ConfigError(
            f"{out_dir} already holds a training run ({checkpoint_path(out_dir)}); pass --resume to continue it, "
            "or choose another --out (or delete the directory) to start afresh"
        )
    if resume:
        state = load_checkpoint(checkpoint_path(out_dir))
        saved = TrainingConfig.from_dict(state["config"]).to_dict()
        current = config.to_dict()
        changed = [key for key in saved if key not in RESUMABLE_KEYS and saved[key] != current[key]]
        if changed:
            raise ConfigError(f"cannot resume with changed settings {changed}; only {', '.join(RESUMABLE_KEYS)} may change")
    outputs_trained = trained_outputs(
        config.energy_weight, config.forces_weight, config.property_weights, config.model.properties
    )
    prepared = prepare_data(paths, config.model, config.validation, config.seed, outputs_trained)
    model_config = prepared.model_config
    if state is not None:
        model_config = ModelConfig(**state["model_config"])
    properties = list(model_config.properties)
    test_graphs = None
    if test_paths:
        test_graphs = load_graphs(
            test_paths,
            model_config.cutoff,
            properties=properties,
            require_energy="energy" in outputs_trained,
            require_forces="forces" in outputs_trained,
        )
        present = {int(z) for graph in test_graphs for z in graph.numbers.unique().tolist()}
        unknown = sorted(present - set(model_config.species))
        if unknown:
            from ase.data import chemical_symbols

            raise UnknownElementError(
                f"the test data contain element(s) {', '.join(chemical_symbols[z] for z in unknown)} "
                f"that are not in the training data ({', '.join(chemical_symbols[z] for z in model_config.species)})"
            )

    # --- model, optimizer, schedule, EMA --------------------------------------------------
    _set_seeds(config.seed)
    model = build_model(model_config, dtype).to(device)

    def fresh_model() -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):  # building must not consume the training RNG
            return build_model(model_config, dtype).to(device)

    ema = ExponentialMovingAverage(model, config.ema_decay, fresh_model) if config.ema_decay > 0 else None
    trained = model
    if ddp.active:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = _make_optimizer(config, model)
    scheduler = _make_scheduler(config, optimizer)
    with_forces = "forces" in outputs_trained  # no force pass (≈2/3 of the cost) when unused
    weights = {"energy": config.energy_weight, "forces": config.forces_weight}
    weights.update({name: config.property_weights.get(name, 1.0) for name in properties})

    shuffle = torch.Generator()
    shuffle.manual_seed(config.seed)
    sampler = None
    if ddp.active:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(
            prepared.train, num_replicas=ddp.world_size, rank=ddp.rank, shuffle=True, seed=config.seed
        )
    loader = DataLoader(
        prepared.train,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=shuffle if sampler is None else None,
        num_workers=config.num_workers,
        drop_last=False,
    )
    validation_shard = prepared.validation[ddp.rank :: ddp.world_size]

    history: list[dict[str, Any]] = []
    epoch, best_loss, best_epoch, stale, elapsed_before = 0, math.inf, 0, 0, 0.0
    stop_reason = ""
    if state is not None:
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], shuffle)
        epoch, best_loss, best_epoch = int(state["epoch"]), float(state["best_loss"]), int(state["best_epoch"])
        stale, elapsed_before = int(state["stale"]), float(state["elapsed_s"])
        history = [dict(row) for row in state["history"]]
        stop_reason = str(state.get("stop_reason", ""))
        if not stop_reason.startswith("early stopping"):
            stop_reason = ""  # max_epochs / time budget: a resumed run may go on
        say(f"resuming {out_dir} after epoch {epoch} (best validation loss {best_loss:.6g} at epoch {best_epoch})")

    columns = LOG_COLUMNS[:-1] + [f"val_{name}_mae" for name in properties] + LOG_COLUMNS[-1:]
    files = {
        "config": out_dir / "config.yaml",
        "log": out_dir / "log.csv",
        "learning_curve": out_dir / "learning_curve.png",
        "last": checkpoint_path(out_dir, "last"),
        "best": checkpoint_path(out_dir, "best"),
        "model": out_dir / "model.molequi",
    }
    if ddp.is_main:
        files["last"].parent.mkdir(parents=True, exist_ok=True)
        save_config(config, files["config"])
    say(
        f"training on {len(prepared.train)} structures, validating on {len(prepared.validation)} "
        f"({', '.join(paths)}); {sum(p.numel() for p in model.parameters())} parameters, {config.dtype}, "
        f"device {device}{f', {ddp.world_size} processes' if ddp.active else ''}"
    )

    def evaluation_model() -> torch.nn.Module:
        return ema.module if ema is not None else model

    def full_state() -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "export": evaluation_model().state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(shuffle),
            "best_loss": best_loss,
            "best_epoch": best_epoch,
            "stale": stale,
            "elapsed_s": elapsed_before + time.monotonic() - started,
            "history": history,
            "stop_reason": stop_reason,
            "config": config.to_dict(),
            "model_config": model_config.to_dict(),
            "data": paths,
            "world_size": ddp.world_size,
        }

    # --- the loop ---------------------------------------------------------------------------
    if stop_reason:
        say(f"the run already stopped ({stop_reason}); writing its outputs again")
    last_plot = -math.inf
    while not stop_reason and epoch < config.max_epochs:
        epoch += 1
        if sampler is not None:
            sampler.set_epoch(epoch)
        trained.train()
        train_sums = MetricSums(properties, weights)
        loss_sum, n_batches, out_of_time = torch.zeros((), dtype=torch.float64, device=device), 0, False
        last_postfix = -math.inf
        progress = None
        if config.progress and ddp.is_main:
            from tqdm import tqdm

            progress = tqdm(total=len(loader), desc=f"epoch {epoch}/{config.max_epochs}", leave=False, dynamic_ncols=True)
        try:
            for batch in loader:
                batch = batch.to(device)
                outputs = trained(batch, compute_forces=with_forces)
                loss = weighted_loss(loss_terms(outputs, batch, properties), weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                if ema is not None:
                    ema.update(model)
                train_sums.add(outputs, batch)
                loss_sum = loss_sum + loss.detach()  # on the device: no host sync per step
                n_batches += 1
                if progress is not None:
                    # reading the running metrics syncs with a GPU: at most once a second
                    if time.monotonic() - last_postfix > 1.0:
                        last_postfix = time.monotonic()
                        running = reported_metrics(train_sums.result(), model_config)
                        progress.set_postfix(loss=f"{float(loss_sum) / n_batches:.4g}", **_progress_fields(running))
                    progress.update()
                # under DDP the deadline check is a collective (a sync): every 10th step there
                if deadline is not None and (not ddp.active or n_batches % 10 == 0) \
                        and ddp.any(time.monotonic() > deadline, device):
                    out_of_time = True
                    break
        finally:
            if progress is not None:
                progress.close()
        if deadline is not None and not out_of_time and ddp.active:  # epochs shorter than 10 steps
            out_of_time = ddp.any(time.monotonic() > deadline, device)
        if config.scheduler == "cosine":
            scheduler.step()
        train_sums.all_reduce()
        train_metrics = reported_metrics(train_sums.result(), model_config)
        losses = torch.tensor([float(loss_sum), float(n_batches)], dtype=torch.float64)
        if ddp.active:
            losses = losses.to(device) if device.type == "cuda" else losses
            dist.all_reduce(losses)
            losses = losses.cpu()
        row: dict[str, Any] = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": float(losses[0] / max(float(losses[1]), 1.0)),
            "train_energy_mae_meV": train_metrics.get("energy_mae_meV", math.nan),
            "train_forces_mae_meV_per_A": train_metrics.get("forces_mae_meV_per_A", math.nan),
            "train_structures": train_metrics["n_structures"],
        }
        last_epoch = epoch >= config.max_epochs or out_of_time
        if epoch % config.eval_interval == 0 or last_epoch:
            sums, _ = evaluate_graphs(
                evaluation_model(), validation_shard, config.eval_batch_size, device, properties, weights,
                compute_forces=with_forces,
            )
            sums.all_reduce()
            metrics = sums.result()
            shown = {"loss": metrics["loss"], **reported_metrics(metrics, model_config)}  # untrained outputs: NaN
            row.update({f"val_{key}": shown.get(key, math.nan) for key in VALIDATION_KEYS})
            row.update({f"val_{name}_mae": metrics[f"{name}_mae"] for name in properties})
            if config.scheduler == "plateau":
                scheduler.step(metrics["loss"])
            improved = metrics["loss"] < best_loss
            if improved:
                best_loss, best_epoch, stale = metrics["loss"], epoch, 0
            else:
                stale += 1
            if config.early_stopping_patience and stale >= config.early_stopping_patience:
                stop_reason = f"early stopping: no improvement for {stale} validations"
        else:
            improved = False
        if out_of_time:
            stop_reason = f"time budget of {config.max_minutes} min used up"
        elif epoch >= config.max_epochs and not stop_reason:
            stop_reason = f"max_epochs={config.max_epochs} reached"
        row["time_s"] = elapsed_before + time.monotonic() - started
        history.append(row)
        if ddp.is_main:
            snapshot = full_state()
            if improved:
                save_checkpoint(snapshot, files["best"])
            save_checkpoint(snapshot, files["last"])
            _write_log(history, columns, files["log"])
            if "val_loss" in row and time.monotonic() - last_plot > 30.0:  # a plot costs ~0.3 s
                learning_curve(history, files["learning_curve"])
                last_plot = time.monotonic()
            say(_epoch_line(row, improved))
    if stop_reason:
        say(f"stopped: {stop_reason}")

    # --- export -----------------------------------------------------------------------------
    export = fresh_model()
    if files["best"].is_file() and best_epoch > 0:
        export.load_state_dict(load_checkpoint(files["best"])["export"])
    else:
        export.load_state_dict(evaluation_model().state_dict())
    export.eval()
    elapsed_s = elapsed_before + time.monotonic() - started
    best_row = next((row for row in history if row["epoch"] == best_epoch), history[-1] if history else {})
    validation_metrics = {key.removeprefix("val_"): value for key, value in best_row.items() if key.startswith("val_")}
    validation_metrics["epoch"] = best_epoch
    result = TrainResult(
        out_dir=out_dir,
        model_path=None,
        history=history,
        best_epoch=best_epoch,
        epochs=epoch,
        minutes=elapsed_s / 60.0,
        validation_metrics=validation_metrics,
        stop_reason=stop_reason,
        files=files,
    )
    if not ddp.is_main:
        ddp.barrier()
        return result
    if test_graphs is not None:
        sums, arrays = evaluate_graphs(
            export, test_graphs, config.eval_batch_size, device, properties, collect=True, compute_forces=with_forces
        )
        test_metrics = reported_metrics(sums.result(), model_config)
        if properties:
            test_metrics["property_units"] = property_units(properties)
        test_metrics["data"] = test_paths
        result.test_metrics = test_metrics
        files["test_metrics"] = write_json(test_metrics, out_dir / "test_metrics.json")
        files["test_parity"] = parity_plot(
            parity_panels(arrays, model_config), out_dir / "test_parity.png", title=f"test: {len(test_graphs)} structures"
        )
        say("test: " + json.dumps({key: round(v, 4) if isinstance(v, float) else v for key, v in test_metrics.items()}))
    extra = {
        "data": paths,
        "n_train": len(prepared.train),
        "n_validation": len(prepared.validation),
        "epochs": epoch,
        "best_epoch": best_epoch,
        "minutes": round(elapsed_s / 60.0, 3),
        "stop_reason": stop_reason,
        "validation_metrics": validation_metrics,
        "test_metrics": result.test_metrics,
        "training_config": config.to_dict(),
        "world_size": ddp.world_size,
        "device": str(device),
        "torch_version": torch.__version__,
    }
    result.model_path = save_model(export, files["model"], extra=extra)
    if history:
        learning_curve(history, files["learning_curve"])
    say(f"wrote {result.model_path} (EMA weights of epoch {best_epoch}; {elapsed_s / 60.0:.2f} min)")
    ddp.barrier()
    return result


def _progress_fields(metrics: dict[str, Any]) -> dict[str, str]:
    """Short running-error fields for the progress bar (only the labels being trained)."""
    fields = {}
    if "energy_mae_meV" in metrics:
        fields["E"] = f"{metrics['energy_mae_meV']:.1f}meV"
    if "forces_mae_meV_per_A" in metrics:
        fields["F"] = f"{metrics['forces_mae_meV_per_A']:.1f}meV/Å"
    return fields


def _epoch_line(row: dict[str, Any], improved: bool) -> str:
    line = f"epoch {row['epoch']:4d}  {row['time_s']:8.1f} s  lr {row['lr']:.2e}  train loss {row['train_loss']:.4g}"
    if "val_loss" in row:
        line += f"  val loss {row['val_loss']:.4g}"
        for key, label, unit in (("val_energy_mae_meV", "E", "meV"), ("val_forces_mae_meV_per_A", "F", "meV/Å")):
            if math.isfinite(row.get(key, math.nan)):
                line += f"  {label} MAE {row[key]:.2f} {unit}"
        for key, value in row.items():
            if key.endswith("_mae") and key.startswith("val_"):
                line += f"  {key.removeprefix('val_').removesuffix('_mae')} MAE {value:.4g}"
        line += "  *" if improved else ""
    return line
