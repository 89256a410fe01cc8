"""``molequi screen``: filter, embed, score and rank candidate molecules."""

from __future__ import annotations

import argparse

from molequi.search.cli import add_screen_arguments, run_screen
from molequi.search.models import load_scorers

HELP = (
    "Screen candidate molecules: standardise, de-duplicate, filter (SA score, structural alerts, "
    "rules), build 3D conformers, score with trained models (committee mean ± std), rank, report."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_screen_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_screen(args, scorer_factory=load_scorers)
