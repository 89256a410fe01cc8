"""The core install (``pip install -e .``, no extras) trains, evaluates, runs MD, exports and
explains itself; ``molequi screen`` without the search extra says what to install.

The extras are installed in the test environment, so the subprocesses here hide them: a
replacement of the standard path finder answers "not installed" for the extras' top-level
modules, exactly as ``importlib.util.find_spec`` and ``import`` see a package that is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

REPO = Path(__file__).resolve().parents[1]
EXTRAS = ("rdkit", "dask", "distributed", "tblite", "qm9pack", "molbloom", "moses", "pandas")

HIDE_EXTRAS = f"""
import importlib.machinery, sys
HIDDEN = {set(EXTRAS)!r}
class WithoutExtras(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
sys.meta_path[:] = [WithoutExtras if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""


def run_without_extras(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-c", HIDE_EXTRAS + code], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_the_hider_hides():
    result = run_without_extras("import importlib.util\nassert importlib.util.find_spec('rdkit') is None\nimport rdkit")
    assert result.returncode != 0 and "No module named 'rdkit'" in result.stderr


def test_help_of_every_command_without_extras():
    code = """
import contextlib, io, json
from molequi.cli.main import COMMANDS, main
codes = {}
for argv in [["--help"]] + [[name, "--help"] for name in COMMANDS]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
    codes[" ".join(argv)] = [code, out.getvalue(), err.getvalue()]
leaked = sorted(m for m in sys.modules if m.split(".")[0] in HIDDEN)
print(json.dumps({"codes": codes, "leaked": leaked}))
"""
    result = run_without_extras(code)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["leaked"] == []
    codes = report["codes"]
    for argv, (code, out, err) in codes.items():
        if argv == "screen --help":
            assert code == 2
            lines = err.strip().splitlines()
            assert len(lines) == 1 and "pip install 'molequi[search]'" in lines[0], err
        else:
            assert code == 0, (argv, err)
            assert out.startswith("usage: molequi"), (argv, out[:200])
    assert {"train --help", "evaluate --help", "md --help", "screen --help"} <= set(codes)
    assert "not installed: molequi screen needs RDKit" in " ".join(codes["--help"][1].split())


def _water_frames(path: Path, n: int = 6) -> None:
    rng = np.random.default_rng(1)
    frames = []
    for k in range(n):
        atoms = molecule("H2O")
        atoms.positions += rng.normal(scale=0.03, size=(3, 3))
        atoms.calc = SinglePointCalculator(atoms, energy=-10.0 + 0.05 * k, forces=rng.normal(scale=0.1, size=(3, 3)))
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")


@pytest.mark.slow
def test_train_evaluate_md_without_extras(tmp_path):
    data = tmp_path / "water.extxyz"
    _water_frames(data)
    code = f"""
from molequi.cli.main import main
steps = [
    ["train", "--data", "{data}", "--out", "run", "--max-epochs", "1", "--validation", "2", "--channels", "4",
     "--no-progress", "--device", "cpu"],
    ["evaluate", "run/model.molequi", "{data}", "--device", "cpu", "--out", "metrics.json"],
    ["md", "run/model.molequi", "{data}", "--steps", "5", "--dt", "0.5", "--out", "md", "--device", "cpu",
     "--no-progress"],
    ["export", "run/model.molequi", "--out", "model.pt", "--device", "cpu"],
]
for argv in steps:
    code = main(argv)
    assert code == 0, (argv, code)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in HIDDEN)
assert not leaked, leaked
"""
    result = run_without_extras(code, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["n_structures"] == 6
    assert any((tmp_path / "md").iterdir())
    assert (tmp_path / "model.pt").stat().st_size > 0
