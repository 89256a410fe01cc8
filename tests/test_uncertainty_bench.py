"""scripts/bench_uncertainty.py's learning tables: loops over several seeds are averaged round by
round, the target is judged on the means, and each cell shows the range over seeds."""

from __future__ import annotations

from pathlib import Path

from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_uncertainty.py"


def load_bench():
    return load_script(SCRIPT)


def curve(*maes: float) -> list[dict]:
    return [{"n_labels": 5 + 8 * r, "forces_mae_meV_per_A": mae, "max_std": 0.5,
             "labelled_energy_excess_eV": 0.5 if r < len(maes) - 1 else None} for r, mae in enumerate(maes)]


def test_mean_curve_averages_seeds_round_by_round_and_keeps_the_range():
    bench = load_bench()
    mean = bench.mean_curve([curve(300.0, 200.0, 100.0), curve(200.0, 100.0)])
    assert len(mean) == 2  # a seed with fewer finished rounds limits the curve
    assert mean[0] == {"n_labels": 5.0, "forces_mae_meV_per_A": 250.0, "min": 200.0, "max": 300.0,
                       "labelled_energy_excess_eV": 0.5}
    assert mean[1]["forces_mae_meV_per_A"] == 150.0


def learning_report(bench, loop_maes: list[tuple[float, ...]], random_maes: list[tuple[float, ...]]) -> dict:
    loops = {"loop": bench.mean_curve([curve(*m) for m in loop_maes]),
             "random": bench.mean_curve([curve(*m) for m in random_maes])}
    reached = [p["n_labels"] for p in loops["loop"] if p["forces_mae_meV_per_A"] <= loops["random"][-1]["forces_mae_meV_per_A"]]
    return {"calibration": {}, "learning": {"ethanol": {
        "selection": "uncertain", "seeds": list(range(len(loop_maes))), "curves": loops,
        "random_final_mae": loops["random"][-1]["forces_mae_meV_per_A"], "random_labels": loops["random"][-1]["n_labels"],
        "loop_labels_to_reach_random": min(reached) if reached else None}}}


def test_target_is_judged_on_the_mean_over_seeds():
    bench = load_bench()
    random = [(300.0, 200.0, 150.0, 100.0)] * 2  # 100 meV/Å at 29 labels: the loop needs it by 14
    # seed 0 alone reaches it at 13 labels; the mean over both seeds only at 29
    report = learning_report(bench, [(300.0, 90.0, 80.0, 70.0), (300.0, 200.0, 150.0, 110.0)], random)
    (text, ok), = bench.targets(report)
    assert not ok and "(29 labels)" in text and "at 29 labels" in text
    report = learning_report(bench, [(300.0, 90.0, 80.0, 70.0), (300.0, 100.0, 90.0, 80.0)], random)
    (text, ok), = bench.targets(report)
    assert ok and "(13 labels)" in text


def test_learning_table_shows_the_mean_and_the_range_over_seeds():
    bench = load_bench()
    report = learning_report(bench, [(300.0, 90.0), (310.0, 110.0)], [(300.0, 200.0), (300.0, 200.0)])
    report["machine"] = {"cpu": "test CPU", "cpu_count": 2, "torch": "2.13.0+cpu"}
    report.update(command="python scripts/bench_uncertainty.py", profile="full", settings={}, load_before=1.0,
                  load_after=1.0, wall_s=60.0, cpu_s=60.0)
    text = bench.markdown(report)
    assert "mean over seeds 0, 1 (range)" in text
    assert "| 13 | 100 (90–110) | 200 | – / – |" in text  # one value where the seeds agree; no picks after the last round


def test_ideal_spearman_is_high_for_spread_stds_and_near_zero_for_equal_ones():
    import numpy as np

    bench = load_bench()
    from molequi.models.uncertainty.evaluation import OutputErrors

    groups = np.repeat(np.arange(40), 27)  # 40 structures of 9 atoms × 3 components

    def errors(std):
        return OutputErrors(np.zeros_like(std), std, groups, "eV/Å", np.zeros_like(std))

    spread = np.repeat(np.geomspace(0.01, 1.0, 40), 27)
    assert bench.ideal_spearman(errors(spread), draws=20) > 0.95
    flat = np.full(40 * 27, 0.1)
    flat[::27] += 1e-9 * np.arange(40)  # ranks exist but the stds are the same
    assert abs(bench.ideal_spearman(errors(flat), draws=50)) < 0.1


def test_ceiling_values_name_a_trust_scope():
    import argparse

    import pytest

    bench = load_bench()
    assert bench.ceiling("1.0") == (1.0, "frame")
    assert bench.ceiling("0.6:trajectory") == (0.6, "trajectory")
    for bad in ("0.6:atom", "x", "-1", "0:trajectory"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.ceiling(bad)


def test_members_limit_recovers_the_spearman_of_noiseless_stds():
    import numpy as np
    from scipy.stats import spearmanr

    bench = load_bench()
    rng = np.random.default_rng(0)
    n = 4000
    truth = np.exp(rng.normal(0.0, 0.3, n))  # each structure's true error scale
    error = truth * np.exp(rng.normal(0.0, 0.2, n))  # its measured error: noisy around it
    half_a = truth * np.exp(rng.normal(0.0, 0.3, n))  # two half-committees' stds: noisier still
    half_b = truth * np.exp(rng.normal(0.0, 0.3, n))
    measured = spearmanr(error, half_a + half_b)[0]
    oracle = spearmanr(error, truth)[0]
    limit = bench.spearman_brown_limit(measured, spearmanr(half_a, half_b)[0])
    assert measured < oracle - 0.1  # the members' noise costs a lot here
    assert abs(limit - oracle) < 0.03
    assert bench.spearman_brown_limit(0.5, 0.0) is None and bench.spearman_brown_limit(0.9, 0.1) == 1.0


def test_members_limit_is_estimated_for_plain_committees_only(tmp_path):
    import numpy as np
    from ase.build import molecule
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from conftest import random_model
    from molequi.models import load_model, save_model
    from molequi.models.uncertainty.evaluation import committee_errors

    bench = load_bench()
    rng = np.random.default_rng(0)
    frames = []
    for k in range(8):  # ever more distorted: every member's spread grows with it, so the halves agree
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(0.0, 0.02 + 0.04 * k, atoms.positions.shape)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        frames.append(atoms)
    models = [load_model(save_model(random_model(l_max=1, num_layers=1, seed=s), tmp_path / f"m{s}.molequi"))
              for s in range(4)]
    limit = bench.members_limit_spearman(models, frames, committee_errors(models, frames)["forces"])
    assert limit is not None and -1.0 <= limit <= 1.0
    assert bench.members_limit_spearman(models[:3], frames, committee_errors(models[:3], frames)["forces"]) is None


def test_loop_specs_name_the_settings_of_each_loop():
    import argparse

    import pytest

    bench = load_bench()
    loop = bench.loop_spec("max_std=0.6,trust_scope=trajectory,md_from=labelled")
    assert loop == bench.Loop(max_std=0.6, trust_scope="trajectory", md_from="labelled")
    assert loop.folder(None) == "uncertain_max_std0.6_trajectory_from-labelled"
    assert bench.Loop(max_std=1.0).folder(None) == "uncertain_max_std1"  # the folders of earlier runs
    mean = bench.loop_spec("rank_by=mean,pool_factor=2")
    assert mean.folder([1000.0]) == "uncertain_T1000_pool2_rank-mean"
    # settings a loop ignores are held at their defaults: such loops are one loop, in one folder
    assert bench.Loop(trust_scope="trajectory") == bench.Loop()
    assert bench.Loop(selection="random", rank_by="mean", pool_factor=2, max_std=0.0) == bench.Loop(selection="random")
    assert bench.Loop(selection="clustered", rank_by="mean").folder(None) == "clustered_rank-mean"
    assert loop.flags() == ", --md-from labelled"  # molequi learn's default ceiling and scope
    assert bench.Loop(max_std=1.0).flags() == ", --max-std 1 eV/Å, --trust-scope frame"
    assert bench.Loop(selection="clustered", pool_factor=2).flags() == ", --max-std none, --selection clustered"
    oracle = bench.loop_spec("max_std=0.6,trust_scope=trajectory,rank_by=mean,oracle=1")
    assert oracle.folder(None) == "uncertain_max_std0.6_trajectory_rank-mean_oracle"
    assert oracle.flags().endswith("--rank-by mean, ranked by the true force error (oracle)")
    assert bench.Loop(selection="random", oracle=True) == bench.Loop(selection="random")  # random shares its loop
    for bad in ("max_std", "seed=1", "md_from=last", "max_std=-1", "pool_factor=x", "selection=random",
                "oracle=yes", "oracle=1"):  # the true error replaces the mean spread only
        with pytest.raises(argparse.ArgumentTypeError):
            bench.loop_spec(bad)


def test_true_error_loop_ranks_each_round_before_the_call_that_labels_it(tmp_path, monkeypatch):
    import dataclasses

    import pytest

    import molequi.learn as learn
    from molequi.learn import LearnSettings

    bench = load_bench()
    calls = []

    def run_learning(settings, start, folder, **kwargs):  # what each call leaves: its last round
        calls.append(("run", settings.rounds))
        (folder / f"round_{settings.rounds:03d}").mkdir(parents=True, exist_ok=True)
        return settings.rounds

    monkeypatch.setattr(learn, "run_learning", run_learning)
    monkeypatch.setattr(bench, "rank_by_true_error", lambda round_dir, labeler=None: calls.append(("rank", round_dir.name)))
    settings = LearnSettings(rounds=2, per_round=2, temperatures=[300.0], md_steps=10, rank_by="mean")
    assert bench.run_ranked_by_true_error(settings, ["start"], tmp_path / "loop") == 2
    assert calls == [("run", 0), ("rank", "round_000"), ("run", 1), ("rank", "round_001"), ("run", 2)]
    calls.clear()  # a rerun: calls that a later call followed are not made again (they cannot shrink --rounds)
    bench.run_ranked_by_true_error(settings, ["start"], tmp_path / "loop")
    assert calls == [("rank", "round_001"), ("run", 2)]
    with pytest.raises(ValueError, match="rank_by"):
        bench.run_ranked_by_true_error(dataclasses.replace(settings, rank_by="max"), ["start"], tmp_path / "other")


def test_true_error_ranking_replaces_the_mean_spread_once(tmp_path):
    import numpy as np
    from ase.build import molecule
    from ase.calculators.emt import EMT
    from ase.io import read, write

    from conftest import random_model
    from molequi.models import save_model
    from molequi.learn import predict_committee

    bench = load_bench()
    round_dir = tmp_path / "round_000"
    members = []
    for m in range(2):
        (round_dir / f"member_{m}").mkdir(parents=True)
        members.append(save_model(random_model(l_max=1, num_layers=1, seed=m), round_dir / f"member_{m}" / "model.molequi"))
    frames = []
    for k in range(3):
        atoms = molecule("CH3CH2OH")
        atoms.positions += np.random.default_rng(k).normal(0.0, 0.05 * (k + 1), atoms.positions.shape)
        atoms.info.update(std_max=0.3 + k, std_mean=0.1 * (k + 1), system=k, md_step=10)
        frames.append(atoms)
    write(round_dir / "candidates.extxyz", frames, format="extxyz")
    stored = read(round_dir / "candidates.extxyz", ":")
    prediction = predict_committee(members, stored)
    expected = []
    for atoms, forces in zip(stored, prediction.forces):
        atoms.calc = EMT()
        expected.append(np.linalg.norm(forces - atoms.get_forces(), axis=1).mean())

    bench.rank_by_true_error(round_dir, labeler=EMT())
    ranked = read(round_dir / "candidates.extxyz", ":")
    np.testing.assert_allclose([a.info["std_mean"] for a in ranked], expected, rtol=1e-5)
    np.testing.assert_allclose([a.info["spread_mean"] for a in ranked], [0.1, 0.2, 0.3])
    np.testing.assert_allclose([a.info["std_max"] for a in ranked], [0.3, 1.3, 2.3])  # the trust ceiling still reads the spread
    np.testing.assert_allclose([a.positions for a in ranked], [a.positions for a in stored])
    bench.rank_by_true_error(round_dir, labeler=None)  # ranked already: not again (no labeler needed)
    assert [a.info["std_mean"] for a in read(round_dir / "candidates.extxyz", ":")] == [a.info["std_mean"] for a in ranked]


def test_bootstrap_resample_draws_the_training_set_with_replacement_once(tmp_path):
    import numpy as np
    from ase.build import molecule
    from ase.io import read, write

    bench = load_bench()
    frames = []
    for k in range(20):
        atoms = molecule("CH3CH2OH")
        atoms.positions += np.random.default_rng(k).normal(0.0, 0.05, atoms.positions.shape)
        frames.append(atoms)
    source = tmp_path / "train.extxyz"
    write(source, frames)
    path = bench.bootstrap_resample(source, tmp_path / "boot" / "train_bootstrap_0.extxyz", seed=100)
    drawn = read(path, ":")
    originals = [a.positions.tobytes() for a in read(source, ":")]
    indices = [originals.index(a.positions.tobytes()) for a in drawn]  # every drawn frame is a training frame
    assert len(drawn) == 20 and len(set(indices)) < 20  # as many, some twice (with replacement)
    assert indices == np.random.default_rng(100).choice(20, 20, replace=True).tolist()
    other = read(bench.bootstrap_resample(source, tmp_path / "boot" / "train_bootstrap_1.extxyz", seed=101), ":")
    assert [a.positions.tobytes() for a in other] != [a.positions.tobytes() for a in drawn]
    stamp = path.stat().st_mtime_ns
    bench.bootstrap_resample(source, path, seed=100)
    assert path.stat().st_mtime_ns == stamp  # written once: a rerun trains on the same resample
