"""Forces (and stress) from any per-atom energy model, in one wrapper.

The energy model knows nothing about forces: :class:`ForceOutput` turns on gradients for the
positions (and a strain for periodic cells), calls it once and differentiates the total energy.
Forces are therefore exactly conservative, F = -∂E/∂r, and exactly equivariant.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.utils import scatter

from molequi.errors import UnknownElementError


class ForceOutput(nn.Module):
    """Wrap an energy model ``model(pos, numbers, edge_index, shifts, batch, num_graphs) -> dict``
    that returns per-atom ``energies`` (eV), and add ``energy`` (eV), ``forces`` (eV/Å) and
    optionally ``stress`` (eV/Å³, ASE sign convention σ = (1/V) ∂E/∂ε).

    The wrapped model must expose ``species`` (its known atomic numbers).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

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
    ) -> dict[str, torch.Tensor]:
        """Evaluate a graph or batch (see :mod:`molequi.data.graph` for its fields).

        Returns a dict with ``energy`` [num_graphs] eV, ``energies`` [n_atoms] eV, ``forces``
        [n_atoms, 3] eV/Å (if asked), ``stress`` [num_graphs, 3, 3] eV/Å³ (if asked; periodic
        cells only) and any property heads of the model.
        """
        if check_species:
            self.check_species(graph.numbers)
        dtype = self.dtype
        num_graphs = int(graph.num_graphs) if hasattr(graph, "num_graphs") else 1
        batch = graph.batch if getattr(graph, "batch", None) is not None else torch.zeros_like(graph.numbers)
        # A fresh leaf so gradients never leak into the caller's tensors.
        pos = graph.pos.detach().to(dtype=dtype, copy=True).requires_grad_(compute_forces or compute_stress)
        shifts = graph.shifts.to(dtype)
        inputs = [pos]
        if compute_stress:
            strain = torch.zeros(num_graphs, 3, 3, dtype=dtype, device=pos.device, requires_grad=True)
            symmetric = 0.5 * (strain + strain.transpose(1, 2))
            pos = pos + torch.einsum("ni,nij->nj", pos, symmetric[batch])
            shifts = shifts + torch.einsum("ei,eij->ej", shifts, symmetric[batch[graph.edge_index[0]]])
            inputs.append(strain)
        with torch.set_grad_enabled(torch.is_grad_enabled() or compute_forces or compute_stress):
            outputs = self.model(pos, graph.numbers, graph.edge_index, shifts, batch, num_graphs)
            energy = scatter(outputs["energies"], batch, dim=0, dim_size=num_graphs, reduce="sum")
            outputs["energy"] = energy
            if compute_forces or compute_stress:
                gradients = torch.autograd.grad(
                    energy.sum(), inputs, create_graph=self.training, allow_unused=False
                )
                if compute_forces:
                    outputs["forces"] = -gradients[0]
                if compute_stress:
                    volume = torch.linalg.det(graph.cell.to(dtype)).abs()  # [num_graphs], Å³
                    outputs["stress"] = gradients[-1] / volume.view(-1, 1, 1)
        return outputs
