"""3D structures: ETKDGv3 embedding with explicit H, then MMFF94 optimisation.

Failures never raise; they come back as a reason (``embed_failed``,
``mmff_failed:...``).  The result is an RDKit mol with one conformer (for SDF
output) and :func:`mol_to_atoms` turns it into ``ase.Atoms`` (Å) for scoring.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdDistGeom, rdForceFieldHelpers

from molequi.errors import DataFormatError


@dataclass
class Embedded:
    """A 3D molecule (explicit H) or the reason why none could be made.

    ``mmff_energy`` is in kcal/mol (MMFF94's unit); ``attempts`` counts ETKDG tries.
    """

    mol: Chem.Mol | None
    reason: str = ""
    attempts: int = 0
    mmff_energy: float | None = None
    mmff_converged: bool | None = None


def _etkdg(seed: int, timeout: float, random_coords: bool) -> rdDistGeom.EmbedParameters:
    """ETKDGv3 parameters; one thread, since parallelism is across molecules."""
    params = rdDistGeom.ETKDGv3()
    params.randomSeed = seed
    params.numThreads = 1
    params.useRandomCoords = random_coords
    params.timeout = max(1, int(round(timeout)))  # RDKit takes whole seconds
    return params


def embed_molecule(mol: Chem.Mol, seed: int = 0xF00D, timeout: float = 10.0,
                   retries: int = 1, mmff_max_iters: int = 2000) -> Embedded:
    """Embed one conformer and MMFF-optimise it.

    The first try uses ETKDGv3 from eigenvector coordinates; each retry uses
    another seed (``seed + k``) with random starting coordinates, which
    rescues most molecules the first try cannot embed.  ``timeout`` (s) bounds
    each ETKDG try.
    """
    mol_h = Chem.AddHs(mol)
    conf_id, attempts = -1, 0
    for attempt in range(retries + 1):
        attempts += 1
        try:
            conf_id = rdDistGeom.EmbedMolecule(mol_h, _etkdg(seed + attempt, timeout, attempt > 0))
        except Exception:
            conf_id = -1
        if conf_id >= 0:
            break
    if conf_id < 0:
        return Embedded(None, "embed_failed", attempts)
    if not rdForceFieldHelpers.MMFFHasAllMoleculeParams(mol_h):
        return Embedded(None, "mmff_failed:missing_parameters", attempts)
    try:
        status = rdForceFieldHelpers.MMFFOptimizeMolecule(mol_h, maxIters=mmff_max_iters)
        props = rdForceFieldHelpers.MMFFGetMoleculeProperties(mol_h)
        energy = rdForceFieldHelpers.MMFFGetMoleculeForceField(mol_h, props).CalcEnergy()
    except Exception as exc:
        return Embedded(None, f"mmff_failed:{type(exc).__name__}", attempts)
    if status < 0 or not np.isfinite(energy):
        return Embedded(None, "mmff_failed:setup", attempts)
    # status 1 = not converged within mmff_max_iters: geometry kept, flagged in a column
    return Embedded(mol_h, "", attempts, float(energy), status == 0)


def mol_to_atoms(mol: Chem.Mol):
    """``ase.Atoms`` (positions in Å, atomic numbers) of a mol's first conformer."""
    import ase

    numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
    positions = mol.GetConformer().GetPositions()
    return ase.Atoms(numbers=numbers, positions=positions)


def molblock_to_mol(molblock: str) -> Chem.Mol:
    """Read back a molblock written by a chunk (explicit H kept)."""
    mol = Chem.MolFromMolBlock(molblock, removeHs=False)
    if mol is None:
        raise DataFormatError("corrupt molblock in a chunk file of the output folder; rerun with --overwrite")
    return mol
