"""Radial embedding of edge lengths: a Bessel basis times a smooth polynomial cutoff."""

from __future__ import annotations

import math

import torch
from torch import nn


class BesselBasis(nn.Module):
    r"""Radial Bessel functions :math:`b_n(r) = \sqrt{2/r_c}\,\sin(n\pi r/r_c)/r`, n = 1..N.

    With ``trainable=True`` the frequencies :math:`n\pi/r_c` are learned (as in NequIP/MACE).

    Args:
        cutoff: r_c, Å.
        num_basis: N.
    """

    def __init__(self, cutoff: float, num_basis: int = 8, trainable: bool = False) -> None:
        super().__init__()
        frequencies = torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()) * math.pi / cutoff
        if trainable:
            self.frequencies = nn.Parameter(frequencies)
        else:
            self.register_buffer("frequencies", frequencies)
        self.prefactor = math.sqrt(2.0 / cutoff)

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        """[n_edges, 1] lengths in Å -> [n_edges, num_basis] basis values (1/Å)."""
        return self.prefactor * torch.sin(self.frequencies * lengths) / lengths


class PolynomialCutoff(nn.Module):
    r"""Smooth envelope that goes to zero with p-1 continuous derivatives at r_c (NequIP, p = 6):

    .. math:: f(x) = 1 - \tfrac{(p+1)(p+2)}{2}x^p + p(p+2)x^{p+1} - \tfrac{p(p+1)}{2}x^{p+2},\quad x = r/r_c.

    Smoothness at r_c is what keeps energy conserved in MD when neighbors enter or leave.
    """

    def __init__(self, cutoff: float, p: int = 6) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.p = int(p)
        # The coefficients are plain numbers fixed here, and the exponents integers: a float
        # exponent becomes a traced scalar under torch.compile, and its derivative then needs a
        # host read (.item()) in the backward.
        self.coefficients = (
            (p + 1.0) * (p + 2.0) / 2.0,
            p * (p + 2.0),
            p * (p + 1.0) / 2.0,
        )

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        """[n_edges, 1] lengths in Å -> [n_edges, 1] envelope in [0, 1]."""
        x = lengths / self.cutoff
        a, b, c = self.coefficients
        x_p = x**self.p
        envelope = 1.0 - a * x_p + b * x_p * x - c * x_p * x * x
        return envelope * (x < 1.0)


class RadialEmbedding(nn.Module):
    """Bessel basis times the polynomial cutoff: [n_edges, 1] Å -> [n_edges, num_basis]."""

    def __init__(self, cutoff: float, num_basis: int = 8, p: int = 6, trainable: bool = False) -> None:
        super().__init__()
        self.basis = BesselBasis(cutoff, num_basis, trainable)
        self.envelope = PolynomialCutoff(cutoff, p)
        self.num_basis = num_basis

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.basis(lengths) * self.envelope(lengths)
