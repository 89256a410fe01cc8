"""Molecule screening: read -> standardise -> filter -> 3D -> score -> rank -> report.

Typical use::

    from molequi.search import screen
    result = screen("candidates.smi", scorers=[model], objective="gap:max", out="screen_out")

See :func:`screen` and :class:`ScreenConfig` for the settings.
"""

from .config import Objective, ScreenConfig, StageConfig
from .io import BUILTIN_POOLS, Candidate, CandidateSource
from .pipeline import build_config, screen
from .rank import Ranking, diverse_pick, pareto_fronts, rank_rows
from .result import ScreenResult
from .score import Scorer, calibrate_std_threshold, score_atoms

__all__ = [
    "BUILTIN_POOLS", "Candidate", "CandidateSource", "Objective", "Ranking", "ScreenConfig",
    "ScreenResult", "Scorer", "StageConfig", "build_config", "calibrate_std_threshold",
    "diverse_pick", "pareto_fronts", "rank_rows", "score_atoms", "screen",
]
