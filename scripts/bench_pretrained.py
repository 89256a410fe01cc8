#!/usr/bin/env python
"""The pretrained organic-xtb model against GFN2-xTB, and fine-tuning from it on rMD17.

Parts, each but ``xtb-stability`` on by default (``--parts``), results in ``OUT/pretrained.json`` and the
docs/benchmarks.md block ``pretrained`` (with ``--readme``):

- ``zero-shot``: energy and force errors against GFN2-xTB on the test split of
  ``datasets/organic_xtb.py`` (molecules whose Murcko scaffolds are absent from training), per
  MD temperature (300 / 600 / 1000 K frames) and over all test structures.
- ``stability``: Langevin MD (0.5 fs, friction 0.01/fs) of held-out molecules at 300 K and 600 K,
  all systems batched; a run fails when a bonded distance deviates more than 0.5 Å from its
  start, a new bond forms, or the engine's safety stops fire.
- ``xtb-stability`` (with ``--parts``; not in the default): GFN2-xTB's own Langevin MD of the
  same molecules (``--xtb-temperatures``, default 600 K) judged by the same criterion, one molecule
  at a time: what the reference itself does at that temperature, the bound a model of it meets.
- ``speed``: time per MD step (velocity Verlet through the ASE calculator) of drug-size held-out
  molecules, one thread: molequi against GFN2-xTB (tblite) itself; CPU seconds of each.
- ``finetune``: rMD17 (DFT) from N training structures: from scratch, Δ on xTB, fine-tuned from
  organic-xtb and fine-tuned Δ, each for the same epoch budget; test MAEs and CPU seconds.

Reduced settings (the defaults, ~40 min on 2 cores)::

    python scripts/bench_pretrained.py --readme

Full settings (the issue's; hours)::

    python scripts/bench_pretrained.py --molecules-md 100 --ps 10 --finetune-molecules aspirin ethanol toluene \\
        --sizes 50 250 950 --epochs 300 --readme
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from molequi.utils import cpu_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))  # readme_section
sys.path.insert(0, str(REPO / "datasets"))  # xtb_md: the xTB MD set-up the data set uses
RMD17 = REPO.parent / "shared" / "data" / "rmd17"
PARTS = ("zero-shot", "stability", "xtb-stability", "speed", "finetune")
VARIANTS = {  # name -> extra train flags
    "scratch": [],
    "delta": ["--baseline", "xtb"],
    "finetuned": ["--init", "organic-xtb"],
    "finetuned delta": ["--init", "organic-xtb", "--baseline", "xtb"],
}


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start"


def results_command(args: argparse.Namespace) -> str:
    return "python scripts/bench_pretrained.py " + " ".join(sys.argv[1:])


def file_sha256(path: str) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------ zero-shot
TEMPERATURE_BINS = ((300, 450), (450, 750), (750, 1000))
"""The MD frames' temperatures (drawn in 300-1000 K) grouped around 300, 600 and 1000 K."""


def temperature_bin(kelvin: float) -> str:
    low, high = next(((lo, hi) for lo, hi in TEMPERATURE_BINS if kelvin < hi), TEMPERATURE_BINS[-1])
    return f"MD {low}-{high} K"


def zero_shot(model, test: list, calibration=None) -> dict:
    """Energy MAE per atom (meV/atom), force MAE (meV/Å) against the xTB labels and the mean
    (calibrated, when ``calibration`` is given) force σ, per group."""
    from molequi.models.predict import predict

    results = predict(model, test, batch_size=32, calibration=calibration)
    groups: dict[str, list[int]] = {"all": list(range(len(test)))}
    for k, atoms in enumerate(test):
        if atoms.info.get("kind") == "md":
            groups.setdefault(temperature_bin(float(atoms.info["temperature_K"])), []).append(k)
        else:
            groups.setdefault(str(atoms.info.get("kind")), []).append(k)
        charge = int(atoms.info.get("charge", 0))
        groups.setdefault("neutral" if charge == 0 else f"charge {charge:+d}", []).append(k)
    table = {}
    for name, members in sorted(groups.items()):
        energy = [abs(results[k]["energy"] - test[k].get_potential_energy()) / len(test[k]) for k in members]
        forces = np.concatenate([np.abs(results[k]["forces"] - test[k].get_forces()).ravel() for k in members])
        sigma = [float(np.mean(results[k]["forces_std"])) for k in members if "forces_std" in results[k]]
        table[name] = {"structures": len(members), "energy_mae_meV_per_atom": 1000 * float(np.mean(energy)),
                       "forces_mae_meV_per_A": 1000 * float(np.mean(forces)),
                       "forces_sigma_meV_per_A": 1000 * float(np.mean(sigma)) if sigma else None}
    return table


# ------------------------------------------------------------------ stability
def stability_summary(outcomes: list[dict], ps: float) -> dict:
    """Stable fraction and mean time to failure (survivors count ``ps``) of per-molecule ``outcomes``
    (failures: a bond off by more than 0.5 Å, a new bond or a safety stop; :mod:`molequi.md.bonds`)."""
    failed = [o for o in outcomes if o["failed_ps"] is not None]
    return {"runs": len(outcomes), "stable_fraction": 1 - len(failed) / len(outcomes), "ps": ps,
            "mean_time_to_failure_ps": float(np.mean([o["failed_ps"] if o["failed_ps"] is not None else ps
                                                      for o in outcomes])),
            "failures": {o["molecule"]: f"{o['reason']} at {o['failed_ps']:.2f} ps" for o in failed}}


def stability(model_file: str, molecules: list, temperature: float, ps: float, dt: float = 0.5,
              check_every: int = 20, seed: int = 0) -> dict:
    """Fraction of Langevin runs that stay intact for ``ps`` picoseconds, and when the others broke."""
    from molequi.md.bonds import BondWatch
    from molequi.md.engine import BatchedMD
    from molequi.md.state import state_from_atoms
    from molequi.models.uncertainty.committee import Potential, load_models

    potential = Potential(load_models(model_file))
    starts = [m.copy() for m in molecules]
    engine = BatchedMD(potential, state_from_atoms(starts, temperature=temperature, friction=0.01, seed=seed),
                       dt=dt, ensemble="nvt", skin=1.0)
    steps, started = int(round(ps * 1000 / dt)), time.perf_counter()

    def progress() -> None:  # a line every tenth of the run: these runs take tens of minutes
        done = engine.state.step
        if done % max(1, steps // 10) == 0:
            print(f"stability {temperature:g} K: step {done}/{steps}, {engine.state.num_systems} running, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)

    engine.run(steps, [BondWatch(starts, every=check_every)], progress)
    failed = {event.system: (event.step * dt, event.reason) for event in reversed(engine.stopped)}  # first stop wins
    outcomes = [{"molecule": m.info.get("molecule", str(k)), "failed_ps": failed[k][0] / 1000 if k in failed else None,
                 "reason": failed[k][1] if k in failed else None} for k, m in enumerate(molecules)]
    return stability_summary(outcomes, ps)


def xtb_stability(molecules: list, temperature: float, ps: float, dt: float = 0.5, check_every: int = 20,
                  seed: int = 0) -> dict:
    """The same criterion for GFN2-xTB's own Langevin MD (ASE, friction 0.01/fs, one molecule at a
    time): how often the reference itself 'fails', i.e. the bound on what a model of it can reach."""
    import ase.units
    from ase.md.langevin import Langevin
    from tblite.ase import TBLite
    from xtb_md import initial_state

    from molequi.md.bonds import BondTopology

    outcomes = []
    for k, start in enumerate(molecules):
        atoms = initial_state(start, temperature, np.random.default_rng([seed, k]))
        atoms.calc = TBLite(method="GFN2-xTB", charge=float(start.info.get("charge", 0)), verbosity=0)
        dynamics = Langevin(atoms, timestep=dt * ase.units.fs, temperature_K=temperature,
                            friction=0.01 / ase.units.fs, fixcm=False,  # initial_state's FixCom holds the centre
                            rng=np.random.default_rng([seed, k, 1]))
        watch, outcome = BondTopology(start), {"molecule": start.info.get("molecule", str(k)), "failed_ps": None,
                                            "reason": None}
        try:
            for done in range(0, int(round(ps * 1000 / dt)), check_every):
                dynamics.run(check_every)
                reason = watch.failure(atoms.positions)
                if reason:
                    outcome.update(failed_ps=(done + check_every) * dt / 1000, reason=reason)
                    break
        except Exception as error:  # noqa: BLE001 - an SCF that does not converge ends the run as a failure
            outcome.update(failed_ps=dynamics.nsteps * dt / 1000, reason=f"xTB error ({type(error).__name__})")
        outcomes.append(outcome)
        print(f"xTB {temperature:g} K {outcome['molecule']}: {outcome['reason'] or 'stable'}", flush=True)
    return stability_summary(outcomes, ps)


# ------------------------------------------------------------------ speed
def step_time(atoms, calculator, steps: int) -> tuple[float, float]:
    """Seconds and CPU seconds per velocity-Verlet step (0.5 fs) of ``atoms`` with ``calculator``."""
    import ase.units
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calculator
    dynamics = VelocityVerlet(atoms, timestep=0.5 * ase.units.fs)
    dynamics.run(2)
    wall, cpu = time.perf_counter(), time.process_time()
    dynamics.run(steps)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def speed(model_file: str, molecules: list, steps: int, compiled: bool = False) -> dict:
    import torch
    from tblite.ase import TBLite

    from molequi.calculators.ase import MolequiCalculator

    torch.set_num_threads(1)
    rows = []
    for atoms in molecules:
        ours = step_time(atoms, MolequiCalculator(model_file), steps)
        lean = step_time(atoms, MolequiCalculator(model_file, force_spread=False), steps)
        fast = step_time(atoms, MolequiCalculator(model_file, compile=True), steps) if compiled else None
        fast_lean = (step_time(atoms, MolequiCalculator(model_file, compile=True, force_spread=False), steps)
                     if compiled else None)
        xtb = step_time(atoms, TBLite(method="GFN2-xTB", charge=float(atoms.info.get("charge", 0)), verbosity=0),
                        max(3, steps // 10))
        rows.append({"atoms": len(atoms), "molequi_ms": 1000 * ours[0], "molequi_cpu_ms": 1000 * ours[1],
                     "xtb_ms": 1000 * xtb[0], "xtb_cpu_ms": 1000 * xtb[1],
                     "compiled_cpu_ms": 1000 * fast[1] if fast else None, "no_force_sigma_cpu_ms": 1000 * lean[1],
                     "compiled_no_force_sigma_cpu_ms": 1000 * fast_lean[1] if fast_lean else None})
    return {"molecules": rows, "mean_atoms": float(np.mean([r["atoms"] for r in rows])),
            "speedup_wall": float(np.mean([r["xtb_ms"] / r["molequi_ms"] for r in rows])),
            "speedup_cpu": float(np.mean([r["xtb_cpu_ms"] / r["molequi_cpu_ms"] for r in rows])),
            "speedup_cpu_compiled": float(np.mean([r["xtb_cpu_ms"] / r["compiled_cpu_ms"] for r in rows]))
            if compiled else None,
            "speedup_cpu_no_force_sigma": float(np.mean([r["xtb_cpu_ms"] / r["no_force_sigma_cpu_ms"] for r in rows])),
            "speedup_cpu_compiled_no_force_sigma": float(np.mean([r["xtb_cpu_ms"] / r["compiled_no_force_sigma_cpu_ms"]
                                                                  for r in rows])) if compiled else None}


# ------------------------------------------------------------------ fine-tuning
def rmd17_subset(molecule: str, split: str, count: int, path: Path) -> Path:
    from ase.io import write

    from molequi.data.readers import read_structures

    write(path, read_structures(RMD17 / f"rmd17_{molecule}_{split}_01.npz")[:count])
    return path


def finetune(molecule: str, size: int, epochs: int, test_count: int, work: Path, variants: list[str],
             init_epochs: int | None = None, scheduler: str = "cosine") -> dict:
    """Train each of ``variants`` on ``size`` rMD17 structures (+ a small validation split) for
    ``epochs`` (those started from the pretrained model for ``init_epochs``, default the same)."""
    validation = max(5, min(50, size // 10))
    train = rmd17_subset(molecule, "train", size + validation, work / f"{molecule}_{size}.extxyz")
    test = rmd17_subset(molecule, "test", test_count, work / f"{molecule}_test.extxyz")
    recipe = work / f"finetune_{scheduler}.yaml"  # the learning-rate schedule every variant shares
    recipe.write_text(f"scheduler: {scheduler}\nmin_learning_rate: 1.0e-05\n")
    rows = {}
    for name in variants:
        flags = VARIANTS[name]
        budget = init_epochs if init_epochs and "--init" in flags else epochs
        out = work / f"{molecule}_{size}_{name.replace(' ', '_')}_{budget}"
        command = ["molequi", "train", "--config", str(recipe), "--data", str(train), "--test-data", str(test),
                   "--out", str(out), "--overwrite", "--max-epochs", str(budget), "--validation", str(validation),
                   "--no-progress", "--device", "cpu", *flags]
        saved = out / "bench_row.json"  # a finished variant with the same command is reused (reruns resume)
        if saved.is_file() and json.loads(saved.read_text()).get("command") == command[1:]:
            rows[name] = json.loads(saved.read_text())["row"]
            continue
        cpu = children_cpu()
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        cpu = children_cpu() - cpu
        if done.returncode != 0:
            rows[name] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
            continue
        metrics = json.loads((out / "test_metrics.json").read_text())
        rows[name] = {"forces_mae_meV_per_A": metrics["forces_mae_meV_per_A"],
                      "energy_mae_meV": metrics["energy_mae_meV"], "cpu_s": round(cpu, 1), "epochs": budget,
                      "scheduler": scheduler}
        saved.write_text(json.dumps({"command": command[1:], "row": rows[name]}))
    return rows


# ------------------------------------------------------------------ report
def finetune_markdown(table: dict) -> list[str]:
    """The fine-tuning table (force / energy MAE, CPU seconds, epochs per cell) and, where scratch and
    fine-tuned ran on the same data, how the fine-tuned run's error and CPU seconds compare."""
    lines = ["**Fine-tuning on rMD17 (DFT)**: test MAE force (meV/Å) / energy (meV), CPU s, epochs", "",
             "| molecule | N | " + " | ".join(VARIANTS) + " |", "|---|---:|" + "---:|" * len(VARIANTS)]
    checks = []
    for key, rows in table.items():
        molecule, size = key.rsplit(" ", 1)
        cells = []
        for name in VARIANTS:
            r = rows.get(name, {})
            cells.append(r.get("error", "–") if "forces_mae_meV_per_A" not in r else
                         f"{r['forces_mae_meV_per_A']:.1f} / {r['energy_mae_meV']:.1f}, {r['cpu_s']:.0f} s, "
                         f"{r.get('epochs', '?')} ep")
        lines.append(f"| {molecule} | {size} | " + " | ".join(cells) + " |")
        scratch = rows.get("scratch", {})
        for name in ("finetuned", "finetuned delta"):
            ours = rows.get(name, {})
            if "cpu_s" in ours and "cpu_s" in scratch:
                reached = ours["forces_mae_meV_per_A"] <= scratch["forces_mae_meV_per_A"]
                checks.append(f"{molecule} {size}, {name}: force MAE {ours['forces_mae_meV_per_A']:.1f} against "
                              f"scratch's {scratch['forces_mae_meV_per_A']:.1f} meV/Å with "
                              f"{ours['cpu_s'] / scratch['cpu_s']:.2f} of its CPU seconds"
                              f" ({'reaches' if reached else 'does not reach'} it)")
    schedules = sorted({r.get("scheduler", "plateau") for rows in table.values() for r in rows.values()
                        if isinstance(r, dict) and "cpu_s" in r})
    lines += ["", f"Learning-rate schedule: {', '.join(schedules)}; one thread per training."]
    if checks:
        lines += [""] + [f"- {check}" for check in checks]
    return lines + [""]


def stability_markdown(ours: dict, xtb: dict) -> list[str]:
    """The stability table, with GFN2-xTB's own MD beside it where it was run, and which molecules failed."""
    lines = ["**MD stability** (Langevin, 0.5 fs; failure: a bond off by > 0.5 Å, a new bond, or a safety stop)",
             "", "| T (K) | runs | ps each | stable | mean time to failure (ps) | GFN2-xTB's own MD stable |",
             "|---:|---:|---:|---:|---:|---:|"]
    ours = dict(sorted(ours.items(), key=lambda item: float(item[0])))  # merged runs may come in any order
    for temperature, row in ours.items():
        reference = xtb.get(temperature)
        cell = f"{100 * reference['stable_fraction']:.0f} % of {reference['runs']}" if reference else "–"
        lines.append(f"| {temperature} | {row['runs']} | {row['ps']} | {100 * row['stable_fraction']:.0f} % | "
                     f"{row['mean_time_to_failure_ps']:.2f} | {cell} |")
    for temperature, row in ours.items():
        failures, reference = row.get("failures", {}), xtb.get(temperature, {}).get("failures")
        if not failures:
            continue
        both = sorted(set(failures) & set(reference or {}))
        lines.append("")
        lines.append(f"Failed at {temperature} K: " + "; ".join(f"{name} ({why})" for name, why in sorted(failures.items()))
                     + "." + (f" GFN2-xTB's own MD of the same molecules fails {len(reference)}"
                              f" ({', '.join(f'{n} ({w})' for n, w in sorted(reference.items())) or 'none'});"
                              f" {len(both)} in common." if reference is not None else ""))
    return lines + [""]


def markdown(results: dict) -> str:
    lines = [f"Machine: {results['machine']}; model `{results['model']}`; command: `{results['command']}`.", ""]
    if "zero-shot" in results:
        lines += ["**Zero-shot against GFN2-xTB, held-out scaffolds**", "",
                  "| structures | n | energy MAE (meV/atom) | force MAE (meV/Å) | mean calibrated σ (meV/Å) |", "|---|---:|---:|---:|---:|"]
        for name, row in results["zero-shot"].items():
            sigma = f"{row['forces_sigma_meV_per_A']:.0f}" if row["forces_sigma_meV_per_A"] is not None else "–"
            lines.append(f"| {name} | {row['structures']} | {row['energy_mae_meV_per_atom']:.1f} | "
                         f"{row['forces_mae_meV_per_A']:.1f} | {sigma} |")
        lines.append("")
    if "stability" in results:
        lines += stability_markdown(results["stability"], results.get("xtb-stability", {}))
    if "speed" in results:
        row = results["speed"]
        lines += ["**Speed per MD step, one thread** (ASE velocity Verlet)", "",
                  "| atoms | molequi (ms) | GFN2-xTB (ms) | molequi CPU (ms) | compiled CPU (ms) | no force σ CPU (ms) "
                  "| compiled, no force σ CPU (ms) | xTB CPU (ms) |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in row["molecules"]:
            cells = [f"{r[key]:.1f}" if r.get(key) else "–"
                     for key in ("compiled_cpu_ms", "no_force_sigma_cpu_ms", "compiled_no_force_sigma_cpu_ms")]
            lines.append(f"| {r['atoms']} | {r['molequi_ms']:.1f} | {r['xtb_ms']:.1f} | {r['molequi_cpu_ms']:.1f} | "
                         + " | ".join(cells) + f" | {r['xtb_cpu_ms']:.1f} |")
        lines += ["", f"Per step molequi takes 1/{row['speedup_cpu']:.1f} of GFN2-xTB's CPU seconds (eager"
                  + (f", 1/{row['speedup_cpu_compiled']:.1f} compiled (`MolequiCalculator(compile=True)`)"
                     if row.get("speedup_cpu_compiled") else "")
                  + (f", 1/{row['speedup_cpu_no_force_sigma']:.1f} without the force σ "
                     "(`MolequiCalculator(force_spread=False)`)" if row.get("speedup_cpu_no_force_sigma") else "")
                  + (f", 1/{row['speedup_cpu_compiled_no_force_sigma']:.1f} compiled without the force σ"
                     if row.get("speedup_cpu_compiled_no_force_sigma") else "")
                  + f"; wall-clock ratio {row['speedup_wall']:.1f}) on molecules of {row['mean_atoms']:.0f} atoms "
                  "on average; xTB restarts each SCF from the previous step's density, as in MD.", ""]
    if "finetune" in results:
        lines += finetune_markdown(results["finetune"])
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="organic-xtb", help="model file or pretrained name (default: organic-xtb)")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "organic_xtb",
                        help="the organic_xtb data set folder (test.extxyz)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=[p for p in PARTS if p != "xtb-stability"])
    parser.add_argument("--molecules-md", type=int, default=40, help="held-out molecules per MD temperature")
    parser.add_argument("--ps", type=float, default=2.0, help="MD length per run, ps")
    parser.add_argument("--temperatures", nargs="+", type=float, default=[300.0, 600.0],
                        help="MD temperatures of the stability part, K (two processes may split them)")
    parser.add_argument("--xtb-temperatures", nargs="+", type=float, default=[600.0],
                        help="temperatures (K) of the xtb-stability part: GFN2-xTB's own MD of the same molecules "
                             "judged by the same criterion (one core, ~1 min per molecule and ps)")
    parser.add_argument("--speed-molecules", type=int, default=3, help="drug-size molecules timed")
    parser.add_argument("--speed-steps", type=int, default=40, help="MD steps timed per molecule (xTB: a tenth)")
    parser.add_argument("--compiled", action="store_true", help="also time the compiled model call (speed)")
    parser.add_argument("--finetune-molecules", nargs="+", default=["aspirin"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[50])
    parser.add_argument("--epochs", type=int, default=600, help="epoch budget of every fine-tuning variant")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="the fine-tuning variants trained (default: all four)")
    parser.add_argument("--init-epochs", type=int, default=None,
                        help="epoch budget of the variants started from the pretrained model (default: --epochs); "
                             "e.g. a third of it to test 'fine-tuning reaches scratch with 1/3 of its CPU seconds'")
    parser.add_argument("--scheduler", choices=["cosine", "plateau"], default="cosine",
                        help="learning-rate schedule of every variant (cosine: decays to 1e-5 over the budget)")
    parser.add_argument("--test-count", type=int, default=200, help="rMD17 test structures evaluated")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_pretrained")
    parser.add_argument("--readme", action="store_true", help="write the docs/benchmarks.md block 'pretrained'")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # before tblite and torch load: one thread each, as the comparison says

    import torch
    from ase.io import read

    from molequi import pretrained

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    model_file = str(pretrained.resolve(args.model))
    results: dict = {"machine": machine(), "model": args.model, "model_sha256": file_sha256(model_file),
                     "command": results_command(args)}
    test = read(args.data / "test.extxyz", index=":") if set(args.parts) - {"finetune"} else []
    if "zero-shot" in args.parts:
        from molequi.models.io import load_model

        shipped = pretrained.calibration_of(args.model)
        results["zero-shot"] = zero_shot(load_model(model_file), test, shipped)
        print(json.dumps(results["zero-shot"], indent=1))
    relaxed = {}
    for atoms in test:  # one held-out geometry per molecule
        if atoms.info.get("kind") == "relaxed" and atoms.info.get("molecule") not in relaxed:
            relaxed[atoms.info["molecule"]] = atoms
    molecules = sorted(relaxed.values(), key=lambda a: a.info["molecule"])
    chosen = [molecules[k] for k in sorted(np.random.default_rng(0).permutation(len(molecules))[:args.molecules_md])]
    if "stability" in args.parts:
        results["stability"] = {str(t): stability(model_file, chosen, t, args.ps) for t in args.temperatures}
        print(json.dumps(results["stability"], indent=1))
    if "xtb-stability" in args.parts:
        results["xtb-stability"] = {str(t): xtb_stability(chosen, t, args.ps) for t in args.xtb_temperatures}
        print(json.dumps(results["xtb-stability"], indent=1))
    if "speed" in args.parts:
        large = sorted(molecules, key=len)[-args.speed_molecules:]
        results["speed"] = speed(model_file, large, args.speed_steps, args.compiled)
        print(json.dumps(results["speed"], indent=1))
    if "finetune" in args.parts:
        if not RMD17.is_dir():
            sys.exit(f"rMD17 not found at {RMD17}")
        results["finetune"] = {}
        for molecule in args.finetune_molecules:
            for size in args.sizes:
                results["finetune"][f"{molecule} {size}"] = finetune(
                    molecule, size, args.epochs, args.test_count, args.out, args.variants, args.init_epochs,
                    args.scheduler)
                print(json.dumps(results["finetune"], indent=1))
    saved = args.out / "pretrained.json"
    if saved.is_file():  # parts run separately (e.g. in two processes) add up in one report
        earlier = json.loads(saved.read_text())
        if earlier.get("model_sha256") == results["model_sha256"]:
            if "finetune" in results:  # rows of other sizes and variants run earlier stay
                rows = earlier.get("finetune", {})
                results["finetune"] = {**rows, **{key: {**rows.get(key, {}), **row}
                                                  for key, row in results["finetune"].items()}}
            for part in ("stability", "xtb-stability"):  # temperatures run elsewhere stay
                if part in results:
                    results[part] = {**earlier.get(part, {}), **results[part]}
            results = {**earlier, **{k: v for k, v in results.items() if k in PARTS}}
            results["command"] = earlier["command"] + "; " + results_command(args)
    saved.write_text(json.dumps(results, indent=1))
    text = markdown(results)
    (args.out / "pretrained.md").write_text(text)
    print(text)
    if args.readme:
        from readme_section import update_readme_section

        update_readme_section("pretrained", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
