"""Loss and error metrics.

Units: energy errors are on the total energy per structure, in meV; force errors are per
Cartesian component, in meV/Å; property errors are in the property's own unit (eV for
energies such as a gap, e·Å for dipoles).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

METRIC_KEYS = ("energy_mae_meV", "energy_rmse_meV", "forces_mae_meV_per_A", "forces_rmse_meV_per_A")


def atoms_per_graph(batch) -> torch.Tensor:
    """[num_graphs] number of atoms in each structure of a batch."""
    return (batch.ptr[1:] - batch.ptr[:-1]) if hasattr(batch, "ptr") else torch.tensor([batch.num_nodes])


def loss_terms(
    outputs: Mapping[str, torch.Tensor], batch, properties: Sequence[str] = ()
) -> dict[str, torch.Tensor]:
    """Mean squared errors: ``energy`` per atom (eV²/atom²), ``forces`` per component ((eV/Å)²),
    and one per property head (its unit squared)."""
    dtype = outputs["energy"].dtype
    n_atoms = atoms_per_graph(batch).to(outputs["energy"].device, dtype)
    terms = {
        "energy": (((outputs["energy"] - batch.energy.to(dtype)) / n_atoms) ** 2).mean(),
        "forces": ((outputs["forces"] - batch.forces.to(dtype)) ** 2).mean(),
    }
    for name in properties:
        terms[name] = ((outputs[name] - batch[name].to(dtype)) ** 2).mean()
    return terms


def weighted_loss(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """``Σ weight · term`` (MACE-style: w_E · MSE(E/N) + w_F · MSE(F) + Σ w_p · MSE(p))."""
    return sum(weights.get(name, 1.0) * term for name, term in terms.items())


class MetricSums:
    """Running sums of errors, so metrics can be accumulated batch by batch and all-reduced
    across processes before being turned into MAE/RMSE."""

    def __init__(self, properties: Sequence[str] = (), weights: Mapping[str, float] | None = None) -> None:
        self.properties = list(properties)
        self.weights = dict(weights or {})
        # [n_structures, |dE| sum, dE² sum, (dE/N)² sum, n_components, |dF| sum, dF² sum, then per
        # property: n_values, |dp| sum, dp² sum]
        self.sums = torch.zeros(7 + 3 * len(self.properties), dtype=torch.float64)

    @torch.no_grad()
    def add(self, outputs: Mapping[str, torch.Tensor], batch) -> None:
        n_atoms = atoms_per_graph(batch).to(torch.float64).cpu()
        d_energy = (outputs["energy"].detach().to(torch.float64).cpu() - batch.energy.to(torch.float64).cpu())
        d_forces = (outputs["forces"].detach().to(torch.float64).cpu() - batch.forces.to(torch.float64).cpu())
        values = [
            float(d_energy.numel()),
            float(d_energy.abs().sum()),
            float((d_energy**2).sum()),
            float(((d_energy / n_atoms) ** 2).sum()),
            float(d_forces.numel()),
            float(d_forces.abs().sum()),
            float((d_forces**2).sum()),
        ]
        for name in self.properties:
            d = outputs[name].detach().to(torch.float64).cpu() - batch[name].to(torch.float64).cpu()
            values += [float(d.numel()), float(d.abs().sum()), float((d**2).sum())]
        self.sums += torch.tensor(values, dtype=torch.float64)

    def all_reduce(self) -> None:
        """Sum over the processes of a ``torch.distributed`` group (no-op without one)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            backend = dist.get_backend()
            tensor = self.sums.cuda() if backend == "nccl" else self.sums.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            self.sums = tensor.cpu()

    def result(self) -> dict[str, float]:
        """MAE/RMSE in meV (energy) and meV/Å (forces), the weighted loss, and per-property MAE."""
        s = self.sums.tolist()
        n, nf = max(s[0], 1.0), max(s[4], 1.0)
        result = {
            "energy_mae_meV": 1000.0 * s[1] / n,
            "energy_rmse_meV": 1000.0 * math.sqrt(s[2] / n),
            "forces_mae_meV_per_A": 1000.0 * s[5] / nf,
            "forces_rmse_meV_per_A": 1000.0 * math.sqrt(s[6] / nf),
        }
        loss = self.weights.get("energy", 1.0) * s[3] / n + self.weights.get("forces", 1.0) * s[6] / nf
        for k, name in enumerate(self.properties):
            count, absolute, square = s[7 + 3 * k : 10 + 3 * k]
            result[f"{name}_mae"] = absolute / max(count, 1.0)
            loss += self.weights.get(name, 1.0) * square / max(count, 1.0)
        result["loss"] = loss
        result["n_structures"] = int(s[0])
        return result
