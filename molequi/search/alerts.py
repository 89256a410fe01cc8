"""Structural alerts, with a pattern-fingerprint prescreen for the PAINS sets.

RDKit's ``FilterCatalog`` runs every one of its 480 PAINS substructure searches
on every molecule; at ~2.5–5 ms per drug-like molecule that alone capped the
filter stage near 100 molecules/s per core.  The catalogue has no prescreen,
so for PAINS we match the same definitions ourselves, the way RDKit's own
PAINS tests do (``Data/Pains/wehi_pains.csv`` read with
``MolFromSmarts(..., mergeHs=True)``), and skip each search whose
``PatternFingerprint`` bits are not all set in the molecule's fingerprint.
That screen cannot reject a true match (a substructure sets a subset of the
bits of its superstructure), and ``tests/test_search_alerts.py`` checks that
the hits and their names equal ``FilterCatalog``'s on RDKit's 10,462 PAINS
test molecules.  Every other alert set (Brenk, NIH, ChEMBL …) is cheap
enough and goes through ``FilterCatalog`` unchanged.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from rdkit import Chem, DataStructs, RDConfig
from rdkit.Chem.FilterCatalog import FilterCatalog, FilterCatalogParams

#: Bits of the pattern fingerprint; 2048 leaves ~35 of 480 PAINS searches per molecule.
FINGERPRINT_BITS = 2048


def _packed(fingerprint: DataStructs.ExplicitBitVect) -> np.ndarray:
    """A bit vector as uint64 words (bit order is irrelevant: only AND/NOT are used)."""
    return np.frombuffer(DataStructs.BitVectToBinaryText(fingerprint), dtype=np.uint8).view(np.uint64)


def pattern_words(mol: Chem.Mol) -> np.ndarray:
    """Packed ``PatternFingerprint`` of a molecule or query (uint64 words)."""
    return _packed(Chem.PatternFingerprint(mol, fpSize=FINGERPRINT_BITS))


@dataclass(frozen=True)
class ScreenedAlerts:
    """Named substructure queries plus their packed pattern fingerprints."""

    names: tuple[str, ...]
    queries: tuple[Chem.Mol, ...]
    words: np.ndarray  # (n_queries, FINGERPRINT_BITS // 64) uint64

    @classmethod
    def from_queries(cls, names: Sequence[str], queries: Sequence[Chem.Mol]) -> ScreenedAlerts:
        """Fingerprint the queries once (RDKit query molecules, e.g. from ``MolFromSmarts``)."""
        return cls(tuple(names), tuple(queries), np.stack([pattern_words(q) for q in queries]))

    def matches(self, mol: Chem.Mol, words: np.ndarray | None = None) -> list[str]:
        """Names of the queries found in ``mol``, in definition order.

        ``words`` is the molecule's :func:`pattern_words`, when already computed.
        """
        words = pattern_words(mol) if words is None else words
        possible = np.flatnonzero(~(self.words & ~words).any(axis=1))
        return [self.names[i] for i in possible if mol.HasSubstructMatch(self.queries[i])]


def _wehi_pains() -> list[tuple[str, str]]:
    """``(smarts, name)`` of RDKit's curated PAINS definitions (``Data/Pains/wehi_pains.csv``)."""
    path = os.path.join(RDConfig.RDDataDir, "Pains", "wehi_pains.csv")
    with open(path, newline="") as handle:
        # second column reads "<regId=quinone_A(370)>": the name FilterCatalog reports
        return [(smarts, reg.split("=", 1)[1].rstrip(">")) for smarts, reg in csv.reader(handle)]


@lru_cache(maxsize=None)
def alert_catalog(name: str) -> FilterCatalog:
    """RDKit FilterCatalog for one alert set (``pains``, ``brenk``, ``nih`` ...)."""
    params = FilterCatalogParams()
    params.AddCatalog(getattr(FilterCatalogParams.FilterCatalogs, name.upper()))
    return FilterCatalog(params)


def catalog_names(name: str) -> set[str]:
    """Descriptions of every entry of one FilterCatalog set."""
    catalog = alert_catalog(name)
    return {catalog.GetEntryWithIdx(i).GetDescription() for i in range(catalog.GetNumEntries())}


@lru_cache(maxsize=None)
def screened_pains(name: str = "pains") -> ScreenedAlerts:
    """The PAINS definitions of catalogue ``name`` (pains, pains_a/b/c) with their fingerprints.

    Raises ``RuntimeError`` when RDKit's PAINS file and catalogue disagree on the
    names (a future RDKit), so that nobody silently screens with a different set.
    """
    wanted = catalog_names(name)
    rows = [(smarts, reg) for smarts, reg in _wehi_pains() if reg in wanted]
    if {reg for _, reg in rows} != wanted:
        raise RuntimeError(f"RDKit's wehi_pains.csv does not cover FilterCatalog '{name}'")
    return ScreenedAlerts.from_queries([reg for _, reg in rows],
                                       [Chem.MolFromSmarts(smarts, mergeHs=True) for smarts, _ in rows])


def structural_alerts(mol: Chem.Mol, sets: tuple[str, ...]) -> list[str]:
    """Matched alerts as ``set:description`` (e.g. ``pains:quinone_A(370)``)."""
    hits: list[str] = []
    words = None
    for name in sets:
        if name.startswith("pains"):
            words = pattern_words(mol) if words is None else words
            found = screened_pains(name).matches(mol, words)
        else:
            found = [entry.GetDescription() for entry in alert_catalog(name).GetMatches(mol)]
        hits.extend(f"{name}:{description}" for description in found)
    return hits
