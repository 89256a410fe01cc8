"""What an MD run writes: per-system CSV logs and trajectories, restart files, a plot.

Layout of the output folder::

    system_0000.csv      time_fs, step, potential_eV, kinetic_eV, total_eV, temperature_K
                         energy_std_eV, forces_std_max_eV_per_A (committee or ensemble
                         spread; empty cells for one model, which has no estimate),
                         in_domain (1/0 against the calibration's threshold; empty: unknown)
    system_0000.extxyz   frames every traj_every steps: positions Å, velocities (ASE units),
                         energy eV and forces eV/Å, ``info`` system, step, time_fs (readable
                         back with ase.io.read); ``traj_format="traj"``: ASE's binary
                         ``system_0000.traj`` instead; ``traj_single``: one file
                         ``trajectory.extxyz`` / ``trajectory.traj`` for every system, frames
                         in time order and tagged with ``atoms.info["system"]``
    out_of_domain.extxyz the last frame of each system stopped by ``stop_out_of_domain``
    broken_bonds.extxyz  the last frame of each system stopped by ``stop_broken_bonds``
    restart.safetensors  the latest restart point (with the file sizes at that point, so a
                         resumed run cuts the logs back and appends exactly where it was)
    energy.png           total-energy change and temperature against time, per system

Rows and frames are buffered and flushed at restart points and at the end, so thousands of
systems do not need thousands of open files.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator

from molequi.errors import ConfigError, ModelFileError
from molequi.md.engine import BatchedMD
from molequi.md.ensembles import ENSEMBLES
from molequi.md.state import instantaneous_temperature, kinetic_energy

TRAJ_FORMATS = ("extxyz", "traj")
LOG_COLUMNS = ["time_fs", "step", "potential_eV", "kinetic_eV", "total_eV", "temperature_K"]
COMMITTEE_COLUMNS = ["energy_std_eV", "forces_std_max_eV_per_A", "in_domain"]
FLUSH_ROWS = 2000


def append_frames(engine, slots: list[int], path: Path, info: dict[int, dict]) -> None:
    """Append the current frame of the engine's systems in ``slots`` to the extxyz file ``path``:
    positions Å, velocities, energy eV, forces eV/Å; ``info`` system, step, time_fs and, per slot,
    ``info[slot]`` (the reason it is written)."""
    import ase.io

    state = engine.state
    batch = state.batch.cpu()
    frames = []
    for k in slots:
        mask = (batch == k).numpy()
        atoms = Atoms(numbers=state.numbers.cpu().numpy()[mask], positions=state.positions.cpu().numpy()[mask],
                      cell=state.cell[k].cpu().numpy(), pbc=state.pbc[k].cpu().numpy(),
                      velocities=state.velocities.cpu().numpy()[mask] / units.fs)
        atoms.info.update(system=int(state.system_ids[k]), step=state.step, time_fs=engine.time, **info.get(k, {}))
        atoms.calc = SinglePointCalculator(atoms, energy=float(state.energy[k]),
                                           forces=state.forces.cpu().numpy()[mask].copy())
        frames.append(atoms)
    with open(path, "a") as handle:
        ase.io.write(handle, frames, format="extxyz")


class MDOutput:
    """Writes logs, trajectories and restart files; call it after each step (an observer).

    Args:
        folder: output folder.
        num_systems: number of systems in the original input (file per system).
        committee: unused (kept for callers): the spread columns are always written, empty
            for one plain model.
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
        self.run_info: RunInfo | None = None
        self.restart_metadata: dict = {}  # stored in every restart file's extra (the runner's identity)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.num_systems = num_systems
        # the spread columns are always there, empty without an estimate (one plain model)
        self.columns = LOG_COLUMNS + COMMITTEE_COLUMNS
        self.traj_every, self.log_every, self.restart_every = traj_every, log_every, restart_every
        self._rows: dict[int, list[str]] = {}
        self._frames: list[tuple[int, Atoms]] = []  # (system, frame) in the order they were taken
        self._buffered = 0
        if resume:
            extra = self.restart_extra()
            sizes = self._resume_targets(extra.get("file_sizes", {}), "file_sizes")
            frames = self._resume_targets(extra.get("traj_frames", {}), "traj_frames")
            for path, size in sizes.items():
                if size > path.stat().st_size:
                    raise ModelFileError(f"{path} is shorter ({path.stat().st_size} bytes) than at the restart point "
                                         f"({size} bytes): it was changed since; cannot resume this run")
            for path, size in sizes.items():
                with open(path, "r+b") as handle:
                    handle.truncate(size)
            for path, count in frames.items():
                _keep_frames(path, count)
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

    def own_files(self) -> list[Path]:
        """Every log and trajectory file this run writes (the only files a resume may cut)."""
        return [self.log_path(k) for k in range(self.num_systems)] + self.traj_paths()

    def _resume_targets(self, entries: object, key: str) -> dict[Path, int]:
        """The files and counts a restart file lists under ``key``, checked before anything is cut.

        Only this run's own files inside the output folder qualify: a name with a folder part,
        ``..``, an absolute path, a link out of the folder or a file of another run is refused
        (the restart file is data, and a resume must never truncate anything else).
        """
        if not isinstance(entries, dict):
            raise ModelFileError(f"{self.restart_path}: corrupt restart file ({key} is not a mapping)")
        folder = self.folder.resolve()
        own = {path.name: path for path in self.own_files()}
        targets = {}
        for name, count in entries.items():
            path = own.get(name) if isinstance(name, str) and Path(name).name == name else None
            if path is None or not path.resolve().is_relative_to(folder) or path.is_symlink():
                raise ModelFileError(f"{self.restart_path}: names {name!r}, which is not one of this run's files "
                                     f"in {self.folder}; refusing to resume (nothing was changed)")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ModelFileError(f"{self.restart_path}: corrupt restart file ({key}[{name!r}] = {count!r})")
            if not path.is_file():
                raise ModelFileError(f"{path} is missing: cannot resume the run in {self.folder}")
            targets[path] = count
        return targets

    def restart_extra(self) -> dict:
        """The ``extra`` header of the restart file (file sizes, the run's identity), checksum verified."""
        from molequi.md.engine import read_restart_file

        _, metadata = read_restart_file(self.restart_path)
        try:
            extra = json.loads(metadata.get("extra", "{}"))
        except json.JSONDecodeError as error:
            raise ModelFileError(f"{self.restart_path}: corrupt restart file ({error})") from None
        if not isinstance(extra, dict):
            raise ModelFileError(f"{self.restart_path}: corrupt restart file (extra is not a mapping)")
        return extra

    def describe_run(self, ensemble: str, n_atoms: dict[int, int], temperature: float | None = None) -> None:
        """What ``energy.png`` says about the run: the ensemble (``nve``/``nvt``), atoms per
        system (energies are shown per atom) and the NVT target temperature, K. The engine
        observer fills it in itself; the ASE engine calls it."""
        self.run_info = RunInfo(ensemble, dict(n_atoms), temperature)

    # ------------------------------------------------------------------ observer
    def __call__(self, engine: BatchedMD) -> None:
        if self.run_info is None:
            state = engine.state
            counts = torch.bincount(state.batch, minlength=state.num_systems).tolist()
            targets = state.temperature.unique().tolist()
            self.describe_run(engine.ensemble, dict(zip(state.system_ids.tolist(), counts)),
                              targets[0] if len(targets) == 1 else None)
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
        verdict = None
        if "energy_std" in engine.outputs:
            forces_std = engine.outputs["forces_std"]
            worst = torch.zeros_like(state.energy).scatter_reduce(0, state.batch, forces_std, "amax", include_self=False)
            values += [engine.outputs["energy_std"], worst]
            verdict = engine.outputs.get("in_domain")
        table = torch.stack(values, dim=1).cpu().numpy()  # [S, k], one transfer
        verdicts = verdict.cpu().numpy() if verdict is not None else [math.nan] * len(table)
        for system, row, inside in zip(state.system_ids.tolist(), table, verdicts):
            # repr: the shortest string that reads back as the same float64, so the log keeps a
            # 10^4–10^6 eV total to the last bit (10 digits would round it to 10–100 µeV)
            cells = [f"{engine.time:.6g}", str(state.step)] + [repr(float(v)) for v in row]
            if len(cells) < len(self.columns):  # in_domain: 1, 0, or empty when unknown
                cells.append("" if not math.isfinite(inside) else str(int(inside)))
            self.add_row(system, cells + [""] * (len(self.columns) - len(cells)))

    def add_row(self, system: int, cells: list[str]) -> None:
        cells = list(cells) + [""] * (len(self.columns) - len(cells))  # no spread: empty cells
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
        engine.save_restart(self.restart_path, extra={**self.restart_metadata, **(extra or {}), "file_sizes": self.file_sizes(),
                                                      "traj_frames": self.traj_frames()})

    def close(self, plot: bool = True) -> None:
        self.flush()
        if plot:
            info = self.run_info or RunInfo()
            plot_energy(self.folder, self.num_systems, ensemble=info.ensemble, n_atoms=info.n_atoms,
                        temperature=info.temperature)


@dataclass
class RunInfo:
    """The facts about a run that ``energy.png`` needs beside the logs."""

    ensemble: str | None = None
    n_atoms: dict[int, int] = field(default_factory=dict)
    temperature: float | None = None  # NVT target, K


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


MAX_PLOTTED_SYSTEMS = 1000
"""energy.png reads at most this many system logs (the spread of 1000 replicas is well sampled)."""


def energy_drift(time_fs: np.ndarray, total_eV: np.ndarray, n_atoms: int) -> float:
    """Energy drift (E_end − E_start) / (n_atoms · (t_end − t_start)), meV/atom/ps, positive when
    the total energy rose: the convention ``molequi md`` prints (NaN with < 2 points)."""
    if len(time_fs) < 2 or time_fs[-1] == time_fs[0]:
        return math.nan
    slope = (total_eV[-1] - total_eV[0]) / (time_fs[-1] - time_fs[0])  # eV/fs
    return float(slope * 1000.0 * 1000.0 / n_atoms)


def _stack(times: list[np.ndarray], values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-system series on the time grid of the longest one: ``(time_fs, [systems, times])``,
    NaN after a system stopped (the logs of one run share their time grid)."""
    grid = max(times, key=len)
    table = np.full((len(values), len(grid)), np.nan)
    for k, series in enumerate(values):
        n = min(len(series), len(grid))
        table[k, :n] = series[:n]
    return grid, table


def _band(axis, times: np.ndarray, table: np.ndarray, colour: str, label: str) -> None:
    """One line for one system; the mean with a shaded ±1 std band and dotted extremes for many."""
    if len(table) == 1:
        axis.plot(times, table[0], color=colour, lw=1.0, label=label)
        return
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns after every system stopped
        mean, std = np.nanmean(table, axis=0), np.nanstd(table, axis=0)
        low, high = np.nanmin(table, axis=0), np.nanmax(table, axis=0)
    axis.fill_between(times, mean - std, mean + std, color=colour, alpha=0.25, lw=0, label="± 1 std over systems")
    axis.plot(times, low, ":", color=colour, lw=0.7, label="min / max")
    axis.plot(times, high, ":", color=colour, lw=0.7)
    axis.plot(times, mean, color=colour, lw=1.2, label=label)


def plot_energy_figure(logs: list[dict[str, np.ndarray]], n_atoms: list[int | None], ensemble: str | None = None,
                       temperature: float | None = None, num_systems: int | None = None):
    """Total-energy change per atom (meV/atom) and temperature (K) against time (fs).

    One system: its lines. Several (replicas): the mean over systems, a ±1 std band and
    the extremes. NVE: the energy drift ((E_end − E_start)/(n_atoms · t), meV/atom/ps, mean ± std over
    systems) is written on the top panel. NVT: the target temperature is drawn, and the
    total energy, which exchanges heat with the bath, is not called a drift. Systems whose
    atom count is unknown (``None``) are left out.
    """
    from matplotlib.figure import Figure

    kept = [(log, n) for log, n in zip(logs, n_atoms) if n and len(log["time_fs"])]
    figure = Figure(figsize=(7.5, 5.6), dpi=100, layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    count = num_systems if num_systems is not None else len(logs)
    kind = ENSEMBLES.get(ensemble or "")
    thermostatted = kind is not None and kind.thermostatted
    name = kind.describe(temperature) if kind is not None else "MD"
    plotted = f"{len(kept)} of {count}" if len(kept) < count else f"{count}"
    figure.suptitle(f"{name}: {plotted} system{'s' if count != 1 else ''}", fontsize=11)
    if not kept:
        top.text(0.5, 0.5, "no log rows", transform=top.transAxes, ha="center")
        return figure
    logs_kept = [log for log, _ in kept]
    times = [log["time_fs"] for log in logs_kept]
    stopped = sum(len(t) < max(len(u) for u in times) for t in times)
    if stopped:
        figure.suptitle(f"{figure._suptitle.get_text()} ({stopped} stopped early)", fontsize=11)
    grid, change = _stack(times, [1000.0 * (log["total_eV"] - log["total_eV"][0]) / n for log, n in kept])
    _band(top, grid, change, "C0", "mean" if len(kept) > 1 else "total energy")
    top.axhline(0.0, color="0.6", lw=0.6)
    top.set_ylabel("E_total − E_total(0), meV/atom")
    drifts = np.array([energy_drift(log["time_fs"], log["total_eV"], n) for log, n in kept])
    drifts = drifts[np.isfinite(drifts)]
    if thermostatted:
        note = f"{kind.title}: the total energy exchanges heat with the thermostat (not a drift)"
    elif len(drifts):
        spread = f" ± {np.std(drifts, ddof=1):.2g}" if len(drifts) > 1 else ""
        note = f"drift {np.mean(drifts):+.3g}{spread} meV/atom/ps ((E_end − E_start)/(n_atoms · t)" + (
            f", mean ± std of {len(drifts)} systems)" if len(drifts) > 1 else ")")
    else:
        note = "drift: too few log rows"
    top.text(0.02, 0.95, note, transform=top.transAxes, va="top", fontsize=9,
             bbox=dict(facecolor="white", alpha=0.85, edgecolor="none"))
    grid, temperatures = _stack(times, [log["temperature_K"] for log in logs_kept])
    _band(bottom, grid, temperatures, "C3", "mean" if len(kept) > 1 else "temperature")
    if thermostatted and temperature is not None:
        bottom.axhline(temperature, color="k", ls="--", lw=0.9, label=f"target {temperature:g} K")
    bottom.set_ylabel("temperature, K")
    bottom.set_xlabel("time, fs")
    for axis in (top, bottom):
        axis.grid(True, alpha=0.3)
    if len(kept) > 1 or thermostatted:
        bottom.legend(fontsize=8, loc="lower right")
    return figure


def plot_energy(folder: str | Path, num_systems: int, ensemble: str | None = None,
                n_atoms: dict[int, int] | None = None, temperature: float | None = None) -> Path:
    """``energy.png`` from the CSV logs in ``folder``: see :func:`plot_energy_figure`.

    ``n_atoms``: atoms per system (``None``: read from the first trajectory frame, else the
    energy is not divided). At most :data:`MAX_PLOTTED_SYSTEMS` logs are read.
    """
    from molequi.utils import atomic_write

    folder = Path(folder)
    logs, atoms = [], []
    for k in range(min(num_systems, MAX_PLOTTED_SYSTEMS)):
        path = folder / f"system_{k:04d}.csv"
        if path.exists():
            logs.append(read_log(path))
            atoms.append((n_atoms or {}).get(k) or _atoms_from_trajectory(folder, k))
    figure = plot_energy_figure(logs, atoms, ensemble, temperature, num_systems)
    return atomic_write(folder / "energy.png", lambda temporary: figure.savefig(temporary, format="png", bbox_inches="tight"))


def _atoms_from_trajectory(folder: Path, system: int) -> int | None:
    import ase.io

    for path in (folder / f"system_{system:04d}.extxyz", folder / f"system_{system:04d}.traj"):
        if path.exists() and path.stat().st_size:
            try:
                return len(ase.io.read(path, index=0))
            except Exception:  # an unreadable file only costs the per-atom scale of the plot
                return None
    return None
