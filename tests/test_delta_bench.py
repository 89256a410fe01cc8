"""scripts/bench_delta.py's table: the budget and machine it names are the runs' own."""

from __future__ import annotations

import argparse
from pathlib import Path

from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_delta.py"


def load_bench():
    return load_script(SCRIPT)


def result(mode: str, **extra) -> dict:
    return {"molecule": "ethanol", "n_train": 50, "mode": mode, "forces_mae_meV_per_A": 20.0, "energy_mae_meV": 5.0,
            "epochs": 10, "cpu_s": 100.0, "load_before": 1.0, "load_after": 1.5, **extra}


def test_table_names_the_budget_the_runs_had_not_the_default():
    bench = load_bench()
    args = argparse.Namespace(minutes=10.0, threads=1, command="python scripts/bench_delta.py --molecules ethanol "
                              "--minutes 3; python scripts/bench_delta.py --molecules aspirin --minutes 3")
    machine = {"cpu": "the runs' CPU", "torch": "2.13.0+cpu"}
    text = bench.markdown([result("direct"), result("delta")], machine, args)
    assert "3 min per run" in text and "10 min" not in text
    assert "the runs' CPU" in text


def test_each_result_keeps_its_own_budget():
    bench = load_bench()
    args = argparse.Namespace(minutes=10.0, command="python scripts/bench_delta.py --minutes 10")
    results = [result("direct", budget_minutes=5.0), result("delta", budget_minutes=5.0)]
    assert bench.budget_text(results, args) == "5 min"
