"""The MD ensembles: one registry that the batched engine, the ASE engine, the runner, the log,
the plots and ``molequi md --ensemble`` all read.

A new ensemble is its step function (one file, like :mod:`molequi.md.integrators`) and one
:func:`register` line below; nothing else names ensembles. Units: fs, K, 1/fs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from molequi.errors import ConfigError
from molequi.md.integrators import ForceFunction, baoab_step, velocity_verlet_step
from molequi.md.state import MDState

StepFunction = Callable[[MDState, float, ForceFunction], None]
"""``step(state, dt_fs, compute)``: advance every system by one time step in place."""

ASEDynamics = Callable[..., Any]
"""``dynamics(atoms, dt_fs, temperature_K, friction_per_fs, seed)`` -> an ASE ``MolecularDynamics``
that advances the same ensemble one system at a time (ASE's own integrator)."""


@dataclass(frozen=True)
class Ensemble:
    """One statistical ensemble and how each engine samples it.

    Attributes:
        name: the ``--ensemble`` value.
        title: how plots and logs name it (``"NVE"``).
        method: its integrator, in words (``"velocity Verlet"``).
        step: the batched engine's integrator.
        ase_dynamics: the ASE engine's integrator.
        thermostatted: whether a thermostat exchanges energy with the systems (then the total
            energy is not conserved: its change is not a drift, and the temperature has a target).
    """

    name: str
    title: str
    method: str
    step: StepFunction
    ase_dynamics: ASEDynamics
    thermostatted: bool

    def describe(self, temperature: float | None = None) -> str:
        """``"NVE (velocity Verlet)"``, ``"NVT (Langevin, target 300 K)"``."""
        target = f", target {temperature:g} K" if self.thermostatted and temperature is not None else ""
        return f"{self.title} ({self.method}{target})"


ENSEMBLES: dict[str, Ensemble] = {}
"""name -> :class:`Ensemble`, in registration order."""


def register(ensemble: Ensemble) -> Ensemble:
    """Make ``ensemble`` available by its name (replacing one of the same name)."""
    ENSEMBLES[ensemble.name] = ensemble
    return ensemble


def ensemble_of(name: str) -> Ensemble:
    """The registered ensemble ``name`` (:class:`ConfigError` naming the choices otherwise)."""
    try:
        return ENSEMBLES[name]
    except KeyError:
        raise ConfigError(f"unknown ensemble {name!r}; choose one of {', '.join(ENSEMBLES)}") from None


def _ase_verlet(atoms, dt: float, temperature: float, friction: float, seed: int):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    return VelocityVerlet(atoms, timestep=dt * units.fs)


def _ase_langevin(atoms, dt: float, temperature: float, friction: float, seed: int):
    import numpy as np
    from ase import units
    from ase.md.langevin import Langevin

    return Langevin(atoms, dt * units.fs, temperature_K=temperature, friction=friction / units.fs, fixcm=False,
                    rng=np.random.default_rng(seed))


register(Ensemble("nve", "NVE", "velocity Verlet", velocity_verlet_step, _ase_verlet, thermostatted=False))
register(Ensemble("nvt", "NVT", "Langevin", baoab_step, _ase_langevin, thermostatted=True))
