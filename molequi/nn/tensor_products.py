"""Named builders for the e3nn tensor products molequi uses.

e3nn describes a tensor product by bare instruction tuples ``(i_in1, i_in2, i_out, mode, train)``;
these helpers say what they build so the model code reads as the architecture.
"""

from __future__ import annotations

from e3nn import o3


def natural_irreps(channels: int, l_max: int) -> o3.Irreps:
    """``channels`` copies of each irrep l = 0..l_max with natural parity (0e + 1o + 2e + 3o…)."""
    return o3.Irreps([(channels, (l, (-1) ** l)) for l in range(l_max + 1)])


def channelwise_edge_product(
    irreps_node: o3.Irreps, irreps_edge: o3.Irreps, irreps_target: o3.Irreps
) -> tuple[o3.TensorProduct, o3.Irreps]:
    """Channel-wise ("uvu") product of node features with edge spherical harmonics.

    Each channel u of the node features is multiplied with the (single-channel) spherical
    harmonics, for every path l1 ⊗ l2 -> l3 whose output irrep appears in ``irreps_target``.
    Weights are external — one per path and channel, per edge — so a radial MLP supplies them.
    This costs O(channels) per edge; a fully connected product costs O(channels²) and is the
    trap (measured on a 2-core CPU for aspirin, 64 channels l ≤ 2: ~1 evaluation/s against ~32/s).

    Returns:
        the tensor product and its output irreps (one block per path, unsimplified).
    """
    targets = {ir for _, ir in irreps_target}
    blocks, instructions = [], []
    for i_node, (mul, ir_node) in enumerate(irreps_node):
        for i_edge, (_, ir_edge) in enumerate(irreps_edge):
            for ir_out in ir_node * ir_edge:
                if ir_out in targets:
                    instructions.append((i_node, i_edge, len(blocks), "uvu", True))
                    blocks.append((mul, ir_out))
    irreps_out = o3.Irreps(blocks)
    product = o3.TensorProduct(
        irreps_node, irreps_edge, irreps_out, instructions, shared_weights=False, internal_weights=False
    )
    return product, irreps_out


def channelwise_self_product(irreps: o3.Irreps, irreps_target: o3.Irreps) -> tuple[o3.TensorProduct, o3.Irreps]:
    """Channel-wise ("uuu") product of node features with themselves, with learned path weights.

    Pairs channel u of one operand with channel u of the other for every path whose output is
    in ``irreps_target``. Repeated, it raises the body order of the node features (MACE-style
    correlation): correlation ν multiplies ν copies of the aggregated messages.
    All blocks of ``irreps`` must have the same multiplicity.
    """
    multiplicities = {mul for mul, _ in irreps}
    if len(multiplicities) != 1:
        raise ValueError(f"channel-wise products need equal multiplicities, got {irreps}")
    targets = {ir for _, ir in irreps_target}
    blocks, instructions = [], []
    for i1, (mul, ir1) in enumerate(irreps):
        for i2, (_, ir2) in enumerate(irreps):
            for ir_out in ir1 * ir2:
                if ir_out in targets:
                    instructions.append((i1, i2, len(blocks), "uuu", True))
                    blocks.append((mul, ir_out))
    irreps_out = o3.Irreps(blocks)
    product = o3.TensorProduct(irreps, irreps, irreps_out, instructions, internal_weights=True, shared_weights=True)
    return product, irreps_out
