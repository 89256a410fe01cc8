"""The readout-head registry: a kind added in one place works end to end, and model files
written before the registry still load with the same predictions."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase.build import molecule
from torch_geometric.utils import scatter

from molequi.models import load_model, predict, save_model
from molequi.models.heads import HEADS, HeadKind, head, register_head
from molequi.training import evaluate_model, load_config, train

DATA = Path(__file__).parent / "data" / "models"
TINY = {
    "model": {"channels": 8, "l_max": 1, "num_layers": 1, "correlation": 2, "radial_hidden": [16], "readout_hidden": 8},
    "batch_size": 4, "validation": 4, "progress": False, "device": "cpu", "dtype": "float64", "learning_rate": 0.02,
}


class MaxHead(HeadKind):
    """Test kind: the largest per-atom value of a structure (an 'atomic hot spot' label)."""

    kind = "maximum"
    unit = "arb"
    description = "largest per-atom value"

    def pool(self, per_atom, stats, pos, batch, num_graphs):
        return scatter(per_atom.to(torch.float64), batch, dim=0, dim_size=num_graphs, reduce="max").unsqueeze(-1)

    def scored(self, name, values):
        return f"{name}_max", values[..., 0]


@pytest.fixture
def maximum_kind():
    register_head(MaxHead)
    yield HEADS["maximum"]
    HEADS.pop("maximum")


def labelled(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    structures = []
    for k in range(n):
        atoms = molecule(("CH3CH2OH", "CH3OH", "H2O")[k % 3])
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        atoms.info["hot"] = float(np.abs(atoms.positions).max())
        structures.append(atoms)
    return structures


def test_registered_kind_trains_evaluates_and_screens(maximum_kind, tmp_path):
    """A kind declared in one class is accepted by --target, pooled by the model, trained,
    saved, loaded, evaluated in its unit and scored by the screening adapter."""
    path = tmp_path / "train.extxyz"
    ase.io.write(path, labelled(16))
    config = load_config(None, {**TINY, "max_epochs": 2}, targets=["hot:maximum"])
    assert config.model.properties == {"hot": "maximum"}
    train(config, path, tmp_path / "run", log=lambda message: None)
    model = load_model(tmp_path / "run" / "model.molequi")
    assert model.model.config.properties == {"hot": "maximum"}
    out = predict(model, labelled(1)[0])
    assert out["hot"].shape == (1,)
    metrics = evaluate_model(model, labelled(6, seed=1), device="cpu")
    assert metrics["property_units"] == {"hot": "arb"} and metrics["hot_mae"] >= 0
    from molequi.search.models import ModelScorer

    scorer = ModelScorer([model])
    assert scorer.properties == ["hot_max"] and scorer.units["hot_max"] == "arb"
    assert scorer.predict(labelled(3))["hot_max"].shape == (1, 3)


def test_unknown_kind_names_the_registered_ones():
    from molequi.errors import ConfigError

    with pytest.raises(ConfigError, match="choose one of.*dipole.*extensive.*intensive"):
        head("vector")


def test_builtin_kinds_declare_units_and_defaults():
    from molequi.models.heads import default_kind

    assert {"intensive", "extensive", "dipole"} <= set(HEADS)
    assert HEADS["dipole"].unit == "e·Å" and HEADS["dipole"].components == 3
    assert default_kind("dipole_norm") == "dipole" and default_kind("gap") == "intensive"


def test_model_file_of_the_first_format_loads_with_the_same_predictions(tmp_path):
    """tests/data/models/format1_float32.molequi was written by molequi before the head registry
    (float32; intensive, extensive and dipole heads, E0s): it loads, predicts what it predicted
    then, and saves again to a file with the same tensors."""
    model = load_model(DATA / "format1_float32.molequi")
    reference = json.loads((DATA / "format1_float32_ethanol.json").read_text())
    out = predict(model, molecule("CH3CH2OH"))
    # float32 network: its sums round differently on other CPUs' vector units (AVX2 / AVX-512),
    # a few 1e-7 eV here; a wrongly loaded setting moves the energy by far more than 1e-5 eV
    assert out["energy"] == pytest.approx(reference["energy"], abs=1e-5)
    np.testing.assert_allclose(out["forces"], reference["forces"], atol=1e-6)
    for name in ("gap", "U0", "mu"):
        np.testing.assert_allclose(out[name], reference[name], rtol=1e-6, atol=1e-9)
    assert model.model.config.ensemble_heads == 1
    save_model(model, tmp_path / "again.molequi")
    again = load_model(tmp_path / "again.molequi")
    assert predict(again, molecule("CH3CH2OH"))["energy"] == out["energy"]
