"""The batched MD engine: many independent systems advanced together as one graph on the device."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from molequi.errors import MolequiError
from molequi.md.integrators import baoab_step, velocity_verlet_step
from molequi.md.neighbors import BatchedNeighborList
from molequi.md.potential import GraphTensors, Potential
from molequi.md.state import MDState, instantaneous_temperature, kinetic_energy, to_device
from molequi.utils import atomic_write

INTEGRATORS = {"nve": velocity_verlet_step, "nvt": baoab_step}
RESTART_FORMAT = "molequi-md-restart"


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
        potential: the model or committee (:class:`~molequi.md.potential.Potential`).
        state: the systems (moved to the potential's device; forces are computed here unless
            ``initial_forces=False``, which a restart uses).
        dt: time step, fs.
        ensemble: ``"nve"`` (velocity Verlet) or ``"nvt"`` (Langevin BAOAB with the state's
            per-system temperature and friction).
        skin: neighbor-list skin, Å.
        max_temperature: a system whose temperature exceeds this (K) is stopped; default
            ``max(10 × its target temperature, 100 K)``.
        min_distance: a system with two atoms closer than this (Å) is stopped.

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
    ) -> None:
        if ensemble not in INTEGRATORS:
            raise ValueError(f"ensemble must be one of {sorted(INTEGRATORS)}, got {ensemble!r}")
        if dt <= 0:
            raise ValueError(f"dt must be > 0 fs, got {dt}")
        self.potential, self.dt, self.ensemble, self.skin = potential, float(dt), ensemble, float(skin)
        self.integrator = INTEGRATORS[ensemble]
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
        if bool(self.neighbors.needs_rebuild(state.positions)):
            self.neighbors.build(state.positions)
        graph = GraphTensors(
            pos=state.positions,
            numbers=state.numbers,
            batch=state.batch,
            num_graphs=state.num_systems,
            cell=state.cell,
            edge_index=self.neighbors.edge_index,
            shifts=self.neighbors.shifts,
        )
        self.outputs = self.potential(graph)
        state.forces, state.energy = self.outputs["forces"], self.outputs["energy"]

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
        for _ in range(steps):
            if self.state.num_systems == 0:
                break
            self.step()
            for observer in observers:
                observer(self)
            if callback is not None:
                callback()

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
            self._remove(~bad)
            self.stopped.extend(events)
        return events

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
        return atomic_write(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))

    @classmethod
    def from_restart(cls, path: str | Path, potential: Potential) -> tuple[BatchedMD, dict]:
        """The engine saved by :meth:`save_restart`, and the ``extra`` metadata saved with it."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise MolequiError(f"{path}: no restart file to resume from")
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != RESTART_FORMAT:
            raise MolequiError(f"{path}: not a molequi MD restart file")
        tensors = {k: v.to(potential.device) for k, v in load_file(str(path)).items()}
        state = MDState(
            **{k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")},
            step=int(metadata["step"]),
        )
        engine = cls(
            potential,
            state,
            dt=float(metadata["dt"]),
            ensemble=metadata["ensemble"],
            skin=float(metadata["skin"]),
            min_distance=float(metadata["min_distance"]),
            initial_forces=False,
        )
        engine.stop_temperature = tensors["stop_temperature"]
        engine.energy_reference = tensors["energy_reference"]
        engine.max_deviation = tensors["max_deviation"]
        engine.outputs = {k.removeprefix("outputs."): v for k, v in tensors.items() if k.startswith("outputs.")}
        engine.neighbors.reference = tensors["neighbors.reference"]
        engine.neighbors.edge_index = tensors["neighbors.edge_index"]
        engine.neighbors.shifts = tensors["neighbors.shifts"]
        engine.stopped = [StopEvent(**e) for e in json.loads(metadata["stopped"])]
        return engine, json.loads(metadata.get("extra", "{}"))

