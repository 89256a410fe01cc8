"""Ranking: single objectives, weighted desirability, Pareto rank, diversity picks.

Values are read from row mappings: an objective ``gap`` uses the columns
``gap_mean``/``gap_std`` when present (a model prediction) and the column
``gap`` otherwise (a filter value such as ``qed`` or ``sa_score``).
Missing or non-numeric values rank last.  Ties keep the input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from molequi.errors import ConfigError

from .config import Objective


@dataclass
class Ranking:
    """``score`` (higher is better), ``rank`` (1 = best) and, for Pareto, the front index."""

    score: np.ndarray
    rank: np.ndarray
    pareto_rank: np.ndarray | None = None


def _as_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def column_values(rows: Sequence[Mapping[str, object]], name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` arrays of an objective column (std = 0 for non-predictions)."""
    if rows and f"{name}_mean" in rows[0]:
        mean = np.array([_as_float(r.get(f"{name}_mean")) for r in rows])
        std = np.array([_as_float(r.get(f"{name}_std")) for r in rows])
        return mean, np.nan_to_num(std, nan=0.0)
    if rows and name not in rows[0]:
        raise ConfigError(f"objective column {name!r} not found; available: "
                       f"{sorted(k for k in rows[0] if k != 'molblock')}")
    return np.array([_as_float(r.get(name)) for r in rows]), np.zeros(len(rows))


def _window_distance(lo_value: np.ndarray, hi_value: np.ndarray, obj: Objective,
                     optimistic: bool) -> np.ndarray:
    """Distance of the interval [lo_value, hi_value] to the target window.

    Optimistic: distance of the closest point of the interval; pessimistic:
    of the farthest endpoint (the distance is convex in the value).
    """
    def dist(v: np.ndarray) -> np.ndarray:
        return np.maximum(obj.lo - v, 0.0) + np.maximum(v - obj.hi, 0.0)

    if optimistic:
        overlaps = (hi_value >= obj.lo) & (lo_value <= obj.hi)
        return np.where(overlaps, 0.0, np.minimum(dist(lo_value), dist(hi_value)))
    return np.maximum(dist(lo_value), dist(hi_value))


def utility(rows: Sequence[Mapping[str, object]], obj: Objective, kappa: float = 0.0,
            uncertainty: str = "pessimistic") -> np.ndarray:
    """Per-row utility of one objective (higher is better, NaN = unknown).

    max: ``mean ± kappa*std``; min: ``-(mean ∓ kappa*std)``; target window:
    ``-distance`` of ``mean ± kappa*std`` to the window (0 inside).
    The sign of the ``kappa`` shift favours the molecule when optimistic and
    penalises it when pessimistic.
    """
    mean, std = column_values(rows, obj.name)
    optimistic = uncertainty == "optimistic"
    shift = kappa * std
    if obj.kind == "max":
        return mean + shift if optimistic else mean - shift
    if obj.kind == "min":
        return -(mean - shift if optimistic else mean + shift)
    return -_window_distance(mean - shift, mean + shift, obj, optimistic)


def desirability(u: np.ndarray, obj: Objective) -> np.ndarray:
    """Map utilities to [0, 1]: min-max over the set for max/min objectives;
    for a window, 1 inside and a linear fall-off to 0 over one window width
    (or 1 unit when the window has zero width)."""
    d = np.zeros_like(u)
    finite = np.isfinite(u)
    if not finite.any():
        return d
    if obj.kind == "target":
        width = (obj.hi - obj.lo) or 1.0
        d[finite] = np.clip(1.0 + u[finite] / width, 0.0, 1.0)
        return d
    lo, hi = u[finite].min(), u[finite].max()
    d[finite] = 1.0 if hi == lo else (u[finite] - lo) / (hi - lo)
    return d


def pareto_fronts(utilities: np.ndarray, block: int = 1024) -> np.ndarray:
    """Non-dominated sorting (maximisation): front index per row, 1 = Pareto front.

    ``utilities`` is ``[n_rows, n_objectives]``; NaN counts as worst.  Cost is
    O(n² · m) per front, computed in blocks to bound memory.
    """
    u = np.where(np.isfinite(utilities), utilities, -np.inf)
    n = len(u)
    fronts = np.zeros(n, dtype=np.int64)
    remaining = np.arange(n)
    front = 0
    while remaining.size:
        front += 1
        sub = u[remaining]
        dominated = np.zeros(len(sub), dtype=bool)
        for start in range(0, len(sub), block):
            cand = sub[start:start + block][:, None, :]  # [b, 1, m]
            ge = (sub[None, :, :] >= cand).all(axis=2)
            gt = (sub[None, :, :] > cand).any(axis=2)
            dominated[start:start + block] = (ge & gt).any(axis=1)
        fronts[remaining[~dominated]] = front
        remaining = remaining[dominated]
    return fronts


def _order_to_rank(keys: list[np.ndarray]) -> np.ndarray:
    """Ranks (1 = best) from sort keys, most significant first, all 'smaller is better'."""
    n = len(keys[0])
    order = np.lexsort([np.arange(n)] + keys[::-1])  # input order breaks ties
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    return rank


def rank_rows(rows: Sequence[Mapping[str, object]], objectives: Sequence[Objective | str],
              multi: str = "desirability", kappa: float = 0.0,
              uncertainty: str = "pessimistic") -> Ranking:
    """Rank rows by one or several objectives.

    One objective: score = its utility.  Several: score = weighted mean of
    desirabilities (in [0, 1]); with ``multi="pareto"`` rows are ordered by
    Pareto front first, then by that score.
    """
    objs = [o if isinstance(o, Objective) else Objective.parse(o) for o in objectives]
    if not rows:
        empty = np.zeros(0)
        return Ranking(empty, empty.astype(np.int64), empty.astype(np.int64) if multi == "pareto" else None)
    utils = np.stack([utility(rows, o, kappa, uncertainty) for o in objs], axis=1)
    if len(objs) == 1:
        score = utils[:, 0]
    else:
        weights = np.array([o.weight for o in objs])
        des = np.stack([desirability(utils[:, j], o) for j, o in enumerate(objs)], axis=1)
        score = des @ weights / weights.sum()
    worst_last = np.where(np.isfinite(score), -score, np.inf)
    if multi == "pareto":
        fronts = pareto_fronts(utils)
        return Ranking(score, _order_to_rank([fronts.astype(float), worst_last]), fronts)
    return Ranking(score, _order_to_rank([worst_last]))


def diverse_pick(smiles_by_rank: Sequence[str], k: int, radius: int = 2, n_bits: int = 2048,
                 seed: int = 42) -> list[int]:
    """Indices (into ``smiles_by_rank``, best first) of ``k`` diverse molecules.

    RDKit MaxMin picker on Morgan fingerprints, seeded with the best-ranked
    molecule so that the top hit is always kept; result sorted by rank.
    """
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator
    from rdkit.SimDivFilters.rdSimDivPickers import MaxMinPicker

    if k >= len(smiles_by_rank):
        return list(range(len(smiles_by_rank)))
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    fps = [generator.GetFingerprint(Chem.MolFromSmiles(s)) for s in smiles_by_rank]
    picks = MaxMinPicker().LazyBitVectorPick(fps, len(fps), k, firstPicks=[0], seed=seed)
    return sorted(picks)
