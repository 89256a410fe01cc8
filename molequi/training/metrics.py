"""Loss and error metrics.

Units: energy errors are on the total energy per structure, in meV (computed in float64 from the
residual energies, see :func:`energy_errors`); force errors are per
Cartesian component, in meV/Å; property errors are in the property's own unit (eV for
energies such as a gap, e·Å for dipoles).

Every label is optional: a term (and its metrics) exists only for batches that carry the label
and outputs that predict it, so QM9-style data without forces train and report energies and
properties only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from molequi.models.heads import head

METRIC_KEYS = ("energy_mae_meV", "energy_rmse_meV", "forces_mae_meV_per_A", "forces_rmse_meV_per_A")


def atoms_per_graph(batch) -> torch.Tensor:
    """[num_graphs] number of atoms in each structure of a batch."""
    return (batch.ptr[1:] - batch.ptr[:-1]) if hasattr(batch, "ptr") else torch.tensor([batch.num_nodes])


def has_label(batch, key: str) -> bool:
    """Whether every structure of ``batch`` carries the label ``key``."""
    return key in batch and batch[key] is not None


def property_prediction(predicted: torch.Tensor, label: torch.Tensor, kind: str | None = None) -> torch.Tensor:
    """The prediction to compare with ``label``, as its head kind says
    (:meth:`~molequi.models.heads.HeadKind.comparable`: a dipole vector [G, 3] against a
    magnitude label [G, 1], QM9's |μ|, through its norm). Without a kind, by shape alone."""
    if kind is not None:
        return head(kind).comparable(predicted, label)
    if predicted.shape[-1] == 3 and label.shape[-1] == 1:
        return torch.linalg.vector_norm(predicted, dim=-1, keepdim=True)
    return predicted


def property_kinds(properties: Mapping[str, str] | Sequence[str]) -> dict[str, str | None]:
    """``{name: kind}`` from a ``{name: kind}`` mapping or a list of names (kind unknown)."""
    if isinstance(properties, Mapping):
        return dict(properties)
    return {name: None for name in properties}


def energy_errors(outputs: Mapping[str, torch.Tensor], batch) -> torch.Tensor:
    """[num_graphs] float64 predicted minus labelled total energy, eV, formed from residuals.

    The float64 reference energies (E0s and shift, ~10^4 eV for an organic molecule) are taken
    off the label first, ``label − energy_reference``, and compared with the prediction's own
    residual ``energy_residual``: the error of a float32 model is never rounded at the scale of
    a total energy (~1 meV in float32). Outputs without a reference compare totals in float64.
    """
    label = batch.energy.to(device=outputs["energy"].device, dtype=torch.float64)
    if "energy_residual" in outputs and "energy_reference" in outputs:
        return outputs["energy_residual"].to(torch.float64) - (label - outputs["energy_reference"].to(torch.float64))
    return outputs["energy"].to(torch.float64) - label


def bootstrap_weights(batch, heads: int, seed: int = 0) -> torch.Tensor:
    """[heads, num_graphs] float64 Bayesian-bootstrap weights of the structures of ``batch``, one
    set per head of a shallow ensemble: Exp(1) draws (mean 1) that are a fixed function of the
    structure's coordinates, the head and ``seed``, so each head sees its own reweighting of the
    training data, the same at every epoch (no structure index is needed)."""
    pos = batch.pos.detach().to(torch.float64)
    mix = torch.tensor([0.7548776662, 0.5698402910, 0.3819660113], dtype=torch.float64, device=pos.device)
    num_graphs = int(batch.num_graphs) if hasattr(batch, "num_graphs") else 1
    graph = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros(len(pos), dtype=torch.long)
    key = torch.zeros(num_graphs, dtype=torch.float64, device=pos.device).index_add_(0, graph.to(pos.device), pos @ mix)
    head = torch.arange(1, heads + 1, dtype=torch.float64, device=pos.device)[:, None]
    uniform = torch.frac(torch.abs(torch.sin(key[None] * 12.9898 * head + 78.233 * (seed + 1) * head) * 43758.5453))
    return -torch.log(uniform.clamp(1e-6, 1.0))


def forces_nll_term(outputs: Mapping[str, torch.Tensor], batch) -> torch.Tensor | None:
    """The Gaussian NLL of the force labels under the heads' mean and unbiased variance (per
    component, eV/Å; see :func:`ensemble_nll_terms`), or None without heads or force labels:
    added to the per-head loss with ``ensemble_nll_weight`` so that the spread is trained too."""
    if "forces_members" not in outputs or not has_label(batch, "forces"):
        return None
    members = outputs["forces_members"]
    variance = members.var(0, correction=1).clamp_min(NLL_MIN_VARIANCE)
    label = batch.forces.to(members.dtype)
    return 0.5 * (torch.log(variance) + (label - members.mean(0)) ** 2 / variance).mean()


def loss_terms(
    outputs: Mapping[str, torch.Tensor], batch, properties: Mapping[str, str] | Sequence[str] = (),
    ensemble_loss: str = "heads", head_weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Mean squared errors: ``energy`` per atom (eV²/atom², float64, from the residual
    energies: see :func:`energy_errors`), ``forces`` per component ((eV/Å)², the model dtype),
    and one per property head (``{name: kind}``; its unit squared), for the labels the batch
    carries.

    A shallow ensemble (outputs with ``*_members``) is trained on the mean over its heads of
    each head's squared error, so that every head is a model of its own (the loss of the mean
    alone would leave the heads free to disagree). ``ensemble_loss="nll"`` trains it instead on
    the Gaussian negative log-likelihood of the labels under N(mean, variance) over its heads
    (see :func:`ensemble_nll_terms`). ``head_weights`` [K, G] (see :func:`bootstrap_weights`)
    weigh each head's errors per structure in the ``heads`` loss."""
    if ensemble_loss == "nll" and "energy_members" in outputs:
        return ensemble_nll_terms(outputs, batch, properties)
    terms = {}
    if has_label(batch, "energy"):
        n_atoms = atoms_per_graph(batch).to(outputs["energy"].device, torch.float64)
        if "energy_members" in outputs:
            label = batch.energy.to(device=n_atoms.device, dtype=torch.float64) - outputs["energy_reference"].to(torch.float64)
            residuals = outputs["energy_members"] - outputs["energy_reference"].to(torch.float64)  # [K, G]
            squared = ((residuals - label) / n_atoms) ** 2
            terms["energy"] = (squared if head_weights is None else head_weights * squared).mean()
        else:
            terms["energy"] = ((energy_errors(outputs, batch) / n_atoms) ** 2).mean()
    if "forces" in outputs and has_label(batch, "forces"):
        predicted = outputs.get("forces_members", outputs["forces"])
        squared = (predicted - batch.forces.to(predicted.dtype)) ** 2
        if head_weights is not None and "forces_members" in outputs:  # [K, G] -> [K, atoms, 1]
            squared = squared * head_weights[:, batch.batch].to(squared.dtype)[..., None]
        terms["forces"] = squared.mean()
    for name, kind in property_kinds(properties).items():
        predicted = outputs.get(f"{name}_members", outputs[name])
        label = batch[name].to(predicted.dtype)
        terms[name] = ((property_prediction(predicted, label, kind) - label) ** 2).mean()
    return terms


NLL_MIN_VARIANCE = 1e-6
"""Floor of the heads' variance in the Gaussian NLL, in the output's unit squared (a head
variance of 0 would make the NLL of an exact prediction −∞)."""


def ensemble_nll_terms(
    outputs: Mapping[str, torch.Tensor], batch, properties: Mapping[str, str] | Sequence[str] = ()
) -> dict[str, torch.Tensor]:
    """Gaussian NLL terms of a shallow ensemble: ``0.5·(log σ² + (y − μ)²/σ²)`` with μ and σ² the
    mean and unbiased variance over its heads; energies per atom (eV/atom), forces per component
    (eV/Å), properties in their unit. Lower is better; a term may be negative."""

    def nll(members: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        variance = members.var(0, correction=1).clamp_min(NLL_MIN_VARIANCE)
        return 0.5 * (torch.log(variance) + (label - members.mean(0)) ** 2 / variance).mean()

    terms = {}
    if has_label(batch, "energy"):
        n_atoms = atoms_per_graph(batch).to(outputs["energy"].device, torch.float64)
        label = batch.energy.to(device=n_atoms.device, dtype=torch.float64) - outputs["energy_reference"].to(torch.float64)
        residuals = outputs["energy_members"] - outputs["energy_reference"].to(torch.float64)
        terms["energy"] = nll(residuals / n_atoms, label / n_atoms)
    if "forces_members" in outputs and has_label(batch, "forces"):
        members = outputs["forces_members"]
        terms["forces"] = nll(members, batch.forces.to(members.dtype))
    for name, kind in property_kinds(properties).items():
        members = outputs.get(f"{name}_members", outputs[name].unsqueeze(0))
        label = batch[name].to(members.dtype)
        terms[name] = nll(property_prediction(members, label, kind), label)
    return terms


def weighted_loss(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """``Σ weight · term`` (MACE-style: w_E · MSE(E/N) + w_F · MSE(F) + Σ w_p · MSE(p)); terms of
    weight 0 are left out, so a missing label never turns into NaN."""
    used = [weights.get(name, 1.0) * term for name, term in terms.items() if weights.get(name, 1.0) > 0]
    if not used:
        raise ValueError(f"no loss term has a positive weight (terms {sorted(terms)}, weights {dict(weights)})")
    return sum(used)


class MetricSums:
    """Running sums of errors, so metrics can be accumulated batch by batch and all-reduced
    across processes before being turned into MAE/RMSE."""

    def __init__(self, properties: Mapping[str, str] | Sequence[str] = (), weights: Mapping[str, float] | None = None) -> None:
        self.kinds = property_kinds(properties)
        self.properties = list(self.kinds)
        self.weights = dict(weights or {})
        # [n_structures, n_energies, |dE| sum, dE² sum, (dE/N)² sum, n_components, |dF| sum, dF² sum,
        # then per property: n_values, |dp| sum, dp² sum]
        self.sums = torch.zeros(8 + 3 * len(self.properties), dtype=torch.float64)

    @torch.no_grad()
    def add(self, outputs: Mapping[str, torch.Tensor], batch) -> None:
        """Add one batch's errors.  The sums stay on the outputs' device: no copy to the host and
        no synchronisation per batch on a GPU, only when :meth:`result` reads them."""
        device = outputs["energy"].device
        if self.sums.device != device:
            self.sums = self.sums.to(device)
        row = torch.zeros_like(self.sums)
        row[0] = outputs["energy"].numel()
        if has_label(batch, "energy"):
            n_atoms = atoms_per_graph(batch).to(device, torch.float64)
            d_energy = energy_errors(outputs, batch).detach()
            row[1] = d_energy.numel()
            row[2] = d_energy.abs().sum()
            row[3] = (d_energy**2).sum()
            row[4] = ((d_energy / n_atoms) ** 2).sum()
        if "forces" in outputs and has_label(batch, "forces"):
            d_forces = outputs["forces"].detach().to(torch.float64) - batch.forces.to(device, torch.float64)
            row[5] = d_forces.numel()
            row[6] = d_forces.abs().sum()
            row[7] = (d_forces**2).sum()
        for k, name in enumerate(self.properties):
            label = batch[name].to(device, torch.float64)
            d = property_prediction(outputs[name].detach().to(torch.float64), label, self.kinds[name]) - label
            row[8 + 3 * k] = d.numel()
            row[9 + 3 * k] = d.abs().sum()
            row[10 + 3 * k] = (d**2).sum()
        self.sums += row

    def all_reduce(self) -> None:
        """Sum over the processes of a ``torch.distributed`` group (no-op without one)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            backend = dist.get_backend()
            tensor = self.sums.cuda() if backend == "nccl" else self.sums.cpu().clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            self.sums = tensor

    def result(self) -> dict[str, float]:
        """MAE/RMSE in meV (energy) and meV/Å (forces) where labels were seen, the weighted
        loss, per-property ``<name>_mae`` and ``<name>_rmse``, and ``n_structures``."""
        s = self.sums.tolist()
        result: dict[str, float] = {}
        loss = 0.0
        n, nf = s[1], s[5]
        if n > 0:
            result["energy_mae_meV"] = 1000.0 * s[2] / n
            result["energy_rmse_meV"] = 1000.0 * math.sqrt(s[3] / n)
            loss += self.weights.get("energy", 1.0) * s[4] / n
        if nf > 0:
            result["forces_mae_meV_per_A"] = 1000.0 * s[6] / nf
            result["forces_rmse_meV_per_A"] = 1000.0 * math.sqrt(s[7] / nf)
            loss += self.weights.get("forces", 1.0) * s[7] / nf
        for k, name in enumerate(self.properties):
            count, absolute, square = s[8 + 3 * k : 11 + 3 * k]
            if count > 0:
                result[f"{name}_mae"] = absolute / count
                result[f"{name}_rmse"] = math.sqrt(square / count)
                loss += self.weights.get(name, 1.0) * square / count
        result["loss"] = loss
        result["n_structures"] = int(s[0])
        return result
