"""What an MD run writes: per-system CSV logs and trajectories, restart files, a plot.

Layout of the output folder::

    system_0000.csv      time_fs, step, potential_eV, kinetic_eV, total_eV, temperature_K
                         (+ energy_std_eV, forces_std_max_eV_per_A for a committee)
    system_0000.extxyz   frames every traj_every steps: positions Å, velocities (ASE units),
                         energy eV and forces eV/Å, ``info`` system, step, time_fs (readable
                         back with ase.io.read); ``traj_format="traj"``: ASE's binary
                         ``system_0000.traj`` instead; ``traj_single``: one file
                         ``trajectory.extxyz`` / ``trajectory.traj`` for every system, frames
                         in time order and tagged with ``atoms.info["system"]``
    restart.safetensors  the latest restart point (with the file sizes at that point, so a
                         resumed run cuts the logs back and appends exactly where it was)
    energy.png           total-energy change and temperature against time, per system

Rows and frames are buffered and flushed at restart points and at the end, so thousands of
systems do not need thousands of open files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator

from molequi.errors import ConfigError
from molequi.md.engine import BatchedMD
from molequi.md.state import instantaneous_temperature, kinetic_energy

TRAJ_FORMATS = ("extxyz", "traj")
LOG_COLUMNS = ["time_fs", "step", "potential_eV", "kinetic_eV", "total_eV", "temperature_K"]
COMMITTEE_COLUMNS = ["energy_std_eV", "forces_std_max_eV_per_A"]
FLUSH_ROWS = 2000


class MDOutput:
    """Writes logs, trajectories and restart files; call it after each step (an observer).

    Args:
        folder: output folder.
        num_systems: number of systems in the original input (file per system).
        committee: add the committee columns to the logs.
        traj_every, log_every, restart_every: intervals in steps (0 = never).
        resume: continue files cut back to the sizes recorded in the restart file.
        traj_format: ``"extxyz"`` (text) or ``"traj"`` (ASE's binary trajectory).
        traj_single: one trajectory file for all systems instead of one per system.
    """

    def __init__(
        self,
        folder: str | Path,
        num_systems: int,
        committee: bool = False,
        traj_every: int = 100,
        log_every: int = 10,
        restart_every: int = 1000,
        resume: bool = False,
        traj_format: str = "extxyz",
        traj_single: bool = False,
    ) -> None:
        if traj_format not in TRAJ_FORMATS:
            raise ConfigError(f"trajectory format must be one of {', '.join(TRAJ_FORMATS)}, got '{traj_format}'")
        self.traj_format, self.traj_single = traj_format, traj_single
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.num_systems = num_systems
        self.columns = LOG_COLUMNS + (COMMITTEE_COLUMNS if committee else [])
        self.traj_every, self.log_every, self.restart_every = traj_every, log_every, restart_every
        self._rows: dict[int, list[str]] = {}
        self._frames: list[tuple[int, Atoms]] = []  # (system, frame) in the order they were taken
        self._buffered = 0
        if resume:
            extra = self.restart_extra()
            for name, size in extra.get("file_sizes", {}).items():
                with open(self.folder / name, "r+b") as handle:
                    handle.truncate(int(size))
            for name, count in extra.get("traj_frames", {}).items():
                _keep_frames(self.folder / name, int(count))
        else:
            for k in range(num_systems):
                self.log_path(k).write_text(",".join(self.columns) + "\n")
            for path in self.traj_paths() if traj_every else ():
                path.write_bytes(b"")

    @property
    def restart_path(self) -> Path:
        return self.folder / "restart.safetensors"

    def log_path(self, system: int) -> Path:
        return self.folder / f"system_{system:04d}.csv"

    def traj_path(self, system: int) -> Path:
        """The trajectory file of ``system`` (the shared one with ``traj_single``)."""
        if self.traj_single:
            return self.folder / f"trajectory.{self.traj_format}"
        return self.folder / f"system_{system:04d}.{self.traj_format}"

    def traj_paths(self) -> list[Path]:
        """Every trajectory file of the run."""
        return list(dict.fromkeys(self.traj_path(k) for k in range(self.num_systems)))

    def restart_extra(self) -> dict:
        from safetensors import safe_open

        with safe_open(str(self.restart_path), framework="pt") as handle:
            return json.loads((handle.metadata() or {}).get("extra", "{}"))

    # ------------------------------------------------------------------ observer
    def __call__(self, engine: BatchedMD) -> None:
        step = engine.state.step
        if self.log_every and step % self.log_every == 0:
            self.log(engine)
        if self.traj_every and step % self.traj_every == 0:
            self.frames(engine)
        if self.restart_every and step % self.restart_every == 0:
            self.checkpoint(engine)

    def log(self, engine: BatchedMD) -> None:
        """Buffer one CSV row per running system."""
        state = engine.state
        kinetic = kinetic_energy(state)
        values = [state.energy, kinetic, state.energy + kinetic, instantaneous_temperature(state, kinetic)]
        if "energy_std" in engine.outputs:
            forces_std = engine.outputs["forces_std"]
            worst = torch.zeros_like(state.energy).scatter_reduce(0, state.batch, forces_std, "amax", include_self=False)
            values += [engine.outputs["energy_std"], worst]
        table = torch.stack(values, dim=1).cpu().numpy()  # [S, k], one transfer
        for system, row in zip(state.system_ids.tolist(), table):
            cells = [f"{engine.time:.6g}", str(state.step)] + [f"{v:.10g}" for v in row]
            self.add_row(system, cells[: len(self.columns)])

    def add_row(self, system: int, cells: list[str]) -> None:
        self._rows.setdefault(system, []).append(",".join(cells) + "\n")
        self._count()

    def frames(self, engine: BatchedMD) -> None:
        """Buffer one extxyz frame per running system."""
        state = engine.state
        host = {k: getattr(state, k).cpu().numpy() for k in ("positions", "velocities", "forces", "numbers", "batch", "cell", "pbc", "energy")}
        bounds = np.searchsorted(host["batch"], np.arange(state.num_systems + 1))
        for k, system in enumerate(state.system_ids.tolist()):
            atoms_slice = slice(bounds[k], bounds[k + 1])
            atoms = Atoms(
                numbers=host["numbers"][atoms_slice],
                positions=host["positions"][atoms_slice],
                cell=host["cell"][k],
                pbc=host["pbc"][k],
                velocities=host["velocities"][atoms_slice] / units.fs,
            )
            atoms.info.update(system=system, step=state.step, time_fs=engine.time)
            atoms.calc = SinglePointCalculator(atoms, energy=float(host["energy"][k]), forces=host["forces"][atoms_slice].copy())
            self.add_frame(system, atoms)

    def add_frame(self, system: int, atoms: Atoms) -> None:
        atoms.info.setdefault("system", system)
        self._frames.append((system, atoms))
        self._count()

    def _count(self) -> None:
        self._buffered += 1
        if self._buffered >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        """Append the buffered rows and frames to their files."""
        import ase.io

        for system, rows in self._rows.items():
            with open(self.log_path(system), "a") as handle:
                handle.writelines(rows)
        by_file: dict[Path, list[Atoms]] = {}
        for system, atoms in self._frames:
            by_file.setdefault(self.traj_path(system), []).append(atoms)
        for path, frames in by_file.items():
            if self.traj_format == "traj":
                with ase.io.Trajectory(str(path), "a") as trajectory:
                    for atoms in frames:
                        trajectory.write(atoms)
            else:
                with open(path, "a") as handle:
                    ase.io.write(handle, frames, format="extxyz")
        self._rows, self._frames, self._buffered = {}, [], 0

    def file_sizes(self) -> dict[str, int]:
        """Bytes of the text files (a resume cuts them back to these sizes)."""
        paths = [self.log_path(k) for k in range(self.num_systems)]
        if self.traj_every and self.traj_format == "extxyz":
            paths += self.traj_paths()
        return {p.name: os.path.getsize(p) for p in paths if p.exists()}

    def traj_frames(self) -> dict[str, int]:
        """Frames of the binary ``.traj`` files (cut by frame: their index is not at the end)."""
        if not (self.traj_every and self.traj_format == "traj"):
            return {}
        return {p.name: _count_frames(p) for p in self.traj_paths() if p.exists()}

    def checkpoint(self, engine: BatchedMD, extra: dict | None = None) -> None:
        """Flush the files, then write the restart file recording their sizes."""
        self.flush()
        engine.save_restart(self.restart_path, extra={**(extra or {}), "file_sizes": self.file_sizes(),
                                                      "traj_frames": self.traj_frames()})

    def close(self, plot: bool = True) -> None:
        self.flush()
        if plot:
            plot_energy(self.folder, self.num_systems)


def _count_frames(path: Path) -> int:
    import ase.io

    if path.stat().st_size == 0:
        return 0
    with ase.io.Trajectory(str(path)) as trajectory:
        return len(trajectory)


def _keep_frames(path: Path, count: int) -> None:
    """Cut an ASE ``.traj`` file back to its first ``count`` frames (rewritten atomically)."""
    import ase.io

    from molequi.utils import atomic_write

    if not path.exists() or _count_frames(path) == count:
        return
    with ase.io.Trajectory(str(path)) as trajectory:
        frames = [trajectory[k] for k in range(count)]

    def write(temporary: Path) -> None:
        with ase.io.Trajectory(str(temporary), "w") as out:
            for atoms in frames:
                out.write(atoms)

    atomic_write(path, write)


def read_log(path: str | Path) -> dict[str, np.ndarray]:
    """A CSV log as ``{column: array}``."""
    data = np.genfromtxt(path, delimiter=",", names=True, ndmin=1)
    return {name: np.atleast_1d(data[name]) for name in data.dtype.names}


def plot_energy(folder: str | Path, num_systems: int, max_systems: int = 16) -> Path:
    """``energy.png``: total-energy change (eV) and temperature (K) against time (fs), per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for k in range(min(num_systems, max_systems)):
        path = folder / f"system_{k:04d}.csv"
        if not path.exists():
            continue
        log = read_log(path)
        if len(log["time_fs"]) == 0:
            continue
        top.plot(log["time_fs"], log["total_eV"] - log["total_eV"][0], lw=0.8, label=f"system {k}")
        bottom.plot(log["time_fs"], log["temperature_K"], lw=0.8)
    top.set_ylabel("E_total − E_total(0) (eV)")
    bottom.set_ylabel("temperature (K)")
    bottom.set_xlabel("time (fs)")
    if num_systems <= 10:
        top.legend(fontsize="small")
    title = "energy trace per system" + (f" (first {max_systems} of {num_systems})" if num_systems > max_systems else "")
    top.set_title(title)
    figure.tight_layout()
    path = folder / "energy.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
