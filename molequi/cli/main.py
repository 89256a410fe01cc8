"""The ``molequi`` command: one small module per sub-command (parse -> config -> library call).

Each command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from molequi import __version__
from molequi.errors import MolequiError

COMMANDS = {
    "train": "molequi.cli.train",
    "evaluate": "molequi.cli.evaluate",
    "calibrate": "molequi.cli.calibrate",
    "md": "molequi.cli.md",
    "screen": "molequi.cli.screen",
    "learn": "molequi.cli.learn",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="molequi",
        description="E(3)-equivariant interatomic potentials: train, evaluate, run MD, screen molecules.",
        epilog="Run 'molequi COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"molequi {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:  # command not built yet
                continue
            raise
        sub = commands.add_parser(
            name, help=module.HELP, description=module.HELP, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes print ``error: <message>`` and exit 2, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except MolequiError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
