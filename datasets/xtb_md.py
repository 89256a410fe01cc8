#!/usr/bin/env python
"""Generate a small, labelled molecular-dynamics data set with GFN2-xTB. Nothing is downloaded.

This is the default data set of the molequi quickstart. It runs Langevin MD of one small
molecule with GFN2-xTB (through tblite), keeps decorrelated frames, labels each one with the
GFN2-xTB energy and forces, and writes them as extended XYZ:

    python datasets/xtb_md.py --out data/xtb_ethanol.extxyz                  # 600 frames
    python datasets/xtb_md.py --out data/xtb_ethanol.extxyz --split          # + 200 test frames
    python datasets/xtb_md.py --out data/water.extxyz --molecule water --n-frames 100

With ``--split`` two files are written next to ``--out``: ``<stem>_train.extxyz`` and
``<stem>_test.extxyz``. The test frames come from a second, independently seeded trajectory,
so they are not simply the next frames of the training trajectory.

``ase.io.read(path, ":")`` returns atoms whose ``get_potential_energy()`` (eV) and
``get_forces()`` (eV/Å) give the labels. Units throughout: positions Å, energies eV, forces
eV/Å, time fs, temperature K.

The output is a pure function of the arguments (same seed → byte-identical file) on one
machine with one tblite build; see ``datasets/xtb_md.md`` for what can break that.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import difflib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixCom
from ase.io import write
from ase.md.langevin import Langevin

METHOD = "GFN2-xTB"

# Friendly names → names understood by ase.build.molecule (mostly the G2 set). Any G2 name
# (e.g. "CH3CH2OH", "C6H6") is accepted as well.
FRIENDLY_NAMES: dict[str, str] = {
    "ethanol": "CH3CH2OH",
    "methanol": "CH3OH",
    "water": "H2O",
    "acetaldehyde": "CH3CHO",
    "formaldehyde": "H2CO",
    "formic_acid": "HCOOH",
    "acetic_acid": "CH3COOH",
    "acetone": "CH3COCH3",
    "acetamide": "CH3CONH2",
    "acetonitrile": "CH3CN",
    "methane": "CH4",
    "ethane": "C2H6",
    "propane": "C3H8",
    "ethylene": "C2H4",
    "acetylene": "C2H2",
    "ammonia": "NH3",
    "methylamine": "H3CNH2",
    "ethylamine": "CH3CH2NH2",
    "dimethyl_ether": "CH3OCH3",
    "methyl_formate": "HCOOCH3",
    "hydrogen_peroxide": "H2O2",
    "benzene": "C6H6",
    "pyridine": "C5H5N",
    "furan": "C4H4O",
    "pyrrole": "C4H4NH",
    "thiophene": "C4H4S",
    "glyoxal": "OCHCHO",
    "ketene": "H2CCO",
}

# Defaults, chosen from timings on a 2-core CPU (ethanol: ~4 ms of CPU per MD step, 2.6 ms of
# it inside tblite, the rest ASE bookkeeping). stride 20 × 0.5 fs = 10 fs between frames,
# longer than the X–H stretch and bend periods (~10–30 fs), so neighbouring frames are not
# near-copies (lag-1 energy correlation ≈ 0.5 at 500 K); 600 + 200 frames = 18,000 MD steps
# then cost ~75 s of CPU, i.e. about a minute on an idle core. 1000 steps (500 fs = 5
# friction times) of equilibration let the thermostat bring the molecule from its
# minimum-energy geometry to the target temperature before anything is recorded.
DEFAULT_N_FRAMES = 600
DEFAULT_TEST_FRAMES = 200
DEFAULT_TEMPERATURE_K = 500.0
DEFAULT_TIMESTEP_FS = 0.5
DEFAULT_FRICTION_PER_FS = 0.01
DEFAULT_STRIDE = 20
DEFAULT_EQUILIBRATION_STEPS = 1000

# extxyz stores positions with 8 decimals ("%16.8f"). Frames are labelled at positions already
# rounded to that grid, so the labels belong exactly to the positions a reader gets back.
_EXTXYZ_POSITION_DECIMALS = 8


class DatasetRecipeError(ValueError):
    """Bad input to the recipe (unknown molecule, invalid numbers) or a missing dependency."""


@dataclass(frozen=True)
class MDSettings:
    """Langevin MD and sampling settings.

    Attributes:
        temperature_K: thermostat temperature (K), also used for the initial velocities.
        timestep_fs: MD time step (fs).
        friction_per_fs: Langevin friction coefficient (1/fs).
        stride: MD steps between two recorded frames.
        equilibration_steps: MD steps run and discarded before the first recorded frame.
    """

    temperature_K: float = DEFAULT_TEMPERATURE_K
    timestep_fs: float = DEFAULT_TIMESTEP_FS
    friction_per_fs: float = DEFAULT_FRICTION_PER_FS
    stride: int = DEFAULT_STRIDE
    equilibration_steps: int = DEFAULT_EQUILIBRATION_STEPS

    def validate(self) -> None:
        """Raise :class:`DatasetRecipeError` for non-physical or non-positive settings."""
        if not np.isfinite(self.temperature_K) or self.temperature_K <= 0:
            raise DatasetRecipeError(f"temperature must be > 0 K, got {self.temperature_K}")
        if not np.isfinite(self.timestep_fs) or self.timestep_fs <= 0:
            raise DatasetRecipeError(f"timestep must be > 0 fs, got {self.timestep_fs}")
        if not np.isfinite(self.friction_per_fs) or self.friction_per_fs < 0:
            raise DatasetRecipeError(f"friction must be >= 0 1/fs, got {self.friction_per_fs}")
        if self.stride < 1:
            raise DatasetRecipeError(f"stride must be >= 1 MD step, got {self.stride}")
        if self.equilibration_steps < 0:
            raise DatasetRecipeError(
                f"equilibration steps must be >= 0, got {self.equilibration_steps}"
            )


def _normalise(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def resolve_molecule_name(name: str) -> str:
    """Map a friendly name ('ethanol') or an ASE/G2 name ('CH3CH2OH') to an ASE name.

    Raises:
        DatasetRecipeError: the name is neither, with close matches and a few valid names.
    """
    from ase.build import molecule

    friendly = FRIENDLY_NAMES.get(_normalise(name))
    if friendly is not None:
        return friendly
    try:
        molecule(name)
    except (KeyError, ValueError):
        pass
    else:
        return name
    from ase.collections import g2

    candidates = sorted(FRIENDLY_NAMES) + list(g2.names)
    close = difflib.get_close_matches(name, candidates, n=3) + difflib.get_close_matches(
        _normalise(name), candidates, n=3
    )
    hint = f" Did you mean {', '.join(dict.fromkeys(close))}?" if close else ""
    raise DatasetRecipeError(
        f"unknown molecule {name!r}.{hint} Valid names include "
        f"{', '.join(list(FRIENDLY_NAMES)[:8])}, or any ASE G2 name such as "
        f"CH3CH2OH, C6H6, H2O (see ase.collections.g2.names)."
    )


def build_molecule(name: str) -> Atoms:
    """Return the ASE reference geometry (Å) of a molecule, without cell or periodicity."""
    from ase.build import molecule

    atoms = molecule(resolve_molecule_name(name))
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3))
    return atoms


def make_xtb_calculator(*, reuse_wavefunction: bool = True) -> Any:
    """Return a GFN2-xTB calculator (tblite) giving energies in eV and forces in eV/Å.

    Args:
        reuse_wavefunction: keep the converged wavefunction as the next SCF guess. Right for
            driving MD (fast); wrong for labels, because the converged result then depends
            slightly on the trajectory's history (forces by ~1e-4 eV/Å). With ``False``
            every calculation starts from the same superposition-of-atomic-densities guess,
            so a label is a function of the positions alone.

    Raises:
        DatasetRecipeError: tblite is not installed.
    """
    try:
        from tblite.ase import TBLite
    except ImportError as exc:
        raise DatasetRecipeError(
            "tblite is needed for GFN2-xTB labels: pip install tblite "
            "(or pip install 'molequi[xtb]')"
        ) from exc
    return TBLite(method=METHOD, verbosity=0, cache_api=reuse_wavefunction)


def _loaded_openmp_runtimes() -> list[ctypes.CDLL]:
    """Return handles to the OpenMP runtimes loaded in this process (libgomp, libomp, libiomp).

    On Linux they are read from /proc/self/maps, which finds the exact copy tblite linked
    (wheels may vendor a renamed libgomp). Elsewhere, fall back to the linker's search.
    """
    paths: set[str] = set()
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rsplit(maxsplit=1)[-1]
                name = os.path.basename(path)
                if name.startswith(("libgomp", "libomp", "libiomp5")) and ".so" in name:
                    paths.add(path)
    except OSError:
        for lib in ("gomp", "omp", "iomp5"):
            found = ctypes.util.find_library(lib)
            if found:
                paths.add(found)
    runtimes = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
            lib.omp_get_max_threads.restype = ctypes.c_int
            lib.omp_set_num_threads.argtypes = [ctypes.c_int]
        except (OSError, AttributeError):
            continue
        runtimes.append(lib)
    return runtimes


@contextlib.contextmanager
def single_openmp_thread() -> Iterator[None]:
    """Run tblite on one OpenMP thread inside the block, restoring the setting afterwards.

    Why: with 2 threads, tblite's parallel sums change order from run to run, and over
    thousands of MD steps the last-bit differences grow until two runs with the same seed
    write different files (observed). For molecules of a few dozen atoms threads also buy
    almost nothing, and on a busy machine they stall (a 2-thread run took 6× longer than a
    1-thread run here). ``omp_set_num_threads`` acts on the calling thread only, which is the
    thread that runs the MD, so nothing else in the process is affected. Best effort: if no
    OpenMP runtime is found, nothing changes (set OMP_NUM_THREADS=1 yourself).
    """
    runtimes = _loaded_openmp_runtimes()
    previous = [lib.omp_get_max_threads() for lib in runtimes]
    for lib in runtimes:
        lib.omp_set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(runtimes, previous):
            lib.omp_set_num_threads(n)


def initial_state(atoms: Atoms, temperature_K: float, rng: np.random.Generator) -> Atoms:
    """Copy ``atoms`` and give it seeded Maxwell–Boltzmann momenta at ``temperature_K`` (K).

    The centre-of-mass momentum is removed and the centre of mass held fixed (FixCom), so an
    isolated molecule does not drift out of the picture during MD.
    """
    from ase.md import velocitydistribution as vd

    atoms = atoms.copy()
    # ASE 3.29 renamed MaxwellBoltzmannDistribution to thermalize_momenta; same sampling.
    thermalize = getattr(vd, "thermalize_momenta", None)
    if thermalize is not None:
        thermalize(atoms, temperature_K, rng=rng)
    else:  # pragma: no cover - older ASE
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    vd.Stationary(atoms)
    atoms.set_constraint(FixCom())
    return atoms


def label_frame(atoms: Atoms, labeller: Any, info: dict[str, Any]) -> Atoms:
    """Return a standalone copy of ``atoms`` labelled with a fresh GFN2-xTB single point.

    Positions are first rounded to the precision extxyz stores, and the labeller starts each
    SCF from scratch, so the stored energy (eV) and forces (eV/Å) are exactly what GFN2-xTB
    gives for the stored positions, independent of the MD history.
    """
    frame = Atoms(
        numbers=atoms.numbers,
        positions=np.round(atoms.positions, _EXTXYZ_POSITION_DECIMALS),
        pbc=False,
    )
    # tblite takes the number of unpaired electrons from the initial magnetic moments, so a
    # radical from the G2 set (e.g. CH3) must keep them or its label would be closed-shell.
    magmoms = atoms.get_initial_magnetic_moments()
    if np.any(magmoms):
        frame.set_initial_magnetic_moments(magmoms)
    # With cache_api=False, reset() drops tblite's stored wavefunction, so this SCF starts
    # from the standard guess exactly like a user's fresh TBLite calculator would.
    labeller.reset()
    frame.calc = labeller
    energy = float(frame.get_potential_energy())
    forces = np.array(frame.get_forces(), dtype=np.float64)
    if not (np.isfinite(energy) and np.isfinite(forces).all()):
        raise RuntimeError(f"GFN2-xTB returned non-finite labels for frame {info}")
    frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces)
    frame.info.update(info)
    return frame


def run_md_frames(
    molecule_name: str,
    n_frames: int,
    seed: int,
    settings: MDSettings = MDSettings(),
    *,
    stream: int = 0,
    progress: bool = True,
    desc: str = "xTB MD",
) -> list[Atoms]:
    """Run seeded GFN2-xTB Langevin MD and return ``n_frames`` labelled, decorrelated frames.

    Args:
        molecule_name: friendly or ASE G2 name (see :func:`resolve_molecule_name`).
        n_frames: number of frames to record (> 0).
        seed: seeds both the initial velocities and the Langevin noise.
        stream: independent random stream for the same seed (0: training, 1: test); the
            generator is ``numpy.random.default_rng([seed, stream])``.
        settings: temperature (K), time step (fs), friction (1/fs), stride, equilibration.
        progress: show a tqdm bar over MD steps (on stderr).

    Returns:
        Frames with a SinglePointCalculator holding energy (eV) and forces (eV/Å), and
        ``info`` keys ``source``, ``method``, ``temperature_K``, ``seed``, ``stream``,
        ``md_step``, ``time_fs``.
    """
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames <= 0:
        raise DatasetRecipeError(f"n_frames must be a positive integer, got {n_frames!r}")
    settings.validate()
    from tqdm.auto import tqdm

    atoms = build_molecule(molecule_name)
    rng = np.random.default_rng([int(seed), int(stream)])
    atoms = initial_state(atoms, settings.temperature_K, rng)
    atoms.calc = make_xtb_calculator(reuse_wavefunction=True)
    labeller = make_xtb_calculator(reuse_wavefunction=False)
    # fixcm=False with a FixCom constraint is ASE's recommended (correctly sampling) way to
    # keep the centre of mass still; the same rng drives the noise, so the run is seeded.
    dyn = Langevin(
        atoms,
        timestep=settings.timestep_fs * units.fs,
        temperature_K=settings.temperature_K,
        friction=settings.friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )
    source = f"{METHOD} (tblite) Langevin MD, T={settings.temperature_K:g} K"
    total_steps = settings.equilibration_steps + n_frames * settings.stride
    frames: list[Atoms] = []
    with single_openmp_thread(), tqdm(
        total=total_steps, desc=desc, unit="step", disable=not progress
    ) as bar:
        if settings.equilibration_steps:
            dyn.run(settings.equilibration_steps)
            bar.update(settings.equilibration_steps)
        for _ in range(n_frames):
            dyn.run(settings.stride)
            bar.update(settings.stride)
            step = dyn.nsteps
            info = {
                "source": source,
                "method": METHOD,
                "temperature_K": float(settings.temperature_K),
                "seed": int(seed),
                "stream": int(stream),
                "md_step": int(step),
                "time_fs": float(step * settings.timestep_fs),
            }
            frames.append(label_frame(atoms, labeller, info))
    return frames


def write_extxyz_atomic(frames: Sequence[Atoms], path: str | os.PathLike[str]) -> Path:
    """Write frames to ``path`` as extxyz via a temporary file and ``os.replace``.

    A crash or Ctrl-C mid-write therefore never leaves a truncated file under the final
    name that a later run would mistake for a complete data set.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp_name, list(frames), format="extxyz")
        # mkstemp creates the file 0600; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def split_paths(out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``data/x.extxyz`` → (``data/x_train.extxyz``, ``data/x_test.extxyz``)."""
    out = Path(out)
    suffix = out.suffix or ".extxyz"
    return out.with_name(f"{out.stem}_train{suffix}"), out.with_name(f"{out.stem}_test{suffix}")


def generate(
    out: str | os.PathLike[str],
    molecule_name: str = "ethanol",
    n_frames: int = DEFAULT_N_FRAMES,
    seed: int = 0,
    settings: MDSettings = MDSettings(),
    *,
    test_frames: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Generate the data set and return the written path(s).

    Without ``test_frames`` one file (``out``) holds ``n_frames`` frames. With it, the
    ``n_frames`` training frames (random stream 0, identical to the single-file output) go
    to ``<stem>_train`` and ``test_frames`` frames from a second trajectory (stream 1) go
    to ``<stem>_test``.
    """
    # Validate everything before spending minutes on MD.
    resolve_molecule_name(molecule_name)
    settings.validate()
    if test_frames is not None and (isinstance(test_frames, bool) or test_frames <= 0):
        raise DatasetRecipeError(f"test_frames must be a positive integer, got {test_frames!r}")
    # Two independent random streams from one user seed. Stream 0 is also what a single-file
    # run uses, so --split only adds a test file and never changes the training frames.
    train = run_md_frames(
        molecule_name, n_frames, seed, settings, stream=0, progress=progress, desc="train MD"
    )
    if test_frames is None:
        return [write_extxyz_atomic(train, out)]
    test = run_md_frames(
        molecule_name, test_frames, seed, settings, stream=1, progress=progress, desc="test MD"
    )
    train_path, test_path = split_paths(out)
    return [write_extxyz_atomic(train, train_path), write_extxyz_atomic(test, test_path)]


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface (see the module docstring)."""
    p = argparse.ArgumentParser(
        description="Generate a GFN2-xTB Langevin-MD data set (extxyz; energies eV, forces eV/Å)."
    )
    p.add_argument("--out", required=True, help="output .extxyz path (stem for --split)")
    p.add_argument("--molecule", default="ethanol", help="friendly or ASE G2 name [ethanol]")
    p.add_argument("--n-frames", type=int, default=DEFAULT_N_FRAMES, help="frames to record [600]")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE_K, help="K [500]")
    p.add_argument("--seed", type=int, default=0, help="random seed [0]")
    p.add_argument("--split", action="store_true",
                   help="write <stem>_train.extxyz and <stem>_test.extxyz")
    p.add_argument("--test-frames", type=int, default=DEFAULT_TEST_FRAMES,
                   help="frames in the test file with --split [200]")
    p.add_argument("--stride", type=int, default=DEFAULT_STRIDE,
                   help=f"MD steps between frames [{DEFAULT_STRIDE}]")
    p.add_argument("--equilibration", type=int, default=DEFAULT_EQUILIBRATION_STEPS,
                   help=f"MD steps discarded first [{DEFAULT_EQUILIBRATION_STEPS}]")
    p.add_argument("--dt", dest="timestep", type=float, default=DEFAULT_TIMESTEP_FS, help="MD time step, fs [0.5]")
    p.add_argument("--friction", type=float, default=DEFAULT_FRICTION_PER_FS, help="1/fs [0.01]")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    settings = MDSettings(
        temperature_K=args.temperature,
        timestep_fs=args.timestep,
        friction_per_fs=args.friction,
        stride=args.stride,
        equilibration_steps=args.equilibration,
    )
    start = time.perf_counter()
    try:
        paths = generate(
            args.out, args.molecule, args.n_frames, args.seed, settings,
            test_frames=args.test_frames if args.split else None,
            progress=not args.no_progress,
        )
    except DatasetRecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    for path in paths:
        print(f"wrote {path}")
    print(f"wall time: {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
