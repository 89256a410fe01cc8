"""Tests for the GFN2-xTB organic data-set recipe, datasets/organic_xtb.py.

``datasets/`` is not a package, so the script is loaded from its path. The build test runs the
script's ``--small`` size (4 QM9 + 2 MOSES molecules), about 10 s of CPU, plus a rerun, a
resumed chunk and a refused rerun.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from conftest import load_script

pytest.importorskip("tblite.interface", reason="GFN2-xTB labels need tblite (pip install tblite)")
pytest.importorskip("rdkit", reason="embedding, scaffolds and charged variants need RDKit (pip install rdkit)")
from ase.io import read

RECIPE_PATH = Path(__file__).resolve().parents[1] / "datasets" / "organic_xtb.py"
ALLOWED = {"H", "C", "N", "O", "F", "S", "Cl", "Br"}


@pytest.fixture(scope="module")
def recipe() -> ModuleType:
    return load_script(RECIPE_PATH)


def _need_data_packages() -> None:
    # Located, not imported: qm9pack and moses pull in heavy or stale dependencies on import.
    if importlib.util.find_spec("qm9pack") is None:
        pytest.skip("QM9 geometries need qm9pack (pip install 'molequi[qm9]')")
    if importlib.util.find_spec("moses") is None:
        pytest.skip("MOSES SMILES need molsets (pip install --no-deps molsets)")


ARGS = ["--small", "--no-progress"]  # 4 QM9 + 2 MOSES molecules, chunks of 2, seed 0


@pytest.fixture(scope="module")
def built(recipe: ModuleType, tmp_path_factory) -> Path:
    _need_data_packages()
    out = tmp_path_factory.mktemp("organic_xtb")
    assert recipe.main(["--out", str(out), *ARGS]) == 0
    return out


def _frames(out: Path) -> dict[str, list]:
    return {split: read(out / f"{split}.extxyz", ":") for split in ("train", "test")}


# ---------------------------------------------------------------------------------- fast parts


def test_charged_variants_of_acids_and_amines(recipe: ModuleType) -> None:
    from rdkit import Chem

    def variants(smiles: str) -> dict[int, str]:
        return {c: Chem.MolToSmiles(m) for c, m in recipe.charged_variants(Chem.MolFromSmiles(smiles))}

    assert variants("NCCC(=O)O") == {-1: "NCCC(=O)[O-]", +1: "[NH3+]CCC(=O)O"}
    assert variants("Oc1ccccc1") == {-1: "[O-]c1ccccc1"}
    assert variants("CS(=O)(=O)NC") == {-1: "C[N-]S(C)(=O)=O"}
    assert variants("OC(=O)c1ccc(O)cc1") == {-1: "O=C([O-])c1ccc(O)cc1"}  # the acid before the phenol
    assert variants("CN(C)CC1CC1") == {+1: "C[NH+](C)CC1CC1"}
    # Amides, anilines, esters, ureas, nitriles and alcohols are left alone.
    for smiles in ("CC(=O)NC", "Nc1ccccc1", "CC(=O)OC", "NC(N)=O", "CC#N", "CCO"):
        assert variants(smiles) == {}, smiles


def test_scaffold_split_is_seeded_and_keeps_scaffolds_whole(recipe: ModuleType) -> None:
    from rdkit import Chem

    assert recipe.murcko_scaffold(Chem.MolFromSmiles("CCO")) == ""
    assert recipe.murcko_scaffold(Chem.MolFromSmiles("CCc1ccccc1")) == "c1ccccc1"
    scaffolds = [f"C1CC{'C' * k}C1" for k in range(400)]
    splits = [recipe.assign_split(s, "irrelevant", 0, 0.1) for s in scaffolds]
    assert splits == [recipe.assign_split(s, "other smiles", 0, 0.1) for s in scaffolds]
    assert 0.05 < splits.count("test") / len(splits) < 0.15
    assert splits != [recipe.assign_split(s, "", 1, 0.1) for s in scaffolds]  # the seed matters
    acyclic = [recipe.assign_split("", f"C{'C' * k}O", 0, 0.1) for k in range(400)]
    assert 0.05 < acyclic.count("test") / len(acyclic) < 0.15


def test_rotatable_bonds_skip_double_bonds_and_rings(recipe: ModuleType) -> None:
    from rdkit import Chem

    def central_bonds(smiles: str) -> set[tuple[int, int]]:
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        return {tuple(sorted((j, k))) for _, j, k, _ in recipe.rotatable_bonds(mol)}

    assert central_bonds("CCCC") == {(1, 2)}  # heavy-atom torsions before methyl rotors
    assert central_bonds("C/C=C/C") == {(0, 1), (2, 3)}  # the methyl rotors, never C=C
    assert central_bonds("C1CCCCC1") == set()


def test_bad_arguments_are_refused(recipe: ModuleType, tmp_path: Path, capsys) -> None:
    assert recipe.main(["--out", str(tmp_path / "x"), "--rattle-min", "0.2", "--rattle-max", "0.1"]) == 2
    assert "--rattle-min" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- the small build


@pytest.mark.slow
def test_structures_elements_and_labels(built: Path, recipe: ModuleType) -> None:
    frames = _frames(built)
    assert frames["train"] and frames["test"], "the small build should fill both splits"
    kinds = set()
    for atoms in frames["train"] + frames["test"]:
        assert set(atoms.get_chemical_symbols()) <= ALLOWED
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        assert np.isfinite(energy)
        assert forces.shape == (len(atoms), 3) and np.isfinite(forces).all()
        assert isinstance(atoms.info["charge"], (int, np.integer)) and atoms.info["charge"] in (-1, 0, 1)
        assert atoms.info["source"] in ("qm9", "moses")
        kinds.add(atoms.info["kind"])
    assert kinds >= {"relaxed", "rattled", "md"}
    # Labels are fresh single points at the stored positions, not the MD's reused wavefunction.
    for atoms in [a for a in frames["train"] if a.info["kind"] in ("md", "torsion")][:3]:
        energy, forces = recipe.xtb_single_point(atoms.numbers, atoms.positions, int(atoms.info["charge"]))
        assert energy == pytest.approx(atoms.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(forces, atoms.get_forces(), atol=1e-6)
    # Distinct geometries: no two structures share an energy.
    energies = [a.get_potential_energy() for a in frames["train"] + frames["test"]]
    assert len(set(energies)) == len(energies)


@pytest.mark.slow
def test_train_and_test_scaffolds_are_disjoint(built: Path, recipe: ModuleType) -> None:
    frames = _frames(built)
    scaffolds = {split: {a.info["scaffold"] for a in frames[split]} - {recipe.ACYCLIC} for split in frames}
    molecules = {split: {a.info["molecule"] for a in frames[split]} for split in frames}
    assert scaffolds["train"] and not scaffolds["train"] & scaffolds["test"]
    assert not molecules["train"] & molecules["test"]
    train_smiles = set((built / "train_smiles.txt").read_text().split())
    test_smiles = set((built / "test_smiles.txt").read_text().split())
    assert train_smiles and test_smiles and not train_smiles & test_smiles


@pytest.mark.slow
def test_charged_structures_carry_their_charge_into_tblite(built: Path, recipe: ModuleType) -> None:
    frames = [a for split in _frames(built).values() for a in split]
    charged = [a for a in frames if a.info["charge"] != 0 and a.info["kind"] == "relaxed"]
    assert charged, "the --small build (seed 0) is expected to hold a charged molecule"
    for ion in charged:
        parent = [a for a in frames if a.info["molecule"] == ion.info["molecule"]
                  and a.info["charge"] == 0 and a.info["kind"] == "relaxed"]
        assert parent and parent[0].get_potential_energy() != pytest.approx(ion.get_potential_energy(), abs=0.1)
        # The stored label is GFN2-xTB at the stored charge, and not at charge 0.
        energy, forces = recipe.xtb_single_point(ion.numbers, ion.positions, int(ion.info["charge"]))
        assert energy == pytest.approx(ion.get_potential_energy(), abs=1e-5)
        np.testing.assert_allclose(forces, ion.get_forces(), atol=1e-4)
        from tblite.interface import Calculator

        neutral = Calculator("GFN2-xTB", ion.numbers, ion.positions / recipe.BOHR_ANGSTROM, charge=0.0, uhf=1)
        neutral.set("verbosity", 0)
        e0 = float(neutral.singlepoint().get("energy")) * recipe.HARTREE_EV
        assert abs(e0 - ion.get_potential_energy()) > 0.5


@pytest.mark.slow
def test_card_sizes_match_the_files(built: Path) -> None:
    card = json.loads((built / "card.json").read_text())
    frames = _frames(built)
    for split, split_frames in frames.items():
        sizes = card["sizes"][split]
        assert sizes["structures"] == len(split_frames) == card["files"][f"{split}.extxyz"]["structures"]
        for key, by in (("kind", "by_kind"), ("source", "by_source")):
            counted: dict[str, int] = {}
            for atoms in split_frames:
                counted[atoms.info[key]] = counted.get(atoms.info[key], 0) + 1
            assert sizes[by] == dict(sorted(counted.items()))
    assert card["level_of_theory"]["method"] == "GFN2-xTB"
    assert {s["licence"] for s in card["sources"]} == {"CC0-1.0", "MIT"}
    assert card["recipe"]["arguments"]["seed"] == 0 and card["cpu_seconds"] > 0
    import hashlib

    assert card["files"]["train.extxyz"]["sha256"] == hashlib.sha256((built / "train.extxyz").read_bytes()).hexdigest()


@pytest.mark.slow
def test_rerun_is_a_noop_resume_is_identical_and_other_settings_are_refused(
        built: Path, recipe: ModuleType, capsys) -> None:
    card = json.loads((built / "card.json").read_text())
    chunks = sorted((built / "chunks").glob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in chunks}
    assert recipe.main(["--out", str(built), *ARGS]) == 0
    assert json.loads((built / "card.json").read_text())["content_sha256"] == card["content_sha256"]
    assert {p: p.stat().st_mtime_ns for p in chunks} == stamps, "a finished chunk was recomputed"

    # An interrupted build: one chunk lost its mark of completion; the rerun redoes it, same bytes.
    lost = next(p for p in chunks if p.name.startswith("qm9-"))
    lost.unlink()
    assert recipe.main(["--out", str(built), *ARGS]) == 0
    assert lost.is_file()
    assert json.loads((built / "card.json").read_text())["content_sha256"] == card["content_sha256"]

    capsys.readouterr()
    assert recipe.main(["--out", str(built), *ARGS, "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seed 0 → 1" in err
    assert json.loads((built / "card.json").read_text())["content_sha256"] == card["content_sha256"]
