"""``molequi md``: molecular dynamics with a trained model (or a committee), batched on the device.

Example::

    molequi md runs/quickstart/model.molequi structure.xyz --steps 2000 --dt 0.5 --out runs/quickstart/md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units

from molequi.errors import ConfigError, MolequiError

HELP = "run molecular dynamics (NVE or Langevin NVT) with a trained model or a committee"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="trained model file; several files separated by commas form a committee "
                             "(mean forces drive the dynamics, the spread is logged)")
    parser.add_argument("structures", metavar="STRUCTURE", nargs="+",
                        help="structure file(s), any format ase.io.read knows (or an rMD17 .npz); the last frame "
                             "is used, 'file.xyz@:' takes every frame and 'file.xyz@0' the first; each frame is a system")
    parser.add_argument("--steps", type=int, required=True, help="number of MD steps (with --resume: the total to reach)")
    parser.add_argument("--dt", type=float, required=True, help="time step, fs (0.5 fs suits molecules with hydrogens)")
    parser.add_argument("--ensemble", choices=["nve", "nvt"], default="nve",
                        help="nve: velocity Verlet; nvt: Langevin (BAOAB) thermostat at --temperature")
    parser.add_argument("--temperature", type=float, default=300.0,
                        help="K: Maxwell-Boltzmann initial velocities, the NVT target, and the safety limit (10x)")
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs (0.01 = 100 fs relaxation)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="copies of each structure, each with its own seed (system k uses seed + k)")
    parser.add_argument("--engine", choices=["batched", "ase"], default="batched",
                        help="batched: all systems at once on the device; ase: ASE integrators with the "
                             "MolequiCalculator, one system after another")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=["float32", "float64"], default=None,
                        help="model precision (default: the precision the model was saved in); the integrator is float64")
    parser.add_argument("--out", default="md", help="output folder (CSV logs, extxyz trajectories, restart, energy.png)")
    parser.add_argument("--seed", type=int, default=0, help="base random seed for velocities and Langevin noise")
    parser.add_argument("--traj-every", type=int, default=100, help="write a trajectory frame every N steps (0: never)")
    parser.add_argument("--log-every", type=int, default=10, help="write a CSV log row every N steps (0: never)")
    parser.add_argument("--restart-every", type=int, default=1000,
                        help="write the restart file every N steps (0: never; batched engine only)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/restart.safetensors up to --steps (batched engine)")
    parser.add_argument("--skin", type=float, default=1.0, help="neighbor-list skin, Å (rebuilt after moves > skin/2)")
    parser.add_argument("--max-temperature", type=float, default=None,
                        help="stop a system above this temperature, K (default: max(10 x --temperature, 100))")
    parser.add_argument("--min-distance", type=float, default=0.5,
                        help="stop a system when two atoms come closer than this, Å")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default; 1 is often fastest for small molecules)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--calibration", metavar="JSON", default=None,
                        help="calibration of the committee/ensemble spread from 'molequi calibrate': the logged "
                             "energy_std_eV and forces_std_max_eV_per_A are calibrated stds")


def read_systems(specs: list[str], replicas: int) -> list[Atoms]:
    """The systems to simulate: the selected frames of every file, each ``replicas`` times."""
    from ase.io.formats import string2index

    from molequi.data.graph import validate_atoms
    from molequi.data.readers import read_structures

    systems = []
    for spec in specs:
        path, _, index = spec.partition("@")
        frames = read_structures(path)
        selected = frames[string2index(index or "-1")]
        selected = selected if isinstance(selected, list) else [selected]
        for k, atoms in enumerate(selected):
            atoms = atoms.copy()
            atoms.calc = None
            validate_atoms(atoms, f"{path} frame {k}")
            systems.extend(atoms.copy() for _ in range(replicas))
    if not systems:
        raise ConfigError("no structures selected")
    return systems


def run(args: argparse.Namespace) -> int:
    from molequi.md import Potential, load_models

    if args.steps < 0 or args.dt <= 0 or args.replicas < 1:
        raise ConfigError("--steps must be ≥ 0, --dt > 0 fs and --replicas ≥ 1")
    if args.resume and args.engine != "batched":
        raise ConfigError("--resume needs --engine batched (the ASE engine writes no restart files)")
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [p for p in args.model.split(",") if p]
    from molequi.devices import resolve_device

    device = resolve_device(args.device)
    potential = Potential(load_models(paths, device=device, dtype=args.dtype), calibration=args.calibration)
    systems = read_systems(args.structures, args.replicas)
    runner = run_batched if args.engine == "batched" else run_ase
    summary = runner(args, potential, systems)
    print_summary(summary, args.ensemble)
    print(f"output: {Path(args.out).resolve()}")
    return 0


class Progress:
    """tqdm bar with steps/s and ns/day in its postfix."""

    def __init__(self, total: int, dt: float, disable: bool, initial: int = 0) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="step", disable=disable or None, dynamic_ncols=True)
        self.dt, self.start, self.count, self.last = dt, time.perf_counter(), 0, 0.0

    def __call__(self, n: int = 1) -> None:
        self.count += n
        self.bar.update(n)
        now = time.perf_counter()
        if now - self.last > 1.0:
            rate = self.count / (now - self.start)
            self.bar.set_postfix_str(f"{rate:.1f} steps/s, {rate * self.dt * 86400 / 1e6:.3f} ns/day")
            self.last = now

    def write(self, message: str) -> None:
        self.bar.write(message)

    def close(self) -> None:
        self.bar.close()


def run_batched(args, potential, systems: list[Atoms]) -> list[dict]:
    from molequi.md import BatchedMD, MDOutput, state_from_atoms

    output_args = dict(committee=potential.is_committee, traj_every=args.traj_every, log_every=args.log_every,
                       restart_every=args.restart_every)
    if args.resume:
        engine, _ = BatchedMD.from_restart(Path(args.out) / "restart.safetensors", potential)
        output = MDOutput(args.out, len(systems), resume=True, **output_args)
        for event in engine.stopped:
            print(event)
    else:
        state = state_from_atoms(systems, temperature=args.temperature, friction=args.friction, seed=args.seed)
        engine = BatchedMD(potential, state, dt=args.dt, ensemble=args.ensemble, skin=args.skin,
                           max_temperature=args.max_temperature, min_distance=args.min_distance)
        output = MDOutput(args.out, len(systems), **output_args)
        output(engine)  # step 0
    n_atoms = [len(a) for a in systems]
    progress = Progress(args.steps, args.dt, args.no_progress, initial=engine.state.step)
    reported = len(engine.stopped)

    def after_step() -> None:
        nonlocal reported
        progress()
        for event in engine.stopped[reported:]:
            progress.write(str(event))
        reported = len(engine.stopped)

    try:
        engine.run(max(args.steps - engine.state.step, 0), [output], callback=after_step)
    finally:
        progress.close()
        if args.restart_every:
            output.checkpoint(engine)
        output.close()
    summary = [{"system": k, "n_atoms": n_atoms[k]} for k in range(len(systems))]
    for event in engine.stopped:
        summary[event.system]["stopped"] = str(event)
    total = engine.total_energy().cpu().numpy()
    for k, system in enumerate(engine.state.system_ids.tolist()):
        summary[system].update(drift=(total[k] - float(engine.energy_reference[k])), max_deviation=float(engine.max_deviation[k]))
    return summary


def run_ase(args, potential, systems: list[Atoms]) -> list[dict]:
    """One system after another through ASE's integrators and the MolequiCalculator."""
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    from molequi.calculators import MolequiCalculator
    from molequi.md import MDOutput, state_from_atoms

    output = MDOutput(args.out, len(systems), committee=potential.is_committee, traj_every=args.traj_every,
                      log_every=args.log_every, restart_every=0)
    progress = Progress(args.steps * len(systems), args.dt, args.no_progress)
    summary = []
    stop_temperature = args.max_temperature or max(10 * args.temperature, 100.0)
    try:
        for k, atoms in enumerate(systems):
            atoms = atoms.copy()
            # the batched engine's initial velocities (same seeds), in ASE units
            start = state_from_atoms([atoms], temperature=args.temperature, seed=args.seed + k)
            atoms.set_velocities(start.velocities.numpy() / units.fs)
            atoms.calc = MolequiCalculator(potential.models, skin=args.skin, calibration=potential.calibration)
            if args.ensemble == "nve":
                dynamics = VelocityVerlet(atoms, timestep=args.dt * units.fs)
            else:
                dynamics = Langevin(atoms, args.dt * units.fs, temperature_K=args.temperature,
                                    friction=args.friction / units.fs, fixcm=False, rng=np.random.default_rng(args.seed + k))
            record = {"system": k, "n_atoms": len(atoms)}
            reference = atoms.get_potential_energy() + atoms.get_kinetic_energy()
            record.update(drift=0.0, max_deviation=0.0)

            def observe(atoms=atoms, k=k, record=record, reference=reference, dynamics=dynamics) -> None:
                step = dynamics.nsteps
                total = atoms.get_potential_energy() + atoms.get_kinetic_energy()
                record["drift"] = total - reference
                record["max_deviation"] = max(record["max_deviation"], abs(total - reference))
                if args.log_every and step % args.log_every == 0:
                    output.add_row(k, ase_log_row(atoms, step, args.dt, potential.is_committee))
                if args.traj_every and step % args.traj_every == 0:
                    output.add_frame(k, snapshot(atoms, step, args.dt))
                reason = ase_stop_reason(atoms, stop_temperature, args.min_distance)
                if reason:
                    raise _Stop(f"system {k} stopped at step {step}: {reason}")
                if step:
                    progress()

            dynamics.attach(observe, interval=1)
            try:
                dynamics.run(args.steps)  # ASE calls the observer at step 0 too
            except _Stop as stop:
                record["stopped"] = str(stop)
                progress.write(str(stop))
            summary.append(record)
    finally:
        progress.close()
        output.close()
    return summary


class _Stop(MolequiError):
    pass


def ase_log_row(atoms: Atoms, step: int, dt: float, committee: bool) -> list[str]:
    potential, kinetic = atoms.get_potential_energy(), atoms.get_kinetic_energy()
    dof = 3 * len(atoms) - 3 if len(atoms) > 1 else 3
    values = [potential, kinetic, potential + kinetic, 2 * kinetic / (dof * units.kB)]
    cells = [f"{step * dt:.6g}", str(step)] + [f"{v:.10g}" for v in values]
    results = atoms.calc.results
    if "energy_std" in results:  # one plain model has no spread: the columns stay empty
        cells += [f"{results['energy_std']:.10g}", f"{float(results['forces_std'].max()):.10g}"]
    return cells


def snapshot(atoms: Atoms, step: int, dt: float) -> Atoms:
    from ase.calculators.singlepoint import SinglePointCalculator

    frame = atoms.copy()
    frame.info.update(step=step, time_fs=step * dt)
    frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces().copy())
    return frame


def ase_stop_reason(atoms: Atoms, max_temperature: float, min_distance: float) -> str | None:
    forces = atoms.get_forces()
    if not (np.all(np.isfinite(forces)) and np.all(np.isfinite(atoms.positions))):
        return "non-finite forces or positions"
    temperature = atoms.get_temperature()
    if temperature > max_temperature:
        return f"temperature {temperature:.0f} K exceeds {max_temperature:.0f} K"
    neighbors = atoms.calc.neighbors
    if neighbors.edge_index is not None and neighbors.edge_index.shape[1]:
        i, j = neighbors.edge_index
        closest = np.linalg.norm(atoms.positions[j] - atoms.positions[i] + neighbors.shifts, axis=1).min()
        if closest < min_distance:
            return f"two atoms are {closest:.3f} Å apart (< {min_distance} Å)"
    return None


def print_summary(summary: list[dict], ensemble: str) -> None:
    """Per system: energy drift (E_last − E_first)/n_atoms and the max deviation, meV/atom."""
    label = "energy drift" if ensemble == "nve" else "total-energy change (thermostatted, not a drift)"
    print(f"{label} per system, (E_last - E_first)/n_atoms and max |E - E_first|/n_atoms:")
    for record in summary:
        if "stopped" in record:
            print(f"  {record['stopped']}")
            continue
        n = record["n_atoms"]
        print(f"  system {record['system']}: {1000 * record['drift'] / n:+.4f} meV/atom "
              f"(max deviation {1000 * record['max_deviation'] / n:.4f} meV/atom)")
