"""The floors of molequi: imports only point down (``tests/test_architecture.py`` reads every
import in the package and fails on one that points up or sideways, or on a cycle).

Data flows up the floors: structures become a graph batch (``data``), the network's blocks work on
plain tensors (``nn``), a model is a network with its own normalisation, heads and committees
(``models``), the uses drive models (``calculators``, then ``md`` and ``training``, then ``learn``
and ``search``) and the command line and the public API sit on top. Rooms that share a floor do
not import one another: code two of them need belongs a floor lower.

This module imports nothing, so that reading it costs nothing.
"""

from __future__ import annotations

FLOORS: tuple[tuple[str, ...], ...] = (
    ("errors", "utils", "progress", "devices", "validation", "layers", "version"),  # the ground: no molequi room
    ("data",),  # Atoms -> GraphBatch: readers, neighbor lists, splits, statistics
    ("nn",),  # e3nn blocks on plain tensors; forces and stress from any energy model
    ("models",),  # config + weights + normalisation; load/save/export; heads; committees, calibration
    ("pretrained",),  # the models shipped in the package, by name
    ("calculators",),  # the ASE (and torch-sim) adapters of a model or committee
    ("md", "training"),  # batched and ASE molecular dynamics; the trainer
    ("learn", "search"),  # the active-learning loop (trains and runs MD); screening
    ("cli", "testing", "__init__"),  # the command line, reusable physics asserts, the public API
)
"""Floors from the bottom up; each names the rooms (sub-packages or top-level modules of
``molequi``) on it. The ground's modules may import one another (without cycles)."""

GROUND = FLOORS[0]


def floor_of(room: str) -> int:
    """The floor index of a room (``KeyError`` for a room no floor names)."""
    for index, rooms in enumerate(FLOORS):
        if room in rooms:
            return index
    raise KeyError(room)
