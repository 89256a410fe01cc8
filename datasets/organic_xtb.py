#!/usr/bin/env python
"""Build a GFN2-xTB data set of organic molecules (H C N O F S Cl Br; neutral, cations, anions).

The training set of molequi's pretrained organic model. Molecules come from two sources:

* QM9 (``qm9pack``, read by ``molequi.data.qm9``): B3LYP-relaxed geometries of small molecules,
  drawn (seeded) from molequi's QM9 *train* split, so molequi's QM9 test split stays unseen;
* MOSES (``molsets``; the ``moses:train`` SMILES): drug-like molecules, embedded with RDKit
  ETKDGv3 and relaxed with MMFF94 (``molequi.search.conformers.embed_molecule``).

For every molecule (a "species": the neutral molecule and its charged variants) the script
labels, with GFN2-xTB through tblite:

* ``relaxed``: the start geometry (QM9's B3LYP minimum, or the ETKDG + MMFF geometry);
* ``rattled``: copies with Gaussian displacements, σ drawn in [0.05, 0.15] Å per copy;
* ``md``: frames of one short Langevin MD run (ASE ``Langevin`` driven by this script's tblite
  calculator) at a temperature drawn in [300, 1000] K;
* ``torsion``: on a seeded subset of the neutral molecules, rigid rotations of one rotatable
  single bond (RDKit ``SetDihedralDeg``), clashing geometries dropped.

Charged variants (RDKit edits of the parent, embedded with ETKDG + MMFF): an acid is
deprotonated (charge −1: a carboxylic acid, else a phenol, else a sulfonamide N–H); a basic
aliphatic amine is protonated to the ammonium (charge +1). They are labelled with that total
charge in tblite (closed shell).

Split: by Bemis–Murcko scaffold. A scaffold goes to the test set when a seeded hash of its
SMILES falls below ``--test-fraction``, so whole scaffolds (and a molecule's charged variants)
stay on one side; acyclic molecules (empty scaffold) are spread by a hash of their SMILES.

Output folder (``--out``)::

    train.extxyz, test.extxyz   labelled structures (energy eV, forces eV/Å; ase.io.read)
    molecules.csv               every molecule: id, source, SMILES, scaffold, split, counts
    train_smiles.txt, test_smiles.txt   the molecules (isomeric SMILES) of each split
    card.json                   sources, licences, level of theory, sizes, recipe, hashes, CPU s
    manifest.json               the settings; a rerun with other settings is refused
    chunks/                     the work, one chunk of molecules at a time (resumable)

``atoms.info`` of a structure: ``charge`` (e, int), ``source`` (qm9 / moses), ``kind``
(relaxed / rattled / md / torsion), ``smiles`` (without stereo marks: extxyz cannot store a
backslash), ``scaffold`` (Murcko scaffold SMILES, ``acyclic`` for none: extxyz cannot store an
empty string), ``molecule`` (id, e.g. ``qm9:1234`` or ``moses:train:56789``), and per kind
``rattle_sigma`` (Å), ``temperature_K`` (K), ``md_step``, ``time_fs`` (fs), ``torsion`` (atom
indices ``i-j-k-l``) and ``dihedral_deg`` (degrees).

Seeded and deterministic: the same arguments give byte-identical files, whatever
``--workers`` (each molecule has its own random stream; tblite runs on one thread; every
label is a fresh SCF at positions rounded to the 8 decimals extxyz stores). Resumable: chunks
are written atomically; a rerun skips finished ones.

    python datasets/organic_xtb.py --out data/organic_xtb --workers 2     # the full build
    python datasets/organic_xtb.py --out /tmp/oxtb --small                # a few seconds

Units: positions Å, energies eV, forces eV/Å, time fs, temperature K, charge e.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

RECIPE_VERSION = 1  # bump when the same settings would give different structures
METHOD = "GFN2-xTB"
ELEMENTS = ("H", "C", "N", "O", "F", "S", "Cl", "Br")
ALLOWED_Z = frozenset((1, 6, 7, 8, 9, 16, 17, 35))
KINDS = ("relaxed", "rattled", "md", "torsion")
SOURCES = ("qm9", "moses")
ACYCLIC = "acyclic"  # the scaffold written to extxyz for "" (see the module docstring)
BOHR_ANGSTROM = 0.5291772105638411  # Å per Bohr (ASE's value)
HARTREE_EV = 27.211386245988  # eV per Hartree (ASE's value)
_DECIMALS = 8  # extxyz stores positions with 8 decimals; labels belong to rounded positions

# Deprotonation (→ −1), the first group found in this order: a carboxylic acid O–H, a phenol
# O–H, a sulfonamide N–H (neither QM9 nor MOSES holds a neutral carboxylic acid: QM9 writes its
# few amino acids as zwitterions, and MOSES keeps no molecule with a charged atom). Protonation
# (→ +1): a basic aliphatic amine N, not an amide / amidine / carbamate / (thio)urea (N–C=X),
# aniline (N–aryl), enamine, cyanamide, hydrazine, hydroxylamine or sulfonamide nitrogen (N
# bonded to anything but C and H).
ACID_SMARTS = (("carboxylic acid", "[CX3](=O)[OX2H1]", 2), ("phenol", "[OX2H1]c", 0),
               ("sulfonamide", "[NX3;H1,H2;+0]S(=O)=O", 0))
AMINE_SMARTS = "[NX3;+0;!$(N~[!#6;!#1]);!$(N-[#6]=,#[*]);!$(N-a)]"

DEFAULTS: dict[str, Any] = {
    "n_qm9": 4000,
    "n_moses": 800,
    "seed": 0,
    "chunk_size": 20,
    "rattles": 3,
    "rattle_min": 0.05,
    "rattle_max": 0.15,
    "md_frames": 3,
    "md_stride": 10,
    "md_t_min": 300.0,
    "md_t_max": 1000.0,
    "timestep": 0.5,
    "friction": 0.02,
    "torsion_fraction": 0.3,
    "torsion_angles": 3,
    "charged": True,
    "test_fraction": 0.1,
    "max_force": 50.0,
}
SMALL = {"n_qm9": 4, "n_moses": 2, "chunk_size": 2}


class RecipeError(ValueError):
    """Bad arguments, a missing dependency, or an output folder built with other settings."""


# --------------------------------------------------------------------------------------------
# helpers shared with the quickstart recipe (datasets/xtb_md.py)


def _sibling(name: str):
    """Import ``datasets/<name>.py`` (``datasets`` is not a package)."""
    module_name = f"molequi_datasets_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def software_versions() -> dict[str, str]:
    """Versions of the packages whose output ends up in the data set."""
    return {name: _version(name) for name in ("tblite", "rdkit", "ase", "numpy", "qm9pack", "molsets")}


def _unit_hash(*parts: Any) -> float:
    """A deterministic number in [0, 1) from ``parts`` (sha256; not Python's salted hash)."""
    text = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") / 2.0**64


# --------------------------------------------------------------------------------------------
# GFN2-xTB through tblite


def _tblite_calculator_class():
    try:
        from tblite.interface import Calculator
    except ImportError as error:
        raise RecipeError("GFN2-xTB labels need tblite: pip install tblite") from error
    return Calculator


def xtb_single_point(numbers: np.ndarray, positions: np.ndarray, charge: int) -> tuple[float, np.ndarray]:
    """GFN2-xTB energy (eV) and forces [n, 3] (eV/Å) of a closed-shell molecule of total
    charge ``charge`` (e), from a fresh SCF (standard guess), so the label depends on the
    positions (Å) alone. Raises RuntimeError when the SCF fails or gives non-finite numbers."""
    Calculator = _tblite_calculator_class()
    calc = Calculator(METHOD, np.asarray(numbers, dtype=np.int64),
                      np.asarray(positions, dtype=np.float64) / BOHR_ANGSTROM, charge=float(charge), uhf=0)
    calc.set("verbosity", 0)
    result = calc.singlepoint()
    energy = float(result.get("energy")) * HARTREE_EV
    forces = -np.asarray(result.get("gradient"), dtype=np.float64) * (HARTREE_EV / BOHR_ANGSTROM)
    if not (np.isfinite(energy) and np.isfinite(forces).all()):
        raise RuntimeError("GFN2-xTB returned non-finite numbers")
    return energy, forces


def make_md_calculator(charge: int):
    """An ASE calculator (energy eV, forces eV/Å) running GFN2-xTB at total charge ``charge``
    (e), reusing the previous SCF solution as the next guess (fast for consecutive MD steps)."""
    from ase.calculators.calculator import Calculator, all_changes

    tblite_class = _tblite_calculator_class()

    class ChargedXTB(Calculator):
        implemented_properties: ClassVar[list[str]] = ["energy", "forces"]

        def __init__(self) -> None:
            super().__init__()
            self._xtb = None
            self._result = None

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            bohr = self.atoms.positions / BOHR_ANGSTROM
            if self._xtb is None or "numbers" in system_changes:
                self._xtb = tblite_class(METHOD, self.atoms.numbers, bohr, charge=float(charge), uhf=0)
                self._xtb.set("verbosity", 0)
                self._result = None
            else:
                self._xtb.update(positions=bohr)
            self._result = self._xtb.singlepoint(self._result) if self._result is not None else self._xtb.singlepoint()
            self.results["energy"] = float(self._result.get("energy")) * HARTREE_EV
            self.results["forces"] = -np.asarray(self._result.get("gradient")) * (HARTREE_EV / BOHR_ANGSTROM)

    return ChargedXTB()


# --------------------------------------------------------------------------------------------
# molecules: selection, scaffolds, charged variants, geometries


def murcko_scaffold(mol) -> str:
    """Bemis–Murcko scaffold SMILES of an RDKit mol ("" for an acyclic molecule)."""
    from rdkit.Chem.Scaffolds import MurckoScaffold

    return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)


def assign_split(scaffold: str, smiles: str, seed: int, test_fraction: float) -> str:
    """``test`` for a seeded ~``test_fraction`` of scaffolds (acyclic: of SMILES), else ``train``."""
    key = ("scaffold", scaffold) if scaffold else ("acyclic", smiles)
    return "test" if _unit_hash(seed, *key) < test_fraction else "train"


def _parse(smiles: str):
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    if any(atom.GetAtomicNum() not in ALLOWED_Z for atom in Chem.AddHs(mol).GetAtoms()):
        return None
    return mol


def _describe(mol, source: str, ident: str, seed: int, test_fraction: float, **extra) -> dict[str, Any]:
    from rdkit import Chem

    smiles = Chem.MolToSmiles(mol)
    scaffold = murcko_scaffold(mol)
    n_atoms = mol.GetNumAtoms() + sum(a.GetTotalNumHs() for a in mol.GetAtoms())
    return {"id": ident, "source": source, "smiles": smiles, "scaffold": scaffold,
            "split": assign_split(scaffold, smiles, seed, test_fraction), "n_atoms": n_atoms, **extra}


def select_qm9(n: int, seed: int, test_fraction: float) -> list[dict[str, Any]]:
    """``n`` QM9 molecules: a seeded order of molequi's QM9 train split (split seed 0), keeping
    those with readable SMILES and allowed elements. Larger ``n`` extends smaller ones."""
    if n <= 0:
        return []
    try:
        from molequi.data.qm9 import load_qm9_arrays, qm9_split_rows
        arrays = load_qm9_arrays()
    except ImportError as error:
        raise RecipeError(f"QM9 needs molequi and qm9pack: {error}") from error
    except Exception as error:  # QM9NotInstalledError and friends
        raise RecipeError(str(error)) from error
    rows = qm9_split_rows("train", 0)
    rows = rows[np.random.default_rng([seed, 9]).permutation(len(rows))]
    chosen = []
    for k in rows:
        k = int(k)
        start, stop = int(arrays.offsets[k]), int(arrays.offsets[k + 1])
        numbers = arrays.numbers[start:stop].astype(np.int64)
        if not set(numbers.tolist()) <= ALLOWED_Z:
            continue
        mol = _parse(str(arrays.smiles[k]))
        if mol is None:
            continue
        chosen.append(_describe(mol, "qm9", f"qm9:{int(arrays.index[k])}", seed, test_fraction,
                                number=int(arrays.index[k]), numbers=numbers.tolist(),
                                positions=arrays.positions[start:stop].tolist()))
        if len(chosen) == n:
            break
    return chosen


def select_moses(n: int, seed: int, test_fraction: float) -> list[dict[str, Any]]:
    """``n`` MOSES molecules: a seeded order of the ``moses:train`` SMILES, keeping those RDKit
    reads with allowed elements. Larger ``n`` extends smaller ones."""
    if n <= 0:
        return []
    try:
        from molequi.search.io import builtin_pool_files
        (path,) = builtin_pool_files("moses:train")
    except Exception as error:
        raise RecipeError(f"MOSES needs molsets: pip install --no-deps molsets ({error})") from error
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().splitlines()[1:]  # header "SMILES"
    chosen = []
    for k in np.random.default_rng([seed, 17]).permutation(len(lines)):
        k = int(k)
        mol = _parse(lines[k].split(",")[0].strip())
        if mol is None:
            continue
        chosen.append(_describe(mol, "moses", f"moses:train:{k}", seed, test_fraction, number=k))
        if len(chosen) == n:
            break
    return chosen


def charged_variants(mol) -> list[tuple[int, Any]]:
    """(charge, RDKit mol) of the anion (−1: :data:`ACID_SMARTS`, first group type found) and
    the ammonium (+1: :data:`AMINE_SMARTS`) of ``mol``; the first match in atom order, at
    most one of each."""
    from rdkit import Chem

    sites = []
    for _, smarts, position in ACID_SMARTS:
        matches = mol.GetSubstructMatches(Chem.MolFromSmarts(smarts))
        if matches:
            sites.append((-1, min(m[position] for m in matches)))
            break
    matches = mol.GetSubstructMatches(Chem.MolFromSmarts(AMINE_SMARTS))
    if matches:
        sites.append((+1, min(m[0] for m in matches)))
    variants = []
    for charge, index in sites:
        edited = Chem.RWMol(mol)
        atom = edited.GetAtomWithIdx(index)
        atom.SetFormalCharge(charge)
        atom.SetNumExplicitHs(0)  # the H count follows from the new charge
        atom.SetNoImplicit(False)
        try:
            Chem.SanitizeMol(edited)
        except Chem.rdchem.MolSanitizeException:
            continue
        variants.append((charge, edited.GetMol()))
    return variants


def _connectivity_mol(numbers: Sequence[int], positions: np.ndarray):
    """An RDKit mol with single bonds from distances (for torsions of a QM9 geometry)."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    block = f"{len(numbers)}\n\n" + "".join(
        f"{Chem.GetPeriodicTable().GetElementSymbol(int(z))} {x:.8f} {y:.8f} {w:.8f}\n"
        for z, (x, y, w) in zip(numbers, positions))
    mol = Chem.MolFromXYZBlock(block)
    rdDetermineBonds.DetermineConnectivity(mol)
    mol.UpdatePropertyCache(strict=False)
    Chem.FastFindRings(mol)
    return mol


_SATURATED_DEGREE = {6: 4, 7: 3, 8: 2, 16: 2}


def rotatable_bonds(mol) -> list[tuple[int, int, int, int]]:
    """Dihedrals (i, j, k, l) about acyclic single bonds j–k, judged from connectivity alone:
    both ends have another neighbour and at least one end is saturated (C with 4 neighbours,
    N with 3, O or S with 2), which excludes double and triple bonds. Bonds with a heavy atom
    on both sides come first; i and l prefer heavy atoms."""
    heavy, light = [], []
    for bond in mol.GetBonds():
        if bond.IsInRing():
            continue
        a, b = bond.GetBeginAtom(), bond.GetEndAtom()
        if a.GetDegree() < 2 or b.GetDegree() < 2:
            continue
        if not any(_SATURATED_DEGREE.get(x.GetAtomicNum()) == x.GetDegree() for x in (a, b)):
            continue
        j, k = a.GetIdx(), b.GetIdx()

        def pick(atom, other):
            neighbours = sorted((n for n in atom.GetNeighbors() if n.GetIdx() != other),
                                key=lambda n: (n.GetAtomicNum() == 1, n.GetIdx()))
            return neighbours[0]

        i_atom, l_atom = pick(a, k), pick(b, j)
        entry = (i_atom.GetIdx(), j, k, l_atom.GetIdx())
        (heavy if i_atom.GetAtomicNum() > 1 and l_atom.GetAtomicNum() > 1 else light).append(entry)
    return heavy or light


def _clashes(numbers: np.ndarray, positions: np.ndarray, bonded: set[tuple[int, int]]) -> bool:
    """True when two atoms not bonded to each other are closer than half their summed van der
    Waals radii (e.g. H···H 1.2 Å, C···C 1.7 Å)."""
    from ase.data import vdw_radii

    radii = np.array([vdw_radii[z] for z in numbers])
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    limit = 0.5 * (radii[:, None] + radii[None])
    close = np.argwhere(np.triu(d < limit, 1))
    return any((int(a), int(b)) not in bonded for a, b in close)


# --------------------------------------------------------------------------------------------
# one chunk of molecules


def _frame(numbers, positions, energy, forces, info):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms(numbers=numbers, positions=positions, pbc=False)
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    atoms.info.update(info)
    return atoms


class _Labeller:
    """Labels structures, counting what is skipped and why."""

    def __init__(self, max_force: float) -> None:
        self.max_force = max_force
        self.skipped: Counter[str] = Counter()

    def __call__(self, numbers, positions, charge: int, info: dict[str, Any]):
        positions = np.round(np.asarray(positions, dtype=np.float64), _DECIMALS)
        try:
            energy, forces = xtb_single_point(numbers, positions, charge)
        except RuntimeError:
            self.skipped[f"scf_failed_{info['kind']}"] += 1
            return None
        if self.max_force and np.abs(forces).max() > self.max_force:
            self.skipped[f"force_above_max_{info['kind']}"] += 1
            return None
        return _frame(numbers, positions, energy, forces, info)


def _species_structures(species: dict[str, Any], settings: dict[str, Any], rng: np.random.Generator,
                        label: _Labeller, torsion: bool) -> list:
    """All labelled structures of one species (a molecule at one charge)."""
    from ase import Atoms, units
    from ase.md.langevin import Langevin

    numbers = np.asarray(species["numbers"], dtype=np.int64)
    start = np.asarray(species["positions"], dtype=np.float64)
    charge = species["charge"]
    base = {"charge": int(charge), "source": species["source"], "smiles": species["smiles_plain"],
            "scaffold": species["scaffold"] or ACYCLIC, "molecule": species["id"]}
    out = []

    def add(positions, kind, **extra):
        frame = label(numbers, positions, charge, {**base, "kind": kind, **extra})
        if frame is not None:
            out.append(frame)

    add(start, "relaxed")
    for _ in range(settings["rattles"]):
        sigma = float(rng.uniform(settings["rattle_min"], settings["rattle_max"]))
        add(start + rng.normal(0.0, sigma, start.shape), "rattled", rattle_sigma=round(sigma, 6))

    if settings["md_frames"] > 0:
        xtb_md = _sibling("xtb_md")
        temperature = float(rng.uniform(settings["md_t_min"], settings["md_t_max"]))
        # Momenta at 2T: starting at a minimum, about half the kinetic energy flows into the
        # potential within a quarter vibration, which leaves the molecule near T.
        atoms = xtb_md.initial_state(Atoms(numbers=numbers, positions=start, pbc=False), 2 * temperature, rng)
        atoms.calc = make_md_calculator(charge)
        dyn = Langevin(atoms, timestep=settings["timestep"] * units.fs, temperature_K=temperature,
                       friction=settings["friction"] / units.fs, fixcm=False, rng=rng)
        for _ in range(settings["md_frames"]):
            try:
                dyn.run(settings["md_stride"])
            except RuntimeError:
                label.skipped["md_scf_failed"] += 1
                break
            add(atoms.positions.copy(), "md", temperature_K=round(temperature, 3),
                md_step=int(dyn.nsteps), time_fs=float(dyn.nsteps * settings["timestep"]))

    if torsion and settings["torsion_angles"] > 0:
        from rdkit.Chem import rdMolTransforms

        mol = species["mol"]
        dihedrals = rotatable_bonds(mol)
        if not dihedrals:
            label.skipped["torsion_no_rotatable_bond"] += 1
        else:
            i, j, k, l = dihedrals[int(rng.integers(len(dihedrals)))]
            bonded = {tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in mol.GetBonds()}
            conformer = mol.GetConformer()
            for pos_index, xyz in enumerate(start):
                conformer.SetAtomPosition(pos_index, xyz.tolist())
            phi0 = rdMolTransforms.GetDihedralDeg(conformer, i, j, k, l)
            n = settings["torsion_angles"]
            for step in range(1, n + 1):
                phi = phi0 + 360.0 * step / (n + 1)
                rdMolTransforms.SetDihedralDeg(conformer, i, j, k, l, phi)
                positions = np.array(conformer.GetPositions())
                if _clashes(numbers, positions, bonded):
                    label.skipped["torsion_clash"] += 1
                    continue
                add(positions, "torsion", torsion=f"{i}-{j}-{k}-{l}",
                    dihedral_deg=round(((phi + 180.0) % 360.0) - 180.0, 3))
    return out


def _species_of(molecule: dict[str, Any], settings: dict[str, Any], rng: np.random.Generator,
                skipped: Counter) -> list[dict[str, Any]]:
    """The neutral molecule with a geometry, then its charged variants (ETKDG + MMFF)."""
    from rdkit import Chem

    from molequi.search.conformers import embed_molecule, mol_to_atoms

    parent = Chem.MolFromSmiles(molecule["smiles"])
    common = {"id": molecule["id"], "source": molecule["source"], "scaffold": molecule["scaffold"]}
    species = []
    if molecule["source"] == "qm9":
        numbers = np.asarray(molecule["numbers"])
        positions = np.asarray(molecule["positions"])
        species.append({**common, "charge": 0, "numbers": numbers, "positions": positions,
                        "mol": _connectivity_mol(numbers, positions),
                        "smiles_plain": Chem.MolToSmiles(parent, isomericSmiles=False)})
    else:
        embedded = embed_molecule(parent, seed=int(rng.integers(2**31)))
        if embedded.mol is None:
            skipped[f"embed_failed_{embedded.reason}"] += 1
        else:
            atoms = mol_to_atoms(embedded.mol)
            species.append({**common, "charge": 0, "numbers": atoms.numbers, "positions": atoms.positions,
                            "mol": embedded.mol, "smiles_plain": Chem.MolToSmiles(parent, isomericSmiles=False)})
    if settings["charged"]:
        for charge, mol in charged_variants(parent):
            embedded = embed_molecule(mol, seed=int(rng.integers(2**31)))
            if embedded.mol is None:
                skipped[f"charged_embed_failed_{embedded.reason}"] += 1
                continue
            atoms = mol_to_atoms(embedded.mol)
            species.append({**common, "charge": charge, "numbers": atoms.numbers, "positions": atoms.positions,
                            "mol": embedded.mol, "smiles_plain": Chem.MolToSmiles(mol, isomericSmiles=False)})
    return species


def _serialise(frames: list) -> bytes:
    from ase.io import write

    buffer = io.StringIO()
    if frames:
        write(buffer, frames, format="extxyz")
    return buffer.getvalue().encode("utf-8")


def _counts(frames: list) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for atoms in frames:
        counts["total"] += 1
        counts[f"kind:{atoms.info['kind']}"] += 1
        counts[f"source:{atoms.info['source']}"] += 1
        counts[f"charge:{atoms.info['charge']:+d}"] += 1
    return dict(sorted(counts.items()))


def run_chunk(task: dict[str, Any]) -> dict[str, Any]:
    """Label one chunk of molecules and write ``chunks/<name>.{train,test}.extxyz`` and, last,
    ``chunks/<name>.json`` (the mark of a finished chunk), each atomically. Returns the JSON."""
    from molequi.utils import atomic_path, atomic_write_text

    cpu0 = time.process_time()
    xtb_md = _sibling("xtb_md")
    _tblite_calculator_class()  # load tblite (and its OpenMP runtime) before pinning threads
    settings, out = task["settings"], Path(task["out"])
    label = _Labeller(settings["max_force"])
    frames = {"train": [], "test": []}
    molecules = []
    with xtb_md.single_openmp_thread():
        for molecule in task["molecules"]:
            rng = np.random.default_rng([settings["seed"], SOURCES.index(molecule["source"]), molecule["number"]])
            before = sum(label.skipped.values())
            species = _species_of(molecule, settings, rng, label.skipped)
            torsion = _unit_hash(settings["seed"], "torsion", molecule["id"]) < settings["torsion_fraction"]
            n_frames, charges = 0, []
            for one in species:
                new = _species_structures(one, settings, rng, label, torsion and one["charge"] == 0)
                frames[molecule["split"]].extend(new)
                n_frames += len(new)
                charges.append(one["charge"])
            molecules.append({key: molecule[key] for key in ("id", "source", "smiles", "scaffold", "split")}
                             | {"charges": " ".join(f"{c:+d}" for c in charges), "structures": n_frames,
                                "skipped": sum(label.skipped.values()) - before})
    files = {}
    for split, split_frames in frames.items():
        data = _serialise(split_frames)
        path = out / "chunks" / f"{task['name']}.{split}.extxyz"
        with atomic_path(path) as temporary:
            temporary.write_bytes(data)
        files[split] = {"sha256": hashlib.sha256(data).hexdigest(), "counts": _counts(split_frames)}
    record = {"name": task["name"], "files": files, "molecules": molecules,
              "skipped": dict(sorted(label.skipped.items())), "cpu_seconds": time.process_time() - cpu0}
    atomic_write_text(out / "chunks" / f"{task['name']}.json", json.dumps(record, indent=1) + "\n")
    return record


def _finished(out: Path, name: str) -> dict[str, Any] | None:
    """The record of a finished chunk whose files are intact, else None."""
    try:
        record = json.loads((out / "chunks" / f"{name}.json").read_text())
        for split, entry in record["files"].items():
            data = (out / "chunks" / f"{name}.{split}.extxyz").read_bytes()
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                return None
    except (OSError, ValueError, KeyError):
        return None
    return record


def _worker_init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # tblite single-threaded (pinned again in run_chunk)


# --------------------------------------------------------------------------------------------
# settings, manifest, assembly, card


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe (everything that changes the output) from parsed arguments."""
    settings = {key: getattr(args, key) for key in DEFAULTS}
    if args.small:
        settings.update({k: v for k, v in SMALL.items() if getattr(args, k) == DEFAULTS[k]})
    validate(settings)
    return settings


def validate(s: dict[str, Any]) -> None:
    """Raise :class:`RecipeError` for impossible settings."""
    checks = [
        (s["n_qm9"] >= 0 and s["n_moses"] >= 0 and s["n_qm9"] + s["n_moses"] > 0, "need --n-qm9 or --n-moses > 0"),
        (s["chunk_size"] >= 1, "--chunk-size must be >= 1"),
        (s["rattles"] >= 0 and s["md_frames"] >= 0 and s["torsion_angles"] >= 0, "counts must be >= 0"),
        (0 < s["rattle_min"] <= s["rattle_max"], "need 0 < --rattle-min <= --rattle-max (Å)"),
        (0 < s["md_t_min"] <= s["md_t_max"], "need 0 < --md-t-min <= --md-t-max (K)"),
        (s["md_stride"] >= 1 and s["timestep"] > 0 and s["friction"] >= 0, "bad MD settings"),
        (0 <= s["torsion_fraction"] <= 1 and 0 <= s["test_fraction"] < 1, "fractions must be in [0, 1)"),
        (s["max_force"] >= 0, "--max-force must be >= 0 eV/Å (0: no limit)"),
    ]
    for ok, message in checks:
        if not ok:
            raise RecipeError(message)


def check_manifest(out: Path, settings: dict[str, Any]) -> None:
    """Write ``manifest.json`` in a new folder; in an old one, refuse other settings."""
    from molequi.utils import atomic_write_text

    manifest = {"recipe_version": RECIPE_VERSION, "settings": settings, "software": software_versions()}
    path = out / "manifest.json"
    if path.is_file():
        old = json.loads(path.read_text())
        changes = [f"recipe_version {old.get('recipe_version')} → {RECIPE_VERSION}"] if old.get("recipe_version") != RECIPE_VERSION else []
        for group in ("settings", "software"):
            before, now = old.get(group, {}), manifest[group]
            changes += [f"{key} {before.get(key)!r} → {now.get(key)!r}"
                        for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)]
        if changes:
            raise RecipeError(f"{out} was built with other settings ({'; '.join(changes)}); "
                              "use another --out or delete it")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")


def make_tasks(out: Path, settings: dict[str, Any], molecules: dict[str, list]) -> list[dict[str, Any]]:
    tasks = []
    size = settings["chunk_size"]
    for source in SOURCES:
        items = molecules[source]
        for c in range(0, len(items), size):
            tasks.append({"name": f"{source}-{c // size:05d}", "out": str(out), "settings": settings,
                          "molecules": items[c:c + size]})
    return tasks


def _cost(task: dict[str, Any]) -> float:
    return float(sum(m["n_atoms"] ** 2 for m in task["molecules"]))


def _fmt_time(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Structures/s and ETA on stderr (ETA weights each molecule by its atom count squared)."""

    def __init__(self, tasks: list, done: Iterable[str], enabled: bool) -> None:
        done = set(done)
        self.total = len(tasks)
        self.cost = {t["name"]: _cost(t) for t in tasks}
        self.remaining = sum(c for name, c in self.cost.items() if name not in done)
        self.done_cost, self.n_done, self.structures = 0.0, len(done), 0
        self.start, self.enabled = time.perf_counter(), enabled

    def update(self, record: dict[str, Any]) -> None:
        self.n_done += 1
        self.done_cost += self.cost[record["name"]]
        self.structures += sum(f["counts"].get("total", 0) for f in record["files"].values())
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        rate = self.structures / elapsed if elapsed > 0 else 0.0
        eta = elapsed / self.done_cost * (self.remaining - self.done_cost) if self.done_cost else float("nan")
        print(f"[organic_xtb] chunk {self.n_done}/{self.total} ({record['name']}): {self.structures} structures "
              f"in {_fmt_time(elapsed)}, {rate:.1f} structures/s, ETA {_fmt_time(eta) if math.isfinite(eta) else '?'}",
              file=sys.stderr, flush=True)


def run_tasks(tasks: list, workers: int, progress: Progress) -> list[dict[str, Any]]:
    """Run the unfinished chunks (largest molecules first) in ``workers`` processes."""
    if not tasks:
        return []
    tasks = sorted(tasks, key=_cost, reverse=True)
    records = []
    if workers <= 1:
        for task in tasks:
            records.append(run_chunk(task))
            progress.update(records[-1])
        return records
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method), initializer=_worker_init) as pool:
        futures = [pool.submit(run_chunk, task) for task in tasks]
        try:
            for future in as_completed(futures):
                records.append(future.result())
                progress.update(records[-1])
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return records


def assemble(out: Path, tasks: list, records: dict[str, dict], settings: dict[str, Any]) -> dict[str, Any]:
    """Concatenate the chunks (in a fixed order) into the output files and write the card."""
    from molequi.utils import atomic_path, atomic_write_text

    files: dict[str, dict[str, Any]] = {}
    sizes: dict[str, Counter] = {"train": Counter(), "test": Counter()}
    for split in ("train", "test"):
        digest = hashlib.sha256()
        path = out / f"{split}.extxyz"
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            for task in tasks:
                data = (out / "chunks" / f"{task['name']}.{split}.extxyz").read_bytes()
                handle.write(data)
                digest.update(data)
                sizes[split].update(records[task["name"]]["files"][split]["counts"])
        files[f"{split}.extxyz"] = {"sha256": digest.hexdigest(), "structures": sizes[split].get("total", 0)}
    molecules = [m for task in tasks for m in records[task["name"]]["molecules"]]
    buffer = io.StringIO()
    columns = ["id", "source", "smiles", "scaffold", "split", "charges", "structures", "skipped"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(molecules)
    texts = {"molecules.csv": buffer.getvalue()}
    for split in ("train", "test"):
        texts[f"{split}_smiles.txt"] = "".join(f"{m['smiles']}\n" for m in molecules if m["split"] == split)
    for name, text in texts.items():
        atomic_write_text(out / name, text)
        files[name] = {"sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    content = hashlib.sha256("".join(f"{name} {files[name]['sha256']}\n" for name in sorted(files)).encode())
    skipped: Counter[str] = Counter()
    for record in records.values():
        skipped.update(record["skipped"])

    def split_summary(split: str) -> dict[str, Any]:
        counts = sizes[split]
        chosen = [m for m in molecules if m["split"] == split]

        def group(prefix: str) -> dict[str, int]:
            return {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith(prefix)}

        return {"structures": counts.get("total", 0), "by_kind": group("kind:"), "by_source": group("source:"),
                "by_charge": group("charge:"), "molecules": len(chosen),
                "molecules_with_structures": sum(1 for m in chosen if int(m["structures"]) > 0),
                "scaffolds": len({m["scaffold"] for m in chosen if m["scaffold"]}),
                "acyclic_molecules": sum(1 for m in chosen if not m["scaffold"])}

    versions = software_versions()
    card = {
        "name": "organic_xtb",
        "description": "GFN2-xTB energies and forces of organic molecules (H C N O F S Cl Br): QM9 and "
                       "MOSES molecules, neutral and charged (deprotonated acid -1, ammonium +1); relaxed, "
                       "rattled, short Langevin MD and torsion-scan geometries; split by Murcko scaffold.",
        "sources": [
            {"name": "QM9", "licence": "CC0-1.0", "via": f"qm9pack {versions['qm9pack']} (molequi.data.qm9)",
             "citation": "Ramakrishnan et al., Sci. Data 1, 140022 (2014), doi:10.1038/sdata.2014.22",
             "used": "B3LYP geometries of molecules drawn from molequi's QM9 train split (split seed 0)"},
            {"name": "MOSES", "licence": "MIT", "via": f"molsets {versions['molsets']} (moses:train SMILES)",
             "citation": "Polykovskiy et al., Front. Pharmacol. 11, 565644 (2020), doi:10.3389/fphar.2020.565644",
             "used": "SMILES embedded with RDKit ETKDGv3 + MMFF94"},
        ],
        "level_of_theory": {"method": METHOD, "code": "tblite", "tblite_version": versions["tblite"],
                            "details": "gas phase, closed shell, total charge from info['charge'], "
                                       "tblite defaults (electronic temperature 300 K); fresh SCF per label"},
        "units": {"positions": "Å", "energy": "eV", "forces": "eV/Å", "charge": "e", "time": "fs",
                  "temperature": "K"},
        "elements": list(ELEMENTS),
        "info_keys": ["charge", "source", "kind", "smiles", "scaffold", "molecule", "rattle_sigma",
                      "temperature_K", "md_step", "time_fs", "torsion", "dihedral_deg"],
        "sizes": {"train": split_summary("train"), "test": split_summary("test")},
        "skipped": dict(sorted(skipped.items())),
        "recipe": {"script": "datasets/organic_xtb.py", "recipe_version": RECIPE_VERSION, "arguments": settings},
        "software": versions,
        "files": files,
        "content_sha256": content.hexdigest(),
        "cpu_seconds": round(sum(r["cpu_seconds"] for r in records.values()), 1),
    }
    atomic_write_text(out / "card.json", json.dumps(card, indent=1, ensure_ascii=False) + "\n")
    return card


def build(out: str | os.PathLike[str], settings: dict[str, Any], workers: int = 1, progress: bool = True) -> dict[str, Any]:
    """Build (or finish) the data set in ``out`` and return its card."""
    validate(settings)
    out = Path(out)
    check_manifest(out, settings)
    from molequi.utils import remove_stale_temporaries

    remove_stale_temporaries(out / "chunks")
    molecules = {"qm9": select_qm9(settings["n_qm9"], settings["seed"], settings["test_fraction"]),
                 "moses": select_moses(settings["n_moses"], settings["seed"], settings["test_fraction"])}
    tasks = make_tasks(out, settings, molecules)
    records = {t["name"]: r for t in tasks if (r := _finished(out, t["name"])) is not None}
    todo = [t for t in tasks if t["name"] not in records]
    if progress:
        print(f"[organic_xtb] {sum(map(len, molecules.values()))} molecules in {len(tasks)} chunks; "
              f"{len(records)} already done, {len(todo)} to label with {workers} worker(s)", file=sys.stderr, flush=True)
    for record in run_tasks(todo, workers, Progress(tasks, records, progress)):
        records[record["name"]] = record
    return assemble(out, tasks, records, settings)


def summary(card: dict[str, Any]) -> str:
    lines = [(f"organic_xtb: {METHOD} (tblite {card['level_of_theory']['tblite_version']}), content sha256 "
              f"{card['content_sha256'][:16]}…, {card['cpu_seconds']:.0f} CPU s of labelling")]
    for split in ("train", "test"):
        s = card["sizes"][split]
        lines.append(f"  {split}: {s['structures']} structures of {s['molecules']} molecules, {s['scaffolds']} "
                     f"scaffolds; kinds {s['by_kind']}; sources {s['by_source']}; charges {s['by_charge']}")
    if card["skipped"]:
        lines.append(f"  skipped: {card['skipped']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface (see the module docstring)."""
    d = DEFAULTS
    p = argparse.ArgumentParser(
        description="Build a GFN2-xTB data set of organic molecules (QM9 + MOSES; H C N O F S Cl Br; "
                    "charges -1, 0, +1): relaxed, rattled, Langevin-MD and torsion-scan structures "
                    "labelled with energies (eV) and forces (eV/Å), split by Murcko scaffold.",
        epilog="Writes OUT/train.extxyz, OUT/test.extxyz (ase.io.read gives the labels), "
               "OUT/molecules.csv, OUT/{train,test}_smiles.txt and OUT/card.json. Seeded: the same "
               "arguments give the same bytes, whatever --workers. Resumable: rerun the same command "
               "to finish an interrupted build; other settings in the same OUT are refused. "
               "Full build: python datasets/organic_xtb.py --out data/organic_xtb --workers 2")
    p.add_argument("--out", required=True, help="output folder (created; reused by a rerun)")
    p.add_argument("--n-qm9", type=int, default=d["n_qm9"], help=f"QM9 molecules [{d['n_qm9']}]")
    p.add_argument("--n-moses", type=int, default=d["n_moses"], help=f"MOSES drug-like molecules [{d['n_moses']}]")
    p.add_argument("--small", action="store_true",
                   help="a build of seconds, for tests: 4 QM9 + 2 MOSES molecules in chunks of 2 "
                        "(flags given with other values win)")
    p.add_argument("--seed", type=int, default=d["seed"],
                   help="seeds the molecules chosen, geometries, MD and the split [0]")
    p.add_argument("--workers", type=int, default=1,
                   help="processes; tblite runs on one thread in each (does not change the output) [1]")
    p.add_argument("--chunk-size", type=int, default=d["chunk_size"],
                   help=f"molecules per chunk file, the unit of resumption [{d['chunk_size']}]")
    p.add_argument("--rattles", type=int, default=d["rattles"], help=f"rattled copies per species [{d['rattles']}]")
    p.add_argument("--rattle-min", type=float, default=d["rattle_min"],
                   help=f"smallest Gaussian rattle σ per copy, Å [{d['rattle_min']}]")
    p.add_argument("--rattle-max", type=float, default=d["rattle_max"],
                   help=f"largest Gaussian rattle σ per copy, Å [{d['rattle_max']}]")
    p.add_argument("--md-frames", type=int, default=d["md_frames"],
                   help=f"MD frames per species, 0 for no MD [{d['md_frames']}]")
    p.add_argument("--md-stride", type=int, default=d["md_stride"],
                   help=f"MD steps before each frame [{d['md_stride']}]")
    p.add_argument("--md-t-min", type=float, default=d["md_t_min"], help=f"lowest MD temperature, K [{d['md_t_min']:g}]")
    p.add_argument("--md-t-max", type=float, default=d["md_t_max"], help=f"highest MD temperature, K [{d['md_t_max']:g}]")
    p.add_argument("--dt", dest="timestep", type=float, default=d["timestep"], help=f"MD time step, fs [{d['timestep']}]")
    p.add_argument("--friction", type=float, default=d["friction"], help=f"Langevin friction, 1/fs [{d['friction']}]")
    p.add_argument("--torsion-fraction", type=float, default=d["torsion_fraction"],
                   help=f"fraction of molecules given a torsion scan [{d['torsion_fraction']}]")
    p.add_argument("--torsion-angles", type=int, default=d["torsion_angles"],
                   help=f"rotated geometries per torsion scan [{d['torsion_angles']}]")
    p.add_argument("--no-charged", dest="charged", action="store_false",
                   help="leave out the deprotonated (-1) and protonated (+1) variants")
    p.add_argument("--test-fraction", type=float, default=d["test_fraction"],
                   help=f"fraction of scaffolds held out for test [{d['test_fraction']}]")
    p.add_argument("--max-force", type=float, default=d["max_force"],
                   help=f"drop structures with a force component above this, eV/Å; 0 keeps all [{d['max_force']:g}]")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input or a refused folder)."""
    args = build_parser().parse_args(argv)
    start, cpu = time.perf_counter(), time.process_time()
    try:
        if args.workers < 1:
            raise RecipeError("--workers must be >= 1")
        card = build(args.out, settings_from_args(args), args.workers, progress=not args.no_progress)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary(card))
    print(f"wrote {Path(args.out) / 'train.extxyz'}, {Path(args.out) / 'test.extxyz'}, card.json; "
          f"wall {time.perf_counter() - start:.1f} s, main-process CPU {time.process_time() - cpu:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
