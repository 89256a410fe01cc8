"""The README's first command, scripts/quickstart.sh, end to end at a small size (~1-2 min).

Every stage runs for real (GFN2-xTB data, training, evaluation, MD, a QM9 gap model and a
screen); only the sizes and time budgets are cut through the script's own knobs. Skipped when
an optional part (tblite, qm9pack, RDKit) is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SMOKE = {
    "QUICKSTART_FRAMES": "80",
    "QUICKSTART_TEST_FRAMES": "20",
    "QUICKSTART_TRAIN_MINUTES": "0.15",
    "QUICKSTART_MD_STEPS": "40",
    "QUICKSTART_GAP_MOLECULES": "260",
    "QUICKSTART_GAP_MINUTES": "0.1",
    "QUICKSTART_SCREEN_MOLECULES": "60",
}


@pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("tblite", "qm9pack", "rdkit")),
    reason="the quickstart needs the xtb, qm9 and search extras",
)
@pytest.mark.slow
@pytest.mark.timeout(1200)  # above the script's own 900 s limit, so that its error is the one reported
def test_quickstart_runs_every_stage(tmp_path):
    out = tmp_path / "quickstart"
    env = {**os.environ, **SMOKE, "QUICKSTART_OUT": str(out), "MOLEQUI_SKIP_SETUP": "1",
           "MOLEQUI_VENV": str(Path(sys.prefix)), "OMP_NUM_THREADS": "1",
           "MOLEQUI_CACHE": str(tmp_path / "cache")}  # the QM9 parse never touches the user cache
    if not (Path(sys.prefix) / "bin" / "molequi").exists():
        pytest.skip(f"no molequi console script in {sys.prefix} (install the package into this environment)")
    result = subprocess.run(["bash", str(ROOT / "scripts" / "quickstart.sh")], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for stage in ("1/6", "2/6", "3/6", "4/6", "5/6", "6/6"):
        assert f"== {stage}" in result.stdout
    metrics = json.loads((out / "model" / "test_metrics.json").read_text())
    assert metrics["n_structures"] == 20 and metrics["forces_mae_meV_per_A"] > 0
    assert "energy drift per system" in result.stdout
    gap = json.loads((out / "gap_model" / "test_metrics.json").read_text())
    assert gap["gap_mae"] > 0 and "energy_mae_meV" not in gap
    for name in ("scored.csv", "top.sdf", "report.html"):
        assert (out / "screen" / name).stat().st_size > 0
    assert "top " in result.stdout and "gap_mean" in result.stdout
