"""Options that several commands share, written once so their names, defaults and help agree."""

from __future__ import annotations

import argparse

LABEL_KEY_HELP = {
    "energy": "key of the energy label, eV (calculator results or atoms.info; MACE-style files: REF_energy)",
    "forces": "key of the forces label, eV/Å (calculator results or atoms.arrays; MACE-style: REF_forces)",
    "stress": "key of the stress label, eV/Å³ (read with the structures, not fitted or evaluated)",
}
"""Help text of ``--energy-key``, ``--forces-key`` and ``--stress-key``."""


def add_label_key_options(parser: argparse.ArgumentParser, stress: bool = True) -> None:
    """``--energy-key``, ``--forces-key`` (and ``--stress-key``) with their defaults."""
    for label in ("energy", "forces", "stress") if stress else ("energy", "forces"):
        parser.add_argument(f"--{label}-key", metavar="KEY", default=label, help=LABEL_KEY_HELP[label])


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device``, resolved later by :func:`molequi.devices.resolve_device`."""
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
