"""Committee predictions on test structures and committee MD that explores new frames."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from molequi.learn.labelers import read_labelled
from molequi.learn.settings import LearnSettings


@dataclass
class CommitteePrediction:
    """Committee mean and spread on a list of structures (eV, eV/Å)."""

    energy: np.ndarray  # [S] mean energy, eV
    energy_std: np.ndarray  # [S] eV
    forces: list[np.ndarray]  # per structure [n_atoms, 3] mean forces, eV/Å
    forces_std: list[np.ndarray]  # per structure [n_atoms] per-atom spread, eV/Å


def predict_committee(models: Sequence[str | Path], structures: Sequence[Atoms], device: str = "cpu") -> CommitteePrediction:
    """Evaluate a committee (model files) on the structures (:func:`molequi.models.predict`: the
    mean over members and their unbiased spread; NaN spreads for a single member)."""
    from molequi.models.predict import predict
    from molequi.models.uncertainty.committee import load_models

    results = predict(load_models(models, device=device), list(structures))
    return CommitteePrediction(
        energy=np.array([r["energy"] for r in results]),
        energy_std=np.array([r.get("energy_std", math.nan) for r in results]),
        forces=[np.asarray(r["forces"], dtype=np.float64) for r in results],
        forces_std=[np.asarray(r.get("forces_std", np.full(len(r["forces"]), math.nan))) for r in results],
    )


def test_errors(prediction: CommitteePrediction, structures: Sequence[Atoms]) -> dict[str, float]:
    """Energy MAE and mean signed error (meV, total energy: the bias a drift of the energy's
    constant shows as) and force MAE/RMSE (meV/Å, per component) of the committee mean."""
    from molequi.data.graph import structure_labels

    labels = [structure_labels(atoms) for atoms in structures]
    energy_errors = np.array([prediction.energy[k] - e for k, (e, _) in enumerate(labels)])
    force_errors = np.concatenate([(prediction.forces[k] - f).ravel() for k, (_, f) in enumerate(labels)])
    return {
        "test_energy_mae_meV": 1000.0 * float(np.abs(energy_errors).mean()),
        "test_energy_bias_meV": 1000.0 * float(energy_errors.mean()),
        "test_forces_mae_meV_per_A": 1000.0 * float(np.abs(force_errors).mean()),
        "test_forces_rmse_meV_per_A": 1000.0 * float(np.sqrt((force_errors**2).mean())),
    }


def explore(
    models: Sequence[str | Path],
    starts: Sequence[Atoms],
    settings: LearnSettings,
    seed: int,
    device: str = "cpu",
    replicas: int | None = None,
) -> tuple[list[Atoms], list[str]]:
    """Committee Langevin MD of every start structure at every temperature (``replicas`` systems
    each; default ``settings.replicas``).

    Returns the frames recorded every ``sample_every`` steps, with ``info`` holding ``std_max``
    and ``std_mean`` (largest and mean per-atom force spread, eV/Å), ``energy_std`` (eV),
    ``temperature`` (K), ``system`` and ``md_step``; and the reasons of systems stopped early
    (too hot, collapsed, non-finite: their earlier frames are kept).
    """
    from molequi.md import BatchedMD, Potential, load_models, state_from_atoms

    systems, temperatures = [], []
    for atoms in starts:
        for temperature in settings.temperatures:
            for _ in range(settings.replicas if replicas is None else replicas):
                systems.append(atoms)
                temperatures.append(float(temperature))
    potential = Potential(load_models([str(m) for m in models], device=device))
    state = state_from_atoms(systems, temperature=temperatures, friction=settings.friction, seed=seed, device=device)
    engine = BatchedMD(potential, state, dt=settings.dt, ensemble="nvt")
    frames: list[Atoms] = []

    def record(md: BatchedMD) -> None:
        if md.state.step % settings.sample_every or md.state.num_systems == 0:
            return
        s = md.state
        stds = md.outputs["forces_std"]
        positions = s.positions.cpu().numpy()
        batch = s.batch.cpu().numpy()
        std = stds.cpu().numpy()
        energy_std = md.outputs["energy_std"].cpu().numpy()
        for k, system in enumerate(s.system_ids.tolist()):
            mask = batch == k
            atoms = Atoms(numbers=s.numbers[mask].cpu().numpy(), positions=positions[mask])
            atoms.info.update({
                "std_max": float(std[mask].max()), "std_mean": float(std[mask].mean()),
                "energy_std": float(energy_std[k]), "temperature": temperatures[system],
                "system": int(system), "md_step": int(s.step),
            })
            frames.append(atoms)

    engine.run(settings.md_steps, observers=[record])
    return frames, [str(event) for event in engine.stopped]


def md_seeds(r: int, settings: LearnSettings, out_dir: Path, starts: list[Atoms]) -> tuple[list[Atoms], int]:
    """The structures round ``r``'s MD starts from, and the systems per structure and temperature
    (see ``LearnSettings.md_from``)."""
    if settings.md_from == "rotamers":
        from molequi.md.torsions import random_rotamer

        rng = np.random.default_rng([settings.seed, r])  # a rerun of the round draws the same rotamers
        return [random_rotamer(atoms, rng) for atoms in starts for _ in range(settings.replicas)], 1
    previous = out_dir / f"round_{r - 1:03d}" / "labelled.extxyz"
    if settings.md_from == "labelled" and r > 0 and previous.exists():
        labelled = [Atoms(numbers=a.numbers, positions=a.positions) for a in read_labelled(previous)]
        if labelled:
            return labelled, 1
    return starts, settings.replicas
