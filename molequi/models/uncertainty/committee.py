"""One model or a committee of models, evaluated on plain device tensors.

Both the ASE calculator and the batched MD engine call the potential through
:class:`Potential` on a :class:`GraphBatch`: the fields that
:class:`~molequi.nn.forces.ForceOutput` reads, kept on the device between steps, so no
``torch_geometric`` ``Batch`` is assembled per step.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch

from molequi.data.batch import GraphBatch
from molequi.errors import ConfigError
from molequi.models.io import load_model
from molequi.models.uncertainty import Calibration, as_calibration, forces_spread, spread
from molequi.nn.forces import ForceOutput

ModelSpec = str | Path | ForceOutput
"""A model file path or a loaded model."""


def load_models(
    models: ModelSpec | Sequence[ModelSpec], device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None
) -> list[ForceOutput]:
    """A list of models in evaluation mode on ``device`` (and ``dtype`` if given).

    ``models`` is a path, a loaded model, or a list of either (a committee). A loaded model that
    must change device or dtype is copied first: the caller's model is never modified.
    """
    from molequi.devices import resolve_device

    device = resolve_device(device)
    if isinstance(models, (str, Path, ForceOutput)):
        models = [models]
    if isinstance(dtype, str):
        if dtype not in ("float32", "float64"):
            raise ConfigError(f"dtype must be float32 or float64, got {dtype!r}")
        dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    loaded = []
    for spec in models:
        if isinstance(spec, ForceOutput):
            model = spec
            if model.device != torch.device(device) or (dtype is not None and model.dtype != dtype):
                model = copy.deepcopy(model).to(device=device, dtype=dtype or model.dtype)
        else:
            model = load_model(spec, device=device, dtype=dtype)
        loaded.append(model.eval())
    if not loaded:
        raise ValueError("no model given")
    if len({m.dtype for m in loaded}) > 1:
        raise ValueError("committee members have different dtypes; pass dtype= to convert them")
    return loaded


class Potential:
    """Energies and forces of a model or a committee (mean over members, and the spread).

    Members are the committee's models and, for a shallow ensemble (``ensemble_heads`` K ≥ 2),
    each model's K heads. The neighbor list must hold every pair closer than :attr:`cutoff`;
    pairs beyond a member's own cutoff contribute exactly zero (its envelope vanishes there and
    the radial MLP has no biases), so a list built with a larger radius (a skin) gives
    identical results.

    Args:
        models: loaded models (see :func:`load_models`).
        calibration: a :class:`~molequi.models.uncertainty.Calibration` (or its JSON file from
            ``molequi calibrate``) applied to ``energy_std`` and ``forces_std``.
    """

    def __init__(self, models: Sequence[ForceOutput], calibration: Calibration | str | Path | None = None,
                 force_spread: bool = True) -> None:
        self.models = list(models)
        # without it a shallow ensemble takes one backward pass a step instead of one per head:
        # energy_std stays, forces_std, sigma_forces and the domain verdict go
        self.force_spread = bool(force_spread)
        for model in self.models:
            trained = model.model.config.trained_outputs
            if "energy" not in trained and "forces" not in trained:
                raise ConfigError(
                    f"this model was trained on {', '.join(trained)} only: its energy and forces are untrained, "
                    "so it cannot drive MD or an ASE calculator (train with energies/forces for that)"
                )
        self.cutoff = max(m.model.config.cutoff for m in self.models)  # Å
        self.dtype = self.models[0].dtype
        self.device = self.models[0].device
        self.calibration = as_calibration(calibration, self.models)
        self.num_members = sum(m.model.config.ensemble_heads for m in self.models)

    @property
    def is_committee(self) -> bool:
        """Whether there is a spread: two or more members (models, or heads of an ensemble)."""
        return self.num_members > 1

    def check_species(self, numbers: torch.Tensor) -> None:
        """Raise :class:`~molequi.errors.UnknownElementError` for elements a member does not know."""
        for model in self.models:
            model.check_species(numbers)

    def __call__(self, graph: GraphBatch, compute_stress: bool = False) -> dict[str, torch.Tensor]:
        """Evaluate every member (species are not re-checked: call :meth:`check_species` once).

        Returns (detached, float64):
            ``energy`` [S] eV, ``energies`` [N] eV, ``forces`` [N, 3] eV/Å, ``stress`` [S, 3, 3]
            eV/Å³ (if asked) — means over members — and with two or more members ``energy_std``
            [S] eV and ``forces_std`` [N] eV/Å, the per-atom spread sqrt(mean over x, y, z of
            the variance over members): unbiased (ddof 1), calibrated if a calibration is set.
            With one member there are no ``*_std`` keys (no estimate is not a zero estimate).
            With a spread also ``sigma_forces`` [S] eV/Å (per structure: its largest per-atom
            ``forces_std``) and ``in_domain`` [S] (1.0 in, 0.0 out of the domain, NaN unknown:
            no calibration or no threshold in it; see :meth:`domain_verdict`).
        """
        keys = ["energy", "energies", "forces"] + (["stress"] if compute_stress else [])
        outputs = [
            model(graph, compute_forces=True, compute_stress=compute_stress, check_species=False,
                  member_forces=self.force_spread)
            for model in self.models
        ]
        if len(outputs) == 1 and not self.is_committee:
            return {key: outputs[0][key].detach().to(torch.float64) for key in keys}
        results = {key: torch.stack([out[key].detach() for out in outputs]).to(torch.float64).mean(0) for key in keys}
        members = {
            key: torch.cat([out.get(f"{key}_members", out[key].unsqueeze(0)).detach() for out in outputs]).to(torch.float64)
            for key in (("energy", "forces") if self.force_spread else ("energy",))
        }
        results["energy"] = members["energy"].mean(0)
        if not self.force_spread:
            energy_std = spread(members["energy"])
            results["energy_std"] = energy_std if self.calibration is None else self.calibration.apply("energy", energy_std)
            return results
        results["forces"] = members["forces"].mean(0)
        energy_std, forces_std = spread(members["energy"]), forces_spread(members["forces"])
        if self.calibration is not None:
            energy_std = self.calibration.apply("energy", energy_std)
            forces_std = self.calibration.apply("forces", forces_std)
        results["energy_std"], results["forces_std"] = energy_std, forces_std
        results["sigma_forces"] = torch.zeros_like(results["energy"]).scatter_reduce(
            0, graph.batch, forces_std, "amax", include_self=False)
        results["in_domain"] = self.domain_verdict(results["sigma_forces"])
        return results

    @property
    def domain_threshold(self) -> float | None:
        """The calibration's in-domain threshold of the per-structure force std (eV/Å), or None."""
        return None if self.calibration is None else self.calibration.domain_threshold

    def domain_verdict(self, sigma_forces: torch.Tensor) -> torch.Tensor:
        """[S] 1.0 where the per-structure calibrated force std (eV/Å) is at most the threshold,
        0.0 above it, NaN (unknown) without a threshold."""
        threshold = self.domain_threshold
        if threshold is None:
            return torch.full_like(sigma_forces, float("nan"))
        return (sigma_forces <= threshold).to(sigma_forces.dtype)
