"""Spreads over members: the unbiased std of a committee's (and shallow ensemble's) outputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


MEMBERS = "_members"
MIN_STD = 1e-12  # stds below this (identical members) carry no information and are left out of fits


def spread(members):
    """Unbiased std (ddof 1) over axis 0 (the members) of a numpy array or a torch tensor (the
    device-side committee's), in float64; None for a single member."""
    if _is_tensor(members):
        return None if members.shape[0] < 2 else members.double().std(0, correction=1)
    members = np.asarray(members, dtype=np.float64)
    if members.shape[0] < 2:
        return None
    return members.std(axis=0, ddof=1)


def forces_spread(members):
    """[n_atoms] per-atom force spread from member forces [M, n_atoms, 3], eV/Å: sqrt(mean over
    x, y, z of the unbiased variance over members), float64, for a numpy array or a torch
    tensor; None for one member."""
    if _is_tensor(members):
        return None if members.shape[0] < 2 else members.double().var(0, correction=1).mean(-1).sqrt()
    members = np.asarray(members, dtype=np.float64)
    if members.shape[0] < 2:
        return None
    return np.sqrt(members.var(axis=0, ddof=1).mean(axis=-1))


def _is_tensor(values: Any) -> bool:
    # no torch import here: screening workers use these helpers on numpy arrays alone
    return type(values).__module__.startswith("torch")


def members_of(result: Mapping[str, Any], key: str) -> np.ndarray:
    """One model's members of output ``key``: its heads' ``<key>_members`` [K, ...] for a
    shallow ensemble, else the output itself as one member [1, ...]."""
    if f"{key}{MEMBERS}" in result:
        return np.asarray(result[f"{key}{MEMBERS}"], dtype=np.float64)
    return np.asarray(result[key], dtype=np.float64)[None]
