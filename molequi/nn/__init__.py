"""Neural-network building blocks: radial basis, tensor products, interaction layer, force wrapper."""

from molequi.nn.forces import ForceOutput, energy_outputs
from molequi.nn.interaction import BodyOrderProduct, InteractionBlock
from molequi.nn.radial import BesselBasis, PolynomialCutoff, RadialEmbedding
from molequi.nn.tensor_products import channelwise_edge_product, channelwise_self_product, natural_irreps

__all__ = [
    "BesselBasis",
    "BodyOrderProduct",
    "ForceOutput",
    "InteractionBlock",
    "PolynomialCutoff",
    "RadialEmbedding",
    "channelwise_edge_product",
    "channelwise_self_product",
    "energy_outputs",
    "natural_irreps",
]
