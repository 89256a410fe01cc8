"""molequi models in torch-sim: a ``torch_sim.models.interface.ModelInterface``.

torch-sim (``pip install 'molequi[torchsim]'``, the ``torch-sim-atomistic`` package) brings
batched integrators (NVE, Langevin NVT, Nosé–Hoover, NPT), FIRE relaxation and memory-based
autobatching; this adapter lets them drive a molequi model or committee::

    import torch_sim as ts
    from molequi.calculators.torchsim import TorchSimModel

    model = TorchSimModel("run/model.molequi", device="cpu")
    final = ts.integrate(system=[atoms] * 64, model=model, integrator=ts.nvt_langevin,
                         n_steps=1000, temperature=300.0, timestep=0.0005)  # timestep in ps

Units are torch-sim's metal units, which are molequi's: Å, eV, amu (forces eV/Å, stress
eV/Å³ with ASE's sign). States are float64 by default (``dtype``); the network computes in
its own dtype and the energies come back float64 from molequi, cast to the state dtype.

Total charge (e) of a charge-input model: the state's own per-system ``charge`` where the
installed torch-sim carries one, else the adapter's ``charge`` (one value or one per system),
else neutral.

Neighbor lists: open molecules (``state.pbc`` False) take every intra-molecule pair within
the cutoff, built on the device in one pass for the whole batch; periodic systems use
torch-sim's own Vesin neighbor list, one system at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from molequi.errors import MissingDependencyError

try:
    import torch_sim as ts
    from torch_sim.models.interface import ModelInterface
    from torch_sim.neighbors import vesin_nl_ts
except ModuleNotFoundError as error:  # optional extra
    raise MissingDependencyError(
        f"the torch-sim adapter needs torch-sim ({error.name} is not installed): pip install 'molequi[torchsim]'"
    ) from error

from molequi.data.neighbors import dense_candidate_pairs
from molequi.data.batch import GraphBatch
from molequi.models.uncertainty.committee import Potential, load_models
from molequi.nn.forces import ForceOutput


class TorchSimModel(ModelInterface):
    """A molequi model (or committee: a list of models or paths) as a torch-sim model.

    Args:
        models: a model file, a loaded model, or a list of either (committee: mean energy and
            forces; the spread is returned as ``energy_std`` / ``forces_std``).
        device: where the model and the states live (default: CUDA if available, else CPU).
        dtype: dtype of torch-sim's states (positions, momenta); float64 by default.
        compute_stress: also return the stress of periodic systems (eV/Å³), for NPT.
        memory_scales_with: torch-sim's autobatching metric; ``"n_atoms"`` suits open molecules
            (no volume), ``"n_atoms_x_density"`` periodic systems.
        charge: total charge (e) of every system, or one per system, for a charge-input model
            when the state carries none (torch-sim states before charges); None: neutral.
    """

    def __init__(
        self,
        models: str | Path | ForceOutput | Sequence[str | Path | ForceOutput],
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float64,
        compute_stress: bool = False,
        memory_scales_with: str = "n_atoms",
        charge: float | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.potential = Potential(load_models(models, device=device))
        self._device = device
        self._dtype = dtype
        self._compute_forces = True
        self._compute_stress = bool(compute_stress)
        self._memory_scales_with = memory_scales_with
        self.cutoff = float(self.potential.cutoff)
        self.charge = None if charge is None else torch.as_tensor(charge, dtype=torch.float64, device=device)

    def _charges(self, state: ts.SimState) -> torch.Tensor | None:
        """[S] total charge per system (e): the state's own, else the adapter's, else None."""
        own = getattr(state, "charge", None)
        if own is not None:
            return own.to(torch.float64)
        if self.charge is None:
            return None
        if self.charge.dim() == 0:
            return self.charge.expand(state.n_systems)
        if self.charge.numel() != state.n_systems:
            raise ValueError(f"charge holds {self.charge.numel()} values for a state of {state.n_systems} "
                             "systems: give one total charge (e) per system, or one for all")
        return self.charge

    def _edges(self, state: ts.SimState) -> tuple[torch.Tensor, torch.Tensor]:
        """[2, E] edges (centre, neighbor) and [E, 3] shifts (Å) of every system of ``state``."""
        positions, system_idx = state.positions, state.system_idx
        sizes = torch.bincount(system_idx, minlength=state.n_systems)
        offsets = torch.cumsum(sizes, 0) - sizes
        if not state.pbc:
            pairs = dense_candidate_pairs(sizes, offsets)
            distance2 = (positions[pairs[1]] - positions[pairs[0]]).square().sum(dim=1)
            edge_index = pairs[:, distance2 < self.cutoff**2]
            return edge_index, positions.new_zeros(edge_index.shape[1], 3)
        edges, shifts = [], []
        cutoff = torch.tensor(self.cutoff, dtype=positions.dtype, device=positions.device)
        for k in range(state.n_systems):
            mask = system_idx == k
            cell = state.row_vector_cell[k]
            mapping, unit_shifts = vesin_nl_ts(positions=positions[mask], cell=cell, pbc=True, cutoff=cutoff)
            # torch-sim's mapping is (i, j) with r_ij = r_j − r_i + shifts: molequi's convention
            edges.append(mapping + offsets[k])
            shifts.append(unit_shifts.to(positions.dtype) @ cell)
        return torch.cat(edges, dim=1), torch.cat(shifts)

    def forward(self, state: ts.SimState | dict, **kwargs) -> dict[str, torch.Tensor]:
        """Energy [S] (eV), forces [N, 3] (eV/Å), stress [S, 3, 3] (eV/Å³, if asked; periodic
        systems), and with a committee ``energy_std`` [S] and ``forces_std`` [N]."""
        if isinstance(state, dict):
            state = ts.SimState(**state, masses=torch.ones_like(state["positions"][:, 0]))
        numbers = state.atomic_numbers
        self.potential.check_species(numbers)
        edge_index, shifts = self._edges(state)
        cell = state.row_vector_cell if state.pbc else torch.zeros_like(state.row_vector_cell)
        graph = GraphBatch(
            pos=state.positions.to(torch.float64),
            numbers=numbers,
            batch=state.system_idx,
            num_graphs=state.n_systems,
            cell=cell.to(torch.float64),
            edge_index=edge_index,
            shifts=shifts.to(torch.float64),
            charge=self._charges(state),
        )
        stress = self._compute_stress and bool(state.pbc)
        outputs = self.potential(graph, compute_stress=stress)
        results = {"energy": outputs["energy"], "forces": outputs["forces"]}
        if stress:
            results["stress"] = outputs["stress"]
        elif self._compute_stress:
            results["stress"] = outputs["energy"].new_zeros(state.n_systems, 3, 3)  # open systems: no stress
        for key in ("energy_std", "forces_std"):
            if key in outputs:
                results[key] = outputs[key]
        return {key: value.to(self._dtype) for key, value in results.items()}
