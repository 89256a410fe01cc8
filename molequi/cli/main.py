"""The ``molequi`` command: one small module per sub-command (parse -> config -> library call).

Each command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``,
and may expose ``missing_dependencies() -> str | None``: when it returns an install hint (an
optional extra is absent), the command is listed but answers any invocation, ``--help`` included,
with that one line on stderr and exit code 2. Command modules import their heavy and optional
dependencies inside these functions, so ``molequi --help`` works on the core install.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import signal
import sys
from pathlib import Path

from molequi.version import __version__
from molequi.errors import MissingDependencyError, MolequiError, OutputPathError

COMMANDS = {
    "train": "molequi.cli.train",
    "evaluate": "molequi.cli.evaluate",
    "calibrate": "molequi.cli.calibrate",
    "md": "molequi.cli.md",
    "screen": "molequi.cli.screen",
    "learn": "molequi.cli.learn",
    "export": "molequi.cli.export",
}


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line on stderr (exit 2), like every other
    user mistake, pointing to ``--help`` rather than printing the whole usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {one_line(message)} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
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


#: ``OSError`` numbers that describe the user's paths or machine (a read-only or full disk, a file
#: where a folder is expected ...), not a bug: one line and exit 2 like a :class:`MolequiError`.
USER_ERRNOS = frozenset({
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
    errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG, errno.ELOOP, errno.EFBIG, errno.ENOTEMPTY, errno.EMFILE,
})


def one_line(message: object) -> str:
    """A message on one line (a multi-line message's lines joined by ``; ``)."""
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip()) or "unknown error"


def describe_os_error(error: OSError) -> str:
    """``<reason>: <path>`` of an ``OSError`` on a user's path (``... -> <path>`` for a rename)."""
    reason = error.strerror or str(error)
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    return f"{reason}: {' -> '.join(paths)}" if paths else one_line(reason)


def check_output_file(path: str | Path | None, option: str) -> None:
    """Refuse, before any work, an output file path that cannot be written: a folder, or one
    under a path component that is a file. (A read-only or full disk is found when writing, and
    the atomic writes leave nothing half-written.)"""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{option} {path} is a folder; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"{option} {path}: {parent} is a file, not a folder")
            break


def main(argv: list[str] | None = None) -> int:
    """Entry point and the one place that maps exceptions to exit codes.

    A user's mistake (:class:`MolequiError`, a bad option, an unusable path) prints one line
    ``error: <message>`` on stderr and returns 2; Ctrl-C returns 130; anything else is a bug and
    keeps its traceback (exit 1).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args.handler, "unavailable", False):
        parser.parse_args(argv)  # reports the unrecognised arguments (one line, exit 2)
    args.argv = argv  # what the user typed, to print a corrected command line
    previous = _exit_on_sigterm()
    try:
        return int(args.handler(args) or 0)
    except MolequiError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in USER_ERRNOS:
            raise
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm():
    """Turn SIGTERM (``kill``, a batch system's time limit) into ``SystemExit(143)`` so that
    ``finally`` blocks run (run-directory locks are removed, files closed) as on Ctrl-C; returns
    the previous handler (None where one cannot be set: not the main thread)."""
    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # signal only works in the main thread
        return None


if __name__ == "__main__":
    sys.exit(main())
