"""SIGKILL at random (seeded) moments of a short training, MD and screening run; after each kill
the run is resumed (killed again, three times), and the final outputs must equal those of an
uninterrupted run -- what each command promises to be exact on resume:

* ``train``: the model's weights and configuration, and ``log.csv`` (but for the wall-time column,
  and the run's recorded minutes); a kill before the first checkpoint leaves nothing to resume,
  so the run is started again, as its message says.
* ``md``: the CSV logs and the trajectories byte for byte, and the final restart file's content
  (header entries and tensors; safetensors writes the header's keys in a random order).
* ``screen``: ``scored.csv`` byte for byte (a rerun into the same folder resumes).
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DRUGS = REPO / "tests" / "data" / "search" / "drugs.smi"
KILLS = 3
TINY = {
    # edge harmonics tied to l_max: the smallest layout (a one-epoch model only has to run, not be right)
    "model": {"channels": 4, "l_max": 1, "edge_l_max": None, "num_layers": 1, "correlation": 1, "radial_hidden": [8],
              "readout_hidden": 4},
    "batch_size": 2, "validation": 2, "learning_rate": 0.01, "progress": False, "seed": 3,
}


def molequi(*args: str) -> list[str]:
    return [sys.executable, "-m", "molequi.cli.main", *map(str, args)]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg",
                PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_to_end(argv: list[str], timeout: float = 300) -> None:
    done = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]


def kill_at_random(argv: list[str], started: Path, rng: random.Random, window_s: float) -> bool:
    """Start ``argv``; once ``started`` exists (the run is working), SIGKILL it after a random
    delay in [0, window_s). Returns True when it was killed (False: it had already finished)."""
    process = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not started.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, window_s))
    if process.poll() is not None:
        assert process.returncode == 0, process.stderr.read().decode()[-2000:]
        return False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


def _labelled(n: int) -> list:
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(n):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    return frames


def _model_content(path: Path) -> tuple[dict, dict]:
    """Tensors (bytes) and header of a model file, without what measures the wall clock."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        tensors = {k: handle.get_tensor(k).tobytes() for k in handle.keys()}
        header = dict(handle.metadata())
    extra = json.loads(header.pop("extra", "{}"))
    extra.pop("minutes", None)
    header.pop("content_sha256", None)  # covers the header's wall-clock minutes too
    header["extra"] = extra
    return tensors, header


def _log_without_time(path: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    for row in rows:  # the clock's columns: seconds and the throughput measured with them
        row.pop("time_s", None)
        row.pop("train_structures_per_s", None)
    return rows


def test_train_killed_and_resumed_equals_uninterrupted(tmp_path):
    data, config = tmp_path / "train.extxyz", tmp_path / "tiny.yaml"
    ase.io.write(data, _labelled(10))
    config.write_text(yaml.safe_dump(TINY))
    args = ["train", "--data", data, "--config", config, "--max-epochs", "6", "--device", "cpu", "--no-progress"]
    run_to_end(molequi(*args, "--out", tmp_path / "reference"))

    out, rng, kills, finished = tmp_path / "faulted", random.Random(11), 0, False
    while not finished:
        resume = (out / "checkpoints" / "last.pt").is_file()
        if not resume:
            shutil.rmtree(out, ignore_errors=True)  # no epoch completed, nothing to resume: start again
        argv = molequi("train", "--out", out, "--resume", "--no-progress") if resume else molequi(*args, "--out", out)
        if kills < KILLS:
            finished = not kill_at_random(argv, out / "config.yaml", rng, window_s=2.0)
            kills += not finished
        else:
            run_to_end(argv)
            finished = True
    assert kills >= 1, "no kill landed inside the run"
    assert _model_content(out / "model.molequi") == _model_content(tmp_path / "reference" / "model.molequi")
    assert _log_without_time(out / "log.csv") == _log_without_time(tmp_path / "reference" / "log.csv")


def _model(tmp_path: Path) -> Path:
    data, config = tmp_path / "train.extxyz", tmp_path / "tiny.yaml"
    ase.io.write(data, _labelled(6))
    config.write_text(yaml.safe_dump(TINY))
    run_to_end(molequi("train", "--data", data, "--config", config, "--max-epochs", "1", "--device", "cpu",
                       "--no-progress", "--out", tmp_path / "model_run"))
    return tmp_path / "model_run" / "model.molequi"


def test_md_killed_and_resumed_equals_uninterrupted(tmp_path):
    model = _model(tmp_path)
    structure = tmp_path / "eth.xyz"
    ase.io.write(structure, molecule("CH3CH2OH"))
    args = ["md", model, structure, "--steps", "600", "--dt", "0.5", "--ensemble", "nvt", "--replicas", "2",
            "--restart-every", "25", "--log-every", "5", "--traj-every", "50", "--device", "cpu", "--no-progress",
            "--seed", "4", "--min-distance", "0.3"]
    run_to_end(molequi(*args, "--out", tmp_path / "reference"))

    out, rng, kills, finished = tmp_path / "faulted", random.Random(12), 0, False
    while not finished:
        resume = (out / "restart.safetensors").is_file()
        if not resume:
            shutil.rmtree(out, ignore_errors=True)  # killed before the first restart file: start again
        argv = molequi(*args, "--out", out, *(["--resume"] if resume else []))
        if kills < KILLS:
            finished = not kill_at_random(argv, out, rng, window_s=3.0)
            kills += not finished
        else:
            run_to_end(argv)
            finished = True
    assert kills >= 1, "no kill landed inside the run"
    reference = tmp_path / "reference"
    compared = [p.relative_to(reference) for p in sorted(reference.rglob("*"))
                if p.is_file() and p.suffix in (".safetensors", ".csv", ".extxyz", ".xyz")]
    assert any(p.name == "restart.safetensors" for p in compared)
    for rel in compared:
        if rel.suffix == ".safetensors":  # safetensors orders its header's keys at random: compare the content
            assert _restart_content(out / rel) == _restart_content(reference / rel), f"{rel} differs"
        else:
            assert (out / rel).read_bytes() == (reference / rel).read_bytes(), f"{rel} differs after kills and resumes"


def _restart_content(path: Path) -> tuple[dict, dict]:
    """Header entries and tensor bytes of a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        return dict(handle.metadata()), {k: handle.get_tensor(k).tobytes() for k in handle.keys()}


def test_screen_killed_and_resumed_equals_uninterrupted(tmp_path):
    args = ["screen", DRUGS, "--chunk-size", "2", "--no-progress", "--no-plots", "--top", "5"]
    run_to_end(molequi(*args, "--out", tmp_path / "reference"))

    out, rng, kills = tmp_path / "faulted", random.Random(13), 0
    while kills < KILLS:
        if not kill_at_random(molequi(*args, "--out", out), out / "chunks", rng, window_s=1.5):
            break
        kills += 1
    run_to_end(molequi(*args, "--out", out))  # the same command resumes
    assert kills >= 1, "no kill landed inside the run"
    assert (out / "scored.csv").read_bytes() == (tmp_path / "reference" / "scored.csv").read_bytes()
