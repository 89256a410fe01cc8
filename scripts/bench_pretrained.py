#!/usr/bin/env python
"""The pretrained organic-xtb model against GFN2-xTB, and fine-tuning from it on rMD17.

Four parts, each on by default (``--parts``), results in ``OUT/pretrained.json`` and the
docs/benchmarks.md block ``pretrained`` (with ``--readme``):

- ``zero-shot``: energy and force errors against GFN2-xTB on the test split of
  ``datasets/organic_xtb.py`` (molecules whose Murcko scaffolds are absent from training), per
  MD temperature (300 / 600 / 1000 K frames) and over all test structures.
- ``stability``: Langevin MD (0.5 fs, friction 0.01/fs) of held-out molecules at 300 K and 600 K,
  all systems batched; a run fails when a bonded distance deviates more than 0.5 Å from its
  start, a new bond forms, or the engine's safety stops fire.
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
RMD17 = REPO.parent / "shared" / "data" / "rmd17"
PARTS = ("zero-shot", "stability", "speed", "finetune")
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
def bonds_of(atoms) -> np.ndarray:
    """[B, 2] bonded pairs of ``atoms`` (ASE's natural covalent cutoffs)."""
    from ase.neighborlist import natural_cutoffs, neighbor_list

    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms))
    keep = i < j
    return np.stack([i[keep], j[keep]], axis=1)


def stability(model_file: str, molecules: list, temperature: float, ps: float, dt: float = 0.5,
              check_every: int = 20, seed: int = 0) -> dict:
    """Fraction of Langevin runs that stay intact for ``ps`` picoseconds, and when the others broke."""
    import torch
    from ase.neighborlist import natural_cutoffs

    from molequi.md.engine import BatchedMD
    from molequi.md.state import state_from_atoms
    from molequi.models.uncertainty.committee import Potential, load_models

    potential = Potential(load_models(model_file))
    starts = [m.copy() for m in molecules]
    bonds = [bonds_of(m) for m in starts]
    lengths = [np.linalg.norm(m.positions[b[:, 1]] - m.positions[b[:, 0]], axis=1) for m, b in zip(starts, bonds)]
    radii = [np.array(natural_cutoffs(m)) for m in starts]
    engine = BatchedMD(potential, state_from_atoms(starts, temperature=temperature, friction=0.01, seed=seed),
                       dt=dt, ensemble="nvt", skin=1.0)
    steps = int(round(ps * 1000 / dt))
    failed: dict[int, float] = {}
    for done in range(0, steps, check_every):
        engine.run(min(check_every, steps - done))
        for event in engine.stopped:
            failed.setdefault(int(event.system), event.step * dt)
        state = engine.state
        keep = torch.ones(state.num_systems, dtype=torch.bool)
        positions = state.positions.cpu().numpy()
        batch = state.batch.cpu().numpy()
        for slot, system in enumerate(state.system_ids.tolist()):
            xyz = positions[batch == slot]
            b = bonds[system]
            stretched = len(b) > 0 and np.abs(np.linalg.norm(xyz[b[:, 1]] - xyz[b[:, 0]], axis=1)
                                              - lengths[system]).max() > 0.5
            distances = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
            close = distances < 0.9 * (radii[system][:, None] + radii[system][None])  # tighter than a bond: new one
            close[b[:, 0], b[:, 1]] = close[b[:, 1], b[:, 0]] = False
            np.fill_diagonal(close, False)
            if stretched or close.any():
                failed.setdefault(system, engine.time)
                keep[slot] = False
        if not bool(keep.all()):
            engine._remove(keep.to(state.positions.device))
        if engine.state.num_systems == 0:
            break
    times = [failed.get(k, ps * 1000) for k in range(len(molecules))]
    return {"runs": len(molecules), "stable_fraction": 1 - len(failed) / len(molecules), "ps": ps,
            "mean_time_to_failure_ps": float(np.mean([t / 1000 for t in times]))}


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


def finetune(molecule: str, size: int, epochs: int, test_count: int, work: Path) -> dict:
    """Train each variant on ``size`` rMD17 structures (+ a small validation split) for ``epochs``."""
    validation = max(5, min(50, size // 10))
    train = rmd17_subset(molecule, "train", size + validation, work / f"{molecule}_{size}.extxyz")
    test = rmd17_subset(molecule, "test", test_count, work / f"{molecule}_test.extxyz")
    rows = {}
    for name, flags in VARIANTS.items():
        out = work / f"{molecule}_{size}_{name.replace(' ', '_')}"
        command = ["molequi", "train", "--data", str(train), "--test-data", str(test), "--out", str(out),
                   "--overwrite", "--max-epochs", str(epochs), "--validation", str(validation), "--no-progress",
                   "--device", "cpu", *flags]
        cpu = children_cpu()
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        cpu = children_cpu() - cpu
        if done.returncode != 0:
            rows[name] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
            continue
        metrics = json.loads((out / "test_metrics.json").read_text())
        rows[name] = {"forces_mae_meV_per_A": metrics["forces_mae_meV_per_A"],
                      "energy_mae_meV": metrics["energy_mae_meV"], "cpu_s": round(cpu, 1)}
    return rows


# ------------------------------------------------------------------ report
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
        lines += ["**MD stability** (Langevin, 0.5 fs; failure: a bond off by > 0.5 Å, a new bond, or a safety stop)",
                  "", "| T (K) | runs | ps each | stable | mean time to failure (ps) |", "|---:|---:|---:|---:|---:|"]
        for temperature, row in results["stability"].items():
            lines.append(f"| {temperature} | {row['runs']} | {row['ps']} | {100 * row['stable_fraction']:.0f} % | "
                         f"{row['mean_time_to_failure_ps']:.2f} |")
        lines.append("")
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
        lines += ["**Fine-tuning on rMD17 (DFT)**: test MAE force (meV/Å) / energy (meV), CPU s; same epoch budget",
                  "", "| molecule | N | " + " | ".join(VARIANTS) + " |", "|---|---:|" + "---:|" * len(VARIANTS)]
        for key, rows in results["finetune"].items():
            molecule, size = key.rsplit(" ", 1)
            cells = []
            for name in VARIANTS:
                r = rows.get(name, {})
                cells.append(r.get("error", "–") if "forces_mae_meV_per_A" not in r else
                             f"{r['forces_mae_meV_per_A']:.1f} / {r['energy_mae_meV']:.1f}, {r['cpu_s']:.0f} s")
            lines.append(f"| {molecule} | {size} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="organic-xtb", help="model file or pretrained name (default: organic-xtb)")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "organic_xtb",
                        help="the organic_xtb data set folder (test.extxyz)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--molecules-md", type=int, default=40, help="held-out molecules per MD temperature")
    parser.add_argument("--ps", type=float, default=2.0, help="MD length per run, ps")
    parser.add_argument("--speed-molecules", type=int, default=3, help="drug-size molecules timed")
    parser.add_argument("--speed-steps", type=int, default=40, help="MD steps timed per molecule (xTB: a tenth)")
    parser.add_argument("--compiled", action="store_true", help="also time the compiled model call (speed)")
    parser.add_argument("--finetune-molecules", nargs="+", default=["aspirin"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[50])
    parser.add_argument("--epochs", type=int, default=150, help="epoch budget of every fine-tuning variant")
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
    if "stability" in args.parts:
        rng = np.random.default_rng(0)
        chosen = [molecules[k] for k in sorted(rng.permutation(len(molecules))[:args.molecules_md])]
        results["stability"] = {str(t): stability(model_file, chosen, t, args.ps) for t in (300.0, 600.0)}
        print(json.dumps(results["stability"], indent=1))
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
                results["finetune"][f"{molecule} {size}"] = finetune(molecule, size, args.epochs, args.test_count,
                                                                     args.out)
                print(json.dumps(results["finetune"], indent=1))
    saved = args.out / "pretrained.json"
    if saved.is_file():  # parts run separately (e.g. in two processes) add up in one report
        earlier = json.loads(saved.read_text())
        if earlier.get("model_sha256") == results["model_sha256"]:
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
