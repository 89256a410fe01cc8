#!/usr/bin/env python
"""Shallow ensemble (one model, K readout heads) vs a committee of full models, on ethanol with
GFN2-xTB labels: uncertainty quality before/after calibration, training and MD cost.

Variants (same architecture and epochs): ``committee`` (M plain models, seeds 0…M-1; its first
2 members are also scored as a committee of 2), ``heads`` (one model, K heads, trained on the
mean over heads of the loss) and ``nll`` (K heads, Gaussian NLL of the heads' mean/variance).
Each is calibrated with ``molequi calibrate``'s fit on the calibration set and tested on MD
frames at 300, 600 and 1000 K: force MAE, ``forces_std_spearman`` (per structure),
``forces_rmse_over_std`` and the miscalibration area, raw and calibrated. Costs: CPU and wall
seconds of training, MD steps per second (batched engine, 8 ethanol replicas) and the forward +
per-head forces time of the two gradient methods (``loop``: K backward passes, ``batched``:
``is_grads_batched``).

Data: the GFN2-xTB ethanol sets that ``scripts/bench_uncertainty.py`` caches (``train_*.extxyz``,
``calibration_*.extxyz``, ``md_{300,600,1000}K_*.extxyz`` in ``--data``); make them with
``python scripts/bench_uncertainty.py --quick`` if absent.

    python scripts/bench_ensemble_heads.py --data runs/bench_uncertainty/full/data/ethanol --out runs/ensemble_heads
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise SystemExit(f"{folder}: no {pattern}; run 'python scripts/bench_uncertainty.py --quick' to make the xTB sets")
    return found[-1]


def train_variant(name: str, train_file: Path, out: Path, args, heads: int, loss: str, seed: int) -> dict:
    from molequi.training import load_config, train

    overrides = {"model": {"channels": 16, "l_max": 1, "num_layers": 2, "radial_hidden": [16, 16],
                           "readout_hidden": 16, "ensemble_heads": heads, "edge_l_max": None},
                 "max_epochs": args.epochs, "batch_size": 8, "validation": 20, "progress": False, "device": "cpu",
                 "dtype": "float32", "seed": seed, "ensemble_loss": loss, "early_stopping_patience": 0}
    config = load_config(None, overrides)
    start_wall, start_cpu = time.perf_counter(), cpu_seconds()
    model_path = out / name / "model.molequi"
    if not model_path.exists():
        train(config, train_file, out / name, log=lambda message: None)
    return {"model": str(model_path), "train_wall_s": time.perf_counter() - start_wall,
            "train_cpu_s": cpu_seconds() - start_cpu}


def md_rate(paths: list[str], steps: int = 40) -> float:
    """Batched MD steps per second, 8 ethanol replicas, NVT 300 K."""
    from ase.build import molecule

    from molequi.md import BatchedMD, Potential, load_models, state_from_atoms

    atoms = molecule("CH3CH2OH")
    engine = BatchedMD(Potential(load_models(paths)), state_from_atoms([atoms] * 8, temperature=300.0, seed=0), dt=0.5,
                       ensemble="nvt")
    engine.run(3)
    start = time.perf_counter()
    engine.run(steps)
    return steps / (time.perf_counter() - start)


def gradient_methods(path: str, repeats: int = 5) -> dict:
    """Seconds per predict (energy + each head's forces) of 16 frames, loop vs batched."""
    from ase.build import molecule

    from molequi.models import load_model, predict
    from molequi.nn import forces as forces_module

    model = load_model(path)
    frames = []
    for k in range(16):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.05, seed=k)
        frames.append(atoms)
    timings = {}
    for method in ("loop", "batched"):
        forces_module.MEMBER_GRADIENTS = method
        predict(model, frames)
        start = time.perf_counter()
        for _ in range(repeats):
            predict(model, frames)
        timings[method] = (time.perf_counter() - start) / repeats
    forces_module.MEMBER_GRADIENTS = "loop"
    return timings


def main() -> int:
    import ase.io

    from molequi.models.uncertainty.evaluation import committee_errors, fit_committee_calibration, load_committee, uncertainty_report
    from molequi.utils import machine_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/bench_uncertainty/full/data/ethanol")
    parser.add_argument("--out", default="runs/ensemble_heads")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--n-train", type=int, default=150)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--readme", action="store_true", help="write the table into docs/benchmarks.md (block 'ensemble-heads')")
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    train_file = out / "train.extxyz"
    if not train_file.exists():
        ase.io.write(train_file, ase.io.read(one(data, "train_*.extxyz"), f":{args.n_train}"))
    calibration_set = ase.io.read(one(data, "calibration_*.extxyz"), ":")
    tests = {t: ase.io.read(one(data, f"md_{t}K_*.extxyz"), ":") for t in (300, 600, 1000)}

    runs = {f"member_{m}": train_variant(f"member_{m}", train_file, out, args, 1, "heads", m) for m in range(args.members)}
    runs["heads"] = train_variant("heads", train_file, out, args, args.heads, "heads", 0)
    runs["nll"] = train_variant("nll", train_file, out, args, args.heads, "nll", 0)
    variants = {f"committee_{args.members}": [runs[f"member_{m}"]["model"] for m in range(args.members)],
                "committee_2": [runs["member_0"]["model"], runs["member_1"]["model"]],
                f"heads_{args.heads}": [runs["heads"]["model"]], f"nll_{args.heads}": [runs["nll"]["model"]]}
    results = {}
    for name, paths in variants.items():
        models = load_committee(paths)
        calibration = fit_committee_calibration(committee_errors(models, calibration_set))
        row = {"train_cpu_s": sum(runs[k]["train_cpu_s"] for k in runs if runs[k]["model"] in paths),
               "train_wall_s": sum(runs[k]["train_wall_s"] for k in runs if runs[k]["model"] in paths),
               "md_steps_per_s": md_rate(paths), "forces_calibration": calibration.to_dict()["outputs"]["forces"]["form"]}
        for temperature, frames in tests.items():
            errors = committee_errors(models, frames)
            raw, calibrated = uncertainty_report(errors), uncertainty_report(errors, calibration)
            mae = float(np.mean(np.abs(errors["forces"].errors))) * 1000
            row[f"{temperature}K"] = {
                "forces_mae_meV_per_A": mae,
                "spearman": raw["forces_std_spearman"],
                "rmse_over_std": raw["forces_rmse_over_std"],
                "rmse_over_std_calibrated": calibrated["forces_rmse_over_std"],
                "miscalibration_area": raw["forces_miscalibration_area"],
                "miscalibration_area_calibrated": calibrated["forces_miscalibration_area"],
            }
        results[name] = row
        print(name, json.dumps(row), flush=True)
    results["gradient_methods_s_per_16_frames"] = gradient_methods(runs["heads"]["model"])
    summary = {"machine": machine_info("cpu"), "load_before": load_before, "load_after": os.getloadavg(),
               "settings": vars(args), "results": results,
               "command": "python scripts/bench_ensemble_heads.py " + " ".join(sys.argv[1:])}
    (out / "ensemble_heads.json").write_text(json.dumps(summary, indent=2))
    lines = ["| variant | train CPU s | MD steps/s | T | force MAE meV/Å | Spearman | RMSE/std raw → cal. | miscal. area raw → cal. |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in results.items():
        if not name.startswith(("committee", "heads", "nll")):
            continue
        for t in (300, 600, 1000):
            r = row[f"{t}K"]
            lines.append(f"| {name} | {row['train_cpu_s']:.0f} | {row['md_steps_per_s']:.1f} | {t} K | {r['forces_mae_meV_per_A']:.0f} | "
                         f"{r['spearman']:.2f} | {r['rmse_over_std']:.2f} → {r['rmse_over_std_calibrated']:.2f} | "
                         f"{r['miscalibration_area']:.3f} → {r['miscalibration_area_calibrated']:.3f} |")
    machine = summary["machine"]
    header = [f"Ethanol, GFN2-xTB labels: {args.n_train} training structures, the same architecture (16 channels, "
              f"l_max 1, 2 layers) and {args.epochs} epochs for every variant; committee_M: M models with seeds "
              f"0…M−1; heads_K: one model with K readout heads (`--ensemble-heads {args.heads}`, loss `heads`); "
              f"nll_K: the same trained on the Gaussian NLL. Calibration fitted on {len(calibration_set)} held-out "
              "structures; tested on xTB MD frames at 300, 600 and 1000 K. MD: batched engine, 8 replicas. "
              f"Machine: {machine['cpu']} (torch {machine.get('torch')}), load {load_before[0]:.1f} → "
              f"{os.getloadavg()[0]:.1f}. Command: `{summary['command'].replace(' --readme', '')}`", ""]
    (out / "ensemble_heads.md").write_text("\n".join(header + lines) + "\n")
    print("\n".join(lines))
    if args.readme:
        sys.path.insert(0, str(REPO / "scripts"))
        from readme_section import update_readme_section

        update_readme_section("ensemble-heads", "\n".join(header + lines) + "\n")
    print(json.dumps(results["gradient_methods_s_per_16_frames"]), "load", load_before, "->", os.getloadavg())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
