"""The ``molequi`` command: one small module per sub-command (parse -> config -> library call).

Each command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``,
and may expose ``missing_dependencies() -> str | None``: when it returns an install hint (an
optional extra is absent), the command is listed but answers any invocation, ``--help`` included,
with that one line on stderr and exit code 2. Command modules import their heavy and optional
dependencies inside these functions, so ``molequi --help`` works on the core install.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from molequi import __version__
from molequi.errors import MissingDependencyError, MolequiError

COMMANDS = {
    "train": "molequi.cli.train",
    "evaluate": "molequi.cli.evaluate",
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
        hint = getattr(module, "missing_dependencies", lambda: None)()
        if hint:
            sub = commands.add_parser(name, help=f"{module.HELP} [not installed: {hint}]", add_help=False)
            sub.add_argument("-h", "--help", action=_HintAction, hint=hint)
            sub.set_defaults(handler=_unavailable(hint))
            continue
        sub = commands.add_parser(
            name, help=module.HELP, description=module.HELP, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


class _HintAction(argparse.Action):
    """``--help`` of a command whose optional dependencies are absent: the install hint, exit 2."""

    def __init__(self, option_strings, dest, hint: str = "", **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.hint = hint

    def __call__(self, parser, namespace, values, option_string=None):
        parser.exit(2, f"error: {self.hint}\n")


def _unavailable(hint: str):
    """A handler that reports a missing optional dependency."""

    def handler(args: argparse.Namespace) -> int:
        raise MissingDependencyError(hint)

    handler.unavailable = True
    return handler


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes print ``error: <message>`` and exit 2, never a traceback."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args.handler, "unavailable", False):
        parser.parse_args(argv)  # reports the unrecognised arguments the usual way (exit 2)
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
