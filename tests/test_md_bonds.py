"""The bond topology of molecules and the MD watch that stops a system whose molecule breaks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.neighborlist import natural_cutoffs, neighbor_list

from molequi.md import BatchedMD, Potential, load_models, state_from_atoms
from molequi.md.bonds import BondTopology, BondWatch, bonded_pairs
from molequi.models import ModelConfig, build_model


@pytest.mark.parametrize("name, bonds", [("CH3CH2OH", 8), ("C6H6", 12), ("CH3COOH", 7), ("CH3NO2", 6)])
def test_bonded_pairs_are_the_chemical_bonds(name: str, bonds: int) -> None:
    atoms = molecule(name)
    assert len(bonded_pairs(atoms)) == bonds
    # bare covalent radii miss most of them (a C–H bond is longer than 0.76 + 0.31 Å)
    assert len(neighbor_list("i", atoms, natural_cutoffs(atoms))) // 2 < bonds


def test_topology_names_a_broken_bond_and_a_new_one() -> None:
    ethanol = molecule("CH3CH2OH")
    topology = BondTopology(ethanol)
    assert topology.failure(ethanol.positions) is None
    o, h = 2, 3  # the hydroxyl O–H
    stretched = ethanol.positions.copy()
    stretched[h] += 0.6 * (stretched[h] - stretched[o]) / np.linalg.norm(stretched[h] - stretched[o])
    assert topology.failure(stretched) == "bond O2–H3 stretched by 0.60 Å"
    within = ethanol.positions.copy()
    within[h] += 0.4 * (within[h] - within[o]) / np.linalg.norm(within[h] - within[o])
    assert topology.failure(within) is None  # inside the tolerance

    dimer = molecule("H2O").copy() + molecule("H2O")
    dimer.positions[3:] += [0.0, 0.0, 3.0]
    topology = BondTopology(dimer)
    assert topology.failure(dimer.positions) is None
    closer = dimer.positions.copy()
    away = (dimer.positions[1] - dimer.positions[0]) / np.linalg.norm(dimer.positions[1] - dimer.positions[0])
    closer[3:] += dimer.positions[1] + 0.9 * away - dimer.positions[3]  # the second O 0.9 Å beyond the first's H
    assert topology.failure(closer) == "new bond H1–O3 (0.90 Å)"
    assert BondTopology(dimer, new_bonds=False).failure(closer) is None
    with pytest.raises(ValueError, match="molecules"):
        BondTopology(Atoms(molecule("H2O"), cell=[5, 5, 5], pbc=True))


def test_watch_stops_only_the_broken_system_with_its_reason() -> None:
    torch.manual_seed(0)
    config = ModelConfig(species=[1, 6, 8], cutoff=4.0, channels=8, l_max=1, correlation=2, radial_hidden=[16],
                         avg_num_neighbors=8.0)
    potential = Potential(load_models([build_model(config, torch.float64).eval()]))
    starts = [molecule("CH3CH2OH"), molecule("CH3CH2OH")]
    state = state_from_atoms(starts, temperature=100.0, seed=0)
    engine = BatchedMD(potential, state, dt=0.5)
    watch = BondWatch(starts, every=5)
    engine.run(5, [watch])
    assert engine.state.num_systems == 2 and not watch.failures
    pulled = engine.state.positions[engine.state.batch == 1]
    pulled[3] += torch.tensor([0.0, 0.0, 2.0], dtype=pulled.dtype)  # tear the second molecule's O–H apart
    engine.state.positions[engine.state.batch == 1] = pulled
    engine.run(5, [watch])
    assert list(watch.failures) == [1] and "O2–H3 stretched" in watch.failures[1][1]
    assert engine.state.system_ids.tolist() == [0]
    assert [(e.system, e.reason) for e in engine.stopped] == [(1, watch.failures[1][1])]


@pytest.mark.parametrize("engine", ["batched", "ase"])
def test_cli_stops_broken_molecules_writes_their_last_frame_and_refuses_a_crystal(engine: str, tmp_path: Path,
                                                                                  capsys) -> None:
    from ase.io import read, write

    from molequi.cli.main import main
    from molequi.models import save_model

    torch.manual_seed(0)
    config = ModelConfig(species=[1, 6, 8], cutoff=4.0, channels=8, l_max=1, correlation=2, radial_hidden=[16],
                         avg_num_neighbors=8.0)
    model = save_model(build_model(config, torch.float64).eval(), tmp_path / "model.molequi")
    write(tmp_path / "ethanol.xyz", molecule("CH3CH2OH"))
    # at 20,000 K a hydrogen moves ~0.2 Å/fs: within 40 steps of 0.5 fs some bond is 0.5 Å off
    common = [str(model), str(tmp_path / "ethanol.xyz"), "--steps", "40", "--dt", "0.5", "--temperature", "20000",
              "--ensemble", "nve", "--engine", engine, "--no-progress", "--min-distance", "0.05", "--log-every", "10"]
    assert main(["md", *common, "--out", str(tmp_path / "free")]) == 0
    assert main(["md", *common, "--out", str(tmp_path / "watched"), "--stop-broken-bonds"]) == 3
    last = read(tmp_path / "watched" / "broken_bonds.extxyz", ":")
    assert len(last) == 1 and "bond" in last[0].info["reason"] and last[0].info["step"] < 40
    assert "bond" in capsys.readouterr().out
    write(tmp_path / "crystal.xyz", Atoms(molecule("H2O"), cell=[6, 6, 6], pbc=True))
    assert main(["md", str(model), str(tmp_path / "crystal.xyz"), "--steps", "2", "--dt", "0.5", "--no-progress",
                 "--engine", engine, "--out", str(tmp_path / "crystal"), "--stop-broken-bonds"]) == 2
    assert "for molecules" in capsys.readouterr().err
