"""One equivariant message-passing layer: convolution, body-order product, gate, residual."""

from __future__ import annotations

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3
from torch import nn
from torch_geometric.utils import scatter

from molequi.nn.tensor_products import channelwise_edge_product, channelwise_self_product, natural_irreps


class BodyOrderProduct(nn.Module):
    """Raise body order by products of the aggregated messages A (MACE-style correlation).

    ``B = A + Σ_{k=2..ν} W_k · P_k`` with ``P_1 = A`` and ``P_k = P_{k-1} ⊗ A`` (channel-wise),
    so ν = correlation. ν = 1 is the identity (a NequIP-like two-body-per-layer model).

    With ``num_species`` the mixed powers are also scaled per species, channel and irrep
    (``w_{k, z, c, l}``, initialised to 1): each element weighs its body orders differently, as
    MACE's species-dependent contraction weights do, for a few parameters and no extra tensor
    product. A scalar per irrep keeps the product equivariant.
    """

    def __init__(
        self, irreps: o3.Irreps, correlation: int, num_species: int = 0, irreps_needed: o3.Irreps | None = None
    ) -> None:
        """``irreps_needed``: the irreps the caller keeps of the result; the last product then
        computes only those (the others of that power are never used). None keeps all."""
        super().__init__()
        self.products = nn.ModuleList()
        self.mixes = nn.ModuleList()
        for order in range(2, correlation + 1):
            last = order == correlation
            targets = irreps_needed if last and irreps_needed is not None else irreps
            product, irreps_product = channelwise_self_product(irreps, targets)
            self.products.append(product)
            # an irrep of ``irreps`` the product does not make gets no path: the mix leaves it 0
            self.mixes.append(o3.Linear(irreps_product, irreps))
        irreps = o3.Irreps(irreps)
        self.species_weights = None
        if num_species and correlation > 1:
            self.species_weights = nn.Parameter(torch.ones(correlation - 1, num_species, irreps.num_irreps))
            # feature index -> its irrep's index (e3nn lays each irrep's 2l+1 components side by side)
            dims = torch.tensor([ir.dim for mul, ir in irreps for _ in range(mul)])
            self.register_buffer("component_irrep", torch.arange(len(dims)).repeat_interleave(dims), persistent=False)

    def forward(self, messages: torch.Tensor, species_one_hot: torch.Tensor | None = None) -> torch.Tensor:
        """[n_atoms, irreps.dim] (and [n_atoms, num_species]) -> [n_atoms, irreps.dim]."""
        out, power = messages, messages
        for k, (product, mix) in enumerate(zip(self.products, self.mixes)):
            # The mixed power (not the raw product) is carried forward: it keeps the irreps of A
            # and keeps activations O(1) at initialisation for any correlation order.
            power = mix(product(power, messages))
            if self.species_weights is not None:
                scale = species_one_hot.to(power.dtype) @ self.species_weights[k]  # [n_atoms, num_irreps]
                power_out = power * scale[:, self.component_irrep]
            else:
                power_out = power
            out = out + power_out
        return out


def gated_nonlinearity(irreps_out: o3.Irreps) -> tuple[nn.Module, o3.Irreps]:
    """A gate that applies SiLU to scalars and sigmoid-gated scaling to l > 0 features.

    Returns the module and the irreps it expects as input (scalars + gates + gated).
    """
    scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l == 0])
    gated = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l > 0])
    if gated.dim == 0:
        activation = e3nn_nn.Activation(scalars, [torch.nn.functional.silu] * len(scalars))
        return activation, scalars
    gates = o3.Irreps([(gated.num_irreps, "0e")])
    gate = e3nn_nn.Gate(
        scalars, [torch.nn.functional.silu] * len(scalars), gates, [torch.sigmoid], gated
    )
    return gate, gate.irreps_in


class InteractionBlock(nn.Module):
    """Equivariant convolution layer.

    For centre atom i with neighbors j (r_ij = r_j - r_i):

    .. math::
        A_i = \\frac{1}{\\bar n} \\sum_j W_{R(|r_{ij}|)}\\,(U h_j) \\otimes Y(\\hat r_{ij}),\\qquad
        h_i' = \\mathrm{Gate}(L\\,\\mathrm{Product}_\\nu(L' A_i)) + \\mathrm{SI}(h_i, z_i)

    where W is a radial MLP of the Bessel embedding, :math:`\\bar n` the mean neighbor count,
    Product_ν the body-order product and SI a species-dependent residual self-interaction.
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        irreps_edge: o3.Irreps,
        num_species: int,
        num_radial: int,
        radial_hidden: list[int],
        channels: int,
        l_max: int,
        correlation: int,
        avg_num_neighbors: float,
        species_product: bool = False,
        prune_product: bool = False,
    ) -> None:
        """``l_max`` is the order of the messages (and of ``irreps_edge``); with
        ``prune_product`` the product's last step computes only the irreps of ``irreps_out``."""
        super().__init__()
        irreps_hidden = natural_irreps(channels, l_max)
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.linear_up = o3.Linear(self.irreps_in, self.irreps_in)
        self.convolution, irreps_messages = channelwise_edge_product(self.irreps_in, irreps_edge, irreps_hidden)
        self.radial_mlp = e3nn_nn.FullyConnectedNet(
            [num_radial, *radial_hidden, self.convolution.weight_numel], torch.nn.functional.silu
        )
        self.linear_messages = o3.Linear(irreps_messages, irreps_hidden)
        irreps_needed = o3.Irreps([(channels, ir) for _, ir in self.irreps_out]) if prune_product else None
        self.product = BodyOrderProduct(irreps_hidden, correlation, num_species if species_product else 0, irreps_needed)
        self.nonlinearity, irreps_gate_in = gated_nonlinearity(self.irreps_out)
        self.linear_out = o3.Linear(irreps_hidden, irreps_gate_in)
        self.self_interaction = o3.FullyConnectedTensorProduct(
            self.irreps_in, o3.Irreps(f"{num_species}x0e"), self.irreps_out
        )

    def forward(
        self,
        node_features: torch.Tensor,
        species_one_hot: torch.Tensor,
        edge_harmonics: torch.Tensor,
        edge_radial: torch.Tensor,
        edge_index: torch.Tensor,
    ) -> torch.Tensor:
        """Update node features.

        Args:
            node_features: [n_atoms, irreps_in.dim]
            species_one_hot: [n_atoms, num_species]
            edge_harmonics: [n_edges, irreps_edge.dim] spherical harmonics of r̂_ij
            edge_radial: [n_edges, num_radial] radial embedding of |r_ij|
            edge_index: [2, n_edges] row 0 = centre i (receives), row 1 = neighbor j (sends)

        Returns:
            [n_atoms, irreps_out.dim]
        """
        centre, neighbor = edge_index[0], edge_index[1]
        residual = self.self_interaction(node_features, species_one_hot)
        up = self.linear_up(node_features)
        weights = self.radial_mlp(edge_radial)
        messages = self.convolution(up[neighbor], edge_harmonics, weights)
        aggregated = scatter(messages, centre, dim=0, dim_size=node_features.shape[0], reduce="sum")
        aggregated = self.linear_messages(aggregated / self.avg_num_neighbors)
        features = self.nonlinearity(self.linear_out(self.product(aggregated, species_one_hot)))
        return features + residual
