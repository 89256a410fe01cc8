"""Seeded splits of a data set."""

from __future__ import annotations

import numpy as np

from molequi.errors import ConfigError


def train_validation_split(n_structures: int, n_validation: int | float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded random train/validation split.

    Args:
        n_structures: size of the data set.
        n_validation: a count (int ≥ 1) or a fraction in (0, 1).
        seed: the split is a pure function of ``(n_structures, n_validation, seed)``.
    """
    if isinstance(n_validation, float) and 0.0 < n_validation < 1.0:
        n_validation = max(1, int(round(n_validation * n_structures)))
    n_validation = int(n_validation)
    if not 1 <= n_validation < n_structures:
        raise ConfigError(
            f"validation split of {n_validation} structures is impossible with {n_structures} structures "
            "(need at least 1 for validation and 1 for training)"
        )
    order = np.random.default_rng(seed).permutation(n_structures)
    return np.sort(order[n_validation:]), np.sort(order[:n_validation])
