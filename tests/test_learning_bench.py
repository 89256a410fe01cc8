"""scripts/bench_learning.py's pure parts: the evaluation cache (keyed by the model files' content
stamps, whether --out was given relative or absolute), the ranking and its split-half ceiling, the
spread's size, and the targets judged on seed means."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
import pytest

from conftest import load_script, make_ethanol, make_water_box, random_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_learning.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(SCRIPT)


def test_cache_holds_across_relative_and_absolute_out_and_misses_when_a_model_changes(bench, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = Path("runs")
    (out / "loop").mkdir(parents=True)
    model = out / "loop" / "member_0.safetensors"
    model.write_bytes(b"weights")
    calls = []

    def compute():
        calls.append(1)
        return {"p99": float(len(calls))}

    relative, absolute = argparse.Namespace(out=out), argparse.Namespace(out=out.resolve())
    assert bench.cached(relative, "ethanol/random/0/10", [model], compute) == {"p99": 1.0}
    assert bench.cached(absolute, "ethanol/random/0/10", [model.resolve()], compute) == {"p99": 1.0}
    assert len(calls) == 1
    model.write_bytes(b"retrained weights")  # another size: the cached result is stale
    os.utime(model, (1, 1))
    assert bench.cached(absolute, "ethanol/random/0/10", [model], compute) == {"p99": 2.0}
    assert bench.cached(relative, "ethanol/random/0/20", [model], compute) == {"p99": 3.0}  # another key


def test_cache_misses_when_the_test_frames_change(bench, tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    model, frames = out / "model.molequi", tmp_path / "test_md_300K.extxyz"
    model.write_bytes(b"weights")
    frames.write_text("frames")
    args, results = argparse.Namespace(out=out), iter([{"p99": 1.0}, {"p99": 2.0}])
    read = lambda: bench.content_digest([frames])  # noqa: E731  (the caller digests the test files once)
    assert bench.cached(args, "ethanol/random/0/10", [model], lambda: next(results), read()) == {"p99": 1.0}
    assert bench.cached(args, "ethanol/random/0/10", [model], lambda: next(results), read()) == {"p99": 1.0}
    frames.write_text("framez")  # same size and name, other frames: regenerated test set
    assert bench.cached(args, "ethanol/random/0/10", [model], lambda: next(results), read()) == {"p99": 2.0}


def test_spearman_ceiling_follows_spearman_brown_and_needs_agreeing_halves(bench):
    error = np.arange(10.0)
    perfect = {"error": error, "std": error, "half_a": error, "half_b": error}
    assert bench.spearman_with_ceiling(perfect) == pytest.approx((1.0, 1.0))
    rng = np.random.default_rng(0)
    noisy_std = error + rng.normal(0.0, 3.0, 10)
    measured, ceiling = bench.spearman_with_ceiling({**perfect, "std": noisy_std,
                                                     "half_a": error + rng.normal(0.0, 3.0, 10)})
    assert 0 < measured < 1
    assert ceiling >= measured  # fewer members than unlimited: the ceiling is above what they reach
    disagreeing = {**perfect, "half_b": -error}
    assert bench.spearman_with_ceiling(disagreeing)[1] is None
    assert bench.spearman_with_ceiling({**perfect, "half_a": np.array([]), "half_b": np.array([])})[1] is None


def test_spread_ratio_is_one_when_the_std_is_sized_like_the_error(bench):
    std = np.array([0.1, 0.2, 0.3])
    assert bench.spread_ratio({"error": std, "std": std}) == pytest.approx(1.0)
    assert bench.spread_ratio({"error": 40 * std, "std": std}) == pytest.approx(40.0)


def result(p99: float, mean_300: float, ttf_fs: float) -> dict:
    return {"p99": p99, "mean_300K": mean_300, "ttf": {"mean_fs": ttf_fs, "length_fs": 2000.0}}


def test_targets_are_judged_on_the_mean_over_seeds(bench):
    def seed(loop_p99: float) -> dict:
        return {"random": {20: result(1000.0, 100.0, 500.0)}, "loop": {20: result(loop_p99, 105.0, 2000.0)},
                "ranking": {}, "rounds": {"loop": [{"test_energy_mae_meV": 100.0}, {"test_energy_mae_meV": 90.0}]},
                "calibration": {"energy": {"b": 0.05, "warnings": ["flat"]}}}

    report = {"labels": [20], "seeds": [seed(600.0), seed(700.0)]}
    checks = dict(bench.targets(report))
    p99 = next(k for k in checks if "p99" in k)
    assert checks[p99] and "650 vs 1000" in p99  # the mean of 600 and 700
    assert checks[next(k for k in checks if "300 K mean" in k)]
    assert checks[next(k for k in checks if "survives" in k)]  # 2000 ≥ 2 × 500 fs
    assert checks[next(k for k in checks if "energy MAE" in k)]
    assert checks["no flat energy calibration without a warning"]
    silent = {**report, "seeds": [{**s, "calibration": {"energy": {"b": 0.05, "warnings": []}}} for s in report["seeds"]]}
    assert not dict(bench.targets(silent))["no flat energy calibration without a warning"]
    worse = {**report, "seeds": [seed(900.0)]}
    assert not dict(bench.targets(worse))[next(k for k in dict(bench.targets(worse)) if "p99" in k)]



def test_torsion_scan_turns_each_rotatable_bond_without_clashes(bench):
    from ase.build import molecule

    ethanol = molecule("CH3CH2OH")
    frames = bench.torsion_scan(ethanol, 8, np.random.default_rng(0))
    assert len(frames) == 8
    for atoms in frames:
        distances = atoms.get_all_distances() + 9 * np.eye(len(atoms))
        assert distances.min() > 0.8  # bonded O–H 0.97 Å is the closest pair
    assert not np.allclose(frames[0].positions, ethanol.positions)


def test_one_pass_over_the_test_sets_gives_each_sets_spread_and_the_force_mae(bench, tmp_path):
    from ase.calculators.singlepoint import SinglePointCalculator

    from molequi.models.io import save_model

    models = [save_model(random_model(seed=seed), tmp_path / f"member_{seed}.molequi") for seed in range(2)]
    rng = np.random.default_rng(0)
    tests = {}
    for key, make in (("md_300K", make_ethanol), ("torsion", make_water_box)):  # 9 and 9 atoms, then 6
        frames = []
        for k in range(3 if key == "md_300K" else 2):
            atoms = make()
            atoms.rattle(0.02, seed=k)
            atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()), forces=rng.normal(size=(len(atoms), 3)))
            frames.append(atoms)
        tests[key] = frames
    tests["torsion"] = tests["torsion"][:1] + [make_water_box(2)]  # another atom count
    tests["torsion"][1].calc = SinglePointCalculator(tests["torsion"][1], energy=0.0,
                                                     forces=rng.normal(size=(len(tests["torsion"][1]), 3)))
    spread, parts = bench.spread_by_set(models, tests)
    for key, frames in tests.items():
        alone = bench.per_structure_spread(models, frames)
        np.testing.assert_allclose(parts[key]["error"], alone["error"], rtol=1e-6)
        np.testing.assert_allclose(parts[key]["std"], alone["std"], rtol=1e-6)
    assert bench.force_mae(spread) == pytest.approx(bench.shifted_test(models, tests)["mean"], rel=1e-6)


def test_the_anchor_benchmarks_refit_only_model_keeps_the_pretrained_weights(tmp_path):
    from ase.calculators.emt import EMT
    from ase.io import write

    from molequi.models.io import load_model
    from molequi.pretrained import load

    anchor_bench = load_script(SCRIPT.parent / "bench_anchor.py")
    frames = []
    for k in range(4):
        atoms = make_ethanol()
        atoms.rattle(0.03, seed=k)
        atoms.calc = EMT()
        atoms.get_potential_energy(), atoms.get_forces()
        frames.append(atoms)
    labels = tmp_path / "round_003" / "train.extxyz"
    labels.parent.mkdir()
    write(labels, frames, format="extxyz")
    args = argparse.Namespace(pretrained="organic-xtb")
    model = anchor_bench.fine_tuned(labels, {}, args, seed=0, anchor=None)
    refitted, pretrained = load_model(model).state_dict(), load("organic-xtb").state_dict()
    assert all(torch.equal(refitted[k], pretrained[k]) for k in pretrained if "e0" not in k)
    assert not torch.equal(refitted["model.e0"], pretrained["model.e0"])  # EMT's energies: far from xTB's
    stamp = model.stat().st_mtime_ns
    assert anchor_bench.fine_tuned(labels, {}, args, seed=0, anchor=None) == model and model.stat().st_mtime_ns == stamp


def test_selection_names_follow_the_flags_and_a_wrong_long_run_name_is_refused_with_the_choices(bench, capsys):
    args = argparse.Namespace(loop_max_std=0.6, pretrained="organic-xtb", rotamer_loops=True, anchored_loops=200.0)
    names = bench.selection_names(args)
    assert names[:2] == ["random", "random from organic-xtb"]
    assert "loop, ceiling 0.6 eV/Å, rotamers" in names and len(names) == len(set(names)) == 7
    assert all("anchor" not in name for name in names)  # anchored loops report their rounds only
    anchored = bench.loop_specs(args, anchored=True)
    assert list(anchored) == ["loop from organic-xtb, ceiling 0.6 eV/Å, anchor 200",
                              "loop from organic-xtb, ceiling 0.6 eV/Å, rotamers, anchor 200"]
    assert all(spec["anchor"] == 200.0 and spec["init"] == "organic-xtb" for spec in anchored.values())
    assert bench.selection_names(argparse.Namespace(loop_max_std=None, pretrained=None, rotamer_loops=False,
                                                    anchored_loops=None)) == ["random", "loop"]
    with pytest.raises(SystemExit):
        bench.main(["--loop-max-std", "0.6", "--long-ttf-selections", "random", "loop, ceiling"])
    message = capsys.readouterr().err
    assert "no selection named 'loop, ceiling'" in message and "'loop, ceiling 0.6 eV/Å'" in message


def test_the_survival_target_uses_the_longer_runs_only_where_loop_and_random_both_have_them(bench):
    def result(ttf: float, long: float | None) -> dict:
        row = {"p99": 1.0, "mean_300K": 1.0, "ttf": {"mean_fs": ttf, "length_fs": 2000.0}}
        return row | ({"ttf_long": {"mean_fs": long, "length_fs": 20000.0}} if long is not None else {})

    def seed(loop_long: float | None) -> dict:
        return {"random": {20: result(1000.0, 4000.0)}, "loop": {20: result(2000.0, loop_long)},
                "ranking": {}, "rounds": {}, "calibration": {}}

    survival = lambda report: next((k, ok) for k, ok in bench.targets(report) if "survives" in k)  # noqa: E731
    text, ok = survival({"labels": [20], "seeds": [seed(9000.0), seed(7000.0)]})
    assert ok and "over 20 ps (8000 vs 4000 fs)" in text
    text, ok = survival({"labels": [20], "seeds": [seed(None), seed(None)]})  # the loop has no long run: 2 ps
    assert ok and "over 2 ps (2000 vs 1000 fs)" in text


def test_members_for_inverts_spearman_brown(bench):
    single = 0.1  # one member's reliability; four members: R = 4r / (1 + 3r)
    ratio = np.sqrt(4 * single / (1 + 3 * single))
    assert bench.members_for(ratio, 4) == pytest.approx(0.81 * 0.9 / (single * 0.19))  # R = 0.81 needs ~38
    assert bench.members_for(0.9, 4) == pytest.approx(4.0)  # already at the target
    assert bench.members_for(0.9, 8) == pytest.approx(8.0)
    assert bench.members_for(-0.2, 4) is None and bench.members_for(0.5, None) is None


def test_the_ranking_target_compares_measured_and_ceiling_over_the_same_seeds(bench):
    def seed(measured: float, ceiling: float | None) -> dict:
        return {"ranking": {"committee": {"md_300K": [measured, ceiling], "members": 4}}, "rounds": {},
                "calibration": {}}

    report = {"labels": [], "seeds": [seed(0.5, 0.9), seed(-0.3, None)]}  # the second seed's halves disagree
    (text, ok), = [(k, v) for k, v in bench.targets(report) if "Spearman" in k]
    assert ok is False and "(0.50 vs 0.90, 1 of 2 seeds with a ceiling)" in text and "members would reach it" in text
    (text, ok), = [(k, v) for k, v in bench.targets({**report, "seeds": [seed(0.85, 0.9)]}) if "Spearman" in k]
    assert ok and "members" not in text


def test_the_provenance_line_quotes_arguments_with_spaces_so_the_command_copies(bench):
    line = bench.provenance(["--long-ttf-selections", "random", "loop, ceiling 0.6 eV/Å"])
    assert "--long-ttf-selections random 'loop, ceiling 0.6 eV/Å'`" in line
