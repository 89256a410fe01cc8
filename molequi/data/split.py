"""Seeded splits of a data set."""

from __future__ import annotations

import numpy as np

from molequi.errors import ConfigError


def train_validation_split(n_structures: int, n_validation: int | float, seed: int,
                           groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded random train/validation split.

    Args:
        n_structures: size of the data set.
        n_validation: a count (int ≥ 1) or a fraction in (0, 1).
        seed: the split is a pure function of ``(n_structures, n_validation, seed)`` (and ``groups``).
        groups: a label per structure; structures of one label (copies of one structure) all go
            to one side, so validation never scores a copy of a training structure. Whole groups
            are drawn until the validation count is reached (it may then hold a few more). Without
            copies (every label distinct) the split is the one without ``groups``.
    """
    if isinstance(n_validation, float) and 0.0 < n_validation < 1.0:
        n_validation = max(1, int(round(n_validation * n_structures)))
    n_validation = int(n_validation)
    if not 1 <= n_validation < n_structures:
        raise ConfigError(
            f"validation split of {n_validation} structures is impossible with {n_structures} structures "
            "(need at least 1 for validation and 1 for training)"
        )
    if groups is None or len(np.unique(groups)) == n_structures:
        order = np.random.default_rng(seed).permutation(n_structures)
        return np.sort(order[n_validation:]), np.sort(order[:n_validation])
    groups = np.asarray(groups)
    labels = np.unique(groups)
    if len(labels) < 2:
        raise ConfigError(f"all {n_structures} structures are copies of one structure: a validation split "
                          "needs at least two different structures")
    chosen, count = [], 0
    for label in np.random.default_rng(seed).permutation(labels):
        if count >= n_validation:
            break
        size = int(np.sum(groups == label))
        if count + size >= n_structures or len(chosen) == len(labels) - 1:
            continue  # keep at least one group for training
        chosen.append(label)
        count += size
    validation = np.isin(groups, chosen)
    return np.flatnonzero(~validation), np.flatnonzero(validation)
