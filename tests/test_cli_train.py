"""``molequi train`` / ``molequi evaluate`` end to end, bad inputs, torchrun and rMD17."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase import Atoms
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from safetensors.torch import save_file

from molequi.cli.main import main

REPO = Path(__file__).resolve().parents[1]
RMD17 = REPO.parent / "shared" / "data" / "rmd17"
TINY_YAML = {
    "model": {"channels": 8, "l_max": 1, "num_layers": 1, "correlation": 2, "radial_hidden": [16], "readout_hidden": 8},
    "batch_size": 4,
    "validation": 4,
    "learning_rate": 0.01,
    "progress": False,
}
METRIC_KEYS = ("energy_mae_meV", "energy_rmse_meV", "forces_mae_meV_per_A", "forces_rmse_meV_per_A", "n_structures")


def labelled(atoms: Atoms) -> Atoms:
    atoms.calc = EMT()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def make_structures(n: int, seed: int = 0, name: str = "CH3CH2OH") -> list[Atoms]:
    rng = np.random.default_rng(seed)
    structures = []
    for _ in range(n):
        atoms = molecule(name)
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        structures.append(labelled(atoms))
    return structures


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    paths = {"train": root / "train.extxyz", "test": root / "test.extxyz", "config": root / "tiny.yaml"}
    ase.io.write(paths["train"], make_structures(16))
    ase.io.write(paths["test"], make_structures(6, seed=1))
    paths["config"].write_text(yaml.safe_dump(TINY_YAML))
    return paths


@pytest.fixture(scope="module")
def trained(files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    code = main(["train", "--data", str(files["train"]), "--test-data", str(files["test"]), "--out", str(out),
                 "--config", str(files["config"]), "--max-epochs", "2", "--device", "cpu", "--dtype", "float64"])
    assert code == 0
    return out


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_writes_every_output(trained):
    for name in ("model.molequi", "log.csv", "learning_curve.png", "config.yaml", "test_metrics.json",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (trained / name).is_file(), f"{name} missing"
    metrics = json.loads((trained / "test_metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in metrics
    assert metrics["n_structures"] == 6
    header = (trained / "log.csv").read_text().splitlines()[0].split(",")
    for column in ("epoch", "time_s", "lr", "train_loss", "val_energy_mae_meV", "val_energy_rmse_meV",
                   "val_forces_mae_meV_per_A", "val_forces_rmse_meV_per_A"):
        assert column in header
    assert len((trained / "log.csv").read_text().splitlines()) == 3
    resolved = yaml.safe_load((trained / "config.yaml").read_text())
    assert resolved["model"]["channels"] == 8 and resolved["max_epochs"] == 2 and resolved["dtype"] == "float64"


def test_evaluate_prints_metrics_json(trained, files, tmp_path, capsys):
    code, out, err = run_cli(["evaluate", trained / "model.molequi", files["test"], "--plot", tmp_path / "parity.png",
                              "--device", "cpu"], capsys)
    assert code == 0, err
    metrics = json.loads(out)
    for key in METRIC_KEYS:
        assert key in metrics
    assert metrics["n_structures"] == 6
    stored = json.loads((trained / "test_metrics.json").read_text())
    assert metrics["forces_mae_meV_per_A"] == pytest.approx(stored["forces_mae_meV_per_A"], rel=1e-9)
    assert (tmp_path / "parity.png").stat().st_size > 1000


def test_help_texts_explain_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for phrase in ("--max-minutes", "minutes", "--cutoff", "Å", "--resume", "--test-data", "eV/Å"):
        assert phrase in text, phrase


def test_resume_via_cli_continues(files, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--out", out, "--device", "cpu"]
    assert run_cli(["train", "--data", files["train"], "--config", files["config"], "--max-epochs", "1", *common], capsys)[0] == 0
    code, _, err = run_cli(["train", "--resume", "--max-epochs", "2", *common], capsys)
    assert code == 0, err
    assert len((out / "log.csv").read_text().splitlines()) == 3
    code, _, err = run_cli(["train", "--resume", "--lr", "0.5", *common], capsys)
    assert code == 2 and "error: cannot change 'learning_rate' when resuming" in err


# --- bad input: one clear message, exit != 0, no model left behind -------------------------------


def _write_bad(kind: str, path: Path) -> Path:
    structures = make_structures(8)
    if kind == "missing_energy":
        structures[5].calc = SinglePointCalculator(structures[5], forces=structures[5].get_forces())
    elif kind == "missing_forces":
        structures[4].calc = SinglePointCalculator(structures[4], energy=structures[4].get_potential_energy())
    elif kind == "nan_coordinates":
        atoms = structures[3]
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.positions[2, 0] = np.nan
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    elif kind == "overlapping_atoms":
        structures[6].positions[3] = structures[6].positions[2] + [0.02, 0.0, 0.0]
    elif kind == "empty_structure":
        empty = Atoms()
        empty.calc = SinglePointCalculator(empty, energy=0.0, forces=np.zeros((0, 3)))
        structures[2] = empty
    elif kind == "mismatched_shapes":
        path = path.with_suffix(".npz")
        np.savez(path, nuclear_charges=structures[0].numbers, coords=np.stack([a.positions for a in structures]),
                 energies=np.zeros(8), forces=np.zeros((8, len(structures[0]) + 1, 3)))
        return path
    elif kind == "nan_energy":
        structures[1].calc = SinglePointCalculator(structures[1], energy=float("nan"), forces=structures[1].get_forces())
    ase.io.write(path, structures)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing_energy", "structure 5 has no energy label"),
        ("missing_forces", "structure 4 has no forces label"),
        ("nan_coordinates", "structure 3: non-finite"),
        ("overlapping_atoms", "structure 6: atoms 2 and 3"),
        ("empty_structure", "structure 2: empty structure"),
        ("mismatched_shapes", "'forces' has shape"),
        ("nan_energy", "structure 1: the 'energy' label is not finite"),
    ],
)
def test_bad_training_data_fails_cleanly(kind, message, tmp_path, files, capsys):
    path = _write_bad(kind, tmp_path / f"{kind}.extxyz")
    out = tmp_path / "out"
    code, _, err = run_cli(["train", "--data", path, "--out", out, "--config", files["config"], "--device", "cpu",
                            "--max-epochs", "1"], capsys)
    assert code != 0
    assert err.startswith("error: ") and message in err and path.name in err, err
    assert "Traceback" not in err
    assert not (out / "model.molequi").exists() and not out.exists(), "a failed run left output behind"


def test_bad_test_data_fails_before_training(tmp_path, files, capsys):
    path = _write_bad("missing_forces", tmp_path / "test.extxyz")
    code, _, err = run_cli(["train", "--data", files["train"], "--test-data", path, "--out", tmp_path / "out",
                            "--config", files["config"], "--device", "cpu"], capsys)
    assert code == 2 and "error: " in err and "structure 4 has no forces label" in err
    assert not (tmp_path / "out").exists()


def test_unknown_config_key(tmp_path, files, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("lerning_rate: 0.01\n")
    code, _, err = run_cli(["train", "--data", files["train"], "--out", tmp_path / "out", "--config", config], capsys)
    assert code == 2
    assert "error: " in err and "unknown training setting 'lerning_rate' (did you mean 'learning_rate'?)" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_clear_error(tmp_path, files, capsys):
    code, _, err = run_cli(["train", "--data", files["train"], "--out", tmp_path / "out", "--device", "cuda"], capsys)
    assert code == 2 and "error: " in err and "no CUDA GPU" in err
    assert not (tmp_path / "out").exists()


def test_evaluate_unknown_element(trained, tmp_path, capsys):
    path = tmp_path / "nitrogen.extxyz"
    ase.io.write(path, [labelled(molecule("NH3"))])
    code, _, err = run_cli(["evaluate", trained / "model.molequi", path, "--device", "cpu"], capsys)
    assert code == 2 and "error: " in err and "does not know element(s) N" in err


def test_evaluate_unreadable_or_foreign_model(files, tmp_path, capsys):
    garbage = tmp_path / "garbage.molequi"
    garbage.write_bytes(os.urandom(256))
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(foreign))
    for path in (garbage, foreign, tmp_path / "missing.molequi"):
        code, out, err = run_cli(["evaluate", path, files["test"], "--device", "cpu"], capsys)
        assert code == 2 and err.startswith("error: ") and "model file" in err, err
        assert "Traceback" not in err


def test_resume_refuses_malicious_checkpoint(tmp_path, files, capsys):
    import pickle

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "pwned"
    with open(out / "checkpoints" / "last.pt", "wb") as handle:
        pickle.dump(_Exploit(marker), handle)
    code, _, err = run_cli(["train", "--resume", "--out", out], capsys)
    assert code == 2 and "error: " in err and "refused by the safe" in err
    assert not marker.exists() and not (out / "model.molequi").exists()


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# --- torchrun (gloo, CPU) ---------------------------------------------------------------------------


def run_torchrun(train: Path, out: Path, config: Path, *options: str) -> subprocess.CompletedProcess:
    """``molequi train`` on 2 CPU processes (gloo) through torchrun; skips without torchrun."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        pytest.skip("torchrun is not installed")
    command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "molequi.cli.main", "train",
               "--data", str(train), "--out", str(out), "--config", str(config),
               "--device", "cpu", "--batch-size", "2", *options]
    completed = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


@pytest.mark.slow
def test_torchrun_two_processes_share_the_data(files, tmp_path):
    out = tmp_path / "ddp"
    completed = run_torchrun(files["train"], out, files["config"], "--max-epochs", "1")
    assert (out / "model.molequi").is_file()
    rows = (out / "log.csv").read_text().splitlines()
    header, row = rows[0].split(","), rows[1].split(",")
    # 12 training structures: the two ranks together processed each exactly once (disjoint shards)
    assert int(row[header.index("train_structures")]) == 12
    from molequi.models import read_header

    assert read_header(out / "model.molequi")["extra"]["world_size"] == 2
    assert completed.stdout.count("training on 12 structures") == 1, "only rank 0 may print"


@pytest.mark.slow
def test_torchrun_stops_at_the_time_limit_with_short_epochs(files, tmp_path):
    """3 steps per rank and epoch: the deadline must be agreed on between epochs too."""
    config = tmp_path / "no_early_stop.yaml"
    config.write_text(yaml.safe_dump({**TINY_YAML, "early_stopping_patience": 0}))
    completed = run_torchrun(files["train"], tmp_path / "ddp_deadline", config,
                             "--max-epochs", "100000", "--max-minutes", "0.1")
    assert "time budget of 0.1 min used up" in completed.stdout


# --- rMD17 --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rmd17_ethanol_short_run(tmp_path, capsys):
    train_file = RMD17 / "rmd17_ethanol_train_01.npz"
    if not train_file.is_file():
        from conftest import rmd17_missing

        pytest.skip(rmd17_missing(RMD17))
    from molequi.data import read_structures

    structures = read_structures(train_file)
    subset = tmp_path / "ethanol_40.extxyz"
    ase.io.write(subset, structures[:40])
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY_YAML, "validation": 10}))
    code, out, err = run_cli(["train", "--data", subset, "--test-data", RMD17 / "rmd17_ethanol_test_01.npz",
                              "--out", tmp_path / "run", "--config", config, "--max-epochs", "2", "--device", "cpu"],
                             capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert metrics["n_structures"] == 1000 and np.isfinite(metrics["forces_mae_meV_per_A"])


def test_existing_run_is_not_overwritten(trained, files, capsys):
    before = (trained / "model.molequi").read_bytes()
    code, _, err = run_cli(["train", "--data", files["train"], "--out", trained, "--config", files["config"]], capsys)
    assert code == 2 and "already holds a training run" in err and "--resume" in err
    assert (trained / "model.molequi").read_bytes() == before
