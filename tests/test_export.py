"""``molequi export --format torchscript``: the file runs in plain PyTorch (molequi never
imported), equals ``molequi.predict`` and rotates like a potential must."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.build import molecule
from scipy.spatial.transform import Rotation

from conftest import random_model
from molequi import predict
from molequi.models import save_model

# Runs with only torch and numpy importable from site-packages (no molequi on the path).
PLAIN_TORCH = """
import json, sys
import numpy as np
import torch
module = torch.jit.load(sys.argv[1])
cases = json.load(open(sys.argv[2]))
results = []
for case in cases:
    out = module(torch.tensor(case["positions"], dtype=torch.float32),
                 torch.tensor(case["numbers"], dtype=torch.int64))
    results.append({"energy": out["energy"].item(), "energy_dtype": str(out["energy"].dtype),
                    "energy_dim": out["energy"].dim(), "forces": out["forces"].tolist()})
try:
    module(torch.zeros(2, 3), torch.tensor([1, 16]))
    unknown = "accepted"
except Exception as error:
    unknown = str(error)
print(json.dumps({"results": results, "unknown": unknown,
                  "molequi_imported": any(m.split(".")[0] in ("molequi", "e3nn", "torch_geometric") for m in sys.modules)}))
"""


def _cases():
    rng = np.random.default_rng(0)
    base = [molecule("CH3CH2OH"), molecule("H2O"), molecule("CH3COOH")]
    cases = []
    for atoms in base:
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        cases.append(atoms)
        rotated = atoms.copy()
        rotation = Rotation.random(random_state=int(rng.integers(1000))).as_matrix()
        rotated.positions = atoms.positions @ rotation.T + rng.normal(size=3)
        rotated.info["rotation"] = rotation
        cases.append(rotated)
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torchscript_export_runs_without_molequi(tmp_path, dtype):
    from molequi.cli.main import main

    # float32 with edge harmonics above the hidden order (l 1, edges 2): the pruned product traces too
    layout = {"l_max": 1, "edge_l_max": 2} if dtype == "float32" else {}
    model = random_model(dtype=dtype, e0s=(("1", -13.6), ("6", -1029.8), ("8", -2041.3)), **layout)
    model_path = save_model(model, tmp_path / "model.molequi")
    out = tmp_path / "model.pt"
    assert main(["export", str(model_path), "--format", "torchscript", "--out", str(out), "--device", "cpu"]) == 0
    cases = _cases()
    # float32 inputs on both sides, so the comparison measures the export, not the input rounding
    for atoms in cases:
        atoms.positions = atoms.positions.astype(np.float32).astype(np.float64)
    (tmp_path / "cases.json").write_text(json.dumps(
        [{"positions": a.positions.tolist(), "numbers": a.numbers.tolist()} for a in cases]))
    script = tmp_path / "plain.py"
    script.write_text(PLAIN_TORCH)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "cases.json")],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["molequi_imported"] is False
    assert "not trained on" in report["unknown"]
    for k, (atoms, exported) in enumerate(zip(cases, report["results"])):
        reference = predict(model, atoms)
        assert exported["energy_dtype"] == "torch.float64" and exported["energy_dim"] == 0
        # the same float64 sums as predict: far inside the 1e-5 the export promises
        assert exported["energy"] == pytest.approx(reference["energy"], rel=1e-9, abs=0)
        forces = np.array(exported["forces"])
        scale = np.abs(reference["forces"]).max()
        np.testing.assert_allclose(forces, reference["forces"], rtol=0, atol=1e-5 * scale + 1e-6)
        if "rotation" in atoms.info:  # E(R x) = E(x), F(R x) = R F(x)
            original = report["results"][k - 1]
            assert exported["energy"] == pytest.approx(original["energy"], rel=1e-6)
            np.testing.assert_allclose(forces, np.array(original["forces"]) @ atoms.info["rotation"].T,
                                       atol=1e-4 * scale)


def test_torchscript_export_takes_the_total_charge_of_a_charge_input_model():
    from molequi.models.export import to_torchscript

    model = random_model(e0s=(("1", -13.6), ("6", -1029.8), ("8", -2041.3)), l_max=1, charge_input=True,
                         charge_energies=(-1.5, 2.0))
    module = to_torchscript(model)
    atoms = _cases()[0]
    positions, numbers = torch.tensor(atoms.positions), torch.tensor(atoms.numbers)
    energies = {}
    for charge in (-1, 0, 1):
        charged = atoms.copy()
        charged.info["charge"] = charge
        reference = predict(model, charged)
        out = module(positions, numbers, float(charge))
        assert out["energy"].item() == pytest.approx(reference["energy"], rel=1e-9, abs=0)
        np.testing.assert_allclose(out["forces"].numpy(), reference["forces"], atol=1e-8)
        energies[charge] = out["energy"].item()
    assert module(positions, numbers)["energy"].item() == energies[0]  # neutral by default
    assert len(set(energies.values())) == 3  # the charge reaches the energy
