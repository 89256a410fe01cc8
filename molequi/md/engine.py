"""The batched MD engine: many independent systems advanced together as one graph on the device."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from molequi.errors import ModelFileError
from molequi.md.ensembles import ENSEMBLES
from molequi.md.graphs import GraphedForces
from molequi.data.skin import BatchedNeighborList
from molequi.data.batch import GraphBatch
from molequi.models.uncertainty.committee import Potential
from molequi.md.state import MDState, check_state, instantaneous_temperature, kinetic_energy, to_device
from molequi.utils import DIGEST_KEY, atomic_write, tensors_digest
from molequi.validation import check_count, check_number

RESTART_FORMAT = "molequi-md-restart"


def run_steps(engine, steps: int, observers=(), callback=None) -> None:
    """Take ``steps`` steps of ``engine`` (either engine; fewer if every system stops), calling
    ``observer(engine)`` and ``callback()`` after each."""
    for _ in range(steps):
        if engine.state.num_systems == 0:
            break
        engine.step()
        for observer in observers:
            observer(engine)
        if callback is not None:
            callback()


def write_restart_file(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a restart file (safetensors) atomically, with the checksum of its tensors and
    header under :data:`~molequi.utils.DIGEST_KEY`."""
    metadata = {**metadata, DIGEST_KEY: tensors_digest(tensors, metadata)}
    return atomic_write(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


def read_restart_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (CPU) and header of a restart file, after checking format and checksum.

    A file written before checksums existed is read with a warning.
    """
    import warnings

    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no restart file to resume from")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path}: not a readable MD restart file ({str(error).splitlines()[0][:200]})") from None
    if metadata.get("format") != RESTART_FORMAT:
        raise ModelFileError(f"{path}: not a molequi MD restart file")
    stored = metadata.get(DIGEST_KEY)
    if stored is None:
        warnings.warn(f"{path}: restart file without a checksum (written by an older molequi); its integrity "
                      "cannot be verified", stacklevel=2)
    elif stored != tensors_digest(tensors, metadata):
        raise ModelFileError(f"{path}: checksum mismatch: the restart file was corrupted or altered after it was "
                             "written; refusing to resume from it")
    return tensors, metadata


@dataclass
class StopEvent:
    """A system taken out of the run: its original index, the step and why."""

    system: int
    step: int
    reason: str

    def __str__(self) -> str:
        return f"system {self.system} stopped at step {self.step}: {self.reason}"


def default_stop_temperature(temperature: torch.Tensor) -> torch.Tensor:
    """[S] the default safety limit, K: ``max(10 × target temperature, 100 K)``."""
    return torch.clamp(10.0 * temperature, min=100.0)


def safety_stops(
    state: MDState, edge_index: torch.Tensor, shifts: torch.Tensor, stop_temperature: torch.Tensor, min_distance: float
) -> tuple[torch.Tensor, list[StopEvent]]:
    """Which systems of ``state`` must stop, and why (both engines apply this one rule).

    A system stops when a force or a position is non-finite, when two atoms are closer than
    ``min_distance`` Å (over the pairs ``edge_index``/``shifts`` of its neighbor list), or when
    its kinetic temperature exceeds ``stop_temperature`` [S] K (a NaN temperature counts as too
    hot). Returns the [S] bool mask of stopped systems and one :class:`StopEvent` each.
    """
    temperature = instantaneous_temperature(state)
    atom_bad = ~(torch.isfinite(state.forces).all(-1) & torch.isfinite(state.positions).all(-1))
    nonfinite = torch.zeros(state.num_systems, dtype=torch.long, device=state.device).index_add_(
        0, state.batch, atom_bad.long()
    )
    closest = torch.full_like(temperature, float("inf"))
    if edge_index.shape[1]:
        i, j = edge_index
        lengths = (state.positions[j] - state.positions[i] + shifts).norm(dim=-1)
        closest = closest.scatter_reduce(0, state.batch[i], lengths, reduce="amin", include_self=True)
    too_hot = ~(temperature <= stop_temperature)  # NaN counts as too hot
    collapsed = closest < min_distance
    bad = (nonfinite > 0) | too_hot | collapsed
    if not bool(bad.any()):
        return bad, []
    events = []
    for k in torch.nonzero(bad).flatten().tolist():
        if nonfinite[k] > 0:
            reason = f"non-finite forces or positions on {int(nonfinite[k])} atom(s)"
        elif collapsed[k]:
            reason = f"two atoms are {float(closest[k]):.3f} Å apart (< {min_distance} Å)"
        else:
            reason = f"temperature {float(temperature[k]):.0f} K exceeds {float(stop_temperature[k]):.0f} K"
        events.append(StopEvent(int(state.system_ids[k]), state.step, reason))
    return bad, events


class BatchedMD:
    """Advance the systems of ``state`` with ``potential`` (all on the potential's device).

    Args:
        potential: the model or committee (:class:`~molequi.models.uncertainty.committee.Potential`).
        state: the systems (moved to the potential's device; forces are computed here unless
            ``initial_forces=False``, which a restart uses).
        dt: time step, fs.
        ensemble: ``"nve"`` (velocity Verlet) or ``"nvt"`` (Langevin BAOAB with the state's
            per-system temperature and friction).
        skin: neighbor-list skin, Å.
        max_temperature: a system whose temperature exceeds this (K) is stopped; default
            ``max(10 × its target temperature, 100 K)``.
        min_distance: a system with two atoms closer than this (Å) is stopped.
        cuda_graphs: replay the force call as a CUDA graph over fixed-capacity neighbor buffers
            (:mod:`molequi.md.graphs`; best with a compiled potential); on a CPU the same padded
            buffers are used without a capture. Ends, with one warning, when a rebuilt list
            exceeds the capacity; the graph is captured again when systems are removed.

    A system is also stopped when its forces or positions become non-finite. Stopped systems
    are removed from the batch (listed in :attr:`stopped`); the others continue unchanged.
    """

    def __init__(
        self,
        potential: Potential,
        state: MDState,
        dt: float,
        ensemble: str = "nve",
        skin: float = 1.0,
        max_temperature: float | None = None,
        min_distance: float = 0.5,
        initial_forces: bool = True,
        cuda_graphs: bool = False,
    ) -> None:
        if ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {', '.join(ENSEMBLES)}, got {ensemble!r}")
        if dt <= 0:
            raise ValueError(f"dt must be > 0 fs, got {dt}")
        self.potential, self.dt, self.ensemble, self.skin = potential, float(dt), ensemble, float(skin)
        self.integrator = ENSEMBLES[ensemble].step
        self.state = state if state.device == potential.device else to_device(state, potential.device)
        potential.check_species(self.state.numbers)
        if max_temperature is None:
            self.stop_temperature = default_stop_temperature(self.state.temperature)
        else:
            self.stop_temperature = torch.full_like(self.state.temperature, float(max_temperature))
        self.min_distance = float(min_distance)
        self.stopped: list[StopEvent] = []
        self.outputs: dict[str, torch.Tensor] = {}
        self.in_step = False  # True while a step is being taken (see :meth:`step`)
        self.cuda_graphs = bool(cuda_graphs)
        self.graphed: GraphedForces | None = None  # made at the first force call (cuda_graphs)
        self._new_neighbor_list()
        self.energy_reference = torch.zeros_like(self.state.energy)  # [S] total energy at step 0, eV
        self.max_deviation = torch.zeros_like(self.state.energy)  # [S] max |E_tot − E_ref|, eV
        if initial_forces:
            self.compute(self.state)
            self.energy_reference = self.total_energy()
            self.check_safety()

    # ------------------------------------------------------------------ stepping
    def compute(self, state: MDState) -> None:
        """Set ``state.forces`` and ``state.energy`` (rebuilding the neighbor list if needed)."""
        rebuilt = bool(self.neighbors.needs_rebuild(state.positions))
        if rebuilt:
            self.neighbors.build(state.positions)
        if self.cuda_graphs and self._graphed_compute(state, rebuilt):
            return
        graph = GraphBatch(
            pos=state.positions,
            numbers=state.numbers,
            batch=state.batch,
            num_graphs=state.num_systems,
            cell=state.cell,
            edge_index=self.neighbors.edge_index,
            shifts=self.neighbors.shifts,
            charge=state.charge,
        )
        self.outputs = self.potential(graph)
        state.forces, state.energy = self.outputs["forces"], self.outputs["energy"]

    def _graphed_compute(self, state: MDState, rebuilt: bool) -> bool:
        """:meth:`compute` through :attr:`graphed`; False when replay has ended (then eager)."""
        neighbors = self.neighbors
        if self.graphed is None:
            def call(positions: torch.Tensor, edge_index: torch.Tensor, shifts: torch.Tensor) -> dict[str, torch.Tensor]:
                return self.potential(GraphBatch(pos=positions, numbers=state.numbers, batch=state.batch,
                                                 num_graphs=state.num_systems, cell=state.cell,
                                                 edge_index=edge_index, shifts=shifts, charge=state.charge))

            self.graphed = GraphedForces(call, state.positions, neighbors.edge_index, neighbors.shifts)
        elif rebuilt:
            self.graphed.rebuilt(neighbors.edge_index, neighbors.shifts)
        if not self.graphed.active:
            warnings.warn(f"CUDA graph replay ended: {self.graphed.fallback}; the MD continues eagerly", stacklevel=3)
            self.cuda_graphs, self.graphed = False, None
            return False
        # the graph's outputs are overwritten by the next replay: the state keeps copies
        self.outputs = {key: value.clone() for key, value in self.graphed(state.positions).items()}
        state.forces, state.energy = self.outputs["forces"], self.outputs["energy"]
        return True

    def step(self) -> None:
        """One time step of every running system, then the safety checks (nothing if none runs)."""
        if self.state.num_systems == 0:
            return
        self.in_step = True  # an interruption now leaves a half-updated state: no restart from it
        self.integrator(self.state, self.dt, self.compute)
        self.max_deviation = torch.maximum(self.max_deviation, (self.total_energy() - self.energy_reference).abs())
        self.check_safety()
        self.in_step = False

    def run(self, steps: int, observers=(), callback=None) -> None:
        """Take ``steps`` steps (fewer if every system stops), calling ``observer(self)`` after
        each and ``callback()`` (e.g. a progress bar) too."""
        run_steps(self, steps, observers, callback)

    @property
    def time(self) -> float:
        """Simulated time, fs."""
        return self.state.step * self.dt

    def total_energy(self) -> torch.Tensor:
        """[S] potential + kinetic energy, eV."""
        return self.state.energy + kinetic_energy(self.state)

    # ------------------------------------------------------------------ safety
    def check_safety(self) -> list[StopEvent]:
        """Stop systems that are too hot, collapsed or non-finite; returns the new stops."""
        bad, events = safety_stops(self.state, self.neighbors.edge_index, self.neighbors.shifts,
                                   self.stop_temperature, self.min_distance)
        if events:
            self.stop_systems(bad, events)
        return events

    def stop_systems(self, mask: torch.Tensor, events: list[StopEvent]) -> None:
        """Take the systems of the [S] bool ``mask`` out of the run, recording ``events``."""
        self._remove(~mask)
        self.stopped.extend(events)

    def _remove(self, keep: torch.Tensor) -> None:
        atom_keep = keep[self.state.batch]
        self.state = self.state.select(keep)
        self.stop_temperature = self.stop_temperature[keep]
        self.energy_reference = self.energy_reference[keep]
        self.max_deviation = self.max_deviation[keep]
        self.outputs = {
            key: value[atom_keep] if key in ("energies", "forces", "forces_std") else value[keep]
            for key, value in self.outputs.items()
        }
        self._new_neighbor_list()
        if self.state.num_systems:
            self.neighbors.build(self.state.positions)

    def _new_neighbor_list(self) -> None:
        self.graphed = None  # other atoms: a new capture at the next force call
        s = self.state
        self.neighbors = BatchedNeighborList(s.batch, s.cell, s.pbc, self.potential.cutoff, self.skin)

    # ------------------------------------------------------------------ restart
    def save_restart(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write everything needed to continue exactly (safetensors, atomically).

        The Langevin noise is a function of (seed, step), so the step and the seeds are the
        whole random state; the neighbor list is saved too so that the continued run takes the
        same floating-point path as the uninterrupted one.
        """
        tensors = {f"state.{k}": v for k, v in self.state.tensors().items()}
        tensors |= {
            "neighbors.reference": self.neighbors.reference,
            "neighbors.edge_index": self.neighbors.edge_index,
            "neighbors.shifts": self.neighbors.shifts,
            "stop_temperature": self.stop_temperature,
            "energy_reference": self.energy_reference,
            "max_deviation": self.max_deviation,
        }
        tensors |= {f"outputs.{k}": v for k, v in self.outputs.items()}
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items() if v is not None}
        metadata = {
            "format": RESTART_FORMAT,
            "step": str(self.state.step),
            "dt": repr(self.dt),
            "ensemble": self.ensemble,
            "skin": repr(self.skin),
            "min_distance": repr(self.min_distance),
            "stopped": json.dumps([vars(e) for e in self.stopped]),
            "extra": json.dumps(extra or {}),
        }
        return write_restart_file(path, tensors, metadata)

    @classmethod
    def from_restart(cls, path: str | Path, potential: Potential) -> tuple[BatchedMD, dict]:
        """The engine saved by :meth:`save_restart`, and the ``extra`` metadata saved with it.

        Raises:
            ModelFileError: missing, foreign, corrupt (checksum, header values, tensor shapes).
        """
        path = Path(path)
        tensors, metadata = read_restart_file(path)
        try:
            step = check_count("step", int(metadata["step"]), error=ModelFileError)
            dt = check_number("dt", float(metadata["dt"]), "fs", low=0.0, low_inclusive=False, error=ModelFileError)
            ensemble = metadata["ensemble"]
            skin = check_number("skin", float(metadata["skin"]), "Å", low=0.0, error=ModelFileError)
            min_distance = check_number("min_distance", float(metadata["min_distance"]), "Å", low=0.0, error=ModelFileError)
            stopped = [StopEvent(**e) for e in json.loads(metadata["stopped"])]
            extra = json.loads(metadata.get("extra", "{}"))
            if ensemble not in ENSEMBLES or not isinstance(extra, dict):
                raise ValueError(f"ensemble {ensemble!r}")
            fields = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
            if "charge" not in fields and "cell" in fields:  # a restart written before states carried charges
                fields["charge"] = torch.zeros(fields["cell"].shape[0], dtype=torch.float64)
            state = MDState(**fields, step=step)
            check_state(state)
            missing = [key for key in ("stop_temperature", "energy_reference", "max_deviation", "neighbors.reference",
                                       "neighbors.edge_index", "neighbors.shifts") if key not in tensors]
            if missing:
                raise KeyError(f"missing tensors {missing}")
        except ModelFileError as error:
            raise ModelFileError(f"{path}: corrupt restart file ({error})") from None
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{path}: corrupt restart file ({type(error).__name__}: {error})") from None
        tensors = {k: v.to(potential.device) for k, v in tensors.items()}
        state = to_device(state, potential.device)
        engine = cls(
            potential,
            state,
            dt=dt,
            ensemble=ensemble,
            skin=skin,
            min_distance=min_distance,
            initial_forces=False,
        )
        engine.stop_temperature = tensors["stop_temperature"]
        engine.energy_reference = tensors["energy_reference"]
        engine.max_deviation = tensors["max_deviation"]
        engine.outputs = {k.removeprefix("outputs."): v for k, v in tensors.items() if k.startswith("outputs.")}
        engine.neighbors.reference = tensors["neighbors.reference"]
        engine.neighbors.edge_index = tensors["neighbors.edge_index"]
        engine.neighbors.shifts = tensors["neighbors.shifts"]
        engine.stopped = stopped
        return engine, extra

