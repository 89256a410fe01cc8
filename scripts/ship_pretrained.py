#!/usr/bin/env python
"""Put a trained run into the package as the pretrained model 'organic-xtb', with its card.

    python scripts/ship_pretrained.py runs/organic_xtb runs/organic_xtb_stage2 --data data/organic_xtb

The runs are the recipe's stages in order (each later one started from the one before with
``molequi train --init``). Copies the last run's ``model.molequi`` to ``molequi/pretrained/organic_xtb.molequi`` (refused above 10 MB),
fits the committee calibration and the domain threshold on the held-out test scaffolds when
``molequi calibrate`` can (``organic_xtb.calibration.json``), and writes the model card
``organic_xtb.md`` from the run's own files: the data set card (sources, licences, level of
theory, content hash), the training recipe and command, the epochs and CPU time the run took,
the test errors on held-out scaffolds and the file's sha256. Nothing in the card is typed by hand.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from molequi.utils import cpu_model

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "molequi" / "pretrained"
MAX_BYTES = 10 * 1024 * 1024
RECIPES = {name: [TARGET / f"{name}.yaml", TARGET / f"{name}.stage2.yaml"]  # the stages of each recipe
           for name in ("organic_xtb", "organic_xtb.gpu")}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def machine() -> str:
    """The CPU model and core count of this machine (where the card's training figures were measured)."""
    return f"{cpu_model()}, {os.cpu_count()} cores"


def trained_on(run: Path) -> str:
    """Where ``run`` trained: this machine's CPU, or the GPU its config names (the card's wording)."""
    import yaml

    device = str(yaml.safe_load((run / "config.yaml").read_text()).get("device", "cpu"))
    if device.startswith("cuda"):
        import torch

        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "a GPU"
        return f"{name} ({device})"
    return f"{machine()} (no GPU, machine shared)"


def training_summary(run: Path) -> dict:
    """Epochs, wall time and the last validation errors from the run's log.csv."""
    with open(run / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    last = rows[-1]
    return {"epochs": int(last["epoch"]), "wall_s": round(float(last["time_s"]), 1),  # time_s is cumulative
            "val_forces_mae_meV_per_A": float(last.get("val_forces_mae_meV_per_A", "nan")),
            "val_energy_mae_meV": float(last.get("val_energy_mae_meV", "nan"))}


def calibrate(model: Path, test: Path, out: Path) -> bool:
    """``molequi calibrate`` of the shipped model on the held-out test scaffolds (False when it fails)."""
    # run beside the model so that the file records it by name, not by a path of this machine
    command = [sys.executable, "-c", "import sys; from molequi.cli.main import main; sys.exit(main(sys.argv[1:]))",
               "calibrate", model.name, os.path.relpath(test.resolve(), model.parent), "--out", out.name]
    done = subprocess.run(command, capture_output=True, text=True, cwd=model.parent)
    if done.returncode != 0:
        print(f"calibration skipped: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
        return False
    return True


def card(runs: list[Path], data: Path, model: Path, calibration: Path | None, recipe: str = "organic_xtb") -> str:
    """The Markdown model card of the last of ``runs`` (the stages of ``recipe``, in order)."""
    from molequi.models.io import read_config

    run = runs[-1]
    config = read_config(model)
    dataset = json.loads((data / "card.json").read_text())
    metrics = json.loads((run / "test_metrics.json").read_text()) if (run / "test_metrics.json").is_file() else {}
    stages = [training_summary(stage) for stage in runs]
    epochs = " + ".join(str(stage["epochs"]) for stage in stages)
    hours = sum(stage["wall_s"] for stage in stages) / 3600
    recipes = ", ".join(f"`{path.relative_to(REPO)}`" for path in RECIPES[recipe][:len(runs)])
    charge = ""
    if config.charge_energies is not None:
        charge = (f"; charge reference {config.charge_energies[0]:+.3f}·Q {config.charge_energies[1]:+.3f}·Q² eV, "
                  "fitted with the per-element energies")
    sizes = dataset["sizes"]
    from ase.data import chemical_symbols

    lines = [
        "# organic-xtb: a pretrained molequi model of GFN2-xTB for organic molecules",
        "",
        "`molequi.pretrained.load(\"organic-xtb\")`, `MolequiCalculator()` and `molequi md STRUCTURE` (no `--model`) "
        "run this model; `molequi train --init organic-xtb` fine-tunes it.",
        "",
        "| | |",
        "|---|---|",
        f"| level of theory | {dataset['level_of_theory']['method']} ({dataset['level_of_theory']['code']} "
        f"{dataset['level_of_theory'].get('tblite_version', '')}), gas phase |",
        f"| elements | {' '.join(chemical_symbols[z] for z in config.species)} |",
        f"| total charge | input (`atoms.info['charge']`, e): trained on "
        f"{', '.join(f'{k}: {v}' for k, v in sizes['train']['by_charge'].items())} structures{charge} |",
        f"| training data | {sizes['train']['structures']:,} structures of {sizes['train']['molecules']:,} molecules "
        f"(QM9 and MOSES; relaxed, rattled, MD 300–1000 K, torsion scans), `datasets/organic_xtb.py`, "
        f"content sha256 `{dataset.get('content_sha256', '?')[:16]}…` |",
        f"| test data | {sizes['test']['structures']:,} structures of {sizes['test']['molecules']} molecules whose "
        f"{sizes['test']['scaffolds']} Murcko scaffolds are absent from training |",
        f"| architecture | {config.num_layers} layers × {config.channels} channels, l_max {config.l_max}, edge "
        f"l_max {config.edge_l_max}, correlation {config.correlation}, cutoff {config.cutoff} Å, "
        f"{config.ensemble_heads} ensemble heads (σ from one model) |",
        f"| training | {epochs} epochs in {len(runs)} stage(s), {hours:.2f} h wall on {trained_on(runs[0])}, "
        f"recipe {recipes} |",
        f"| file | `organic_xtb.molequi`, {model.stat().st_size / 1e6:.2f} MB, sha256 `{sha256(model)[:16]}…` |",
    ]
    if metrics:
        lines += [
            "",
            "## Errors on the held-out scaffolds (the test split)",
            "",
            "| energy MAE | force MAE | force RMSE |",
            "|---:|---:|---:|",
            f"| {metrics.get('energy_mae_meV', float('nan')):.1f} meV | "
            f"{metrics.get('forces_mae_meV_per_A', float('nan')):.1f} meV/Å | "
            f"{metrics.get('forces_rmse_meV_per_A', float('nan')):.1f} meV/Å |",
            "",
            "Per temperature, MD stability and speed against GFN2-xTB: `python scripts/bench_pretrained.py` "
            "(docs/benchmarks.md).",
        ]
    if calibration is not None:
        lines += ["", f"Calibration of its σ on the test split: `{calibration.name}` (loaded with the model by name)."]
    lines += [
        "",
        "## Reproduce",
        "",
        "```bash",
        "python datasets/organic_xtb.py --out data/organic_xtb      # the data set (25-50 min on 2 cores, resumable)",
        "bash scripts/train_organic_xtb.sh data/organic_xtb runs/organic_xtb   # train both stages (resumable), ship"
        if recipe == "organic_xtb" else
        "bash scripts/train_organic_xtb.sh --gpu data/organic_xtb   # train both stages on a GPU (resumable), ship",
        "```",
        "",
        "The epoch budget and seed fix the model: two runs of the recipe on the same data give the same weights.",
        "",
        "## Limits",
        "",
        "Molecules in the gas phase built from the elements above, up to drug size; no periodic systems, metals, "
        "radicals or transition states beyond the rattled and hot-MD geometries. Its ensemble σ flags structures "
        "far from its data; an element it never saw is refused.",
        "",
        "Data sources and licences: " + "; ".join(f"{s['name']} ({s['licence']})" for s in dataset["sources"]) + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+",
                        help="the recipe's training run folders in order (model.molequi, log.csv, test_metrics.json); "
                             "the last one is shipped")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "organic_xtb",
                        help="the data set folder (card.json, test.extxyz)")
    parser.add_argument("--no-calibration", action="store_true", help="do not fit the σ calibration")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="organic_xtb",
                        help="the recipe the runs followed (organic_xtb: the CPU one; organic_xtb.gpu: the GPU one)")
    args = parser.parse_args()
    if len(args.runs) > len(RECIPES[args.recipe]):
        sys.exit(f"the recipe has {len(RECIPES[args.recipe])} stages, got {len(args.runs)} runs")
    missing = [path for path in (args.data / "card.json", args.data / "test.extxyz") if not path.is_file()]
    if missing:  # before anything in the package is touched
        sys.exit(f"{missing[0]}: not found (build the data set with: python datasets/organic_xtb.py --out {args.data})")
    source = args.runs[-1] / "model.molequi"
    if not source.is_file():
        sys.exit(f"{source}: no trained model (run scripts/train_organic_xtb.sh first)")
    if source.stat().st_size > MAX_BYTES:
        sys.exit(f"{source} is {source.stat().st_size / 1e6:.1f} MB, above the 10 MB a model in the wheel may take")
    target = TARGET / "organic_xtb.molequi"
    shutil.copyfile(source, target)
    calibration = TARGET / "organic_xtb.calibration.json"
    if args.no_calibration or not calibrate(target, args.data / "test.extxyz", calibration):
        calibration.unlink(missing_ok=True)
        calibration = None
    (TARGET / "organic_xtb.md").write_text(card(args.runs, args.data, target, calibration, args.recipe), encoding="utf-8")
    print(f"shipped {target} ({target.stat().st_size / 1e6:.2f} MB) and its card {TARGET / 'organic_xtb.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
