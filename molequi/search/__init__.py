"""Molecule screening: read -> standardise -> filter -> 3D -> score -> rank -> report.

Typical use::

    from molequi.search import screen
    result = screen("candidates.smi", scorers=[model], objective="gap:max", out="screen_out")

See :func:`screen` and :class:`ScreenConfig` for the settings.
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use: the pipeline imports RDKit (and a scorer torch), and the light modules
# (molequi.search.config: the settings and their names) must stay importable without them, for
# 'molequi screen --help' to answer at once.
_LAZY = {
    "Objective": "config", "ScreenConfig": "config", "StageConfig": "config",
    "BUILTIN_POOLS": "io", "Candidate": "io", "CandidateSource": "io",
    "build_config": "pipeline", "screen": "pipeline",
    "Ranking": "rank", "diverse_pick": "rank", "pareto_fronts": "rank", "rank_rows": "rank",
    "ScreenResult": "result",
    "Scorer": "score", "calibrate_std_threshold": "score", "score_atoms": "score",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"molequi.search.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'molequi.search' has no attribute {name!r}")
