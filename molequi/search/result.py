"""``ScreenResult``: what a screening run returns (the tables themselves are files in ``out``).

Kept apart from :mod:`.pipeline` so that the report writer can use it
without importing the pipeline that calls the report writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .store import read_csv_rows


@dataclass
class ScreenResult:
    """Outcome of a screening run; the full table is ``scored.csv`` in ``out``."""

    out: Path
    n_read: int
    n_passed: int
    stage_counts: dict[str, int]
    top: list[dict[str, str]]
    columns: list[str]
    settings: dict
    samples: dict[str, list[float]] = field(default_factory=dict, repr=False)

    @property
    def scored_csv(self) -> Path:
        return self.out / "scored.csv"

    @property
    def top_sdf(self) -> Path:
        return self.out / "top.sdf"

    @property
    def report_html(self) -> Path:
        return self.out / "report.html"

    def rows(self) -> Iterator[dict[str, str]]:
        """Stream every row of ``scored.csv`` (values as strings)."""
        return read_csv_rows(self.scored_csv)

    def to_pandas(self):
        """``scored.csv`` as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.read_csv(self.scored_csv)
