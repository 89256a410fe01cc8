"""Fast filters equal the slow reference: prescreened PAINS = FilterCatalog; the cascade = every filter."""

from __future__ import annotations

import csv
import os

import pytest

pytest.importorskip("rdkit")
from rdkit import Chem, RDConfig  # noqa: E402

from molequi.search.alerts import (  # noqa: E402
    alert_catalog, catalog_names, pattern_words, screened_pains, structural_alerts,
)
from molequi.search.config import StageConfig  # noqa: E402
from molequi.search.filters import COSTLY_COLUMNS, filter_reasons, filter_values, screen_values  # noqa: E402

PAINS_TESTS = os.path.join(RDConfig.RDDataDir, "Pains", "test_data")


def _rdkit_pains_test_molecules() -> list[Chem.Mol]:
    """RDKit's own PAINS test molecules: one known positive per definition + 10,000 WEHI compounds."""
    with open(os.path.join(PAINS_TESTS, "test_set3.txt")) as handle:
        smiles = [line.split()[2] for line in handle if line[0] != "#" and line.strip()]
    with open(os.path.join(PAINS_TESTS, "wehi_mols.csv"), newline="") as handle:
        smiles += [row[0] for row in csv.reader(handle)]
    mols = [Chem.MolFromSmiles(s) for s in smiles]
    return [m for m in mols if m is not None]


@pytest.mark.skipif(not os.path.isdir(PAINS_TESTS), reason="this RDKit build ships no Data/Pains/test_data")
@pytest.mark.slow
def test_screened_pains_equals_filter_catalog_on_rdkit_test_set():
    mols = _rdkit_pains_test_molecules()
    assert len(mols) > 10_000
    catalog = alert_catalog("pains")
    n_hits = 0
    for mol in mols:
        expected = sorted(f"pains:{e.GetDescription()}" for e in catalog.GetMatches(mol))
        assert sorted(structural_alerts(mol, ("pains",))) == expected, Chem.MolToSmiles(mol)
        n_hits += bool(expected)
    assert n_hits > 1000  # the comparison covers many positives, not only clean molecules


@pytest.mark.parametrize("name", ["pains", "pains_a", "pains_b", "pains_c"])
def test_screened_sets_have_the_catalog_definitions(name):
    assert set(screened_pains(name).names) == catalog_names(name)


def test_prescreen_actually_skips_searches():
    alerts = screened_pains("pains")
    mol = Chem.MolFromSmiles("CC(=O)Oc1ccccc1C(=O)O")
    possible = ~(alerts.words & ~pattern_words(mol)).any(axis=1)
    assert 0 < possible.sum() < len(alerts.names) // 4


def test_every_definition_finds_its_known_positive():
    """test_set3.txt pairs each wehi_pains.csv row (by index) with a molecule it must match."""
    names = screened_pains("pains").names  # all 480 rows, in wehi_pains.csv order
    with open(os.path.join(PAINS_TESTS, "test_set3.txt")) as handle:
        rows = [line.split() for line in handle if line[0] != "#" and line.strip()]
    assert len(rows) > 400
    for row in rows:
        index, smiles = int(row[0]), row[2]
        assert f"pains:{names[index]}" in structural_alerts(Chem.MolFromSmiles(smiles), ("pains",)), row


def test_non_pains_sets_still_use_filter_catalog():
    mol = Chem.MolFromSmiles("O=[N+]([O-])c1ccccc1")  # nitro group: a Brenk alert
    expected = [f"brenk:{e.GetDescription()}" for e in alert_catalog("brenk").GetMatches(mol)]
    assert expected and structural_alerts(mol, ("brenk",)) == expected


# ---------------------------------------------------------------- the filter cascade
def _mixed_molecules() -> list[Chem.Mol]:
    """PAINS positives and WEHI compounds: many alerts, halogens, sulfur, big and small molecules."""
    return _rdkit_pains_test_molecules()[:1500]


@pytest.mark.slow
def test_cascade_gives_the_same_verdict_as_every_filter():
    cfg = StageConfig(allowed_elements=frozenset({1, 6, 7, 8, 9}), purchasable=False)
    n_rule_rejected = n_pass = 0
    for mol in _mixed_molecules():
        values, reasons = screen_values(mol, cfg)
        reference = filter_reasons(filter_values(mol, cfg), cfg)
        assert bool(reasons) == bool(reference), Chem.MolToSmiles(mol)
        assert set(reasons) <= set(reference)
        skipped = all(values[c] is None for c in COSTLY_COLUMNS)
        n_rule_rejected += skipped
        n_pass += not reasons
        assert (values["qed"] is not None) == (not reasons)
        if not skipped:
            assert reasons == reference
    assert n_rule_rejected > 100 and n_pass > 100  # both branches exercised


def test_all_values_fills_every_column():
    cfg = StageConfig(allowed_elements=frozenset({1, 6, 7, 8}), all_values=True)
    mol = Chem.MolFromSmiles("O=C1C=CC(=O)C(Cl)=C1")  # chlorinated quinone: element rule and PAINS
    values, reasons = screen_values(mol, cfg)
    assert values["sa_score"] is not None and "pains:quinone_A(370)" in values["alerts"]
    assert any(r.startswith("elements_not_in_model") for r in reasons)
    assert any(r.startswith("alert:") for r in reasons)
    values, reasons = screen_values(mol, StageConfig(allowed_elements=frozenset({1, 6, 7, 8})))
    assert values["sa_score"] is None and values["alerts"] is None
    assert [r.split(":")[0] for r in reasons] == ["elements_not_in_model"]


def test_qed_equals_rdkit_qed():
    from rdkit.Chem import QED

    from molequi.search.filters import qed

    mols = _mixed_molecules()[:1000] + [Chem.AddHs(Chem.MolFromSmiles("CC(=O)Nc1ccc(O)cc1"))]
    n_alerts = 0
    for mol in mols:
        assert qed(mol) == QED.qed(mol), Chem.MolToSmiles(mol)
        n_alerts += QED.properties(mol).ALERTS > 0
    assert n_alerts > 300  # molecules with QED alerts are part of the comparison
