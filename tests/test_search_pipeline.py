"""End-to-end tests of molequi.search.screen and the ``molequi screen`` CLI."""

from __future__ import annotations

import argparse
import csv
import filecmp
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")

from molequi.search import screen  # noqa: E402
from molequi.cli.screen import add_screen_arguments, run_screen  # noqa: E402

DATA = Path(__file__).parent / "data" / "search"
DRUGS = DATA / "drugs.smi"
FAST = dict(progress=False, plots=False)


class FakeScorer:
    """Deterministic committee of perturbed copies: gap and energy from composition.

    Heteroatoms widen the committee (std), which makes the domain flag testable.
    """

    properties = ["gap", "energy"]

    def __init__(self, members: int = 4, species=(1, 6, 7, 8), name: str = "fake", fail_on_call: int = 0):
        self.members, self.species, self.name = members, set(species), name
        self.fail_on_call, self.calls = fail_on_call, 0

    def predict(self, atoms):
        self.calls += 1
        if self.fail_on_call and self.calls == self.fail_on_call:
            raise RuntimeError("simulated crash while scoring")
        heavy = np.array([(a.numbers > 1).sum() for a in atoms], dtype=float)
        hetero = np.array([(a.numbers > 6).sum() for a in atoms], dtype=float)
        extent = np.array([np.ptp(a.positions, axis=0).max() for a in atoms])
        offsets = np.linspace(-1.0, 1.0, self.members)[:, None]
        gap = 9.0 - 0.3 * heavy + 0.01 * extent
        energy = -40.0 * heavy - 13.6 * np.array([(a.numbers == 1).sum() for a in atoms])
        return {"gap": gap[None, :] + 0.05 * offsets * hetero[None, :],
                "energy": energy[None, :] + 0.0 * offsets}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_single_model_has_no_uncertainty_anywhere(tmp_path):
    """One model: empty std columns in scored.csv and top.sdf, out_of_domain 'unknown', no
    in-domain count, and report.html says that no uncertainty is available."""
    with pytest.warns(UserWarning, match="kappa 1 has no effect: the model gives no uncertainty"):
        result = screen(DRUGS, scorers=[FakeScorer(members=1)], objective="gap:max", top=3, out=tmp_path / "run",
                        kappa=1.0, **FAST)
    passed = [r for r in _rows(result.scored_csv) if r["status"] == "pass"]
    assert passed and all(r["gap_std"] == "" and r["energy_std"] == "" for r in passed)
    assert all(r["out_of_domain"] == "unknown" for r in passed)
    assert "in_domain" not in result.stage_counts
    sdf = result.top_sdf.read_text()
    assert "<gap_mean>" in sdf and "<gap_std>" not in sdf and "unknown" in sdf
    report = result.report_html.read_text()
    assert "No uncertainty is available" in report and "±" not in report.split("Top hits")[1].split("Distributions")[0]


def test_screen_end_to_end_with_committee(tmp_path):
    result = screen(DRUGS, scorers=[FakeScorer()], objective="gap:max", top=3,
                    out=tmp_path / "run", std_threshold={"gap": 0.06}, progress=False)
    rows = _rows(result.scored_csv)
    assert len(rows) == 12 == result.n_read
    by_id = {r["id"]: r for r in rows}
    # filters and de-dup with reasons
    assert by_id["benzoquinone"]["reason"].startswith("alert:pains:quinone_A")
    assert by_id["cyclododecane"]["reason"] == "ring_size:12>8"
    assert by_id["ibuprofen_sodium"]["reason"] == "duplicate_of:ibuprofen"
    assert by_id["isoproterenol"]["reason"].startswith("alert:")
    # every rejected molecule has a reason, every passing one has predictions and a rank
    for r in rows:
        assert (r["status"] == "fail") == bool(r["reason"]), r
        if r["status"] == "pass":
            assert r["gap_mean"] and r["gap_std"] and r["rank"] and r["embed_attempts"] == "1"
    passing = [r for r in rows if r["status"] == "pass"]
    assert sorted(int(r["rank"]) for r in passing) == list(range(1, len(passing) + 1))
    best = min(passing, key=lambda r: int(r["rank"]))
    assert float(best["gap_mean"]) == max(float(r["gap_mean"]) for r in passing)
    # committee std: zero without heteroatoms, flagged above the threshold
    assert by_id["naphthalene"]["gap_std"] == "0" and by_id["naphthalene"]["out_of_domain"] == "false"
    assert by_id["caffeine"]["out_of_domain"] == "true"
    # outputs
    assert [r["id"] for r in result.top] == [r["id"] for r in sorted(passing, key=lambda r: int(r["rank"]))][:3]
    sdf = result.top_sdf.read_text()
    assert sdf.count("$$$$") == 3 and ">  <gap_mean>" in sdf and " H " in sdf
    report = result.report_html.read_text()
    assert "<svg" in report and "data:image/png;base64," in report and "Molecules left after each stage" in report
    # the report: rejection counts per filter, units, a sortable table with SMILES beside the depictions
    assert result.rejections["duplicate"] == {"duplicate": 1}
    assert result.rejections["filters"]["ring_size"] == 1 and result.rejections["filters"]["alert (pains)"] >= 1
    assert "<td class='l'>ring_size</td><td>1</td>" in report
    assert result.units == {"gap": "eV", "energy": "eV"} and "gap (mean ± std)<br><small>eV</small>" in report
    assert "table class='sortable'" in report and "addEventListener('click'" in report
    assert f"<td class='l smiles'>{result.top[0]['smiles']}</td>" in report
    assert "<td class='l'>stage.max_ring_size</td><td class='l'>8</td>" in report
    assert result.stage_counts["read"] == 12 and result.stage_counts["selected"] == 3


def test_model_species_reject_unknown_elements(tmp_path):
    result = screen(DATA / "bad_input.smi", scorers=[FakeScorer()], objective="energy:min",
                    out=tmp_path / "bad", alerts=(), sa_max=None, heavy_atoms=(2, 50), **FAST)
    reasons = {r["id"]: r["reason"] for r in result.rows()}
    assert reasons["invalid_ring"] == "invalid_smiles"
    assert reasons["garbage"] == "invalid_smiles"
    assert reasons["pentavalent_carbon"].startswith("sanitize_failed:")
    assert reasons["bad_aromatic"].startswith("sanitize_failed:")
    assert reasons["xenon"].startswith("heavy_atoms:1") and "elements_not_in_model:Xe" in reasons["xenon"]
    assert reasons["selenide"] == "elements_not_in_model:Se"
    assert reasons["ethanol"] == reasons["benzene"] == ""
    assert result.n_read == 8 and result.n_passed == 2


def test_all_fail_run_warns_and_cli_exits_nonzero(tmp_path, capsys):
    with pytest.warns(RuntimeWarning, match="all 3 molecules failed"):
        result = screen(DATA / "all_bad.smi", out=tmp_path / "a", **FAST)
    assert result.n_passed == 0 and result.top == []
    assert "No molecule passed" in result.report_html.read_text()
    args = _parse([str(DATA / "all_bad.smi"), "--out", str(tmp_path / "b"), "--no-progress", "--no-plots"])
    assert run_screen(args) == 1
    assert "every molecule failed" in capsys.readouterr().err


def test_tautomer_dedup_in_pipeline(tmp_path):
    source = tmp_path / "taut.smi"
    source.write_text("Oc1ccccn1 hydroxypyridine\nO=c1cccc[nH]1 pyridone\nCC(O)=C enol\nCC(C)=O acetone\n"
                      "CC(=O)O acid\nCC(=O)[O-].[Na+] salt\n")
    off = {r["id"]: r["reason"] for r in screen(source, out=tmp_path / "off", alerts=(), heavy_atoms=(1, 50),
                                                 embed_3d=False, **FAST).rows()}
    assert off["acetone"] == "" and off["salt"] == "duplicate_of:acid"
    on = {r["id"]: r["reason"] for r in screen(source, out=tmp_path / "on", tautomers=True, alerts=(),
                                                heavy_atoms=(1, 50), embed_3d=False, **FAST).rows()}
    assert on["pyridone"] == "duplicate_of:hydroxypyridine"
    assert on["acetone"] == "duplicate_of:enol"
    assert on["salt"] == "duplicate_of:acid"


def test_dedup_across_chunks_first_wins(tmp_path):
    source = tmp_path / "dups.smi"
    source.write_text("CCO a\nCCN b\nOCC c\nCCN d\nCC(=O)O e\n[Na+].CC([O-])=O f\nCCO g\n")
    rows = list(screen(source, out=tmp_path / "o", chunk_size=2, embed_3d=False, alerts=(), **FAST).rows())
    assert [r["reason"] for r in rows] == ["", "", "duplicate_of:a", "duplicate_of:b", "",
                                           "duplicate_of:e", "duplicate_of:a"]


def test_resume_after_crash_is_byte_identical(tmp_path):
    settings = dict(objective="gap:max", chunk_size=4, top=5, **FAST)
    reference = screen(DRUGS, scorers=[FakeScorer()], out=tmp_path / "ref", **settings)
    out = tmp_path / "crash"
    with pytest.raises(RuntimeError, match="simulated crash"):
        screen(DRUGS, scorers=[FakeScorer(fail_on_call=2)], out=out, **settings)  # dies in chunk 1
    chunks = sorted((out / "chunks").glob("chunk_*.csv"))
    assert [c.name for c in chunks] == ["chunk_00000.csv"]
    mtime = chunks[0].stat().st_mtime_ns
    counter = FakeScorer()
    resumed = screen(DRUGS, scorers=[counter], out=out, **settings)
    assert chunks[0].stat().st_mtime_ns == mtime  # finished chunk reused, not recomputed
    assert counter.calls == 2  # only chunks 1 and 2 were scored
    assert filecmp.cmp(reference.scored_csv, resumed.scored_csv, shallow=False)
    assert reference.scored_csv.read_bytes() == resumed.scored_csv.read_bytes()


def test_resume_after_deleting_last_chunks(tmp_path):
    out = tmp_path / "run"
    first = screen(DRUGS, out=out, chunk_size=3, **FAST)
    expected = first.scored_csv.read_bytes()
    for k in (2, 3):
        (out / "chunks" / f"chunk_{k:05d}.csv").unlink()
    (out / "scored.csv").unlink()
    (out / "chunks" / "chunk_00003.csv.tmp").write_text("half-written")
    again = screen(DRUGS, out=out, chunk_size=3, **FAST)
    assert again.scored_csv.read_bytes() == expected
    assert not list((out / "chunks").glob("*.tmp"))


def test_other_settings_in_same_folder_is_an_error(tmp_path):
    out = tmp_path / "run"
    screen(DRUGS, out=out, embed_3d=False, **FAST)
    with pytest.raises(ValueError, match=r"different settings or inputs \(sa_max 4.5 -> 2.0\)"):
        screen(DRUGS, out=out, embed_3d=False, sa_max=2.0, **FAST)
    rerun = screen(DRUGS, out=out, embed_3d=False, sa_max=2.0, overwrite=True, **FAST)
    assert any("sa_score:" in r["reason"] for r in rerun.rows())
    # ranking settings only act at the merge: re-ranking reuses the chunks
    reranked = screen(DRUGS, out=out, embed_3d=False, sa_max=2.0, objective="sa_score:min", **FAST)
    assert reranked.top[0]["sa_score"] == min(r["sa_score"] for r in reranked.top)


def test_resume_refuses_input_edited_in_place_or_model_replaced(tmp_path):
    """Inputs and models are identified by content: an input edited to the same size, or a
    scorer whose models changed under the same name, is refused and named; --overwrite starts afresh."""
    from molequi.errors import ResumeMismatchError

    source = tmp_path / "in.smi"
    source.write_text("CCO a\nCCN b\n")
    out = tmp_path / "run"
    screen(source, out=out, embed_3d=False, alerts=(), **FAST)
    source.write_text("CCC a\nCCN b\n")  # same size, other molecule
    with pytest.raises(ResumeMismatchError, match=r"content of input file 1 \(sha256"):
        screen(source, out=out, embed_3d=False, alerts=(), **FAST)
    fresh = screen(source, out=out, embed_3d=False, alerts=(), overwrite=True, **FAST)
    assert [r["smiles"] for r in fresh.rows()] == ["CCC", "CCN"]
    renamed = tmp_path / "renamed.smi"  # the same bytes under another name: the same input
    renamed.write_bytes(source.read_bytes())
    screen(renamed, out=out, embed_3d=False, alerts=(), **FAST)

    scorer = FakeScorer(members=2)
    scorer.fingerprint = "a" * 64
    screen(DRUGS, scorers=[scorer], objective="gap:max", out=tmp_path / "m", **FAST)
    scorer.fingerprint = "b" * 64  # the same name, other weights
    with pytest.raises(ResumeMismatchError, match="content of the model"):
        screen(DRUGS, scorers=[scorer], objective="gap:max", out=tmp_path / "m", **FAST)


def test_screen_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="give an objective"):
        screen(DRUGS, scorers=[FakeScorer()], out=tmp_path / "x", **FAST)
    with pytest.raises(ValueError, match="unknown column"):
        screen(DRUGS, objective="gap:max", out=tmp_path / "x", **FAST)
    with pytest.raises(ValueError, match="need 3D"):
        screen(DRUGS, scorers=[FakeScorer()], objective="gap:max", embed_3d=False, out=tmp_path / "x", **FAST)
    with pytest.raises(ValueError, match="kappa"):
        screen(DRUGS, kappa=-1, out=tmp_path / "x", **FAST)
    with pytest.raises(ValueError, match="no SMILES column"):
        screen(DATA / "table.tsv", out=tmp_path / "x", **FAST)


def test_calibrated_threshold_from_validation_molecules(tmp_path):
    from molequi.search.conformers import embed_molecule, mol_to_atoms
    from rdkit import Chem

    validation = [mol_to_atoms(embed_molecule(Chem.MolFromSmiles(s)).mol) for s in ("CCCC", "CCO", "CCCCC")]
    result = screen(DRUGS, scorers=[FakeScorer()], objective="gap:max", out=tmp_path / "c",
                    validation_atoms=validation, std_quantile=0.9, drop_out_of_domain=True, **FAST)
    assert result.settings["std_threshold"]["gap"] > 0
    rows = {r["id"]: r for r in result.rows()}
    assert rows["caffeine"]["reason"].startswith("out_of_domain:gap_std=")
    assert rows["naphthalene"]["status"] == "pass"


def _parse(argv: list[str]) -> argparse.Namespace:
    return add_screen_arguments(argparse.ArgumentParser()).parse_args(argv)


def test_cli_with_injected_scorer_factory(tmp_path, capsys):
    seen = {}

    def factory(paths, device):
        seen.update(paths=list(paths), device=device)
        return [FakeScorer()]

    args = _parse([str(DRUGS), "--model", "m1.pt", "--objective", "gap:max", "--objective", "qed:max",
                   "--multi", "pareto", "--kappa", "1", "--alerts", "pains", "--top", "2",
                   "--out", str(tmp_path / "cli"), "--no-progress", "--no-plots", "--diverse"])
    assert run_screen(args, scorer_factory=factory) == 0
    assert seen == {"paths": ["m1.pt"], "device": "cuda" if torch.cuda.is_available() else "cpu"}  # --device auto
    rows = _rows(tmp_path / "cli" / "scored.csv")
    assert "pareto_rank" in rows[0] and sum(r["selected"] == "true" for r in rows) == 2
    assert "screened 12 molecules" in capsys.readouterr().out
    from molequi.cli.main import main

    assert main(["screen", str(DRUGS), "--objective", "gap:bogus", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bad objective") and err.count("\n") == 1


def test_cli_all_values_fills_slow_columns_of_rule_rejected_molecules(tmp_path):
    """cyclododecane fails the ring-size rule: by default its SA score is not computed."""
    common = [str(DRUGS), "--no-3d", "--no-progress", "--no-plots", "--max-ring-size", "8"]
    assert run_screen(_parse(common + ["--out", str(tmp_path / "cascade")])) == 0
    assert run_screen(_parse(common + ["--out", str(tmp_path / "all"), "--all-values"])) == 0
    cascade = {r["id"]: r for r in _rows(tmp_path / "cascade" / "scored.csv")}
    every = {r["id"]: r for r in _rows(tmp_path / "all" / "scored.csv")}
    assert cascade["cyclododecane"]["reason"].startswith("ring_size:12>8")
    assert cascade["cyclododecane"]["sa_score"] == "" and every["cyclododecane"]["sa_score"] != ""
    assert {k: r["status"] for k, r in cascade.items()} == {k: r["status"] for k, r in every.items()}
    assert cascade["aspirin"]["sa_score"] == every["aspirin"]["sa_score"] != ""


def test_cli_without_model_ranks_by_filter_value(tmp_path):
    args = _parse([str(DRUGS), "--no-3d", "--objective", "sa_score:min", "--out", str(tmp_path / "n"),
                   "--no-progress", "--no-plots", "--alerts", "none"])
    assert run_screen(args) == 0
    rows = [r for r in _rows(tmp_path / "n" / "scored.csv") if r["rank"]]
    best = min(rows, key=lambda r: int(r["rank"]))
    assert float(best["sa_score"]) == min(float(r["sa_score"]) for r in rows)
    assert (tmp_path / "n" / "top.sdf").read_text().count("$$$$") == len(rows)


@pytest.mark.slow
def test_dask_two_workers_equals_single_process(tmp_path):
    pytest.importorskip("distributed")
    settings = dict(objective="gap:max", chunk_size=3, **FAST)
    single = screen(DRUGS, scorers=[FakeScorer()], out=tmp_path / "one", workers=1, **settings)
    dask = screen(DRUGS, scorers=[FakeScorer()], out=tmp_path / "two", workers=2, **settings)
    assert single.scored_csv.read_bytes() == dask.scored_csv.read_bytes()
    assert single.top_sdf.read_bytes() == dask.top_sdf.read_bytes()
    shutil.rmtree(tmp_path / "two")


def test_progress_lines_have_total_and_eta_and_say_when_resuming(tmp_path, capsys):
    settings = dict(out=tmp_path / "p", embed_3d=False, plots=False, chunk_size=5, progress=True)
    screen(DRUGS, **settings)
    err = capsys.readouterr().err  # not a terminal: whole lines, no tqdm bar
    assert "screen: 12/12 mol (100.0 %)" in err and "ETA 0s" in err and "\r" not in err
    (tmp_path / "p" / "chunks" / "chunk_00001.csv").unlink()  # as if interrupted before chunk 1
    screen(DRUGS, **settings)
    err = capsys.readouterr().err
    assert "resuming" in err and "2 chunk(s), 7 of 12 molecules already screened" in err


def test_candidate_count_without_parsing():
    from molequi.search.io import CandidateSource

    assert CandidateSource(str(DRUGS)).count() == 12 == sum(1 for _ in CandidateSource(str(DRUGS)))
    three = CandidateSource(str(DATA / "three.sdf.gz"))
    assert three.count() == sum(1 for _ in three)


def test_cli_shows_the_kappa_warning_of_one_model_with_a_syntax_that_exists(tmp_path, capsys):
    """--kappa with one model has no std to use: the CLI prints the library's warning (not
    swallowed), and the committee syntax it suggests is the one the parser accepts."""
    args = _parse([str(DRUGS), "--model", "m1.pt", "--objective", "gap:max", "--kappa", "1", "--top", "2",
                   "--alerts", "none", "--out", str(tmp_path / "k"), "--no-progress", "--no-plots"])
    assert run_screen(args, scorer_factory=lambda paths, device: [FakeScorer(members=1)]) == 0
    err = capsys.readouterr().err
    warning = next(line for line in err.splitlines() if line.startswith("warning: kappa 1 has no effect"))
    assert "comma" not in warning and "--model a.molequi --model b.molequi" in warning
    committee = _parse([str(DRUGS), "--model", "a.molequi", "--model", "b.molequi"])
    assert committee.models == ["a.molequi", "b.molequi"]
