"""Spreads over members: the unbiased std of a committee's (and shallow ensemble's) outputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


MEMBERS = "_members"
MIN_STD = 1e-12  # stds below this (identical members) carry no information and are left out of fits


def spread(members: np.ndarray) -> np.ndarray | None:
    """Unbiased std (ddof 1) over axis 0 (the members), or None for a single member."""
    members = np.asarray(members, dtype=np.float64)
    if members.shape[0] < 2:
        return None
    return members.std(axis=0, ddof=1)


def forces_spread(members: np.ndarray) -> np.ndarray | None:
    """[n_atoms] per-atom force spread from member forces [M, n_atoms, 3], eV/Å:
    sqrt(mean over x, y, z of the unbiased variance over members); None for one member."""
    members = np.asarray(members, dtype=np.float64)
    if members.shape[0] < 2:
        return None
    return np.sqrt(members.var(axis=0, ddof=1).mean(axis=-1))


def members_of(result: Mapping[str, Any], key: str) -> np.ndarray:
    """One model's members of output ``key``: its heads' ``<key>_members`` [K, ...] for a
    shallow ensemble, else the output itself as one member [1, ...]."""
    if f"{key}{MEMBERS}" in result:
        return np.asarray(result[f"{key}{MEMBERS}"], dtype=np.float64)
    return np.asarray(result[key], dtype=np.float64)[None]


# --- calibration ---------------------------------------------------------------------------------
















# --- metrics -------------------------------------------------------------------------------------






