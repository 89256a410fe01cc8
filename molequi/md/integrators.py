"""Integrators for :class:`~molequi.md.state.MDState`: velocity Verlet (NVE) and Langevin BAOAB (NVT).

Each step function updates the state in place and calls ``compute(state)`` exactly once, which
must set ``state.forces`` (eV/Å) and ``state.energy`` (eV) for the new positions.
Units: Å, fs, amu, eV (see :mod:`molequi.md.state`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from molequi.md.state import ACCELERATION, BOLTZMANN, KINETIC, MDState, scatter_sum

ForceFunction = Callable[[MDState], None]


def half_kick(state: MDState, dt: float) -> None:
    """B: v ← v + (dt/2) F/m."""
    state.velocities += (0.5 * dt * ACCELERATION) * state.forces / state.masses[:, None]


def drift(state: MDState, dt: float) -> None:
    """A: x ← x + dt v."""
    state.positions += dt * state.velocities


def velocity_verlet_step(state: MDState, dt: float, compute: ForceFunction) -> None:
    """NVE: half kick, drift, forces, half kick. ``dt`` in fs."""
    half_kick(state, dt)
    drift(state, dt)
    compute(state)
    half_kick(state, dt)
    state.step += 1


def baoab_step(state: MDState, dt: float, compute: ForceFunction) -> None:
    """Langevin NVT, BAOAB splitting (Leimkuhler & Matthews 2013): B A O A, forces, B.

    O is the exact Ornstein–Uhlenbeck update v ← c₁ v + c₂ sqrt(k_B T / m) ξ with
    c₁ = exp(−γ dt), c₂ = sqrt(1 − c₁²), per system T (K) and γ (1/fs). The noise has each
    system's centre-of-mass component projected out (in mass-weighted coordinates), so the
    thermostat never moves the centre of mass and the 3N − 3 internal degrees of freedom are
    sampled at T.
    """
    half_kick(state, dt)
    drift(state, 0.5 * dt)
    thermostat(state, dt)
    drift(state, 0.5 * dt)
    compute(state)
    half_kick(state, dt)
    state.step += 1


def thermostat(state: MDState, dt: float) -> None:
    """O: the exact Ornstein–Uhlenbeck velocity update over ``dt`` fs (see :func:`baoab_step`)."""
    c1 = torch.exp(-state.friction * dt)[state.batch, None]  # [N, 1]
    c2 = torch.sqrt(1.0 - c1**2)
    sigma = torch.sqrt(BOLTZMANN * state.temperature[state.batch] / (KINETIC * state.masses))[:, None]  # Å/fs
    kick = sigma * gaussian_noise(state)
    # Project out the centre-of-mass part: subtract Σ m kick / Σ m per system.
    momentum = scatter_sum(state.masses[:, None] * kick, state.batch, state.num_systems)
    total_mass = scatter_sum(state.masses, state.batch, state.num_systems)
    kick = kick - (momentum / total_mass[:, None])[state.batch]
    state.velocities.mul_(c1).add_(c2 * kick)


# --------------------------------------------------------------------------- counter-based noise
_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """x · constant mod 2³² for 0 ≤ x < 2³², in int64 without overflow (16-bit halves)."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser: a bijection on [0, 2³²) with full avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def uniform_hash(seed: torch.Tensor, step: int, counter: torch.Tensor) -> torch.Tensor:
    """Uniform numbers in (0, 1) (float64) as a hash of (seed, step, counter), elementwise."""
    h = _mix32((seed & _MASK32) ^ 0x9E3779B9)
    h = _mix32(h ^ (step & _MASK32))
    h = _mix32(h ^ ((step >> 32) & _MASK32) ^ 0x7F4A7C15)
    h = _mix32(h ^ (counter & _MASK32))
    return (h.to(torch.float64) + 0.5) * (1.0 / 2**32)


def gaussian_noise(state: MDState) -> torch.Tensor:
    """[N, 3] standard normal numbers for step ``state.step``, a pure function of
    (system seed, step, index of the atom within its system, component).

    Counter-based (hash + Box–Muller) rather than a ``torch.Generator`` per system: it is drawn
    for all systems in a few vectorised device operations, a system gets the same noise alone
    or in any batch (replicas equal separate runs), it is identical on CPU and GPU, and the only
    "RNG state" a restart needs is the step number.
    """
    n_atoms = state.positions.shape[0]
    first_atom = torch.cumsum(torch.bincount(state.batch, minlength=state.num_systems), 0)
    first_atom = first_atom - torch.bincount(state.batch, minlength=state.num_systems)
    local = torch.arange(n_atoms, device=state.device) - first_atom[state.batch]  # [N]
    counter = 6 * local[:, None] + 2 * torch.arange(3, device=state.device)  # [N, 3], even
    seed = state.seeds[state.batch][:, None]
    u1 = uniform_hash(seed, state.step, counter)
    u2 = uniform_hash(seed, state.step, counter + 1)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
