#!/usr/bin/env python
"""molequi (its defaults) against MACE on the same rMD17 molecule, the same budget, the same CPU.

One after the other, with the same torch thread count:

* molequi: ``molequi train`` without ``--config`` and ``--max-minutes BUDGET``;
* MACE 0.3.16 (``.venv-mace`` from ``scripts/mace_env.sh``; it pins e3nn 0.4.4): ``mace_run_train``
  with 64×0e (``mace-64x0e``) or 128×0e+128×1o (``mace-128x1o``), 2 layers, correlation 3,
  batch 5, lr 0.01, amsgrad, EMA 0.99, E/F weights 10/1000, float32, E0s "average". MACE has no
  wall-clock limit, so a two-epoch probe run measures the time of one epoch (from its log's time
  stamps, without start-up or final evaluation, as molequi's budget counts only training and
  validation) and the real run gets ``floor(BUDGET / epoch time)`` epochs (at least 1).

Both train on the same 950 structures and validate on the same 50 (molequi's split of
``rmd17_<mol>_train_01.npz``, seed 0) and are tested on the 1000 structures of
``rmd17_<mol>_test_01.npz`` with the same code: each side writes its test predictions to an
``.npz`` (molequi through :func:`molequi.predict`, MACE through its ASE calculator), and
:func:`metrics` computes the errors of both. Wall and CPU seconds (children's rusage) of every
training are recorded, with the load average before and after.

    python scripts/bench_vs_mace.py --molecule ethanol --minutes 10 --readme
    python scripts/bench_vs_mace.py --molecule aspirin --minutes 3 --mace-models mace-64x0e   # quick

Writes ``OUT/<molecule>_<minutes>min.json`` and ``.md``; ``--readme`` puts every result file of
OUT into the docs/benchmarks.md block ``vs-mace`` (one table row per molecule, budget and MACE model).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "rmd17"
MACE_PYTHON = ROOT / ".venv-mace" / "bin" / "python"
KCAL_MOL = 0.0433641043  # eV per kcal/mol (ase.units.kcal / ase.units.mol)
MACE_MODELS = {"mace-64x0e": "64x0e", "mace-128x1o": "128x0e+128x1o"}
PARETO_FIGURE = ROOT / "scripts" / "figures" / "vs_mace_pareto.png"  # shown in docs/benchmarks.md


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], env: dict | None = None, log: Path | None = None) -> dict:
    """Run ``command``; its wall and CPU seconds and the load average around it."""
    print("$", shlex.join(command), flush=True)
    load = os.getloadavg()[0]
    cpu, started = children_cpu(), time.monotonic()
    with open(log, "w") if log else open(os.devnull, "w") as sink:
        code = subprocess.run(command, cwd=ROOT, env=env, stdout=sink if log else None, stderr=subprocess.STDOUT if log else None).returncode
    if code:
        raise SystemExit(f"error: {command[0]} exited with {code}" + (f" (see {log})" if log else ""))
    return {"wall_s": round(time.monotonic() - started, 1), "cpu_s": round(children_cpu() - cpu, 1),
            "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}


def metrics(predicted: Path, test_file: Path) -> dict:
    """Test errors of a predictions file (``energy`` [S] eV, ``forces`` [S, n, 3] eV/Å) against
    the rMD17 labels (kcal/mol): energy MAE of the total energy, meV; forces MAE per component, meV/Å."""
    with np.load(test_file) as labels, np.load(predicted) as values:
        energy = labels["energies"] * KCAL_MOL
        forces = labels["forces"] * KCAL_MOL
        e_err = values["energy"].astype(np.float64) - energy
        f_err = values["forces"].astype(np.float64) - forces
    return {"energy_mae_meV": 1e3 * float(np.abs(e_err).mean()), "forces_mae_meV_per_A": 1e3 * float(np.abs(f_err).mean()),
            "energy_rmse_meV": 1e3 * float(np.sqrt((e_err**2).mean())), "forces_rmse_meV_per_A": 1e3 * float(np.sqrt((f_err**2).mean())),
            "n_test": int(len(energy))}


def split_files(train_file: Path, out: Path) -> tuple[Path, Path]:
    """molequi's own train/validation split (50 held out, seed 0) as extxyz files for MACE."""
    import ase.io

    from molequi.data import read_structures
    from molequi.data.split import train_validation_split

    structures = read_structures(train_file)
    train_indices, validation_indices = train_validation_split(len(structures), 50, 0)
    paths = []
    for name, indices in (("train", train_indices), ("valid", validation_indices)):
        chosen = []
        for k in indices:
            atoms = structures[int(k)].copy()
            atoms.info["REF_energy"] = structures[int(k)].get_potential_energy()
            atoms.arrays["REF_forces"] = structures[int(k)].get_forces()
            atoms.calc = None
            chosen.append(atoms)
        path = out / f"{name}.extxyz"
        ase.io.write(path, chosen)
        paths.append(path)
    return paths[0], paths[1]


def run_molequi(args, train_file: Path, test_file: Path, out: Path) -> dict:
    import torch

    from molequi.data import read_structures
    from molequi.models import load_model
    from molequi.models.predict import predict

    run_dir = out / "molequi"
    command = [sys.executable, "-m", "molequi.cli.main", "train", "--data", str(train_file), "--out", str(run_dir),
               "--validation", "50", "--max-minutes", str(args.minutes), "--device", "cpu", "--no-progress"]
    result = timed(command, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}, log=out / "molequi.log")
    torch.set_num_threads(args.threads)
    model = load_model(run_dir / "model.molequi")
    predictions = predict(model, read_structures(test_file), batch_size=50)
    path = out / "molequi_test.npz"
    np.savez(path, energy=np.array([p["energy"] for p in predictions]), forces=np.stack([p["forces"] for p in predictions]))
    from molequi.models import read_header

    extra = read_header(run_dir / "model.molequi")["extra"]
    result.update(metrics(path, test_file), epochs=extra.get("epochs"), model="molequi (defaults)")
    from molequi.calculators import MolequiCalculator

    first = read_structures(test_file)[0]
    result["md_steps_per_s"] = md_steps_per_s(first, MolequiCalculator(model))
    (out / "molequi_result.json").write_text(json.dumps(result, indent=2) + "\n")  # this side's own copy
    return result


def mace_command(name: str, train: Path, valid: Path, out: Path, epochs: int, threads: int) -> list[str]:
    return [str(ROOT / ".venv-mace" / "bin" / "mace_run_train"), f"--name={name}", f"--train_file={train}",
            f"--valid_file={valid}", "--energy_key=REF_energy", "--forces_key=REF_forces", "--model=MACE",
            f"--hidden_irreps={MACE_MODELS[name]}", "--num_interactions=2", "--correlation=3", "--r_max=5.0",
            "--batch_size=5", "--valid_batch_size=10", "--lr=0.01", "--amsgrad", "--ema", "--ema_decay=0.99",
            "--energy_weight=10", "--forces_weight=1000", "--E0s=average", "--default_dtype=float32",
            f"--max_num_epochs={epochs}", "--device=cpu", "--seed=0", f"--model_dir={out}",
            f"--checkpoints_dir={out / 'checkpoints'}", f"--log_dir={out / 'logs'}", f"--results_dir={out / 'results'}",
            "--eval_interval=1", "--save_cpu"]


def run_mace(args, name: str, train: Path, valid: Path, test_file: Path, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    epochs = args.mace_epochs
    probe = None
    if not epochs:  # size the run from a two-epoch probe: the budget over the time of one epoch
        probe = probe_mace(args, name, train, valid, out, env)
        epochs = max(1, math.floor(60.0 * args.minutes / probe["epoch_s"]))
    if args.probe_only:
        return {"model": name, "probe": probe, "epochs": epochs}
    run_dir = out / name
    result = timed(mace_command(name, train, valid, run_dir, epochs, args.threads), env=env, log=out / f"{name}.log")
    path = out / f"{name}_test.npz"
    worker = [str(MACE_PYTHON), __file__, "--mace-predict", str(run_dir / f"{name}.model"), str(test_file), str(path),
              "--threads", str(args.threads)]
    timed(worker, env=env)
    result.update(metrics(path, test_file), epochs=epochs, model=name, probe=probe)
    with np.load(path) as values:
        result["md_steps_per_s"] = float(values["md_steps_per_s"])
    return result


def probe_mace(args, name: str, train: Path, valid: Path, out: Path, env: dict) -> dict:
    """Train ``name`` for two epochs and time one (``--reuse-probe``: the probe of an earlier
    invocation, so that probes can be run on a quiet machine before the long runs)."""
    saved = out / f"{name}-probe.json"
    if args.reuse_probe and saved.is_file():
        return json.loads(saved.read_text())
    shutil.rmtree(out / f"{name}-probe", ignore_errors=True)
    probe = timed(mace_command(name, train, valid, out / f"{name}-probe", 2, args.threads), env=env,
                  log=out / f"{name}-probe.log")
    probe["epoch_s"] = mace_epoch_seconds(out / f"{name}-probe.log")
    saved.write_text(json.dumps(probe) + "\n")
    return probe


def mace_epoch_seconds(log: Path) -> float:
    """Seconds of one MACE training epoch (its validation included), from the time stamps of the
    log's ``Initial:`` and ``Epoch N:`` lines: the last epoch's, which no start-up cost inflates
    (MACE's data loading, statistics and model building take about as long as an epoch of a
    small molecule, and its final evaluation as long again: timing the whole run would give it
    half the epochs its budget buys)."""
    import datetime
    import re

    stamps = [datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
              for m in re.finditer(r"^(\S+ \S+) INFO: (?:Initial|Epoch \d+):", log.read_text(), flags=re.M)]
    if len(stamps) < 2:
        raise SystemExit(f"error: no epoch time stamps in {log}")
    return (stamps[-1] - stamps[-2]).total_seconds()


def mace_predict(model_file: str, test_file: str, out: str, threads: int) -> None:
    """(In .venv-mace.) Predictions of a trained MACE model through its ASE calculator."""
    import torch
    from ase import Atoms
    from mace.calculators import MACECalculator

    torch.set_num_threads(threads)
    calculator = MACECalculator(model_paths=model_file, device="cpu", default_dtype="float32")
    energies, forces = [], []
    with np.load(test_file) as data:
        for coords in data["coords"]:
            atoms = Atoms(numbers=data["nuclear_charges"], positions=coords)
            atoms.calc = calculator
            energies.append(atoms.get_potential_energy())
            forces.append(atoms.get_forces())
        speed = md_steps_per_s(Atoms(numbers=data["nuclear_charges"], positions=data["coords"][0]), calculator)
    np.savez(out, energy=np.array(energies), forces=np.stack(forces), md_steps_per_s=speed)


def md_steps_per_s(atoms, calculator, steps: int = 100) -> float:
    """Velocity-Verlet steps per second (0.5 fs) of one molecule through an ASE calculator
    (after 5 warm-up steps); the same function for both codes."""
    import ase.units
    from ase.md.verlet import VelocityVerlet

    atoms.calc = calculator
    dynamics = VelocityVerlet(atoms, timestep=0.5 * ase.units.fs)
    dynamics.run(5)
    started = time.perf_counter()
    dynamics.run(steps)
    return steps / (time.perf_counter() - started)


def markdown(reports: list[dict]) -> str:
    lines = [
        "rMD17 split 01, 950 training + 50 validation structures (the same split for both), tested on the 1000 "
        "test structures with one metric function; one torch thread each. molequi: "
        "`molequi train` defaults (no `--config`) with `--max-minutes`; MACE 0.3.16: 2 layers, correlation 3, "
        "batch 5, lr 0.01, amsgrad, EMA, E/F weights 10/1000, float32, E0s average, epochs sized from a probe "
        "run to the same budget. E: MAE of the total energy, meV; F: MAE per component, meV/Å. "
        "Ratios molequi/MACE (target: F ≤ 0.6, E ≤ 1). MACE trains whole epochs, as many as the budget holds at "
        "the epoch time of a two-epoch probe (start-up and final evaluation not counted, as molequi's budget does "
        "not count them either), so its accuracy does not depend on the machine's load during the run; molequi's "
        "wall-clock budget does: on a shared machine molequi gets fewer CPU seconds than its budget, and the CPU "
        "column says how many each side's whole process used.",
        "",
        "| molecule | budget | MACE model | molequi F | MACE F | F ratio | molequi E | MACE E | E ratio | "
        "epochs (molequi/MACE) | CPU s (molequi/MACE) | load |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for report in reports:
        mine = report["molequi"]
        for mace in report["mace"]:
            lines.append(
                f"| {report['molecule']} | {report['minutes']:g} min | {mace['model']} | {mine['forces_mae_meV_per_A']:.1f} | "
                f"{mace['forces_mae_meV_per_A']:.1f} | {mine['forces_mae_meV_per_A'] / mace['forces_mae_meV_per_A']:.2f} | "
                f"{mine['energy_mae_meV']:.1f} | {mace['energy_mae_meV']:.1f} | "
                f"{mine['energy_mae_meV'] / mace['energy_mae_meV']:.2f} | {mine['epochs']}/{mace['epochs']} | "
                f"{mine['cpu_s']:.0f}/{mace['cpu_s']:.0f} | {mine['load_before']:.1f}–{mace['load_after']:.1f} |"
            )
    lines += ["", "Accuracy against MD speed (velocity Verlet, one molecule through each code's ASE calculator, "
              "one thread; the same function times both):", "",
              "| molecule | budget | model | F MAE (meV/Å) | E MAE (meV) | MD steps/s |", "|---|---:|---|---:|---:|---:|"]
    for report in reports:
        for side in [report["molequi"], *report["mace"]]:
            speed = side.get("md_steps_per_s")
            lines.append(f"| {report['molecule']} | {report['minutes']:g} min | {side['model']} | "
                         f"{side['forces_mae_meV_per_A']:.1f} | {side['energy_mae_meV']:.1f} | "
                         f"{'–' if speed is None else f'{speed:.1f}'} |")
    machines = {r["machine"]["cpu"] for r in reports}
    lines += ["", f"Machine: {', '.join(sorted(machines))} (shared: the load column is the 1-minute load average "
              "before molequi and after MACE; CPU seconds are the work each side did). Commands, one per row group "
              "(both sides, one after the other): " + "; ".join(f"`{rerun_command(r)}`" for r in reports)
              + ". The sides may also run as separate invocations: `--probe-only` first on a quiet machine, then "
              "`--skip-molequi --reuse-probe` (MACE) and `--mace-models` with no name (molequi)."]
    return "\n".join(lines) + "\n"


def rerun_command(report: dict) -> str:
    """The one command that reproduces ``report``'s rows (both sides)."""
    command = ["python", "scripts/bench_vs_mace.py", "--molecule", report["molecule"], "--minutes", f"{report['minutes']:g}"]
    models = [m["model"] for m in report["mace"]]
    if sorted(models) != sorted(MACE_MODELS):
        command += ["--mace-models", *models]
    return shlex.join(command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--molecule", default="ethanol")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of each side, minutes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mace-models", nargs="*", default=list(MACE_MODELS), choices=list(MACE_MODELS))
    parser.add_argument("--mace-epochs", type=int, default=None, help="MACE epochs (default: sized from a probe run)")
    parser.add_argument("--probe-only", action="store_true", help="only time MACE's epochs (kept for --reuse-probe)")
    parser.add_argument("--reuse-probe", action="store_true", help="size MACE's runs from the probes of an earlier --probe-only")
    parser.add_argument("--skip-molequi", action="store_true", help="reuse the molequi result of an earlier run (none yet: train MACE only)")
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_vs_mace")
    parser.add_argument("--readme", action="store_true", help="write the table of every result in OUT into docs/benchmarks.md")
    parser.add_argument("--render", action="store_true", help="only rewrite the table (and docs/benchmarks.md) from OUT's JSON files")
    parser.add_argument("--mace-predict", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mace_predict:
        mace_predict(*args.mace_predict, threads=args.threads)
        return 0
    if args.render:
        return render(args)
    args.skip_molequi = args.skip_molequi or args.probe_only
    from molequi.utils import machine_info

    command = shlex.join(["python", "scripts/bench_vs_mace.py", *(sys.argv[1:] if argv is None else argv)])
    train_file = args.data_dir / f"rmd17_{args.molecule}_train_01.npz"
    test_file = args.data_dir / f"rmd17_{args.molecule}_test_01.npz"
    tag = f"{args.molecule}_{args.minutes:g}min"
    out = args.out / tag
    out.mkdir(parents=True, exist_ok=True)
    result_path = args.out / f"{tag}.json"
    previous = json.loads(result_path.read_text()) if result_path.is_file() else {}
    report = {"molecule": args.molecule, "minutes": args.minutes, "threads": args.threads, "command": command,
              "machine": machine_info("cpu"), "uptime_before": os.getloadavg()}
    if args.skip_molequi and "molequi" not in previous:
        print("no earlier molequi result in", result_path, "- running MACE only", flush=True)
    elif args.skip_molequi:
        report["molequi"] = previous["molequi"]
        if "md_steps_per_s" not in report["molequi"]:  # a result from before MD was timed
            from molequi.calculators import MolequiCalculator
            from molequi.data import read_structures

            model = MolequiCalculator(str(out / "molequi" / "model.molequi"))
            report["molequi"]["md_steps_per_s"] = md_steps_per_s(read_structures(test_file)[0], model)
    else:
        shutil.rmtree(out / "molequi", ignore_errors=True)
        report["molequi"] = run_molequi(args, train_file, test_file, out)
    print(json.dumps(report.get("molequi")), flush=True)
    report["mace"] = [] if args.mace_models else previous.get("mace", [])  # none asked: keep the earlier ones
    if args.mace_models and not MACE_PYTHON.exists():
        raise SystemExit(f"error: {MACE_PYTHON} missing: run `bash scripts/mace_env.sh` first")
    train, valid = split_files(train_file, out) if args.mace_models else (None, None)
    for name in args.mace_models:
        shutil.rmtree(out / name, ignore_errors=True)
        report["mace"].append(run_mace(args, name, train, valid, test_file, out))
        print(json.dumps(report["mace"][-1]), flush=True)
        if not args.probe_only:
            save_report(result_path, report, keep_mace=not args.mace_models)
    if args.probe_only:
        return 0
    report["uptime_after"] = os.getloadavg()
    save_report(result_path, report, keep_mace=not args.mace_models)
    return render(args)


def save_report(path: Path, report: dict, keep_mace: bool) -> None:
    """Write ``report``, keeping what another invocation wrote to the same file meanwhile: the
    molequi result when this one trained MACE only, MACE's when this one trained molequi only
    (the two sides may run as separate invocations)."""
    current = json.loads(path.read_text()) if path.is_file() else {}
    if "molequi" not in report and "molequi" in current:
        report["molequi"] = current["molequi"]
    with_own_molequi(path, report)
    if keep_mace and current.get("mace"):
        report["mace"] = current["mace"]
    path.write_text(json.dumps(report, indent=2) + "\n")


def with_own_molequi(path: Path, report: dict) -> dict:
    """``report`` (of the result file ``path``) with the molequi side's own copy of its result
    filled in when the file lacks it (a separate MACE-only invocation wrote the file last)."""
    own = path.with_suffix("") / "molequi_result.json"
    if "molequi" not in report and own.is_file():
        report["molequi"] = json.loads(own.read_text())
    return report


def render(args) -> int:
    """The table of every result file in ``args.out`` (``--readme``: into docs/benchmarks.md too)."""
    reports = [with_own_molequi(path, json.loads(path.read_text())) for path in sorted(args.out.glob("*min.json"))]
    reports = [r for r in reports if r.get("mace") and r.get("molequi")]
    text = markdown(reports)
    (args.out / "vs_mace.md").write_text(text)
    print(text)
    if args.readme:
        sys.path.insert(0, str(ROOT / "scripts"))
        from readme_section import update_readme_section

        pareto_plot(reports, PARETO_FIGURE)
        update_readme_section("vs-mace", text + f"\n![accuracy against MD speed]({PARETO_FIGURE.relative_to(ROOT)})\n")
    return 0


def pareto_plot(reports: list[dict], path: Path) -> None:
    """Test force MAE against MD steps/s, one panel per molecule, one marker per code and model,
    labelled with the budget: the lower right is better."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    molecules = sorted({r["molecule"] for r in reports})
    figure, axes = plt.subplots(1, len(molecules), figsize=(4.8 * len(molecules), 3.8), squeeze=False)
    markers = {"molequi (defaults)": ("o", "tab:blue"), "mace-64x0e": ("s", "tab:orange"), "mace-128x1o": ("^", "tab:red")}
    for ax, molecule in zip(axes[0], molecules):
        seen, points = set(), []
        for report in (r for r in reports if r["molecule"] == molecule):
            for side in [report["molequi"], *report["mace"]]:
                if side.get("md_steps_per_s") is None:
                    continue
                marker, colour = markers.get(side["model"], ("x", "k"))
                ax.scatter(side["md_steps_per_s"], side["forces_mae_meV_per_A"], marker=marker, color=colour,
                           label=None if side["model"] in seen else side["model"])
                ax.annotate(f"{report['minutes']:g} min", (side["md_steps_per_s"], side["forces_mae_meV_per_A"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=8)
                seen.add(side["model"])
                points.append((side["md_steps_per_s"], side["forces_mae_meV_per_A"]))
        # linear axes from 0 with head room: the speeds span well under a decade (a log axis showed no
        # tick in range) and the highest point must not sit on the frame or under the legend
        ax.set(title=f"rMD17 {molecule}", xlabel="MD steps/s (one molecule, 1 thread)",
               ylabel="test force MAE (meV/Å)")
        points = points or [(1.0, 1.0)]
        ax.set_xlim(0, 1.15 * max(x for x, _ in points))
        ax.set_ylim(0, 1.2 * max(y for _, y in points))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
