"""Readout heads: the one registry of the graph-level outputs a model can learn.

A head *kind* says, in one class, everything the rest of molequi needs to know about it:

* how its per-atom outputs are pooled into one value per structure (:meth:`HeadKind.pool`),
* how its raw outputs are rescaled from the training labels (:meth:`HeadKind.label_statistics`),
* what a prediction is compared with (its loss and its MAE/RMSE metric,
  :meth:`HeadKind.errors`; the loss is the mean of the squared errors),
* its unit (fixed, such as e·Å for a dipole, or the label's own),
* the scalar it is screened by (:meth:`HeadKind.scored`).

A new kind is one subclass decorated with :func:`register_head`; ``ModelConfig.properties``,
``--target NAME:KIND``, training, ``molequi evaluate`` and ``molequi screen`` then accept it.

Every head (the energy readout as well) has ``K = ModelConfig.ensemble_heads`` members (a
*shallow ensemble*: K readouts on one shared body); :meth:`HeadKind.pool` pools each member and
returns ``[num_graphs, K, components]``. With K = 1 it is the plain head of earlier versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch_geometric.utils import scatter

from molequi.errors import ConfigError


class HeadKind:
    """One kind of graph-level output (subclass and :func:`register_head` to add a kind).

    Attributes:
        kind: the name used in ``ModelConfig.properties`` and ``--target NAME:KIND``.
        components: values per structure (1 for a scalar, 3 for a vector).
        unit: the output's unit, or ``None`` when it is the label's own (QM9 names' units).
        description: one line for ``--help`` and error messages.
    """

    kind: ClassVar[str] = ""
    components: ClassVar[int] = 1
    unit: ClassVar[str | None] = None
    description: ClassVar[str] = ""

    def pool(
        self,
        per_atom: torch.Tensor,
        stats: tuple[float, float] | None,
        pos: torch.Tensor,
        batch: torch.Tensor,
        num_graphs: int,
    ) -> torch.Tensor:
        """Per-atom raw outputs [n_atoms, K] (model dtype) -> [num_graphs, K, components]
        (float64 for scalars, the dtype of ``pos`` for vectors).

        ``stats`` is the head's ``[shift, scale]`` from :meth:`label_statistics` (None: not
        rescaled)."""
        raise NotImplementedError

    def label_statistics(self, labels: np.ndarray, n_atoms: np.ndarray) -> list[float] | None:
        """``[shift, scale]`` from the training labels [n_structures, ...] that make the raw
        per-atom outputs O(1), or None for a head that is not rescaled."""
        return None

    def comparable(self, predicted: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The prediction [..., components] brought to the label's shape [..., label width]."""
        return predicted

    def errors(self, predicted: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Prediction minus label (the loss is the mean of their squares; the metrics their MAE
        and RMSE, in :attr:`unit`)."""
        return self.comparable(predicted, label) - label

    def scored(self, name: str, values: np.ndarray) -> tuple[str, np.ndarray]:
        """The scalar a screening ranks by: ``(column name, values [...])`` from
        ``values [..., components]``."""
        return name, values[..., 0]

    def default_for(self, name: str) -> bool:
        """Whether ``--target NAME`` without a kind means this kind (the first match wins)."""
        return False


HEADS: dict[str, HeadKind] = {}
"""kind name -> head, in registration order."""


def register_head(cls: type[HeadKind]) -> type[HeadKind]:
    """Class decorator: make ``cls.kind`` a head kind (replacing one of the same name)."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} has no kind name")
    HEADS[cls.kind] = cls()
    return cls


def head(kind: str) -> HeadKind:
    """The registered head of ``kind`` (:class:`ConfigError` naming the kinds otherwise)."""
    try:
        return HEADS[kind]
    except KeyError:
        raise ConfigError(f"unknown head kind '{kind}'; choose one of {sorted(HEADS)}") from None


def default_kind(name: str) -> str:
    """The kind of ``--target NAME`` given without one: ``dipole`` for names starting with
    ``dipole``, else ``intensive``."""
    for kind, candidate in HEADS.items():
        if candidate.default_for(name):
            return kind
    return "intensive"


def property_units(names: dict[str, str] | Sequence[str]) -> dict[str, str]:
    """``{name: unit}`` of property heads (``{name: kind}``) or labels (names); '' where
    molequi does not know the unit."""
    kinds = names if isinstance(names, dict) else dict.fromkeys(names)
    return {name: property_unit(name, kind) for name, kind in kinds.items()}


def property_unit(name: str, kind: str | None = None) -> str:
    """The unit of a property: its head kind's own (a dipole: e·Å), else QM9's when the name is
    one of QM9's, else ''."""
    from molequi.data.qm9 import PROPERTY_UNITS

    fixed = HEADS[kind].unit if kind in HEADS else None
    return fixed or PROPERTY_UNITS.get(name, "")


def _rescaled(per_atom: torch.Tensor, stats: tuple[float, float] | None) -> tuple[torch.Tensor, float]:
    shift, scale = stats or (0.0, 1.0)
    return scale * per_atom, float(shift)


@register_head
class IntensiveHead(HeadKind):
    """Mean over atoms (a HOMO–LUMO gap, eV): ``mean_i(scale · raw_i) + shift``."""

    kind = "intensive"
    description = "mean over atoms (e.g. a HOMO–LUMO gap, eV)"

    def pool(self, per_atom, stats, pos, batch, num_graphs):
        per_atom, shift = _rescaled(per_atom, stats)
        # the shift is added in float64 after pooling (labels may be 10^4 eV totals)
        pooled = scatter(per_atom.to(torch.float64), batch, dim=0, dim_size=num_graphs, reduce="mean")
        return (pooled + shift).unsqueeze(-1)

    def label_statistics(self, labels, n_atoms):
        return _mean_std(np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)[:, 0])


@register_head
class ExtensiveHead(HeadKind):
    """Sum over atoms (an atomisation energy U0, eV): ``Σ_i (scale · raw_i + shift)``."""

    kind = "extensive"
    description = "sum over atoms (e.g. U0, eV)"

    def pool(self, per_atom, stats, pos, batch, num_graphs):
        per_atom, shift = _rescaled(per_atom, stats)
        pooled = scatter(per_atom.to(torch.float64), batch, dim=0, dim_size=num_graphs, reduce="sum")
        atoms = scatter(torch.ones_like(batch, dtype=torch.float64), batch, dim=0, dim_size=num_graphs, reduce="sum")
        return (pooled + shift * atoms.unsqueeze(-1)).unsqueeze(-1)

    def label_statistics(self, labels, n_atoms):
        per_atom = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)[:, 0] / np.asarray(n_atoms, np.float64)
        return _mean_std(per_atom)


@register_head
class DipoleHead(HeadKind):
    """Dipole vector Σ_i q_i r_i (e·Å) from learned neutral partial charges q_i. A label of one
    component (QM9 gives only |μ|) is compared with the vector's norm."""

    kind = "dipole"
    components = 3
    unit = "e·Å"
    description = "dipole vector Σ q_i r_i with neutral learned charges, e·Å (a |μ| label is compared with its norm)"

    def pool(self, per_atom, stats, pos, batch, num_graphs):
        # Neutral charges (mean removed per molecule) times positions: neutrality makes the
        # dipole independent of the origin, invariant q_i make it rotate with the molecule.
        charges = per_atom - scatter(per_atom, batch, dim=0, dim_size=num_graphs, reduce="mean")[batch]
        moments = charges.to(pos.dtype).unsqueeze(-1) * pos.unsqueeze(1)  # [n_atoms, K, 3]
        return scatter(moments, batch, dim=0, dim_size=num_graphs, reduce="sum")

    def comparable(self, predicted, label):
        if predicted.shape[-1] == 3 and label.shape[-1] == 1:
            return torch.linalg.vector_norm(predicted, dim=-1, keepdim=True)
        return predicted

    def scored(self, name, values):
        # a head already named dipole_norm (trained on QM9's |μ|) keeps its name
        return (name if name.endswith("_norm") else f"{name}_norm"), np.linalg.norm(values, axis=-1)

    def default_for(self, name):
        return name.lower().startswith("dipole")


def _mean_std(values: np.ndarray) -> list[float]:
    scale = float(np.std(values)) if len(values) > 1 else 1.0
    return [float(np.mean(values)), scale if scale > 1e-8 else 1.0]
