"""``--help`` of every command explains itself: defaults only where they inform, in plain text,
once; ``--device`` defaults to ``auto`` everywhere."""

from __future__ import annotations

import argparse
import re

import pytest

from molequi.cli.main import COMMANDS, HelpFormatter, build_parser


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.fixture(scope="module")
def subparsers():
    return _subparsers()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_text(subparsers, command):
    sub = subparsers[command]
    text = sub.format_help()
    flat = " ".join(text.split())
    assert "default: None" not in flat
    assert not re.search(r"default: [\(\[\{]", flat), "Python container syntax in a default"
    assert "default: False" not in flat and "default: True" not in flat
    formatter = HelpFormatter(prog="molequi")
    for action in sub._actions:
        if not action.option_strings or action.help in (None, argparse.SUPPRESS):
            continue
        shown = formatter._get_help_string(action) or ""
        assert shown.lower().count("(default") <= 1, f"{command} {action.option_strings}: {shown}"
        if action.required:
            assert "default" not in shown.lower(), f"{command} {action.option_strings} is required: {shown}"
        if "--device" in action.option_strings:
            assert "auto" in shown
            assert action.default in ("auto", argparse.SUPPRESS, None)


def test_device_default_resolves_to_auto(subparsers):
    for command, sub in subparsers.items():
        devices = [a for a in sub._actions if "--device" in a.option_strings]
        for action in devices:
            if action.default not in (argparse.SUPPRESS, None):
                assert action.default == "auto", command
