"""Which MD frames to label: the most uncertain and mutually different ones, and the trust ceiling."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from ase import Atoms


def distance_descriptor(atoms: Atoms) -> np.ndarray:
    """Sorted interatomic distances, Å: invariant to rotation, translation and atom order."""
    positions = atoms.positions
    i, j = np.triu_indices(len(atoms), k=1)
    return np.sort(np.linalg.norm(positions[j] - positions[i], axis=-1))


def select_frames(stds: np.ndarray, descriptors: Sequence[np.ndarray], k: int, pool_factor: int = 4) -> list[int]:
    """Indices of uncertain and mutually different frames, in the order they were picked.

    Greedy farthest-point sampling among the ``pool_factor × k`` frames of highest ``stds``: the
    most uncertain frame first, then repeatedly the pool frame farthest (Euclidean distance of
    descriptors; frames of different size count as infinitely far) from those already picked.
    Returns the whole pool in pick order (a caller labels the first ``k`` that succeed).

    Args:
        stds: [n_frames] uncertainty per frame (e.g. the largest per-atom force spread, eV/Å).
        descriptors: one vector per frame (see :func:`distance_descriptor`).
        k: frames wanted.
        pool_factor: pool size relative to ``k`` (1: the ``k`` most uncertain).
    """
    stds = np.asarray(stds, dtype=np.float64)
    if len(stds) != len(descriptors):
        raise ValueError(f"{len(stds)} stds but {len(descriptors)} descriptors")
    finite = np.flatnonzero(np.isfinite(stds))
    order = finite[np.argsort(-stds[finite], kind="stable")]
    pool = list(order[: max(k, 1) * pool_factor])
    if not pool:
        return []
    picked = [pool.pop(0)]
    nearest = np.array([_descriptor_distance(descriptors[p], descriptors[picked[0]]) for p in pool])
    while pool:
        best = int(np.argmax(nearest))  # ties go to the more uncertain frame (pool is sorted)
        picked.append(pool.pop(best))
        nearest = np.delete(nearest, best)
        nearest = np.minimum(nearest, [_descriptor_distance(descriptors[p], descriptors[picked[-1]]) for p in pool])
    return [int(p) for p in picked]


def select_clustered(stds: np.ndarray, descriptors: Sequence[np.ndarray], k: int, seed: int = 0) -> list[int]:
    """Indices of the most uncertain frame of each of ``k`` clusters of similar frames, most
    uncertain first, then every other frame of finite ``stds`` by falling uncertainty (the
    fallbacks of a caller whose labeler fails on a frame).

    The clusters are k-means (scipy, k-means++ start) of the descriptors; frames of different
    size (descriptor length) are clustered apart, with the ``k`` clusters shared between the sizes
    in proportion to their frame counts (each size at least one while ``k`` lasts).

    Args:
        stds: [n_frames] uncertainty per frame (eV/Å); NaN or inf: never picked.
        descriptors: one vector per frame (see :func:`distance_descriptor`).
        k: frames wanted (clusters).
        seed: seeds the k-means start.
    """
    from scipy.cluster.vq import kmeans2

    stds = np.asarray(stds, dtype=np.float64)
    if len(stds) != len(descriptors):
        raise ValueError(f"{len(stds)} stds but {len(descriptors)} descriptors")
    finite = np.flatnonzero(np.isfinite(stds))
    groups: dict[int, list[int]] = {}
    for index in finite:
        groups.setdefault(len(descriptors[index]), []).append(int(index))
    shares = _cluster_shares([len(members) for members in groups.values()], k)
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for members, clusters in zip(groups.values(), shares):
        clusters = min(clusters, len(members))
        if clusters == 0:
            continue
        if clusters == len(members):
            labels = np.arange(len(members))
        else:
            data = np.stack([descriptors[m] for m in members]).astype(np.float64)
            _, labels = kmeans2(data, clusters, minit="++", seed=rng)
        for cluster in np.unique(labels):
            in_cluster = [m for m, label in zip(members, labels) if label == cluster]
            picked.append(max(in_cluster, key=lambda m: stds[m]))
    picked.sort(key=lambda m: -stds[m])
    chosen = set(picked)
    rest = [int(m) for m in finite[np.argsort(-stds[finite], kind="stable")] if m not in chosen]
    return picked + rest


def _cluster_shares(sizes: list[int], k: int) -> list[int]:
    """``k`` clusters shared in proportion to ``sizes`` (largest remainders), each size ≥ 1 while they last."""
    if not sizes:
        return []
    shares = [min(1, size) for size in sizes] if k >= len(sizes) else [0] * len(sizes)
    if k < len(sizes):  # fewer clusters than sizes: the most numerous sizes get one each
        for index in np.argsort(sizes)[::-1][:k]:
            shares[int(index)] = 1
        return shares
    spare = k - sum(shares)
    ideal = np.array(sizes, dtype=np.float64) / sum(sizes) * spare
    extra = np.floor(ideal).astype(int)
    for index in np.argsort(-(ideal - extra))[: spare - int(extra.sum())]:
        extra[int(index)] += 1
    return [int(share + more) for share, more in zip(shares, extra)]


def beyond_ceiling(stds: np.ndarray, systems: Sequence[int], steps: Sequence[int], ceiling: float,
                   scope: str = "frame") -> np.ndarray:
    """Frames the trust ceiling rules out: a [n_frames] boolean mask.

    Args:
        stds: [n_frames] largest per-atom force spread per frame, eV/Å.
        systems: the MD system (trajectory) of each frame.
        steps: the MD step of each frame (order within its trajectory).
        ceiling: eV/Å.
        scope: ``"frame"``: the frames over ``ceiling``; ``"trajectory"``: also every frame of a
            trajectory after its first one over ``ceiling``.
    """
    stds = np.asarray(stds, dtype=np.float64)
    over = ~(stds <= ceiling)  # NaN spreads count as over
    if scope == "frame":
        return over
    systems, steps = np.asarray(systems), np.asarray(steps)
    ruled_out = over.copy()
    for system in np.unique(systems):
        frames = np.flatnonzero(systems == system)
        crossed = steps[frames][over[frames]]
        if len(crossed):
            ruled_out[frames[steps[frames] >= crossed.min()]] = True
    return ruled_out


def _descriptor_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b)) if a.shape == b.shape else math.inf
