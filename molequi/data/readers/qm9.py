"""The QM9 data spec ``qm9[:SPLIT][?n=N&seed=S]`` (the data set itself: :mod:`molequi.data.qm9`)."""

from __future__ import annotations

from pathlib import Path

from molequi.data import qm9
from molequi.data.readers.base import Reader


def claims_qm9(source: str) -> bool:
    """A QM9 spec that is not also the name of an existing file."""
    return qm9.is_qm9_spec(source) and not Path(source).exists()


READER = Reader(
    name="qm9",
    description="QM9 data spec qm9[:train|validation|test|all][?n=N&seed=S] (needs qm9pack)",
    claims=claims_qm9,
    read=lambda source, index=":": qm9.read_qm9(source),
    needs_file=False,
)
