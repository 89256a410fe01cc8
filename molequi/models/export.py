"""Export a trained model as a self-contained TorchScript file.

The file needs only PyTorch to load (``torch.jit.load``, no molequi, e3nn or torch-geometric)
and is called as::

    module = torch.jit.load("model.pt")
    out = module(positions, atomic_numbers)   # [N, 3] float Å, [N] int64
    out["energy"]   # scalar float64, eV
    out["forces"]   # [N, 3] float64, eV/Å
    module(positions, atomic_numbers, -1.0)   # a charge-input model: the total charge, e (default 0)

for one open (non-periodic) molecule. The module builds its own neighbor list (all pairs within
the cutoff, in torch ops) and differentiates its energy with ``torch.autograd.grad``.

How it is built: the e3nn layers are not scriptable as molequi writes them (the potential keeps
its settings in a dataclass), so the per-atom energy network is *traced* with
``torch.jit.trace`` on a graph whose size is not baked in (a test checks molecules of other
sizes), and a small *scripted* wrapper adds what tracing cannot record: the data-dependent
neighbor list, the species check and the force gradient.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict

import torch
from torch import nn

from molequi.data.batch import GraphBatch
from molequi.errors import ConfigError
from molequi.nn.forces import ForceOutput

FORMATS = ("torchscript",)


class _PerAtomEnergies(nn.Module):
    """The potential on one molecule: ``(pos, numbers, edge_index, shifts, batch, charge [1] e)
    -> (residual, reference)`` per-atom energies, eV; the reference (E0s, shift and charge
    reference, float64) does not depend on positions. A potential that gives only ``energies``
    has a zero reference. A model without charge input ignores ``charge``."""

    def __init__(self, potential: nn.Module) -> None:
        super().__init__()
        self.potential = potential

    def forward(self, pos, numbers, edge_index, shifts, batch, charge):
        cell = torch.zeros(1, 3, 3, dtype=pos.dtype, device=pos.device)
        outputs = self.potential(GraphBatch(pos, numbers, edge_index, shifts, batch, 1, cell, charge=charge))
        if "residual_energies" in outputs:
            return outputs["residual_energies"], outputs["reference_energies"].to(torch.float64)
        energies = outputs["energies"]
        return energies, torch.zeros_like(energies, dtype=torch.float64)


class TorchScriptPotential(nn.Module):
    """``forward(positions [N, 3] Å, atomic_numbers [N] int64, charge e = 0) -> {"energy": eV
    (float64 scalar), "forces": eV/Å [N, 3] float64}`` for an open molecule; scriptable."""

    def __init__(self, energies: nn.Module, cutoff: float, species: list[int], position_dtype: torch.dtype) -> None:
        super().__init__()
        self.energies = energies
        self.cutoff = float(cutoff)
        self.position_dtype = position_dtype
        known = torch.zeros(119, dtype=torch.bool)
        known[torch.tensor(species)] = True
        self.register_buffer("known", known)

    def forward(
        self, positions: torch.Tensor, atomic_numbers: torch.Tensor, charge: float = 0.0
    ) -> Dict[str, torch.Tensor]:
        if positions.dim() != 2 or positions.size(1) != 3:
            raise ValueError("positions must be a [N, 3] tensor of Å")
        if atomic_numbers.dim() != 1 or atomic_numbers.size(0) != positions.size(0):
            raise ValueError("atomic_numbers must be a [N] int64 tensor matching positions")
        if positions.size(0) == 0:
            raise ValueError("the molecule is empty (no atoms): there is nothing to compute")
        if not bool(torch.isfinite(positions).all()):
            raise ValueError("positions hold NaN or infinite values; give finite coordinates in Å")
        numbers = atomic_numbers.to(torch.long)
        if bool(((numbers < 1) | (numbers > 118)).any()) or not bool(self.known[numbers.clamp(0, 118)].all()):
            raise ValueError("the molecule holds an element this model was not trained on (or an atomic number outside 1-118)")
        pos = positions.detach().to(self.position_dtype).requires_grad_(True)
        n = pos.size(0)
        index = torch.arange(n, device=pos.device)
        centre = index.repeat_interleave(n)
        neighbor = index.repeat(n)
        with torch.no_grad():
            distance2 = (pos[neighbor] - pos[centre]).square().sum(dim=1)
            keep = (centre != neighbor) & (distance2 < self.cutoff * self.cutoff)
        edge_index = torch.stack([centre[keep], neighbor[keep]])
        shifts = torch.zeros(edge_index.size(1), 3, dtype=self.position_dtype, device=pos.device)
        batch = torch.zeros(n, dtype=torch.long, device=pos.device)
        total_charge = torch.full((1,), charge, dtype=torch.float64, device=pos.device)
        residual, reference = self.energies(pos, numbers, edge_index, shifts, batch, total_charge)
        # the two sums in float64, as molequi.predict forms them
        energy = reference.to(torch.float64).sum() + residual.to(torch.float64).sum()
        gradient = torch.autograd.grad([residual.sum()], [pos], allow_unused=True)[0]
        if gradient is None:  # a lone atom: no edges, no position dependence
            forces = torch.zeros(n, 3, dtype=torch.float64, device=pos.device)
        else:
            forces = -gradient.to(torch.float64)
        return {"energy": energy.detach(), "forces": forces.detach()}


def _position_dtype(model: ForceOutput) -> torch.dtype:
    """Positions in float64 where the potential forms its edge vectors in float64 and casts them
    (a float64 energy path), else in the model dtype."""
    return torch.float64 if hasattr(model.model, "reference_energies") else model.dtype


def _example(model: ForceOutput, device: torch.device):
    """A small molecule of the model's species (atoms on a jittered line, within the cutoff of
    one another) whose graph traces every layer."""
    species = list(model.species)
    numbers = torch.tensor((species * 3)[: max(3, len(species))], dtype=torch.long, device=device)
    n = numbers.numel()
    generator = torch.Generator().manual_seed(0)
    pos = (torch.arange(n, dtype=torch.float64).unsqueeze(1) * torch.tensor([1.1, 0.3, 0.0], dtype=torch.float64)
           + 0.1 * torch.randn(n, 3, generator=generator, dtype=torch.float64)).to(device=device, dtype=_position_dtype(model))
    index = torch.arange(n, device=device)
    centre, neighbor = index.repeat_interleave(n), index.repeat(n)
    keep = centre != neighbor
    edge_index = torch.stack([centre[keep], neighbor[keep]])
    shifts = torch.zeros(edge_index.size(1), 3, dtype=pos.dtype, device=device)
    charge = torch.ones(1, dtype=torch.float64, device=device)  # non-zero: the charge terms trace
    return pos, numbers, edge_index, shifts, torch.zeros(n, dtype=torch.long, device=device), charge


def to_torchscript(model: ForceOutput) -> torch.jit.ScriptModule:
    """A :class:`TorchScriptPotential` of ``model`` (on the model's device), scripted."""
    model = model.eval()
    config = model.model.config
    # property heads are not exported: the file computes energy and forces only
    example = _example(model, model.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings; correctness is tested
        traced = torch.jit.trace(_PerAtomEnergies(model.model), example, check_trace=False)
        wrapper = TorchScriptPotential(traced, config.cutoff, list(model.species), _position_dtype(model)).to(model.device)
        return torch.jit.script(wrapper)


def export_model(model: ForceOutput, path: str | Path, format: str = "torchscript") -> Path:
    """Write ``model`` to ``path`` in ``format`` (only ``torchscript``), atomically."""
    if format not in FORMATS:
        raise ConfigError(f"unknown export format '{format}'; choose one of {', '.join(FORMATS)}")
    if getattr(model, "baseline", None) is not None:  # tblite runs outside torch: the file would lack it
        raise ConfigError(
            f"cannot export this model: it adds a {model.baseline.name} baseline at run time (Δ-learning), "
            "which a TorchScript file cannot carry; use it through molequi (predict, the calculator, md)"
        )
    from molequi.utils import atomic_write

    scripted = to_torchscript(model)

    def write(temporary: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript; it still loads
            torch.jit.save(scripted, str(temporary))

    return atomic_write(path, write)
