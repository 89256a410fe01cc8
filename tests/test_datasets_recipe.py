"""Tests for the quickstart's GFN2-xTB data-set recipe, datasets/xtb_md.py.

``datasets/`` is not a package, so the script is loaded from its path. Runs a few hundred
MD steps of ethanol in total, a few seconds on a 2-core CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from conftest import load_script

pytest.importorskip("tblite.ase", reason="GFN2-xTB labels need tblite (pip install tblite)")
from ase.io import read  # noqa: E402

RECIPE_PATH = Path(__file__).resolve().parents[1] / "datasets" / "xtb_md.py"
N_FRAMES = 8


@pytest.fixture(scope="module")
def recipe() -> ModuleType:
    return load_script(RECIPE_PATH)


@pytest.fixture(scope="module")
def tiny_settings(recipe: ModuleType):
    # Short equilibration and stride keep the test fast; physics is unchanged otherwise.
    return recipe.MDSettings(temperature_K=500.0, stride=5, equilibration_steps=20)


@pytest.fixture(scope="module")
def tiny_file(recipe: ModuleType, tiny_settings, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("xtb") / "ethanol.extxyz"
    (path,) = recipe.generate(out, "ethanol", N_FRAMES, seed=3, settings=tiny_settings,
                              progress=False)
    assert path == out
    return path


def test_frames_and_labels(tiny_file: Path) -> None:
    frames = read(tiny_file, ":")
    assert len(frames) == N_FRAMES
    assert not list(tiny_file.parent.glob("*.tmp")), "temporary file left behind"
    for atoms in frames:
        assert atoms.get_chemical_formula() == "C2H6O"
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        assert np.isfinite(energy)
        assert forces.shape == (len(atoms), 3)
        assert np.isfinite(forces).all()
        assert atoms.info["source"] == "GFN2-xTB (tblite) Langevin MD, T=500 K"
    # Frames are distinct MD snapshots, not copies of one geometry.
    energies = [a.get_potential_energy() for a in frames]
    assert len(set(energies)) == N_FRAMES
    steps = [a.info["md_step"] for a in frames]
    assert steps == [20 + 5 * (i + 1) for i in range(N_FRAMES)]


def test_labels_match_fresh_single_point(tiny_file: Path) -> None:
    from tblite.ase import TBLite

    for atoms in read(tiny_file, ":")[:3]:
        stored_energy = atoms.get_potential_energy()
        stored_forces = atoms.get_forces()
        fresh = atoms.copy()
        fresh.calc = TBLite(method="GFN2-xTB", verbosity=0)
        assert abs(fresh.get_potential_energy() - stored_energy) < 1e-6
        # Labels come from a fresh SCF on the stored (rounded) positions; extxyz keeps 8 decimals.
        np.testing.assert_allclose(fresh.get_forces(), stored_forces, rtol=0, atol=1e-7)


def test_seeded_runs_are_reproducible(recipe: ModuleType, tiny_settings, tiny_file: Path,
                                      tmp_path: Path) -> None:
    again = tmp_path / "again.extxyz"
    recipe.generate(again, "ethanol", N_FRAMES, seed=3, settings=tiny_settings, progress=False)
    assert again.read_bytes() == tiny_file.read_bytes()

    other = tmp_path / "other.extxyz"
    recipe.generate(other, "ethanol", 2, seed=4, settings=tiny_settings, progress=False)
    assert other.read_bytes() != tiny_file.read_bytes()


def test_split_writes_train_and_independent_test(recipe: ModuleType, tmp_path: Path) -> None:
    settings = recipe.MDSettings(stride=2, equilibration_steps=4)
    paths = recipe.generate(tmp_path / "w.extxyz", "water", 3, seed=0, settings=settings,
                            test_frames=2, progress=False)
    assert [p.name for p in paths] == ["w_train.extxyz", "w_test.extxyz"]
    train, test = (read(p, ":") for p in paths)
    assert (len(train), len(test)) == (3, 2)
    assert {a.info["stream"] for a in train} == {0}
    assert {a.info["stream"] for a in test} == {1}
    assert not np.allclose(train[0].positions, test[0].positions)


def test_unknown_molecule_is_a_clear_error(recipe: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(recipe.DatasetRecipeError, match="unknown molecule 'ethanoll'") as info:
        recipe.generate(tmp_path / "x.extxyz", "ethanoll", 2, progress=False)
    assert "ethanol" in str(info.value)  # suggests the close match and valid names
    assert not (tmp_path / "x.extxyz").exists()


@pytest.mark.parametrize("n_frames", [0, -3])
def test_non_positive_frame_count_is_rejected(recipe: ModuleType, tmp_path: Path,
                                              n_frames: int) -> None:
    with pytest.raises(recipe.DatasetRecipeError, match="positive"):
        recipe.generate(tmp_path / "x.extxyz", "ethanol", n_frames, progress=False)


def test_friendly_and_g2_names(recipe: ModuleType) -> None:
    assert recipe.resolve_molecule_name("ethanol") == "CH3CH2OH"
    assert recipe.resolve_molecule_name("Acetic acid") == "CH3COOH"
    assert recipe.resolve_molecule_name("C6H6") == "C6H6"


def test_cli_reports_errors_without_traceback(recipe: ModuleType, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    status = recipe.main(["--out", str(tmp_path / "x.extxyz"), "--molecule", "nope",
                          "--no-progress"])
    assert status == 2
    assert capsys.readouterr().err.startswith("error: unknown molecule 'nope'")


def test_missing_tblite_says_how_to_install(recipe: ModuleType,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tblite.ase", None)  # makes the import fail
    with pytest.raises(recipe.DatasetRecipeError, match="pip install tblite"):
        recipe.make_xtb_calculator()
