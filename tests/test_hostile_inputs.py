"""A hostile (or careless) user's corpus: every command and the Python API fed corrupt, missing,
empty and foreign files, absurd values, bad options and bad paths.

Every case asserts what a user must see: exit code 2 and one line on stderr (``error: ...``, no
traceback) for a mistake, or a run that handles the input (exit 0, the bad record reported); and
that nothing outside the run's ``--out`` changed (the case's folder is hashed before and after).
Python API cases assert a :class:`~molequi.errors.MolequiError` with a one-line message.

Most cases call :func:`molequi.cli.main.main` in-process; the few that could crash or hang the
interpreter (far-away atoms, huge neighbor grids) run in a subprocess with a timeout.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ase.io
import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from safetensors.numpy import save_file

from molequi.cli.main import main
from molequi.errors import MolequiError

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "model": {"channels": 4, "l_max": 1, "num_layers": 1, "correlation": 1, "radial_hidden": [8], "readout_hidden": 4},
    "batch_size": 4, "validation": 2, "learning_rate": 0.01, "progress": False,
}
SMILES = "CCO ethanol\nc1ccccc1O phenol\nCC(=O)Nc1ccc(O)cc1 paracetamol\n"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ---------------------------------------------------------------------------------------------
# fixtures: one tiny trained model and small files, copied into each case's own folder


def _labelled(atoms: Atoms) -> Atoms:
    atoms.calc = EMT()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def _structures(n: int, seed: int = 0) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        out.append(_labelled(atoms))
    return out


@pytest.fixture(scope="session")
def pristine(tmp_path_factory) -> Path:
    """A folder with model.molequi (trained 1 epoch), train.extxyz, eth.xyz, tiny.yaml, mols.smi/.csv."""
    root = tmp_path_factory.mktemp("hostile")
    ase.io.write(root / "train.extxyz", _structures(8))
    ase.io.write(root / "eth.xyz", molecule("CH3CH2OH"))
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    (root / "mols.smi").write_text(SMILES)
    (root / "mols.csv").write_text("id,smiles\n" + "".join(f"{n},{s}\n" for s, n in (l.split() for l in SMILES.splitlines())))
    code = main(["train", "--data", str(root / "train.extxyz"), "--out", str(root / "run"), "--config",
                 str(root / "tiny.yaml"), "--max-epochs", "1", "--device", "cpu", "--no-progress"])
    assert code == 0
    shutil.copy(root / "run" / "model.molequi", root / "model.molequi")
    shutil.rmtree(root / "run")
    return root


def tree_digest(root: Path, skip: Path | None = None) -> dict[str, str]:
    """{relative path: sha256 or mode} of every file and folder under ``root`` except ``skip``."""
    digest = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        rel = str(path.relative_to(root))
        if path.is_symlink():
            digest[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            digest[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            digest[rel] = f"dir:{stat.S_IMODE(path.stat().st_mode):o}"
    return digest


# ---------------------------------------------------------------------------------------------
# hostile file makers (each takes the case folder, returns a path)


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def garbage(w: Path, name: str) -> Path:
    return write(w / name, bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8)))


def xyz_with(w: Path, name: str, edit: Callable[[Atoms], None], labelled: bool = False) -> Path:
    atoms = molecule("CH3CH2OH")
    edit(atoms)
    if labelled:
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((len(atoms), 3)))
    ase.io.write(w / name, atoms, format="extxyz")
    return w / name


def labelled_with(w: Path, name: str, energy: float = -1.0, forces: float = 0.0, n: int = 8) -> Path:
    frames = _structures(n)
    frames[3].calc = SinglePointCalculator(frames[3], energy=energy, forces=np.full((len(frames[3]), 3), forces))
    ase.io.write(w / name, frames, format="extxyz")
    return w / name


def truncated(w: Path, source: str, name: str) -> Path:
    data = (w / source).read_bytes()
    return write(w / name, data[: len(data) // 2])


def foreign_safetensors(w: Path) -> Path:
    save_file({"weight": np.zeros((3, 3), dtype=np.float32)}, str(w / "foreign.molequi"), metadata={"format": "pt"})
    return w / "foreign.molequi"


def hostile_header(w: Path, name: str, **changes) -> Path:
    """model.molequi with header entries replaced (the tensors kept)."""
    from safetensors import safe_open

    with safe_open(str(w / "model.molequi"), framework="np") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = dict(handle.metadata())
    config = json.loads(metadata["config"])
    for key, value in changes.items():
        if key in config:
            config[key] = value
        else:
            metadata[key] = value
    metadata["config"] = json.dumps(config)
    save_file(tensors, str(w / name), metadata=metadata)
    return w / name


def chmod_readonly(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    path.chmod(0o555)
    return path


def npz_with(w: Path, name: str, **arrays) -> Path:
    np.savez(w / name, **arrays)
    return w / name


def screen_run(w: Path, *extra: str, out: str = "out") -> list[str]:
    return ["screen", str(w / "mols.smi"), "--out", str(w / out), "--no-progress", "--no-plots",
            "--alerts", "none", "--sa-max", "0", *extra]


def hold_lock(folder: Path, name: str):
    """Hold an flock on ``folder/name`` as another run would (released when the case ends)."""
    import fcntl

    folder.mkdir(exist_ok=True)
    handle = open(folder / name, "a+")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


# ---------------------------------------------------------------------------------------------
# the corpus


@dataclass
class Case:
    id: str
    build: Callable[[Path], object]  # -> argv (CLI) or a zero-argument callable (API)
    codes: tuple[int, ...] = (2,)  # accepted exit codes (2: a user's mistake)
    out: str = "out"  # the only path the case may change
    check: Callable[[Path, str], None] | None = None  # extra assertion on (folder, stdout)
    subprocess: bool = False  # may crash or hang the interpreter: run it in a child with a timeout
    skip_root: bool = False


TRAIN = ["--config", "tiny.yaml", "--max-epochs", "1", "--device", "cpu", "--no-progress"]


def train(w: Path, *args: str, data: str | Path = "train.extxyz", out: str = "out") -> list[str]:
    return ["train", "--data", str(w / data), "--out", str(w / out), *[a.replace("tiny.yaml", str(w / "tiny.yaml")) for a in TRAIN], *args]


def evaluate(w: Path, model: str | Path = "model.molequi", data: str | Path = "train.extxyz", *args: str) -> list[str]:
    return ["evaluate", str(w / model), str(w / data), "--device", "cpu", *args]


def md(w: Path, *args: str, model: str | Path = "model.molequi", structure: str | Path = "eth.xyz",
       steps: str = "3") -> list[str]:
    return ["md", str(w / model), str(w / structure), "--steps", steps, "--dt", "0.5", "--out", str(w / "out"),
            "--device", "cpu", "--no-progress", "--log-every", "1", *args]


def _far(atoms: Atoms) -> None:
    atoms.positions[0] += 1e9


def _dup(atoms: Atoms) -> None:
    atoms.positions[1] = atoms.positions[0]


def _nan(atoms: Atoms) -> None:
    atoms.positions[2, 1] = np.nan


def _unknown(atoms: Atoms) -> None:
    atoms.numbers[0] = 26  # Fe: not in the model


def _ghost(atoms: Atoms) -> None:
    atoms.numbers[0] = 0  # 'X'


def _edit_in_place(w: Path) -> list[str]:
    assert main(screen_run(w, "--no-3d")) == 0
    text = (w / "mols.smi").read_text()
    write(w / "mols.smi", text.replace("CCO", "CCN"))  # same size, other molecule
    return screen_run(w, "--no-3d")


def _model_replaced(w: Path) -> list[str]:
    args = ["--model", str(w / "model.molequi"), "--objective", "energy:min", "--device", "cpu"]
    assert main(screen_run(w, *args)) == 0
    from molequi.models import load_model, save_model

    model = load_model(w / "model.molequi")
    with __import__("torch").no_grad():
        next(model.parameters()).add_(0.01)
    save_model(model, w / "model.molequi")  # same path, other weights
    return screen_run(w, *args)


def _other_settings(w: Path) -> list[str]:
    assert main(screen_run(w, "--no-3d")) == 0
    return screen_run(w, "--no-3d", "--max-ring-size", "6")


def _screen_locked(w: Path) -> list[str]:
    (w / "out").mkdir()
    HELD.append(hold_lock(w / "out", ".molequi.lock"))
    return screen_run(w, "--no-3d")


def _dir_locked(w: Path, argv: list[str]) -> list[str]:
    (w / "out").mkdir(exist_ok=True)
    HELD.append(hold_lock(w / "out", ".molequi.lock"))
    return argv


HELD: list = []


def _bad_quote_check(w: Path, stdout: str) -> None:
    rows = (w / "out" / "scored.csv").read_text().splitlines()
    assert len(rows) == 5, rows  # header + 4 records: the bad line did not swallow the others
    assert "unreadable_line:3:unbalanced quote" in rows[2]


def _api(call: Callable[[Path], object], make: Callable[[Path], object] | None = None
         ) -> Callable[[Path], Callable[[], object]]:
    """An API case: ``make(w)`` builds its hostile input first (its result is passed to ``call``)."""
    def build(w: Path) -> Callable[[], object]:
        made = make(w) if make is not None else None
        return (lambda: call(w, made)) if make is not None else (lambda: call(w))
    return build


def _load(w: Path, path: str | Path = "model.molequi", **kwargs):
    import molequi

    return molequi.load_model(w / path, **kwargs)


def _predict(w: Path, edit=None, **kwargs):
    import molequi

    atoms = molecule("CH3CH2OH")
    if edit is not None:
        edit(atoms)
    return molequi.predict(_load(w), atoms, **kwargs)


def _calculator(w: Path, edit=None, **kwargs):
    from molequi import MolequiCalculator

    atoms = molecule("CH3CH2OH")
    if edit is not None:
        edit(atoms)
    atoms.calc = MolequiCalculator(str(w / kwargs.pop("model", "model.molequi")), **kwargs)
    return atoms.get_potential_energy()


def _api_screen(w: Path, **kwargs):
    from molequi.search import screen

    settings = dict(out=w / "out", progress=False, plots=False, embed_3d=False)
    settings.update(kwargs)
    return screen(settings.pop("candidates", w / "mols.smi"), **settings)


CASES: list[Case] = [
    # ------------------------------------------------------------------ train
    Case("train-data-missing", lambda w: train(w, data="nope.extxyz")),
    Case("train-data-empty", lambda w: train(w, data=write(w / "empty.extxyz", ""))),
    Case("train-data-garbage", lambda w: train(w, data=garbage(w, "junk.extxyz"))),
    Case("train-data-json-as-xyz", lambda w: train(w, data=write(w / "j.extxyz", '{"a": 1}'))),
    Case("train-data-png", lambda w: train(w, data=write(w / "img.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64))),
    Case("train-data-folder", lambda w: train(w, data=w)),
    Case("train-data-unlabelled", lambda w: train(w, data=xyz_with(w, "bare.extxyz", lambda a: None))),
    Case("train-data-nan-energy", lambda w: train(w, data=labelled_with(w, "nan.extxyz", energy=float("nan")))),
    Case("train-data-inf-forces", lambda w: train(w, data=labelled_with(w, "inf.extxyz", forces=float("inf")))),
    Case("train-data-absurd-energy", lambda w: train(w, data=labelled_with(w, "big.extxyz", energy=1e30))),
    Case("train-data-nan-positions", lambda w: train(w, data=xyz_with(w, "nanpos.extxyz", _nan, labelled=True))),
    Case("train-data-duplicate-atoms", lambda w: train(w, data=xyz_with(w, "dup.extxyz", _dup, labelled=True))),
    Case("train-data-ghost-element", lambda w: train(w, data=xyz_with(w, "x.extxyz", _ghost, labelled=True))),
    Case("train-data-npz-empty", lambda w: train(w, data=npz_with(w, "e.npz"))),
    Case("train-data-npz-missing-keys", lambda w: train(w, data=npz_with(w, "k.npz", coords=np.zeros((2, 3, 3))))),
    Case("train-data-npz-bad-shapes", lambda w: train(w, data=npz_with(
        w, "s.npz", nuclear_charges=np.array([1, 8, 1]), coords=np.zeros((4, 2, 3)), energies=np.zeros(4),
        forces=np.zeros((4, 2, 3))))),
    Case("train-max-epochs-negative", lambda w: train(w, "--max-epochs", "-1")),
    Case("train-lr-nan", lambda w: train(w, "--lr", "nan")),
    Case("train-lr-negative", lambda w: train(w, "--lr", "-1")),
    Case("train-batch-size-zero", lambda w: train(w, "--batch-size", "0")),
    Case("train-validation-too-large", lambda w: train(w, "--validation", "1000")),
    Case("train-validation-negative", lambda w: train(w, "--validation", "-3")),
    Case("train-cutoff-zero", lambda w: train(w, "--cutoff", "0")),
    Case("train-cutoff-nan", lambda w: train(w, "--cutoff", "nan")),
    Case("train-channels-zero", lambda w: train(w, "--channels", "0")),
    Case("train-l-max-absurd", lambda w: train(w, "--l-max", "9")),
    Case("train-dtype-float16", lambda w: train(w, "--dtype", "float16")),
    Case("train-device-cuda", lambda w: train(w, "--device", "cuda")),
    Case("train-device-unknown", lambda w: train(w, "--device", "banana")),
    Case("train-max-minutes-negative", lambda w: train(w, "--max-minutes", "-5")),
    Case("train-epochs-not-a-number", lambda w: train(w, "--max-epochs", "ten")),
    Case("train-unknown-option", lambda w: train(w, "--bogus")),
    Case("train-config-missing", lambda w: ["train", "--data", str(w / "train.extxyz"), "--out", str(w / "out"),
                                            "--config", str(w / "none.yaml")]),
    Case("train-config-garbage-yaml", lambda w: ["train", "--data", str(w / "train.extxyz"), "--out", str(w / "out"),
                                                 "--config", str(write(w / "g.yaml", "a: [1, 2\n: : ]"))]),
    Case("train-config-unknown-key", lambda w: ["train", "--data", str(w / "train.extxyz"), "--out", str(w / "out"),
                                                "--config", str(write(w / "u.yaml", "learning_rat: 0.1\n"))]),
    Case("train-config-a-list", lambda w: ["train", "--data", str(w / "train.extxyz"), "--out", str(w / "out"),
                                           "--config", str(write(w / "l.yaml", "- 1\n- 2\n"))]),
    Case("train-config-wrong-type", lambda w: ["train", "--data", str(w / "train.extxyz"), "--out", str(w / "out"),
                                               "--config", str(write(w / "t.yaml", "batch_size: many\n"))]),
    Case("train-out-is-a-file", lambda w: train(w, out="tiny.yaml"), out="tiny.yaml"),
    Case("train-out-under-a-file", lambda w: train(w, out="tiny.yaml/run"), out="tiny.yaml"),
    Case("train-out-read-only", lambda w: train(w, out="ro/run") if chmod_readonly(w / "ro") else None,
         out="ro", skip_root=True),
    Case("train-resume-nothing", lambda w: train(w, "--resume")),
    Case("train-resume-corrupt-checkpoint", lambda w: (
        garbage(Path(os.makedirs(w / "out" / "checkpoints", exist_ok=True) or w / "out" / "checkpoints"), "last.pt"),
        ["train", "--out", str(w / "out"), "--resume", "--device", "cpu"])[1]),
    Case("train-resume-with-config", lambda w: train(w, "--resume")),
    Case("train-e0s-missing-file", lambda w: train(w, "--e0s", str(w / "none.json"))),
    Case("train-e0s-garbage", lambda w: train(w, "--e0s", str(write(w / "e0.json", "{not json")))),
    Case("train-e0s-nan", lambda w: train(w, "--e0s", str(write(w / "e0n.json", '{"H": NaN, "C": 1, "O": 2}')))),
    Case("train-energy-key-absent", lambda w: train(w, "--energy-key", "REF_nope")),
    Case("train-test-data-garbage", lambda w: train(w, "--test-data", str(garbage(w, "t.extxyz")))),
    Case("train-run-dir-in-use", lambda w: _dir_locked(w, train(w))),
    # ------------------------------------------------------------------ evaluate
    Case("evaluate-model-missing", lambda w: evaluate(w, "nope.molequi")),
    Case("evaluate-model-empty", lambda w: evaluate(w, write(w / "e.molequi", b""))),
    Case("evaluate-model-garbage", lambda w: evaluate(w, garbage(w, "g.molequi"))),
    Case("evaluate-model-truncated", lambda w: evaluate(w, truncated(w, "model.molequi", "half.molequi"))),
    Case("evaluate-model-foreign-safetensors", lambda w: evaluate(w, foreign_safetensors(w))),
    Case("evaluate-model-pickle", lambda w: evaluate(w, write(w / "m.pt", b"\x80\x04\x95" + b"\0" * 32))),
    Case("evaluate-model-folder", lambda w: evaluate(w, ".")),
    Case("evaluate-model-future-version", lambda w: evaluate(w, hostile_header(w, "v.molequi", format_version="999"))),
    Case("evaluate-model-header-huge-channels", lambda w: evaluate(w, hostile_header(w, "c.molequi", channels=10**9)),
         subprocess=True),
    Case("evaluate-model-header-negative-cutoff", lambda w: evaluate(w, hostile_header(w, "n.molequi", cutoff=-1.0))),
    Case("evaluate-model-header-not-json", lambda w: evaluate(w, hostile_header(w, "j.molequi", units="{oops"))),
    Case("evaluate-data-missing", lambda w: evaluate(w, data="nope.extxyz")),
    Case("evaluate-data-garbage", lambda w: evaluate(w, data=garbage(w, "g.extxyz"))),
    Case("evaluate-data-empty", lambda w: evaluate(w, data=write(w / "e.extxyz", ""))),
    Case("evaluate-data-unlabelled", lambda w: evaluate(w, data=xyz_with(w, "bare.extxyz", lambda a: None))),
    Case("evaluate-data-unknown-element", lambda w: evaluate(w, data=xyz_with(w, "fe.extxyz", _unknown, labelled=True))),
    Case("evaluate-data-nan-positions", lambda w: evaluate(w, data=xyz_with(w, "n.extxyz", _nan, labelled=True))),
    Case("evaluate-data-duplicate-atoms", lambda w: evaluate(w, data=xyz_with(w, "d.extxyz", _dup, labelled=True))),
    Case("evaluate-data-nan-labels", lambda w: evaluate(w, data=labelled_with(w, "nl.extxyz", energy=float("nan")))),
    Case("evaluate-batch-size-zero", lambda w: evaluate(w, "model.molequi", "train.extxyz", "--batch-size", "0")),
    Case("evaluate-device-cuda", lambda w: evaluate(w, "model.molequi", "train.extxyz", "--device", "cuda")),
    Case("evaluate-out-is-a-folder", lambda w: evaluate(w, "model.molequi", "train.extxyz", "--out", str(w))),
    Case("evaluate-out-under-a-file", lambda w: evaluate(w, "model.molequi", "train.extxyz", "--out",
                                                         str(w / "tiny.yaml" / "m.json"))),
    Case("evaluate-plot-is-a-folder", lambda w: evaluate(w, "model.molequi", "train.extxyz", "--plot", str(w))),
    Case("evaluate-out-read-only", lambda w: evaluate(w, "model.molequi", "train.extxyz", "--out",
                                                      str(chmod_readonly(w / "ro") / "m.json")), out="ro", skip_root=True),
    Case("evaluate-calibration-missing", lambda w: evaluate(w, "model.molequi", "train.extxyz", "--calibration",
                                                            str(w / "none.json"))),
    Case("evaluate-calibration-garbage", lambda w: evaluate(w, "model.molequi,model.molequi", "train.extxyz",
                                                            "--calibration", str(write(w / "c.json", "[1, 2")))),
    Case("evaluate-committee-member-missing", lambda w: evaluate(w, "model.molequi," + str(w / "nope.molequi"))),
    Case("evaluate-energy-key-absent", lambda w: evaluate(w, "model.molequi", "train.extxyz", "--energy-key", "nope")),
    Case("evaluate-writes-metrics", lambda w: evaluate(w, "model.molequi", "train.extxyz", "--out", str(w / "out" / "m.json")),
         codes=(0,), check=lambda w, _: json.loads((w / "out" / "m.json").read_text())),
    # ------------------------------------------------------------------ md
    Case("md-model-missing", lambda w: md(w, model="nope.molequi")),
    Case("md-model-garbage", lambda w: md(w, model=garbage(w, "g.molequi"))),
    Case("md-model-truncated", lambda w: md(w, model=truncated(w, "model.molequi", "half.molequi"))),
    Case("md-model-foreign", lambda w: md(w, model=foreign_safetensors(w))),
    Case("md-model-future-version", lambda w: md(w, model=hostile_header(w, "v.molequi", format_version="999"))),
    Case("md-structure-missing", lambda w: md(w, structure="nope.xyz")),
    Case("md-structure-garbage", lambda w: md(w, structure=garbage(w, "g.xyz"))),
    Case("md-structure-empty", lambda w: md(w, structure=write(w / "e.xyz", ""))),
    Case("md-structure-unknown-element", lambda w: md(w, structure=xyz_with(w, "fe.xyz", _unknown))),
    Case("md-structure-ghost-element", lambda w: md(w, structure=xyz_with(w, "x.xyz", _ghost))),
    Case("md-structure-duplicate-atoms", lambda w: md(w, structure=xyz_with(w, "d.xyz", _dup))),
    Case("md-structure-nan-positions", lambda w: md(w, structure=xyz_with(w, "n.xyz", _nan))),
    Case("md-structure-frame-out-of-range", lambda w: md(w, structure="eth.xyz@5")),
    Case("md-structure-bad-index", lambda w: md(w, structure="eth.xyz@abc")),
    Case("md-dt-zero", lambda w: ["md", str(w / "model.molequi"), str(w / "eth.xyz"), "--steps", "3", "--dt", "0",
                                  "--out", str(w / "out"), "--device", "cpu"]),
    Case("md-dt-nan", lambda w: ["md", str(w / "model.molequi"), str(w / "eth.xyz"), "--steps", "3", "--dt", "nan",
                                 "--out", str(w / "out"), "--device", "cpu"]),
    Case("md-dt-inf", lambda w: ["md", str(w / "model.molequi"), str(w / "eth.xyz"), "--steps", "3", "--dt", "inf",
                                 "--out", str(w / "out"), "--device", "cpu"]),
    Case("md-steps-negative", lambda w: md(w, steps="-1")),
    Case("md-temperature-negative", lambda w: md(w, "--temperature", "-5")),
    Case("md-temperature-nan", lambda w: md(w, "--temperature", "nan")),
    Case("md-friction-negative", lambda w: md(w, "--ensemble", "nvt", "--friction", "-1")),
    Case("md-replicas-zero", lambda w: md(w, "--replicas", "0")),
    Case("md-skin-negative", lambda w: md(w, "--skin", "-1")),
    Case("md-min-distance-nan", lambda w: md(w, "--min-distance", "nan")),
    Case("md-max-temperature-negative", lambda w: md(w, "--max-temperature", "-1")),
    Case("md-device-cuda", lambda w: md(w, "--device", "cuda")),
    Case("md-device-unknown", lambda w: md(w, "--device", "tpu")),
    Case("md-dtype-bad", lambda w: md(w, "--dtype", "float16")),
    Case("md-out-is-a-file", lambda w: [a if a != str(w / "out") else str(w / "tiny.yaml") for a in md(w)], out="tiny.yaml"),
    Case("md-out-read-only", lambda w: [a if a != str(w / "out") else str(chmod_readonly(w / "ro") / "md")
                                        for a in md(w)], out="ro", skip_root=True),
    Case("md-resume-without-restart", lambda w: md(w, "--resume")),
    Case("md-resume-corrupt-restart", lambda w: md(w, "--resume") if garbage(
        Path(os.makedirs(w / "out", exist_ok=True) or w / "out"), "restart.safetensors") else None),
    Case("md-resume-truncated-restart", lambda w: (
        main(md(w, "--restart-every", "1")) == 0 and truncated(w / "out", "restart.safetensors", "restart.safetensors"),
        md(w, "--resume", steps="6"))[1]),
    Case("md-resume-foreign-restart", lambda w: (
        os.makedirs(w / "out", exist_ok=True), shutil.copy(foreign_safetensors(w), w / "out" / "restart.safetensors"),
        md(w, "--resume"))[2]),
    Case("md-resume-ase-engine", lambda w: md(w, "--resume", "--engine", "ase")),
    Case("md-resume-other-model", lambda w: (
        main(md(w, "--restart-every", "1")) == 0 and hostile_header(w, "model.molequi", cutoff=4.0),
        md(w, "--resume", steps="6"))[1]),
    Case("md-calibration-garbage", lambda w: md(w, "--calibration", str(write(w / "c.json", "{oops")))),
    Case("md-unknown-option", lambda w: md(w, "--temprature", "300")),
    Case("md-run-dir-in-use", lambda w: _dir_locked(w, md(w))),
    Case("md-far-away-atoms", lambda w: md(w, structure=xyz_with(w, "far.xyz", _far)), codes=(0, 2), subprocess=True),
    # ------------------------------------------------------------------ screen
    Case("screen-input-missing", lambda w: screen_run(w)[:1] + [str(w / "nope.smi")] + screen_run(w)[2:]),
    Case("screen-input-empty", lambda w: ["screen", str(write(w / "e.smi", "")), "--out", str(w / "out")]),
    Case("screen-input-folder", lambda w: ["screen", str(w), "--out", str(w / "out")]),
    Case("screen-input-not-gzip", lambda w: ["screen", str(write(w / "m.smi.gz", SMILES)), "--out", str(w / "out"),
                                             "--no-progress"]),
    Case("screen-input-truncated-gzip", lambda w: ["screen", str(write(w / "t.smi.gz", gzip.compress(SMILES.encode())[:20])),
                                                   "--out", str(w / "out"), "--no-progress"]),
    Case("screen-csv-no-smiles-column", lambda w: ["screen", str(write(w / "n.csv", "a,b\n1,2\n")), "--out", str(w / "out")]),
    Case("screen-csv-smiles-column-absent", lambda w: ["screen", str(w / "mols.csv"), "--smiles-column", "SMI",
                                                       "--out", str(w / "out")]),
    Case("screen-csv-header-only", lambda w: ["screen", str(write(w / "h.csv", "id,smiles\n")), "--out", str(w / "out")]),
    Case("screen-csv-unbalanced-quote", lambda w: screen_run(w, "--no-3d")[:1] + [
        str(write(w / "q.csv", 'id,smiles\na,CCO\nb,"CCN\nc,CCC\nd,c1ccccc1\n'))] + screen_run(w, "--no-3d")[2:],
         codes=(0,), check=_bad_quote_check),
    Case("screen-csv-nul-byte", lambda w: screen_run(w, "--no-3d")[:1] + [
        str(write(w / "z.csv", b"id,smiles\na,CCO\nb,C\0C\nc,CCC\n"))] + screen_run(w, "--no-3d")[2:], codes=(0,)),
    Case("screen-sdf-garbage", lambda w: ["screen", str(garbage(w, "g.sdf")), "--out", str(w / "out"), "--no-progress"],
         codes=(1, 2)),
    Case("screen-builtin-pool-unknown", lambda w: ["screen", "moses:bogus", "--out", str(w / "out")]),
    Case("screen-model-missing", lambda w: screen_run(w, "--model", str(w / "nope.molequi"), "--objective", "energy:min")),
    Case("screen-model-garbage", lambda w: screen_run(w, "--model", str(garbage(w, "g.molequi")), "--objective", "energy:min")),
    Case("screen-model-foreign", lambda w: screen_run(w, "--model", str(foreign_safetensors(w)), "--objective", "energy:min")),
    Case("screen-model-without-objective", lambda w: screen_run(w, "--model", str(w / "model.molequi"), "--device", "cpu")),
    Case("screen-model-with-no-3d", lambda w: screen_run(w, "--model", str(w / "model.molequi"), "--objective",
                                                         "energy:min", "--no-3d", "--device", "cpu")),
    Case("screen-objective-bad-syntax", lambda w: screen_run(w, "--objective", "qed:maximum")),
    Case("screen-objective-unknown-column", lambda w: screen_run(w, "--objective", "gap:max")),
    Case("screen-objective-window-reversed", lambda w: screen_run(w, "--objective", "qed:target=5..1")),
    Case("screen-weights-mismatch", lambda w: screen_run(w, "--objective", "qed:max", "--weights", "1,2")),
    Case("screen-weights-nan", lambda w: screen_run(w, "--objective", "qed:max", "--weights", "nan")),
    Case("screen-kappa-negative", lambda w: screen_run(w, "--kappa", "-1")),
    Case("screen-kappa-nan", lambda w: screen_run(w, "--kappa", "nan")),
    Case("screen-sa-max-absurd", lambda w: ["screen", str(w / "mols.smi"), "--sa-max", "50", "--out", str(w / "out")]),
    Case("screen-alerts-unknown", lambda w: ["screen", str(w / "mols.smi"), "--alerts", "pains,bogus", "--out", str(w / "out")]),
    Case("screen-top-zero", lambda w: screen_run(w, "--top", "0")),
    Case("screen-chunk-size-zero", lambda w: screen_run(w, "--chunk-size", "0")),
    Case("screen-batch-size-negative", lambda w: screen_run(w, "--batch-size", "-4")),
    Case("screen-workers-zero", lambda w: screen_run(w, "--workers", "0")),
    Case("screen-heavy-atoms-reversed", lambda w: screen_run(w, "--heavy-atoms", "9..1")),
    Case("screen-heavy-atoms-garbage", lambda w: screen_run(w, "--heavy-atoms", "many")),
    Case("screen-lipinski-absurd", lambda w: screen_run(w, "--lipinski-max-violations", "9")),
    Case("screen-ring-size-two", lambda w: screen_run(w, "--max-ring-size", "2")),
    Case("screen-std-threshold-negative", lambda w: screen_run(w, "--std-threshold", "-1")),
    Case("screen-std-threshold-nan", lambda w: screen_run(w, "--std-threshold", "nan")),
    Case("screen-calibration-missing", lambda w: screen_run(w, "--model", str(w / "model.molequi"), "--objective",
                                                            "energy:min", "--calibration", str(w / "none.json"))),
    Case("screen-device-cuda", lambda w: screen_run(w, "--device", "cuda")),
    Case("screen-device-unknown", lambda w: screen_run(w, "--device", "gpu0")),
    Case("screen-out-is-a-file", lambda w: screen_run(w, out="tiny.yaml"), out="tiny.yaml"),
    Case("screen-out-under-a-file", lambda w: screen_run(w, out="tiny.yaml/run"), out="tiny.yaml"),
    Case("screen-out-read-only", lambda w: screen_run(w, out="ro/run") if chmod_readonly(w / "ro") else None,
         out="ro", skip_root=True),
    Case("screen-resume-input-edited-in-place", _edit_in_place),
    Case("screen-resume-model-replaced", _model_replaced),
    Case("screen-resume-other-settings", _other_settings),
    Case("screen-resume-corrupt-manifest", lambda w: (main(screen_run(w, "--no-3d")),
                                                      write(w / "out" / "manifest.json", "{trunc"),
                                                      screen_run(w, "--no-3d"))[2]),
    Case("screen-chunks-without-manifest", lambda w: (os.makedirs(w / "out" / "chunks"), screen_run(w, "--no-3d"))[1]),
    Case("screen-concurrent-run", _screen_locked),
    Case("screen-unknown-option", lambda w: screen_run(w, "--objectve", "qed:max")),
    # ------------------------------------------------------------------ Python API
    Case("api-load-model-missing", _api(lambda w: _load(w, "nope.molequi"))),
    Case("api-load-model-garbage", _api(lambda w, p: _load(w, p), lambda w: garbage(w, "g.molequi"))),
    Case("api-load-model-truncated", _api(lambda w, p: _load(w, p), lambda w: truncated(w, "model.molequi", "h.molequi"))),
    Case("api-load-model-folder", _api(lambda w: _load(w, "."))),
    Case("api-load-model-foreign", _api(lambda w, p: _load(w, p), foreign_safetensors)),
    Case("api-load-model-cuda", _api(lambda w: _load(w, device="cuda"))),
    Case("api-load-model-bad-dtype", _api(lambda w: _load(w, dtype="float16"))),
    Case("api-predict-unknown-element", _api(lambda w: _predict(w, _unknown))),
    Case("api-predict-nan-positions", _api(lambda w: _predict(w, _nan))),
    Case("api-predict-duplicate-atoms", _api(lambda w: _predict(w, _dup))),
    Case("api-predict-ghost-element", _api(lambda w: _predict(w, _ghost))),
    Case("api-predict-empty-atoms", _api(lambda w: __import__("molequi").predict(_load(w), Atoms()))),
    Case("api-predict-batch-size-zero", _api(lambda w: _predict(w, batch_size=0))),
    Case("api-calculator-missing-model", _api(lambda w: _calculator(w, model="nope.molequi"))),
    Case("api-calculator-unknown-element", _api(lambda w: _calculator(w, _unknown))),
    Case("api-calculator-nan-positions", _api(lambda w: _calculator(w, _nan))),
    Case("api-calculator-duplicate-atoms", _api(lambda w: _calculator(w, _dup))),
    Case("api-calculator-cuda", _api(lambda w: _calculator(w, device="cuda"))),
    Case("api-screen-input-missing", _api(lambda w: _api_screen(w, candidates=w / "nope.smi"))),
    Case("api-screen-unknown-setting", _api(lambda w: _api_screen(w, sa_maximum=3))),
    Case("api-screen-bad-objective", _api(lambda w: _api_screen(w, objective="qed:up"))),
    Case("api-screen-top-zero", _api(lambda w: _api_screen(w, top=0))),
    Case("api-screen-out-is-a-file", _api(lambda w: _api_screen(w, out=w / "tiny.yaml")), out="tiny.yaml"),
    Case("api-screen-not-a-scorer", _api(lambda w: _api_screen(w, scorers=["model.molequi"], objective="qed:max",
                                                                embed_3d=True))),
    Case("api-predict-far-away-atoms", _api(lambda w: _predict(w, _far)), codes=(0, 2), subprocess=True),
]


def _in_child(case_id: str, folder: str, argv: list[str] | None) -> int:
    """Body of a crash-class case's child process: the CLI (``argv``) or the case's API call."""
    if argv is not None:
        return main(argv)
    call = next(c for c in CASES if c.id == case_id).build(Path(folder))
    try:
        call()
    except MolequiError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _limit_memory() -> None:
    """A crash-class child may not take the (shared) machine down: 6 GiB of address space."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))


def run_case(case: Case, built: object, folder: Path, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a built case; an API case's MolequiError counts as exit 2."""
    if case.subprocess:
        argv = None if callable(built) else [str(a) for a in built]
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                "import test_hostile_inputs as t\n"
                f"sys.exit(t._in_child({case.id!r}, {str(folder)!r}, {argv!r}))\n")
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        try:
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                                  cwd=folder, preexec_fn=_limit_memory)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{case.id}: hang (no answer within 120 s)")
        assert done.returncode >= 0, f"{case.id}: killed by signal {-done.returncode} (a hard crash)"
        return done.returncode, done.stdout, done.stderr
    capsys.readouterr()
    if callable(built):
        try:
            built()
        except MolequiError as error:
            return 2, "", f"error: {error}\n"
        return 0, "", ""
    try:
        code = main([str(a) for a in built])
    except SystemExit as exit_:  # argparse
        code = exit_.code if isinstance(exit_.code, int) else 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_case(case: Case, pristine: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    if case.skip_root and IS_ROOT:
        pytest.skip("root ignores read-only permissions")
    folder = tmp_path / "case"
    shutil.copytree(pristine, folder)
    monkeypatch.chdir(folder)
    try:
        built = case.build(folder)  # the hostile input (and, for resume cases, the first run)
        before = tree_digest(folder, skip=folder / case.out)
        code, stdout, stderr = run_case(case, built, folder, capsys)
        after = tree_digest(folder, skip=folder / case.out)
    finally:
        while HELD:
            HELD.pop().close()
        for ro in folder.rglob("ro"):
            ro.chmod(0o755)
    assert "Traceback" not in stderr, f"{case.id}: traceback for a user's mistake:\n{stderr}"
    assert code in case.codes, f"{case.id}: exit code {code} (expected {case.codes}); stderr:\n{stderr}"
    if code == 2:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{case.id}: not one error line:\n{stderr}"
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"{case.id}: changed outside {case.out}: {changed}"
    if case.check is not None:
        case.check(folder, stdout)


def test_corpus_covers_every_command_and_the_api() -> None:
    kinds = {c.id.split("-")[0] for c in CASES}
    assert kinds == {"train", "evaluate", "md", "screen", "api"} and len(CASES) >= 100, (kinds, len(CASES))


def test_full_disk_is_one_line_and_leaves_no_partial_file(pristine, tmp_path, capsys, monkeypatch):
    """A disk that fills up while a chunk is written: one error line, exit 2, no half-written chunk."""
    import errno

    import molequi.utils

    folder = tmp_path / "case"
    shutil.copytree(pristine, folder)
    real_replace = os.replace

    def full_disk(source, target, *args, **kwargs):
        if str(target).endswith(".csv"):
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(molequi.utils.os, "replace", full_disk)
    capsys.readouterr()
    assert main(screen_run(folder, "--no-3d")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No space left on device: ") and err.count("\n") == 1, err
    monkeypatch.undo()
    leftovers = [p.name for p in (folder / "out").rglob("*") if p.is_file() and p.suffix == ".csv" or ".tmp" in p.name]
    assert leftovers == [], leftovers
