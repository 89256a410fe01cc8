"""The energy-and-gradients call as one function, for ``torch.compile``.

Eagerly, one evaluation of a small molecule is hundreds of small kernels and Python dispatches
(e3nn's fx modules, the autograd engine's backward), so its cost is fixed overhead, not
arithmetic. :func:`residual_and_gradients` writes the energy *and* its position (and strain)
gradients as one differentiable function (``torch.func.grad_and_value``), so
``torch.compile`` (inductor) fuses the forward and the backward into one graph: the same graph
serves MD (no outer graph is kept) and training (the forces stay differentiable in the weights
for the force loss, without a double backward through the autograd engine).

A shallow ensemble's K heads each need their own forces (its force spread):
:func:`member_residuals_and_gradients` takes the Jacobian of the K heads' summed energies
(``torch.func.jacrev``, one vectorised backward), which the compiler fuses like the single
gradient; eagerly the same costs K backward passes.

Shapes are dynamic: one compiled graph serves every atom and edge count (a molecule of one atom
or no edge is compiled once more: torch specialises sizes 0 and 1). Where compilation fails
(no C++ compiler, an unsupported platform or op), :class:`CompiledGradients` warns once and
runs the same function eagerly, so results never depend on whether compilation works.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

COMPILE_OPTIONS: dict[str, Any] = {"dynamic": True, "fullgraph": False}
"""How the call is compiled: inductor with dynamic atom and edge counts."""


def strained(graph, pos: torch.Tensor, shifts: torch.Tensor, strain: torch.Tensor | None):
    """Positions [N, 3] and shifts [E, 3] (Å) deformed by the symmetric part of ``strain``
    [S, 3, 3] (dimensionless); both unchanged when ``strain`` is None."""
    if strain is None:
        return pos, shifts
    symmetric = 0.5 * (strain + strain.transpose(1, 2))
    pos = pos + torch.einsum("ni,nij->nj", pos, symmetric[graph.batch])
    shifts = shifts + torch.einsum("ei,eij->ej", shifts, symmetric[graph.batch[graph.edge_index[0]]])
    return pos, shifts


def residual_of(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """[n_atoms] learned per-atom energies (eV) of a model's outputs (``energies`` for a model
    without a reference)."""
    return outputs["residual_energies"] if "residual_energies" in outputs else outputs["energies"]


def residual_and_gradients(
    model: nn.Module, graph, pos: torch.Tensor, strain: torch.Tensor | None
) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
    """The model's outputs on ``graph`` at positions ``pos`` [N, 3] Å and the gradients of its
    summed residual energy: ∂E/∂pos [N, 3] eV/Å and, with a ``strain`` [S, 3, 3], ∂E/∂strain
    [S, 3, 3] eV. The gradients stay differentiable in the weights (the force loss of training)."""
    shifts = graph.shifts.to(pos.dtype)

    def residual_sum(pos: torch.Tensor, strain: torch.Tensor | None):
        deformed, deformed_shifts = strained(graph, pos, shifts, strain)
        outputs = model(graph.replace(pos=deformed, shifts=deformed_shifts))
        return residual_of(outputs).sum(), outputs

    argnums = (0,) if strain is None else (0, 1)
    gradients, (_, outputs) = torch.func.grad_and_value(residual_sum, argnums=argnums, has_aux=True)(pos, strain)
    return outputs, gradients


def member_residuals_and_gradients(
    model: nn.Module, graph, pos: torch.Tensor, strain: torch.Tensor | None
) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
    """:func:`residual_and_gradients` for a shallow ensemble, per head: the model's outputs
    and the gradients of each head's summed residual energy, ∂E_k/∂pos [K, N, 3] eV/Å and,
    with a ``strain`` [S, 3, 3], ∂E_k/∂strain [K, S, 3, 3] eV (differentiable in the weights).
    The ensemble's own gradients are their mean over the heads (the mean energy is linear in them)."""
    shifts = graph.shifts.to(pos.dtype)

    def member_sums(pos: torch.Tensor, strain: torch.Tensor | None):
        deformed, deformed_shifts = strained(graph, pos, shifts, strain)
        outputs = model(graph.replace(pos=deformed, shifts=deformed_shifts))
        return outputs["residual_energies_members"].sum(0), outputs  # [K], eV

    argnums = (0,) if strain is None else (0, 1)
    gradients, outputs = torch.func.jacrev(member_sums, argnums=argnums, has_aux=True)(pos, strain)
    return outputs, gradients


class CompiledGradients:
    """:func:`residual_and_gradients` compiled by ``torch.compile`` on first use; on a
    compilation failure, one warning and the eager function from then on (same results).

    The compiled function takes the model as an argument, so one compilation serves every
    model of the same architecture (a committee's members). Not copied with a model.
    """

    def __init__(self, function: Callable = residual_and_gradients) -> None:
        self.function = function
        self.compiled: Callable | None = None
        self.failure: str | None = None  # why compilation is off, once it failed

    @property
    def active(self) -> bool:
        """Whether calls still go through the compiled function (no failure so far)."""
        return self.failure is None

    def __call__(self, *args: Any) -> Any:
        if self.failure is None:
            try:
                if self.compiled is None:
                    self.compiled = torch.compile(self.function, **COMPILE_OPTIONS)
                return self.compiled(*args)
            except torch.OutOfMemoryError:
                raise  # the eager call would not fit either: not a compiler failure
            except Exception as error:  # noqa: BLE001 - any compiler failure falls back to eager
                self.fall_back(error)
        return self.function(*args)

    def fall_back(self, error: BaseException) -> None:
        """Turn compilation off for good, with one warning naming the reason."""
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        self.failure = f"{type(error).__name__}: {reason}"[:300]
        warnings.warn(f"torch.compile failed; running the model eagerly (same results, slower): {self.failure}", stacklevel=3)


SHARED = CompiledGradients()
"""The process's compiled energy-and-gradients call (one compilation cache for all models)."""

SHARED_MEMBERS = CompiledGradients(member_residuals_and_gradients)
"""The process's compiled call with each head's gradients (shallow ensembles' force spread)."""
