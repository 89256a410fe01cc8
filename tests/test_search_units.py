"""Unit tests of molequi.search: filters, standardisation, readers, ranking, scoring."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rdkit")
from rdkit import Chem, RDConfig  # noqa: E402

from molequi.search.config import Objective, ScreenConfig, StageConfig, parse_alerts  # noqa: E402
from molequi.search.conformers import embed_molecule, mol_to_atoms  # noqa: E402
from molequi.search.filters import filter_reasons, filter_values, sa_score, structural_alerts  # noqa: E402
from molequi.search.io import CandidateSource, chunked  # noqa: E402
from molequi.search.rank import desirability, diverse_pick, pareto_fronts, rank_rows  # noqa: E402
from molequi.search.score import calibrate_std_threshold, score_atoms  # noqa: E402
from molequi.search.standardize import standardize  # noqa: E402

DATA = Path(__file__).parent / "data" / "search"


# ---------------------------------------------------------------- filters
def test_sa_score_matches_rdkit_reference_values():
    """RDKit's own reference (UnitTestSAScore asserts 3 decimal places)."""
    path = Path(RDConfig.RDContribDir) / "SA_Score" / "data" / "zim.100.txt"
    rows = [line.rstrip("\n").split("\t") for line in path.read_text().splitlines()[1:] if line.strip()]
    assert len(rows) >= 100
    for smiles, name, expected in rows:
        got = sa_score(Chem.MolFromSmiles(smiles))
        assert got == pytest.approx(float(expected), abs=5e-4), name


@pytest.mark.parametrize("smiles, alert", [
    ("O=C1C=CC(=O)C=C1", "quinone_A"),                      # p-benzoquinone
    ("S=C1SC(=Cc2ccccc2)C(=O)N1", "ene_rhod_A"),            # 5-benzylidene rhodanine
    ("Oc1ccc(CCN)cc1O", "catechol_A"),                      # dopamine (catechol)
    ("CN(C)c1ccc(cc1)N=Nc1ccccc1", "anil_di_alk_A"),        # dimethylaminoazobenzene
])
def test_pains_hits_known_pains(smiles, alert):
    hits = structural_alerts(Chem.MolFromSmiles(smiles), ("pains",))
    assert any(alert in h for h in hits), hits


@pytest.mark.parametrize("smiles", [
    "CC(=O)Oc1ccccc1C(=O)O", "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "Cn1cnc2c1c(=O)n(C)c(=O)n2C"])
def test_no_pains_on_clean_drugs(smiles):
    assert structural_alerts(Chem.MolFromSmiles(smiles), ("pains",)) == []


def test_property_rules_give_reasons():
    cfg = StageConfig(allowed_elements=frozenset({1, 6, 7, 8}), max_ring_size=8, alerts=())
    cases = {
        "C1CCCCCCCCCCC1": "ring_size:12>8",
        "CCCl": "elements_not_in_model:Cl",
        "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC(=O)O": "lipinski",
        "CCCCCCCCCCCCCCCC": "veber",
    }
    for smiles, reason in cases.items():
        mol = Chem.MolFromSmiles(smiles)
        reasons = filter_reasons(filter_values(mol, cfg), cfg)
        assert any(r.startswith(reason) for r in reasons), (smiles, reasons)
    clean = Chem.MolFromSmiles("CC(=O)Nc1ccc(O)cc1")
    assert filter_reasons(filter_values(clean, cfg), cfg) == []


def test_sa_filter_rejects_hard_molecule():
    cfg = StageConfig(sa_max=2.0, alerts=())
    mol = Chem.MolFromSmiles("C[C@H]1C[C@@H]2C[C@H](O)[C@@]3(C)C[C@@H](O)C[C@H]3[C@@H]2C1")
    reasons = filter_reasons(filter_values(mol, cfg), cfg)
    assert any(r.startswith("sa_score:") for r in reasons)


def test_purchasability_uses_bundled_filter():
    pytest.importorskip("molbloom")
    cfg = StageConfig(purchasable=True, alerts=())
    assert filter_values(Chem.MolFromSmiles("CC(=O)Oc1ccccc1C(=O)O"), cfg)["purchasable"] is True


# ---------------------------------------------------------------- standardisation
def test_salt_and_free_acid_share_inchikey():
    assert standardize("CC(=O)[O-].[Na+]").inchikey == standardize("CC(=O)O").inchikey
    assert standardize("CC(C)Cc1ccc(cc1)C(C)C(=O)[O-].[Na+]").smiles == \
        standardize("CC(C)Cc1ccc(cc1)C(C)C(=O)O").smiles


def test_tautomers_dedup_only_with_canonicalisation():
    keto, enol = "CC(C)=O", "CC(O)=C"
    assert standardize(keto).inchikey != standardize(enol).inchikey  # control: off by default
    assert standardize(keto, True).inchikey == standardize(enol, True).inchikey
    assert standardize("Oc1ccccn1", True).inchikey == standardize("O=c1cccc[nH]1", True).inchikey


def test_standardize_reports_failures():
    assert standardize("C1CC").reason == "invalid_smiles"
    assert standardize("C(C)(C)(C)(C)C").reason.startswith("sanitize_failed:")
    assert standardize("").reason == "empty_smiles"


# ---------------------------------------------------------------- readers
def test_read_smi_with_names_comments_and_gz():
    records = list(CandidateSource(str(DATA / "drugs.smi")))
    assert records[0].id == "aspirin" and records[0].index == 0
    assert len(records) == 12
    gz = list(CandidateSource(str(DATA / "drugs.smi.gz")))
    assert [r.smiles for r in gz] == [r.smiles for r in records[:5]]


def test_read_csv_tsv_sdf():
    csv_rows = list(CandidateSource(str(DATA / "table.csv")))
    assert [r.smiles for r in csv_rows] == ["CCO", "c1ccccc1O", ""]  # canonical_smiles detected
    assert csv_rows[0].id == "m1"
    tsv = list(CandidateSource(str(DATA / "table.tsv"), smiles_column="smi", id_column="ID"))
    assert [(r.id, r.smiles) for r in tsv] == [("x1", "CCN"), ("x2", "CCCl")]
    sdf = list(CandidateSource(str(DATA / "three.sdf.gz")))
    assert [r.id for r in sdf] == ["ethanol", "pyridine", "acetamide"]
    assert Chem.MolToSmiles(Chem.MolFromSmiles(sdf[1].smiles)) == "c1ccncc1"


def test_missing_column_and_empty_file_raise(tmp_path):
    with pytest.raises(ValueError, match="no SMILES column"):
        CandidateSource(str(DATA / "table.tsv"))
    with pytest.raises(ValueError, match="smi_x"):
        CandidateSource(str(DATA / "table.tsv"), smiles_column="smi_x")
    with pytest.raises(ValueError, match="empty"):
        CandidateSource(str(DATA / "empty.smi"))
    empty_gz = tmp_path / "empty.csv.gz"
    with gzip.open(empty_gz, "wt") as handle:
        handle.write("smiles\n")
    with pytest.raises(ValueError, match="no candidate"):
        CandidateSource(str(empty_gz))
    with pytest.raises(FileNotFoundError):
        CandidateSource(str(tmp_path / "nope.smi"))


def test_builtin_pools_stream_without_loading():
    pytest.importorskip("rdkit")
    try:
        moses = CandidateSource("moses:test")
    except ValueError:
        pytest.skip("molsets not installed")
    first = next(chunked(iter(moses), 3))
    assert len(first) == 3 and all(Chem.MolFromSmiles(c.smiles) for c in first)
    try:
        qm9 = CandidateSource("qm9")
    except ValueError:
        pytest.skip("qm9pack not installed")
    head = next(iter(qm9))
    assert head.smiles == "C" and head.id == "qm9:1"
    with pytest.raises(ValueError, match="unknown"):
        CandidateSource("moses:nope")


# ---------------------------------------------------------------- ranking and config
TABLE = [
    {"id": "a", "gap_mean": 3.0, "gap_std": 0.1, "sa_score": 2.0},
    {"id": "b", "gap_mean": 5.0, "gap_std": 1.0, "sa_score": 3.0},
    {"id": "c", "gap_mean": 4.0, "gap_std": 0.0, "sa_score": 1.5},
    {"id": "d", "gap_mean": 6.5, "gap_std": 0.2, "sa_score": 4.0},
]


def _order(ranking) -> list[str]:
    return [TABLE[i]["id"] for i in np.argsort(ranking.rank)]


def test_rank_max_min_window():
    assert _order(rank_rows(TABLE, ["gap:max"])) == ["d", "b", "c", "a"]
    assert _order(rank_rows(TABLE, ["sa_score:min"])) == ["c", "a", "b", "d"]
    window = rank_rows(TABLE, ["gap:target=3.5..4.5"])
    assert _order(window)[0] == "c" and window.score[2] == 0.0
    assert _order(window)[-1] == "d"  # 2.0 eV outside the window


def test_rank_uncertainty_kappa():
    # pessimistic: b (5 - 2*1 = 3) drops below c (4) and a (3 - 0.2 = 2.8)
    assert _order(rank_rows(TABLE, ["gap:max"], kappa=2.0)) == ["d", "c", "b", "a"]
    # optimistic: b (5 + 2) beats d (6.9)
    assert _order(rank_rows(TABLE, ["gap:max"], kappa=2.0, uncertainty="optimistic"))[0] == "b"


def test_pareto_and_desirability():
    # maximise gap, minimise sa_score: a is dominated by c (lower gap, higher sa)
    ranking = rank_rows(TABLE, ["gap:max", "sa_score:min"], multi="pareto")
    assert list(ranking.pareto_rank) == [2, 1, 1, 1]
    assert _order(ranking)[-1] == "a"
    assert list(pareto_fronts(np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 0.0], [0.0, 0.0]]))) == [2, 1, 1, 3]
    des = rank_rows(TABLE, [Objective.parse("gap:max", 1.0), Objective.parse("sa_score:min", 3.0)])
    assert np.all((des.score >= 0) & (des.score <= 1))
    assert _order(des)[0] == "c"  # sa weighted 3x
    d = desirability(np.array([0.0, -1.0, -5.0]), Objective.parse("x:target=1..3"))
    assert list(d) == [1.0, 0.5, 0.0]


def test_missing_values_rank_last():
    rows = [{"qed": ""}, {"qed": "0.2"}, {"qed": "0.9"}]
    assert list(rank_rows(rows, ["qed:max"]).rank) == [3, 2, 1]


def test_diverse_pick_keeps_best_and_spreads():
    smiles = ["CCO", "CCCO", "CCCCO", "c1ccccc1", "c1ccncc1", "CCN"]
    picks = diverse_pick(smiles, 3)
    assert picks[0] == 0 and len(picks) == 3
    assert {3, 4} & set(picks)  # an aromatic ring is picked, not only alcohols


@pytest.mark.parametrize("kwargs, match", [
    ({"objective": "gap:maximise"}, "bad objective"),
    ({"objective": "gap:target=5..1"}, "LO <= HI"),
    ({"kappa": -1.0}, "kappa"),
    ({"top": 0}, "top"),
    ({"objective": ("gap:max", "qed:max"), "weights": (1.0,)}, "weights"),
    ({"multi": "lexicographic"}, "multi"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScreenConfig(**kwargs)


def test_stage_config_validation():
    with pytest.raises(ValueError, match="unknown alert"):
        StageConfig(alerts=("pains", "evil"))
    with pytest.raises(ValueError, match="sa_max"):
        StageConfig(sa_max=12)
    assert parse_alerts("PAINS, brenk") == ("pains", "brenk") and parse_alerts("none") == ()


# ---------------------------------------------------------------- 3D and scoring
class Committee:
    """Deterministic fake committee: gap from composition and size, members perturbed."""

    name = "fake-committee"
    properties = ["gap"]

    def __init__(self, members: int = 3, species=None):
        self.members, self.species = members, species

    def predict(self, atoms):
        heavy = np.array([(a.numbers > 1).sum() for a in atoms], dtype=float)
        hetero = np.array([(a.numbers > 6).sum() for a in atoms], dtype=float)
        offsets = np.linspace(-1.0, 1.0, self.members)[:, None] if self.members > 1 else np.zeros((1, 1))
        return {"gap": 8.0 - 0.2 * heavy[None, :] + 0.1 * offsets * hetero[None, :]}


def test_embed_gives_atoms_with_hydrogens():
    embedded = embed_molecule(Chem.MolFromSmiles("CCO"))
    assert embedded.reason == "" and embedded.mmff_energy is not None
    atoms = mol_to_atoms(embedded.mol)
    assert sorted(atoms.numbers.tolist()) == [1] * 6 + [6, 6, 8]
    d = atoms.get_distance(0, 1)
    assert 1.4 < d < 1.65  # C-C bond in Å


def test_score_mean_std_and_calibration():
    mols = [embed_molecule(Chem.MolFromSmiles(s)).mol for s in ("CCO", "CCN", "CCCC", "OCCO")]
    atoms = [mol_to_atoms(m) for m in mols]
    single = score_atoms([Committee(1)], atoms, batch_size=3)
    assert np.all(np.isnan(single["gap"][1]))  # one model: no estimate, not a zero one
    mean, std = score_atoms([Committee(3)], atoms, batch_size=3)["gap"]
    assert mean == pytest.approx([7.4, 7.4, 7.2, 7.2])
    assert std[2] == 0.0 and std[3] > std[0] > 0  # std grows with heteroatoms
    # unbiased: members 8-0.2h ∓ 0.1·hetero and the mean -> std = 0.1·hetero (ddof 1), not 0.0816·hetero
    assert std[0] == pytest.approx(0.1) and std[3] == pytest.approx(0.2)
    threshold = calibrate_std_threshold(Committee(3), atoms, quantile=0.5)
    assert threshold["gap"] == pytest.approx(float(np.quantile(std, 0.5)))


def test_report_percentages_never_round_a_share_to_zero():
    from molequi.search.report import percent

    assert percent(100, 1_900_000) == "0.0053 %"
    assert percent(1, 1500) == "0.067 %"
    assert percent(0, 10) == "0.0 %" and percent(471, 1500) == "31.4 %" and percent(5, 5) == "100.0 %"
    assert percent(1, 0) == "–"


def test_reason_categories_name_each_filter():
    from molequi.search.pipeline import reason_categories

    assert reason_categories("lipinski:2 violations;alert:pains:quinone_A(370)") == ["lipinski", "alert (pains)"]
    assert reason_categories("error:ValueError:boom") == ["error (ValueError)"]
    assert reason_categories("duplicate_of:mol3") == ["duplicate"]
    assert reason_categories("") == []


def test_histograms_label_axes_and_say_what_they_cover():
    from molequi.search.report import histograms_figure

    samples = {"mw": [150.0, 200.0, 320.0], "sa_score": [2.0, 3.5], "gap_mean": [4.0, 5.0],
               "gap_std": [0.0, 0.0], "hbd": [0.0, 1.0, 3.0]}
    figure = histograms_figure(samples, {"mw": 3, "sa_score": 2, "gap_mean": 2, "hbd": 3}, n_read=4,
                               units={"gap": "eV"})
    shown = {axis.get_xlabel(): axis.get_title() for axis in figure.axes if axis.get_visible()}
    assert shown["molecular weight, g/mol"] == "n = 3 of 4"
    assert shown["SA score, 1 easy … 10 hard"] == "n = 2 of 4 (passed the rules)"
    assert shown["gap (mean), eV"] == "n = 2 of 4 (scored)"
    assert "gap (committee std), eV" not in shown  # all zero: a note, not a histogram
    assert all(axis.get_ylabel().startswith("molecules") for axis in figure.axes if axis.get_visible())


def test_csv_unbalanced_quote_spoils_only_its_own_line(tmp_path):
    """A stray quote used to merge every following record into one invalid field."""
    path = tmp_path / "quote.csv"
    path.write_text('id,smiles\na,CCO\nb,"CCN\nc,CCC\nd,c1ccccc1\n')
    records = list(CandidateSource(str(path)))
    assert [r.smiles for r in records] == ["CCO", "", "CCC", "c1ccccc1"]
    assert [r.id for r in records] == ["a", "line3", "c", "d"]
    assert records[1].error == "unreadable_line:3:unbalanced quote" and not records[0].error
    from molequi.search.stage import process_chunk
    from molequi.search.config import StageConfig

    rows = process_chunk(records, StageConfig(embed_3d=False, sa_max=None, alerts=()))
    assert [r["status"] for r in rows] == ["pass", "fail", "pass", "pass"]
    assert rows[1]["failed_stage"] == "read" and rows[1]["reason"].startswith("unreadable_line:3")
