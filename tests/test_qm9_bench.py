"""scripts/bench_qm9.py end to end against a stand-in ``molequi train`` (no training, no QM9)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_qm9.py"

FAKE_MOLEQUI = """
import json, sys, pathlib
args = sys.argv[1:]
assert args[0] == "train", args
out = pathlib.Path(args[args.index("--out") + 1])
__import__("yaml").safe_load(open(args[args.index("--config") + 1]))
target = args[args.index("--target") + 1]
out.mkdir(parents=True, exist_ok=True)
metrics = {"energy_mae_meV": 12.0, "energy_rmse_meV": 20.0} if target == "U0" else {"gap_mae": 0.15, "gap_rmse": 0.2}
(out / "test_metrics.json").write_text(json.dumps(metrics))
"""


def load_bench():
    return load_script(SCRIPT)


def test_smoke_run_writes_json_and_markdown(tmp_path):
    bench = load_bench()
    fake = tmp_path / "fake_molequi.py"
    fake.write_text(FAKE_MOLEQUI)
    out = tmp_path / "bench"
    assert bench.main(["--out", str(out), "--smoke", "--molequi", f"{sys.executable} {fake}"]) == 0
    results = json.loads((out / "results.json").read_text())
    runs = {run["target"]: run for run in results["runs"]}
    assert runs["U0"]["mae_mev"] == 12.0 and runs["gap"]["mae_mev"] == 150.0
    assert "qm9:train?n=200" in runs["gap"]["command"] and "--device cpu" in runs["gap"]["command"]
    assert "qm9:test?n=500" in runs["gap"]["command"] and "--max-minutes 1" in runs["gap"]["command"]
    assert runs["gap"]["command"].endswith("--target gap") and runs["U0"]["command"].endswith("--target U0")
    assert yaml.safe_load((out / "gap_n200" / "config.yaml").read_text())["model"]  # the architecture
    table = (out / "results.md").read_text()
    assert "| gap | 200 | 150.00 |" in table and "PaiNN 5.85 meV" in table
    assert "to be checked against the papers" in table


def test_metric_layouts():
    bench = load_bench()
    assert bench.find_mae_ev({"gap_mae": 0.2}, "gap") == 0.2
    assert bench.find_mae_ev({"energy_mae_meV": 5.0, "gap_mae": 0.1}, "U0") == 0.005
    assert bench.find_mae_ev({"forces_mae_meV_per_A": 1.0}, "gap") is None
    assert bench.find_mae_ev({"gap_mae": 0.1}, "U0") is None
