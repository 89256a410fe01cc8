"""Assembly of the molequi potential from the nn blocks.

``MolequiPotential`` maps an atomic graph to per-atom energies (and optional property heads);
forces come from :class:`molequi.nn.forces.ForceOutput`, which wraps it.

Precision: the network runs in the model dtype (float32 by default) and outputs small per-atom
*residual* energies; the large per-element reference energies (E0[Z] + shift, 10^1–10^3 eV an
atom) are float64 whatever the model dtype, and :func:`molequi.nn.forces.energy_outputs` adds
the two in float64. A float32 total of a 20-atom molecule (~10^4 eV) would be rounded to ~1 meV
and depend on the order of the sum.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from molequi.data.batch import GraphBatch
from molequi.models.config import ModelConfig
from molequi.models.heads import head
from molequi.nn.interaction import InteractionBlock
from molequi.nn.radial import RadialEmbedding
from molequi.nn.tensor_products import natural_irreps

MAX_ATOMIC_NUMBER = 118
MEMBERS = "_members"
"""Suffix of the per-head outputs of a shallow ensemble: ``energy_members`` [K, G] eV,
``forces_members`` [K, n_atoms, 3] eV/Å, ``<property>_members`` [K, G, components]."""


def reference_table(config: ModelConfig) -> torch.Tensor:
    """[MAX_ATOMIC_NUMBER + 1] float64 E0 of each element (eV), 0 for elements without one."""
    e0 = torch.zeros(MAX_ATOMIC_NUMBER + 1, dtype=torch.float64)
    for z, value in config.e0s.items():
        e0[int(z)] = value
    return e0


class ScalarReadout(nn.Module):
    """Per-atom scalars from the invariant (0e) channels: linear, or a one-hidden-layer MLP;
    ``heads`` independent readouts (a shallow ensemble) give ``heads`` scalars an atom.

    With one head the modules (and the weight names of a model file) are those of a plain
    readout; with K heads the MLP is one wide hidden layer (K · hidden) and a per-head output
    layer, so the K heads cost one matrix product more than one.
    """

    def __init__(self, irreps_in: o3.Irreps, hidden: int | None, heads: int = 1) -> None:
        super().__init__()
        self.num_scalars = sum(mul for mul, ir in irreps_in if ir.l == 0)
        self.heads = heads
        self.hidden = hidden
        # Scalars come first in every irreps molequi builds (sorted by l), so slicing is safe.
        if heads == 1:
            if hidden:
                self.net = nn.Sequential(nn.Linear(self.num_scalars, hidden), nn.SiLU(), nn.Linear(hidden, 1))
            else:
                self.net = nn.Linear(self.num_scalars, 1)
        elif hidden:
            self.net = nn.Sequential(nn.Linear(self.num_scalars, hidden * heads), nn.SiLU())
            bound = 1.0 / hidden**0.5  # nn.Linear's default initialisation, per head
            self.out_weight = nn.Parameter(torch.empty(heads, hidden).uniform_(-bound, bound))
            self.out_bias = nn.Parameter(torch.empty(heads).uniform_(-bound, bound))
        else:
            self.net = nn.Linear(self.num_scalars, heads)

    def forward(self, node_features: torch.Tensor) -> torch.Tensor:
        """[n_atoms, dim] -> [n_atoms, heads]"""
        out = self.net(node_features[:, : self.num_scalars])
        if self.heads > 1 and self.hidden:
            out = torch.einsum("nkh,kh->nk", out.view(len(out), self.heads, self.hidden), self.out_weight) + self.out_bias
        return out


def atom_charges(graph: GraphBatch, dtype: torch.dtype) -> torch.Tensor:
    """[n_atoms, 1] the total charge (e) of each atom's structure; 0 where the batch carries none."""
    if graph.charge is None:
        return torch.zeros(graph.numbers.shape[0], 1, dtype=dtype, device=graph.numbers.device)
    return graph.charge.to(dtype)[graph.batch].unsqueeze(-1)


class MolequiPotential(nn.Module):
    """E(3)-equivariant message-passing potential (see :class:`ModelConfig` for the knobs).

    Per-atom energy: ``E_i = scale · Σ_t readout_t(h_i^t) + shift + E0[Z_i]`` (eV); the
    total energy is its sum. The first term, the *residual*, is computed in the model dtype;
    ``shift + E0[Z_i]``, the *reference*, in float64 (the ``e0`` buffer stays float64 when the
    model is cast to another dtype), and the total is formed in float64 by
    :func:`molequi.nn.forces.energy_outputs`. Layers output l ≤ l_max features except the last, which outputs
    scalars only (nothing downstream needs its l > 0 features, so they are not computed).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        if not config.species:
            raise ValueError("ModelConfig.species is empty: set it from the training data")
        self.config = config
        num_species = len(config.species)
        table = torch.full((MAX_ATOMIC_NUMBER + 1,), -1, dtype=torch.long)
        table[torch.tensor(config.species)] = torch.arange(num_species)
        self.register_buffer("species_index", table, persistent=False)
        # float64 whatever the model dtype (see _apply): the E0s are 10^1–10^3 eV
        self.register_buffer("e0", reference_table(config))

        self.radial = RadialEmbedding(config.cutoff, config.num_radial, config.cutoff_p, config.trainable_radial)
        irreps_edge = o3.Irreps.spherical_harmonics(config.message_l_max)
        self.spherical_harmonics = o3.SphericalHarmonics(irreps_edge, normalize=True, normalization="component")
        irreps_scalars = o3.Irreps(f"{config.channels}x0e")
        self.embedding = o3.Linear(o3.Irreps(f"{num_species}x0e"), irreps_scalars)
        # the total charge enters as one more scalar input, added to every atom's first features
        self.charge_embedding = o3.Linear(o3.Irreps("1x0e"), irreps_scalars) if config.charge_input else None

        self.layers = nn.ModuleList()
        self.readouts = nn.ModuleList()
        irreps_in = irreps_scalars
        for layer in range(config.num_layers):
            last = layer == config.num_layers - 1
            irreps_out = irreps_scalars if last else natural_irreps(config.channels, config.l_max)
            self.layers.append(
                InteractionBlock(
                    irreps_in=irreps_in,
                    irreps_out=irreps_out,
                    irreps_edge=irreps_edge,
                    num_species=num_species,
                    num_radial=config.num_radial,
                    radial_hidden=list(config.radial_hidden),
                    channels=config.channels,
                    l_max=config.message_l_max,
                    correlation=config.correlation,
                    avg_num_neighbors=config.avg_num_neighbors,
                    species_product=config.species_product,
                    # a tied layout (edge_l_max None) keeps the product of files written before
                    prune_product=config.edge_l_max is not None,
                )
            )
            self.readouts.append(ScalarReadout(irreps_out, config.readout_hidden if last else None, config.ensemble_heads))
            irreps_in = irreps_out
        self.property_heads = nn.ModuleDict(
            {name: ScalarReadout(irreps_in, config.readout_hidden, config.ensemble_heads) for name in config.properties}
        )

    @property
    def species(self) -> list[int]:
        return list(self.config.species)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the network computes in (its weights')."""
        return self.embedding.weight.dtype

    def _apply(self, fn, recurse=True):
        # Module.to(dtype) / .float() cast every floating buffer: keep the E0s float64 (only
        # their device follows the model), so a float32 model keeps the exact reference energies.
        e0 = self.e0
        result = super()._apply(fn, recurse)
        self.e0 = e0.to(self.e0.device)
        return result

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # The config's E0s are the exact values: a file written by a float32 model of an older
        # molequi stored them rounded to float32 (~0.1 meV for oxygen).
        with torch.no_grad():
            self.e0.copy_(reference_table(self.config).to(self.e0.device))

    def reference_energies(self, numbers: torch.Tensor) -> torch.Tensor:
        """[n_atoms] float64 per-atom reference energies ``E0[Z_i] + shift``, eV."""
        return self.e0[numbers] + self.config.energy_shift

    def charge_references(self, graph: GraphBatch) -> torch.Tensor | None:
        """[n_atoms] float64 each atom's share (eV) of its structure's charge reference a·Q + b·Q²
        (``config.charge_energies``), split evenly over the structure's atoms; None when the
        model has no such term or the batch carries no charges."""
        terms = self.config.charge_energies
        if terms is None or graph.charge is None:
            return None
        charge = graph.charge.to(torch.float64)  # [S], e
        per_structure = terms[0] * charge + terms[1] * charge * charge  # [S], eV
        # atoms per structure by index_add, not bincount: its output size depends on the data,
        # which breaks the compiled graph (molequi.nn.compiled)
        ones = torch.ones(graph.batch.shape, dtype=torch.float64, device=charge.device)
        atoms = torch.zeros_like(charge).index_add_(0, graph.batch, ones)
        return (per_structure / atoms.clamp(min=1.0))[graph.batch]

    def forward(self, graph: GraphBatch) -> dict[str, torch.Tensor]:
        """Per-atom residual and reference energies, and property heads.

        Args:
            graph: the batch (:class:`~molequi.data.batch.GraphBatch`). ``graph.pos`` [n_atoms, 3]
                Å is best float64: edge vectors are formed in its dtype, then cast to the model
                dtype, so that their rounding is relative to a bond length, not to the
                coordinates' distance from the origin. Every atomic number must be among
                ``config.species``.

        Returns:
            ``residual_energies`` [n_atoms] learned per-atom energies, eV (model dtype),
            ``reference_energies`` [n_atoms] ``E0[Z_i] + shift`` (plus the atom's share of its
            structure's charge reference, :meth:`charge_references`), eV (float64), and one
            [num_graphs, k] tensor per property head (a dipole in the dtype of ``pos``). With
            ``ensemble_heads`` K ≥ 2 these are means over the heads, and each head's values come
            as ``residual_energies_members`` [n_atoms, K] and ``<property>_members`` [K, G, k].
        """
        pos, numbers, edge_index = graph.pos, graph.numbers, graph.edge_index
        dtype = self.dtype
        species = self.species_index[numbers]
        one_hot = torch.nn.functional.one_hot(species, len(self.config.species)).to(dtype)
        vectors = (pos[edge_index[1]] - pos[edge_index[0]] + graph.shifts).to(dtype)  # [n_edges, 3], Å
        lengths = vectors.norm(dim=-1, keepdim=True)  # [n_edges, 1], Å
        harmonics = self.spherical_harmonics(vectors)
        radial = self.radial(lengths)

        features = self.embedding(one_hot)
        if self.charge_embedding is not None:
            features = features + self.charge_embedding(atom_charges(graph, dtype))
        # summed from the first readout, not from zeros of len(numbers): a Python-int size would
        # be frozen into a traced export (molequi.models.export) for one molecule size
        raw_energy = None
        for layer, readout in zip(self.layers, self.readouts):
            features = layer(features, one_hot, harmonics, radial, edge_index)
            term = readout(features)
            raw_energy = term if raw_energy is None else raw_energy + term
        residual = self.config.energy_scale * raw_energy  # [n_atoms, K]
        references = self.reference_energies(numbers)
        charged = self.charge_references(graph)
        outputs = {
            "residual_energies": residual.mean(-1),
            "reference_energies": references if charged is None else references + charged,
        }
        if self.config.ensemble_heads > 1:
            outputs["residual_energies_members"] = residual
        for name, readout in self.property_heads.items():
            members = self._property(name, readout(features), pos, graph.batch, graph.num_graphs)  # [G, K, c]
            outputs[name] = members.mean(1)
            if self.config.ensemble_heads > 1:
                outputs[f"{name}{MEMBERS}"] = members.transpose(0, 1)  # [K, G, c]
        return outputs

    def _property(
        self, name: str, raw: torch.Tensor, pos: torch.Tensor, batch: torch.Tensor, num_graphs: int
    ) -> torch.Tensor:
        """Pool a head's per-atom outputs [n_atoms, K] into [num_graphs, K, components] the way
        its kind says (:mod:`molequi.models.heads`), with the head's label statistics."""
        return head(self.config.properties[name]).pool(
            raw, self.config.property_stats.get(name), pos, batch, num_graphs
        )
