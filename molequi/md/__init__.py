"""Batched molecular dynamics on the device: many independent systems advanced as one graph.

Why it is written here rather than taken from a library: ASE's integrators step one system at
a time in Python with host-side arrays (fine for one molecule through
:class:`~molequi.calculators.MolequiCalculator`, but thousands of replicas would mean thousands
of model calls per step), and torch-sim, the batched alternative, is an optional extra (its
newest releases need Python ≥ 3.12; :mod:`molequi.calculators.torchsim` adapts molequi models to it). The engine is small: a state dataclass, two integrators that read like
the algorithm, a device-side neighbor list with a skin, safety stops and exact restarts.

One runner (:func:`~molequi.md.runner.run_md`) drives both engines — this batched one and
:class:`~molequi.md.ase_engine.ASEEngine` (ASE's integrators, one system at a time) — with
the same safety stops, log rows and output files; ``molequi md`` only parses its options.

Units: Å, fs, amu, eV, K (velocities Å/fs, friction 1/fs); see :mod:`molequi.md.state`.

Example::

    from molequi.md import BatchedMD, Potential, load_models, state_from_atoms
    potential = Potential(load_models("run/model.molequi", device="cuda"))
    state = state_from_atoms([molecule] * 128, temperature=300.0, friction=0.01, seed=0)
    engine = BatchedMD(potential, state, dt=0.5, ensemble="nvt")
    engine.run(10_000)

Periodic systems are supported: their neighbor lists are rebuilt with vesin on the host (only
at a rebuild); open molecules are rebuilt entirely on the device.

TODO (needs a GPU to validate): capture the force evaluation of small, fixed-size batches in a
CUDA graph (static position/edge buffers padded to a capacity, re-captured when a neighbor
rebuild exceeds it). A plain e3nn model of this kind runs ~12× faster for one aspirin on an H100 when captured; it is left
out because it cannot be made correct without a GPU to test on.
"""

from molequi.data.batch import GraphBatch
from molequi.data.skin import BatchedNeighborList, SkinNeighborList
from molequi.md.ase_engine import ASEEngine
from molequi.md.engine import BatchedMD, StopEvent, safety_stops
from molequi.md.ensembles import ENSEMBLES, Ensemble, ensemble_of, register
from molequi.md.integrators import baoab_step, gaussian_noise, velocity_verlet_step
from molequi.md.output import MDOutput, plot_energy, read_log
from molequi.models.uncertainty.committee import Potential, load_models
from molequi.md.runner import MDResult, MDSettings, read_systems, run_md, run_md_files
from molequi.md.state import (
    MDState,
    instantaneous_temperature,
    kinetic_energy,
    maxwell_boltzmann,
    remove_com_velocity,
    state_from_atoms,
)

__all__ = [
    "ASEEngine",
    "ENSEMBLES",
    "Ensemble",
    "ensemble_of",
    "register",
    "MDResult",
    "MDSettings",
    "read_systems",
    "run_md",
    "run_md_files",
    "safety_stops",
    "BatchedMD",
    "BatchedNeighborList",
    "GraphBatch",
    "MDOutput",
    "MDState",
    "Potential",
    "SkinNeighborList",
    "StopEvent",
    "baoab_step",
    "gaussian_noise",
    "instantaneous_temperature",
    "kinetic_energy",
    "load_models",
    "maxwell_boltzmann",
    "plot_energy",
    "read_log",
    "remove_com_velocity",
    "state_from_atoms",
    "velocity_verlet_step",
]
