"""Forces (and stress) from any per-atom energy model, in one wrapper.

The energy model knows nothing about forces: :class:`ForceOutput` turns on gradients for the
positions (and a strain for periodic cells), calls it once and differentiates the total energy.
Forces are therefore exactly conservative, F = -∂E/∂r, and exactly equivariant.

Compiled: :meth:`ForceOutput.compile` routes energy and gradients through one
``torch.compile``d function (:mod:`molequi.nn.compiled`), with the same outputs.

Precision: every energy leaves here in float64, formed by :func:`energy_outputs` from the
model's small per-atom residuals (model dtype) and its float64 per-atom references (E0s and
shift). Forces and stress are returned in the model dtype: they are derivatives of the residual
alone, so the reference energies cannot round them.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch_geometric.utils import scatter

from molequi.data.batch import GraphBatch
from molequi.errors import ConfigError, UnknownElementError
from molequi.nn import compiled


def energy_outputs(
    residual_energies: torch.Tensor, reference_energies: torch.Tensor, batch: torch.Tensor, num_graphs: int
) -> dict[str, torch.Tensor]:
    """The float64 energies of a batch: the one place where residual and reference meet.

    Args:
        residual_energies: [n_atoms] learned per-atom energies, eV (any dtype, e.g. float32).
        reference_energies: [n_atoms] per-atom reference energies ``E0[Z_i] + shift``, eV (float64).
        batch: [n_atoms] structure index of each atom.
        num_graphs: number of structures.

    Returns (all float64):
        ``energies`` [n_atoms] per-atom energies, eV; ``energy`` [num_graphs] total energies, eV;
        ``energy_residual`` [num_graphs] sum of the residuals, eV; ``energy_reference``
        [num_graphs] sum of the references, eV (``energy = energy_reference + energy_residual``).
        Both sums are taken in float64, so a total does not depend on the order of the atoms.
    """
    residual = residual_energies.to(torch.float64)
    reference = reference_energies.to(torch.float64)
    energy_residual = scatter(residual, batch, dim=0, dim_size=num_graphs, reduce="sum")
    energy_reference = scatter(reference, batch, dim=0, dim_size=num_graphs, reduce="sum")
    return {
        "energies": residual + reference,
        "energy": energy_reference + energy_residual,
        "energy_residual": energy_residual,
        "energy_reference": energy_reference,
    }


MEMBER_GRADIENTS = "loop"
"""How the forces of a shallow ensemble's K heads are computed: ``"loop"`` (K backward passes
through the shared body, retaining its graph) or ``"batched"`` (one vectorised backward,
``torch.autograd.grad(is_grads_batched=True)``). ``scripts/bench_ensemble_heads.py`` times both."""


def member_gradients(members: torch.Tensor, positions: torch.Tensor, create_graph: bool, method: str = "loop") -> torch.Tensor:
    """[K, n_atoms, 3] gradients of each head's summed residual energy ``members[:, k].sum()``
    ([n_atoms, K], eV) with respect to ``positions`` (eV/Å).

    The K heads share the body, so K gradients cost K backward passes of it ("loop") — or one
    vmapped pass ("batched"), which trades memory (K copies of every intermediate gradient)
    for fewer kernel launches."""
    heads = members.shape[1]
    if method == "batched":
        eye = torch.eye(heads, dtype=members.dtype, device=members.device)
        grad_outputs = eye.unsqueeze(1).expand(heads, members.shape[0], heads)
        (gradients,) = torch.autograd.grad(
            members, positions, grad_outputs=grad_outputs, is_grads_batched=True, create_graph=create_graph, retain_graph=True
        )
        return gradients
    return torch.stack(
        [
            torch.autograd.grad(members[:, k].sum(), positions, retain_graph=True, create_graph=create_graph)[0]
            for k in range(heads)
        ]
    )


def member_energies(
    members: torch.Tensor, energy_reference: torch.Tensor, batch: torch.Tensor, num_graphs: int
) -> torch.Tensor:
    """[K, num_graphs] float64 total energies (eV) of a shallow ensemble's heads from their
    per-atom residuals ``members`` [n_atoms, K] (eV) and the structures' float64 references."""
    member_sums = scatter(members.to(torch.float64), batch, dim=0, dim_size=num_graphs, reduce="sum")
    return (member_sums + energy_reference.unsqueeze(-1)).T


class ForceOutput(nn.Module):
    """Wrap an energy model ``model(graph: GraphBatch) -> dict``
    that returns per-atom ``residual_energies`` (eV, its own dtype) and ``reference_energies``
    (eV, float64) — or only per-atom ``energies``, taken as residuals with a zero reference — and
    add float64 ``energy`` (eV), ``energies`` (eV), ``energy_residual`` and ``energy_reference``
    (eV, see :func:`energy_outputs`), and, in the model dtype, ``forces`` (eV/Å) and optionally
    ``stress`` (eV/Å³, ASE sign convention σ = (1/V) ∂E/∂ε).

    The wrapped model must expose ``species`` (its known atomic numbers).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # A physical baseline added at run time (Δ-learning): any object with a ``name`` and
        # ``batch_outputs(graph) -> (energy [G], energies [N], forces [N, 3])`` in float64 eV and
        # eV/Å; load_model sets one for a model trained with it. Training leaves it None: its
        # labels already have the baseline taken off.
        self.baseline = None
        # Whether energy and gradients go through torch.compile (see compile()); off by default:
        # the first call compiles for tens of seconds on a CPU.
        self.compile_enabled = False

    def compile(self, enabled: bool = True) -> ForceOutput:
        """Evaluate energy and forces (and stress) through one ``torch.compile``d function
        (:mod:`molequi.nn.compiled`): the first call compiles (tens of seconds on a CPU), later
        calls of any atom or edge count reuse it. Falls back to eager, with one warning, where
        compilation fails. A shallow ensemble's per-head forces are one compiled Jacobian. In evaluation mode
        the outputs carry no autograd graph in the weights (the eager call keeps one for the
        energy); in training mode they do, forces included. Returns ``self``."""
        self.compile_enabled = bool(enabled)
        return self

    @property
    def species(self) -> list[int]:
        return self.model.species

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_species(self, numbers: torch.Tensor) -> None:
        """Raise :class:`UnknownElementError` naming elements the model was not trained on."""
        present = {int(z) for z in torch.unique(numbers).tolist()}
        unknown = sorted(present - set(self.species))
        if unknown:
            from ase.data import chemical_symbols

            names = ", ".join(chemical_symbols[z] for z in unknown)
            known = ", ".join(chemical_symbols[z] for z in self.species)
            raise UnknownElementError(f"the model does not know element(s) {names}; it was trained on {known}")

    def forward(
        self,
        graph,
        compute_forces: bool = True,
        compute_stress: bool = False,
        check_species: bool = True,
        member_forces: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Evaluate a :class:`~molequi.data.batch.GraphBatch` or a torch-geometric graph or batch.

        Returns a dict with float64 ``energy`` [num_graphs] eV, ``energies`` [n_atoms] eV,
        ``energy_residual`` and ``energy_reference`` [num_graphs] eV; in the model dtype
        ``forces`` [n_atoms, 3] eV/Å (if asked) and ``stress`` [num_graphs, 3, 3] eV/Å³ (if asked;
        periodic cells only); and any property heads of the model. A shallow ensemble
        (``ensemble_heads`` K ≥ 2) gives the mean over its heads, and each head's values in
        ``energy_members`` [K, G] eV (float64), ``forces_members`` [K, n_atoms, 3] eV/Å (if
        forces are asked; K backward passes, see :func:`member_gradients`) and
        ``<property>_members`` [K, G, components]. ``member_forces=False`` skips the heads' forces
        (one backward pass for the mean forces instead of K; ``energy_members`` stays).
        """
        graph = GraphBatch.of(graph)
        if check_species:
            self.check_species(graph.numbers)
        dtype = self.dtype
        num_graphs, batch = graph.num_graphs, graph.batch
        # Positions keep their float64: the model forms edge vectors before casting to its dtype,
        # so a float32 model rounds bond vectors (~3 Å), not coordinates (tens of Å in a large
        # system). A fresh leaf so gradients never leak into the caller's tensors.
        position_dtype = torch.promote_types(graph.pos.dtype, dtype)
        pos = graph.pos.detach().to(dtype=position_dtype, copy=True).requires_grad_(compute_forces or compute_stress)
        shifts = graph.shifts.to(position_dtype)
        inputs = [pos]
        strain = None
        if compute_stress:
            strain = torch.zeros(num_graphs, 3, 3, dtype=position_dtype, device=pos.device, requires_grad=True)
            inputs.append(strain)
        if self._use_compiled(compute_forces or compute_stress):
            outputs = self._compiled_outputs(graph, pos.detach(), strain, compute_forces, member_forces, dtype)
            if self.baseline is not None:
                self._add_baseline(outputs, graph, compute_stress)
            return outputs
        pos, shifts = compiled.strained(graph, pos, shifts, strain)
        with torch.set_grad_enabled(torch.is_grad_enabled() or compute_forces or compute_stress):
            outputs = self.model(graph.replace(pos=pos, shifts=shifts))
            members = outputs.pop("residual_energies_members", None)  # [n_atoms, K], shallow ensembles
            if "residual_energies" in outputs:
                residual = outputs.pop("residual_energies")
                reference = outputs.pop("reference_energies")
            else:  # a model without a reference: its energies are all "residual"
                residual = outputs.pop("energies")
                reference = torch.zeros(residual.shape, dtype=torch.float64, device=residual.device)
            outputs.update(energy_outputs(residual, reference, batch, num_graphs))
            if members is not None:
                outputs["energy_members"] = member_energies(members, outputs["energy_reference"], batch, num_graphs)
            if members is not None and compute_forces and member_forces:
                # each head's forces (the mean forces are their mean: the gradient is linear)
                member_forces = -member_gradients(members, inputs[0], self.training, MEMBER_GRADIENTS)
                outputs["forces_members"] = member_forces.to(dtype)
                outputs["forces"] = member_forces.mean(0).to(dtype)
                if compute_stress:
                    (strain_gradient,) = torch.autograd.grad(residual.sum(), inputs[1], create_graph=self.training)
                    volume = torch.linalg.det(graph.cell.to(position_dtype)).abs()
                    outputs["stress"] = (strain_gradient / volume.view(-1, 1, 1)).to(dtype)
            elif compute_forces or compute_stress:
                # The references do not depend on positions: differentiate the residuals only,
                # in the model dtype (the gradient of a sum is the same in any dtype).
                gradients = torch.autograd.grad(
                    residual.sum(), inputs, create_graph=self.training, allow_unused=False
                )
                if compute_forces:
                    outputs["forces"] = -gradients[0].to(dtype)
                if compute_stress:
                    volume = torch.linalg.det(graph.cell.to(position_dtype)).abs()  # [num_graphs], Å³
                    outputs["stress"] = (gradients[-1] / volume.view(-1, 1, 1)).to(dtype)
        if self.baseline is not None:
            self._add_baseline(outputs, graph, compute_stress)
        return outputs

    def _use_compiled(self, gradients: bool) -> bool:
        """Whether this call goes through the compiled function: compiled on, gradients asked,
        and the compiler has not failed."""
        if not (self.compile_enabled and gradients):
            return False
        return compiled.SHARED.active and compiled.SHARED_MEMBERS.active

    def _compiled_outputs(
        self, graph: GraphBatch, pos: torch.Tensor, strain: torch.Tensor | None, compute_forces: bool,
        member_forces: bool, dtype: torch.dtype,
    ) -> dict[str, torch.Tensor]:
        """:meth:`forward`'s outputs through :data:`molequi.nn.compiled.SHARED` (positions
        ``pos`` [N, 3] Å in the position dtype, ``strain`` [S, 3, 3] or None), or through
        :data:`~molequi.nn.compiled.SHARED_MEMBERS` for a shallow ensemble's per-head forces."""
        if strain is not None:
            strain = strain.detach()
        config = getattr(self.model, "config", None)
        per_head = compute_forces and member_forces and getattr(config, "ensemble_heads", 1) > 1
        function = compiled.SHARED_MEMBERS if per_head else compiled.SHARED
        # In evaluation no graph in the weights is kept (the gradients in positions and strain
        # are taken inside the function either way): a leaner compiled graph, no saved activations.
        with torch.no_grad() if not self.training else contextlib.nullcontext():
            outputs, gradients = function(self.model, graph, pos, strain)
        outputs = dict(outputs)
        residual = compiled.residual_of(outputs)
        members = outputs.pop("residual_energies_members", None)
        outputs.pop("energies", None)
        outputs.pop("residual_energies", None)
        reference = outputs.pop("reference_energies", None)
        if reference is None:
            reference = torch.zeros(residual.shape, dtype=torch.float64, device=residual.device)
        outputs.update(energy_outputs(residual, reference, graph.batch, graph.num_graphs))
        if members is not None:
            outputs["energy_members"] = member_energies(members, outputs["energy_reference"], graph.batch, graph.num_graphs)
        if per_head:  # [K, N, 3] (and [K, S, 3, 3]): the ensemble's gradients are their mean
            outputs["forces_members"] = -gradients[0].to(dtype)
            gradients = tuple(gradient.mean(0) for gradient in gradients)
        if compute_forces:
            outputs["forces"] = -gradients[0].to(dtype)
        if strain is not None:
            volume = torch.linalg.det(graph.cell.to(pos.dtype)).abs()  # [num_graphs], Å³
            outputs["stress"] = (gradients[-1] / volume.view(-1, 1, 1)).to(dtype)
        return outputs

    def _add_baseline(self, outputs: dict, graph: GraphBatch, compute_stress: bool) -> None:
        """Add the baseline's energies (float64, into the reference) and forces to ``outputs``."""
        if compute_stress or bool(torch.any(graph.cell != 0)):
            raise ConfigError(
                f"this model adds a {self.baseline.name} baseline, which molequi evaluates for molecules in open "
                "space only (no periodic cell, no stress)"
            )
        energy, energies, forces = self.baseline.batch_outputs(graph)
        outputs["energy"] = outputs["energy"] + energy
        outputs["energy_reference"] = outputs["energy_reference"] + energy
        outputs["energies"] = outputs["energies"] + energies
        if "energy_members" in outputs:
            outputs["energy_members"] = outputs["energy_members"] + energy
        if "forces" in outputs:
            outputs["forces"] = outputs["forces"] + forces.to(outputs["forces"].dtype)
        if "forces_members" in outputs:
            outputs["forces_members"] = outputs["forces_members"] + forces.to(outputs["forces_members"].dtype)
