"""Data: the atomic-graph record, neighbor lists, readers, splits and statistics."""

from molequi.data.graph import atoms_to_graph, validate_atoms
from molequi.data.labels import LabelKeys, labelled_atoms, structure_labels
from molequi.data.neighbors import neighbor_list
from molequi.data.readers import KCAL_PER_MOL_IN_EV, read_rmd17, read_structures, require_labels
from molequi.data.split import train_validation_split
from molequi.data.statistics import EnergyStatistics, compute_statistics, fit_e0s, read_e0s_file, resolve_e0s, species_of

__all__ = [
    "KCAL_PER_MOL_IN_EV",
    "EnergyStatistics",
    "LabelKeys",
    "labelled_atoms",
    "read_e0s_file",
    "resolve_e0s",
    "atoms_to_graph",
    "compute_statistics",
    "fit_e0s",
    "neighbor_list",
    "read_rmd17",
    "read_structures",
    "require_labels",
    "species_of",
    "structure_labels",
    "train_validation_split",
    "validate_atoms",
]
