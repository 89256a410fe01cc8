"""Training: config, data preparation, the loop, resume, safe checkpoints."""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from molequi.errors import ConfigError, DataFormatError, InvalidStructureError, ModelFileError
from molequi.models import build_model, load_model
from molequi.training import (
    DEFAULT_YAML,
    TrainingConfig,
    evaluate_model,
    load_checkpoint,
    load_config,
    prepare_data,
    train,
)
from molequi.training.config import ARCHITECTURE_KEYS
from molequi.training.evaluate import evaluate_graphs

TINY = {
    "model": {"channels": 8, "l_max": 1, "num_layers": 1, "correlation": 2, "radial_hidden": [16], "readout_hidden": 8},
    "batch_size": 4,
    "validation": 4,
    "progress": False,
    "device": "cpu",
    "dtype": "float64",
    "learning_rate": 0.01,
}


def make_structures(n: int, seed: int = 0, scale: float = 0.08) -> list:
    """Randomly displaced ethanol molecules labelled by ASE's EMT (energy eV, forces eV/Å)."""
    rng = np.random.default_rng(seed)
    base = molecule("CH3CH2OH")
    structures = []
    for _ in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(0.0, scale, atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        structures.append(atoms)
    return structures


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "ethanol_emt.extxyz"
    ase.io.write(path, make_structures(20))
    return path


def tiny_config(**overrides) -> TrainingConfig:
    values = {**TINY, **overrides}
    return load_config(None, values)


# --- config -----------------------------------------------------------------------------------


def test_unknown_key_names_closest_valid_one(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("unknown training setting 'lerning_rate' (did you mean 'learning_rate'?)")):
        load_config(None, {"lerning_rate": 1e-3})
    path = tmp_path / "train.yaml"
    path.write_text("batch_size: 8\nmodel:\n  chanels: 32\n")
    with pytest.raises(ConfigError, match=re.escape("unknown model setting 'chanels' (did you mean 'channels'?)")):
        load_config(path)
    path.write_text("channels: 32\n")
    with pytest.raises(ConfigError, match="put it under 'model:'"):
        load_config(path)
    path.write_text("model:\n  e0s: {1: -13.6}\n")
    with pytest.raises(ConfigError, match="computed from the training data"):
        load_config(path)


def test_edge_order_is_at_least_the_hidden_order():
    """The default edge order (2) under a larger l_max is raised to it; none ties it; 4 is refused."""
    assert load_config(None, {}).model.message_l_max == 2  # the default: order-2 harmonics, l_max 1 features
    assert load_config(None, {"model.l_max": 3}).model.message_l_max == 3
    assert load_config(None, {"model.l_max": 0, "model.edge_l_max": 3}).model.message_l_max == 3
    tied = load_config(None, {"model.edge_l_max": None}).model
    assert (tied.edge_l_max, tied.message_l_max) == (None, tied.l_max)
    with pytest.raises(ConfigError, match="edge_l_max must be in 0..3"):
        load_config(None, {"model.edge_l_max": 4})


def test_edge_l_max_flag_takes_none():
    import argparse

    from molequi.cli.train import int_or_none

    assert (int_or_none("2"), int_or_none("none"), int_or_none("NULL")) == (2, None, None)
    with pytest.raises(argparse.ArgumentTypeError, match="whole number or 'none'"):
        int_or_none("two")


def test_config_values_are_validated_and_coerced(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("learning_rate: 5e-3\nmax_minutes: 2\nmodel:\n  channels: 24\n")  # YAML reads 5e-3 as a string
    config = load_config(path, {"batch_size": 2, "model.l_max": 0})
    assert config.learning_rate == 5e-3 and isinstance(config.max_minutes, float)
    assert (config.batch_size, config.model.channels, config.model.l_max) == (2, 24, 0)
    for bad, message in [
        ({"optimizer": "sgd"}, "optimizer"),
        ({"learning_rate": "fast"}, "learning_rate must be a number"),
        ({"validation": 1.5}, "validation"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"model.l_max": 7}, "l_max"),
        ({"dtype": "float16"}, "dtype"),
        ({"property_weights": {"gap": 1.0}}, "not a property head"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, bad)


def test_default_yaml_matches_dataclass():
    text = DEFAULT_YAML.read_text()
    loaded = yaml.safe_load(text)
    defaults = TrainingConfig()
    expected = defaults.to_dict()
    assert set(loaded) == set(expected), "default.yaml and TrainingConfig list different top-level keys"
    assert set(loaded["model"]) == set(ARCHITECTURE_KEYS), "default.yaml's model section misses architecture keys"
    assert load_config(DEFAULT_YAML).to_dict() == expected, "a default in default.yaml differs from TrainingConfig"
    # every key carries a comment, and every field is documented in the docstring
    for key in list(expected) + list(expected["model"]):
        line = next(line for line in text.splitlines() if re.match(rf"\s*{key}:", line))
        assert "#" in line, f"default.yaml: '{key}' has no comment"
    for field in dataclasses.fields(TrainingConfig):
        assert f"    {field.name}:" in TrainingConfig.__doc__, f"TrainingConfig docstring lacks '{field.name}'"


# --- data ---------------------------------------------------------------------------------------


def test_prepare_data_fills_statistics_from_training_part(data_file):
    config = tiny_config()
    prepared = prepare_data(data_file, config.model, 6, seed=3)
    assert (len(prepared.train), len(prepared.validation)) == (14, 6)
    assert set(prepared.train_indices).isdisjoint(prepared.validation_indices)
    assert prepared.model_config.species == [1, 6, 8]
    assert prepared.model_config.avg_num_neighbors > 1
    assert prepared.model_config.energy_scale == pytest.approx(
        float(torch.cat([g.forces for g in prepared.train]).pow(2).mean().sqrt())
    )
    again = prepare_data(data_file, config.model, 6, seed=3)
    assert np.array_equal(again.validation_indices, prepared.validation_indices)


def test_bad_structures_name_file_and_index(tmp_path):
    structures = make_structures(4)
    structures[2].positions[1] = structures[2].positions[0] + [0.05, 0.0, 0.0]
    path = tmp_path / "close.extxyz"
    ase.io.write(path, structures)
    with pytest.raises(InvalidStructureError, match=r"close\.extxyz: structure 2: atoms 0 and 1"):
        prepare_data(path, tiny_config().model, 1, 0)
    structures = make_structures(4)
    structures[3].calc = SinglePointCalculator(structures[3], energy=1.0)
    ase.io.write(path, structures)
    with pytest.raises(DataFormatError, match="structure 3 has no forces"):
        prepare_data(path, tiny_config().model, 1, 0)


# --- training -----------------------------------------------------------------------------------


def test_short_training_lowers_validation_error(data_file, tmp_path):
    config = tiny_config(max_epochs=8, ema_decay=0.9)
    prepared = prepare_data(data_file, config.model, config.validation, config.seed)
    torch.manual_seed(config.seed)
    untrained = build_model(prepared.model_config, torch.float64)
    before = evaluate_graphs(untrained, prepared.validation, 32, torch.device("cpu"))[0].result()
    result = train(config, data_file, tmp_path / "run", log=lambda message: None)
    after = result.validation_metrics
    assert after["forces_mae_meV_per_A"] < 0.6 * before["forces_mae_meV_per_A"], (before, after)
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    # the exported model is the best EMA state and reproduces its validation metrics
    model = load_model(tmp_path / "run" / "model.molequi")
    again = evaluate_graphs(model, prepared.validation, 32, torch.device("cpu"))[0].result()
    assert again["forces_mae_meV_per_A"] == pytest.approx(after["forces_mae_meV_per_A"], rel=1e-9)
    for name in ("log.csv", "learning_curve.png", "config.yaml", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (tmp_path / "run" / name).is_file(), name
    assert load_config(tmp_path / "run" / "config.yaml").to_dict() == config.to_dict()
    assert not list((tmp_path / "run").rglob("*.tmp*")), "temporary files left behind"


@pytest.mark.slow
def test_resume_reproduces_uninterrupted_run(data_file, tmp_path):
    quiet = {"log": lambda message: None}
    full = train(tiny_config(max_epochs=4), data_file, tmp_path / "full", **quiet)
    first = train(tiny_config(max_epochs=2), data_file, tmp_path / "split", **quiet)
    assert first.epochs == 2
    resumed = train(tiny_config(max_epochs=4), data_file, tmp_path / "split", resume=True, **quiet)
    assert resumed.epochs == 4 and len(resumed.history) == 4
    for a, b in zip(full.history, resumed.history):
        for key in ("train_loss", "val_loss", "val_energy_mae_meV", "val_forces_mae_meV_per_A", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-10, abs=1e-12), (a["epoch"], key)
    weights_full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    weights_resumed = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["model"]
    for name, value in weights_full.items():
        torch.testing.assert_close(value, weights_resumed[name], rtol=1e-10, atol=1e-12)
    # a different architecture cannot silently continue the run
    with pytest.raises(ConfigError, match="cannot resume with changed settings"):
        train(tiny_config(max_epochs=5, learning_rate=0.02), data_file, tmp_path / "split", resume=True, **quiet)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_checkpoint_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    with open(path, "wb") as handle:
        pickle.dump({"format": "molequi-checkpoint", "payload": _Exploit(marker)}, handle)
    torch.save({"format": "molequi-checkpoint", "payload": _Exploit(marker)}, tmp_path / "zip.pt")
    for candidate in (path, tmp_path / "zip.pt"):
        with pytest.raises(ModelFileError, match="refused by the safe"):
            load_checkpoint(candidate)
    assert not marker.exists(), "loading a checkpoint executed code from it"


def test_evaluate_model_metrics_and_parity_plot(data_file, tmp_path):
    config = tiny_config(max_epochs=1)
    train(config, data_file, tmp_path / "run", log=lambda message: None)
    model = load_model(tmp_path / "run" / "model.molequi")
    metrics = evaluate_model(model, make_structures(5, seed=9), batch_size=2, device="cpu", plot=tmp_path / "parity.png")
    for key in ("energy_mae_meV", "energy_rmse_meV", "forces_mae_meV_per_A", "forces_rmse_meV_per_A"):
        assert np.isfinite(metrics[key]) and metrics[key] >= 0
    assert metrics["energy_rmse_meV"] >= metrics["energy_mae_meV"]
    assert metrics["n_structures"] == 5
    assert (tmp_path / "parity.png").stat().st_size > 1000


def test_property_head_is_trained_and_logged(tmp_path):
    structures = make_structures(12, seed=5)
    for atoms in structures:
        atoms.info["gap"] = 5.0 + float(np.linalg.norm(atoms.positions[0] - atoms.positions[1]))  # eV
    path = tmp_path / "gap.extxyz"
    ase.io.write(path, structures)
    config = tiny_config(max_epochs=2, property_weights={"gap": 2.0}, model={**TINY["model"], "properties": {"gap": "intensive"}})
    result = train(config, path, tmp_path / "run", log=lambda message: None)
    assert "val_gap_mae" in (tmp_path / "run" / "log.csv").read_text().splitlines()[0]
    assert np.isfinite(result.history[-1]["val_gap_mae"])
    model = load_model(tmp_path / "run" / "model.molequi")
    assert "gap" in model.model.property_heads
    del structures[0].info["gap"]
    ase.io.write(path, structures)
    with pytest.raises(DataFormatError, match="structure 0 has no 'gap' label"):
        train(config, path, tmp_path / "run2", log=lambda message: None)
    assert not (tmp_path / "run2").exists()


def test_ema_and_export_with_higher_order_architecture(data_file, tmp_path):
    """l_max 2 / correlation 3 e3nn modules change their state_dict keys when deep-copied; the
    EMA and the exported model must still match a freshly built (loadable) model."""
    model = {"channels": 4, "l_max": 2, "num_layers": 2, "correlation": 3, "radial_hidden": [8], "readout_hidden": 4}
    config = tiny_config(max_epochs=1, batch_size=8, model=model)
    train(config, data_file, tmp_path / "run", log=lambda message: None)
    loaded = load_model(tmp_path / "run" / "model.molequi")
    assert loaded.model.config.correlation == 3


@pytest.mark.slow
def test_ema_of_a_large_e3nn_model_keeps_loadable_keys(data_file, tmp_path):
    """At 64 channels, l_max 2, correlation 3, a deep copy of the e3nn modules gains extra
    buffers; the EMA copy must keep the keys of a fresh build so the exported file loads."""
    from molequi.models import save_model
    from molequi.training import ExponentialMovingAverage

    config = load_config(Path(__file__).resolve().parents[1] / "scripts" / "rmd17.yaml")
    model_config = prepare_data(data_file, config.model, 4, 0).model_config
    model = build_model(model_config, torch.float64)
    ema = ExponentialMovingAverage(model, 0.99, lambda: build_model(model_config, torch.float64))
    assert list(ema.module.state_dict()) == list(model.state_dict())
    ema.update(model)
    save_model(ema.module, tmp_path / "ema.molequi")
    assert list(load_model(tmp_path / "ema.molequi").state_dict()) == list(model.state_dict())


def test_time_budget_stops_cleanly_and_writes_everything(data_file, tmp_path):
    config = tiny_config(max_epochs=100, max_minutes=0.0005)  # 30 ms: the first batch uses it up
    result = train(config, data_file, tmp_path / "run", log=lambda message: None)
    assert result.epochs == 1 and "time budget" in result.stop_reason
    assert result.history[0]["train_structures"] < 16, "the epoch was not cut short"
    for name in ("model.molequi", "log.csv", "learning_curve.png", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (tmp_path / "run" / name).is_file(), name
    resumed = train(tiny_config(max_epochs=2, max_minutes=None), data_file, tmp_path / "run", resume=True,
                    log=lambda message: None)
    assert resumed.epochs == 2 and resumed.stop_reason.startswith("max_epochs")


def test_a_warm_start_keeps_the_models_normalisation_and_predictions(data_file, tmp_path):
    """A trained model started on other data keeps its E0s, shift, scale and neighbour count, so
    the run's model predicts bit for bit what the file does before its first step."""
    from molequi.models import predict
    from molequi.models.config import NORMALISATION
    from molequi.training.distributed import Distributed
    from molequi.training.run import build_run, load_run_inputs

    first = train(tiny_config(max_epochs=2), data_file, tmp_path / "first")
    trained = load_model(first.model_path)
    other = tmp_path / "other.extxyz"
    ase.io.write(other, make_structures(16, seed=5, scale=0.2))  # other statistics than data_file's
    config = tiny_config(max_epochs=2)
    fresh = load_run_inputs(config, [str(other)], tmp_path / "fresh", None, resume=False)
    assert fresh.model_config.energy_shift != trained.model.config.energy_shift  # the data alone would rescale
    inputs = load_run_inputs(config, [str(other)], tmp_path / "warm", None, resume=False, init_weights=first.model_path)
    for name in NORMALISATION:
        assert getattr(inputs.model_config, name) == getattr(trained.model.config, name), name
    device = torch.device("cpu")
    run = build_run(config, inputs, device, torch.float64, Distributed.from_environment(device), first.model_path)
    structures = make_structures(3, seed=9)
    before, expected = predict(run.model.eval(), structures), predict(trained, structures)
    for ours, theirs in zip(before, expected):
        assert ours["energy"] == theirs["energy"]
        assert np.array_equal(ours["forces"], theirs["forces"])
