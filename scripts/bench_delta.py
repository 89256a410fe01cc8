#!/usr/bin/env python
"""Δ-learning on GFN2-xTB against direct learning: rMD17 learning curves at the same budget.

For each molecule and training-set size N, trains ``molequi train`` (its defaults, no
``--config``) twice for the same wall-clock budget — directly on the DFT labels, and with
``--baseline xtb`` (the network learns DFT − GFN2-xTB) — on the first N + V structures of
``rmd17_<mol>_train_01.npz`` (V held out for validation), tests both on the 1000 structures of
``rmd17_<mol>_test_01.npz`` with the same code (``molequi train --test-data``: the Δ model's
errors against label − xTB are its total errors), and times MD with each model through the
ASE calculator (velocity Verlet, 0.5 fs, one molecule). Writes ``delta_results.json``,
``delta_results.md``, ``delta_curve.png`` and (``--readme``) the docs/benchmarks.md block ``delta`` with
the plot in ``scripts/figures/delta_curve.png``.

    python scripts/bench_delta.py --molecules aspirin ethanol --sizes 50 250 950 --minutes 10
    python scripts/bench_delta.py --molecules aspirin --sizes 50 --minutes 3     # the small point

The xTB labels of each run are computed once before training (cached in the run's
``baseline_cache``) and are not counted in the training budget; their CPU time is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "rmd17"
FIGURE = REPO / "scripts" / "figures" / "delta_curve.png"  # shown in docs/benchmarks.md
MACE_50 = {"aspirin": 43.9}  # MACE's published aspirin force MAE from 50 training structures, meV/Å


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def validation_size(n: int) -> int:
    return max(5, min(50, n // 10))


def write_subset(source: Path, n_total: int, path: Path) -> Path:
    """The first ``n_total`` structures of an rMD17 file (its order is already random)."""
    with np.load(source) as data:
        count = len(data["energies"])
        subset = {key: data[key][:n_total] if key != "nuclear_charges" and data[key].ndim and len(data[key]) == count
                  else data[key] for key in data.files}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **subset)
    return path


def md_speed(model_file: Path, structure_file: Path, steps: int) -> float:
    """MD steps per second of one molecule through the ASE calculator (after 5 warm-up steps)."""
    import ase.units
    import torch
    from ase.md.verlet import VelocityVerlet

    from molequi.calculators import MolequiCalculator
    from molequi.data import read_structures

    torch.set_num_threads(1)
    atoms = read_structures(structure_file)[0]
    atoms.calc = MolequiCalculator(str(model_file))
    dynamics = VelocityVerlet(atoms, timestep=0.5 * ase.units.fs)
    dynamics.run(5)
    started = time.perf_counter()
    dynamics.run(steps)
    return steps / (time.perf_counter() - started)


def run_one(molecule: str, n: int, mode: str, args: argparse.Namespace) -> dict:
    train_file = args.data_dir / f"rmd17_{molecule}_train_01.npz"
    test_file = args.data_dir / f"rmd17_{molecule}_test_01.npz"
    v = validation_size(n)
    subset = write_subset(train_file, n + v, args.out / "data" / f"{molecule}_{n + v}.npz")
    out = args.out / f"{molecule}_{n}_{mode}"
    if out.exists():
        shutil.rmtree(out)
    command = [sys.executable, "-m", "molequi.cli.main", "train", "--data", str(subset), "--test-data", str(test_file),
               "--out", str(out), "--validation", str(v), "--max-minutes", str(args.minutes), "--device", "cpu",
               "--no-progress"]
    if mode == "delta":
        command += ["--baseline", "xtb"]
    print("$", shlex.join(command), flush=True)
    load_before = os.getloadavg()[0]
    cpu_before, started = children_cpu(), time.monotonic()
    completed = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    wall, cpu = time.monotonic() - started, children_cpu() - cpu_before
    if completed.returncode != 0:
        return {"molecule": molecule, "n_train": n, "mode": mode, "error": f"molequi train exited with {completed.returncode}"}
    from molequi.models import read_header

    metrics = json.loads((out / "test_metrics.json").read_text())
    extra = read_header(out / "model.molequi")["extra"]
    result = {
        "molecule": molecule, "n_train": n, "n_validation": v, "mode": mode,
        "energy_mae_meV": metrics["energy_mae_meV"], "forces_mae_meV_per_A": metrics["forces_mae_meV_per_A"],
        "n_test": metrics["n_structures"], "epochs": extra["epochs"], "training_minutes": extra["minutes"],
        "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "load_before": load_before, "load_after": os.getloadavg()[0],
        "budget_minutes": args.minutes,
    }
    if args.md_steps:
        result["md_steps_per_s"] = md_speed(out / "model.molequi", test_file, args.md_steps)
    return result


def budget_text(results: list[dict], args: argparse.Namespace) -> str:
    """The training budget of the runs in the table, e.g. ``3.0 min``: each result's own, or for results
    written before they kept it, the ``--minutes`` of the commands that made them."""
    budgets = {r["budget_minutes"] for r in results if "budget_minutes" in r}
    if any("budget_minutes" not in r for r in results):
        budgets |= {float(m) for m in re.findall(r"--minutes ([0-9.]+)", args.command)}
    return " / ".join(f"{b:g} min" for b in sorted(budgets)) or f"{args.minutes:g} min"


def markdown(results: list[dict], machine: dict, args: argparse.Namespace) -> str:
    lines = [
        f"rMD17 split 01: the first N + V structures of `rmd17_<mol>_train_01.npz` (V = N/10, 5–50, for validation), "
        f"tested on the 1000 test structures; `molequi train` defaults (no `--config`), {budget_text(results, args)} per run, "
        f"{args.threads} thread(s), on {machine['cpu']} (torch {machine['torch']}); load average "
        f"{min(r.get('load_before', 0) for r in results):.1f}–{max(r.get('load_after', 0) for r in results):.1f} "
        "(a shared machine: wall times are inflated, CPU seconds are the work done).",
        "Commands: " + ", ".join(f"`{c}`" for c in args.command.split("; ")),
        "Direct: trained on the DFT labels. Δ: `--baseline xtb`, trained on DFT − GFN2-xTB, GFN2-xTB added back "
        "at run time. E: MAE of the total energy, meV; F: MAE per component, meV/Å; MD: velocity-Verlet steps/s of "
        "one molecule through the ASE calculator (xTB included for Δ); CPU s: the whole `molequi train` process "
        "(for Δ including the xTB labels of the training and test structures, and testing for both).",
        "",
        "| molecule | N train | direct F | Δ F | direct E | Δ E | direct MD steps/s | Δ MD steps/s | epochs (direct/Δ) | CPU s (direct/Δ) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keyed = {(r["molecule"], r["n_train"], r["mode"]): r for r in results}
    for molecule, n in sorted({(r["molecule"], r["n_train"]) for r in results}):
        d, x = keyed.get((molecule, n, "direct"), {}), keyed.get((molecule, n, "delta"), {})

        def cell(r, key, fmt="{:.1f}"):
            return "failed" if "error" in r else (fmt.format(r[key]) if key in r else "–")

        lines.append(
            f"| {molecule} | {n} | {cell(d, 'forces_mae_meV_per_A')} | {cell(x, 'forces_mae_meV_per_A')} | "
            f"{cell(d, 'energy_mae_meV')} | {cell(x, 'energy_mae_meV')} | {cell(d, 'md_steps_per_s')} | "
            f"{cell(x, 'md_steps_per_s')} | {cell(d, 'epochs', '{}')}/{cell(x, 'epochs', '{}')} | "
            f"{cell(d, 'cpu_s', '{:.0f}')}/{cell(x, 'cpu_s', '{:.0f}')} |"
        )
    if any(r["molecule"] in MACE_50 and r["n_train"] == 50 for r in results):
        lines += ["", "MACE's published aspirin force MAE from 50 training structures: "
                  f"{MACE_50['aspirin']} meV/Å (trained to convergence on a GPU)."]
    lines += ["", f"![Δ-xTB and direct learning curves]({FIGURE.relative_to(REPO)})"]
    return "\n".join(lines).rstrip() + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    molecules = sorted({r["molecule"] for r in results})
    figure, axes = plt.subplots(1, len(molecules), figsize=(4.5 * len(molecules), 3.6), squeeze=False)
    for ax, molecule in zip(axes[0], molecules):
        for mode, style in (("direct", "o-"), ("delta", "s-")):
            points = sorted((r["n_train"], r["forces_mae_meV_per_A"]) for r in results
                            if r["molecule"] == molecule and r["mode"] == mode and "error" not in r)
            if points:
                ax.loglog(*zip(*points), style, label="Δ-xTB" if mode == "delta" else "direct")
        if molecule in MACE_50:
            ax.loglog([50], [MACE_50[molecule]], "k*", label="MACE (published, 50)")
        ax.set(title=molecule, xlabel="training structures", ylabel="test force MAE (meV/Å)")
        ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--molecules", nargs="+", default=["aspirin", "ethanol"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[50, 250, 950], help="training-set sizes N")
    parser.add_argument("--modes", nargs="+", default=["direct", "delta"], choices=["direct", "delta"])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of every run, minutes")
    parser.add_argument("--threads", type=int, default=1, help="torch and tblite threads")
    parser.add_argument("--md-steps", type=int, default=100, help="timed MD steps per model (0 = no MD timing)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_delta")
    parser.add_argument("--readme", action="store_true", help="write the table into docs/benchmarks.md (block 'delta')")
    parser.add_argument("--render", action="store_true", help="only rewrite the table, plot and docs/benchmarks.md from OUT's JSON")
    args = parser.parse_args(argv)
    args.command = shlex.join(["python", "scripts/bench_delta.py", *(sys.argv[1:] if argv is None else argv)]).replace(" --readme", "")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    from molequi.utils import machine_info

    machine = machine_info("cpu")
    path = args.out / "delta_results.json"
    previous = json.loads(path.read_text())["results"] if path.is_file() else []
    results = [r for r in previous]
    if args.render:  # the table of the runs already made (same flags as the run, plus --render)
        saved = json.loads(path.read_text())
        args.command = saved.get("command") or args.command.replace(" --render", "")
        machine = saved.get("machine", machine)  # the machine the runs were made on, not this one
        args.molecules = []
    for molecule in args.molecules:
        for n in args.sizes:
            for mode in args.modes:
                result = run_one(molecule, n, mode, args)
                print(json.dumps(result), flush=True)
                # re-read first: another invocation (e.g. the other molecule, run at the same time) may have written
                saved = json.loads(path.read_text()) if path.is_file() else {"results": results}
                results = [r for r in saved["results"] if (r["molecule"], r["n_train"], r["mode"]) != (molecule, n, mode)] + [result]
                commands = [c for c in saved.get("command", "").split("; ") if c and c != args.command] + [args.command]
                path.write_text(json.dumps({"machine": machine, "command": "; ".join(commands), "results": results}, indent=2) + "\n")
                (args.out / "delta_results.md").write_text(markdown(results, machine, args))
                plot(results, args.out / "delta_curve.png")
    text = markdown(results, machine, args)
    (args.out / "delta_results.md").write_text(text)
    plot(results, args.out / "delta_curve.png")
    print(text)
    if args.readme:
        from readme_section import update_readme_section

        plot(results, FIGURE)
        update_readme_section("delta", text)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
