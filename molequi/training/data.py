"""Data preparation for training: read, check, convert to graphs, split, fit statistics."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data

from molequi.data import (
    EnergyStatistics,
    atoms_to_graph,
    compute_statistics,
    read_structures,
    require_labels,
    species_of,
    train_validation_split,
)
from molequi.errors import DataFormatError
from molequi.models.config import ModelConfig


def load_graphs(
    paths: str | Path | Sequence[str | Path],
    cutoff: float,
    properties: Sequence[str] = (),
    labels: bool = True,
) -> list[Data]:
    """Read every structure of ``paths`` and convert it to a graph with a ``cutoff`` (Å).

    Each graph carries ``index`` (its position in the concatenated files). With ``labels``,
    every structure must have a finite energy and forces of the right shape, and every name in
    ``properties`` in its ``atoms.info``.

    Raises:
        DataFormatError / InvalidStructureError: naming the file and the structure index.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    graphs: list[Data] = []
    for path in paths:
        structures = read_structures(path)
        if labels:
            require_labels(structures, path)
        for k, atoms in enumerate(structures):
            name = f"{path}: structure {k}"
            values = {}
            for prop in properties:
                if prop not in atoms.info:
                    raise DataFormatError(f"{name} has no '{prop}' label in its info (the model has a '{prop}' head)")
                values[prop] = atoms.info[prop]
            graph = atoms_to_graph(atoms, cutoff, with_labels=labels, properties=values, name=name)
            if labels:
                for key in ("energy", "forces", *properties):
                    if not torch.isfinite(graph[key]).all():
                        raise DataFormatError(f"{name}: the '{key}' label is not finite (NaN or inf)")
            graph.index = torch.tensor([len(graphs)])
            graphs.append(graph)
    return graphs


@dataclass
class PreparedData:
    """Training and validation graphs and the data-derived model configuration."""

    train: list[Data]
    validation: list[Data]
    model_config: ModelConfig
    statistics: EnergyStatistics
    train_indices: np.ndarray
    validation_indices: np.ndarray


def prepare_data(
    paths: str | Path | Sequence[str | Path],
    architecture: ModelConfig,
    validation: int | float,
    seed: int,
) -> PreparedData:
    """Read the training file(s), split with ``seed``, and fill the model's data statistics.

    The E0s, energy shift/scale and mean neighbor count are computed on the training part
    only; ``species`` covers every structure (training and validation).
    """
    graphs = load_graphs(paths, architecture.cutoff, properties=list(architecture.properties))
    train_indices, validation_indices = train_validation_split(len(graphs), validation, seed)
    train = [graphs[k] for k in train_indices]
    held_out = [graphs[k] for k in validation_indices]
    species = species_of(graphs)
    statistics = compute_statistics(train, species)
    model_config = dataclasses.replace(
        architecture,
        species=species,
        e0s={str(z): e for z, e in statistics.e0s.items()},
        energy_shift=statistics.shift,
        energy_scale=statistics.scale,
        avg_num_neighbors=statistics.avg_num_neighbors,
    )
    return PreparedData(train, held_out, model_config, statistics, train_indices, validation_indices)
