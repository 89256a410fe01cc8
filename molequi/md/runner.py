"""One MD run from start to finish, for both engines: settings, inputs, output folder, resume,
progress and the per-system summary.

``molequi md`` parses its options into :class:`MDSettings` and calls :func:`run_md_files`; a
Python user calls the same function (or :func:`run_md` with a loaded potential and structures)
and gets the same checks, files and summary.

Example::

    from molequi.md.runner import MDSettings, run_md_files
    result = run_md_files(["model.molequi"], ["ethanol.xyz"], MDSettings(steps=2000, dt=0.5), "runs/md")
    print("\\n".join(result.summary_lines()))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from ase import Atoms

from molequi.errors import ConfigError
from molequi.md.bonds import BondWatch
from molequi.md.domain import DomainWatch
from molequi.md.engine import BatchedMD, StopEvent
from molequi.md.ensembles import ENSEMBLES
from molequi.md.output import TRAJ_FORMATS, MDOutput
from molequi.md.progress import MDProgress
from molequi.models.uncertainty.committee import Potential
from molequi.utils import identity_changes

ENGINES = ("batched", "ase")


@dataclass
class MDSettings:
    """What an MD run does. Units: fs, K, 1/fs, Å.

    Attributes:
        steps: steps to take (with ``resume``: the total step count to reach).
        dt: time step, fs.
        ensemble: a name in :data:`~molequi.md.ensembles.ENSEMBLES`: ``"nve"`` (velocity Verlet) or
            ``"nvt"`` (Langevin BAOAB at ``temperature``).
        temperature: K — initial Maxwell–Boltzmann velocities, the NVT target and the default
            safety limit (``max(10 × temperature, 100 K)``).
        friction: Langevin friction γ, 1/fs.
        engine: ``"batched"`` (every system at once on the device) or ``"ase"`` (ASE's
            integrators with the MolequiCalculator, one system after another).
        seed: base seed; system k uses ``seed + k``.
        skin: neighbor-list skin, Å.
        max_temperature: stop a system above this, K (None: the default above).
        min_distance: stop a system whose closest two atoms come nearer than this, Å.
        traj_every, log_every, restart_every: output intervals in steps (0: never).
        progress: show a progress bar.
        stop_out_of_domain: stop a system at its first step out of the domain of the committee's
            calibration (its calibrated per-structure force std above the calibration's
            threshold), writing its last frame to ``out_of_domain.extxyz``; needs a committee
            (or ensemble heads) and a calibration with a threshold.
        stop_broken_bonds: stop a molecule when a bond of its start structure is off by more than
            0.5 Å or a new bond forms (:mod:`molequi.md.bonds`), writing its last frame to
            ``broken_bonds.extxyz``; molecules only (no periodic cell).
    """

    steps: int
    dt: float
    ensemble: str = "nve"
    temperature: float = 300.0
    friction: float = 0.01
    engine: str = "batched"
    seed: int = 0
    skin: float = 1.0
    max_temperature: float | None = None
    min_distance: float = 0.5
    traj_every: int = 100
    log_every: int = 10
    restart_every: int = 1000
    progress: bool = True
    traj_format: str = "extxyz"
    traj_single: bool = False
    stop_out_of_domain: bool = False
    stop_broken_bonds: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a value no MD run can use (see :mod:`molequi.validation`)."""
        from molequi.validation import check_choice, check_count, check_number

        check_choice("ensemble", self.ensemble, tuple(ENSEMBLES))
        check_choice("engine", self.engine, ENGINES)
        check_choice("traj_format", self.traj_format, TRAJ_FORMATS)
        check_count("steps", self.steps)
        check_number("dt", self.dt, "fs", low=0.0, high=MAX_TIMESTEP_FS, low_inclusive=False)
        check_number("temperature", self.temperature, "K", low=0.0, high=MAX_TEMPERATURE_K)
        check_number("friction", self.friction, "1/fs", low=0.0, high=MAX_FRICTION)
        check_count("seed", self.seed, high=2**62)
        check_number("skin", self.skin, "Å", low=0.0, high=MAX_SKIN)
        if self.max_temperature is not None:
            check_number("max_temperature", self.max_temperature, "K", low=0.0, high=math.inf, low_inclusive=False)
        check_number("min_distance", self.min_distance, "Å", low=0.0, high=MAX_SKIN)
        for name in ("traj_every", "log_every", "restart_every"):
            check_count(name, getattr(self, name))

    def physics(self) -> dict[str, object]:
        """The settings that decide the trajectory (a resume must keep them all)."""
        physics = {key: value for key, value in asdict(self).items()
                   if key not in ("steps", "traj_every", "log_every", "restart_every", "progress")}
        if not self.stop_broken_bonds:  # added later: runs without it keep the identity they had
            del physics["stop_broken_bonds"]
        return physics


MAX_TIMESTEP_FS = 20.0
"""Largest accepted time step, fs (molecular MD uses 0.1–5 fs; larger ones integrate nothing useful)."""
MAX_TEMPERATURE_K = 50_000.0
"""Highest accepted target temperature, K (far above any molecule's dissociation)."""
MAX_FRICTION = 100.0
"""Largest accepted Langevin friction, 1/fs."""
MAX_SKIN = 10.0
"""Largest accepted neighbor-list skin and minimum distance, Å."""


@dataclass
class SystemResult:
    """One system at the end of a run: energy change E_end − E_start and the largest
    |E − E_start| (eV; total energy) over ``duration_fs`` (fs), or why it stopped."""

    system: int
    n_atoms: int
    drift: float | None = None
    max_deviation: float | None = None
    stopped: StopEvent | None = None
    duration_fs: float | None = None
    left_domain_step: int | None = None
    """The first step out of the calibration's domain (None: never left, or no verdict)."""


@dataclass
class MDResult:
    """What :func:`run_md` returns: the output folder and one :class:`SystemResult` a system."""

    out: Path
    ensemble: str
    systems: list[SystemResult] = field(default_factory=list)

    @property
    def stopped(self) -> list[StopEvent]:
        """The safety stops of the run, in system order."""
        return [record.stopped for record in self.systems if record.stopped is not None]

    def summary_lines(self) -> list[str]:
        """The end-of-run report: per system (up to 8), else one summary over them, of the
        energy drift (E_end − E_start)/(n_atoms · time), meV/atom/ps, and the stops (see
        :func:`molequi.md.progress.summary_lines`)."""
        from molequi.md.progress import summary_lines

        records = [{"system": r.system, "n_atoms": r.n_atoms, "drift": r.drift, "max_deviation": r.max_deviation,
                    "duration_fs": r.duration_fs} | ({"stopped": str(r.stopped)} if r.stopped is not None else {})
                   for r in self.systems if r.stopped is not None or r.drift is not None]
        lines = summary_lines(records, self.ensemble)
        left = [r for r in self.systems if r.left_domain_step is not None]
        if left:
            shown = ", ".join(f"system {r.system} at step {r.left_domain_step}" for r in left[:8])
            lines.append(f"out of the domain: {len(left)} of {len(self.systems)} system(s) left it ({shown}"
                         + (", …" if len(left) > 8 else "") + ")")
        return lines

    def stop_message(self) -> str:
        """One line naming the systems that a safety stop took out ('' if none)."""
        stops = self.stopped
        if not stops:
            return ""
        shown = "; ".join(str(event) for event in stops[:5])
        more = f"; and {len(stops) - 5} more" if len(stops) > 5 else ""
        return f"{len(stops)} of {len(self.systems)} system(s) stopped early: {shown}{more}"


def read_systems(specs: Sequence[str], replicas: int = 1) -> list[Atoms]:
    """The systems to simulate: the selected frames of every file, each ``replicas`` times.

    A spec is ``path`` (its last frame), ``path@0`` (the first) or ``path@:`` (every frame);
    every frame is checked with :func:`~molequi.data.graph.validate_atoms`.
    """
    from ase.io.formats import string2index

    from molequi.data.graph import validate_atoms
    from molequi.data.readers import read_structures
    from molequi.validation import check_count

    check_count("replicas", replicas, low=1, high=1_000_000)
    systems = []
    for spec in specs:
        path, _, index = spec.partition("@")
        frames = read_structures(path)
        try:
            selected = frames[string2index(index or "-1")]
        except (ValueError, IndexError, TypeError):
            raise ConfigError(f"{spec}: cannot select frame(s) '{index}' of {len(frames)}: use @N, @-1, @start:stop "
                              "or @:") from None
        selected = selected if isinstance(selected, list) else [selected]
        for k, atoms in enumerate(selected):
            atoms = atoms.copy()
            atoms.calc = None
            validate_atoms(atoms, f"{path} frame {k}")
            systems.extend(atoms.copy() for _ in range(replicas))
    if not systems:
        raise ConfigError("no structures selected")
    return systems


MD_OUTPUTS = ("system_*.csv", "system_*.extxyz", "system_*.traj", "trajectory.extxyz", "trajectory.traj",
              "restart.safetensors", "energy.png", "out_of_domain.extxyz", "broken_bonds.extxyz")
"""Glob patterns of the files an MD run writes in its output folder (what ``overwrite`` deletes)."""


def run_md(
    potential: Potential,
    systems: Sequence[Atoms],
    settings: MDSettings,
    out: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    cuda_graphs: bool = False,
) -> MDResult:
    """Run MD of ``systems`` with ``potential`` and write logs, trajectories, restarts and
    ``energy.png`` to ``out`` (see :mod:`molequi.md.output`).

    ``out`` is locked for the run (a second run on it fails at once). A new run needs an empty
    ``out`` (or ``overwrite``, which deletes only :data:`MD_OUTPUTS`); ``resume`` continues the
    run there from its restart file, refused when the settings that shape the trajectory, the
    models or the structures differ (compared by content, see :func:`md_identity`).
    ``cuda_graphs``: the batched engine replays its force call as a CUDA graph (a CUDA device
    only; see :mod:`molequi.md.graphs`).
    """
    from molequi.utils import claim_run_directory

    settings.validate()
    out = Path(out)
    if cuda_graphs and (torch.device(potential.device).type != "cuda" or settings.engine != "batched"):
        raise ConfigError("--cuda-graphs needs the batched engine on a CUDA device (--device cuda)")
    if resume and settings.engine != "batched":
        raise ConfigError("resume needs the batched engine (the ASE engine writes no restart files)")
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: pass one of them")
    systems = list(systems)
    for atoms in systems:  # unknown elements are the input's fault: say so before touching ``out``
        potential.check_species(torch.as_tensor(atoms.numbers, dtype=torch.long, device=potential.device))
    if settings.stop_out_of_domain and (not potential.is_committee or potential.domain_threshold is None):
        raise ConfigError("stop_out_of_domain (--stop-out-of-domain) needs a committee or ensemble heads and a "
                          "calibration with an in-domain threshold (write one with molequi calibrate)")
    if settings.stop_broken_bonds and any(atoms.pbc.any() for atoms in systems):
        raise ConfigError("stop_broken_bonds (--stop-broken-bonds) is for molecules: a structure has a periodic cell")
    identity = md_identity(potential, systems, settings)
    with claim_run_directory(out, "md", MD_OUTPUTS, resume=resume, overwrite=overwrite,
                             resume_marker="restart.safetensors"):
        if settings.engine == "batched":
            return _run_batched(potential, systems, settings, out, resume, identity, cuda_graphs)
        return _run_ase(potential, systems, settings, out)


def md_identity(potential: Potential, systems: Sequence[Atoms], settings: MDSettings) -> dict[str, object]:
    """What a resume must find unchanged: the settings that shape the trajectory, each model's
    content (weights, dtype, architecture) and the structures' content."""
    from molequi.models.io import model_digest
    from molequi.utils import structures_digest

    return {"settings": settings.physics(), "models": [model_digest(m) for m in potential.models],
            "structures": structures_digest(systems), "systems": len(systems)}


def check_resume_identity(saved: dict | None, current: dict, out: Path) -> None:
    """Raise :class:`ConfigError` naming what changed between the run in ``out`` and this resume."""
    import warnings

    if not saved:
        warnings.warn(f"{out}: the restart file records no settings (written by an older molequi); the resume "
                      "cannot check that the settings, models and structures are unchanged", stacklevel=3)
        return
    # a setting newer or older than the run (absent from one of the two) is not a change
    old_settings = saved.get("settings", {})
    saved = {**saved, "settings": {key: old_settings.get(key, value) for key, value in current["settings"].items()}}
    changes = identity_changes(saved, current, _identity_name)
    if changes:
        raise ConfigError(f"cannot resume the run in {out}: changed since it started: {'; '.join(changes)} "
                          "(resume with the original inputs, or start a new run in another --out)")


def _identity_name(path: str) -> str:
    """A recorded MD identity's path in the words of ``molequi md``'s options."""
    if path.startswith("settings."):
        return "--" + path.removeprefix("settings.").replace("_", "-")
    if path.startswith("models"):
        return "the model(s) (content: weights, dtype, architecture)"
    return "the structures (content: atoms, positions, frames, --replicas)"


def run_md_files(
    models: Sequence[str | Path],
    structures: Sequence[str],
    settings: MDSettings,
    out: str | Path,
    replicas: int = 1,
    device: str = "cpu",
    dtype: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    calibration: str | Path | None = None,
    compile: bool = False,
    cuda_graphs: bool = False,
) -> MDResult:
    """:func:`run_md` from model files or pretrained names (several: a committee; none: the
    pretrained default) and structure specs (see :func:`read_systems`); ``calibration``: the JSON
    of ``molequi calibrate`` (logged stds are calibrated); ``cuda_graphs``: see :func:`run_md`;
    ``compile``: evaluate through ``torch.compile`` (:meth:`~molequi.nn.forces.ForceOutput.compile`;
    the trajectory equals the eager one within float round-off)."""
    from molequi.calculators.ase import shipped_calibration, shipped_or_given
    from molequi.models.uncertainty.committee import load_models

    settings.validate()
    systems = read_systems(structures, replicas)
    specs = shipped_or_given(list(models) or None)
    if calibration is None:
        calibration = shipped_calibration(specs)
    loaded = load_models(specs, device=device, dtype=dtype)
    if compile:
        loaded = [model.compile() for model in loaded]  # loaded here from files: no caller's object to keep
    potential = Potential(loaded, calibration=calibration)
    return run_md(potential, systems, settings, out, resume=resume, overwrite=overwrite, cuda_graphs=cuda_graphs)


def _output(potential: Potential, count: int, settings: MDSettings, out: Path, resume: bool = False,
            restart_every: int | None = None) -> MDOutput:
    return MDOutput(out, count, committee=potential.is_committee, traj_every=settings.traj_every,
                    log_every=settings.log_every,
                    restart_every=settings.restart_every if restart_every is None else restart_every, resume=resume,
                    traj_format=settings.traj_format, traj_single=settings.traj_single)


def _describe(output: MDOutput, settings: MDSettings, systems: Sequence[Atoms]) -> None:
    output.describe_run(settings.ensemble, {k: len(a) for k, a in enumerate(systems)},
                        settings.temperature if ENSEMBLES[settings.ensemble].thermostatted else None)


def _stop_reporter(engine, progress: MDProgress):
    """A callback after each step: advance the bar and print new stops above it."""
    reported = len(engine.stopped)

    def after_step() -> None:
        nonlocal reported
        progress()
        for event in engine.stopped[reported:]:
            progress.write(str(event))
        reported = len(engine.stopped)

    return after_step


def _record(engine, records: list[SystemResult], dt: float, watch: DomainWatch | None = None) -> None:
    """Copy an engine's end state (energy change since step 0 and the time it took, fs; stops;
    the first step out of the domain) into the per-system records."""
    for system, step in (watch.first_left.items() if watch is not None else ()):
        records[system].left_domain_step = step
    for event in engine.stopped:
        records[event.system].stopped = event
    if engine.state.num_systems:
        total = engine.total_energy().cpu().numpy()
        for k, system in enumerate(engine.state.system_ids.tolist()):
            records[system].drift = float(total[k] - float(engine.energy_reference[k]))
            records[system].max_deviation = float(engine.max_deviation[k])
            records[system].duration_fs = float(engine.state.step * dt)


def _bond_watch(settings: MDSettings, systems: list[Atoms], out: Path) -> list[BondWatch]:
    """The broken-bond watch of a run that asked for one (after the writer: the log shows the step)."""
    return [BondWatch(systems, folder=out)] if settings.stop_broken_bonds else []


def _run_batched(potential: Potential, systems: list[Atoms], settings: MDSettings, out: Path, resume: bool,
                 identity: dict, cuda_graphs: bool = False) -> MDResult:
    from molequi.md.state import state_from_atoms

    watch = DomainWatch(potential.domain_threshold, settings.stop_out_of_domain, out)
    if resume:
        engine, extra = BatchedMD.from_restart(out / "restart.safetensors", potential)
        engine.cuda_graphs = cuda_graphs
        check_resume_identity(extra.get("identity"), identity, out)
        output = _output(potential, len(systems), settings, out, resume=True)
        _describe(output, settings, systems)
        output.restart_metadata = {"identity": identity}
        for event in engine.stopped:
            print(event)
    else:
        state = state_from_atoms(systems, temperature=settings.temperature, friction=settings.friction,
                                 seed=settings.seed)
        engine = BatchedMD(potential, state, dt=settings.dt, ensemble=settings.ensemble, skin=settings.skin,
                           max_temperature=settings.max_temperature, min_distance=settings.min_distance,
                           cuda_graphs=cuda_graphs)
        output = _output(potential, len(systems), settings, out)
        _describe(output, settings, systems)
        output.restart_metadata = {"identity": identity}
        output(engine)  # step 0
        watch(engine)
    progress = MDProgress(settings.steps, settings.dt, not settings.progress, initial=engine.state.step)
    try:
        # the watch after the writer: the log and trajectory show the step a system left the domain
        engine.run(max(settings.steps - engine.state.step, 0), [output, watch, *_bond_watch(settings, systems, out)],
                   callback=_stop_reporter(engine, progress))
    finally:
        progress.close()
        if settings.restart_every and not engine.in_step:  # never a restart from a half-taken step
            output.checkpoint(engine)
        output.close()
    records = [SystemResult(k, len(a)) for k, a in enumerate(systems)]
    _record(engine, records, settings.dt, watch)
    return MDResult(out, settings.ensemble, records)


def _run_ase(potential: Potential, systems: list[Atoms], settings: MDSettings, out: Path) -> MDResult:
    """One system after another through ASE's integrators (same seeds as the batched engine)."""
    from molequi.md.ase_engine import ASEEngine

    output = _output(potential, len(systems), settings, out, restart_every=0)
    _describe(output, settings, systems)
    watch = DomainWatch(potential.domain_threshold, settings.stop_out_of_domain, out)
    bonds = _bond_watch(settings, systems, out)
    progress = MDProgress(settings.steps * len(systems), settings.dt, not settings.progress)
    records = [SystemResult(k, len(a)) for k, a in enumerate(systems)]
    try:
        for k, atoms in enumerate(systems):
            engine = ASEEngine(potential, atoms, k, settings.dt, settings.ensemble, settings.temperature,
                               settings.friction, settings.seed + k, settings.skin, settings.max_temperature,
                               settings.min_distance)
            for event in engine.stopped:
                progress.write(str(event))
            if engine.state.num_systems:
                output(engine)  # step 0
            watch(engine)
            engine.run(settings.steps, [output, watch, *bonds], callback=_stop_reporter(engine, progress))
            _record(engine, records, settings.dt, watch)
    finally:
        progress.close()
        output.close()
    return MDResult(out, settings.ensemble, records)

