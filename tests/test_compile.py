"""The compiled energy-and-forces call: equal to the eager one, and a clean fallback."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from ase.build import molecule

from conftest import make_ethanol, make_water_box, random_model
from molequi.calculators import MolequiCalculator
from molequi.data.batch import GraphBatch
from molequi.data.graph import atoms_to_graph
from molequi.nn import compiled


def graph_of(atoms, cutoff: float = 5.0) -> GraphBatch:
    return GraphBatch.of(atoms_to_graph(atoms, cutoff))


def force_loss_gradients(model, graph) -> list[torch.Tensor]:
    """Weight gradients of a force loss (the double backward of training)."""
    model.zero_grad(set_to_none=True)
    out = model(graph, compute_forces=True)
    (out["forces"].square().sum() + out["energy"].sum() ** 2).backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.fixture
def eager_only(monkeypatch):
    """The compiled path with the plain function in place of its compilation (fast): what
    torch.compile is given, run as it is."""
    monkeypatch.setattr(compiled, "SHARED", compiled.CompiledGradients())
    compiled.SHARED.compiled = compiled.residual_and_gradients
    monkeypatch.setattr(compiled, "SHARED_MEMBERS", compiled.CompiledGradients(compiled.member_residuals_and_gradients))
    compiled.SHARED_MEMBERS.compiled = compiled.member_residuals_and_gradients
    return compiled.SHARED


def test_the_gradient_function_equals_the_autograd_path(eager_only):
    """energy, forces, stress and the force loss's weight gradients, float64, to round-off."""
    model = copy.deepcopy(random_model())
    box = graph_of(make_water_box())
    reference = model(box, compute_stress=True)
    functional = copy.copy(model).compile()
    out = functional(box, compute_stress=True)
    for key in ("energy", "energies", "forces", "stress"):
        np.testing.assert_allclose(out[key].detach().numpy(), reference[key].detach().numpy(), atol=1e-10, err_msg=key)
    model.train()
    ethanol = graph_of(make_ethanol())
    eager = force_loss_gradients(model, ethanol)
    through = force_loss_gradients(copy.copy(model).compile(), ethanol)
    assert len(eager) == len(through)
    for a, b in zip(eager, through):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


def test_training_through_the_compiled_path_logs_structures_per_second(eager_only, tmp_path):
    import ase.io
    from test_training import make_structures, tiny_config

    from molequi.training import train

    path = tmp_path / "data.extxyz"
    ase.io.write(path, make_structures(12))
    result = train(tiny_config(max_epochs=1, compile=True), path, tmp_path / "run", log=lambda message: None)
    assert result.history[0]["train_structures_per_s"] > 0
    header = (tmp_path / "run" / "log.csv").read_text().splitlines()[0].split(",")
    assert header[-2:] == ["train_structures", "train_structures_per_s"]
    assert eager_only.active


def test_a_compilation_failure_warns_once_and_gives_the_eager_results(monkeypatch):
    calls = CompiledCalls()
    monkeypatch.setattr(compiled, "SHARED", compiled.CompiledGradients())
    monkeypatch.setattr(torch, "compile", calls.fail)
    model = random_model()
    atoms = make_ethanol()
    eager = MolequiCalculator(model)
    with pytest.warns(UserWarning, match="torch.compile failed; running the model eagerly"):
        calculator = MolequiCalculator(model, compile=True)
        forces = calculator.get_forces(atoms)
    np.testing.assert_allclose(forces, eager.get_forces(atoms), atol=1e-10)
    atoms.positions[0] += 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert calculator.get_potential_energy(atoms) == pytest.approx(eager.get_potential_energy(atoms), abs=1e-10)
    assert calls.count == 1
    assert not model.compile_enabled  # the caller's model is left as it was


class CompiledCalls:
    def __init__(self) -> None:
        self.count = 0

    def fail(self, *args, **kwargs):
        self.count += 1
        raise RuntimeError("no compiler here")


def ensemble_model(heads: int = 3):
    from molequi.models import ModelConfig, build_model

    torch.manual_seed(0)
    config = ModelConfig(species=[1, 6, 8], channels=8, l_max=1, correlation=2, radial_hidden=[16],
                         avg_num_neighbors=6.0, ensemble_heads=heads)
    return build_model(config, torch.float64)


def member_loss_gradients(model, graph) -> list[torch.Tensor]:
    """Weight gradients of a per-head force loss (how a shallow ensemble trains)."""
    model.zero_grad(set_to_none=True)
    out = model(graph, compute_forces=True)
    (out["forces_members"].square().sum() + out["energy_members"].square().sum()).backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_a_shallow_ensemble_gets_its_per_head_forces_from_one_jacobian(eager_only):
    """Per-head forces, their mean, energies and the per-head force loss's weight gradients
    through the Jacobian function equal the K backward passes of the eager path."""
    model = ensemble_model().eval()
    graph = graph_of(make_ethanol())
    fast = copy.copy(model).compile()
    out, reference = fast(graph), model(graph)
    assert out["forces_members"].shape == (3, 9, 3)
    for key in ("forces_members", "forces", "energy_members", "energy"):
        torch.testing.assert_close(out[key].detach(), reference[key].detach(), atol=1e-10, rtol=1e-9, msg=key)
    lean = fast(graph, member_forces=False)
    assert "forces_members" not in lean
    torch.testing.assert_close(lean["energy_members"], reference["energy_members"].detach(), atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(lean["forces"], reference["forces"].detach(), atol=1e-10, rtol=1e-9)
    model.train()
    eager = member_loss_gradients(model, graph)
    through = member_loss_gradients(copy.copy(model).compile(), graph)
    assert len(eager) == len(through)
    for a, b in zip(eager, through):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


def test_a_shallow_ensemble_stress_is_the_mean_of_its_heads(eager_only):
    model = ensemble_model().eval()
    box = graph_of(make_water_box())
    out, reference = copy.copy(model).compile()(box, compute_stress=True), model(box, compute_stress=True)
    torch.testing.assert_close(out["stress"], reference["stress"].detach(), atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(out["forces_members"], reference["forces_members"].detach(), atol=1e-10, rtol=1e-9)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # three compilations (evaluation, two sizes share one; training): minutes on a loaded CPU
def test_compiled_equals_eager_for_molecules_of_any_size():
    """torch.compile (inductor, dynamic shapes): one compilation, equal results within float
    tolerance for two molecule sizes, in evaluation and in training (the force loss's gradients)."""
    model = copy.deepcopy(random_model(dtype="float32", l_max=1))
    fast = copy.copy(model).compile()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation notes; a fallback shows in SHARED.active
        for atoms in (make_ethanol(), molecule("C6H6")):
            graph = graph_of(atoms)
            eager, through = model(graph), fast(graph)
            for key in ("energy", "forces"):
                torch.testing.assert_close(through[key].detach(), eager[key].detach(), atol=1e-5, rtol=1e-5)
        model.train()
        graph = graph_of(make_ethanol())
        for a, b in zip(force_loss_gradients(model, graph), force_loss_gradients(copy.copy(model).compile(), graph)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert compiled.SHARED.active, compiled.SHARED.failure  # compiled, not fallen back to eager


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_compiled_jacobian_of_a_shallow_ensemble_equals_eager():
    """The per-head Jacobian compiled by inductor for real: per-head forces in evaluation and the
    per-head force loss's weight gradients in training, within float32 tolerance."""
    import dataclasses

    from torch._dynamo.utils import counters

    from molequi.models import build_model

    charged = dataclasses.replace(ensemble_model().model.config, charge_input=True, charge_energies=[-1.5, 2.0])
    model = build_model(charged, torch.float32)  # the charge reference must not break the graph either
    atoms = make_ethanol()
    atoms.info["charge"] = -1
    graph = graph_of(atoms)
    counters.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.eval()
        eager, through = model(graph), copy.copy(model).compile()(graph)
        torch.testing.assert_close(through["forces_members"], eager["forces_members"].detach(), atol=1e-5, rtol=1e-5)
        model.train()
        for a, b in zip(member_loss_gradients(model, graph), member_loss_gradients(copy.copy(model).compile(), graph)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert compiled.SHARED_MEMBERS.active, compiled.SHARED_MEMBERS.failure
    assert not counters["graph_break"], dict(counters["graph_break"])  # one fused graph, not pieces


def test_md_compile_flag_runs_through_the_compiled_call(eager_only, tmp_path):
    import ase.io

    from molequi.cli.main import main
    from molequi.models import save_model

    calls = []
    eager_only.compiled = lambda *args: calls.append(1) or compiled.residual_and_gradients(*args)
    model_path = save_model(random_model(), tmp_path / "model.molequi")
    ase.io.write(tmp_path / "ethanol.xyz", make_ethanol())
    assert main(["md", str(model_path), str(tmp_path / "ethanol.xyz"), "--steps", "3", "--dt", "0.5", "--compile",
                 "--out", str(tmp_path / "md"), "--no-progress"]) == 0
    assert len(calls) == 4  # step 0 and three steps
