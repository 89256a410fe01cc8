"""Active learning (molequi learn): frame selection, labelers, the loop, its resume identity."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule

from molequi.cli.main import main
from molequi.errors import ConfigError, MolequiError
import molequi.learn as learn
from molequi.learn import labelers, selection
from molequi.learn import (
    LearnSettings,
    distance_descriptor,
    make_labeler,
    parse_labeler,
    run_learning,
    select_frames,
)

# --- selection ----------------------------------------------------------------------------------


def test_select_frames_without_pool_takes_the_most_uncertain():
    rng = np.random.default_rng(0)
    stds = rng.uniform(0.0, 1.0, 50)
    descriptors = list(rng.normal(size=(50, 6)))
    picked = select_frames(stds, descriptors, k=7, pool_factor=1)
    assert sorted(picked) == sorted(np.argsort(-stds)[:7].tolist())
    assert picked[0] == int(np.argmax(stds))


def test_select_frames_picks_diverse_frames_among_the_uncertain():
    rng = np.random.default_rng(1)
    stds = rng.uniform(0.0, 1.0, 40)
    descriptors = [rng.normal(size=4) for _ in range(40)]
    top = np.argsort(-stds)
    # the second most uncertain frame is a copy of the first: diversity must skip it
    descriptors[top[1]] = descriptors[top[0]].copy()
    picked = select_frames(stds, descriptors, k=4, pool_factor=3)
    assert picked[0] == top[0]
    assert set(picked) <= set(top[:12].tolist())  # only from the pool of the 12 most uncertain
    assert top[1] not in picked[:4]
    assert len(picked) == 12  # the whole pool in pick order (fallbacks when a label fails)


def test_select_frames_ignores_non_finite_and_keeps_different_sizes_apart():
    stds = np.array([np.nan, 0.5, 0.4, np.inf, 0.3])
    descriptors = [np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(6)]
    picked = select_frames(stds, descriptors, k=2, pool_factor=2)
    assert picked[:2] == [1, 4]  # frame 4 is another molecule: infinitely far from frame 1
    assert 0 not in picked and 3 not in picked


def test_distance_descriptor_is_invariant():
    atoms = molecule("CH3CH2OH")
    moved = atoms.copy()
    moved.rotate(40.0, "z")
    moved.translate([1.0, -2.0, 0.5])
    moved = moved[np.random.default_rng(0).permutation(len(moved))]
    np.testing.assert_allclose(distance_descriptor(atoms), distance_descriptor(moved), atol=1e-10)


# --- labelers -----------------------------------------------------------------------------------


def test_parse_labeler():
    assert parse_labeler("xtb") is None
    assert parse_labeler("ase.calculators.emt:EMT") == ("ase.calculators.emt", "EMT")
    for bad in ("emt", "mod:", ":Calc", "a b:Calc", "mod:Calc()", "mod:Calc:x"):
        with pytest.raises(ConfigError, match="module:Class"):
            parse_labeler(bad)


def test_make_labeler_module_class():
    from ase.calculators.emt import EMT

    calculator = make_labeler("ase.calculators.emt:EMT", {})
    assert isinstance(calculator, EMT)
    with pytest.raises(MolequiError, match="cannot import module"):
        make_labeler("no_such_module_xyz:Calc")
    with pytest.raises(MolequiError, match="has no attribute 'Nope'"):
        make_labeler("ase.calculators.emt:Nope")
    with pytest.raises(MolequiError, match="bad --labeler-kwargs"):
        make_labeler("ase.calculators.singlepoint:SinglePointCalculator", {"no_atoms": 1})
    with pytest.raises(MolequiError, match="not an ASE calculator"):
        make_labeler("collections:OrderedDict")


def test_missing_tblite_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tblite.ase", None)  # import fails as if not installed
    with pytest.raises(MolequiError, match="pip install tblite"):
        make_labeler("xtb")
    assert main(["learn", "--start", "CH3CH2OH", "--out", str(tmp_path / "run")]) == 2
    assert "pip install tblite" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written


def test_cli_bad_options_are_one_line_errors(tmp_path, capsys):
    assert main(["learn", "--start", "CH3CH2OH", "--out", str(tmp_path / "a"), "--labeler", "nonsense"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main(["learn", "--start", "CH3CH2OH", "--out", str(tmp_path / "b"), "--labeler-kwargs", "[1]"]) == 2
    assert "JSON object" in capsys.readouterr().err
    assert main(["learn", "--start", "CH3CH2OH", "--out", str(tmp_path / "c"), "--committee", "1"]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["learn", "--start", "CH3CH2OH", "--out", str(tmp_path / "c"), "--ensemble-heads", "1"]) == 2
    assert "--ensemble-heads must be 0" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


# --- the loop -----------------------------------------------------------------------------------

SETTINGS = dict(rounds=2, per_round=3, temperatures=[300.0, 800.0], md_steps=20, committee=2,
                perturbed=3, replicas=1, sample_every=5, pool_factor=1, seed=0, max_std=None)


def _config():
    from molequi.training import load_config

    return load_config(None, {
        "max_epochs": 3, "validation": 1, "device": "cpu", "progress": False, "batch_size": 4,
        "model.channels": 8, "model.num_layers": 1, "model.radial_hidden": [8], "model.readout_hidden": 8,
    })


@pytest.fixture(scope="module")
def test_file(tmp_path_factory):
    pytest.importorskip("tblite")
    from ase.io import write

    calculator = make_labeler("xtb")
    rng = np.random.default_rng(5)
    frames = []
    for _ in range(6):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        frames.append(learn.label_structure(atoms, calculator))
    path = tmp_path_factory.mktemp("learn_test") / "test.extxyz"
    write(path, frames)
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, test_file):
    out = tmp_path_factory.mktemp("learn") / "run"
    result = run_learning(LearnSettings(**SETTINGS), ["CH3CH2OH"], out, config=_config(), test_data=[test_file],
                          log=lambda message: None)
    return out, result


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "rounds.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_loop_rows_labels_and_selection(finished):
    from ase.io import read

    out, result = finished
    rows = _rows(out)
    assert [int(row["round"]) for row in rows] == [0, 1, 2]
    assert [int(row["n_labels"]) for row in rows] == [4, 7, 10]  # 1 start + 3 perturbed, then +3 a round
    assert [int(row["n_new"]) for row in rows] == [3, 3, 0]
    for row in rows:
        assert float(row["max_std"]) >= float(row["mean_std"]) > 0.0
        assert 0.0 < float(row["test_forces_mae_meV_per_A"]) < 1e5
    assert (out / "rounds.png").stat().st_size > 1000
    assert len(result.models) == 2 and all(Path(m).is_file() for m in result.models)
    # with pool_factor 1 the labelled frames are exactly the three most uncertain MD frames
    candidates = read(out / "round_000" / "candidates.extxyz", ":")
    labelled = read(out / "round_000" / "labelled.extxyz", ":")
    stds = np.array([a.info["std_max"] for a in candidates])
    assert sorted(int(a.info["candidate"]) for a in labelled) == sorted(np.argsort(-stds)[:3].tolist())
    # the stored labels are GFN2-xTB's at the stored positions
    atoms = labelled[0].copy()
    atoms.calc = make_labeler("xtb")
    np.testing.assert_allclose(atoms.get_forces(), labelled[0].get_forces(), atol=1e-6)
    # round 1 starts from round 0's weights: a warm start keeps the members close to them
    train_set = read(out / "round_001" / "train.extxyz", ":")
    assert len(train_set) == 7


@pytest.mark.slow
def test_resume_after_interruptions_gives_the_same_rounds(finished, test_file, tmp_path, monkeypatch):
    import molequi.training as training

    out_ref, _ = finished
    out = tmp_path / "run"
    settings = LearnSettings(**SETTINGS)

    real_train = training.train
    trained = []

    def train_then_die(config, data, out_dir, **kwargs):  # killed before round 1's second member
        if "round_001" in str(out_dir) and "member_1" in str(out_dir):
            raise KeyboardInterrupt
        trained.append(str(out_dir))
        return real_train(config, data, out_dir, **kwargs)

    monkeypatch.setattr(training, "train", train_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_learning(settings, ["CH3CH2OH"], out, config=_config(), test_data=[test_file], log=lambda m: None)
    monkeypatch.setattr(training, "train", real_train)
    assert not (out / "round_001" / "round.json").exists()

    real_label = learn.label_structure
    calls = []

    def label_then_die(atoms, calculator):  # killed after the first label of round 1
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real_label(atoms, calculator)

    monkeypatch.setattr(labelers, "label_structure", label_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_learning(settings, ["CH3CH2OH"], out, config=_config(), test_data=[test_file], log=lambda m: None)
    monkeypatch.setattr(labelers, "label_structure", real_label)
    assert len(calls) == 1 and (out / "round_001" / "labelled.partial.extxyz").exists()

    messages = []
    run_learning(settings, ["CH3CH2OH"], out, config=_config(), test_data=[test_file], log=messages.append)
    assert messages[0].startswith("continuing the learning run")
    assert (out / "rounds.csv").read_text() == (out_ref / "rounds.csv").read_text()


@pytest.mark.slow
def test_rerun_with_other_inputs_is_refused(finished, test_file, tmp_path):
    out_ref, _ = finished
    out = tmp_path / "copy"
    shutil.copytree(out_ref, out)
    changed = LearnSettings(**{**SETTINGS, "per_round": 5})
    with pytest.raises(ConfigError, match=r"per_round 3 -> 5"):
        run_learning(changed, ["CH3CH2OH"], out, config=_config(), test_data=[test_file], log=lambda m: None)
    with pytest.raises(ConfigError, match="start structures"):
        run_learning(LearnSettings(**SETTINGS), ["CH3CHO"], out, config=_config(), test_data=[test_file],
                     log=lambda m: None)
    with pytest.raises(ConfigError, match="test data"):
        run_learning(LearnSettings(**SETTINGS), ["CH3CH2OH"], out, config=_config(), log=lambda m: None)
    from molequi.training import load_config

    other = load_config(None, {**_config().to_dict(), "learning_rate": 0.5})
    with pytest.raises(ConfigError, match="learning_rate"):
        run_learning(LearnSettings(**SETTINGS), ["CH3CH2OH"], out, config=other, test_data=[test_file],
                     log=lambda m: None)
    # a finished run rerun unchanged does nothing new; more rounds would extend it
    run_learning(LearnSettings(**SETTINGS), ["CH3CH2OH"], out, config=_config(), test_data=[test_file],
                 log=lambda m: None)
    assert (out / "rounds.csv").read_text() == (out_ref / "rounds.csv").read_text()
    assert json.loads((out / "learn.json").read_text())["settings"]["rounds"] == 2
    # more rounds continue the finished run: its last round now labels, one more round trains
    longer = LearnSettings(**{**SETTINGS, "rounds": 3})
    result = run_learning(longer, ["CH3CH2OH"], out, config=_config(), test_data=[test_file], log=lambda m: None)
    assert [row["n_labels"] for row in result.rows] == [4, 7, 10, 13]
    assert [row["n_new"] for row in result.rows] == [3, 3, 3, 0]
    assert _rows(out)[:2] == _rows(out_ref)[:2]
    with pytest.raises(ConfigError, match="cannot shrink"):
        run_learning(LearnSettings(**SETTINGS), ["CH3CH2OH"], out, config=_config(), test_data=[test_file],
                     log=lambda m: None)


def test_unrelated_directory_is_refused(tmp_path):
    (tmp_path / "something.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a molequi learn run"):
        run_learning(LearnSettings(**SETTINGS), ["CH3CH2OH"], tmp_path, config=_config(), log=lambda m: None)


@pytest.mark.slow
def test_loop_with_one_shallow_ensemble(tmp_path, test_file):
    from molequi.models import load_model

    settings = LearnSettings(**{**SETTINGS, "rounds": 1, "committee": 1, "ensemble_heads": 3})
    result = run_learning(settings, ["CH3CH2OH"], tmp_path / "run", config=_config(), test_data=[test_file],
                          log=lambda m: None)
    assert [row["n_labels"] for row in result.rows] == [4, 7]
    assert all(row["max_std"] > 0 for row in result.rows)
    assert len(result.models) == 1 and load_model(result.models[0]).model.config.ensemble_heads == 3


def test_rerun_accepts_settings_added_since_at_their_defaults(tmp_path):
    out = tmp_path / "run"
    settings = LearnSettings(**SETTINGS)
    identity = {"format": learn.FORMAT, "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "selection"},
                "training": {k: v for k, v in _config().to_dict().items() if k not in learn.IGNORED_TRAINING_KEYS},
                "start_sha256": "x", "test_sha256": None}
    identity["training"]["model"] = {k: v for k, v in identity["training"]["model"].items() if k != "ensemble_heads"}
    out.mkdir()
    (out / "learn.json").write_text(json.dumps(identity))
    # the saved run predates 'selection' and 'model.ensemble_heads': only the start structures differ
    with pytest.raises(ConfigError) as error:
        run_learning(settings, ["CH3CH2OH"], out, config=_config(), log=lambda m: None)
    assert "start structures" in str(error.value) and "selection" not in str(error.value)
    assert "ensemble_heads" not in str(error.value)


@pytest.mark.parametrize("selection", ["uncertain", "random"])
def test_trust_ceiling_keeps_wild_frames_out(tmp_path, selection):
    from ase.calculators.emt import EMT

    candidates = []
    for k, std in enumerate([0.1, 5.0, 0.3, 0.2, 9.0, 0.05]):
        atoms = molecule("CH3CH2OH")
        atoms.positions += np.random.default_rng(k).normal(0.0, 0.05, atoms.positions.shape)
        atoms.info["std_max"] = std
        candidates.append(atoms)
    settings = LearnSettings(**{**SETTINGS, "per_round": 3, "max_std": 1.0, "selection": selection})
    round_dir = tmp_path / "round_000"
    round_dir.mkdir()
    assert labelers.label_round(round_dir, candidates, settings, EMT, lambda m: None) == 3
    from ase.io import read

    picked = {int(a.info["candidate"]) for a in read(round_dir / "labelled.extxyz", ":")}
    assert not picked & {1, 4} and len(picked) == 3
    if selection == "uncertain":
        assert picked == {0, 2, 3}


def test_a_round_wholly_beyond_the_ceiling_labels_without_it(tmp_path):
    """The default ceiling must not stall a loop whose committee is still wild everywhere."""
    from ase.calculators.emt import EMT
    from ase.io import read

    candidates = []
    for k, std in enumerate([2.0, 5.0, 3.0, 9.0]):
        atoms = molecule("CH3CH2OH")
        atoms.positions += np.random.default_rng(k).normal(0.0, 0.05, atoms.positions.shape)
        atoms.info["std_max"] = std
        candidates.append(atoms)
    said = []
    settings = LearnSettings(**{**SETTINGS, "per_round": 2, "max_std": 1.0})
    round_dir = tmp_path / "round_000"
    round_dir.mkdir()
    assert labelers.label_round(round_dir, candidates, settings, EMT, said.append) == 2
    assert {int(a.info["candidate"]) for a in read(round_dir / "labelled.extxyz", ":")} == {1, 3}
    assert any("beyond the trust ceiling" in line for line in said)


def test_the_default_trust_ceiling_and_how_the_cli_turns_it_off():
    import argparse

    from molequi.cli.learn import add_arguments, ceiling_settings
    from molequi.learn.settings import DEFAULT_MAX_STD

    settings = LearnSettings(rounds=1, per_round=2, temperatures=[300.0], md_steps=10)
    assert settings.max_std == DEFAULT_MAX_STD and settings.trust_scope == "trajectory"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    action = next(action for action in parser._actions if action.dest == "max_std")
    assert f"default {DEFAULT_MAX_STD:g}" in action.help
    given = lambda *flags: ceiling_settings(parser.parse_args(["--start", "x", "--out", "o", *flags]).max_std)
    assert given() == {} and given("--max-std", "none") == {"max_std": None}
    assert given("--max-std", "0.4") == {"max_std": 0.4}
    with pytest.raises(SystemExit):
        given("--max-std", "wild")


def test_clustered_pick_labels_every_region_the_md_visited():
    rng = np.random.default_rng(3)
    centres = [np.zeros(4), np.full(4, 10.0), np.full(4, -10.0)]
    descriptors = [centres[f % 3] + rng.normal(scale=0.1, size=4) for f in range(60)]
    stds = rng.uniform(0.0, 0.2, 60)
    stds[[f for f in range(60) if f % 3 == 0]] += 1.0  # the first region is the most uncertain
    picked = learn.select_clustered(stds, descriptors, k=3, seed=0)
    assert sorted(f % 3 for f in picked[:3]) == [0, 1, 2]  # one frame from each region
    for f in picked[:3]:  # the most uncertain of its region
        assert stds[f] == max(stds[g] for g in range(60) if g % 3 == f % 3)
    assert len(picked) == 60 and len(set(picked)) == 60  # then every other frame, as fallbacks
    # the uncertain pick without diversity spends every label on the first region
    assert {f % 3 for f in select_frames(stds, descriptors, k=3, pool_factor=1)[:3]} == {0}


def test_clustered_pick_skips_non_finite_and_shares_clusters_between_sizes():
    stds = np.array([0.5, np.nan, 0.4, 0.3, np.inf, 0.9, 0.8])
    descriptors = [np.zeros(3), np.zeros(3), np.ones(3), np.full(3, 2.0), np.zeros(3), np.zeros(6), np.ones(6)]
    picked = learn.select_clustered(stds, descriptors, k=2, seed=0)
    assert 1 not in picked and 4 not in picked
    assert {len(descriptors[f]) for f in picked[:2]} == {3, 6}  # one cluster for each size
    assert selection._cluster_shares([30, 10], 4) == [3, 1]
    assert selection._cluster_shares([30, 10, 5], 2) == [1, 1, 0]


def test_cli_offers_every_selection_of_the_loop():
    import argparse

    from molequi.cli.learn import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    choices = next(action.choices for action in parser._actions if action.dest == "selection")
    assert tuple(choices) == learn.SELECTIONS
    scopes = next(action.choices for action in parser._actions if action.dest == "trust_scope")
    assert tuple(scopes) == learn.TRUST_SCOPES
    starts = next(action.choices for action in parser._actions if action.dest == "md_from")
    assert tuple(starts) == learn.MD_STARTS
    rankings = next(action.choices for action in parser._actions if action.dest == "rank_by")
    assert tuple(rankings) == learn.RANKINGS


def test_trajectory_scope_rules_out_a_trajectory_from_its_first_frame_over_the_ceiling():
    stds = np.array([0.2, 1.5, 0.3, 0.4, 0.2, 0.3, np.nan, 0.1])
    systems = [0, 0, 0, 0, 1, 1, 1, 2]
    steps = [10, 20, 30, 40, 10, 20, 30, 10]
    frame = learn.beyond_ceiling(stds, systems, steps, 1.0, "frame")
    assert frame.tolist() == [False, True, False, False, False, False, True, False]
    trajectory = learn.beyond_ceiling(stds, systems, steps, 1.0, "trajectory")
    # system 0 crossed at step 20: its frames at 30 and 40 go too, though under the ceiling
    assert trajectory.tolist() == [False, True, True, True, False, False, True, False]
    # order within a trajectory is the MD step, not the position in the list
    shuffled = learn.beyond_ceiling(stds[::-1], systems[::-1], steps[::-1], 1.0, "trajectory")
    assert shuffled.tolist() == trajectory.tolist()[::-1]


def test_trajectory_scope_labels_only_frames_before_the_crossing(tmp_path):
    from ase.calculators.emt import EMT
    from ase.io import read

    candidates = []
    for k, std in enumerate([0.1, 5.0, 0.9, 0.8, 0.3, 0.2]):
        atoms = molecule("CH3CH2OH")
        atoms.positions += np.random.default_rng(k).normal(0.0, 0.05, atoms.positions.shape)
        atoms.info.update(std_max=std, system=0 if k < 4 else 1, md_step=10 * (k % 4 + 1))
        candidates.append(atoms)
    settings = LearnSettings(**{**SETTINGS, "per_round": 2, "max_std": 1.0, "trust_scope": "trajectory",
                                "pool_factor": 1})
    round_dir = tmp_path / "round_000"
    round_dir.mkdir()
    assert labelers.label_round(round_dir, candidates, settings, EMT, lambda m: None) == 2
    picked = {int(a.info["candidate"]) for a in read(round_dir / "labelled.extxyz", ":")}
    assert picked == {4, 5}  # the most uncertain allowed; never 2 or 3, though more uncertain and under the ceiling


def test_md_seeds_follow_the_previous_round_labels_only_when_asked(tmp_path):
    from ase.io import write

    start = [molecule("CH3CH2OH")]
    picks = [molecule("CH3CH2OH") for _ in range(3)]
    for k, atoms in enumerate(picks):
        atoms.positions += 0.01 * (k + 1)
    (tmp_path / "round_000").mkdir()
    write(tmp_path / "round_000" / "labelled.extxyz", picks)
    (tmp_path / "round_001").mkdir()
    write(tmp_path / "round_001" / "labelled.extxyz", [])
    labelled = LearnSettings(**{**SETTINGS, "md_from": "labelled", "replicas": 2})
    seeds, replicas = learn.md_seeds(1, labelled, tmp_path, start)
    assert replicas == 1 and len(seeds) == 3
    np.testing.assert_allclose(seeds[2].positions, picks[2].positions)
    assert learn.md_seeds(0, labelled, tmp_path, start) == (start, 2)  # round 0: the start structures
    assert learn.md_seeds(2, labelled, tmp_path, start) == (start, 2)  # round 1 labelled nothing
    assert learn.md_seeds(1, LearnSettings(**{**SETTINGS, "replicas": 2}), tmp_path, start) == (start, 2)
    with pytest.raises(ConfigError, match="--md-from"):
        LearnSettings(**{**SETTINGS, "md_from": "last"}).validate()


def test_md_seeds_from_rotamers_turn_each_replica_and_repeat_per_round(tmp_path):
    from molequi.md.torsions import rotatable_bonds

    start = [molecule("CH3CH2OH")]
    rotamers = LearnSettings(**{**SETTINGS, "md_from": "rotamers", "replicas": 3})
    seeds, replicas = learn.md_seeds(0, rotamers, tmp_path, start)
    assert replicas == 1 and len(seeds) == 3  # one system per rotamer and temperature
    bonds = rotatable_bonds(start[0])
    angles = np.array([[atoms.get_dihedral(b.a, b.i, b.j, b.d) for b in bonds] for atoms in seeds])
    assert len({tuple(np.round(row)) for row in angles}) == 3  # three different rotamers
    again, _ = learn.md_seeds(0, rotamers, tmp_path, start)
    np.testing.assert_allclose(again[1].positions, seeds[1].positions)  # a rerun of the round draws the same
    later, _ = learn.md_seeds(1, rotamers, tmp_path, start)
    assert not np.allclose(later[0].positions, seeds[0].positions)  # each round draws anew


@pytest.mark.slow
def test_loop_md_from_labelled_runs_one_system_per_pick_and_temperature(tmp_path, test_file):
    from ase.io import read

    settings = LearnSettings(**{**SETTINGS, "rounds": 1, "md_from": "labelled"})
    out = tmp_path / "run"
    run_learning(settings, ["CH3CH2OH"], out, config=_config(), test_data=[test_file], log=lambda m: None)
    labelled = read(out / "round_000" / "labelled.extxyz", ":")
    candidates = read(out / "round_001" / "candidates.extxyz", ":")
    systems = {int(a.info["system"]) for a in candidates}
    assert len(systems) == len(labelled) * len(settings.temperatures)
    # each system's first recorded frame lies near the pick it started from (a few MD steps on)
    for system in systems:
        first = min((a for a in candidates if int(a.info["system"]) == system), key=lambda a: a.info["md_step"])
        nearest = min(np.abs(first.positions - pick.positions).max() for pick in labelled)
        assert nearest < 0.3


def test_a_round_that_labels_nothing_is_read_back_as_empty(tmp_path):
    from ase.calculators.emt import EMT

    settings = LearnSettings(**{**SETTINGS, "max_std": 1.0})
    round_dir = tmp_path / "round_000"
    round_dir.mkdir()
    assert labelers.label_round(round_dir, [], settings, EMT, lambda m: None) == 0  # the MD gave no frame
    # rerun (resume) and the next round's training set read the empty file back
    assert labelers.label_round(round_dir, [], settings, EMT, lambda m: None) == 0
    assert learn.read_labelled(round_dir / "labelled.extxyz") == []


@pytest.mark.parametrize("rank_by", ["max", "mean"])
def test_rank_by_picks_by_the_largest_or_the_mean_spread_under_the_largest_ceiling(tmp_path, rank_by):
    from ase.calculators.emt import EMT
    from ase.io import read

    spreads = [(0.5, 0.05), (0.3, 0.25), (0.2, 0.1), (2.0, 0.9)]  # (largest, mean) per frame
    candidates = []
    for k, (largest, mean) in enumerate(spreads):
        atoms = molecule("CH3CH2OH")
        atoms.positions += np.random.default_rng(k).normal(0.0, 0.05, atoms.positions.shape)
        atoms.info.update(std_max=largest, std_mean=mean)
        candidates.append(atoms)
    settings = LearnSettings(**{**SETTINGS, "per_round": 1, "max_std": 1.0, "rank_by": rank_by})
    round_dir = tmp_path / "round_000"
    round_dir.mkdir()
    labelers.label_round(round_dir, candidates, settings, EMT, lambda m: None)
    (picked,) = [int(a.info["candidate"]) for a in read(round_dir / "labelled.extxyz", ":")]
    assert picked == {"max": 0, "mean": 1}[rank_by]  # frame 3 leads both but is over the ceiling


def test_members_train_on_the_far_frames_the_loop_picks():
    """The frames a round labels lie far from the others by design: a member's training must not
    refuse them as unit mix-ups."""
    from molequi.learn.loop import _member_config
    from molequi.training import TrainingConfig

    config = _member_config(TrainingConfig(), LearnSettings(**SETTINGS), r=1, m=0, n_labels=7)
    assert config.allow_outliers and not TrainingConfig().allow_outliers


def test_loop_starts_from_a_model(tmp_path, test_file):
    """--init: round 0's members start from the given model, with its architecture and its
    normalisation (not those a fresh fit to the few start labels would give); a missing file or
    other heads are one-line errors; a rerun with another initial model is refused."""
    from molequi.models.io import read_config
    from molequi.training import load_config, train

    base = load_config(None, {"max_epochs": 2, "validation": 1, "device": "cpu", "progress": False, "batch_size": 4,
                              "model.channels": 12, "model.num_layers": 1, "model.radial_hidden": [8],
                              "model.readout_hidden": 8})
    train(base, str(test_file), tmp_path / "base", log=lambda m: None)
    model = tmp_path / "base" / "model.molequi"
    settings = LearnSettings(**{**SETTINGS, "rounds": 1, "init": str(model)})  # round 1 fine-tunes round 0
    result = run_learning(settings, ["CH3CH2OH"], tmp_path / "run", config=_config(), log=lambda m: None)
    member, initial = read_config(result.models[0]), read_config(model)
    assert member.channels == 12 and member.energy_scale == initial.energy_scale
    assert member.avg_num_neighbors == initial.avg_num_neighbors  # the model's normalisation, not the start labels'
    import yaml

    used = yaml.safe_load((tmp_path / "run" / "round_001" / "member_0" / "config.yaml").read_text())
    assert used["init"].endswith("round_000/member_0/model.molequi") and used["anchor"] == 0.0
    with pytest.raises(ConfigError, match="no such model file"):
        run_learning(LearnSettings(**{**SETTINGS, "init": str(tmp_path / "none.molequi")}), ["CH3CH2OH"],
                     tmp_path / "x", config=_config(), log=lambda m: None)
    with pytest.raises(ConfigError, match="differs from the 1 head"):
        run_learning(LearnSettings(**{**SETTINGS, "init": str(model), "ensemble_heads": 3}), ["CH3CH2OH"],
                     tmp_path / "y", config=_config(), log=lambda m: None)
    other = dataclasses.replace(base, seed=1)
    train(other, str(test_file), tmp_path / "base", log=lambda m: None, overwrite=True)  # other weights, same path
    with pytest.raises(ConfigError, match="--init model"):
        run_learning(settings, ["CH3CH2OH"], tmp_path / "run", config=_config(), log=lambda m: None)


def test_composition_offsets_are_robust_medians():
    from molequi.learn.energies import composition_offsets

    counts = np.array([[6, 2, 1]] * 5 + [[4, 2, 0]] * 3, dtype=float)  # ethanol, ethylene (H, C, O)
    residuals = np.array([1.0, 1.0, 1.0, 1.0, 50.0, -2.0, -2.0, -2.0])  # one wild frame
    delta = composition_offsets(residuals, counts)
    np.testing.assert_allclose(counts[[0, 5]] @ delta, [1.0, -2.0], atol=1e-9)
    # high-energy picks are half of the labels: only the lower half in energy sets the offset
    residuals, energies = np.array([1.0, 1.0, 9.0, 9.0]), np.array([0.0, 0.1, 20.0, 25.0])
    delta = composition_offsets(residuals, counts[:4], energies)
    assert counts[0] @ delta == pytest.approx(1.0)


def test_refit_reference_energies_removes_the_offset_and_keeps_forces(tmp_path):
    """The refit sets the median energy error on the labelled structures to zero by moving the
    E0s only: forces are unchanged, the header's extra is kept and a second refit does nothing."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from conftest import random_model
    from molequi.learn.energies import refit_reference_energies
    from molequi.models import load_model, predict, read_header, save_model

    path = save_model(random_model(l_max=1, num_layers=1, seed=0), tmp_path / "m.molequi", extra={"minutes": 1.5})
    before = load_model(path)
    rng = np.random.default_rng(0)
    structures = []
    for k in range(5):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        energy = predict(before, atoms)["energy"] + 3.0 + (40.0 if k == 4 else 0.0)  # k = 4: far above
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.zeros((len(atoms), 3)))
        structures.append(atoms)
    change = refit_reference_energies(path, structures)
    assert change == pytest.approx(3.0, abs=1e-6)  # the frame far above does not move it
    after = load_model(path)
    new, old = predict(after, structures[0]), predict(before, structures[0])
    assert new["energy"] - old["energy"] == pytest.approx(3.0, abs=1e-6)
    np.testing.assert_allclose(new["forces"], old["forces"], atol=1e-6)
    assert read_header(path)["extra"] == {"minutes": 1.5}
    assert refit_reference_energies(path, structures) == 0.0


def test_md_frames_carry_the_calibrated_sigma_and_the_domain_verdict():
    from ase import Atoms

    from molequi.learn.domain import calibration_columns, mark_domain
    from molequi.models.uncertainty import Calibration, Fit

    calibration = Calibration({"forces": Fit("scale", 2.0), "energy": Fit("scale", 1.0)},
                              {"domain": {"threshold": 1.0},
                               "outputs": {"forces": {"spearman": 0.6, "warnings": []},
                                           "energy": {"spearman": 0.1, "warnings": ["the fitted power law is flat"]}}})
    frames = [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], info={"std_max": s}) for s in (0.2, 0.49, 0.8)]
    assert mark_domain(frames, calibration) == 1
    assert [a.info["sigma_forces"] for a in frames] == pytest.approx([0.4, 0.98, 1.6])
    assert [a.info["in_domain"] for a in frames] == [1, 1, 0]
    assert calibration_columns(calibration) == {"energy_spearman": 0.1, "energy_calibration_fallback": 1,
                                                "forces_spearman": 0.6, "forces_calibration_fallback": 0,
                                                "domain_threshold": 1.0}


def test_cli_init_fine_tunes_at_the_fine_tuning_learning_rate(tmp_path, monkeypatch):
    """`molequi learn --init` trains its members as `molequi train --init` would: at the
    fine-tuning learning rate unless --lr says otherwise, and refuses another architecture."""
    import molequi.learn
    from molequi.training.finetune import FINE_TUNE_LEARNING_RATE

    configs = []
    monkeypatch.setattr(molequi.learn, "run_learning",
                        lambda settings, starts, out, config, test_data: configs.append((settings, config))
                        or molequi.learn.LearnResult(out, [], []))
    start = tmp_path / "start.xyz"
    start.write_text("3\n\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n")
    command = ["learn", "--start", str(start), "--init", "organic-xtb", "--rounds", "1"]
    assert main([*command, "--out", str(tmp_path / "a")]) == 0
    assert main([*command, "--out", str(tmp_path / "b"), "--lr", "0.01"]) == 0
    (settings, tuned), (_, chosen) = configs
    assert settings.init == "organic-xtb" and tuned.init is None  # the loop sets each member's own init
    assert tuned.learning_rate == FINE_TUNE_LEARNING_RATE and chosen.learning_rate == 0.01
    assert main([*command, "--out", str(tmp_path / "c"), "--channels", "8"]) == 2  # not the model's 64 channels


def test_python_loop_from_a_model_fine_tunes_at_the_fine_tuning_learning_rate(tmp_path, monkeypatch):
    """run_learning(LearnSettings(init=...)) without a config trains its members at the
    fine-tuning learning rate, as the command line does; without init at the from-scratch one."""
    import molequi.learn.loop as loop
    from molequi.learn import LearnSettings, run_learning
    from molequi.training import TrainingConfig
    from molequi.training.finetune import FINE_TUNE_LEARNING_RATE

    seen = []

    def first_round(r, settings, config, *args, **kwargs):
        seen.append(config.learning_rate)
        raise StopIteration  # enough: the members' settings are known before anything trains

    monkeypatch.setattr(loop, "_run_round", first_round)
    starts = []  # labelled: a loop of no rounds labels nothing (this also checks labelled starts are read)
    for k in range(2):
        water = molecule("H2O")
        water.positions[0, 0] += 0.05 * k
        water.info["energy"] = -1.0 - k
        water.arrays["forces"] = np.zeros((3, 3))
        starts.append(water)
    for k, init in enumerate(("organic-xtb", None)):
        with pytest.raises(StopIteration):
            settings = LearnSettings(rounds=0, per_round=1, temperatures=[300.0], md_steps=10, init=init,
                                     committee=1 if init else 2)
            run_learning(settings, starts, tmp_path / str(k))
    assert seen == [FINE_TUNE_LEARNING_RATE, TrainingConfig().learning_rate]
    assert FINE_TUNE_LEARNING_RATE < TrainingConfig().learning_rate


def test_one_member_of_a_model_with_heads_is_its_own_committee(tmp_path, test_file):
    """--init a shallow ensemble with --committee 1: its heads give the spread (no --ensemble-heads
    needed); one member of a single-head model has no spread and is refused in one line."""
    from molequi.training import load_config, train

    small = {"max_epochs": 1, "validation": 1, "device": "cpu", "progress": False, "batch_size": 4,
             "model.channels": 8, "model.num_layers": 1, "model.radial_hidden": [8], "model.readout_hidden": 8}
    train(load_config(None, {**small, "model.ensemble_heads": 2}), str(test_file), tmp_path / "heads",
          log=lambda m: None)
    train(load_config(None, small), str(test_file), tmp_path / "plain", log=lambda m: None)
    one = {**SETTINGS, "rounds": 0, "committee": 1}
    with pytest.raises(ConfigError, match="has one head"):
        run_learning(LearnSettings(**{**one, "init": str(tmp_path / "plain" / "model.molequi")}), ["CH3CH2OH"],
                     tmp_path / "a", config=_config(), log=lambda m: None)
    with pytest.raises(ConfigError, match="at least two members"):
        LearnSettings(**one).validate()  # from scratch, one single-head member stays refused up front
    result = run_learning(LearnSettings(**{**one, "init": str(tmp_path / "heads" / "model.molequi")}), ["CH3CH2OH"],
                          tmp_path / "b", config=_config(), log=lambda m: None)
    assert len(result.models) == 1 and result.rows[0]["n_labels"] >= 1


def test_an_anchored_round_pulls_towards_the_init_model_not_the_last_round(tmp_path):
    from molequi.learn.loop import _member_config
    from molequi.training import TrainingConfig

    first, previous = tmp_path / "initial.molequi", tmp_path / "round_000" / "member_0" / "model.molequi"
    settings = LearnSettings(**{**SETTINGS, "init": str(first), "anchor": 200.0})
    config = _member_config(TrainingConfig(), settings, r=1, m=0, n_labels=8, init=previous, anchor_to=first)
    assert config.init == str(previous) and config.anchor == 200.0 and config.anchor_model == str(first)
    unanchored = _member_config(TrainingConfig(), dataclasses.replace(settings, anchor=0.0), r=1, m=0, n_labels=8,
                                init=previous, anchor_to=first)
    assert unanchored.anchor == 0.0 and unanchored.anchor_model is None
    with pytest.raises(ConfigError, match="--anchor must be"):
        LearnSettings(**{**SETTINGS, "anchor": -1.0}).validate()
