"""The training loop: optimizer, schedule, clipping, EMA, early stopping, checkpoints, DDP.

Single process::

    config = load_config("train.yaml", {"max_minutes": 4})
    result = train(config, "data/train.extxyz", "runs/ethanol")

Several processes (one per GPU, or CPU processes with gloo): launch the same command under
``torchrun --nproc_per_node K -m molequi.cli.main train ...``. ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK`` are read from the environment; each process sees a disjoint shard of the
training data (``DistributedSampler``), gradients are averaged by ``DistributedDataParallel``,
metrics are summed over processes, and only rank 0 writes files and shows progress.

The loop reads in pieces: :func:`take_step` (one optimizer step), :func:`train_one_epoch` (one
pass over the data, or up to the deadline), :func:`validate` (the EMA weights on the validation
shard), and ``finish_run`` (export, test, ``model.molequi``). What they work with — model, EMA,
optimizer, schedule, loader, DDP — is a :class:`~molequi.training.run.TrainingRun` built once
by :func:`~molequi.training.run.build_run`; the counters a checkpoint restores are a
:class:`~molequi.training.run.Progress`.

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
over processes: each once, plus DistributedSampler's padding to a multiple of the world size);
``train_structures_per_s`` (those structures over the epoch's training wall time, s, without
validation: the throughput ``compile`` and ``batch_size`` move).
Validation columns are empty in epochs without validation (``eval_interval``).

Progress: each epoch line ends with the run's ETA (this session's mean epoch time against
``max_epochs``, or the ``max_minutes`` deadline when that comes first). Ctrl-C writes
``model.molequi`` from the current (EMA) weights and prints the ``--resume`` command.

Exact resume: the shuffling generator, all RNG states, the
optimizer, scheduler, EMA and early-stopping counters are checkpointed after every epoch, so a
run killed and resumed reproduces the uninterrupted one (bit for bit on the same machine), as long
as it was stopped between epochs: a run cut short by ``max_minutes`` saves a partial epoch, and with
``eval_interval > 1`` the forced validation of a run's final epoch feeds the plateau scheduler.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from molequi.errors import MolequiError
from molequi.models.io import DTYPES, save_model
from molequi.training.checkpoint import save_checkpoint
from molequi.training.config import TrainingConfig, save_config
from molequi.training.distributed import Distributed
from molequi.training.ema import ExponentialMovingAverage
from molequi.training.evaluate import (
    evaluate_graphs,
    reported_metrics,
    resolve_device,
)
from molequi.training.finetune import resolve_model, with_initial_architecture
from molequi.training.finish import TrainResult, finish_run
from molequi.training.metrics import MetricSums, loss_terms, weighted_loss
from molequi.training.plots import learning_curve
from molequi.training.reporting import (
    epoch_line,
    progress_bar,
    progress_fields,
    resume_command,
    run_eta,
    write_log,
)
from molequi.training.run import (
    Progress,
    RunInputs,
    TrainingRun,
    build_run,
    checkpoint_path,
    load_run_inputs,
    restore,
    resume_settings,
    snapshot,
)
from molequi.training.schedule import BudgetCosine
from molequi.utils import claim_run_directory

__all__ = [
    "Distributed",
    "ExponentialMovingAverage",
    "TrainResult",
    "checkpoint_path",
    "resume_settings",
    "take_step",
    "train",
    "train_one_epoch",
    "validate",
]

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
    "train_structures_per_s",
]

VALIDATION_KEYS = ("loss", "energy_mae_meV", "energy_rmse_meV", "forces_mae_meV_per_A", "forces_rmse_meV_per_A")
"""Validation metrics logged every evaluation (NaN where the data or the loss lack that label)."""


def train(
    config: TrainingConfig,
    data: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    test_data: str | Path | Sequence[str | Path] | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    init_weights: str | Path | None = None,
    overwrite: bool = False,
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
        init_weights: a model file (same architecture and elements) whose weights start the run
            instead of random ones: a warm start, e.g. retraining on a grown data set.
        overwrite: start afresh in an ``out_dir`` holding an earlier run, deleting its outputs
            (:data:`TRAIN_OUTPUTS`); without it a non-empty ``out_dir`` is refused. ``out_dir``
            is locked for the run.

    Raises:
        MolequiError subclasses for bad data, settings or checkpoints, before anything is written.
    """
    out_dir = Path(out_dir)
    paths = _as_paths(data)
    test_paths = None if test_data is None else _as_paths(test_data)
    device = resolve_device(config.device)
    dtype = DTYPES[config.dtype]
    ddp = Distributed.from_environment(device)
    if ddp.active and device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank)
    say = log if log is not None else (lambda message: print(message, flush=True))
    say = say if ddp.is_main else (lambda message: None)
    if config.init is not None and not resume:
        config = with_initial_architecture(config)
        init_weights = resolve_model(config.init)
    try:
        inputs = load_run_inputs(config, paths, out_dir, test_paths, resume, overwrite=overwrite,
                                 init_weights=init_weights)
        # the main process owns out_dir for the run: a second run there fails at once, and a new
        # run never mixes its files with an earlier one's (see claim_run_directory)
        claim = (claim_run_directory(out_dir, "train", TRAIN_OUTPUTS, resume=resume, overwrite=overwrite,
                                     resume_marker="checkpoints/last.pt", caches=("baseline_cache",))
                 if ddp.is_main else contextlib.nullcontext())
        with claim:
            return _train(config, paths, out_dir, test_paths, resume, device, dtype, ddp, say, init_weights, inputs)
    finally:
        ddp.close()


def _as_paths(data: str | Path | Sequence[str | Path]) -> list[str]:
    return [str(p) for p in ([data] if isinstance(data, (str, Path)) else data)]

# --- a step, an epoch, a validation -------------------------------------------------------------


def ensemble_terms(run: TrainingRun, outputs, batch) -> tuple[dict, dict]:
    """The loss terms of a step and their weights: :func:`loss_terms`, for a shallow ensemble
    with per-head bootstrap weights (``ensemble_bootstrap``) and the force NLL term
    (``ensemble_nll_weight``) when asked."""
    from molequi.training.metrics import bootstrap_weights, forces_nll_term

    config, weights = run.config, run.weights
    heads = "energy_members" in outputs
    head_weights = None
    if heads and config.ensemble_bootstrap and config.ensemble_loss == "heads":
        head_weights = bootstrap_weights(batch, outputs["energy_members"].shape[0], config.seed)
    terms = loss_terms(outputs, batch, run.properties, config.ensemble_loss, head_weights=head_weights)
    if heads and config.ensemble_nll_weight > 0 and config.ensemble_loss == "heads":
        nll = forces_nll_term(outputs, batch)
        if nll is not None:
            terms["forces_nll"], weights = nll, {**weights, "forces_nll": config.ensemble_nll_weight}
    return terms, weights


def take_step(run: TrainingRun, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step on ``batch`` (already on the device): loss, backward, clipping,
    update, EMA. Returns the detached loss (a device tensor: no host sync) and the outputs."""
    outputs = run.trained(batch, compute_forces=run.with_forces)
    loss = weighted_loss(*ensemble_terms(run, outputs, batch))
    if run.anchor is not None:
        loss = loss + run.anchor.penalty(run.model)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.config.grad_clip)
    run.optimizer.step()
    if run.ema is not None:
        run.ema.update(run.model)
    return loss.detach(), outputs


@dataclass
class EpochResult:
    """What one pass over the training data produced (sums stay on the device until read)."""

    sums: MetricSums
    loss_sum: torch.Tensor  # [] float64 on the device
    n_batches: int
    out_of_time: bool


def train_one_epoch(run: TrainingRun, epoch: int, deadline: float | None, eta: str = "") -> EpochResult:
    """Step through the training data once, or until ``deadline`` (``time.monotonic()`` seconds).
    ``eta``: the run's remaining time, shown beside the progress bar."""
    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    run.trained.train()
    result = EpochResult(MetricSums(run.properties, run.weights), torch.zeros((), dtype=torch.float64, device=run.device), 0, False)
    progress = progress_bar(run, epoch, eta)
    last_postfix = -math.inf
    budget = run.scheduler if isinstance(run.scheduler, BudgetCosine) else None
    seconds = 0.0
    if budget is not None:  # under DDP every process must use the same rate: agree on the time once an epoch
        seconds = run.ddp.max_value(budget.seconds_spent(), run.device)
    steps_per_epoch = max(1, len(run.loader))
    try:
        for batch in run.loader:
            batch = batch.to(run.device)
            if budget is not None:
                if not run.ddp.active:
                    seconds = budget.seconds_spent()
                budget.update(epoch - 1 + result.n_batches / steps_per_epoch, seconds)
            loss, outputs = take_step(run, batch)
            result.sums.add(outputs, batch)
            result.loss_sum = result.loss_sum + loss
            result.n_batches += 1
            if progress is not None:
                # reading the running metrics syncs with a GPU: at most once a second
                if time.monotonic() - last_postfix > 1.0:
                    last_postfix = time.monotonic()
                    running = reported_metrics(result.sums.result(), run.model_config)
                    progress.set_postfix(loss=f"{float(result.loss_sum) / result.n_batches:.4g}", **progress_fields(running))
                progress.update()
            # under DDP the deadline check is a collective (a sync): every 10th step there
            if deadline is not None and (not run.ddp.active or result.n_batches % 10 == 0) \
                    and run.ddp.any(time.monotonic() > deadline, run.device):
                result.out_of_time = True
                break
    finally:
        if progress is not None:
            progress.close()
    if deadline is not None and not result.out_of_time and run.ddp.active:  # epochs shorter than 10 steps
        result.out_of_time = run.ddp.any(time.monotonic() > deadline, run.device)
    if not bool(torch.isfinite(result.loss_sum)):  # one host sync an epoch; nothing of this epoch is saved
        raise TrainingDivergedError(
            f"training diverged in epoch {epoch}: the loss became {float(result.loss_sum)} (nothing of this epoch was "
            "saved; checkpoints/last.pt, if any, holds the last finite epoch); lower --lr, or check the labels' units")
    if run.config.scheduler == "cosine":
        run.scheduler.step()
    result.sums.all_reduce()
    return result


class TrainingDivergedError(MolequiError):
    """The training loss became NaN or inf (a learning rate too high for the data, or bad labels)."""


def _save_interrupted(
    run: TrainingRun,
    progress: Progress,
    inputs: RunInputs,
    files: dict[str, Path],
    out_dir: Path,
    elapsed_s: float,
    say: Callable[[str], None],
) -> None:
    """On Ctrl-C: write ``model.molequi`` from the current (EMA) weights and say how to resume.

    The weights are those of the interrupted epoch (not validated); ``checkpoints/last.pt``
    still holds the last completed epoch, from which ``--resume`` continues exactly.
    """
    export = run.fresh_model()
    export.load_state_dict(run.evaluation_model.state_dict())
    reason = f"interrupted (Ctrl-C) during epoch {progress.epoch}"
    extra = {
        "data": inputs.paths,
        "n_train": len(inputs.prepared.train),
        "n_validation": len(inputs.prepared.validation),
        "epochs": progress.epoch,
        "minutes": round(elapsed_s / 60.0, 3),
        "stop_reason": reason,
        "interrupted": True,
        "training_config": run.config.to_dict(),
        "world_size": run.ddp.world_size,
        "device": str(run.device),
        "torch_version": torch.__version__,
    }
    path = save_model(export.eval(), files["model"], extra=extra)
    say(f"{reason}: wrote {path} from the current {'EMA ' if run.ema is not None else ''}weights (not validated)")
    if files["last"].is_file():
        say(f"resume from the last completed epoch with: {resume_command(out_dir, inputs.test_paths)}")
    else:
        say("no epoch completed, so there is nothing to resume: start the run again")


def validate(run: TrainingRun) -> dict[str, float]:
    """Error sums of the evaluation (EMA) weights over the validation graphs of every process."""
    sums, _ = evaluate_graphs(
        run.evaluation_model, run.validation, run.config.eval_batch_size, run.device, run.properties, run.weights,
        compute_forces=run.with_forces,
    )
    sums.all_reduce()
    return sums.result()


def _train_row(run: TrainingRun, epoch: int, result: EpochResult) -> dict[str, Any]:
    """The training columns of an epoch's log row (losses summed over processes)."""
    metrics = reported_metrics(result.sums.result(), run.model_config)
    losses = run.ddp.sum_to_host(torch.tensor([float(result.loss_sum), float(result.n_batches)], dtype=torch.float64), run.device)
    return {
        "epoch": epoch,
        "lr": run.optimizer.param_groups[0]["lr"],
        "train_loss": float(losses[0] / max(float(losses[1]), 1.0)),
        "train_energy_mae_meV": metrics.get("energy_mae_meV", math.nan),
        "train_forces_mae_meV_per_A": metrics.get("forces_mae_meV_per_A", math.nan),
        "train_structures": metrics["n_structures"],
    }


def _record_validation(run: TrainingRun, progress: Progress, row: dict[str, Any], metrics: dict[str, float]) -> bool:
    """Add validation columns to ``row``, step the plateau schedule, track the best loss and
    early stopping. Returns whether the validation loss improved."""
    shown = {"loss": metrics["loss"], **reported_metrics(metrics, run.model_config)}  # untrained outputs: NaN
    row.update({f"val_{key}": shown.get(key, math.nan) for key in VALIDATION_KEYS})
    row.update({f"val_{name}_mae": metrics[f"{name}_mae"] for name in run.properties})
    if run.config.scheduler == "plateau":
        run.scheduler.step(metrics["loss"])
    improved = metrics["loss"] < progress.best_loss
    if improved:
        progress.best_loss, progress.best_epoch, progress.stale = metrics["loss"], progress.epoch, 0
    else:
        progress.stale += 1
    patience = run.config.early_stopping_patience
    if patience and progress.stale >= patience:
        progress.stop_reason = f"early stopping: no improvement for {progress.stale} validations"
    return improved


# --- the run ----------------------------------------------------------------------------------


TRAIN_OUTPUTS = ("model.molequi", "log.csv", "learning_curve.png", "config.yaml", "checkpoints",
                 "test_metrics.json", "test_parity.png")
"""What a training run writes in its output directory (what ``overwrite`` deletes)."""


def _output_files(out_dir: Path) -> dict[str, Path]:
    return {
        "config": out_dir / "config.yaml",
        "log": out_dir / "log.csv",
        "learning_curve": out_dir / "learning_curve.png",
        "last": checkpoint_path(out_dir, "last"),
        "best": checkpoint_path(out_dir, "best"),
        "model": out_dir / "model.molequi",
    }


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
    init_weights: str | Path | None = None,
    inputs: RunInputs | None = None,
) -> TrainResult:
    started = time.monotonic()
    deadline = None if config.max_minutes is None else started + 60.0 * config.max_minutes
    if inputs is None:
        inputs = load_run_inputs(config, paths, out_dir, test_paths, resume)
    run = build_run(config, inputs, device, dtype, ddp, init_weights)
    progress = Progress()
    if inputs.state is not None:
        progress = restore(run, inputs.state)
        say(
            f"resuming {out_dir} after epoch {progress.epoch} "
            f"(best validation loss {progress.best_loss:.6g} at epoch {progress.best_epoch})"
        )
    columns = LOG_COLUMNS[:-2] + [f"val_{name}_mae" for name in run.properties] + LOG_COLUMNS[-2:]
    files = _output_files(out_dir)
    if ddp.is_main:
        files["last"].parent.mkdir(parents=True, exist_ok=True)
        save_config(config, files["config"])
    say(
        f"training on {len(inputs.prepared.train)} structures, validating on {len(inputs.prepared.validation)} "
        f"({', '.join(paths)}); {sum(p.numel() for p in run.model.parameters())} parameters, {config.dtype}, "
        f"device {device}{f', {ddp.world_size} processes' if ddp.active else ''}"
    )
    if progress.stop_reason:
        say(f"the run already stopped ({progress.stop_reason}); writing its outputs again")

    def elapsed() -> float:  # wall seconds of the run, across resumes
        return progress.elapsed_before + time.monotonic() - started

    last_plot = -math.inf
    loop_started, first_epoch = time.monotonic(), progress.epoch
    eta = ""
    try:
        while not progress.stop_reason and progress.epoch < config.epoch_limit:
            progress.epoch += 1
            epoch_started = time.monotonic()
            result = train_one_epoch(run, progress.epoch, deadline, eta=eta)
            row = _train_row(run, progress.epoch, result)
            row["train_structures_per_s"] = row["train_structures"] / max(time.monotonic() - epoch_started, 1e-9)
            last_epoch = progress.epoch >= config.epoch_limit or result.out_of_time
            improved = False
            if progress.epoch % config.eval_interval == 0 or last_epoch:
                improved = _record_validation(run, progress, row, validate(run))
            if result.out_of_time:
                progress.stop_reason = f"time budget of {config.max_minutes} min used up"
            elif progress.epoch >= config.epoch_limit and not progress.stop_reason:
                progress.stop_reason = f"max_epochs={config.epoch_limit} reached"
            row["time_s"] = elapsed()
            progress.history.append(row)
            if ddp.is_main:
                state = snapshot(run, progress, paths, elapsed(), inputs.data_sha256)
                if improved:
                    save_checkpoint(state, files["best"])
                save_checkpoint(state, files["last"])
                write_log(progress.history, columns, files["log"])
                if "val_loss" in row and time.monotonic() - last_plot > 30.0:  # a plot costs ~0.3 s
                    learning_curve(progress.history, files["learning_curve"])
                    last_plot = time.monotonic()
                eta = run_eta(config, progress.epoch, time.monotonic() - loop_started, progress.epoch - first_epoch, deadline)
                say(epoch_line(row, improved) + (f"  {eta}" if eta and not progress.stop_reason else ""))
    except KeyboardInterrupt:
        if ddp.is_main:
            _save_interrupted(run, progress, inputs, files, out_dir, elapsed(), say)
        raise
    if progress.stop_reason:
        say(f"stopped: {progress.stop_reason}")
    return finish_run(run, progress, inputs, files, out_dir, elapsed(), say)


