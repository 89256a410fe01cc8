"""Options that several commands share, written once so their names, defaults and help agree."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path

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


MODEL_OPTION_HELP = ("trained model file (model.molequi) or the name of a pretrained model shipped with molequi "
                     "(organic-xtb); repeat for a committee: --model A --model B (its mean is used, its spread is "
                     "the uncertainty)")
"""Help text of ``--model``, the one way every command takes a committee."""


def add_model_option(parser: argparse.ArgumentParser, positional_help: str | None = None) -> None:
    """``--model FILE`` (repeatable: a committee) and, with ``positional_help``, the older
    positional ``MODEL`` for one model (commands whose first argument was the model file)."""
    if positional_help is not None:
        parser.add_argument("model", metavar="MODEL", nargs="?", default=None, help=positional_help)
    parser.add_argument("--model", dest="models", metavar="FILE", action="append", default=[],
                        help=MODEL_OPTION_HELP)


def comma_committee_fix(argv: Sequence[str], command: str) -> str:
    """``argv`` as the command line to type instead: each comma-joined model list ``a,b`` (a
    positional or a ``--model`` value) becomes ``--model a --model b``; shell-quoted, runnable."""
    fixed: list[str] = []
    tokens = list(argv)
    k = 0
    while k < len(tokens):
        token = tokens[k]
        if token == "--model" and k + 1 < len(tokens) and "," in tokens[k + 1]:
            value, k = tokens[k + 1], k + 2
        elif token.startswith("--model=") and "," in token:
            value, k = token.removeprefix("--model="), k + 1
        elif "," in token and not token.startswith("-") and _looks_like_models(token):
            value, k = token, k + 1
        else:
            fixed.append(token)
            k += 1
            continue
        for path in filter(None, value.split(",")):
            fixed += ["--model", path]
    return shlex.join(["molequi", *fixed] if fixed[:1] == [command] else ["molequi", command, *fixed])


def _looks_like_models(token: str) -> bool:
    """A comma-joined list of model files (every part names a ``.molequi`` file or an existing file)."""
    parts = [part for part in token.split(",") if part]
    return len(parts) > 1 and all(part.endswith(".molequi") or Path(part).is_file() for part in parts)


def model_paths(args: argparse.Namespace, argv: Sequence[str] | None, default: str | None = None) -> list[str]:
    """The model files of a command: the positional ``MODEL`` (when the command has one) and every
    ``--model``; a pretrained model's name (``organic-xtb``) becomes its shipped file, said once on
    stderr with its level of theory, and so does ``default`` when no model is given. A comma-joined
    list (the older committee syntax) is refused with the command line to type instead."""
    from molequi import pretrained
    from molequi.errors import ConfigError

    paths = ([args.model] if getattr(args, "model", None) else []) + list(args.models)
    if not paths and default is not None:
        paths = [default]
    paths = [str(pretrained.file_of(path)) for path in paths]
    joined = [path for path in paths if "," in path and not Path(path).is_file()]
    if joined:
        fix = comma_committee_fix(argv if argv is not None else [args.command, *paths], args.command)
        raise ConfigError(f"a committee is given as --model A --model B, not comma-separated ({joined[0]}); run: {fix}")
    if not paths:
        raise ConfigError(f"no model given: molequi {args.command} --model FILE (repeat --model for a committee)")
    return paths


class _RenamedOption(argparse.Action):
    """An old spelling of an option: refused with one line naming the new one (never silently
    accepted, so a script learns of the rename)."""

    def __init__(self, option_strings, dest, new: str = "", example: str = "", **kwargs):
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.new, self.example = new, example

    def __call__(self, parser, namespace, values, option_string=None):
        shown = f"{self.new} {values}" if values is not None else self.example
        parser.error(f"{option_string} is now {self.new}; use {shown}")


def add_renamed_option(parser: argparse.ArgumentParser, old: str, new: str, example: str) -> None:
    """Refuse ``old`` (hidden from ``--help``) with a message that shows ``new`` with the user's
    value (or ``example`` without one)."""
    parser.add_argument(old, action=_RenamedOption, new=new, example=example)
