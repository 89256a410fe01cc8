"""A careless or hostile user of the core (md, train, evaluate, model and restart files).

Every case asserts: exit code 2 (3 for an MD run a safety stop cut short), one line on stderr
without a traceback, and nothing outside the output folder changed. The case builders are plain
functions (importable by other test modules): they take a folder and return what the case needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.io import write

from molequi.cli.main import main
from molequi.models import save_model

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- case builders (plain functions)
def tiny_model(seed: int = 0):
    """A small random model (H, C, O) that runs in milliseconds."""
    from conftest import random_model

    return random_model(l_max=1, correlation=2, num_layers=1, seed=seed)


def md_inputs(folder: Path) -> dict[str, Path]:
    """A model file and an ethanol structure in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    model = save_model(tiny_model(), folder / "model.molequi")
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    write(folder / "ethanol.xyz", atoms)
    return {"model": model, "structure": folder / "ethanol.xyz"}


def md_args(inputs: dict[str, Path], out: Path, *extra: str, steps: int = 4) -> list[str]:
    """``molequi md`` arguments for a short quiet run."""
    return ["md", str(inputs["model"]), str(inputs["structure"]), "--steps", str(steps), "--dt", "0.5",
            "--out", str(out), "--restart-every", "2", "--traj-every", "2", "--log-every", "1", "--no-progress",
            "--min-distance", "0.2", *extra]


def snapshot(root: Path, skip: Path | None = None) -> dict[str, bytes]:
    """Every file under ``root`` (except under ``skip``) with its bytes and mode."""
    state = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not (skip is not None and path.is_relative_to(skip)):
            state[str(path.relative_to(root))] = path.read_bytes() + oct(path.stat().st_mode).encode()
    return state


def rewrite_restart(path: Path, change) -> None:
    """Rewrite an MD restart file with ``change(tensors, metadata)`` applied and a valid
    checksum: what a user with a text editor (or an attacker) can do."""
    from molequi.md.engine import read_restart_file, write_restart_file

    tensors, metadata = read_restart_file(path)
    change(tensors, metadata)
    metadata.pop("content_sha256", None)
    write_restart_file(path, tensors, metadata)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code: int, err: str, *words: str, expected_code: int = 2) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == expected_code, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]


# ---------------------------------------------------------------- md: restart containment
@pytest.mark.parametrize("name", ["../victim.txt", "/ABS/victim.txt", "sub/../../victim.txt", "model.molequi"])
def test_resume_never_truncates_a_file_outside_out(tmp_path, capsys, name):
    inputs = md_inputs(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n" * 100)
    out = tmp_path / "md"
    assert run_cli(md_args(inputs, out), capsys)[0] == 0
    target = str(victim) if name.startswith("/ABS") else name

    def poison(tensors, metadata):
        extra = json.loads(metadata["extra"])
        extra["file_sizes"][target] = 0
        metadata["extra"] = json.dumps(extra)

    rewrite_restart(out / "restart.safetensors", poison)
    before = snapshot(tmp_path)
    code, _, err = run_cli(md_args(inputs, out, "--resume", steps=8), capsys)
    assert_user_error(code, err, "refusing")
    assert snapshot(tmp_path) == before  # nothing anywhere changed, the run's own files included


# ---------------------------------------------------------------- md: resume identity
@pytest.mark.parametrize("change", [["--dt", "1.0"], ["--ensemble", "nvt"], ["--temperature", "600"],
                                    ["--friction", "0.1"], ["--seed", "7"], "model", "structure"])
def test_md_resume_refuses_changed_settings_or_inputs(tmp_path, capsys, change):
    inputs = md_inputs(tmp_path)
    out = tmp_path / "md"
    assert run_cli(md_args(inputs, out), capsys)[0] == 0
    args = md_args(inputs, out, "--resume", steps=8)
    if change == "model":  # same name, other weights
        save_model(tiny_model(seed=1), inputs["model"])
        words = ["model"]
    elif change == "structure":
        atoms = molecule("CH3CH2OH")
        write(inputs["structure"], atoms)
        words = ["structures"]
    else:
        args = [a for a in args]
        position = args.index(change[0]) if change[0] in args else None
        if position is None:
            args += change
        else:
            args[position + 1] = change[1]
        words = [change[0]]
    before = snapshot(tmp_path)
    code, _, err = run_cli(args, capsys)
    assert_user_error(code, err, "cannot resume", *words)
    assert snapshot(tmp_path) == before


def test_md_resume_with_the_same_inputs_continues(tmp_path, capsys):
    inputs = md_inputs(tmp_path)
    out = tmp_path / "md"
    assert run_cli(md_args(inputs, out), capsys)[0] == 0
    assert run_cli(md_args(inputs, out, "--resume", steps=8), capsys)[0] == 0
    from molequi.md import read_log

    assert read_log(out / "system_0000.csv")["step"].tolist() == list(range(9))


# ---------------------------------------------------------------- md: silent overwrites and locks
def test_md_refuses_an_existing_run_directory_without_resume_or_overwrite(tmp_path, capsys):
    inputs = md_inputs(tmp_path)
    out = tmp_path / "md"
    assert run_cli(md_args(inputs, out), capsys)[0] == 0
    (out / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    code, _, err = run_cli(md_args(inputs, out), capsys)
    assert_user_error(code, err, str(out), "--overwrite")
    assert snapshot(tmp_path) == before
    assert run_cli(md_args(inputs, out, "--overwrite"), capsys)[0] == 0
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite deletes only the run's own files


def test_md_refuses_a_directory_locked_by_another_run(tmp_path, capsys):
    from molequi.utils import locked_directory

    inputs = md_inputs(tmp_path)
    out = tmp_path / "md"
    with locked_directory(out, "train"):
        before = snapshot(tmp_path)
        code, _, err = run_cli(md_args(inputs, out), capsys)
        assert_user_error(code, err, str(out), "in use")
        assert snapshot(tmp_path) == before


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path, capsys):
    inputs = md_inputs(tmp_path)
    out = tmp_path / "md"
    assert run_cli(md_args(inputs, out), capsys)[0] == 0
    stale = out / ".restart.safetensors.0123abcd.tmp.safetensors"
    stale.write_bytes(b"half")
    assert run_cli(md_args(inputs, out, "--resume", steps=6), capsys)[0] == 0
    assert not stale.exists()


# ---------------------------------------------------------------- md: integrity of restart files
@pytest.mark.parametrize("where", ["tensor", "header"])
def test_md_refuses_a_corrupted_restart_file(tmp_path, capsys, where):
    inputs = md_inputs(tmp_path)
    out = tmp_path / "md"
    assert run_cli(md_args(inputs, out), capsys)[0] == 0
    path = out / "restart.safetensors"
    data = bytearray(path.read_bytes())
    if where == "tensor":
        data[-20] ^= 0xFF  # a byte of the last tensor
    else:
        start = data.index(b'"dt":"') + 6
        data[start] = ord("7") if data[start] != ord("7") else ord("3")
    path.write_bytes(bytes(data))
    before = snapshot(tmp_path)
    code, _, err = run_cli(md_args(inputs, out, "--resume", steps=8), capsys)
    assert_user_error(code, err, "restart")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- far atoms: no SIGFPE anywhere
def far_atom_structure():
    """Ethanol with one more H 10^6 Å away along x (vesin's open-box cell list died of SIGFPE)."""
    from ase import Atoms

    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    return atoms + Atoms("H", positions=[[1e6, 0.0, 0.0]])


def labelled(atoms, energy: float = -10.0, forces=None):
    """``atoms`` with energy (eV) and forces (eV/Å) labels attached as ASE stores them."""
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = atoms.copy()
    forces = np.zeros((len(atoms), 3)) if forces is None else forces
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def far_atom_inputs(folder: Path) -> dict[str, Path]:
    inputs = md_inputs(folder)
    write(folder / "far.xyz", far_atom_structure())
    write(folder / "far_labelled.extxyz", [labelled(far_atom_structure(), -10.0 - k) for k in range(2)])
    return inputs


def run_subprocess(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


@pytest.mark.slow
def test_a_far_atom_kills_no_process(tmp_path):
    inputs = far_atom_inputs(tmp_path)
    script = f"""
import numpy as np
from ase.io import read
from molequi.calculators import MolequiCalculator
from molequi.data import neighbor_list
from molequi.cli.main import main
atoms = read({str(tmp_path / 'far.xyz')!r})
atoms.calc = MolequiCalculator({str(inputs['model'])!r})
assert np.isfinite(atoms.get_forces()).all() and np.all(atoms.get_forces()[-1] == 0)
for far in ([[0, 0, 0], [1, 0, 0], [1e6, 0, 0]], [[0, 0, 0], [1e5, 1e5, 0], [1, 0, 0]]):
    assert neighbor_list(np.array(far, float), 5.0)[0].shape == (2, 2)
codes = [main(["evaluate", {str(inputs['model'])!r}, {str(tmp_path / 'far_labelled.extxyz')!r}]),
         main(["md", {str(inputs['model'])!r}, {str(tmp_path / 'far.xyz')!r}, "--steps", "3", "--dt", "0.5",
               "--out", {str(tmp_path / 'md')!r}, "--no-progress", "--min-distance", "0.2"])]
print("codes", codes)
"""
    result = run_subprocess(["-c", script], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "codes [0, 0]" in result.stdout and "Traceback" not in result.stderr


@pytest.mark.parametrize("cell", [[[10, 0, 0], [0, 10, 0], [0, 0, 0]], [[10, 0, 0], [10, 1e-9, 0], [0, 0, 10]],
                                  [[0.01, 0, 0], [0, 0.01, 0], [0, 0, 0.01]]])
def test_a_degenerate_cell_is_one_line(tmp_path, capsys, cell):
    inputs = md_inputs(tmp_path)
    atoms = molecule("CH3CH2OH")
    atoms.cell, atoms.pbc = cell, True
    write(tmp_path / "box.extxyz", labelled(atoms))
    before = snapshot(tmp_path)
    for args in (["evaluate", str(inputs["model"]), str(tmp_path / "box.extxyz")],
                 md_args({**inputs, "structure": tmp_path / "box.extxyz"}, tmp_path / "md")):
        code, _, err = run_cli(args, capsys)
        assert_user_error(code, err, "cell")
    assert snapshot(tmp_path, skip=tmp_path / "md") == before
    assert not (tmp_path / "md").exists()


# ---------------------------------------------------------------- devices
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:3", "tpu", "garbage:x"])
def test_an_unusable_device_is_one_line_in_every_command(tmp_path, capsys, device):
    inputs = md_inputs(tmp_path)
    write(tmp_path / "data.extxyz", [labelled(molecule("CH3CH2OH"), -10.0 - k) for k in range(4)])
    for args in (md_args(inputs, tmp_path / "md", "--device", device),
                 ["evaluate", str(inputs["model"]), str(tmp_path / "data.extxyz"), "--device", device],
                 ["train", "--data", str(tmp_path / "data.extxyz"), "--out", str(tmp_path / "train"),
                  "--device", device, "--max-epochs", "1"]):
        code, _, err = run_cli(args, capsys)
        assert_user_error(code, err, "device")
    assert not (tmp_path / "md").exists() and not (tmp_path / "train").exists()


# ---------------------------------------------------------------- model files: integrity and header values
def edited_model(source: Path, target: Path, checksum: bool = True, **config_changes) -> Path:
    """A copy of a model file with header config values changed; ``checksum``: recomputed (a
    deliberate edit), else left stale (a corruption)."""
    import safetensors.torch
    from safetensors import safe_open

    from molequi.utils import DIGEST_KEY, tensors_digest

    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = safetensors.torch.load_file(str(source))
    config = json.loads(metadata["config"])
    config.update(config_changes)
    metadata["config"] = json.dumps(config)
    if checksum:
        metadata[DIGEST_KEY] = tensors_digest(tensors, metadata)
    safetensors.torch.save_file(tensors, str(target), metadata=metadata)
    return target


def flipped_weights(source: Path, target: Path) -> Path:
    """A copy of a model file with bytes of its last tensor inverted (the header intact)."""
    data = bytearray(source.read_bytes())
    for k in range(-64, -32):
        data[k] ^= 0x5A
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("case", ["flipped", "avg_num_neighbors=0", "energy_scale=inf", "channels='32'",
                                  "num_layers=5000", "channels=200000", "species=[1,1,6]", "edge_l_max=7",
                                  "edge_l_max=1.5", "dtype"])
def test_a_corrupt_or_absurd_model_file_is_refused_before_use(tmp_path, capsys, case):
    import time

    inputs = md_inputs(tmp_path)
    write(tmp_path / "data.extxyz", [labelled(molecule("CH3CH2OH"), -10.0 - k) for k in range(2)])
    bad = tmp_path / "bad.molequi"
    if case == "flipped":
        flipped_weights(inputs["model"], bad)
    elif case == "dtype":
        import safetensors.torch
        from safetensors import safe_open

        with safe_open(str(inputs["model"]), framework="pt") as handle:
            metadata = {**handle.metadata(), "dtype": "int8"}
        safetensors.torch.save_file(safetensors.torch.load_file(str(inputs["model"])), str(bad), metadata=metadata)
    else:
        key, value = case.split("=")
        edited_model(inputs["model"], bad, **{key: float(value) if value == "inf" else eval(value)})
    before = snapshot(tmp_path)
    start = time.perf_counter()
    for args in (["evaluate", str(bad), str(tmp_path / "data.extxyz")],
                 md_args({**inputs, "model": bad}, tmp_path / "md")):
        code, _, err = run_cli(args, capsys)
        assert_user_error(code, err, str(bad))
    assert time.perf_counter() - start < 20  # refused before anything was built at that size
    assert snapshot(tmp_path) == before


def test_a_model_file_without_checksum_loads_with_a_warning(tmp_path):
    import safetensors.torch
    from safetensors import safe_open

    from molequi.models import load_model

    source = md_inputs(tmp_path)["model"]
    with safe_open(str(source), framework="pt") as handle:
        metadata = {k: v for k, v in handle.metadata().items() if k != "content_sha256"}
    old = tmp_path / "old.molequi"
    safetensors.torch.save_file(safetensors.torch.load_file(str(source)), str(old), metadata=metadata)
    with pytest.warns(UserWarning, match="without a checksum"):
        load_model(old)


# ---------------------------------------------------------------- train: resume identity, locks, overwrites
def labelled_dataset(path: Path, n: int = 6, seed: int = 0, energy=None, forces_scale: float = 0.1) -> Path:
    """``n`` rattled ethanols with small energies (eV) and forces (eV/Å) in an extxyz file;
    ``energy``: one value to give every structure instead (1e30, nan ...)."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.05, seed=seed * 100 + k)
        value = -10.0 + 0.01 * rng.normal() if energy is None else energy
        frames.append(labelled(atoms, value, forces_scale * rng.normal(size=(len(atoms), 3))))
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, frames)
    return path


def train_args(data: Path, out: Path, *extra: str, epochs: int = 1) -> list[str]:
    """``molequi train`` arguments for a seconds-long run of a tiny model."""
    return ["train", "--data", str(data), "--out", str(out), "--max-epochs", str(epochs), "--channels", "4",
            "--l-max", "0", "--num-layers", "1", "--correlation", "1", "--batch-size", "2", "--validation", "2",
            "--device", "cpu", "--no-progress", *extra]


@pytest.mark.parametrize("change", ["other file", "same name, other content"])
def test_train_resume_refuses_other_data(tmp_path, capsys, change):
    data = labelled_dataset(tmp_path / "data.extxyz")
    out = tmp_path / "run"
    assert run_cli(train_args(data, out), capsys)[0] == 0
    if change == "other file":
        data = labelled_dataset(tmp_path / "other.extxyz", seed=1)
    else:
        labelled_dataset(data, seed=1)
    before = snapshot(tmp_path)
    code, _, err = run_cli(train_args(data, out, "--resume", epochs=2), capsys)
    assert_user_error(code, err, "cannot resume", "data")
    assert snapshot(tmp_path) == before


def test_train_refuses_an_existing_or_locked_run_directory(tmp_path, capsys):
    from molequi.utils import locked_directory

    data = labelled_dataset(tmp_path / "data.extxyz")
    out = tmp_path / "run"
    with locked_directory(out, "train"):  # another run owns it
        code, _, err = run_cli(train_args(data, out), capsys)
        assert_user_error(code, err, str(out), "in use")
    assert run_cli(train_args(data, out), capsys)[0] == 0
    (out / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    code, _, err = run_cli(train_args(data, out), capsys)
    assert_user_error(code, err, str(out))
    assert snapshot(tmp_path) == before
    assert run_cli(train_args(data, out, "--overwrite"), capsys)[0] == 0
    assert (out / "notes.txt").read_text() == "mine"
    (out / "checkpoints" / ".last.pt.0123abcd.tmp.pt").write_bytes(b"half")  # a killed checkpoint write
    assert run_cli(train_args(data, out, "--resume", epochs=2), capsys)[0] == 0
    assert not list(out.rglob("*.tmp*"))


def test_train_refuses_a_corrupted_checkpoint(tmp_path, capsys):
    data = labelled_dataset(tmp_path / "data.extxyz")
    out = tmp_path / "run"
    assert run_cli(train_args(data, out), capsys)[0] == 0
    path = out / "checkpoints" / "last.pt"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    before = snapshot(tmp_path)
    code, _, err = run_cli(train_args(data, out, "--resume", epochs=2), capsys)
    assert_user_error(code, err, "checkpoint")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- values: one validation everywhere
@pytest.mark.parametrize("option", [["--dt", "nan"], ["--dt", "-0.5"], ["--dt", "inf"], ["--temperature", "-5"],
                                    ["--temperature", "nan"], ["--temperature", "1e7"], ["--friction", "-1"],
                                    ["--traj-every", "-1"], ["--log-every", "-3"], ["--skin", "nan"],
                                    ["--steps", "-1"], ["--replicas", "0"], ["--max-temperature", "nan"]])
def test_md_refuses_impossible_values(tmp_path, capsys, option):
    inputs = md_inputs(tmp_path)
    before = snapshot(tmp_path)
    code, _, err = run_cli(md_args(inputs, tmp_path / "md", *option), capsys)
    assert_user_error(code, err, option[0].removeprefix("--").replace("-", "_"))
    assert snapshot(tmp_path) == before and not (tmp_path / "md").exists()


@pytest.mark.parametrize("energy", [1e30, float("nan"), float("inf")])
def test_absurd_labels_are_refused_by_train_and_evaluate_alike(tmp_path, capsys, energy):
    inputs = md_inputs(tmp_path)
    data = labelled_dataset(tmp_path / "data.extxyz")
    bad = labelled_dataset(tmp_path / "bad.extxyz", energy=energy)
    before = snapshot(tmp_path)
    messages = []
    for args in (train_args(bad, tmp_path / "run"), ["evaluate", str(inputs["model"]), str(bad)]):
        code, _, err = run_cli(args, capsys)
        assert_user_error(code, err, "'energy' label")
        messages.append(err.split(": ", 2)[-1])
    assert messages[0] == messages[1]  # one validation, one message
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()
    assert run_cli(["evaluate", str(inputs["model"]), str(data)], capsys)[0] == 0


def test_training_that_diverges_stops_with_an_error(tmp_path, capsys):
    data = labelled_dataset(tmp_path / "data.extxyz", forces_scale=1000.0)
    code, _, err = run_cli(train_args(data, tmp_path / "run", "--lr", "1e30", epochs=3), capsys)
    assert_user_error(code, err, "diverged")
    assert not (tmp_path / "run" / "model.molequi").exists()


def test_the_calculator_refuses_overlapping_atoms_like_predict(tmp_path):
    from molequi.calculators import MolequiCalculator
    from molequi.errors import InvalidStructureError
    from molequi.models.predict import predict

    atoms = molecule("CH3CH2OH")
    atoms.positions[1] = atoms.positions[0]
    model = tiny_model()
    with pytest.raises(InvalidStructureError, match="apart"):
        predict(model, [atoms])
    atoms.calc = MolequiCalculator(model)
    with pytest.raises(InvalidStructureError, match="apart"):
        atoms.get_potential_energy()


# ---------------------------------------------------------------- safety stops are not a success
@pytest.mark.parametrize("engine", ["batched", "ase"])
def test_md_exits_nonzero_naming_the_stopped_systems(tmp_path, capsys, engine):
    inputs = md_inputs(tmp_path)
    out = tmp_path / "md"
    code, printed, err = run_cli(md_args(inputs, out, "--replicas", "2", "--max-temperature", "1",
                                         "--engine", engine, "--restart-every", "0"), capsys)
    assert_user_error(code, err, "2 of 2 system(s) stopped early", "system 0", "system 1", "temperature",
                      expected_code=3)
    assert (out / "energy.png").exists()  # the outputs are still written


# ---------------------------------------------------------------- degenerate data files
def degenerate_file(folder: Path, kind: str) -> Path:
    """A data file a careless user might pass: ``empty``, ``npy-as-npz``, ``garbage-db``,
    ``mixed-pbc`` or ``degenerate-cell``."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        path = folder / "empty.extxyz"
        path.write_text("")
    elif kind == "npy-as-npz":
        path = folder / "data.npz"
        with open(path, "wb") as handle:
            np.save(handle, np.zeros(3))
    elif kind == "garbage-db":
        path = folder / "data.db"
        path.write_bytes(b"\x00not a database" * 64)
    else:
        atoms = molecule("CH3CH2OH")
        atoms.cell = [10, 10, 10] if kind == "mixed-pbc" else [[10, 0, 0], [0, 10, 0], [20, 0, 0]]
        atoms.pbc = [True, True, False] if kind == "mixed-pbc" else True
        path = folder / f"{kind}.extxyz"
        write(path, labelled(atoms))
    return path


@pytest.mark.parametrize("kind,words", [("empty", "empty"), ("npy-as-npz", ".npy"), ("garbage-db", "database"),
                                        ("mixed-pbc", "mixed periodic"), ("degenerate-cell", "degenerate")])
def test_a_degenerate_data_file_is_one_line_in_every_command(tmp_path, capsys, kind, words):
    inputs = md_inputs(tmp_path)
    path = degenerate_file(tmp_path / "data", kind)
    before = snapshot(tmp_path)
    for args in (["evaluate", str(inputs["model"]), str(path)],
                 md_args({**inputs, "structure": path}, tmp_path / "md"),
                 train_args(path, tmp_path / "run")):
        code, _, err = run_cli(args, capsys)
        assert_user_error(code, err, str(path), words)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "md").exists() and not (tmp_path / "run").exists()
