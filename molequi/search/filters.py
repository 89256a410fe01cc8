"""Molecule filters: SA score, structural alerts, property rules, purchasability.

Every filter computes a value (kept as a column even when the filter is off
or passes) and, if it rejects the molecule, a reason string.  Heavy RDKit
objects (alert catalogues, SA fragment table, Bloom filter) are built once per
process with ``lru_cache`` so that Dask workers pay for them once.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from functools import lru_cache
from types import ModuleType

from rdkit import Chem, RDConfig
from rdkit.Chem import Descriptors, Lipinski, QED, rdMolDescriptors
from rdkit.Chem.FilterCatalog import FilterCatalog, FilterCatalogParams

from .config import StageConfig

#: Value columns produced by :func:`filter_values`, in output order.
FILTER_COLUMNS: tuple[str, ...] = (
    "heavy_atoms", "elements", "mw", "logp", "hbd", "hba", "lipinski_violations",
    "rotatable_bonds", "tpsa", "max_ring_size", "sa_score", "qed", "alerts", "purchasable",
)


@lru_cache(maxsize=1)
def _sascorer() -> ModuleType:
    """RDKit's contributed SA score module (``Contrib/SA_Score/sascorer.py``)."""
    path = os.path.join(RDConfig.RDContribDir, "SA_Score", "sascorer.py")
    spec = importlib.util.spec_from_file_location("molequi_sascorer", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"RDKit SA_Score contrib module not found at {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("molequi_sascorer", module)
    spec.loader.exec_module(module)
    module.readFragmentScores()  # load the fragment table now, once per process
    return module


def sa_score(mol: Chem.Mol) -> float:
    """Synthetic accessibility score of Ertl & Schuffenhauer (unitless, 1 easy .. 10 hard)."""
    return float(_sascorer().calculateScore(mol))


@lru_cache(maxsize=None)
def _alert_catalog(name: str) -> FilterCatalog:
    """RDKit FilterCatalog for one alert set (``pains``, ``brenk``, ``nih`` ...)."""
    params = FilterCatalogParams()
    params.AddCatalog(getattr(FilterCatalogParams.FilterCatalogs, name.upper()))
    return FilterCatalog(params)


def structural_alerts(mol: Chem.Mol, sets: tuple[str, ...]) -> list[str]:
    """Matched alerts as ``set:description`` (e.g. ``pains:quinone_A(370)``)."""
    hits = []
    for name in sets:
        for entry in _alert_catalog(name).GetMatches(mol):
            hits.append(f"{name}:{entry.GetDescription()}")
    return hits


@lru_cache(maxsize=1)
def _bloom():
    """molbloom's bundled ``zinc-instock-mini`` filter, loaded from the wheel, never downloaded."""
    spec = importlib.util.find_spec("molbloom")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("purchasability check needs molbloom (pip install molbloom)")
    from molbloom.bloom import BloomFilter

    path = os.path.join(next(iter(spec.submodule_search_locations)), "data", "zinc-instock-mini.bloom")
    return BloomFilter(path)


def is_purchasable(mol: Chem.Mol) -> bool:
    """Probably in ZINC20 in-stock (Bloom filter, ~7 % false positives, no false negatives)."""
    # molbloom expects canonical kekulé isomeric SMILES, as its own ``canon`` makes
    smiles = Chem.MolToSmiles(mol, canonical=True, isomericSmiles=True, kekuleSmiles=True)
    return smiles in _bloom()


def max_ring_size(mol: Chem.Mol) -> int:
    """Size of the largest SSSR ring (0 for acyclic molecules)."""
    return max((len(r) for r in mol.GetRingInfo().AtomRings()), default=0)


def element_set(mol: Chem.Mol) -> set[int]:
    """Atomic numbers present once explicit hydrogens are added (H = 1 included)."""
    numbers = {a.GetAtomicNum() for a in mol.GetAtoms()}
    if any(a.GetTotalNumHs() for a in mol.GetAtoms()):
        numbers.add(1)
    return numbers


def filter_values(mol: Chem.Mol, cfg: StageConfig) -> dict[str, object]:
    """Every filter value of one standardised molecule.

    Units: ``mw`` g/mol, ``tpsa`` Å², ``logp`` Crippen (unitless), SA score and
    QED unitless.  SA score, alerts and purchasability are only computed when
    their filter is on (they are the slow ones); otherwise they are ``None``.
    """
    # QED needs Crippen logP, MW and its own alerts: compute them once and reuse
    qed_props = QED.properties(mol)
    mw, logp = Descriptors.MolWt(mol), qed_props.ALOGP
    hbd = Lipinski.NumHDonors(mol)
    hba = Lipinski.NumHAcceptors(mol)
    return {
        "heavy_atoms": mol.GetNumHeavyAtoms(),
        "elements": " ".join(Chem.GetPeriodicTable().GetElementSymbol(z)
                             for z in sorted(element_set(mol))),
        "mw": mw, "logp": logp, "hbd": hbd, "hba": hba,
        "lipinski_violations": int(mw > 500) + int(logp > 5) + int(hbd > 5) + int(hba > 10),
        "rotatable_bonds": rdMolDescriptors.CalcNumRotatableBonds(mol),
        "tpsa": rdMolDescriptors.CalcTPSA(mol),
        "max_ring_size": max_ring_size(mol),
        "sa_score": sa_score(mol) if cfg.sa_max is not None else None,
        "qed": QED.qed(mol, qedProperties=qed_props),
        "alerts": "|".join(structural_alerts(mol, cfg.alerts)) if cfg.alerts else None,
        "purchasable": is_purchasable(mol) if cfg.purchasable else None,
    }


def filter_reasons(mol: Chem.Mol, values: dict[str, object], cfg: StageConfig) -> list[str]:
    """Reasons (possibly several) for which the enabled filters reject a molecule."""
    reasons: list[str] = []
    if cfg.heavy_atoms is not None:
        lo, hi = cfg.heavy_atoms
        if not lo <= values["heavy_atoms"] <= hi:
            reasons.append(f"heavy_atoms:{values['heavy_atoms']} not in {lo}..{hi}")
    if cfg.allowed_elements is not None:
        extra = element_set(mol) - set(cfg.allowed_elements)
        if extra:
            table = Chem.GetPeriodicTable()
            reasons.append("elements_not_in_model:" + ",".join(
                table.GetElementSymbol(z) for z in sorted(extra)))
    if cfg.lipinski_max_violations is not None and \
            values["lipinski_violations"] > cfg.lipinski_max_violations:
        reasons.append(f"lipinski:{values['lipinski_violations']} violations")
    if cfg.veber and (values["rotatable_bonds"] > 10 or values["tpsa"] > 140):
        reasons.append(f"veber:rotb={values['rotatable_bonds']},tpsa={values['tpsa']:.1f}")
    if cfg.max_ring_size is not None and values["max_ring_size"] > cfg.max_ring_size:
        reasons.append(f"ring_size:{values['max_ring_size']}>{cfg.max_ring_size}")
    if cfg.sa_max is not None and values["sa_score"] > cfg.sa_max:
        reasons.append(f"sa_score:{values['sa_score']:.2f}>{cfg.sa_max:g}")
    if values["alerts"]:
        reasons.append("alert:" + str(values["alerts"]).split("|")[0])
    if cfg.purchasable and not values["purchasable"]:
        reasons.append("not_purchasable")
    return reasons
