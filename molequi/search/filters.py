"""Molecule filters: SA score, structural alerts, property rules, purchasability.

Every filter computes a value (kept as a column even when the filter is off
or passes) and, if it rejects the molecule, a reason string.  QED is not a
filter but a ranking value; it costs more than all property rules together, so
:func:`screen_values` computes it only for molecules that pass.  Heavy RDKit
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
from rdkit.Chem import Crippen, Descriptors, Lipinski, MolSurf, QED, rdMolDescriptors

from molequi.errors import MissingDependencyError

from .alerts import structural_alerts
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


@lru_cache(maxsize=1)
def _bloom():
    """molbloom's bundled ``zinc-instock-mini`` filter, loaded from the wheel, never downloaded."""
    spec = importlib.util.find_spec("molbloom")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("purchasability check needs molbloom (pip install molbloom)")
    from molbloom.bloom import BloomFilter

    path = os.path.join(next(iter(spec.submodule_search_locations)), "data", "zinc-instock-mini.bloom")
    return BloomFilter(path)


def is_purchasable(mol: Chem.Mol) -> bool:
    """Probably in ZINC20 in-stock (Bloom filter, ~7 % false positives, no false negatives)."""
    # molbloom expects canonical kekulé isomeric SMILES, as its own ``canon`` makes
    smiles = Chem.MolToSmiles(mol, canonical=True, isomericSmiles=True, kekuleSmiles=True)
    return smiles in _bloom()


def qed(mol: Chem.Mol) -> float:
    """QED drug-likeness of Bickerton et al. (unitless, 0..1), equal to RDKit's ``QED.qed``.

    RDKit's ``QED.properties`` works on a ``RemoveHs`` copy, which drops the Crippen
    logP the rules already computed, and computes it again: ~2.1 ms against ~1.0 ms
    here for a molecule without explicit hydrogens, with RDKit's own expressions and
    patterns (a fingerprint prescreen of its 116 alerts was tried: slower, they are
    small and generic).  ``tests/test_search_alerts.py`` checks equality with ``QED.qed``.
    """
    heavy = Chem.RemoveHs(mol) if any(a.GetAtomicNum() == 1 for a in mol.GetAtoms()) else mol
    strict = rdMolDescriptors.NumRotatableBondsOptions.Strict
    properties = QED.QEDproperties(
        MW=rdMolDescriptors._CalcMolWt(heavy),
        ALOGP=Crippen.MolLogP(heavy),
        HBA=sum(len(heavy.GetSubstructMatches(p)) for p in QED.Acceptors if heavy.HasSubstructMatch(p)),
        HBD=rdMolDescriptors.CalcNumHBD(heavy),
        PSA=MolSurf.TPSA(heavy),
        ROTB=rdMolDescriptors.CalcNumRotatableBonds(heavy, strict),
        AROM=len(Chem.GetSSSR(Chem.DeleteSubstructs(Chem.Mol(heavy), QED.AliphaticRings))),
        ALERTS=sum(1 for alert in QED.StructuralAlerts if heavy.HasSubstructMatch(alert)),
    )
    return QED.qed(heavy, qedProperties=properties)


def max_ring_size(mol: Chem.Mol) -> int:
    """Size of the largest SSSR ring (0 for acyclic molecules)."""
    return max((len(r) for r in mol.GetRingInfo().AtomRings()), default=0)


def element_set(mol: Chem.Mol) -> set[int]:
    """Atomic numbers present once explicit hydrogens are added (H = 1 included)."""
    numbers = {a.GetAtomicNum() for a in mol.GetAtoms()}
    if any(a.GetTotalNumHs() for a in mol.GetAtoms()):
        numbers.add(1)
    return numbers


#: Values of the slow filters, skipped (``None``) for molecules a rule already rejected
#: unless ``StageConfig.all_values`` is set.
COSTLY_COLUMNS: tuple[str, ...] = ("sa_score", "alerts", "purchasable")


def rule_values(mol: Chem.Mol) -> dict[str, object]:
    """Values of the cheap property rules (~0.5 ms a molecule, logP the dearest).

    Units: ``mw`` g/mol, ``tpsa`` Å², ``logp`` Crippen (unitless).
    """
    mw, logp = Descriptors.MolWt(mol), Crippen.MolLogP(mol)
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
        "qed": None,
    }


def costly_values(mol: Chem.Mol, cfg: StageConfig) -> dict[str, object]:
    """SA score (unitless), alerts and purchasability, each only when its filter is on, else ``None``."""
    return {
        "sa_score": sa_score(mol) if cfg.sa_max is not None else None,
        "alerts": "|".join(structural_alerts(mol, cfg.alerts)) if cfg.alerts else None,
        "purchasable": is_purchasable(mol) if cfg.purchasable else None,
    }


def filter_values(mol: Chem.Mol, cfg: StageConfig) -> dict[str, object]:
    """Every filter value of one standardised molecule (rules and the enabled slow filters).

    ``qed`` is left ``None`` here: see :func:`screen_values`.
    """
    return rule_values(mol) | costly_values(mol, cfg)


def filter_reasons(values: dict[str, object], cfg: StageConfig) -> list[str]:
    """Reasons (possibly several) for which the enabled filters reject a molecule.

    Slow-filter values that were not computed (``None``) give no reason.
    """
    reasons: list[str] = []
    if cfg.heavy_atoms is not None:
        lo, hi = cfg.heavy_atoms
        if not lo <= values["heavy_atoms"] <= hi:
            reasons.append(f"heavy_atoms:{values['heavy_atoms']} not in {lo}..{hi}")
    if cfg.allowed_elements is not None:
        table = Chem.GetPeriodicTable()
        extra = {table.GetAtomicNumber(symbol) for symbol in str(values["elements"]).split()} \
            - set(cfg.allowed_elements)
        if extra:
            reasons.append("elements_not_in_model:" + ",".join(
                table.GetElementSymbol(z) for z in sorted(extra)))
    if cfg.lipinski_max_violations is not None and \
            values["lipinski_violations"] > cfg.lipinski_max_violations:
        reasons.append(f"lipinski:{values['lipinski_violations']} violations")
    if cfg.veber and (values["rotatable_bonds"] > 10 or values["tpsa"] > 140):
        reasons.append(f"veber:rotb={values['rotatable_bonds']},tpsa={values['tpsa']:.1f}")
    if cfg.max_ring_size is not None and values["max_ring_size"] > cfg.max_ring_size:
        reasons.append(f"ring_size:{values['max_ring_size']}>{cfg.max_ring_size}")
    if cfg.sa_max is not None and values.get("sa_score") is not None and values["sa_score"] > cfg.sa_max:
        reasons.append(f"sa_score:{values['sa_score']:.2f}>{cfg.sa_max:g}")
    if values.get("alerts"):
        reasons.append("alert:" + str(values["alerts"]).split("|")[0])
    if cfg.purchasable and values.get("purchasable") is False:
        reasons.append("not_purchasable")
    return reasons


def screen_values(mol: Chem.Mol, cfg: StageConfig) -> tuple[dict[str, object], list[str]]:
    """Filter values and rejection reasons of one molecule, as a cascade, plus QED if it passes.

    The cheap rules run first; the slow filters (SA score, alerts, purchasability:
    ~1.5 ms a molecule together) run only on molecules the rules keep, unless
    ``cfg.all_values`` asks for every value of every molecule.  QED (unitless)
    ranks the molecules that pass; computing it for rejected ones would cost
    ~1 ms each for a column nobody ranks by.
    """
    values = rule_values(mol)
    reasons = filter_reasons(values, cfg)
    if not reasons or cfg.all_values:
        values.update(costly_values(mol, cfg))
        reasons = filter_reasons(values, cfg)
    else:
        values.update(dict.fromkeys(COSTLY_COLUMNS))
    if not reasons:
        values["qed"] = qed(mol)
    return values, reasons
