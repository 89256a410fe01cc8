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
    "calibrate": "molequi.cli.calibrate",
    "md": "molequi.cli.md",
    "screen": "molequi.cli.screen",
    "learn": "molequi.cli.learn",
    "export": "molequi.cli.export",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="molequi",
        description="E(3)-equivariant interatomic potentials: train, evaluate, run MD, screen molecules, export.",
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
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP, formatter_class=HelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


class HelpFormatter(argparse.HelpFormatter):
    """Help that shows a default only where it informs: not for required options, flags, or
    options without a value (None, empty lists); not where the help text already states it;
    lists as ``a, b`` rather than Python's tuple syntax."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or action.required
            or not action.option_strings
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or (isinstance(default, (list, tuple, dict)) and not default)
            or (isinstance(default, str) and default.strip() in ("", "{}", "[]"))  # empty JSON/text
        ):
            return text
        shown = ", ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


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
