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
    #: values present per numeric column (the histograms' sample is at most 50,000 of them)
    coverage: dict[str, int] = field(default_factory=dict, repr=False)
    #: ``{failed_stage: {reason: molecules}}``; a molecule a filter rejects for several
    #: reasons counts once under each
    rejections: dict[str, dict[str, int]] = field(default_factory=dict)
    #: unit of each predicted property ('' where unknown)
    units: dict[str, str] = field(default_factory=dict)

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
        try:
            import pandas as pd
        except ImportError:
            from molequi.errors import MissingDependencyError

            raise MissingDependencyError("ScreenResult.to_pandas needs pandas: pip install pandas") from None

        return pd.read_csv(self.scored_csv)
