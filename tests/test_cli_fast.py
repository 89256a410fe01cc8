"""``molequi --help`` answers at once: no command's parser imports torch, RDKit, e3nn, ASE or
matplotlib (seconds each), and the literals the parsers use instead equal the library's registries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from molequi.cli import choices
from molequi.cli.main import COMMANDS

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "rdkit", "e3nn", "torch_geometric", "ase", "matplotlib", "scipy")

# Runs the CLI as `python -m molequi.cli.main ARGS` would, then prints the heavy top-level
# packages that ended up imported (as JSON on the last line of stdout).
PROBE = """
import json, runpy, sys
heavy = set(json.loads(sys.argv[2]))
sys.argv = ["molequi", *json.loads(sys.argv[1])]
try:
    runpy.run_module("molequi.cli.main", run_name="__main__")
except SystemExit:
    pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & heavy)))
"""


def heavy_imports(argv: list[str]) -> list[str]:
    """The heavy packages imported by ``molequi ARGV`` (in a fresh interpreter)."""
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY)],
                            capture_output=True, text=True, cwd=REPO, timeout=120,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], *[[command, "--help"] for command in COMMANDS]],
                         ids=lambda argv: " ".join(argv))
def test_help_imports_nothing_heavy(argv):
    assert heavy_imports(argv) == []


def test_importtime_of_help_lists_no_heavy_module():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "molequi.cli.main", "--help"],
                            capture_output=True, text=True, cwd=REPO, timeout=120,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and "COMMAND" in result.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_search_never_imports_the_cli():
    for path in (REPO / "molequi" / "search").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "molequi.cli" not in text, f"{path.name} imports molequi.cli"


def test_literals_equal_the_library_registries():
    from molequi.md.output import TRAJ_FORMATS
    from molequi.md.ensembles import ENSEMBLES
    from molequi.md.runner import ENGINES
    from molequi.models.export import FORMATS
    from molequi.models.heads import HEADS
    from molequi.models.io import DTYPES
    from molequi.training.config import DEFAULT_MAX_EPOCHS, TrainingConfig

    assert choices.DTYPES == tuple(DTYPES)
    assert choices.MD_ENSEMBLES == tuple(ENSEMBLES)
    assert choices.MD_ENGINES == tuple(ENGINES)
    assert choices.TRAJ_FORMATS == tuple(TRAJ_FORMATS)
    assert choices.EXPORT_FORMATS == tuple(FORMATS)
    assert choices.HEAD_KINDS == {kind: h.description for kind, h in HEADS.items()}
    assert choices.DEFAULT_MAX_EPOCHS == DEFAULT_MAX_EPOCHS
    defaults = TrainingConfig()
    for key, value in choices.TRAINING_DEFAULTS.items():
        owner = defaults.model if key.startswith("model.") else defaults
        assert getattr(owner, key.removeprefix("model.")) == value, key


def test_train_flags_have_a_shown_default():
    from molequi.cli.train import OVERRIDES

    assert {key for key, _, _ in OVERRIDES.values()} == set(choices.TRAINING_DEFAULTS)
