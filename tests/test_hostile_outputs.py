"""A careless user's outputs: an output path that names an input, a plot or a model under a name
of the wrong format, files a collaborator cannot read, an exported model fed what ``predict``
refuses, a calibration applied to other models, labels in the wrong unit.

Each refusal asserts exit code 2, one line on stderr without a traceback, and that no input
changed (every file of the case's folder is compared, bytes and mode, before and after).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.io import write

from molequi.models import save_model
from test_hostile_core import (assert_user_error, labelled, labelled_dataset, md_args, md_inputs, run_cli,
                               snapshot, tiny_model, train_args)


def committee(folder: Path) -> list[Path]:
    """Two tiny model files (a committee) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return [save_model(tiny_model(seed=k), folder / f"m{k}.molequi") for k in range(2)]


def refused(capsys, args: list[str], root: Path, *words: str) -> str:
    """Run ``args``; assert a one-line refusal naming ``words`` and no file under ``root`` changed."""
    before = snapshot(root)
    code, _, err = run_cli([str(a) for a in args], capsys)
    assert_user_error(code, err, *words)
    assert snapshot(root) == before
    return err


# ---------------------------------------------------------------- 1. inputs are never replaced
def test_export_refuses_to_write_over_its_model(tmp_path, capsys):
    inputs = md_inputs(tmp_path)
    refused(capsys, ["export", inputs["model"], "--out", inputs["model"], "--device", "cpu"], tmp_path,
            "--out", "is the input MODEL")


def test_evaluate_refuses_a_plot_over_its_data(tmp_path, capsys):
    inputs = md_inputs(tmp_path)
    data = labelled_dataset(tmp_path / "data.extxyz")
    refused(capsys, ["evaluate", inputs["model"], data, "--plot", data, "--device", "cpu"], tmp_path,
            "--plot", "is the input DATA")


def test_evaluate_refuses_metrics_over_its_model(tmp_path, capsys):
    inputs = md_inputs(tmp_path)
    data = labelled_dataset(tmp_path / "data.json")
    refused(capsys, ["evaluate", inputs["model"], data, "--out", data, "--device", "cpu"], tmp_path,
            "--out", "is the input DATA")


def test_an_output_through_a_symbolic_link_to_an_input_is_refused(tmp_path, capsys):
    inputs = md_inputs(tmp_path)
    data = labelled_dataset(tmp_path / "data.extxyz")
    (tmp_path / "parity.png").symlink_to(data)
    refused(capsys, ["evaluate", inputs["model"], data, "--plot", tmp_path / "parity.png", "--device", "cpu"],
            tmp_path, "--plot", "is the input DATA")


def test_calibrate_refuses_to_write_over_its_data(tmp_path, capsys):
    models = committee(tmp_path)
    data = labelled_dataset(tmp_path / "held_out.json")
    refused(capsys, ["calibrate", "--model", models[0], "--model", models[1], data, "--out", data, "--device", "cpu"],
            tmp_path, "--out", "is the input DATA")


def test_train_overwrite_never_replaces_the_config_it_reads(tmp_path, capsys):
    data = labelled_dataset(tmp_path / "data.extxyz")
    run = tmp_path / "run"
    assert run_cli(train_args(data, run), capsys)[0] == 0
    config = run / "config.yaml"
    config.write_text("# my notes: keep the cutoff small\nmax_epochs: 1\n")
    refused(capsys, train_args(data, run, "--config", config, "--overwrite"), tmp_path,
            "--config", "config.yaml", "--overwrite would delete it")


def test_train_refuses_an_output_folder_that_is_its_data(tmp_path, capsys):
    data = labelled_dataset(tmp_path / "data.extxyz")
    refused(capsys, train_args(data, data), tmp_path, "--out", "is the input --data")


def test_md_overwrite_never_deletes_a_structure_it_reads(tmp_path, capsys):
    inputs = md_inputs(tmp_path)
    out = tmp_path / "md"
    assert run_cli(md_args(inputs, out), capsys)[0] == 0
    structure = out / "system_0000.extxyz"  # the last run's trajectory as the next start
    args = md_args({**inputs, "structure": Path(f"{structure}@-1")}, out, "--overwrite")
    refused(capsys, args, tmp_path, "STRUCTURE", "system_0000.extxyz")


def test_screen_refuses_an_output_folder_that_would_replace_its_candidates(tmp_path, capsys):
    pytest.importorskip("rdkit")
    out = tmp_path / "screen"
    out.mkdir()
    (out / "scored.csv").write_text("smiles\nCCO\n")
    refused(capsys, ["screen", out / "scored.csv", "--out", out, "--overwrite", "--no-progress"], tmp_path,
            "CANDIDATES", "scored.csv")


@pytest.mark.parametrize("command, option, name, accepted", [
    ("evaluate", "--plot", "parity.xyz", ".png, .pdf or .svg"),
    ("evaluate", "--plot", "parity", ".png, .pdf or .svg"),
    ("evaluate", "--out", "metrics.csv", ".json"),
    ("calibrate", "--out", "calibration.yaml", ".json"),
    ("export", "--out", "model.molequi", ".pt"),
])
def test_an_output_name_of_another_format_is_refused(tmp_path, capsys, command, option, name, accepted):
    models = committee(tmp_path)
    data = labelled_dataset(tmp_path / "data.extxyz")
    args = {"evaluate": ["evaluate", models[0], data], "calibrate": ["calibrate", "--model", models[0], "--model",
                                                                      models[1], data],
            "export": ["export", models[0]]}[command]
    refused(capsys, [*args, option, tmp_path / name, "--device", "cpu"], tmp_path, option, accepted)
    assert not (tmp_path / name).exists()


def test_the_plot_format_follows_its_extension(tmp_path, capsys):
    inputs = md_inputs(tmp_path)
    data = labelled_dataset(tmp_path / "data.extxyz")
    for name, magic in (("p.pdf", b"%PDF"), ("p.svg", b"<?xml"), ("p.png", b"\x89PNG")):
        code, _, err = run_cli(["evaluate", str(inputs["model"]), str(data), "--device", "cpu",
                                "--plot", str(tmp_path / name)], capsys)
        assert code == 0, err
        assert (tmp_path / name).read_bytes().startswith(magic), name


# ---------------------------------------------------------------- 2. outputs follow the umask
@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_every_training_output_follows_the_umask(tmp_path, capsys, umask_022):
    data = labelled_dataset(tmp_path / "data.extxyz")
    test = labelled_dataset(tmp_path / "test.extxyz", seed=3)
    run = tmp_path / "run"
    assert run_cli(train_args(data, run, "--test-data", str(test)), capsys)[0] == 0
    files = [path for path in run.rglob("*") if path.is_file()]
    assert {"model.molequi", "log.csv", "learning_curve.png", "config.yaml", "last.pt"} <= {p.name for p in files}
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in files}
    assert set(modes.values()) == {"0o644"}, modes


def test_an_atomic_write_keeps_the_umask_when_the_writer_makes_its_own_file(tmp_path, umask_022):
    from molequi.utils import atomic_write

    def private_writer(temporary: Path) -> None:  # as a library that writes via mkstemp + rename does
        temporary.unlink()
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(descriptor, b"weights")
        os.close(descriptor)

    path = atomic_write(tmp_path / "new.bin", private_writer)
    assert path.stat().st_mode & 0o777 == 0o644
    os.chmod(path, 0o640)  # an existing file keeps its mode
    atomic_write(path, private_writer)
    assert path.stat().st_mode & 0o777 == 0o640


def test_exported_and_calibration_files_follow_the_umask(tmp_path, capsys, umask_022):
    models = committee(tmp_path)
    data = labelled_dataset(tmp_path / "data.extxyz")
    assert run_cli(["export", str(models[0]), "--out", str(tmp_path / "m.pt"), "--device", "cpu"], capsys)[0] == 0
    assert run_cli(["calibrate", "--model", str(models[0]), "--model", str(models[1]), str(data), "--out",
                    str(tmp_path / "c.json"), "--device", "cpu"], capsys)[0] == 0
    for name in ("m.pt", "c.json", "m0.molequi"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


# ---------------------------------------------------------------- 6. exported models check their inputs
@pytest.fixture(scope="module")
def scripted():
    from molequi.models.export import to_torchscript

    return to_torchscript(tiny_model())


def _ethanol():
    atoms = molecule("CH3CH2OH")
    return torch.tensor(atoms.positions, dtype=torch.float64), torch.tensor(atoms.numbers, dtype=torch.int64)


@pytest.mark.parametrize("case, words", [
    ("nan", "NaN or infinite"), ("inf", "NaN or infinite"), ("empty", "empty"),
    ("unknown element", "not trained on"), ("atomic number 0", "not trained on"),
    ("atomic number 200", "not trained on"),
])
def test_the_exported_model_refuses_what_predict_refuses(scripted, case, words):
    positions, numbers = _ethanol()
    if case == "nan":
        positions[2, 1] = float("nan")
    elif case == "inf":
        positions[0, 0] = float("inf")
    elif case == "empty":
        positions, numbers = positions[:0], numbers[:0]
    elif case == "unknown element":
        numbers[0] = 26
    elif case == "atomic number 0":
        numbers[0] = 0
    else:
        numbers[0] = 200
    with pytest.raises(Exception, match=words):
        scripted(positions, numbers)
    assert torch.isfinite(scripted(*_ethanol())["energy"])  # the module still works after a refusal


# ---------------------------------------------------------------- 4. a calibration belongs to its models
@pytest.fixture
def calibrated(tmp_path, capsys):
    """Committee A (m0, m1), committee B (m2, m3), held-out data and A's calibration file."""
    models = [save_model(tiny_model(seed=k), tmp_path / f"m{k}.molequi") for k in range(4)]
    data = labelled_dataset(tmp_path / "held_out.extxyz", n=8)
    calibration = tmp_path / "calibration.json"
    code, _, err = run_cli(["calibrate", "--model", str(models[0]), "--model", str(models[1]), str(data),
                            "--out", str(calibration), "--device", "cpu"], capsys)
    assert code == 0, err
    return {"models": models, "data": data, "calibration": calibration}


def test_a_calibration_records_the_content_of_its_models(calibrated):
    from molequi.models import load_model
    from molequi.models.io import model_digest

    recorded = json.loads(calibrated["calibration"].read_text())
    assert recorded["models_sha256"] == [model_digest(load_model(p)) for p in calibrated["models"][:2]]
    assert recorded["heads"] == [1, 1]


def committee_args(paths) -> list[str]:
    return [arg for path in paths for arg in ("--model", str(path))]


@pytest.mark.parametrize("command", ["evaluate", "md"])
def test_a_calibration_of_other_models_is_refused(calibrated, tmp_path, capsys, command):
    other = committee_args(calibrated["models"][2:])
    args = {"evaluate": ["evaluate", *other, calibrated["data"], "--device", "cpu"],
            "md": ["md", *other, f"{calibrated['data']}@0", "--steps", "2", "--dt", "0.5", "--out", tmp_path / "md",
                   "--no-progress", "--device", "cpu"]}[command]
    refused(capsys, [*args, "--calibration", calibrated["calibration"]], tmp_path, "calibration.json",
            "fitted on other models")


def test_a_calibration_of_a_model_replaced_under_its_name_is_refused(calibrated, tmp_path, capsys):
    save_model(tiny_model(seed=9), calibrated["models"][1])  # same path, other weights
    refused(capsys, ["evaluate", *committee_args(calibrated["models"][:2]), calibrated["data"], "--device", "cpu",
                     "--calibration", calibrated["calibration"]], tmp_path, "fitted on other models")


def test_the_calculator_refuses_a_calibration_of_other_models(calibrated):
    from molequi.calculators.ase import MolequiCalculator
    from molequi.errors import ConfigError

    with pytest.raises(ConfigError, match="fitted on other models"):
        MolequiCalculator([str(p) for p in calibrated["models"][2:]], calibration=calibrated["calibration"])
    # its own committee, in another order and at another precision, is accepted
    calculator = MolequiCalculator([str(p) for p in calibrated["models"][1::-1]], dtype="float32",
                                   calibration=calibrated["calibration"])
    assert calculator.potential.calibration is not None


def test_a_calibration_without_model_hashes_is_applied_with_a_warning(calibrated, tmp_path):
    from molequi.calculators.ase import MolequiCalculator

    values = json.loads(calibrated["calibration"].read_text())
    del values["models_sha256"], values["heads"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(values))
    with pytest.warns(UserWarning, match="records no model hashes"):
        MolequiCalculator([str(p) for p in calibrated["models"][2:]], calibration=old)


def test_screen_scorers_refuse_a_calibration_of_other_models(calibrated):
    pytest.importorskip("rdkit")
    from molequi.errors import ConfigError
    from molequi.search.models import load_scorers

    with pytest.raises(ConfigError, match="fitted on other models"):
        load_scorers(calibrated["models"][2:], calibration=calibrated["calibration"])
    assert load_scorers(calibrated["models"][:2], calibration=calibrated["calibration"])[0].calibration is not None


# ---------------------------------------------------------------- 3. labels that make sense
EV_PER_KCAL_MOL = 1 / 23.0605
EV_PER_HARTREE = 27.2114


def ethanol_frames(n: int, seed: int = 0, energy: float = -97000.0) -> list:
    """``n`` rattled ethanols with realistic total energies (eV) and small forces (eV/Å)."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.05, seed=seed * 1000 + k)
        frames.append(labelled(atoms, energy + 0.05 * rng.normal(), 0.5 * rng.normal(size=(len(atoms), 3))))
    return frames


@pytest.mark.parametrize("mix_up, words", [
    ("energy in kcal/mol", ["structure 7", "kcal/mol among eV"]),
    ("energy in Hartree", ["structure 3", "Hartree among eV"]),
    ("forces in kcal/mol/Å", ["structure 5", "largest force", "kcal/mol/Å among eV/Å"]),
])
def test_a_frame_in_another_unit_is_refused_with_its_index_and_cause(tmp_path, capsys, mix_up, words):
    frames = ethanol_frames(12)
    index = int(words[0].split()[-1])
    bad = frames[index]
    if mix_up == "energy in kcal/mol":
        bad.calc.results["energy"] /= EV_PER_KCAL_MOL
    elif mix_up == "energy in Hartree":
        bad.calc.results["energy"] /= EV_PER_HARTREE
    else:
        bad.calc.results["forces"] = bad.calc.results["forces"] / EV_PER_KCAL_MOL
    write(tmp_path / "data.extxyz", frames)
    refused(capsys, train_args(tmp_path / "data.extxyz", tmp_path / "run"), tmp_path, *words, "--allow-outliers")
    assert not (tmp_path / "run").exists()
    code, _, err = run_cli(train_args(tmp_path / "data.extxyz", tmp_path / "run", "--allow-outliers"), capsys)
    assert code == 0, err


def test_labels_of_many_compositions_are_not_outliers(tmp_path, capsys):
    from ase.calculators.emt import EMT

    frames = []
    for name in ("CH4", "H2O", "CH3OH", "CH3CH2OH", "H2CO", "C2H6", "CH3COOH", "HCOOH") * 2:
        atoms = molecule(name)
        atoms.rattle(0.03, seed=len(frames))
        atoms.calc = EMT()
        frames.append(labelled(atoms, atoms.get_potential_energy(), atoms.get_forces()))
    write(tmp_path / "data.extxyz", frames)
    code, _, err = run_cli(train_args(tmp_path / "data.extxyz", tmp_path / "run"), capsys)
    assert code == 0, err


def test_copies_are_reported_and_never_straddle_the_split(tmp_path, capsys):
    from molequi.models.config import ModelConfig
    from molequi.training.data import prepare_data

    frames = ethanol_frames(4) + [ethanol_frames(1, seed=5)[0]] * 40
    write(tmp_path / "data.extxyz", frames)
    code, _, err = run_cli(train_args(tmp_path / "data.extxyz", tmp_path / "run"), capsys)
    assert code == 0, err
    assert "39 training structures are exact copies" in err and "structure 4 = structure 5" in err
    for seed in range(5):
        prepared = prepare_data(tmp_path / "data.extxyz", ModelConfig(), validation=0.2, seed=seed)
        copies = set(range(4, 44))
        sides = {bool(copies & set(prepared.train_indices.tolist())), bool(copies & set(prepared.validation_indices.tolist()))}
        assert sides in ({True, False},) and len(prepared.validation_indices) >= 1 and len(prepared.train_indices) >= 1


def test_a_split_without_copies_is_unchanged():
    from molequi.data.split import train_validation_split

    for seed in range(4):
        plain = train_validation_split(20, 5, seed)
        grouped = train_validation_split(20, 5, seed, groups=np.arange(20))
        assert all(np.array_equal(a, b) for a, b in zip(plain, grouped))


def test_copies_of_one_structure_only_cannot_be_split(tmp_path, capsys):
    write(tmp_path / "data.extxyz", [ethanol_frames(1)[0]] * 10)
    refused(capsys, train_args(tmp_path / "data.extxyz", tmp_path / "run"), tmp_path, "copies of one structure")


# ---------------------------------------------------------------- 7. messages that name the real cause
def test_resuming_from_another_folder_says_the_data_is_not_found(tmp_path, capsys, monkeypatch):
    labelled_dataset(tmp_path / "data.extxyz")
    monkeypatch.chdir(tmp_path)
    assert run_cli(train_args(Path("data.extxyz"), tmp_path / "run"), capsys)[0] == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    args = [a for a in train_args(Path("data.extxyz"), tmp_path / "run", "--resume", epochs=2)]
    args = args[:1] + args[3:]  # no --data: the run's own
    err = refused(capsys, args, tmp_path, "data.extxyz", "not found from", str(elsewhere))
    assert "changed" not in err


def test_a_bad_flag_value_is_not_blamed_on_the_config_file(tmp_path, capsys):
    data = labelled_dataset(tmp_path / "data.extxyz")
    config = tmp_path / "config.yaml"
    config.write_text("learning_rate: 0.01\n")
    err = refused(capsys, train_args(data, tmp_path / "run", "--config", config, "--batch-size", "0"), tmp_path,
                  "batch_size", "command line")
    assert f"error: {config}:" not in err
    config.write_text("energy_weight: -1\n")  # the file's own mistake is still the file's
    err = refused(capsys, [*train_args(data, tmp_path / "run", "--config", config)], tmp_path, "energy_weight")
    assert f"error: {config}:" in err and "command line" not in err


@pytest.mark.parametrize("option, words", [("--energy-key", "--energy-key nope was given"),
                                           ("--forces-key", "--forces-key nope was given")])
def test_evaluate_says_which_label_key_it_was_given(tmp_path, capsys, option, words):
    inputs = md_inputs(tmp_path)
    data = labelled_dataset(tmp_path / "data.extxyz")
    err = refused(capsys, ["evaluate", inputs["model"], data, "--device", "cpu", option, "nope"], tmp_path, words)
    assert "training" not in err and "--forces-weight" not in err


# ---------------------------------------------------------------- 5. energies only where they mean something
@pytest.fixture(scope="module")
def ethanol_model(tmp_path_factory):
    """A model trained (1 epoch) on ethanol only: its E0s fix only the sum 2 C + 6 H + 1 O."""
    from molequi.cli.main import main

    root = tmp_path_factory.mktemp("ethanol_only")
    data = labelled_dataset(root / "ethanol.extxyz", n=8)
    assert main(train_args(data, root / "run")) == 0
    return root / "run" / "model.molequi"


def test_a_model_records_which_compositions_its_references_determine(ethanol_model, tmp_path, capsys):
    from molequi.models import load_model
    from molequi.models.references import energy_determined

    config = load_model(ethanol_model).model.config
    assert config.species == [1, 6, 8] and len(config.e0s_basis) == 1
    determined = {name: energy_determined(config.e0s_basis, config.species, molecule(name).numbers)
                  for name in ("CH3CH2OH", "CH3OCH3", "CH3OH", "CH3COOH")}
    assert determined == {"CH3CH2OH": True, "CH3OCH3": True, "CH3OH": False, "CH3COOH": False}
    dimer = molecule("CH3CH2OH") + molecule("CH3CH2OH")
    assert energy_determined(config.e0s_basis, config.species, dimer.numbers)
    # many compositions determine every element: nothing recorded
    frames = [labelled(molecule(name), -float(len(molecule(name)))) for name in ("CH4", "H2O", "CO", "CH3OH")] * 2
    write(tmp_path / "many.extxyz", frames)
    assert run_cli(train_args(tmp_path / "many.extxyz", tmp_path / "run", "--allow-outliers"), capsys)[0] == 0
    assert load_model(tmp_path / "run" / "model.molequi").model.config.e0s_basis is None


def test_evaluate_flags_energies_of_undetermined_compositions(ethanol_model, tmp_path, capsys):
    write(tmp_path / "others.extxyz", [labelled(molecule(n), -20.0) for n in ("CH3COOH", "CH3OH", "CH3CH2OH")])
    code, out, err = run_cli(["evaluate", str(ethanol_model), str(tmp_path / "others.extxyz"), "--device", "cpu"],
                             capsys)
    assert code == 0, err
    assert json.loads(out)["energy_reference_undetermined"] == 2
    assert "2 of 3 structures" in err and "C2H4O2" in err and "CH4O" in err


def test_the_calculator_warns_once_for_an_undetermined_composition(ethanol_model):
    import warnings

    from molequi.calculators.ase import MolequiCalculator

    calculator = MolequiCalculator(str(ethanol_model))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in ("CH3CH2OH", "CH3COOH", "CH3COOH"):
            atoms = molecule(name)
            atoms.calc = calculator
            atoms.get_potential_energy()
    messages = [str(w.message) for w in caught if "reference energies" in str(w.message)]
    assert len(messages) == 1 and "C2H4O2" in messages[0]


def test_screen_does_not_rank_energies_of_undetermined_compositions(ethanol_model, tmp_path):
    pytest.importorskip("rdkit")
    import csv

    from molequi.search import screen
    from molequi.search.models import load_scorers

    (tmp_path / "mols.smi").write_text("CCO ethanol\nCC(=O)O acetic\nCO methanol\nCOC dme\n")
    result = screen(str(tmp_path / "mols.smi"), scorers=load_scorers([ethanol_model]), objective=("energy:min",),
                    out=str(tmp_path / "out"), progress=False, plots=False, sa_max=None, alerts=(),
                    lipinski_max_violations=None, veber=False)
    rows = {row["id"]: row for row in csv.DictReader(open(result.scored_csv))}
    assert rows["acetic"]["reason"] == "energy_reference_undetermined:C2H4O2"
    assert rows["methanol"]["reason"] == "energy_reference_undetermined:CH4O"
    assert rows["ethanol"]["status"] == "pass" and rows["dme"]["status"] == "pass"


def test_learn_refuses_a_start_file_it_would_replace(tmp_path, capsys):
    out = tmp_path / "al"
    (out / "round_000").mkdir(parents=True)
    start = out / "round_000" / "train.extxyz"  # a previous round's training set as the new start
    write(start, [labelled(molecule("H2O"), -10.0)])
    refused(capsys, ["learn", "--start", start, "--out", out, "--device", "cpu"], tmp_path, "--start", "round_000")


def test_an_outlier_without_a_unit_ratio_is_not_blamed_on_units():
    """A strongly distorted structure whose force is far above the rest, by no known unit factor,
    is named without claiming a unit mix-up."""
    from molequi.data.quality import outliers_message

    message = outliers_message([(2, "largest force 76.6 eV/Å, 14.8× the median structure's")], ["a", "b", "c"], 3)
    assert "unit mix-up" not in message.split("no unit mix-up")[0] and "check whether" in message
    guessed = outliers_message([(2, "energy -1 eV, 23.1× what the others give: a label in kcal/mol among eV labels?")],
                               ["a", "b", "c"], 3)
    assert "likely a unit mix-up" in guessed
