"""Physics of random (untrained) molequi models: symmetry, conservative forces and stress,
locality, smoothness, property heads — and, for every check in :mod:`molequi.testing`, a
deliberately broken model that the check must catch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from conftest import SPECIES, make_ethanol, make_water_box, random_model
from torch import nn
from torch_geometric.utils import scatter

from molequi import testing
from molequi.nn import ForceOutput

# --------------------------------------------------------------------------------------------
# the checks on healthy models
# --------------------------------------------------------------------------------------------


def test_symmetry_ethanol(model, ethanol):
    testing.assert_invariant_energy_equivariant_forces(model, ethanol, n_trials=3, seed=0)
    testing.assert_permutation_equivariant(model, ethanol, seed=0)


def test_symmetry_periodic_water(model, water_box):
    # rotating a periodic structure rotates its cell; the stress must rotate as R σ Rᵀ
    testing.assert_invariant_energy_equivariant_forces(model, water_box, n_trials=2, seed=1)
    testing.assert_permutation_equivariant(model, water_box, seed=1)


def test_forces_are_energy_gradient(model, ethanol, water_box):
    testing.assert_forces_match_finite_differences(model, ethanol)
    testing.assert_forces_match_finite_differences(model, water_box, atom_indices=[0, 4, 8])


def test_stress_matches_finite_strain(model, water_box):
    testing.assert_stress_matches_finite_differences(model, water_box)


def test_stress_of_a_sheared_cell(model):
    atoms = make_water_box(n_molecules=2, box=6.5, seed=3)
    cell = atoms.cell.array.copy()
    cell[1, 0] = 1.2
    cell[2, 1] = -0.8
    atoms.set_cell(cell, scale_atoms=True)
    testing.assert_stress_matches_finite_differences(model, atoms)


def test_batch_consistent(model, ethanol, water_box):
    testing.assert_batch_consistent(model, [ethanol, water_box, molecule("H2O"), molecule("CH4")])


def test_additive_far_apart(model, ethanol):
    testing.assert_additive_far_apart(model, ethanol, molecule("H2O"))


def test_smooth_at_cutoff(model):
    testing.assert_smooth_at_cutoff(model, species=(1, 8))
    testing.assert_smooth_at_cutoff(model, species=(6, 6))


ARCHITECTURES = [
    # (l_max, correlation, num_layers): every value of each knob appears at least once
    (0, 1, 1),
    (1, 2, 3),
    (2, 3, 1),
    (3, 1, 2),
]


@pytest.mark.parametrize(("l_max", "correlation", "num_layers"), ARCHITECTURES)
def test_architectures(l_max, correlation, num_layers):
    model = random_model(l_max=l_max, correlation=correlation, num_layers=num_layers, seed=l_max)
    atoms = make_ethanol()
    testing.assert_invariant_energy_equivariant_forces(model, atoms, n_trials=1, seed=l_max)
    testing.assert_permutation_equivariant(model, atoms, seed=l_max)
    testing.assert_forces_match_finite_differences(model, atoms, atom_indices=[0, 3, 8])


def test_species_dependent_product_weights_keep_the_symmetries(ethanol):
    import copy

    model = copy.deepcopy(random_model(l_max=2, correlation=3, num_layers=2, species_product=True))
    weights = [p for name, p in model.named_parameters() if name.endswith("species_weights")]
    assert len(weights) == 2 and weights[0].shape[:2] == (2, len(SPECIES))  # 2 body orders, 3 elements
    before = testing.evaluate(model, [ethanol])[0]["energy"]
    with torch.no_grad():
        for w in weights:
            w.copy_(1.0 + torch.randn_like(w, generator=torch.Generator().manual_seed(1)))
    assert abs(testing.evaluate(model, [ethanol])[0]["energy"] - before) > 1e-6  # the weights are used
    testing.assert_invariant_energy_equivariant_forces(model, ethanol, n_trials=1, seed=3)
    testing.assert_permutation_equivariant(model, ethanol, seed=3)
    testing.assert_forces_match_finite_differences(model, ethanol, atom_indices=[0, 3, 8])


@pytest.mark.parametrize(("l_max", "edge_l_max", "correlation"), [(0, 3, 2), (1, 2, 3)])
def test_edge_harmonics_above_the_hidden_order_keep_the_symmetries(ethanol, l_max, edge_l_max, correlation):
    model = random_model(l_max=l_max, edge_l_max=edge_l_max, correlation=correlation, num_layers=2)
    assert model.model.spherical_harmonics.irreps_out.lmax == edge_l_max
    # the product's last step makes only what the layer passes on: scalars in the last layer
    last_product = model.model.layers[-1].product.products[-1]
    assert {ir.l for _, ir in last_product.irreps_out} == {0}
    testing.assert_invariant_energy_equivariant_forces(model, ethanol, n_trials=1, seed=4)
    testing.assert_permutation_equivariant(model, ethanol, seed=4)
    testing.assert_forces_match_finite_differences(model, ethanol, atom_indices=[0, 3, 8])


def test_edge_harmonics_above_the_hidden_order_change_the_model(ethanol):
    """l > l_max harmonics reach the energy (the product contracts them to scalars)."""
    tied = testing.evaluate(random_model(l_max=0, num_layers=2, correlation=2), [ethanol])[0]["energy"]
    wider = testing.evaluate(random_model(l_max=0, edge_l_max=2, num_layers=2, correlation=2), [ethanol])[0]["energy"]
    assert abs(tied - wider) > 1e-6


def test_float32_looser_tolerance(ethanol, water_box):
    model = random_model(dtype="float32")
    assert testing.default_rtol(model) == 1e-4
    testing.assert_invariant_energy_equivariant_forces(model, ethanol, n_trials=2)
    testing.assert_invariant_energy_equivariant_forces(model, water_box, n_trials=1)
    testing.assert_permutation_equivariant(model, ethanol)
    testing.assert_smooth_at_cutoff(model)
    # finite differences run on a float64 copy of the weights; the original stays float32
    testing.assert_forces_match_finite_differences(model, ethanol, atom_indices=[1, 2])
    assert next(model.parameters()).dtype == torch.float32


def test_float32_agrees_with_float64(ethanol):
    out64 = testing.evaluate(random_model(), [ethanol])[0]
    out32 = testing.evaluate(random_model(dtype="float32"), [ethanol])[0]
    np.testing.assert_allclose(out32["energy"], out64["energy"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out32["forces"], out64["forces"], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# property heads
# --------------------------------------------------------------------------------------------

PROPERTIES = (("dipole", "dipole"), ("gap", "intensive"), ("u0", "extensive"))


def test_property_heads_transform_correctly(ethanol):
    model = random_model(properties=PROPERTIES)
    rng = np.random.default_rng(5)
    rotation = testing._random_rotations(1, seed=5)[0]
    operations = [
        ("rotation", rotation, rng.normal(scale=4.0, size=3)),
        ("reflection", -rotation, rng.normal(scale=4.0, size=3)),
        ("translation", np.eye(3), np.array([10.0, -7.0, 3.0])),
    ]
    structures = [ethanol] + [testing._transformed(ethanol, r, t) for _, r, t in operations]
    results = testing.evaluate(model, structures)
    reference = results[0]
    assert reference["dipole"].shape == (3,)
    assert reference["gap"].shape == reference["u0"].shape == (1,)
    assert np.linalg.norm(reference["dipole"]) > 1e-6, "a zero dipole would make the test vacuous"
    for (label, r, _), result in zip(operations, results[1:]):
        np.testing.assert_allclose(result["dipole"], reference["dipole"] @ r.T, rtol=1e-8, atol=1e-10, err_msg=label)
        np.testing.assert_allclose(result["gap"], reference["gap"], rtol=1e-8, atol=1e-10, err_msg=label)
        np.testing.assert_allclose(result["u0"], reference["u0"], rtol=1e-8, atol=1e-10, err_msg=label)


def test_dipole_uses_neutral_charges(ethanol):
    # Σ q_i = 0 is what makes the dipole origin-independent: a huge translation changes nothing
    model = random_model(properties=PROPERTIES)
    far = ethanol.copy()
    far.translate([1e3, -2e3, 5e2])
    near, moved = testing.evaluate(model, [ethanol, far])
    np.testing.assert_allclose(moved["dipole"], near["dipole"], atol=1e-8)


def test_extensive_and_intensive_pooling(ethanol):
    # two far-apart copies: extensive heads double, intensive heads stay, dipoles add
    model = random_model(properties=PROPERTIES)
    other = ethanol.copy()
    other.translate([100.0, 0.0, 0.0])
    one, two = testing.evaluate(model, [ethanol, ethanol + other])
    np.testing.assert_allclose(two["u0"], 2 * one["u0"], rtol=1e-10)
    np.testing.assert_allclose(two["gap"], one["gap"], rtol=1e-10)
    np.testing.assert_allclose(two["dipole"], 2 * one["dipole"], rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------------------------
# broken models: each check must catch its bug
# --------------------------------------------------------------------------------------------


class EnergyTerm(nn.Module):
    """A potential plus an extra per-atom energy ``term(pos, numbers, edge_index, shifts, batch)``;
    wrapped in ForceOutput, forces stay the exact gradient of the (broken) energy."""

    def __init__(self, potential: nn.Module, term) -> None:
        super().__init__()
        self.potential = potential
        self.term = term

    @property
    def species(self):
        return self.potential.species

    @property
    def config(self):
        return self.potential.config

    def forward(self, graph):
        outputs = self.potential(graph)
        term = self.term(graph.pos, graph.numbers, graph.edge_index, graph.shifts, graph.batch)
        outputs["residual_energies"] = outputs["residual_energies"] + term
        return outputs


def first_atoms(batch: torch.Tensor) -> torch.Tensor:
    """Index of the first atom of each structure in a batch."""
    counts = torch.bincount(batch)
    return torch.cumsum(counts, 0) - counts


def base_model():
    """A cheap healthy model for the broken-model tests (its checks pass: see
    ``test_wrappers_are_transparent``)."""
    return random_model(l_max=1, correlation=2, num_layers=1)


def with_energy_term(term) -> ForceOutput:
    return ForceOutput(EnergyTerm(base_model().model, term))


class OutputHook(nn.Module):
    """A model whose outputs are post-processed by ``hook(outputs, graph)`` (e.g. wrong forces)."""

    def __init__(self, inner: ForceOutput, hook) -> None:
        super().__init__()
        self.inner = inner
        self.hook = hook

    @property
    def model(self):
        return self.inner.model

    @property
    def dtype(self):
        return self.inner.dtype

    def forward(self, graph, compute_forces=True, compute_stress=False):
        return self.hook(self.inner(graph, compute_forces=compute_forces, compute_stress=compute_stress), graph)


def test_wrappers_are_transparent(ethanol, water_box):
    """The negative tests below are meaningful only if a do-nothing wrapper passes."""
    model = OutputHook(with_energy_term(lambda pos, *rest: torch.zeros_like(pos[:, 0])), lambda out, graph: out)
    testing.assert_invariant_energy_equivariant_forces(model, ethanol, n_trials=1)
    testing.assert_forces_match_finite_differences(model, ethanol, atom_indices=[0])
    testing.assert_stress_matches_finite_differences(model, water_box)
    testing.assert_smooth_at_cutoff(model)


def test_catches_non_invariant_energy(ethanol):
    broken = with_energy_term(lambda pos, *rest: 0.05 * pos[:, 0])  # E += 0.05 Σ x_i
    with pytest.raises(AssertionError, match="exceeds tolerance"):
        testing.assert_invariant_energy_equivariant_forces(broken, ethanol)


def test_catches_a_chiral_energy(ethanol):
    """A pseudoscalar (triple product) is rotation- and translation-invariant: only the
    reflection check can catch it."""

    def triple_product(pos, numbers, edge_index, shifts, batch):
        first = first_atoms(batch)  # per structure: a pseudoscalar of its atoms 0..3
        a, b, c = (pos[first + k] - pos[first] for k in (1, 2, 3))
        term = torch.zeros_like(pos[:, 0])
        return term.index_add(0, first, 0.05 * (a * torch.linalg.cross(b, c)).sum(-1))

    broken = with_energy_term(triple_product)
    with pytest.raises(AssertionError, match="reflection"):
        testing.assert_invariant_energy_equivariant_forces(broken, ethanol)


def test_catches_forces_that_do_not_rotate(ethanol):
    def fixed_frame_forces(outputs, graph):
        outputs["forces"] = outputs["forces"] + torch.tensor([0.1, 0.0, 0.0], dtype=outputs["forces"].dtype)
        return outputs

    broken = OutputHook(base_model(), fixed_frame_forces)
    with pytest.raises(AssertionError, match="forces after rotation"):
        testing.assert_invariant_energy_equivariant_forces(broken, ethanol)


def test_catches_order_dependent_energy(ethanol):
    # depends on which atoms are labelled 0 and 1, but is E(3)-invariant
    def first_bond(pos, numbers, edge_index, shifts, batch):
        first = first_atoms(batch)
        term = torch.zeros_like(pos[:, 0])
        return term.index_add(0, first, 0.1 * (pos[first] - pos[first + 1]).norm(dim=-1))

    broken = with_energy_term(first_bond)
    testing.assert_invariant_energy_equivariant_forces(broken, ethanol, n_trials=1)
    with pytest.raises(AssertionError, match="permuting atoms"):
        testing.assert_permutation_equivariant(broken, ethanol)


def test_catches_non_conservative_forces(ethanol):
    def scaled_forces(outputs, graph):
        outputs["forces"] = 1.05 * outputs["forces"]
        return outputs

    broken = OutputHook(base_model(), scaled_forces)
    # still perfectly E(3)-equivariant: only the gradient check sees it
    testing.assert_invariant_energy_equivariant_forces(broken, ethanol, n_trials=1)
    with pytest.raises(AssertionError, match="finite differences"):
        testing.assert_forces_match_finite_differences(broken, ethanol)


def test_catches_wrong_stress_sign(water_box):
    def flipped(outputs, graph):
        if "stress" in outputs:
            outputs["stress"] = -outputs["stress"]
        return outputs

    broken = OutputHook(base_model(), flipped)
    with pytest.raises(AssertionError, match="finite-difference strain"):
        testing.assert_stress_matches_finite_differences(broken, water_box)


def test_catches_stress_without_volume(water_box):
    def not_divided(outputs, graph):
        if "stress" in outputs:
            outputs["stress"] = outputs["stress"] * torch.linalg.det(graph.cell).abs().view(-1, 1, 1)
        return outputs

    broken = OutputHook(base_model(), not_divided)
    with pytest.raises(AssertionError, match="finite-difference strain"):
        testing.assert_stress_matches_finite_differences(broken, water_box)


def test_catches_batch_leakage(ethanol, water_box):
    def batch_size_dependent(outputs, graph):
        outputs["energy"] = outputs["energy"] + 1e-3 * graph.num_nodes
        return outputs

    broken = OutputHook(base_model(), batch_size_dependent)
    with pytest.raises(AssertionError, match="batched vs alone energy"):
        testing.assert_batch_consistent(broken, [ethanol, water_box])


def test_catches_non_additive_energy(ethanol):
    # E += 0.01 N² per structure: invariant and batch-consistent, but not size-extensive
    def quadratic_in_size(pos, numbers, edge_index, shifts, batch):
        counts = torch.bincount(batch).to(pos.dtype)
        return 0.01 * counts[batch]

    broken = with_energy_term(quadratic_in_size)
    testing.assert_batch_consistent(broken, [ethanol, molecule("H2O")])
    with pytest.raises(AssertionError, match="sum of energies"):
        testing.assert_additive_far_apart(broken, ethanol, molecule("H2O"))


def test_catches_hard_cutoff():
    # a per-edge constant: a step in the energy where a neighbor enters the cutoff
    def edge_count(pos, numbers, edge_index, shifts, batch):
        ones = torch.ones(edge_index.shape[1], dtype=pos.dtype)
        return 0.05 * scatter(ones, edge_index[0], dim=0, dim_size=pos.shape[0], reduce="sum")

    broken = with_energy_term(edge_count)
    with pytest.raises(AssertionError, match="not continuous at the cutoff"):
        testing.assert_smooth_at_cutoff(broken)


def test_catches_force_discontinuity_at_cutoff():
    # continuous energy (a kink) but a force that jumps: E += 0.002 Σ_edges (r_c - r); at
    # r_c - 1e-4 Å the energy is within tolerance (4e-7 eV) while the force is 4e-3 eV/Å
    def linear_to_cutoff(pos, numbers, edge_index, shifts, batch):
        lengths = (pos[edge_index[1]] - pos[edge_index[0]] + shifts).norm(dim=-1)
        return 0.002 * scatter(5.0 - lengths, edge_index[0], dim=0, dim_size=pos.shape[0], reduce="sum")

    broken = with_energy_term(linear_to_cutoff)
    with pytest.raises(AssertionError, match="force does not vanish"):
        testing.assert_smooth_at_cutoff(broken)


def test_failure_message_reports_error_and_tolerance(ethanol):
    broken = with_energy_term(lambda pos, *rest: 0.05 * pos[:, 0])
    with pytest.raises(AssertionError) as info:
        testing.assert_invariant_energy_equivariant_forces(broken, ethanol, n_trials=1)
    message = str(info.value)
    assert "max abs error" in message and "tolerance" in message and "rtol=1.0e-08" in message


def test_additive_rejects_periodic_input(model, water_box):
    with pytest.raises(ValueError, match="non-periodic"):
        testing.assert_additive_far_apart(model, water_box, molecule("H2O"))


def test_dimer_beyond_cutoff_has_no_interaction(model):
    cutoff = model.model.config.cutoff
    dimers = [Atoms("HO", positions=[[0, 0, 0], [r, 0, 0]]) for r in (cutoff + 1e-6, cutoff + 3.0)]
    just_out, far = testing.evaluate(model, dimers)
    assert just_out["energy"] == far["energy"]
    assert np.all(just_out["forces"] == 0.0)
