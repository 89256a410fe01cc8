#!/usr/bin/env python
"""rMD17 benchmark: train and test molequi on revised-MD17 molecules, compare with MACE.

For each molecule, trains on ``rmd17_<mol>_train_01.npz`` (1000 structures, 50 of them held out
for validation) with ``molequi train`` in a subprocess, tests on ``rmd17_<mol>_test_01.npz``
(1000 structures), and writes ``rmd17_results.json`` and ``rmd17_results.md`` (a table with
MACE's published errors beside).

    python scripts/bench_rmd17.py --molecules ethanol aspirin --minutes 12 --device cuda --out runs/bench_rmd17
    python scripts/bench_rmd17.py --molecules ethanol --minutes 3 --device cpu --out /tmp/rmd17   # smoke run

Energies: MAE of the total energy per structure, meV; forces: MAE per component, meV/Å.
The data are read from ``../shared/data/rmd17`` relative to the repository root (``--data-dir``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "rmd17"
DEFAULT_CONFIG = Path(__file__).with_name("rmd17.yaml")

# Batatia et al., MACE (NeurIPS 2022), Table 2: rMD17, 950 training structures. (E meV, F meV/Å)
MACE_PUBLISHED = {
    "aspirin": (2.2, 6.6),
    "azobenzene": (1.2, 3.0),
    "benzene": (0.4, 0.3),
    "ethanol": (0.4, 2.1),
    "malonaldehyde": (0.8, 4.1),
    "naphthalene": (0.5, 1.6),
    "paracetamol": (1.3, 4.8),
    "salicylic": (0.9, 3.1),
    "toluene": (0.5, 1.5),
    "uracil": (0.5, 2.1),
}


def run_molecule(molecule: str, args: argparse.Namespace) -> dict:
    from molequi.models import read_header

    train_file = args.data_dir / f"rmd17_{molecule}_train_{args.split}.npz"
    test_file = args.data_dir / f"rmd17_{molecule}_test_{args.split}.npz"
    for path in (train_file, test_file):
        if not path.is_file():
            raise SystemExit(f"error: {path} not found (rMD17 data are expected in {args.data_dir}; see --data-dir)")
    out = args.out / molecule
    if out.exists():
        shutil.rmtree(out)  # the benchmark's own output of an earlier run
    command = [sys.executable, "-m", "molequi.cli.main", "train", "--data", str(train_file), "--test-data", str(test_file),
               "--out", str(out), "--config", str(args.config), "--max-minutes", str(args.minutes), "--validation", "50",
               "--device", args.device, "--no-progress"]
    if args.dtype:
        command += ["--dtype", args.dtype]
    if args.max_epochs:
        command += ["--max-epochs", str(args.max_epochs)]
    print("$", " ".join(command), flush=True)
    started = time.monotonic()
    completed = subprocess.run(command, cwd=REPO)
    if completed.returncode != 0:
        return {"molecule": molecule, "error": f"molequi train exited with {completed.returncode}"}
    metrics = json.loads((out / "test_metrics.json").read_text())
    extra = read_header(out / "model.molequi")["extra"]
    settings = extra["training_config"]
    return {
        "molecule": molecule,
        "energy_mae_meV": metrics["energy_mae_meV"],
        "forces_mae_meV_per_A": metrics["forces_mae_meV_per_A"],
        "energy_rmse_meV": metrics["energy_rmse_meV"],
        "forces_rmse_meV_per_A": metrics["forces_rmse_meV_per_A"],
        "n_test": metrics["n_structures"],
        "n_train": extra["n_train"],
        "n_validation": extra["n_validation"],
        "training_minutes": extra["minutes"],
        "wall_minutes": round((time.monotonic() - started) / 60.0, 2),
        "epochs": extra["epochs"],
        "best_epoch": extra["best_epoch"],
        "stop_reason": extra["stop_reason"],
        "architecture": settings["model"],
        "training": {key: value for key, value in settings.items() if key != "model"},
        "mace_published": dict(zip(("energy_mae_meV", "forces_mae_meV_per_A"), MACE_PUBLISHED.get(molecule, (None, None)))),
        "model_file": str(out / "model.molequi"),
    }


def markdown(results: list[dict], machine: dict, args: argparse.Namespace) -> str:
    lines = [
        f"950 training + 50 validation structures (`rmd17_<mol>_train_{args.split}.npz`), tested on 1000 "
        f"(`rmd17_<mol>_test_{args.split}.npz`); budget {args.minutes} min per molecule on "
        f"{machine.get('gpu') or machine['cpu']} (torch {machine['torch']}).",
        f"Command: `{getattr(args, 'command', 'python scripts/bench_rmd17.py')}`",
        "Energy: MAE of the total energy, meV. Forces: MAE per component, meV/Å. MACE: published values "
        "(Batatia et al. 2022, trained to convergence, hours on a GPU).",
        "",
        "| molecule | E MAE (meV) | F MAE (meV/Å) | MACE E | MACE F | epochs | minutes | dtype |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        mace = MACE_PUBLISHED.get(r["molecule"], ("–", "–"))
        if "error" in r:
            lines.append(f"| {r['molecule']} | failed | {r['error']} | {mace[0]} | {mace[1]} | | | |")
            continue
        lines.append(
            f"| {r['molecule']} | {r['energy_mae_meV']:.2f} | {r['forces_mae_meV_per_A']:.2f} | {mace[0]} | {mace[1]} | "
            f"{r['epochs']} | {r['training_minutes']:.1f} | {r['training']['dtype']} |"
        )
    if results and "architecture" in results[0]:
        a = results[0]["architecture"]
        t = results[0]["training"]
        lines += ["", f"Architecture: channels {a['channels']}, l_max {a['l_max']}, {a['num_layers']} layers, "
                  f"correlation {a['correlation']}, cutoff {a['cutoff']} Å. Training: batch {t['batch_size']}, "
                  f"lr {t['learning_rate']} ({t['scheduler']}), EMA {t['ema_decay']}, weights E {t['energy_weight']} / "
                  f"F {t['forces_weight']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--molecules", nargs="+", default=["ethanol", "aspirin"], choices=sorted(MACE_PUBLISHED),
                        help="rMD17 molecules to train and test")
    parser.add_argument("--minutes", type=float, default=12.0, help="training budget per molecule, minutes")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default=None, choices=["float32", "float64"], help="override the config's dtype")
    parser.add_argument("--max-epochs", type=int, default=None, help="override the config's max_epochs")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="molequi training config")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="folder with rmd17_<mol>_{train,test}_NN.npz")
    parser.add_argument("--split", default="01", help="which of the rMD17 splits (01-05)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_rmd17"), help="output folder")
    args = parser.parse_args(argv)
    args.command = shlex.join(["python", "scripts/bench_rmd17.py", *(sys.argv[1:] if argv is None else argv)])
    args.out.mkdir(parents=True, exist_ok=True)
    from molequi.utils import machine_info

    machine = machine_info(args.device)
    results = []
    for molecule in args.molecules:
        results.append(run_molecule(molecule, args))
        report = {"machine": machine, "minutes_per_molecule": args.minutes, "device": args.device,
                  "config": str(args.config), "results": results}
        (args.out / "rmd17_results.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "rmd17_results.md").write_text(markdown(results, machine, args))
    print((args.out / "rmd17_results.md").read_text())
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
