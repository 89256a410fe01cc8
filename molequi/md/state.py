"""The state of a batch of independent MD systems, and its thermodynamics.

Units (ASE's base units for length, energy and mass; femtoseconds for time):
positions Å, velocities Å/fs, masses amu, energies eV, forces eV/Å, temperature K, friction 1/fs.
ASE's own time unit is τ = Å·sqrt(amu/eV) ≈ 10.18 fs (``ase.units.fs`` = 1 fs in τ), hence the
two conversion constants below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from ase import Atoms, units

from molequi.data.labels import total_charge

ACCELERATION = units.fs**2
"""(eV/Å)/amu → Å/fs²: a = ACCELERATION · F / m."""
KINETIC = 1.0 / units.fs**2
"""amu·(Å/fs)² → eV: E_kin = KINETIC · ½ m v²."""
BOLTZMANN = units.kB
"""Boltzmann constant, eV/K."""


PER_SYSTEM = {"energy", "cell", "pbc", "temperature", "friction", "seeds", "system_ids", "charge"}
"""Fields of :class:`MDState` with one entry per system; the others have one per atom."""


@dataclass
class MDState:
    """Positions, velocities and per-system settings of S systems with N atoms in total.

    Atoms of a system are contiguous; ``batch`` maps each atom to its system (0..S-1), and
    ``system_ids`` maps each system to its index in the original input (systems that were
    stopped are removed from the state, so the two differ after a stop).

    Attributes:
        positions: [N, 3] Å (float64).
        velocities: [N, 3] Å/fs (float64).
        forces: [N, 3] eV/Å at ``positions`` (float64).
        energy: [S] potential energy, eV (float64).
        masses: [N] amu (float64).
        numbers: [N] atomic numbers (int64).
        batch: [N] system index of each atom (int64).
        cell: [S, 3, 3] lattice vectors as rows, Å (zeros for open boundaries).
        pbc: [S, 3] periodicity (bool).
        temperature: [S] target temperature, K (thermostat, initial velocities, safety limit).
        friction: [S] Langevin friction γ, 1/fs.
        seeds: [S] random seed of each system (int64): the Langevin noise is a function of
            (seed, step, atom, component) only, see :func:`molequi.md.integrators.gaussian_noise`.
        system_ids: [S] index of each system in the original input (int64).
        charge: [S] total charge, e (float64; ``atoms.info["charge"]``, else 0).
        step: number of steps taken.
    """

    positions: torch.Tensor
    velocities: torch.Tensor
    forces: torch.Tensor
    energy: torch.Tensor
    masses: torch.Tensor
    numbers: torch.Tensor
    batch: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    temperature: torch.Tensor
    friction: torch.Tensor
    seeds: torch.Tensor
    system_ids: torch.Tensor
    charge: torch.Tensor
    step: int = 0

    @property
    def num_systems(self) -> int:
        return self.cell.shape[0]

    @property
    def device(self) -> torch.device:
        return self.positions.device

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor field by name (for restart files)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "step"}

    def select(self, keep: torch.Tensor) -> MDState:
        """A new state with only the systems where ``keep`` [S] (bool) is True, re-indexed."""
        atom_keep = keep[self.batch]
        new_index = torch.cumsum(keep.long(), 0) - 1  # [S] new system index of kept systems
        values = {}
        for name, value in self.tensors().items():
            values[name] = value[keep] if name in PER_SYSTEM else value[atom_keep]
        values["batch"] = new_index[self.batch[atom_keep]]
        return MDState(**values, step=self.step)


def check_state(state: MDState) -> None:
    """Raise ``ValueError`` naming the first field of ``state`` with an impossible dtype, shape
    or value (a restart file is data: it is checked before anything runs on it)."""
    n = state.positions.shape[0] if state.positions.dim() == 2 else -1
    s = state.cell.shape[0] if state.cell.dim() == 3 else -1
    expected = {
        "positions": ((n, 3), torch.float64), "velocities": ((n, 3), torch.float64), "forces": ((n, 3), torch.float64),
        "energy": ((s,), torch.float64), "masses": ((n,), torch.float64), "numbers": ((n,), torch.long),
        "batch": ((n,), torch.long), "cell": ((s, 3, 3), torch.float64), "pbc": ((s, 3), torch.bool),
        "temperature": ((s,), torch.float64), "friction": ((s,), torch.float64), "seeds": ((s,), torch.long),
        "system_ids": ((s,), torch.long), "charge": ((s,), torch.float64),
    }
    for name, (shape, dtype) in expected.items():
        value = getattr(state, name)
        if tuple(value.shape) != shape or value.dtype != dtype:
            raise ValueError(f"{name} has shape {tuple(value.shape)} and dtype {value.dtype}, expected {shape} {dtype}")
        if value.is_floating_point() and name != "energy" and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} holds non-finite values")
    if n and not (bool((state.masses > 0).all()) and bool(((state.numbers >= 1) & (state.numbers <= 118)).all())):
        raise ValueError("masses must be > 0 and atomic numbers in 1..118")
    if n and (int(state.batch.min()) < 0 or int(state.batch.max()) >= s or bool((state.batch.diff() < 0).any())):
        raise ValueError("batch must map the atoms, in order, to the systems")
    if s and (bool((state.temperature < 0).any()) or bool((state.friction < 0).any()) or int(state.system_ids.min()) < 0):
        raise ValueError("temperatures, frictions and system ids must be ≥ 0")
    if state.step < 0:
        raise ValueError(f"step must be ≥ 0, got {state.step}")


def per_system(value: float | Sequence[float] | torch.Tensor, num_systems: int, name: str) -> torch.Tensor:
    """A float64 [S] tensor from a scalar or one value per system."""
    tensor = torch.as_tensor(value, dtype=torch.float64).flatten()
    if tensor.numel() == 1:
        tensor = tensor.expand(num_systems).clone()
    if tensor.numel() != num_systems:
        raise ValueError(f"{name}: expected 1 or {num_systems} values, got {tensor.numel()}")
    return tensor


def state_from_atoms(
    structures: Sequence[Atoms],
    temperature: float | Sequence[float] = 300.0,
    friction: float | Sequence[float] = 0.01,
    seed: int = 0,
    device: str | torch.device = "cpu",
    velocities: str = "maxwell-boltzmann",
) -> MDState:
    """Stack ``structures`` into one state; system k gets the seed ``seed + k``.

    Args:
        structures: the systems (positions Å, masses from ``Atoms.get_masses()``, amu).
        temperature: K, one value or one per system.
        friction: Langevin γ, 1/fs, one value or one per system.
        seed: base seed; system k uses ``seed + k`` for its initial velocities and its noise, so a
            system evolves the same whether it runs alone (with that seed) or in a batch.
        velocities: ``"maxwell-boltzmann"`` (drawn at ``temperature``), ``"atoms"`` (taken from
            ``Atoms.get_velocities()``) or ``"zero"``; centre-of-mass motion is removed in all cases.
    """
    if not structures:
        raise ValueError("no structures given")
    count = len(structures)
    sizes = torch.tensor([len(a) for a in structures])
    cells, pbcs = [], []
    for atoms in structures:
        pbc = torch.tensor(atoms.pbc.tolist(), dtype=torch.bool)
        pbcs.append(pbc)
        cells.append(torch.tensor(atoms.cell.array if pbc.any() else [[0.0] * 3] * 3, dtype=torch.float64))
    state = MDState(
        positions=torch.cat([torch.tensor(a.get_positions(), dtype=torch.float64) for a in structures]),
        velocities=torch.zeros(int(sizes.sum()), 3, dtype=torch.float64),
        forces=torch.zeros(int(sizes.sum()), 3, dtype=torch.float64),
        energy=torch.zeros(count, dtype=torch.float64),
        masses=torch.cat([torch.tensor(a.get_masses(), dtype=torch.float64) for a in structures]),
        numbers=torch.cat([torch.tensor(a.get_atomic_numbers(), dtype=torch.long) for a in structures]),
        batch=torch.repeat_interleave(torch.arange(count), sizes),
        cell=torch.stack(cells),
        pbc=torch.stack(pbcs),
        temperature=per_system(temperature, count, "temperature"),
        friction=per_system(friction, count, "friction"),
        seeds=torch.arange(count, dtype=torch.long) + int(seed),
        system_ids=torch.arange(count, dtype=torch.long),
        charge=torch.tensor([total_charge(a, f"structure {i}") for i, a in enumerate(structures)], dtype=torch.float64),
    )
    if velocities == "maxwell-boltzmann":
        state.velocities = maxwell_boltzmann(state.masses, state.batch, state.temperature, state.seeds)
    elif velocities == "atoms":
        state.velocities = torch.cat([torch.tensor(a.get_velocities(), dtype=torch.float64) for a in structures]) * units.fs
    elif velocities != "zero":
        raise ValueError(f"velocities must be 'maxwell-boltzmann', 'atoms' or 'zero', got {velocities!r}")
    state.velocities = remove_com_velocity(state.velocities, state.masses, state.batch, count)
    return to_device(state, device)


def to_device(state: MDState, device: str | torch.device) -> MDState:
    return MDState(**{k: v.to(device) for k, v in state.tensors().items()}, step=state.step)


def maxwell_boltzmann(
    masses: torch.Tensor, batch: torch.Tensor, temperature: torch.Tensor, seeds: torch.Tensor
) -> torch.Tensor:
    """Velocities [N, 3] Å/fs drawn from the Maxwell–Boltzmann distribution at ``temperature`` [S] K.

    System k's velocities come from its own CPU ``torch.Generator`` seeded with ``seeds[k]``, so
    they do not depend on the other systems or on the device.
    """
    parts = []
    for k, seed in enumerate(seeds.tolist()):
        generator = torch.Generator().manual_seed(int(seed))
        mask = (batch == k).cpu()
        m = masses.cpu()[mask]
        sigma = torch.sqrt(BOLTZMANN * float(temperature[k]) / m / KINETIC)  # Å/fs
        parts.append(torch.randn(len(m), 3, generator=generator, dtype=torch.float64) * sigma[:, None])
    return torch.cat(parts).to(masses.device)


def scatter_sum(values: torch.Tensor, batch: torch.Tensor, num_systems: int) -> torch.Tensor:
    """Sum per-atom ``values`` [N, ...] into [S, ...]."""
    out = torch.zeros((num_systems, *values.shape[1:]), dtype=values.dtype, device=values.device)
    return out.index_add_(0, batch, values)


def remove_com_velocity(
    velocities: torch.Tensor, masses: torch.Tensor, batch: torch.Tensor, num_systems: int
) -> torch.Tensor:
    """Velocities with each system's centre-of-mass velocity Σ m v / Σ m subtracted."""
    momentum = scatter_sum(masses[:, None] * velocities, batch, num_systems)  # [S, 3]
    total_mass = scatter_sum(masses, batch, num_systems)  # [S]
    return velocities - (momentum / total_mass[:, None])[batch]


def kinetic_energy(state: MDState) -> torch.Tensor:
    """[S] kinetic energy, eV."""
    per_atom = 0.5 * KINETIC * state.masses * (state.velocities**2).sum(-1)
    return scatter_sum(per_atom, state.batch, state.num_systems)


def degrees_of_freedom(state: MDState) -> torch.Tensor:
    """[S] 3N − 3 (centre-of-mass motion is removed and conserved), 3 for a single atom."""
    sizes = torch.bincount(state.batch, minlength=state.num_systems).to(torch.float64)
    return torch.where(sizes > 1, 3 * sizes - 3, torch.full_like(sizes, 3.0))


def instantaneous_temperature(state: MDState, kinetic: torch.Tensor | None = None) -> torch.Tensor:
    """[S] kinetic temperature T = 2 E_kin / (n_dof k_B), K."""
    kinetic = kinetic_energy(state) if kinetic is None else kinetic
    return 2.0 * kinetic / (degrees_of_freedom(state) * BOLTZMANN)
