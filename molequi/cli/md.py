"""``molequi md``: molecular dynamics with a trained model (or a committee), batched on the device.

Parse the options into :class:`~molequi.md.runner.MDSettings` and call
:func:`~molequi.md.runner.run_md_files`; the run itself (both engines) lives in :mod:`molequi.md`.
Exit status: 0 when every system ran to the end, 3 when a safety stop took a system out (the
outputs are written; stderr names the systems), 2 for a usage error (1 stays a crash's).

Example::

    molequi md runs/quickstart/model.molequi structure.xyz --steps 2000 --dt 0.5 --out runs/quickstart/md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from molequi.cli.choices import DTYPES, MD_ENGINES, MD_ENSEMBLES, TRAJ_FORMATS
from molequi.cli.options import add_model_option, model_paths

if TYPE_CHECKING:
    from molequi.md.runner import MDSettings

STOPPED_EXIT_CODE = 3
"""Exit status of a run that a safety stop cut short (its outputs are written)."""

HELP = "run molecular dynamics (NVE or Langevin NVT) with a trained model or a committee"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # the first positional is the model unless --model is given: say both forms, not argparse's guess
    parser.usage = ("%(prog)s MODEL STRUCTURE [STRUCTURE ...] --steps N --dt FS [options]\n"
                    "       %(prog)s --model FILE [--model FILE ...] STRUCTURE [STRUCTURE ...] --steps N --dt FS "
                    "[options]")
    parser.add_argument("structures", metavar="STRUCTURE", nargs="+",
                        help="structure file(s), any format ase.io.read knows (or an rMD17 .npz); the last frame "
                             "is used, 'file.xyz@:' takes every frame and 'file.xyz@0' the first; each frame is a "
                             "system. Without --model the first argument is the model file (a .molequi file or a "
                             "pretrained name); without any model, the pretrained organic-xtb model runs")
    add_model_option(parser)
    parser.add_argument("--steps", type=int, required=True, help="number of MD steps (with --resume: the total to reach)")
    parser.add_argument("--dt", type=float, required=True, help="time step, fs (0.5 fs suits molecules with hydrogens)")
    parser.add_argument("--ensemble", choices=MD_ENSEMBLES, default="nve",
                        help="nve: velocity Verlet; nvt: Langevin (BAOAB) thermostat at --temperature")
    parser.add_argument("--temperature", type=float, default=300.0,
                        help="K: Maxwell-Boltzmann initial velocities, the NVT target, and the safety limit (10x)")
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs (0.01 = 100 fs relaxation)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="copies of each structure, each with its own seed (system k uses seed + k)")
    parser.add_argument("--engine", choices=MD_ENGINES, default="batched",
                        help="batched: all systems at once on the device; ase: ASE integrators with the "
                             "MolequiCalculator, one system after another")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="model precision (default: the precision the model was saved in); the integrator is float64")
    parser.add_argument("--out", default="md", help="output folder (CSV logs, extxyz trajectories, restart, energy.png)")
    parser.add_argument("--seed", type=int, default=0, help="base random seed for velocities and Langevin noise")
    parser.add_argument("--traj-every", type=int, default=100, help="write a trajectory frame every N steps (0: never)")
    parser.add_argument("--traj-format", choices=TRAJ_FORMATS, default="extxyz",
                        help="trajectory files: extxyz (text) or traj (ASE's binary trajectory); both read back "
                             "with ase.io.read and carry velocities, energy, forces and info['system']")
    parser.add_argument("--traj-single", action="store_true",
                        help="one trajectory file for every system (OUT/trajectory.FORMAT, frames in time order, "
                             "tagged atoms.info['system']) instead of one per system")
    parser.add_argument("--log-every", type=int, default=10, help="write a CSV log row every N steps (0: never)")
    parser.add_argument("--restart-every", type=int, default=1000,
                        help="write the restart file every N steps (0: never; batched engine only)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in OUT from its restart.safetensors up to --steps (batched engine); "
                             "refused if the model, the structures or a setting that shapes the trajectory changed")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in an OUT that holds an earlier run, deleting that run's files "
                             "(without it, a non-empty OUT is refused)")
    parser.add_argument("--skin", type=float, default=1.0, help="neighbor-list skin, Å (rebuilt after moves > skin/2)")
    parser.add_argument("--max-temperature", type=float, default=None,
                        help="stop a system above this temperature, K (default: max(10 x --temperature, 100))")
    parser.add_argument("--min-distance", type=float, default=0.5,
                        help="stop a system when two atoms come closer than this, Å")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default; 1 is often fastest for small molecules)")
    parser.add_argument("--compile", action="store_true",
                        help="evaluate the model through torch.compile: the first step compiles (tens of seconds on "
                        "a CPU), later steps are faster (scripts/bench_md.py); eager, with one warning, where it fails")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay the batched engine's force call as a CUDA graph over fixed-capacity neighbor "
                        "buffers (CUDA only; best with --compile; eager again if the neighbor list outgrows them)")
    parser.add_argument("--no-progress", action="store_true", help="no progress (a bar on a terminal, a line every 30 s in a log file)")
    parser.add_argument("--calibration", metavar="JSON", default=None,
                        help="calibration of the committee/ensemble spread from 'molequi calibrate': the logged "
                             "energy_std_eV and forces_std_max_eV_per_A are calibrated stds, and in_domain (1/0) "
                             "judges each logged step against its in-domain threshold (warned once when a system "
                             "leaves the domain)")
    parser.add_argument("--stop-out-of-domain", action="store_true",
                        help="stop a system at its first step out of the --calibration's domain, writing its last "
                             "frame to OUT/out_of_domain.extxyz (exit status 3)")
    parser.add_argument("--stop-broken-bonds", action="store_true",
                        help="stop a molecule when a bond of its start structure is stretched or compressed by more "
                             "than 0.5 Å or a new bond forms (bonded: closer than the covalent radii plus 0.45 Å), "
                             "writing its last frame to OUT/broken_bonds.extxyz (exit status 3)")


def settings_from_args(args: argparse.Namespace) -> MDSettings:
    """The run's :class:`~molequi.md.runner.MDSettings` from the parsed options (validated)."""
    from molequi.md.runner import MDSettings

    return MDSettings(
        steps=args.steps, dt=args.dt, ensemble=args.ensemble, temperature=args.temperature, friction=args.friction,
        engine=args.engine, seed=args.seed, skin=args.skin, max_temperature=args.max_temperature,
        min_distance=args.min_distance, traj_every=args.traj_every, log_every=args.log_every,
        restart_every=args.restart_every, progress=not args.no_progress,
        traj_format=args.traj_format, traj_single=args.traj_single, stop_out_of_domain=args.stop_out_of_domain,
        stop_broken_bonds=args.stop_broken_bonds,
    )


def models_and_structures(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The model files (every ``--model``, else the first positional argument) and the structures."""
    from molequi.errors import ConfigError

    from molequi import pretrained

    structures = list(args.structures)
    first = structures[0]
    takes_model = not args.models and (first.endswith(".molequi") or pretrained.is_name(first) or len(structures) > 1
                                        and not _looks_like_structure(first))
    args.model = structures.pop(0) if takes_model else None
    models = model_paths(args, getattr(args, "argv", None), default=pretrained.DEFAULT)
    if not structures:
        raise ConfigError(f"no structure given: molequi md {models[0]} STRUCTURE --steps N --dt FS "
                          "(or molequi md --model FILE STRUCTURE ...)")
    stray = [path for path in structures if path.partition("@")[0].endswith(".molequi")]
    if stray:  # a committee member given as a positional beside --model
        raise ConfigError(f"{stray[0]} is a model file, not a structure: give every committee member with --model "
                          f"({' '.join(f'--model {path}' for path in [*models, *stray])})")
    return models, structures


def _looks_like_structure(path: str) -> bool:
    """Whether ``path`` (maybe with an ``@frames`` tail) names a structure file ASE can read, by its suffix."""
    from ase.io.formats import filetype, ioformats

    name = path.partition("@")[0]
    if name.endswith(".npz"):
        return True
    try:
        return filetype(name, read=False) in ioformats
    except Exception:  # ASE raises a bare UnknownFileTypeError (a ValueError) or others for odd names
        return False


def run(args: argparse.Namespace) -> int:
    from molequi.cli.paths import guard_outputs
    from molequi.md.runner import MD_OUTPUTS, run_md_files

    settings = settings_from_args(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    models, structures = models_and_structures(args)
    guard_outputs({"--model": models, "STRUCTURE": structures, "--calibration": args.calibration},
                  folders=[("--out", args.out, MD_OUTPUTS)])
    result = run_md_files(models, structures, settings, args.out, replicas=args.replicas,
                          device=args.device, dtype=args.dtype, resume=args.resume, overwrite=args.overwrite,
                          calibration=args.calibration, compile=args.compile,
                          cuda_graphs=args.cuda_graphs)
    print("\n".join(result.summary_lines()))
    print(f"output: {Path(args.out).resolve()}")
    if result.stopped:
        print(f"error: {result.stop_message()}", file=sys.stderr)
        return STOPPED_EXIT_CODE
    return 0
