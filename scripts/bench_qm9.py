#!/usr/bin/env python
"""QM9 learning curve: U0 and HOMO–LUMO gap test MAE versus training-set size and time.

Each point trains one model through the ``molequi train`` command and reads the
``test_metrics.json`` it writes into its ``--out`` folder:

    molequi train --data 'qm9:train?n=N' --test-data 'qm9:test' --config X.yaml \\
        --out RUN --device cuda --max-minutes M --target U0|gap

Targets (one model per target and size, as in the QM9 literature):

* ``U0``  — ``--target U0``: the energy label of the QM9 reader *is* U0 (eV), so this is a plain
  energy model (per-atom E0s fitted by least squares, no forces).
* ``gap`` — ``--target gap``: an intensive property head (eV), energy and force losses off.

Usage:

    python scripts/bench_qm9.py --out runs/bench_qm9                      # GPU, n ∈ {1000, 10000, 110000}
    python scripts/bench_qm9.py --out runs/bench_qm9 --sizes 1000 10000 --max-minutes 30
    python scripts/bench_qm9.py --out /tmp/qm9_smoke --smoke         # CPU, n = 200, 1 minute
    python scripts/bench_qm9.py --out /tmp/qm9_plan --dry-run        # print the commands only

Writes ``<out>/results.json`` and ``<out>/results.md`` (table, machine, commands). The
published numbers quoted in the table are **values from the literature, not yet checked against the
papers** (PaiNN, Schütt et al. 2021; DimeNet++, Gasteiger et al. 2020), both with 110k
training molecules.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

DEFAULT_SIZES = (1000, 10000, 110000)
TARGETS = ("U0", "gap")

REFERENCES_MEV = {
    "U0": {"PaiNN": 5.85, "DimeNet++": 6.32},
}
"""Published test MAE (meV, 110k training molecules): values from the literature, not yet checked
against the papers."""

BASE_CONFIG: dict[str, Any] = {
    "model": {"cutoff": 5.0, "channels": 64, "l_max": 2, "edge_l_max": None, "num_layers": 2, "correlation": 3},
    "batch_size": 32,
    "validation": 0.05,
    "seed": 0,
}
"""Shared settings (the layout of ``molequi/training/default.yaml``: training keys at the top,
``model:`` nested); the per-target parts are added by :func:`target_config`. Override with
``--base-config FILE.yaml`` (deep-merged)."""

REPO = Path(__file__).resolve().parents[1]


def deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def target_config(target: str, base: dict) -> dict:
    """Training config for one target (the ``--target`` flag adds the head and the weights)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {TARGETS}")
    return dict(base)


def find_mae_ev(metrics: dict, target: str) -> float | None:
    """The test MAE of ``target`` in eV from the ``test_metrics.json`` of ``molequi train``:
    ``energy_mae_meV`` for U0 (the energy label of the QM9 reader), ``<target>_mae`` (eV) else."""
    if target == "U0":
        value = metrics.get("energy_mae_meV")
        return None if value is None else float(value) * 1e-3
    value = metrics.get(f"{target}_mae")
    return None if value is None else float(value)


def machine(device: str) -> dict[str, Any]:
    """:func:`molequi.utils.machine_info` plus the qm9pack version (the data's provenance)."""
    import importlib.metadata

    from molequi.utils import machine_info

    info = machine_info(device)
    try:
        info["qm9pack"] = importlib.metadata.version("qm9pack")
    except importlib.metadata.PackageNotFoundError:
        pass
    return info


def run_point(args: argparse.Namespace, target: str, n_train: int, base: dict) -> dict[str, Any]:
    run_dir = args.out / f"{target}_n{n_train}"
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(target_config(target, base), sort_keys=False))
    test_spec = f"qm9:test?n={args.n_test}" if args.n_test else "qm9:test"
    command = args.molequi + [
        "train",
        "--data", f"qm9:train?n={n_train}",
        "--test-data", test_spec,
        "--config", str(config_path),
        "--out", str(run_dir / "model"),
        "--device", args.device,
        "--max-minutes", f"{args.max_minutes:g}",
        "--target", target,
    ]  # fmt: skip
    record: dict[str, Any] = {
        "target": target,
        "n_train": n_train,
        "test": test_spec,
        "max_minutes": args.max_minutes,
        "command": shlex.join(command),
    }
    print(f"[bench_qm9] {record['command']}", flush=True)
    if args.dry_run:
        return record | {"status": "dry-run"}
    if (run_dir / "model").exists():  # a benchmark rerun measures afresh (molequi train would refuse)
        print(f"[bench_qm9] replacing the previous run in {run_dir / 'model'}", flush=True)
        shutil.rmtree(run_dir / "model")
    start = time.perf_counter()
    with open(run_dir / "train.log", "w") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    record["wall_s"] = round(time.perf_counter() - start, 1)
    record["returncode"] = result.returncode
    metrics_path = run_dir / "model" / "test_metrics.json"
    if result.returncode != 0 or not metrics_path.is_file():
        tail = (run_dir / "train.log").read_text(errors="replace").splitlines()[-5:]
        print(f"[bench_qm9] FAILED ({result.returncode}); see {run_dir / 'train.log'}:\n  " + "\n  ".join(tail))
        return record | {"status": "failed", "log_tail": tail}
    metrics = json.loads(metrics_path.read_text())
    mae = find_mae_ev(metrics, target)
    record |= {"status": "ok", "metrics": metrics, "mae_mev": None if mae is None else round(mae * 1e3, 3)}
    for key in ("train_seconds", "training_seconds", "train_time_s", "wall_seconds"):
        if isinstance(metrics.get(key), (int, float)):
            record["train_s"] = float(metrics[key])
            break
    print(f"[bench_qm9] {target} n={n_train}: MAE {record['mae_mev']} meV in {record['wall_s']} s", flush=True)
    return record


def portable(command: str) -> str:
    """``command`` as a reader would type it: this machine's interpreter, virtual environment and
    checkout paths replaced by ``python``, ``molequi`` and relative paths."""
    words = []
    for word in shlex.split(command):
        if word == sys.executable or Path(word).name in ("python", "python3") and "/" in word:
            word = "python"
        elif Path(word).name == "molequi" and "/" in word:
            word = "molequi"
        elif word.startswith(str(REPO) + "/"):
            word = word[len(str(REPO)) + 1:]
        words.append(word)
    return shlex.join(words)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Date: {results['date']}  ",
        f"Machine: {results['machine'].get('gpu') or 'no GPU'}; CPU {results['machine'].get('cpu')}, "
        f"{results['machine']['cpu_count']} cores; "
        f"{results['machine']['platform']}; torch {results['machine'].get('torch')}; "
        f"molequi {results['machine'].get('molequi')} ({results['machine'].get('git_commit', '?')[:10]}); "
        f"qm9pack {results['machine'].get('qm9pack')}  ",
        f"Command: `{portable(results['command'])}`  ",
        f"Split: seed 0, 110,000 train / 10,000 validation / 10,831 test; test set `{results['runs'][0]['test']}`"
        if results["runs"]
        else "",
        "",
        "| target | n_train | test MAE (meV) | wall time (s) | time limit (min) | status |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for run in results["runs"]:
        mae = "—" if run.get("mae_mev") is None else f"{run['mae_mev']:.2f}"
        wall = run.get("train_s", run.get("wall_s"))
        lines.append(
            f"| {run['target']} | {run['n_train']:,} | {mae} | {'—' if wall is None else f'{wall:.0f}'} "
            f"| {run['max_minutes']:g} | {run['status']} |"
        )
    lines += ["", "Published references (n_train = 110,000; values from the literature, to be checked against the papers):", ""]
    for target, refs in REFERENCES_MEV.items():
        lines += [f"* {target}: " + ", ".join(f"{name} {value} meV" for name, value in refs.items())]
    lines += ["", "Per-run commands:", ""] + [f"* `{portable(run['command'])}`" for run in results["runs"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="training-set sizes")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    parser.add_argument("--max-minutes", type=float, default=60.0, help="time limit of each training run")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n-test", type=int, default=None, help="test subsample (default: the whole 10,831)")
    parser.add_argument("--base-config", type=Path, help="YAML deep-merged over the built-in base config")
    parser.add_argument("--molequi", default="molequi", help="the molequi command (e.g. 'python -m molequi.cli.main')")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run: n=200, 1 minute, 500 test molecules")
    parser.add_argument("--dry-run", action="store_true", help="write configs and print the commands only")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.max_minutes, args.device, args.n_test = [200], 1.0, "cpu", args.n_test or 500
    args.molequi = shlex.split(args.molequi)
    if not args.dry_run and shutil.which(args.molequi[0]) is None:
        parser.error(f"'{args.molequi[0]}' not found; activate the molequi environment or pass --molequi")
    base = BASE_CONFIG
    if args.base_config:
        base = deep_merge(base, yaml.safe_load(args.base_config.read_text()) or {})
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["bench_qm9.py", *argv]),
        "machine": machine(args.device),
        "references_mev": REFERENCES_MEV,
        "references_note": "values from the literature, to be checked against the papers",
        "runs": [],
    }
    for n_train in sorted(args.sizes):
        for target in args.targets:
            results["runs"].append(run_point(args, target, n_train, base))
            (args.out / "results.json").write_text(json.dumps(results, indent=2))  # after every run
    (args.out / "results.md").write_text(markdown(results))
    print(f"[bench_qm9] wrote {args.out / 'results.json'} and {args.out / 'results.md'}")
    return 0 if all(run["status"] in ("ok", "dry-run") for run in results["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
