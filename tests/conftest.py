"""Shared fixtures: small random molequi models and a few test structures.

The test machines have 2 cores shared with other jobs: tiny e3nn kernels run ~10x faster with
one intra-op thread than with two threads that contend with other processes.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
RMD17_DIR = REPO_ROOT.parent / "shared" / "data" / "rmd17"


def rmd17_missing(path: Path = RMD17_DIR) -> str:
    """The skip message of a test that needs rMD17: where the data is expected and how to get it."""
    return (
        f"rMD17 data not found at {path}. The tests read split 01 of the revised MD17 data set "
        f"(Christensen & von Lilienfeld 2020, Figshare doi:10.6084/m9.figshare.12672038, archive rmd17.tar.bz2) "
        f"from {RMD17_DIR} (../shared/data/rmd17/ beside the repository) as rmd17_<molecule>_train_01.npz and "
        f"rmd17_<molecule>_test_01.npz (ethanol at least). To make them: tar xjf rmd17.tar.bz2, then for each "
        f"molecule save the rows of splits/index_train_01.csv and splits/index_test_01.csv of "
        f"npz_data/rmd17_<molecule>.npz (every key) to those two files; datasets/rmd17.md has the details."
    )

SPECIES = (1, 6, 8)


def load_script(path: Path) -> ModuleType:
    """A script of ``scripts/`` or ``datasets/`` (not a package) imported as a module, under its file name."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=None)
def random_model(
    l_max: int = 2,
    correlation: int = 3,
    num_layers: int = 2,
    dtype: str = "float64",
    properties: tuple[tuple[str, str], ...] = (),
    seed: int = 0,
    cutoff: float = 5.0,
    e0s: tuple[tuple[str, float], ...] = (),
    species_product: bool = False,
    edge_l_max: int | None = None,
    charge_input: bool = False,
    charge_energies: tuple[float, float] | None = None,
):
    """A freshly initialised (untrained) potential, cached per argument set: do not modify it."""
    from molequi.models import ModelConfig, build_model

    config = ModelConfig(
        species=list(SPECIES),
        cutoff=cutoff,
        channels=8,
        l_max=l_max,
        num_layers=num_layers,
        correlation=correlation,
        radial_hidden=[16],
        readout_hidden=8,
        avg_num_neighbors=8.0,
        properties=dict(properties),
        e0s=dict(e0s),
        species_product=species_product,
        edge_l_max=edge_l_max,
        charge_input=charge_input,
        charge_energies=None if charge_energies is None else list(charge_energies),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config, dtype=getattr(torch, dtype))
    return model.eval()


def make_ethanol() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)  # break the mirror symmetry of the ideal geometry
    return atoms


def make_water_box(n_molecules: int = 3, box: float = 6.0, seed: int = 0) -> Atoms:
    """``n_molecules`` randomly oriented H2O in a cubic periodic box of ``box`` Å."""
    rng = np.random.default_rng(seed)
    centres = [[1.0, 1.0, 1.0], [4.0, 4.0, 1.5], [2.0, 4.5, 4.0], [4.5, 1.5, 4.5]]
    atoms = Atoms(cell=np.eye(3) * box, pbc=True)
    for centre in centres[:n_molecules]:
        water = molecule("H2O")
        water.rotate(rng.uniform(0.0, 360.0), rng.normal(size=3))
        water.translate(centre)
        atoms += water
    atoms.rattle(0.02, seed=seed + 2)
    return atoms


@pytest.fixture
def ethanol() -> Atoms:
    return make_ethanol()


@pytest.fixture
def water_box() -> Atoms:
    return make_water_box()


@pytest.fixture
def model():
    """The default random model of the physics tests (l_max 2, correlation 3, 2 layers, float64)."""
    return random_model()


@pytest.fixture
def rmd17_dir() -> Path:
    if not RMD17_DIR.is_dir():
        pytest.skip(rmd17_missing())
    return RMD17_DIR
