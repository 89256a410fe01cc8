"""Standardisation of input SMILES with RDKit's ``rdMolStandardize``.

Cleanup -> largest fragment (drops counter-ions and solvents of salts) ->
uncharge -> (optional) tautomer canonicalisation.  Tautomer canonicalisation
is off by default because RDKit's canonical tautomer may drop stereo
(double-bond and some tetrahedral centres next to the moving H).
The InChIKey of the result is the de-duplication key.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from rdkit import Chem
from rdkit.Chem.MolStandardize import rdMolStandardize


@dataclass
class Standardized:
    """Result of :func:`standardize`: a molecule or the reason it failed."""

    mol: Chem.Mol | None
    smiles: str = ""
    inchikey: str = ""
    reason: str = ""

    @property
    def key(self) -> str:
        """De-duplication key: the InChIKey, or the SMILES when InChI cannot be made."""
        return self.inchikey or (f"smiles:{self.smiles}" if self.smiles else "")


@lru_cache(maxsize=1)
def _tools() -> tuple:
    """Standardiser objects, built once per process (they are not picklable)."""
    return (rdMolStandardize.LargestFragmentChooser(preferOrganic=True),
            rdMolStandardize.Uncharger(canonicalOrder=True),
            rdMolStandardize.TautomerEnumerator())


def parse_smiles(smiles: str) -> tuple[Chem.Mol | None, str]:
    """Parse and sanitise a SMILES; returns ``(mol, "")`` or ``(None, reason)``."""
    if not smiles or not smiles.strip():
        return None, "empty_smiles"
    mol = Chem.MolFromSmiles(smiles, sanitize=False)
    if mol is None:
        return None, "invalid_smiles"
    try:
        Chem.SanitizeMol(mol)
    except Exception as exc:  # RDKit raises several sanitisation exception types
        return None, f"sanitize_failed:{_short(exc)}"
    return mol, ""


def standardize(smiles: str, tautomers: bool = False) -> Standardized:
    """Standardise one SMILES; never raises (failures are returned as ``reason``)."""
    mol, reason = parse_smiles(smiles)
    if mol is None:
        return Standardized(None, reason=reason)
    fragment_chooser, uncharger, tautomer_enumerator = _tools()
    try:
        mol = rdMolStandardize.Cleanup(mol)
        mol = fragment_chooser.choose(mol)
        mol = uncharger.uncharge(mol)
        if tautomers:
            mol = tautomer_enumerator.Canonicalize(mol)
        Chem.SanitizeMol(mol)
        std_smiles = Chem.MolToSmiles(mol)
    except Exception as exc:
        return Standardized(None, reason=f"standardize_failed:{_short(exc)}")
    if mol.GetNumAtoms() == 0:
        return Standardized(None, reason="standardize_failed:no_atoms")
    try:
        inchikey = Chem.MolToInchiKey(mol) or ""
    except Exception:
        inchikey = ""
    return Standardized(mol, std_smiles, inchikey)


def _short(exc: Exception) -> str:
    """First line of an exception message, without separators that break reasons."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text.replace(";", ",")[:120]
