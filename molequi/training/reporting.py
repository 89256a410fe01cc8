"""What a training run tells its user: the epoch line, the progress bar and its ETA, the log file and the resume command."""

from __future__ import annotations

import csv
import io
import math
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from molequi.progress import format_duration, is_terminal
from molequi.training.config import NO_EPOCH_LIMIT, TrainingConfig
from molequi.training.run import (
    TrainingRun,
)
from molequi.utils import atomic_write


def write_log(history: Sequence[dict[str, Any]], columns: Sequence[str], path: Path) -> None:
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


def progress_bar(run: TrainingRun, epoch: int, eta: str = ""):
    # in a log file tqdm's carriage-return updates pile up on one line: the epoch lines suffice there
    if not (run.config.progress and run.ddp.is_main and is_terminal()):
        return None
    from tqdm import tqdm

    limit = run.config.epoch_limit
    description = f"epoch {epoch}" + (f"/{limit}" if limit < NO_EPOCH_LIMIT else "") + (f" ({eta})" if eta else "")
    return tqdm(total=len(run.loader), desc=description, leave=False, dynamic_ncols=True)


def run_eta(config: TrainingConfig, epoch: int, loop_s: float, epochs_done: int, deadline: float | None) -> str:
    """``run ETA 12m30s (max_epochs 100)``: time left at this session's mean epoch time, or to the
    ``max_minutes`` deadline when that comes first ('' before an epoch of this session ended)."""
    if epochs_done <= 0:
        return ""
    by_epochs = (config.epoch_limit - epoch) * loop_s / epochs_done
    by_time = math.inf if deadline is None else max(0.0, deadline - time.monotonic())
    if by_time < by_epochs:
        return f"run ETA {format_duration(by_time)} (max_minutes {config.max_minutes:g})"
    return f"run ETA {format_duration(by_epochs)} (max_epochs {config.epoch_limit})"


def resume_command(out_dir: Path, test_paths: Sequence[str] | None = None) -> str:
    """The shell command that continues the run in ``out_dir`` (its data and settings are saved
    in the checkpoint; the test data are not)."""
    command = f"molequi train --out {shlex.quote(str(out_dir))} --resume"
    if test_paths:
        command += " --test-data " + " ".join(shlex.quote(str(path)) for path in test_paths)
    return command


def progress_fields(metrics: dict[str, Any]) -> dict[str, str]:
    """Short running-error fields for the progress bar (only the labels being trained)."""
    fields = {}
    if "energy_mae_meV" in metrics:
        fields["E"] = f"{metrics['energy_mae_meV']:.1f}meV"
    if "forces_mae_meV_per_A" in metrics:
        fields["F"] = f"{metrics['forces_mae_meV_per_A']:.1f}meV/Å"
    return fields


def epoch_line(row: dict[str, Any], improved: bool) -> str:
    line = f"epoch {row['epoch']:4d}  {row['time_s']:8.1f} s  lr {row['lr']:.2e}  train loss {row['train_loss']:.4g}"
    if math.isfinite(row.get("train_structures_per_s", math.nan)):
        line += f"  {row['train_structures_per_s']:.1f} structures/s"
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
