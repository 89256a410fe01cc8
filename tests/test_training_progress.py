"""Training progress: the run's ETA in the epoch lines, and Ctrl-C writing a model and a resume command."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import pytest
import yaml

from molequi.cli.main import main
from molequi.models import load_model
from molequi.progress import ProgressLines, format_duration, remaining_seconds
from molequi.training import load_config, train
from molequi.training.reporting import run_eta

from test_cli_train import TINY_YAML, make_structures

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("progress")
    paths = {"train": root / "train.extxyz", "config": root / "tiny.yaml"}
    ase.io.write(paths["train"], make_structures(12))
    paths["config"].write_text(yaml.safe_dump(TINY_YAML))
    return paths


def test_format_duration_and_remaining():
    assert [format_duration(s) for s in (4.4, 200, 7500, 2 * 86400 + 3600)] == ["4s", "3m20s", "2h05m", "2d01h"]
    assert format_duration(None) == "?"
    assert remaining_seconds(25, 100, 10.0) == pytest.approx(30.0)
    assert remaining_seconds(0, 100, 10.0) is None


def test_progress_lines_throttled_with_eta():
    now = [0.0]
    lines = []

    class Stream:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    progress = ProgressLines("md", total=1000, unit="steps", every_s=30.0, stream=Stream(), clock=lambda: now[0])
    now[0] = 10.0
    assert not progress.update(100)  # too soon
    now[0] = 40.0
    assert progress.update(400, extra="T 300 K")
    text = "".join(lines)
    assert "md: 400/1000 steps (40.0 %)" in text and "ETA 1m00s" in text and "T 300 K" in text


def test_run_eta_names_the_binding_limit(data):
    config = load_config(str(data["config"]), {"max_epochs": 100, "max_minutes": None})
    assert run_eta(config, 10, 20.0, 10, None) == "run ETA 3m00s (max_epochs 100)"  # 90 epochs × 2 s
    soon = time.monotonic() + 30.0
    config = load_config(str(data["config"]), {"max_epochs": 100, "max_minutes": 1.0})
    assert run_eta(config, 10, 20.0, 10, soon) in ("run ETA 30s (max_minutes 1)", "run ETA 29s (max_minutes 1)")
    assert run_eta(config, 10, 20.0, 0, soon) == ""


def test_a_time_budget_without_max_epochs_has_no_epoch_limit():
    from molequi.errors import ConfigError
    from molequi.training.config import DEFAULT_MAX_EPOCHS, NO_EPOCH_LIMIT, TrainingConfig

    assert TrainingConfig().epoch_limit == DEFAULT_MAX_EPOCHS
    assert TrainingConfig(max_minutes=30.0).epoch_limit == NO_EPOCH_LIMIT  # the budget is the limit
    assert TrainingConfig(max_minutes=30.0, max_epochs=40).epoch_limit == 40  # an explicit count still counts
    soon = time.monotonic() + 90.0
    assert run_eta(TrainingConfig(max_minutes=1.5), 10, 1.0, 10, soon).endswith("(max_minutes 1.5)")
    with pytest.raises(ConfigError, match="cosine.*max_epochs"):
        TrainingConfig(max_minutes=30.0, scheduler="cosine")


def test_epoch_lines_carry_the_run_eta(data, tmp_path):
    config = load_config(str(data["config"]), {"max_epochs": 3, "device": "cpu"})
    messages: list[str] = []
    train(config, str(data["train"]), tmp_path / "run", log=messages.append)
    epochs = [m for m in messages if m.startswith("epoch")]
    assert len(epochs) == 3
    assert all("run ETA" in line and "(max_epochs 3)" in line for line in epochs[:2])
    assert "run ETA" not in epochs[-1]  # the run has stopped


@pytest.mark.slow
def test_ctrl_c_writes_the_model_and_a_working_resume_command(data, tmp_path):
    out = tmp_path / "run dir"  # a space: the printed command must quote it
    command = [sys.executable, "-m", "molequi.cli.main", "train", "--data", str(data["train"]), "--out", str(out),
               "--config", str(data["config"]), "--max-epochs", "100000", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # a job started in the background by a non-interactive shell inherits SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler: give the child the default disposition back
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    try:
        for line in process.stdout:  # wait until two epochs are checkpointed
            lines.append(line)
            if line.startswith("epoch    2"):
                break
        process.send_signal(signal.SIGINT)
        rest, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    output = "".join(lines) + rest
    assert process.returncode == 130, output + err
    assert "interrupted (Ctrl-C) during epoch" in output
    model = load_model(out / "model.molequi")
    assert model is not None
    resume = next(line for line in output.splitlines() if "resume from the last completed epoch with:" in line)
    args = shlex.split(resume.split("with:", 1)[1])
    assert args[:2] == ["molequi", "train"] and str(out) in args
    assert main(args[1:] + ["--max-epochs", "4"]) == 0
    log = (out / "log.csv").read_text().splitlines()
    assert log[-1].startswith("4,")
