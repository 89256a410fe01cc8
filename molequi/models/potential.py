"""Assembly of the molequi potential from the nn blocks.

``MolequiPotential`` maps an atomic graph to per-atom energies (and optional property heads);
forces come from :class:`molequi.nn.forces.ForceOutput`, which wraps it.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn
from torch_geometric.utils import scatter

from molequi.models.config import ModelConfig
from molequi.nn.interaction import InteractionBlock
from molequi.nn.radial import RadialEmbedding
from molequi.nn.tensor_products import natural_irreps

MAX_ATOMIC_NUMBER = 118


class ScalarReadout(nn.Module):
    """Per-atom scalar from the invariant (0e) channels: linear, or a one-hidden-layer MLP."""

    def __init__(self, irreps_in: o3.Irreps, hidden: int | None) -> None:
        super().__init__()
        self.num_scalars = sum(mul for mul, ir in irreps_in if ir.l == 0)
        # Scalars come first in every irreps molequi builds (sorted by l), so slicing is safe.
        if hidden:
            self.net = nn.Sequential(nn.Linear(self.num_scalars, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        else:
            self.net = nn.Linear(self.num_scalars, 1)

    def forward(self, node_features: torch.Tensor) -> torch.Tensor:
        """[n_atoms, dim] -> [n_atoms]"""
        return self.net(node_features[:, : self.num_scalars]).squeeze(-1)


class MolequiPotential(nn.Module):
    """E(3)-equivariant message-passing potential (see :class:`ModelConfig` for the knobs).

    Per-atom energy: ``E_i = scale · Σ_t readout_t(h_i^t) + shift + E0[Z_i]`` (eV); the
    total energy is its sum. Layers output l ≤ l_max features except the last, which outputs
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
        e0 = torch.zeros(MAX_ATOMIC_NUMBER + 1, dtype=torch.float64)  # exact E0s; cast with the model
        for z, value in config.e0s.items():
            e0[int(z)] = value
        self.register_buffer("e0", e0)

        self.radial = RadialEmbedding(config.cutoff, config.num_radial, config.cutoff_p, config.trainable_radial)
        irreps_edge = o3.Irreps.spherical_harmonics(config.l_max)
        self.spherical_harmonics = o3.SphericalHarmonics(irreps_edge, normalize=True, normalization="component")
        irreps_scalars = o3.Irreps(f"{config.channels}x0e")
        self.embedding = o3.Linear(o3.Irreps(f"{num_species}x0e"), irreps_scalars)

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
                    l_max=config.l_max,
                    correlation=config.correlation,
                    avg_num_neighbors=config.avg_num_neighbors,
                )
            )
            self.readouts.append(ScalarReadout(irreps_out, config.readout_hidden if last else None))
            irreps_in = irreps_out
        self.property_heads = nn.ModuleDict(
            {name: ScalarReadout(irreps_in, config.readout_hidden) for name in config.properties}
        )

    @property
    def species(self) -> list[int]:
        return list(self.config.species)

    def forward(
        self,
        pos: torch.Tensor,
        numbers: torch.Tensor,
        edge_index: torch.Tensor,
        shifts: torch.Tensor,
        batch: torch.Tensor,
        num_graphs: int,
    ) -> dict[str, torch.Tensor]:
        """Per-atom energies and property heads.

        Args:
            pos: [n_atoms, 3] positions, Å (model dtype).
            numbers: [n_atoms] atomic numbers, all among ``config.species``.
            edge_index: [2, n_edges] row 0 = centre i, row 1 = neighbor j.
            shifts: [n_edges, 3] periodic shifts, Å (r_ij = pos[j] - pos[i] + shifts).
            batch: [n_atoms] index of the structure each atom belongs to.
            num_graphs: number of structures in the batch.

        Returns:
            ``energies`` [n_atoms] per-atom energies, eV, and one [num_graphs, k] tensor per
            property head.
        """
        species = self.species_index[numbers]
        one_hot = torch.nn.functional.one_hot(species, len(self.config.species)).to(pos.dtype)
        vectors = pos[edge_index[1]] - pos[edge_index[0]] + shifts  # [n_edges, 3], Å
        lengths = vectors.norm(dim=-1, keepdim=True)  # [n_edges, 1], Å
        harmonics = self.spherical_harmonics(vectors)
        radial = self.radial(lengths)

        features = self.embedding(one_hot)
        raw_energy = torch.zeros_like(pos[:, 0])
        for layer, readout in zip(self.layers, self.readouts):
            features = layer(features, one_hot, harmonics, radial, edge_index)
            raw_energy = raw_energy + readout(features)
        energies = self.config.energy_scale * raw_energy + self.config.energy_shift + self.e0[numbers]
        outputs = {"energies": energies}
        for name, head in self.property_heads.items():
            per_atom = head(features)
            stats = self.config.property_stats.get(name)
            if stats:  # [shift, scale] of the training labels
                per_atom = stats[1] * per_atom + stats[0]
            outputs[name] = self._property(self.config.properties[name], per_atom, pos, batch, num_graphs)
        return outputs

    @staticmethod
    def _property(
        kind: str, per_atom: torch.Tensor, pos: torch.Tensor, batch: torch.Tensor, num_graphs: int
    ) -> torch.Tensor:
        """Pool a per-atom scalar into a graph-level property ([num_graphs, 1], or [.., 3] for dipoles)."""
        if kind == "extensive":
            return scatter(per_atom, batch, dim=0, dim_size=num_graphs, reduce="sum").unsqueeze(-1)
        if kind == "intensive":
            return scatter(per_atom, batch, dim=0, dim_size=num_graphs, reduce="mean").unsqueeze(-1)
        # Dipole: neutral partial charges (mean removed per molecule) times positions; neutrality
        # makes it independent of the origin, and q_i invariant makes it rotate with the molecule.
        charges = per_atom - scatter(per_atom, batch, dim=0, dim_size=num_graphs, reduce="mean")[batch]
        return scatter(charges.unsqueeze(-1) * pos, batch, dim=0, dim_size=num_graphs, reduce="sum")
