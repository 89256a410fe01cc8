"""The end of a training run: the exported weights, the test metrics and plots, and ``model.molequi``."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from molequi.models.io import save_model
from molequi.training.evaluate import (
    evaluate_graphs,
    parity_panels,
    property_units,
    reported_metrics,
)
from molequi.training.plots import learning_curve, parity_plot
from molequi.training.run import (
    Progress,
    RunInputs,
    TrainingRun,
    load_checkpoint,
)
from molequi.utils import write_json


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


def export_model(run: TrainingRun, progress: Progress, best_path: Path) -> torch.nn.Module:
    """The exported weights: the best validated EMA weights, or the current ones."""
    export = run.fresh_model()
    if best_path.is_file() and progress.best_epoch > 0:
        export.load_state_dict(load_checkpoint(best_path)["export"])
    else:
        export.load_state_dict(run.evaluation_model.state_dict())
    return export.eval()


def finish_run(
    run: TrainingRun,
    progress: Progress,
    inputs: RunInputs,
    files: dict[str, Path],
    out_dir: Path,
    elapsed_s: float,
    say: Callable[[str], None],
) -> TrainResult:
    """Export the model, test it, write ``model.molequi`` and the final plots (rank 0)."""
    export = export_model(run, progress, files["best"])
    history = progress.history
    best_row = next((row for row in history if row["epoch"] == progress.best_epoch), history[-1] if history else {})
    validation_metrics = {key.removeprefix("val_"): value for key, value in best_row.items() if key.startswith("val_")}
    validation_metrics["epoch"] = progress.best_epoch
    result = TrainResult(
        out_dir=out_dir,
        model_path=None,
        history=history,
        best_epoch=progress.best_epoch,
        epochs=progress.epoch,
        minutes=elapsed_s / 60.0,
        validation_metrics=validation_metrics,
        stop_reason=progress.stop_reason,
        files=files,
    )
    if not run.ddp.is_main:
        run.ddp.barrier()
        return result
    if inputs.test_graphs is not None:
        result.test_metrics = _test(run, export, inputs, files, out_dir, say)
    extra = {
        "data": inputs.paths,
        "n_train": len(inputs.prepared.train),
        "n_validation": len(inputs.prepared.validation),
        "epochs": progress.epoch,
        "best_epoch": progress.best_epoch,
        "minutes": round(elapsed_s / 60.0, 3),
        "stop_reason": progress.stop_reason,
        "validation_metrics": validation_metrics,
        "test_metrics": result.test_metrics,
        "training_config": run.config.to_dict(),
        "world_size": run.ddp.world_size,
        "device": str(run.device),
        "torch_version": torch.__version__,
    }
    result.model_path = save_model(export, files["model"], extra=extra)
    if history:
        learning_curve(history, files["learning_curve"])
    say(f"wrote {result.model_path} (EMA weights of epoch {progress.best_epoch}; {elapsed_s / 60.0:.2f} min)")
    run.ddp.barrier()
    return result


def _test(
    run: TrainingRun,
    export: torch.nn.Module,
    inputs: RunInputs,
    files: dict[str, Path],
    out_dir: Path,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Evaluate the exported model on the test data; write ``test_metrics.json`` and the parity plot."""
    sums, arrays = evaluate_graphs(
        export, inputs.test_graphs, run.config.eval_batch_size, run.device, run.properties, collect=True,
        compute_forces=run.with_forces,
    )
    metrics = reported_metrics(sums.result(), run.model_config)
    if run.properties:
        metrics["property_units"] = property_units(run.properties)
    metrics["data"] = inputs.test_paths
    if run.model_config.ensemble_heads >= 2:
        metrics.update(_test_uncertainty(export, run, inputs, say))
    files["test_metrics"] = write_json(metrics, out_dir / "test_metrics.json")
    files["test_parity"] = parity_plot(
        parity_panels(arrays, run.model_config), out_dir / "test_parity.png",
        title=f"test: {len(inputs.test_graphs)} structures",
    )
    say("test: " + json.dumps({key: round(v, 4) if isinstance(v, float) else v for key, v in metrics.items()}))
    return metrics


def _test_uncertainty(export, run: TrainingRun, inputs: RunInputs, say: Callable[[str], None]) -> dict[str, Any]:
    """The spread metrics of a shallow ensemble on the test data (the same as ``molequi
    evaluate`` reports: ``<output>_std_spearman``, ``<output>_rmse_over_std``, ...)."""
    if run.model_config.baseline:
        say("test: no uncertainty metrics for a model with a baseline here; run `molequi evaluate` on model.molequi")
        return {}
    from molequi.data import read_structures
    from molequi.models.uncertainty.evaluation import committee_errors, uncertainty_report

    structures = [atoms for path in inputs.test_paths for atoms in read_structures(path, keys=run.config.label_keys)]
    errors = committee_errors([export], structures, run.config.eval_batch_size, ", ".join(inputs.test_paths))
    return uncertainty_report(errors)
