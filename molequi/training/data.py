"""Data preparation for training: read, check, convert to graphs, split, fit statistics."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data

from molequi.data import (
    EnergyStatistics,
    LabelKeys,
    atoms_to_graph,
    compute_statistics,
    read_structures,
    require_labels,
    species_of,
    train_validation_split,
)
from molequi.data.quality import (duplicates_message, energy_outliers, force_outliers, outliers_message,
                                  structure_groups)
from molequi.data.statistics import E0S_METHODS, resolve_e0s
from molequi.errors import DataFormatError
from molequi.models.config import ModelConfig
from molequi.models.heads import head


def load_graphs(
    paths: str | Path | Sequence[str | Path],
    cutoff: float,
    properties: Sequence[str] = (),
    labels: bool = True,
    require_energy: bool = True,
    require_forces: bool = True,
    keys: LabelKeys | None = None,
    baseline: str | None = None,
    cache_dir: str | Path | None = None,
    names: list[str] | None = None,
) -> list[Data]:
    """Read every structure of ``paths`` and convert it to a graph with a ``cutoff`` (Å).

    Each graph carries ``index`` (its position in the concatenated files). With ``labels``,
    the energy and forces found are attached (and must be finite); ``require_energy`` /
    ``require_forces`` make them mandatory, and every name in ``properties`` must be in each
    structure's ``atoms.info``. ``keys`` names the label keys (MACE's ``REF_energy`` ...).
    With a ``baseline`` (Δ-learning, e.g. ``"xtb"``), its energies and forces are taken off the
    labels; they are computed once and cached in ``cache_dir`` (see
    :func:`molequi.models.baseline.baseline_labels`). ``names``: a list that receives each
    structure's name (``FILE: structure K``) for messages.

    Raises:
        DataFormatError / InvalidStructureError: naming the file and the structure index.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    graphs: list[Data] = []
    for path in paths:
        structures = read_structures(path, keys=keys)
        if labels:
            require_labels(structures, path, energy=require_energy, forces=require_forces, keys=keys)
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
                    if key in graph and not torch.isfinite(graph[key]).all():
                        raise DataFormatError(f"{name}: the '{key}' label is not finite (NaN or inf)")
            graph.index = torch.tensor([len(graphs)])
            graphs.append(graph)
            if names is not None:
                names.append(name)
    check_uniform_labels(graphs, paths)
    if labels and baseline is not None:
        subtract_baseline(graphs, baseline, cache_dir)
    return graphs


def subtract_baseline(graphs: Sequence[Data], baseline: str, cache_dir: str | Path | None = None) -> None:
    """Replace each graph's energy (eV) and forces (eV/Å) labels by ``label − baseline``, in place."""
    from molequi.models.baseline import baseline_labels

    energies, forces = baseline_labels(
        baseline,
        [graph.numbers.numpy() for graph in graphs],
        [graph.pos.numpy() for graph in graphs],
        cache_dir,
        progress=lambda done, total: print(f"{baseline} baseline: {done}/{total} structures", flush=True),
    )
    for graph, energy, force in zip(graphs, energies, forces):
        if "energy" in graph:
            graph.energy = graph.energy - torch.tensor(energy, dtype=graph.energy.dtype)
        if "forces" in graph:
            graph.forces = graph.forces - torch.from_numpy(force).to(graph.forces.dtype)


def check_uniform_labels(graphs: Sequence[Data], paths: Sequence[str | Path]) -> None:
    """Batching needs every graph to carry the same labels: energy/forces on all or none."""
    for key in ("energy", "forces"):
        having = [key in graph for graph in graphs]
        if any(having) and not all(having):
            missing = having.index(False)
            raise DataFormatError(
                f"{', '.join(map(str, paths))}: structure {missing} has no {key} label while others have one; "
                f"label every structure or none"
            )


def property_statistics(graphs: Sequence[Data], properties: dict[str, str]) -> dict[str, list[float]]:
    """``[shift, scale]`` of each head that its kind rescales (:meth:`HeadKind.label_statistics`:
    intensive heads the label's mean and std, extensive heads those of the label per atom;
    dipole heads are not rescaled), so that the network's raw per-atom outputs are O(1)."""
    stats = {}
    for name, kind in properties.items():
        labels = np.array([graph[name].reshape(-1).tolist() for graph in graphs], dtype=np.float64)
        n_atoms = np.array([graph.num_nodes for graph in graphs], dtype=np.float64)
        values = head(kind).label_statistics(labels, n_atoms)
        if values is not None:
            stats[name] = values
    return stats


def trained_outputs(energy_weight: float, forces_weight: float, property_weights: dict[str, float], properties) -> list[str]:
    """The outputs a loss with these weights fits (names of positive-weight terms)."""
    outputs = [name for name, weight in (("energy", energy_weight), ("forces", forces_weight)) if weight > 0]
    return outputs + [name for name in properties if property_weights.get(name, 1.0) > 0]


def check_outliers(graphs: Sequence[Data], names: Sequence[str], species: Sequence[int], outputs: Sequence[str],
                   e0s: str = "fit") -> None:
    """Refuse (:class:`DataFormatError`, one line) structures whose trained labels lie far
    outside the rest: energies per atom after the reference energies (``e0s``, fitted on every
    structure here), and each structure's largest force."""
    found: dict[int, list[str]] = {}
    if "energy" in outputs and graphs and all("energy" in graph for graph in graphs):
        for k, why in energy_outliers(graphs, resolve_e0s(graphs, species, e0s)):
            found.setdefault(k, []).append(why)
    if "forces" in outputs and graphs and all("forces" in graph for graph in graphs):
        for k, why in force_outliers(graphs):
            found.setdefault(k, []).append(why)
    if found:
        listed = [(k, ", ".join(found[k])) for k in sorted(found)]
        raise DataFormatError(outliers_message(listed, names, len(graphs)))


def determined_compositions(graphs: Sequence[Data], species: Sequence[int]) -> list[list[float]] | None:
    """The ``e0s_basis`` of a model whose E0s are fitted to ``graphs`` (see
    :mod:`molequi.models.references`): None when every composition of ``species`` is determined."""
    from molequi.models.references import composition_basis, composition_counts

    return composition_basis(np.array([composition_counts(graph.numbers.numpy(), species) for graph in graphs]))


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
    outputs: Sequence[str] = ("energy", "forces"),
    keys: LabelKeys | None = None,
    e0s: str = "fit",
    cache_dir: str | Path | None = None,
    allow_outliers: bool = False,
) -> PreparedData:
    """Read the training file(s), split with ``seed``, and fill the model's data statistics.

    ``outputs`` are the trained outputs (see :func:`trained_outputs`): energies/forces are
    required only when trained. The E0s, energy shift/scale, property shifts/scales and mean
    neighbor count are computed on the training part only; ``species`` covers every structure.
    ``keys`` names the label keys; ``e0s`` is ``fit``, ``average`` or a JSON file of reference
    energies (see :func:`molequi.data.statistics.resolve_e0s`). With ``architecture.baseline``
    the labels are taken relative to it (cached in ``cache_dir``), and so are the statistics.

    Structures whose trained labels lie far outside the rest (see :mod:`molequi.data.quality`: a
    unit mix-up) are refused, naming them, unless ``allow_outliers``; identical structures are
    reported (on stderr) and kept on one side of the split.
    """
    names: list[str] = []
    graphs = load_graphs(
        paths,
        architecture.cutoff,
        properties=list(architecture.properties),
        require_energy="energy" in outputs,
        require_forces="forces" in outputs,
        keys=keys,
        baseline=architecture.baseline,
        cache_dir=cache_dir,
        names=names,
    )
    species = species_of(graphs)
    if not allow_outliers:
        check_outliers(graphs, names, species, outputs, e0s)
    groups = structure_groups(graphs)
    train_indices, validation_indices = train_validation_split(len(graphs), validation, seed, groups=groups)
    duplicates = duplicates_message(groups, names)
    if duplicates:
        print(f"note: {duplicates}", file=sys.stderr)
    train = [graphs[k] for k in train_indices]
    held_out = [graphs[k] for k in validation_indices]
    charged = sum(1 for graph in graphs if "charge" in graph and float(graph.charge) != 0)
    if charged and not architecture.charge_input:
        print(f"note: {charged} of {len(graphs)} structures carry a nonzero total charge (info['charge']) that the "
              "model will not see: pass --charge-input to give it to the network", file=sys.stderr)
    statistics = compute_statistics(train, species, e0s, charge_terms=architecture.charge_input)
    model_config = fitted_config(architecture, species, train, statistics, e0s, outputs)
    return PreparedData(train, held_out, model_config, statistics, train_indices, validation_indices)


def fitted_config(architecture: ModelConfig, species: list[int], graphs: Sequence[Data], statistics: EnergyStatistics,
                  e0s: str, outputs: Sequence[str]) -> ModelConfig:
    """``architecture`` with the normalisation fitted on the training ``graphs`` (all of them, or a
    sample of a streamed set): E0s, the compositions they determine, energy shift and scale, mean
    neighbour count and property statistics."""
    return dataclasses.replace(
        architecture,
        species=species,
        e0s={str(z): e for z, e in statistics.e0s.items()},
        e0s_basis=determined_compositions(graphs, species) if "energy" in outputs and e0s in E0S_METHODS else None,
        charge_energies=statistics.charge_energies,
        energy_shift=statistics.shift,
        energy_scale=statistics.scale,
        avg_num_neighbors=statistics.avg_num_neighbors,
        property_stats=property_statistics(graphs, architecture.properties),
        trained_outputs=list(outputs),
    )


STATISTICS_SAMPLE = 5_000
"""Structures of a streamed training set that the normalisation is fitted on (a seeded sample)."""


def prepare_streamed(
    paths: str | Path | Sequence[str | Path],
    architecture: ModelConfig,
    validation: int | float,
    seed: int,
    keys: LabelKeys | None = None,
    e0s: str = "fit",
) -> PreparedData:
    """:func:`prepare_data` for a training file larger than memory (``molequi train --stream``).

    The file is indexed (see :mod:`molequi.data.stream`); the training structures are read and
    turned into graphs when a batch needs them, so memory does not grow with the file. The
    validation structures are held in memory; the normalisation (E0s, energy shift and scale,
    mean neighbour count) is fitted on a seeded sample of at most :data:`STATISTICS_SAMPLE`
    training structures. Energies and forces are required.
    """
    from molequi.data.stream import FrameGraphs, frame_offsets

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if len(paths) != 1:
        raise DataFormatError(f"--stream reads one training file, got {len(paths)}: concatenate them (cat a.extxyz "
                              "b.extxyz > all.extxyz)")
    path = paths[0]
    offsets, species = frame_offsets(path)
    train_indices, validation_indices = train_validation_split(len(offsets), validation, seed)
    train = FrameGraphs(path, offsets, train_indices, architecture.cutoff, keys)
    held_out = FrameGraphs(path, offsets, validation_indices, architecture.cutoff, keys).load(range(len(validation_indices)))
    rng = np.random.default_rng(seed)
    sample = train.load(np.sort(rng.permutation(len(train))[:STATISTICS_SAMPLE]))
    statistics = compute_statistics(sample, species, e0s, charge_terms=architecture.charge_input)
    model_config = fitted_config(architecture, species, sample, statistics, e0s, ["energy", "forces"])
    del sample
    return PreparedData(train, held_out, model_config, statistics, train_indices, validation_indices)
