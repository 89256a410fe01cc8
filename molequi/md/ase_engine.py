"""One system through ASE's integrators and the :class:`~molequi.calculators.MolequiCalculator`,
behind the interface of :class:`~molequi.md.engine.BatchedMD` (``state``, ``outputs``,
``stopped``, ``step``, ``run``), so that one runner, one output writer and one set of safety
stops serve both engines.

ASE's :class:`~ase.md.verlet.VelocityVerlet` and :class:`~ase.md.langevin.Langevin` advance the
atoms; after each step the positions, velocities (Å/fs), forces (eV/Å) and energy (eV) are
copied into a one-system :class:`~molequi.md.state.MDState`, which the log, the trajectory and
:func:`~molequi.md.engine.safety_stops` read exactly as they read the batched engine's state.
"""

from __future__ import annotations

import math

import torch
from ase import Atoms, units

from molequi.md.engine import StopEvent, default_stop_temperature, run_steps, safety_stops
from molequi.md.ensembles import ENSEMBLES
from molequi.models.uncertainty.committee import Potential
from molequi.md.state import kinetic_energy, state_from_atoms


class ASEEngine:
    """Advance one structure with ASE (NVE velocity Verlet or Langevin NVT).

    Args:
        potential: the model or committee.
        atoms: the structure (copied; its velocities are drawn at ``temperature`` with ``seed``,
            as the batched engine draws them for a system with that seed).
        system: index of the system in the run (names its log and trajectory files).
        dt: time step, fs. ensemble: ``"nve"`` or ``"nvt"``.
        temperature: K; friction: Langevin γ, 1/fs; seed: velocities and Langevin noise.
        skin: neighbor-list skin, Å.
        max_temperature, min_distance: safety limits as in :class:`~molequi.md.engine.BatchedMD`.
    """

    def __init__(
        self,
        potential: Potential,
        atoms: Atoms,
        system: int,
        dt: float,
        ensemble: str = "nve",
        temperature: float = 300.0,
        friction: float = 0.01,
        seed: int = 0,
        skin: float = 1.0,
        max_temperature: float | None = None,
        min_distance: float = 0.5,
    ) -> None:
        from molequi.calculators import MolequiCalculator

        if ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {', '.join(ENSEMBLES)}, got {ensemble!r}")
        self.potential, self.dt, self.ensemble = potential, float(dt), ensemble
        self.atoms = atoms.copy()
        self.state = state_from_atoms([self.atoms], temperature=temperature, friction=friction, seed=seed)
        self.state.system_ids[:] = system
        self.atoms.set_velocities(self.state.velocities.numpy() / units.fs)
        self.atoms.calc = MolequiCalculator(potential.models, device=potential.device, skin=skin,
                                            calibration=potential.calibration)
        self.dynamics = ENSEMBLES[ensemble].ase_dynamics(self.atoms, self.dt, temperature, friction, seed)
        if max_temperature is None:
            self.stop_temperature = default_stop_temperature(self.state.temperature)
        else:
            self.stop_temperature = torch.full_like(self.state.temperature, float(max_temperature))
        self.min_distance = float(min_distance)
        self.stopped: list[StopEvent] = []
        self.outputs: dict[str, torch.Tensor] = {}
        self.in_step = False
        self._sync()
        self.energy_reference = self.total_energy()
        self.max_deviation = torch.zeros_like(self.energy_reference)
        self.check_safety()

    def _sync(self) -> None:
        """Copy the atoms' positions, velocities, forces and energy into :attr:`state`."""
        atoms, state = self.atoms, self.state
        forces = atoms.get_forces()
        results = atoms.calc.results
        state.positions = torch.tensor(atoms.positions, dtype=torch.float64)
        state.velocities = torch.tensor(atoms.get_velocities() * units.fs, dtype=torch.float64)
        state.forces = torch.tensor(forces, dtype=torch.float64)
        state.energy = torch.tensor([results["energy"]], dtype=torch.float64)
        self.outputs = {"energy": state.energy, "forces": state.forces,
                        "energies": torch.tensor(results["energies"], dtype=torch.float64)}
        if "energy_std" in results:
            self.outputs["energy_std"] = torch.tensor([results["energy_std"]], dtype=torch.float64)
            self.outputs["forces_std"] = torch.tensor(results["forces_std"], dtype=torch.float64)
            self.outputs["sigma_forces"] = torch.tensor([results["sigma_forces"]], dtype=torch.float64)
            verdict = results.get("in_domain")
            self.outputs["in_domain"] = torch.tensor([math.nan if verdict is None else float(verdict)],
                                                     dtype=torch.float64)

    @property
    def time(self) -> float:
        """Simulated time, fs."""
        return self.state.step * self.dt

    def total_energy(self) -> torch.Tensor:
        """[S] potential + kinetic energy, eV (S = 1 while running, 0 once stopped)."""
        return self.state.energy + kinetic_energy(self.state)

    def step(self) -> None:
        """One ASE step, then the safety checks (nothing once the system stopped)."""
        if self.state.num_systems == 0:
            return
        self.in_step = True
        self.dynamics.step()
        self.dynamics.nsteps += 1
        self.state.step += 1
        self._sync()
        self.max_deviation = torch.maximum(self.max_deviation, (self.total_energy() - self.energy_reference).abs())
        self.check_safety()
        self.in_step = False

    def run(self, steps: int, observers=(), callback=None) -> None:
        """Take ``steps`` steps (fewer if the system stops), calling ``observer(self)`` and
        ``callback()`` after each."""
        run_steps(self, steps, observers, callback)

    def check_safety(self) -> list[StopEvent]:
        """:func:`~molequi.md.engine.safety_stops` on the calculator's own neighbor list."""
        if self.state.num_systems == 0:
            return []
        neighbors = self.atoms.calc.neighbors
        edge_index = torch.from_numpy(neighbors.edge_index) if neighbors.edge_index is not None else torch.empty(2, 0, dtype=torch.long)
        shifts = torch.from_numpy(neighbors.shifts) if neighbors.shifts is not None else torch.empty(0, 3, dtype=torch.float64)
        bad, events = safety_stops(self.state, edge_index, shifts, self.stop_temperature, self.min_distance)
        if events:
            self.stop_systems(bad, events)
        return events

    def stop_systems(self, mask: torch.Tensor, events: list[StopEvent]) -> None:
        """Take the system out of the run when ``mask`` [1] is set, recording ``events``."""
        keep = ~mask
        self.state = self.state.select(keep)
        self.stop_temperature = self.stop_temperature[keep]
        self.energy_reference = self.energy_reference[keep]
        self.max_deviation = self.max_deviation[keep]
        self.outputs = {}
        self.stopped.extend(events)
