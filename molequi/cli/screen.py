"""``molequi screen``: filter, embed, score and rank candidate molecules (the ``search`` extra)."""

from __future__ import annotations

import argparse
import importlib.util

HELP = (
    "Screen candidate molecules: standardise, de-duplicate, filter (SA score, structural alerts, "
    "rules), build 3D conformers, score with trained models (committee mean ± std), rank, report."
)

REQUIRED = ("rdkit",)
"""Modules the command cannot run without (Dask is needed only for parallel screening)."""

INSTALL_HINT = "molequi screen needs RDKit (the search extra): pip install 'molequi[search]'"


def missing_dependencies() -> str | None:
    """The install hint when a required module is absent, else None (found without importing)."""
    for name in REQUIRED:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return INSTALL_HINT
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from molequi.search.cli import add_screen_arguments

    add_screen_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from molequi.search.cli import run_screen
    from molequi.search.models import load_scorers

    return run_screen(args, scorer_factory=load_scorers)
